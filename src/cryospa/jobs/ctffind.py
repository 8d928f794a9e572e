"""``cryospa ctffind``: CTFFIND4-like CTF estimation of every micrograph, as RELION's CtfFind job.

Per micrograph (one item each; see :mod:`cryospa.core.ctf_estimation` for the method): the
amplitude spectrum is averaged over ``--box`` tiles of the micrograph (or, with
``--use_power_spectra`` and a ``rlnCtfPowerSpectrum`` column in the input, the spectrum saved by
``cryospa motioncorr`` is used), its background is removed, the mean defocus is searched from
``--defocus_min`` to ``--defocus_max`` in ``--defocus_step`` steps on its rotational average
(and in azimuthal sectors, which finds large astigmatism), then defocus U, V, the astigmatism
angle (and with ``--phase_shift`` the phase shift) are refined on the 2D spectrum between
``--res_min`` and ``--res_max``, restrained to ``--astigmatism`` as CTFFIND does. The fit
resolution is where the fitted rings stop matching the data's. Voltage, Cs, amplitude contrast
and pixel size come from the input's optics groups.

Outputs, laid out as RELION's (``<stem>`` is the micrograph's path below its job folder without
the suffix, e.g. ``Movies/mic001``):

* ``<stem>.ctf``: the diagnostic image as MRC (left half the background-subtracted spectrum,
  smoothed along the rings, right half the fitted ``CTF^2``; RELION's ``rlnCtfImage``
  ``<stem>.ctf:mrc``), ``<stem>_ctf.png`` the same picture with the fit resolution marked, and
  ``<stem>_ctf1d.png`` the 1D fit (astigmatism-corrected rotational average against the fitted
  ``CTF^2``, fit quality, fit resolution), for the first ``--plots`` micrographs;
* ``micrographs_ctf.star``: the input's optics and rows (every column kept) with
  ``rlnCtfImage``, ``rlnDefocusU``, ``rlnDefocusV``, ``rlnCtfAstigmatism``, ``rlnDefocusAngle``,
  ``rlnCtfFigureOfMerit``, ``rlnCtfMaxResolution`` (and ``rlnPhaseShift`` when fitted);
* ``defocus.png``: a histogram of the mean defocus and astigmatism against defocus.

A micrograph that cannot be read, or whose fit fails (no Thon rings fitted in the range, a
micrograph smaller than 64 pixels), is skipped: logged, counted in the summary, and left out of
``micrographs_ctf.star``; the others finish.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from cryospa.errors import InputFileError, ParameterError
from cryospa.io.mrc import read_mrc, write_mrc
from cryospa.io.star import RelionTable, joined, read_relion_star, write_relion_star
from cryospa.jobs._coords import coordinate_file_name
from cryospa.jobs._sets import item_info, list_cached, read_input_set
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

__all__ = ["CtfFind"]

_DESCRIPTION = __doc__ or ""

#: The columns this job adds (replacing any the input has), as RELION's CtfFind writes them.
_CTF_COLUMNS = ("rlnCtfImage", "rlnDefocusU", "rlnDefocusV", "rlnCtfAstigmatism",
                "rlnDefocusAngle", "rlnCtfFigureOfMerit", "rlnCtfMaxResolution")


def _phase(params: Mapping[str, Any]) -> bool:
    return bool(params.get("phase_shift"))


def _micrographs(ctx: JobContext) -> dict[str, dict[str, Any]]:
    """Micrograph name -> its row's index, optics and power spectrum; {} before the set exists."""
    table = read_input_set(ctx, "micrographs", "micrographs",
                           "give the output of import micrographs or motioncorr")
    if table is None:
        return {}
    star = ctx.abs(ctx.input("micrographs").path)
    rows = joined(table)
    out: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows.to_dict("records")):
        ps = row.get("rlnCtfPowerSpectrum")
        out[str(row["rlnMicrographName"])] = {
            "index": i,
            "pixel_size": _number(row, "rlnMicrographPixelSize", star),
            "voltage": _number(row, "rlnVoltage", star),
            "cs": _number(row, "rlnSphericalAberration", star),
            "ac": _number(row, "rlnAmplitudeContrast", star),
            "power_spectrum": str(ps) if isinstance(ps, str) and ps.strip() else None,
        }
    return out


