"""``cryospa postprocess``: mask-corrected FSC and sharpening of half maps, as RELION's PostProcess.

From two independent half maps (``--half-maps``: a refinement job, or half 1's MRC file; half 2
is found by name as RELION does, ``half1`` -> ``half2`` in the file name, or given with
``--half2``) and a solvent mask (``--mask``; optional, as in RELION: without it only the unmasked
FSC is computed, steps 1-2 reduce to it, and the resolution, the FSC weighting and the B-factor
fit all use the unmasked FSC; ``postprocess_masked.mrc`` is not written):

1. FSC of the unmasked and of the masked half maps;
2. Chen et al. (2013) correction of the mask's own correlation: the phases of both half maps are
   randomised from the first shell where the unmasked FSC drops below 0.8
   (``--randomize-at-fsc``), the randomised maps masked, and
   ``FSC_corrected = (FSC_masked - FSC_random) / (1 - FSC_random)`` from two shells beyond that
   on; the resolution is where the corrected FSC first drops below 0.143 (the last shell at or
   above it, as RELION reports; if the unmasked FSC reaches further, the unmasked curve is used
   unless ``--force-mask``);
3. the average of the half maps is divided by the detector MTF (``--mtf``, RELION's STAR table,
   with the detector's own pixel size ``--original-angpix``), weighted per shell by
   ``sqrt(2 FSC / (1 + FSC))`` (Rosenthal & Henderson 2003; off with ``--skip-fsc-weighting``),
   sharpened by a B-factor fitted to its Guinier plot between ``--autob-lowres`` and
   ``--autob-highres`` (0: as far as the weighting leaves signal) or given (``--adhoc-bfac``),
   and low-passed at the resolution (or ``--low-pass``).

Outputs as RELION's: ``postprocess.mrc``, ``postprocess_masked.mrc``, ``postprocess.star``
(``data_general`` with ``rlnFinalResolution``, ``rlnBfactorUsedForSharpening``, ...; ``data_fsc``
with every curve; ``data_guinier``), ``postprocess_fsc.xml`` (for the EMDB), and the pictures
``postprocess_fsc.png`` and ``postprocess_guinier.png``. ``--angpix`` sets a calibrated pixel
size (it scales every resolution).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryospa.compute.device import resolve_device
from cryospa.core.bfactor import SharpenedMap, sharpen_fourier
from cryospa.core.fsc import (
    ShellGrid,
    first_shell_below,
    fsc_corrected_for_masking,
    fsc_corrected_for_particle_fraction,
    last_shell_at_or_above,
    phase_randomise_fourier,
)
from cryospa.errors import CryospaError, InputFileError, ParameterError
from cryospa.io._files import write_text_atomic
from cryospa.io.mrc import read_mrc_header, write_mrc
from cryospa.io.mtf import MtfCurve, read_mtf
from cryospa.io.star import write_star
from cryospa.jobs._maps import check_mask_values, load_map, map_info, same_pixel_size
from cryospa.project.nodes import NodeType
from cryospa.project.schema import (
    DEVICE_PARAM,
    Input,
    JobContext,
    Output,
    Param,
    PerItemJob,
    ResolvedInput,
    RunOptions,
    register,
)

__all__ = ["PostProcess", "PostprocessResult", "other_half", "postprocess_half_maps"]

_DESCRIPTION = __doc__ or ""


# --------------------------------------------------------------------------------------------
# the computation, on tensors
# --------------------------------------------------------------------------------------------


@dataclass
class PostprocessResult:
    """Everything :func:`postprocess_half_maps` computed (curves ``(n // 2 + 1,)``, float64)."""

    box_size: int
    pixel_size_angstrom: float
    fsc_unmasked: np.ndarray
    fsc_masked: np.ndarray | None
    fsc_random_masked: np.ndarray | None
    fsc_corrected: np.ndarray  # what the resolution and the weighting used
    fsc_particle_fraction: np.ndarray | None
    randomise_from_shell: int | None
    mask_fraction: float | None  # share of the box where the mask is > 0.5
    resolution_shell: int
    resolution_angstrom: float  # of that shell (RELION's rlnFinalResolution)
    resolution_interpolated_angstrom: float  # where the curve crosses 0.143
    used_unmasked_fsc: bool
    warnings: list[str]
    sharpened: SharpenedMap
    masked_map: torch.Tensor | None

    @property
    def shell_resolutions_angstrom(self) -> np.ndarray:
        """``(n_shells,)`` resolution of each shell in Å, 999 for shell 0 (as RELION)."""
        s = np.arange(self.fsc_unmasked.shape[0], dtype=np.float64)
        with np.errstate(divide="ignore"):
            res = self.box_size * self.pixel_size_angstrom / s
        res[0] = 999.0
        return res


def _crossing(curve: np.ndarray, shell: int, threshold: float) -> float:
    """Fractional shell where ``curve`` crosses ``threshold`` between ``shell`` and ``shell+1``."""
    if shell + 1 >= curve.shape[0]:
        return float(shell)
    hi, lo = float(curve[shell]), float(curve[shell + 1])
    return shell + (hi - threshold) / (hi - lo) if hi != lo else float(shell)


def postprocess_half_maps(
    half1: torch.Tensor,
    half2: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    pixel_size_angstrom: float,
    mtf: tuple[torch.Tensor, torch.Tensor] | None = None,
    auto_bfactor: bool = True,
    fit_min_resolution_angstrom: float = 10.0,
    fit_max_resolution_angstrom: float = 0.0,
    bfactor_angstrom2: float = 0.0,
    fsc_weighting: bool = True,
    lowpass_angstrom: float = 0.0,
    randomise_at_fsc: float = 0.8,
    randomise_at_angstrom: float | None = None,
    force_mask: bool = False,
    generator: torch.Generator | None = None,
) -> PostprocessResult:
    """RELION's post-processing of two half maps (see the module docstring).

    Parameters
    ----------
    half1, half2
        ``(n, n, n)`` half maps (same device and dtype).
    mask
        ``(n, n, n)`` soft mask in [0, 1], or None (unmasked FSC only).
    pixel_size_angstrom
        Pixel size in Å (a calibrated one scales every resolution).
    mtf
        ``(frequencies in 1/Å, values)`` of the detector MTF, or None.
    auto_bfactor, fit_min_resolution_angstrom, fit_max_resolution_angstrom, bfactor_angstrom2
        Guinier fit range (Å) of the automatic B-factor, or the B-factor to apply (Å^2).
    fsc_weighting
        Weight by ``sqrt(2 FSC / (1 + FSC))`` of the corrected FSC.
    lowpass_angstrom
        Final low-pass in Å; 0: at the resolution.
    randomise_at_fsc, randomise_at_angstrom
        Where the phase randomisation starts: the first shell where the unmasked FSC is below
        ``randomise_at_fsc``, or the shell of ``randomise_at_angstrom`` when given.
    force_mask
        Keep the corrected FSC even when the unmasked one reaches a higher resolution.
    generator
        Random generator for the phase randomisation (reproducible runs).

    Raises
    ------
    CryospaError
        The unmasked FSC never drops below ``randomise_at_fsc``; the corrected FSC is below
        0.143 from the first shell (the maps are not two halves of one structure); the
        Guinier fit range holds fewer than 2 shells with signal.

    """
    n = int(half1.shape[-1])
    shape = (n, n, n)
    apix = float(pixel_size_angstrom)
    dims = (-3, -2, -1)
    grid = ShellGrid(shape, device=half1.device)
    f1 = torch.fft.rfftn(half1, dim=dims)
    f2 = torch.fft.rfftn(half2, dim=dims)
    fsc_unmasked = grid.fsc(f1, f2)
    fsc_masked = fsc_random = fsc_part = None
    randomise_from = None
    mask_fraction = None
    warnings: list[str] = []
    if mask is not None:
        fsc_masked = grid.fsc(torch.fft.rfftn(half1 * mask, dim=dims),
                              torch.fft.rfftn(half2 * mask, dim=dims))
        if randomise_at_angstrom is not None:
            randomise_from = int(apix * n / randomise_at_angstrom)
        else:
            randomise_from = first_shell_below(fsc_unmasked, randomise_at_fsc)
        if randomise_from is None or randomise_from < 1:
            raise CryospaError(
                f"the unmasked FSC never drops below {randomise_at_fsc:g}, so there is no shell "
                "to start the phase randomisation from: give --randomize-at-angstrom (e.g. a "
                "resolution a little worse than the expected one)"
            )

        def randomised_masked(f: torch.Tensor) -> torch.Tensor:
            r = phase_randomise_fourier(f, from_radius=float(randomise_from), grid=grid,
                                        generator=generator)
            return torch.fft.rfftn(torch.fft.irfftn(r, s=shape, dim=dims).mul_(mask), dim=dims)

        fsc_random = grid.fsc(randomised_masked(f1), randomised_masked(f2))
        # RELION sets a non-positive DC value of both curves to 1 (and writes them so)
        fsc_masked[0] = torch.where(fsc_masked[0] <= 0, 1.0, fsc_masked[0])
        fsc_random[0] = torch.where(fsc_random[0] <= 0, 1.0, fsc_random[0])
        corrected = fsc_corrected_for_masking(fsc_masked, fsc_random,
                                              randomise_from_shell=randomise_from)
        mask_fraction = float((mask > 0.5).to(torch.float64).mean())
        if mask_fraction > 0:
            fsc_part = fsc_corrected_for_particle_fraction(fsc_unmasked, 0.476 / mask_fraction)
    else:
        corrected = fsc_unmasked.clone()
    shell = last_shell_at_or_above(corrected, 0.143)
    used_unmasked = False
    if mask is not None and fsc_random is not None:
        unmasked_shell = last_shell_at_or_above(fsc_unmasked, 0.143)
        if unmasked_shell > shell:
            if force_mask:
                warnings.append("the unmasked FSC extends beyond the solvent-corrected FSC")
            else:
                warnings.append(
                    "the unmasked FSC extends beyond the solvent-corrected FSC: the unmasked FSC "
                    "is used (--force-mask keeps the mask); you may want to adjust the mask"
                )
                corrected = fsc_unmasked.clone()
                shell = unmasked_shell
                used_unmasked = True
        elif float(fsc_random[shell]) > 0.1:
            warnings.append(
                f"the phase-randomised FSC is {float(fsc_random[shell]):.2f} (> 0.10) at the "
                "estimated resolution: the estimate may be wrong; use a softer mask with fewer "
                "features (stronger low-pass, wider soft edge)"
            )
    if shell < 1:
        raise CryospaError(
            "the FSC between the half maps is below 0.143 from the first shell on: they do not "
            "share a structure (are they two halves of one refinement, on the same grid?)"
        )
    curve_np = corrected.detach().cpu().double().numpy()
    resolution = n * apix / shell
    interpolated = n * apix / _crossing(curve_np, shell, 0.143)
    average = 0.5 * (f1 + f2)
    del f1, f2
    try:
        sharp = sharpen_fourier(
            average,
            grid=grid,
            pixel_size_angstrom=apix,
            fsc_curve=corrected if fsc_weighting else None,
            mtf=mtf,
            auto_bfactor=auto_bfactor,
            fit_min_resolution_angstrom=fit_min_resolution_angstrom,
            fit_max_resolution_angstrom=fit_max_resolution_angstrom,
            bfactor_angstrom2=0.0 if auto_bfactor else bfactor_angstrom2,
            lowpass_resolution_angstrom=lowpass_angstrom if lowpass_angstrom > 0 else resolution,
        )
    except ValueError as err:
        if "Guinier points" not in str(err):
            raise
        raise CryospaError(
            f"the automatic B-factor needs a Guinier fit over at least 2 shells with signal "
            f"between --autob-lowres {fit_min_resolution_angstrom:g} Å and --autob-highres "
            f"{fit_max_resolution_angstrom:g} Å, but the map's resolution is {resolution:.3g} Å: "
            "raise --autob-lowres, or give --adhoc-bfac"
        ) from err
    del average

    def as_np(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().cpu().double().numpy()

    return PostprocessResult(
        box_size=n,
        pixel_size_angstrom=apix,
        fsc_unmasked=fsc_unmasked.detach().cpu().double().numpy(),
        fsc_masked=as_np(fsc_masked),
        fsc_random_masked=as_np(fsc_random),
        fsc_corrected=curve_np,
        fsc_particle_fraction=as_np(fsc_part),
        randomise_from_shell=randomise_from,
        mask_fraction=mask_fraction,
        resolution_shell=shell,
        resolution_angstrom=resolution,
        resolution_interpolated_angstrom=interpolated,
        used_unmasked_fsc=used_unmasked,
        warnings=warnings,
        sharpened=sharp,
        masked_map=None if mask is None else sharp.volume * mask,
    )


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def other_half(path: str | Path) -> Path | None:
    """Half 2's file from half 1's as RELION's ``getTheOtherHalf``: ``half1`` <-> ``half2``.

    Only the file name is changed (every ``half1`` becomes ``half2``, or the reverse when the
    name holds ``half2`` only); None if it holds neither.
    """
    p = Path(path)
    name = p.name
    if "half1" in name:
        return p.with_name(name.replace("half1", "half2"))
    if "half2" in name:
        return p.with_name(name.replace("half2", "half1"))
    return None


def _guinier_table(result: PostprocessResult, *, mtf: bool, weighting: bool,
                   sharpened: bool, auto: bool) -> pd.DataFrame:
    s = result.sharpened

    def col(t: torch.Tensor) -> np.ndarray:
        v = t.detach().cpu().double().numpy()
        return np.where(np.isfinite(v), v, -99.0)  # RELION writes -99 for empty shells

    table: dict[str, Any] = {
        "rlnResolutionSquared": s.k2.detach().cpu().double().numpy(),
        "rlnLogAmplitudesOriginal": col(s.ln_amplitude_original),
    }
    if mtf:
        table["rlnLogAmplitudesMTFCorrected"] = col(s.ln_amplitude_mtf_corrected)
    if weighting:
        table["rlnLogAmplitudesWeighted"] = col(s.ln_amplitude_weighted)
    if sharpened:
        table["rlnLogAmplitudesSharpened"] = col(s.ln_amplitude_sharpened)
    if auto and s.fit_intercept is not None:
        table["rlnLogAmplitudesIntercept"] = np.full(s.k2.shape[0], s.fit_intercept)
    return pd.DataFrame(table)


def _fsc_table(result: PostprocessResult) -> pd.DataFrame:
    res = result.shell_resolutions_angstrom
    table: dict[str, Any] = {
        "rlnSpectralIndex": np.arange(res.shape[0], dtype=np.int64),
        "rlnResolution": 1.0 / res,
        "rlnAngstromResolution": res,
    }
    if result.fsc_masked is not None and result.fsc_random_masked is not None:
        table["rlnFourierShellCorrelationCorrected"] = result.fsc_corrected
        if result.fsc_particle_fraction is not None:
            table["rlnFourierShellCorrelationParticleMaskFraction"] = (
                result.fsc_particle_fraction)
        table["rlnFourierShellCorrelationUnmaskedMaps"] = result.fsc_unmasked
        table["rlnFourierShellCorrelationMaskedMaps"] = result.fsc_masked
        table["rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"] = (
            result.fsc_random_masked)
    else:
        table["rlnFourierShellCorrelationUnmaskedMaps"] = result.fsc_corrected
    return pd.DataFrame(table)


def _fsc_xml(result: PostprocessResult) -> str:
    res = result.shell_resolutions_angstrom
    lines = ['<fsc title="cryospa masked-corrected FSC" xaxis="Resolution (A-1)" '
             'yaxis="Correlation Coefficient">']
    for r, v in zip(res, result.fsc_corrected, strict=True):
        lines += ["  <coordinate>", f"    <x>{1.0 / r:.6g}</x>", f"    <y>{v:.6g}</y>",
                  "  </coordinate>"]
    lines.append("</fsc>")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the job
# --------------------------------------------------------------------------------------------


def _no_adhoc(p: Mapping[str, Any]) -> bool:
    return p.get("autob") is not False and p.get("adhoc_bfac") is None


@register
class PostProcess(PerItemJob):
    """Masked, mask-corrected FSC, resolution, MTF correction and B-factor sharpening."""

    name = "postprocess"
    folder = "PostProcess"
    relion_type = 15  # PROC_POST
    streamable = False
    description = _DESCRIPTION
    params = (
        Param("half2", str, None, kind="file", metavar="MRC",
              help="half map 2 (default: half 1's file name with half1 -> half2, as RELION)"),
        Param("angpix", float, None, unit="Å", range=(0, None), open_min=True, relion="angpix",
              help="calibrated pixel size (default: the half maps' header)"),
        Param("mtf", str, None, kind="file", metavar="STAR", relion="fn_mtf",
              help="detector MTF, a RELION MTF STAR file (rlnResolutionInversePixel, "
              "rlnMtfValue), e.g. mtf_k2_200kV.star"),
        Param("original_angpix", float, None, unit="Å", range=(0, None), open_min=True,
              relion="mtf_angpix", condition=lambda p: bool(p["mtf"]),
              condition_text="with --mtf",
              help="pixel size of the detector (raw movies, not super-resolution) for the MTF; "
              "default: the maps' pixel size"),
        Param("autob", bool, None, relion="do_auto_bfac",
              help="estimate the B-factor from a Guinier fit (Rosenthal & Henderson 2003); on "
              "unless --adhoc-bfac is given"),
        Param("autob_lowres", float, 10.0, unit="Å", range=(0, None), open_min=True,
              relion="autob_lowres", condition=_no_adhoc, condition_text="with --autob",
              help="lowest resolution in the Guinier fit"),
        Param("autob_highres", float, 0.0, unit="Å", range=(0, None), relion="autob_highres",
              condition=_no_adhoc, condition_text="with --autob",
              help="highest resolution in the Guinier fit; 0: up to where the FSC weighting "
              "leaves signal (RELION's default)"),
        Param("adhoc_bfac", float, None, unit="Å²", relion="adhoc_bfac",
              condition=lambda p: p["autob"] is not True, condition_text="without --autob",
              help="apply this B-factor instead of fitting one (negative sharpens, e.g. -100)"),
        Param("skip_fsc_weighting", bool, False, relion="do_skip_fsc_weighting",
              help="no sqrt(2 FSC / (1 + FSC)) weighting; low-pass at --low-pass instead"),
        Param("low_pass", float, 0.0, unit="Å", range=(0, None), relion="low_pass",
              help="final low-pass filter; 0: at the estimated resolution"),
        Param("randomize_at_fsc", float, 0.8, range=(0, 1), open_min=True, open_max=True,
              help="randomise the phases from the first shell where the unmasked FSC drops "
              "below this (Chen et al. 2013, as RELION)"),
        Param("randomize_at_angstrom", float, None, unit="Å", range=(0, None), open_min=True,
              help="randomise the phases from this resolution instead"),
        Param("force_mask", bool, False,
              help="use the mask-corrected FSC even where the unmasked FSC reaches further"),
        Param("seed", int, 0, help="random seed of the phase randomisation"),
        DEVICE_PARAM,
    )
    inputs = (
        Input("half_maps", (NodeType.HALF_MAPS,), relion="fn_in",
              help="half map 1 (a refinement job, or its run_half1_class001_unfil.mrc)"),
        Input("mask", (NodeType.MASK,), relion="fn_mask", required=False,
              help="solvent mask, values in [0, 1] (cryospa mask / relion_mask_create); "
              "without it only the unmasked FSC is used, as relion_postprocess without --mask"),
    )
    outputs = (
        Output("map", NodeType.VOLUME, "postprocess.mrc"),
        Output("masked_map", NodeType.VOLUME, "postprocess_masked.mrc"),
        Output("postprocess", NodeType.POSTPROCESS, "postprocess.star"),
    )
    citations = (
        "Chen et al. (2013) Ultramicroscopy 135:24-35 (FSC correction by phase randomisation)",
        "Rosenthal & Henderson (2003) J. Mol. Biol. 333:721-745 (B-factor, FSC weighting)",
        "Scheres & Chen (2012) Nat. Methods 9:853-854 (gold-standard FSC)",
        "Scheres (2012) J. Struct. Biol. 180:519-530 (RELION)",
    )

    # ----------------------------------------------------------------------------------
    def output_types(
        self, inputs: Mapping[str, list[ResolvedInput]]
    ) -> list[tuple[str, NodeType, str]]:
        """The declared outputs; without a mask no masked map (as relion_postprocess)."""
        outs = super().output_types(inputs)
        return outs if inputs.get("mask") else [o for o in outs if o[0] != "masked_map"]

    @staticmethod
    def _half_paths(params: Mapping[str, Any], half1: Path, root: Path) -> tuple[Path, Path]:
        if params["half2"]:
            given = Path(params["half2"])
            return half1, given if given.is_absolute() else root / given
        h2 = other_half(half1)
        if h2 is None:
            raise InputFileError(
                half1, "the file name holds neither 'half1' nor 'half2', so half map 2 cannot "
                "be found by name", "give half map 2 with --half2",
            )
        if not h2.is_file():
            raise InputFileError(
                h2, "half map 2 (found by replacing half1 with half2 in half map 1's name) does "
                "not exist", "give it with --half2",
            )
        return half1, h2

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """Half maps of one box and pixel size, a mask in [0, 1] on that grid, a valid MTF."""
        resolve_device(str(params["device"]))
        half1 = Path(inputs["half_maps"][0].path)
        half1 = half1 if half1.is_absolute() else project_dir / half1
        p1, p2 = self._half_paths(params, half1, project_dir)
        i1 = map_info(p1, what="half map 1")
        i2 = map_info(p2, what="half map 2")
        if i1.box != i2.box:
            raise InputFileError(
                p2, f"half map 2 is {i2.box} px, half map 1 ({p1.name}) {i1.box} px",
                "the half maps must be on the same grid: resample one with cryospa resize "
                "(--box-out / --angpix-out)",
            )
        if not same_pixel_size(i1.pixel_size_angstrom, i2.pixel_size_angstrom):
            raise InputFileError(
                p2, f"half map 2 has {i2.pixel_size_angstrom:g} Å/px, half map 1 ({p1.name}) "
                f"{i1.pixel_size_angstrom:g} Å/px",
                "the half maps must be on the same grid: resample one with cryospa resize "
                "--angpix-out",
            )
        if inputs.get("mask"):
            self._check_mask(Path(inputs["mask"][0].path), project_dir, i1.box,
                             i1.pixel_size_angstrom)
        elif params["force_mask"]:
            raise ParameterError("postprocess: --force-mask needs a mask: give --mask")
        if params["mtf"]:
            mtf_path = Path(params["mtf"])
            read_mtf(mtf_path if mtf_path.is_absolute() else project_dir / mtf_path)
        apix = float(params["angpix"] or i1.pixel_size_angstrom)
        if _auto(params):
            lo, hi = float(params["autob_lowres"]), float(params["autob_highres"])
            if not lo > max(hi, 2 * apix):
                raise ParameterError(
                    f"postprocess: the Guinier fit range --autob-lowres {lo:g} Å to "
                    f"--autob-highres {hi:g} Å is empty at {apix:g} Å/px (Nyquist "
                    f"{2 * apix:g} Å): --autob-lowres must be the larger and above Nyquist"
                )
        if params["randomize_at_angstrom"] is not None:
            ra = float(params["randomize_at_angstrom"])
            if not 2 * apix <= ra < i1.box * apix:
                raise ParameterError(
                    f"postprocess: --randomize-at-angstrom {ra:g} must lie between Nyquist "
                    f"({2 * apix:g} Å) and the box ({i1.box * apix:g} Å)"
                )

    @staticmethod
    def _check_mask(mpath: Path, project_dir: Path, box: int, pixel_size_angstrom: float) -> None:
        """A mask on the half maps' grid (box and pixel size), values in [0, 1]."""
        mpath = mpath if mpath.is_absolute() else project_dir / mpath
        mask, im = load_map(mpath, what="mask", angpix=pixel_size_angstrom)
        if im.box != box:
            raise InputFileError(
                mpath, f"the mask is {im.box} px, the half maps {box} px",
                "make the mask on the half maps' grid (cryospa mask from the refined map), or "
                f"resample it with cryospa resize --box-out {box}",
            )
        header_apix = float(read_mrc_header(mpath).voxel_size_angstrom[0])
        if header_apix > 0 and not math.isclose(header_apix, pixel_size_angstrom, rel_tol=0.01):
            raise InputFileError(
                mpath, f"the mask has {header_apix:g} Å/px, the half maps "
                f"{pixel_size_angstrom:g} Å/px",
                f"resample the mask with cryospa resize --angpix-out "
                f"{pixel_size_angstrom:g} (or re-import it with cryospa import mask --angpix "
                "if only its header is wrong)",
            )
        check_mask_values(mask, mpath)

    def list_items(self, ctx: JobContext) -> list[str]:
        """One item: half map 1."""
        return [ctx.input("half_maps").path]

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Compute, write the maps, the STAR file, the XML and the pictures."""
        p = ctx.params
        p1, p2 = self._half_paths(p, ctx.abs(key), ctx.project_dir)
        device = resolve_device(str(p["device"]))
        dtype = torch.float32  # shell sums accumulate in float64 (ShellGrid); half the memory
        h1, i1 = load_map(p1, what="half map 1")
        h2, _ = load_map(p2, what="half map 2")
        mask_rel = ctx.input("mask").path if ctx.inputs.get("mask") else None
        m = (None if mask_rel is None else
             load_map(ctx.abs(mask_rel), what="mask", angpix=i1.pixel_size_angstrom)[0])
        apix = float(p["angpix"] or i1.pixel_size_angstrom)
        mtf_curve: MtfCurve | None = None
        mtf = None
        if p["mtf"]:
            mtf_curve = read_mtf(ctx.abs(p["mtf"]))
            detector = float(p["original_angpix"] or apix)
            mtf = (torch.from_numpy(mtf_curve.frequency_per_angstrom(detector)),
                   torch.from_numpy(mtf_curve.value))
        auto = _auto(p)
        gen = torch.Generator(device=device)
        gen.manual_seed(int(p["seed"]))
        result = postprocess_half_maps(
            torch.from_numpy(h1).to(device, dtype),
            torch.from_numpy(h2).to(device, dtype),
            None if m is None else torch.from_numpy(m).to(device, dtype),
            pixel_size_angstrom=apix,
            mtf=mtf,
            auto_bfactor=auto,
            fit_min_resolution_angstrom=float(p["autob_lowres"]),
            fit_max_resolution_angstrom=float(p["autob_highres"]),
            bfactor_angstrom2=float(p["adhoc_bfac"] or 0.0),
            fsc_weighting=not p["skip_fsc_weighting"],
            lowpass_angstrom=float(p["low_pass"]),
            randomise_at_fsc=float(p["randomize_at_fsc"]),
            randomise_at_angstrom=p["randomize_at_angstrom"],
            force_mask=bool(p["force_mask"]),
            generator=gen,
        )
        del h1, h2, m
        for w in result.warnings:
            ctx.log(f"WARNING: {w}")
        sharp = result.sharpened
        write_mrc(ctx.path("postprocess.mrc"), sharp.volume.cpu().numpy().astype(np.float32),
                  voxel_size_angstrom=apix)
        if result.masked_map is not None:  # RELION writes no masked map without a mask
            write_mrc(ctx.path("postprocess_masked.mrc"),
                      result.masked_map.cpu().numpy().astype(np.float32), voxel_size_angstrom=apix)
        general: dict[str, Any] = {
            "rlnFinalResolution": result.resolution_angstrom,
            "rlnBfactorUsedForSharpening": sharp.bfactor_angstrom2,
            "rlnUnfilteredMapHalf1": _relative(p1, ctx.project_dir),
            "rlnUnfilteredMapHalf2": _relative(p2, ctx.project_dir),
        }
        if result.mask_fraction is not None and result.randomise_from_shell is not None:
            if result.mask_fraction > 0:
                general["rlnParticleBoxFractionSolventMask"] = 0.476 / result.mask_fraction
            general["rlnMaskName"] = mask_rel
            general["rlnRandomiseFrom"] = result.box_size * apix / result.randomise_from_shell
        if auto:
            general["rlnFittedSlopeGuinierPlot"] = sharp.fit_slope
            general["rlnFittedInterceptGuinierPlot"] = sharp.fit_intercept
            general["rlnCorrelationFitGuinierPlot"] = sharp.fit_correlation
        write_star(ctx.path("postprocess.star"), {
            "general": general,
            "fsc": _fsc_table(result),
            "guinier": _guinier_table(result, mtf=mtf is not None,
                                      weighting=not p["skip_fsc_weighting"],
                                      sharpened=sharp.bfactor_angstrom2 != 0.0, auto=auto),
        })
        write_text_atomic(ctx.path("postprocess_fsc.xml"), _fsc_xml(result))
        self._plots(ctx, result, mtf is not None, auto)
        return {
            "resolution": result.resolution_angstrom,
            "resolution_interpolated": result.resolution_interpolated_angstrom,
            "bfactor": sharp.bfactor_angstrom2,
            "fit_correlation": sharp.fit_correlation,
            "randomise_from": (None if result.randomise_from_shell is None
                               else result.box_size * apix / result.randomise_from_shell),
            "unmasked_fsc_used": result.used_unmasked_fsc,
            "masked": result.fsc_masked is not None,
            "box": result.box_size,
            "angpix": apix,
            "warnings": result.warnings,
        }

    @staticmethod
    def _plots(ctx: JobContext, result: PostprocessResult, mtf: bool, auto: bool) -> None:
        from cryospa.plots.postprocess import plot_guinier, plot_postprocess_fsc

        inv = 1.0 / result.shell_resolutions_angstrom
        inv[0] = 0.0
        curves: dict[str, np.ndarray] = {"unmasked": result.fsc_unmasked}
        kind = "unmasked, no mask"
        if result.fsc_masked is not None and result.fsc_random_masked is not None:
            curves = {"corrected": result.fsc_corrected, "unmasked": result.fsc_unmasked,
                      "masked": result.fsc_masked,
                      "phase-randomised masked": result.fsc_random_masked}
            kind = "corrected" + (", unmasked used" if result.used_unmasked_fsc else "")
        plot_postprocess_fsc(
            ctx.path("postprocess_fsc.png"), inv, curves,
            resolution_angstrom=result.resolution_angstrom,
            title=f"{ctx.job_name}: {result.resolution_angstrom:.2f} Å at FSC 0.143 ({kind})",
        )
        s = result.sharpened
        g: dict[str, np.ndarray] = {"original": s.ln_amplitude_original.cpu().double().numpy()}
        if mtf:
            g["MTF-corrected"] = s.ln_amplitude_mtf_corrected.cpu().double().numpy()
        g["FSC-weighted"] = s.ln_amplitude_weighted.cpu().double().numpy()
        if s.bfactor_angstrom2 != 0.0:
            g["sharpened"] = s.ln_amplitude_sharpened.cpu().double().numpy()
        fit = None
        fit_range = None
        if auto and s.fit_slope is not None and s.fit_intercept is not None:
            fit = (s.fit_slope, s.fit_intercept)
            # the shells the fit used: in the asked range and with signal left by the weighting
            k2 = s.k2.cpu().double().numpy()
            lo = float(ctx.params["autob_lowres"])
            hi = max(float(ctx.params["autob_highres"]), 2 * result.pixel_size_angstrom)
            used = ((k2 >= 1 / lo**2 * (1 - 1e-9)) & (k2 <= 1 / hi**2 * (1 + 1e-9))
                    & np.isfinite(g["FSC-weighted"]))
            if used.any():
                fit_range = (lo, float(1 / np.sqrt(k2[used].max())))
        plot_guinier(
            ctx.path("postprocess_guinier.png"), s.k2.cpu().double().numpy(), g, fit=fit,
            fit_range_angstrom=fit_range,
            title=f"{ctx.job_name}: B-factor {s.bfactor_angstrom2:.1f} Å²"
            + (f" (fit correlation {s.fit_correlation:.3f})" if s.fit_correlation else ""),
        )

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``4.35 Å (FSC 0.143, mask-corrected), B-factor -85 Å²``."""
        r = results[0][1]
        if not r.get("masked", True):
            kind = "unmasked FSC (no mask)"
        else:
            kind = "unmasked FSC" if r["unmasked_fsc_used"] else "mask-corrected FSC"
        return (f"{r['resolution']:.3g} Å at {kind} 0.143, B-factor {r['bfactor']:.4g} Å²"
                + (f" ({len(r['warnings'])} warning(s) in run.out)" if r["warnings"] else ""))

    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """RELION 3.1 PostProcess job options for its GUI."""
        auto = _auto(params)
        return {"do_auto_bfac": "Yes" if auto else "No",
                "do_adhoc_bfac": "No" if auto else "Yes"}


def _auto(params: Mapping[str, Any]) -> bool:
    """Automatic B-factor: asked, or by default when no --adhoc-bfac is given."""
    if params.get("autob") is not None:
        return bool(params["autob"])
    return params.get("adhoc_bfac") is None


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the project when inside it (as RELION writes names), else as is."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