def _number(row: Mapping[Any, Any], column: str, star: Path) -> float:
    value = row.get(column)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    positive = column in ("rlnMicrographPixelSize", "rlnVoltage")
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise InputFileError(
            star, f"optics group {row.get('rlnOpticsGroup')} has no valid {column} ({value!r})",
            "set the optics (voltage, Cs, amplitude contrast, pixel size) when importing",
        )
    return number


class _Skip(Exception):
    """A micrograph to leave out (the message says why)."""


@contextmanager
def _one_cpu_thread(device: Any) -> Iterator[None]:
    """Run torch on one CPU thread inside.

    The fit's many small operations gain nothing from threads and lose much when the cores are
    shared (e.g. with ``--j 2``).
    """
    import torch

    if getattr(device, "type", "cpu") != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@register
class CtfFind(PerItemJob):
    """CTF estimation per micrograph (see the module docstring)."""

    name = "ctffind"
    folder = "CtfFind"
    relion_type = 2  # PROC_CTFFIND
    description = _DESCRIPTION
    inputs = (
        Input("micrographs", (NodeType.MICROGRAPHS,),
              help="micrographs to estimate the CTF of (from import micrographs or motioncorr)",
              relion="input_star_mics"),
    )
    params = (
        Param("use_power_spectra", bool, True,
              help="use the amplitude spectra saved by motion correction (rlnCtfPowerSpectrum) "
              "where the input has them, instead of computing them from the micrographs",
              relion="use_given_ps"),
        Param("box", int, 512, unit="px", range=(64, None),
              help="FFT box size of the tiles the spectrum is averaged over (smaller for "
              "micrographs under two boxes wide)", relion="box"),
        Param("res_min", float, 30.0, unit="Å", range=(0, None), open_min=True,
              help="lowest resolution used in the fit", relion="resmin"),
        Param("res_max", float, 5.0, unit="Å", range=(0, None), open_min=True,
              help="highest resolution used in the fit (Nyquist if finer)", relion="resmax"),
        Param("defocus_min", float, 5000.0, unit="Å", range=(0, None), open_min=True,
              help="smallest mean defocus searched (underfocus positive)", relion="dfmin"),
        Param("defocus_max", float, 50000.0, unit="Å", range=(0, None), open_min=True,
              help="largest mean defocus searched", relion="dfmax"),
        Param("defocus_step", float, 500.0, unit="Å", range=(0, None), open_min=True,
              help="step of the defocus search", relion="dfstep"),
        Param("astigmatism", float, 100.0, unit="Å", range=(0, None),
              help="expected (tolerated) astigmatism dU - dV: restrains the fit as CTFFIND's "
              "restraint does; 0: no restraint", relion="dast"),
        Param("exhaustive", bool, False,
              help="slower, exhaustive search over astigmatism (up to 3000 Å) and its angle "
              "before the refinement", relion="slow_search"),
        Param("phase_shift", bool, False,
              help="also fit a phase shift (phase-plate data)", relion="do_phaseshift"),
        Param("phase_min", float, 0.0, unit="degrees", condition=_phase,
              condition_text="with --phase-shift", help="smallest phase shift searched",
              relion="phase_min"),
        Param("phase_max", float, 180.0, unit="degrees", condition=_phase,
              condition_text="with --phase-shift", help="largest phase shift searched",
              relion="phase_max"),
        Param("phase_step", float, 10.0, unit="degrees", range=(0, None), open_min=True,
              condition=_phase, condition_text="with --phase-shift",
              help="step of the phase shift search", relion="phase_step"),
        Param("window", int, -1, unit="px", range=(-1, None),
              help="estimate on a central square window of this size of each micrograph "
              "(then the saved power spectra are not used); -1: the whole micrograph",
              relion="ctf_win"),
        Param("plots", int, -1, range=(-1, None),
              help="write the diagnostic and 1D fit PNGs for this many micrographs (the first "
              "of the set); -1: all, 0: none"),
        DEVICE_PARAM,
    )
    outputs = (Output("micrographs", NodeType.MICROGRAPHS, "micrographs_ctf.star"),)
    citations = (
        "Rohou & Grigorieff (2015) J. Struct. Biol. 192:216-221 (CTFFIND4)",
        "Mindell & Grigorieff (2003) J. Struct. Biol. 142:334-347 (CTFFIND3)",
    )

    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """RELION 3.1 CtfFind job options for its GUI (the CTFFIND4 route)."""
        return {"use_ctffind4": "Yes", "use_gctf": "No", "use_noDW": "No"}

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """Resolution and defocus ranges in order, the phase range not empty, the device."""
        from cryospa.compute.device import resolve_device

        if params["res_min"] <= params["res_max"]:
            raise ParameterError(
                f"ctffind: --res-min {params['res_min']:g} Å must be coarser (larger) than "
                f"--res-max {params['res_max']:g} Å: swap them"
            )
        if params["defocus_min"] > params["defocus_max"]:
            raise ParameterError(
                f"ctffind: --defocus-min {params['defocus_min']:g} Å is larger than "
                f"--defocus-max {params['defocus_max']:g} Å: swap them"
            )
        if params["phase_shift"] and params["phase_min"] > params["phase_max"]:
            raise ParameterError(
                f"ctffind: --phase-min {params['phase_min']:g} is larger than --phase-max "
                f"{params['phase_max']:g} degrees: swap them"
            )
        if 0 <= params["window"] < 64:
            raise ParameterError(
                f"ctffind: --window {params['window']} px is too small: use at least 64 "
                "or -1 for the whole micrograph"
            )
        resolve_device(params["device"])

    def list_items(self, ctx: JobContext) -> list[str]:
        """The micrographs of the input set (re-read at every poll when streaming)."""
        return list_cached(ctx, _micrographs)

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Estimate the CTF of one micrograph; write its diagnostic image and plots."""
        info = item_info(ctx, key, _micrographs)
        start = time.perf_counter()
        try:
            result = self._estimate(ctx, key, info)
        except _Skip as why:
            ctx.log(f"{key}: skipped: {why}")
            return {"micrograph": key, "skipped": str(why)}
        result["seconds"] = round(time.perf_counter() - start, 3)
        return result

    def _spectrum(self, ctx: JobContext, key: str, info: Mapping[str, Any]) -> tuple[Any, float,
                                                                                       str]:
        """The amplitude spectrum (torch, on the job's device), its pixel size and its source."""
        import torch

        from cryospa.compute.device import resolve_device
        from cryospa.core.ctf_estimation import averaged_amplitude_spectrum

        p = ctx.params
        device = resolve_device(p["device"])
        ps = info.get("power_spectrum")
        if p["use_power_spectra"] and ps and p["window"] < 0:
            try:
                data, header = read_mrc(ctx.abs(ps))
                if data.ndim == 3 and data.shape[0] == 1:
                    data = data[0]
                if data.ndim != 2 or data.shape[0] != data.shape[1] or data.shape[0] < 64:
                    raise InputFileError(ps, f"a power spectrum must be one square image of at "
                                         f"least 64 px, found shape {data.shape}")
                if not np.isfinite(data).all() or not (data >= 0).all():
                    raise InputFileError(ps, "the power spectrum has negative, NaN or "
                                         "infinite values")
                apix = header.voxel_size_angstrom[0] or info["pixel_size"]
                return torch.from_numpy(data).to(device), float(apix), "power spectrum"
            except InputFileError as err:
                ctx.log(f"{key}: power spectrum not used ({err}); using the micrograph")
        try:
            data, _ = read_mrc(ctx.abs(key))
        except InputFileError as err:
            raise _Skip(f"unreadable micrograph: {err}") from err
        if data.ndim == 3 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 2:
            raise _Skip(f"a micrograph must be one 2D image, found shape {data.shape}")
        if not np.isfinite(data).all():
            raise _Skip("the micrograph has NaN or infinite pixels")
        win = int(p["window"])
        if 0 < win < min(data.shape):
            y0, x0 = (data.shape[0] - win) // 2, (data.shape[1] - win) // 2
            data = data[y0 : y0 + win, x0 : x0 + win]
        if min(data.shape) < 64:
            raise _Skip(f"the micrograph ({data.shape[1]} x {data.shape[0]} px) is smaller than "
                        "the smallest box (64 px)")
        spectrum = averaged_amplitude_spectrum(torch.from_numpy(data).to(device), int(p["box"]))
        return spectrum, float(info["pixel_size"]), "micrograph"

    def _estimate(self, ctx: JobContext, key: str, info: Mapping[str, Any]) -> dict[str, Any]:
        spectrum, apix, source = self._spectrum(ctx, key, info)
        with _one_cpu_thread(spectrum.device):
            return self._fit(ctx, key, info, spectrum, apix, source)

    def _fit(self, ctx: JobContext, key: str, info: Mapping[str, Any], spectrum: Any,
             apix: float, source: str) -> dict[str, Any]:
        from cryospa.core.ctf_estimation import (
            ctf_diagnostic_image,
            ctf_fit_profile,
            estimate_ctf_from_spectrum,
        )

        p = ctx.params
        if p["res_min"] <= 2.0 * apix:
            raise _Skip(f"--res-min {p['res_min']:g} Å is finer than Nyquist ({2 * apix:g} Å)")
        try:
            fit = estimate_ctf_from_spectrum(
                spectrum,
                apix,
                voltage_kv=info["voltage"],
                spherical_aberration_mm=info["cs"],
                amplitude_contrast=info["ac"],
                min_resolution_angstrom=float(p["res_min"]),
                max_resolution_angstrom=float(p["res_max"]),
                defocus_min_angstrom=float(p["defocus_min"]),
                defocus_max_angstrom=float(p["defocus_max"]),
                defocus_step_angstrom=float(p["defocus_step"]),
                astigmatism_tolerance_angstrom=float(p["astigmatism"]) or None,
                exhaustive_search=bool(p["exhaustive"]),
                fit_phase_shift=bool(p["phase_shift"]),
                phase_shift_min_degrees=float(p["phase_min"]),
                phase_shift_max_degrees=float(p["phase_max"]),
                phase_shift_step_degrees=float(p["phase_step"]),
            )
        except ValueError as err:
            raise _Skip(f"fit failed: {err}") from err
        if not math.isfinite(fit.max_resolution_angstrom):
            raise _Skip(f"no Thon rings fitted between {p['res_min']:g} and {p['res_max']:g} Å "
                        f"(figure of merit {fit.figure_of_merit:.3f})")

        rel = PurePosixPath(coordinate_file_name(key, ".ctf"))
        out = ctx.path(*rel.parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        image = ctf_diagnostic_image(fit).cpu().numpy()
        write_mrc(out, image, voxel_size_angstrom=apix)
        plots = int(p["plots"])
        if plots < 0 or info["index"] < plots:
            from cryospa.plots.ctf import plot_ctf_diagnostic, plot_ctf_fit_1d

            title = (f"{key}\ndU {fit.defocus_u_angstrom:.0f} Å, dV {fit.defocus_v_angstrom:.0f} "
                     f"Å, angle {fit.astigmatism_angle_degrees:.1f}°"
                     + (f", phase {fit.phase_shift_degrees:.0f}°" if p["phase_shift"] else "")
                     + f", FOM {fit.figure_of_merit:.3f}, fit to "
                     f"{fit.max_resolution_angstrom:.2f} Å")
            plot_ctf_diagnostic(out.with_name(out.stem + "_ctf.png"), image,
                                pixel_size_angstrom=apix,
                                fit_resolution_angstrom=fit.max_resolution_angstrom, title=title)
            prof = ctf_fit_profile(fit)
            plot_ctf_fit_1d(out.with_name(out.stem + "_ctf1d.png"), prof.frequency_per_angstrom,
                            prof.spectrum, prof.ctf2, prof.fit_quality,
                            fit_resolution_angstrom=fit.max_resolution_angstrom,
                            fit_range_angstrom=fit.fit_range_angstrom, title=title)
        return {
            "micrograph": key,
            "ctf_image": ctx.rel(*rel.parts),
            "defocus_u": fit.defocus_u_angstrom,
            "defocus_v": fit.defocus_v_angstrom,
            "angle": fit.astigmatism_angle_degrees,
            "phase_shift": fit.phase_shift_degrees,
            "fom": fit.figure_of_merit,
            "max_resolution": fit.max_resolution_angstrom,
            "source": source,
        }

    def finalize(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> None:
        """Write ``micrographs_ctf.star`` (input rows + CTF columns) and ``defocus.png``."""
        star = ctx.abs(ctx.input("micrographs").path)
        table = read_relion_star(star, "micrographs")
        fitted = {k: r for k, r in results if "skipped" not in r}
        names = table.data["rlnMicrographName"].astype(str)
        data = table.data.loc[names.isin(list(fitted))].reset_index(drop=True)
        data = data.drop(columns=[c for c in (*_CTF_COLUMNS, "rlnPhaseShift") if c in data])
        rows = [fitted[str(n)] for n in data["rlnMicrographName"]]
        data["rlnCtfImage"] = [r["ctf_image"] + ":mrc" for r in rows]
        du = np.array([r["defocus_u"] for r in rows], dtype=float)
        dv = np.array([r["defocus_v"] for r in rows], dtype=float)
        data["rlnDefocusU"] = du
        data["rlnDefocusV"] = dv
        data["rlnCtfAstigmatism"] = du - dv
        data["rlnDefocusAngle"] = np.array([r["angle"] for r in rows], dtype=float)
        data["rlnCtfFigureOfMerit"] = np.array([r["fom"] for r in rows], dtype=float)
        data["rlnCtfMaxResolution"] = np.array([r["max_resolution"] for r in rows], dtype=float)
        if ctx.params["phase_shift"]:
            data["rlnPhaseShift"] = np.array([r["phase_shift"] for r in rows], dtype=float)
        write_relion_star(ctx.path("micrographs_ctf.star"),
                          RelionTable("micrographs", data, table.optics.copy()))
        if rows:
            from cryospa.plots.ctf import plot_defocus_distribution

            plot_defocus_distribution(ctx.path("defocus.png"), du, dv,
                                      title=f"{ctx.job_name}: {len(rows)} micrographs")

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``20 micrographs, defocus 5123 to 29876 Å, median fit resolution 3.6 Å; 1 skipped``."""
        fitted = [r for _, r in results if "skipped" not in r]
        skipped = [(k, r["skipped"]) for k, r in results if "skipped" in r]
        if fitted:
            mean = pd.Series([0.5 * (r["defocus_u"] + r["defocus_v"]) for r in fitted])
            res = float(np.median([r["max_resolution"] for r in fitted]))
            text = (f"{len(fitted)} micrographs, defocus {mean.min():.0f} to {mean.max():.0f} Å "
                    f"(mean of U and V), median fit resolution {res:.2f} Å")
        else:
            text = "no micrograph fitted"
        if skipped:
            text += f"; {len(skipped)} skipped (first: {skipped[0][0]}: {skipped[0][1]})"
        return text
