"""``cryospa pick template``: reference-based picking with 2D references, as RELION's autopicker.

Inputs: ``--micrographs``, micrographs with their CTF (``micrographs_ctf.star`` of a CTF job;
``--no-ctf`` for micrographs without), and ``--references``: 2D class averages (the
``class_averages.star`` of ``cryospa select`` or the ``run_class_averages.star`` of ``cryospa
class2d``, any ClassAverages set: ``rlnImageName`` rows with an optics table giving
``rlnImagePixelSize``), or a plain ``.mrcs`` stack with ``--references-angpix``. ``--classes
1,3,5`` picks with these class numbers only (image numbers for a stack).

Per micrograph (one item each): the micrograph is normalised and down-sampled to a working
pixel of half ``--lowpass`` (or a finer grid, ``--shrink``); the references are low-passed,
resampled to the working pixel size, rotated every ``--psi-step`` degrees, multiplied by the
micrograph's CTF (``--ctf-intact-first-peak``: left at 1 up to its first peak), cut to a disc of
the particle diameter and normalised there. The figure of merit at every position is the
normalised cross-correlation (Pearson's r, -1 to 1) between a template and the micrograph under
the disc, with the micrograph's local mean and variance under the disc (computed by FFT, as
RELION's autopicker normalises by local statistics), best over references and angles; peaks of at
least the threshold are picked, best first, at least ``--min-distance`` apart (default: the
particle diameter), none within half a particle of an edge. The threshold is each micrograph's
own (``--auto-threshold``, the default): its candidate peaks split into background and
particles at Otsu's threshold, the valley of ``fom_histogram.png``; where they do not split
clearly (an empty or crowded micrograph) ``--threshold`` is used, and ``--no-auto-threshold``
uses it everywhere. The correlation a particle reaches depends on its contrast (defocus, ice,
pixel size, mass): on the simulated tutorial set the split falls at 0.43-0.57 (F1 0.94, as a
fixed 0.5), on a set of a larger particle at 1.9 Å/px at 0.27-0.39 (F1 0.92; a fixed 0.5
found 76 % of the particles, F1 0.85); ``--max-stddev-noise`` drops peaks
whose surroundings are much more variable than usual (aggregates, ice, carbon) (see
:mod:`cryospa.core.picking`).

Outputs, as ``cryospa pick log`` writes them (read by ``cryospa extract`` and
``relion_preprocess --coord_dir <job>/ --coord_suffix _autopick.star``):

* per micrograph ``<job>/<micrograph path>_autopick.star`` with ``rlnCoordinateX/Y`` (pixels),
  ``rlnAutopickFigureOfMerit`` (the normalised cross-correlation), ``rlnClassNumber`` (the best
  reference's class number) and ``rlnAnglePsi`` (its in-plane angle, degrees);
* ``coordinates.star``, ``coords_suffix_autopick.star``, ``summary.star``,
  ``picks_per_micrograph.png``; ``references.png`` (the references used, and as templates at the
  working pixel size); ``fom_histogram.png`` (the figure of merit of every candidate peak, with
  the threshold: particles and background form two groups, the threshold goes between them); for
  the first ``--plots`` micrographs ``..._autopick.png`` with the picks drawn.

A micrograph that cannot be read, or whose CTF values are missing, is a failed item (logged and
counted; the others finish).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from cryospa.errors import InputFileError, ParameterError
from cryospa.io.coords import write_coordinates_star
from cryospa.io.mrc import ImageStack, read_images, read_mrc
from cryospa.io.star import joined, read_relion_star, read_star
from cryospa.jobs._coords import PICK_PLOTS_PARAM, coordinate_file_name
from cryospa.jobs._sets import item_info, list_cached, read_input_set
from cryospa.jobs.pick_log import SUFFIX, PickLog
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

__all__ = ["PickTemplate", "References", "ctf_parameters", "parse_class_numbers",
           "read_references"]

_DESCRIPTION = __doc__ or ""

#: Bins of the figure-of-merit histogram kept per micrograph (candidate peaks from 0 to 1).
FOM_BINS = np.linspace(0.0, 1.0, 51)


@dataclass
class References:
    """2D references read from a ClassAverages set or a stack.

    Attributes
    ----------
    images
        ``(n, b, b)`` float32.
    pixel_size_angstrom
        Their pixel size.
    class_numbers
        ``(n,)`` the number written as ``rlnClassNumber`` for picks made with each (the class
        number of a class-average set, the 1-based image number of a stack).
    path
        The file they came from.
    """

    images: np.ndarray
    pixel_size_angstrom: float
    class_numbers: np.ndarray
    path: Path


def parse_class_numbers(spec: str) -> list[int]:
    """``"1,3,5"``, ``"1 3 5"`` or ``"2-4,7"`` -> sorted unique class numbers (>= 1)."""
    out: set[int] = set()
    for part in re.split(r"[,\s]+", re.sub(r"\s*-\s*", "-", spec.strip())):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ParameterError(f"--classes: cannot read {part!r} (use e.g. 1,3,5 or 2-4)")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if lo < 1 or hi < lo:
            raise ParameterError(f"--classes: bad range {part!r} (classes count from 1)")
        out.update(range(lo, hi + 1))
    return sorted(out)


def read_references(
    path: Path, project_dir: Path, *, classes: str = "", angpix: float = 0.0
) -> References:
    """Read the references of a ClassAverages STAR set or an MRC stack.

    The pixel size is ``angpix`` if > 0, else the set's ``rlnImagePixelSize`` (optics table) or
    ``rlnPixelSize`` (a RELION model file's general table), else the stack's MRC header.

    Raises
    ------
    InputFileError
        Unreadable file, no image column, unknown pixel size, images not square, not finite
        or all flat.
    ParameterError
        ``classes`` names a class that is not there, or selects nothing.
    """
    numbers: np.ndarray
    star_size = 0.0
    header_size = 0.0
    if path.suffix.lower() == ".star":
        blocks = read_star(path)
        table = next((df for name, df in blocks.items()
                      if name != "optics" and isinstance(df, pd.DataFrame)
                      and ("rlnImageName" in df.columns or "rlnReferenceImage" in df.columns)),
                     None)
        if table is None or table.empty:
            raise InputFileError(path, "no references: no table with rlnImageName or "
                                 "rlnReferenceImage rows",
                                 "give the class_averages.star of a select job, the "
                                 "run_class_averages.star of a class2d job or an .mrcs stack")
        column = "rlnImageName" if "rlnImageName" in table.columns else "rlnReferenceImage"
        names = table[column].astype(str).tolist()
        numbers = (table["rlnClassNumber"].to_numpy(np.int64) if "rlnClassNumber" in table.columns
                   else np.arange(1, len(names) + 1))
        optics = blocks.get("optics")
        if (isinstance(optics, pd.DataFrame) and "rlnImagePixelSize" in optics.columns
                and len(optics)):
            star_size = float(optics["rlnImagePixelSize"].iloc[0])
        for df in blocks.values():
            if isinstance(df, Mapping) and "rlnPixelSize" in df:  # a RELION model file
                star_size = star_size or float(df["rlnPixelSize"])
        chosen = _choose(numbers, classes, path)
        images = read_images([names[i] for i in chosen], root=project_dir, star_path=path)
        numbers = numbers[chosen]
        first = Path(names[chosen[0]].split("@", 1)[-1])
        first = first if first.is_absolute() else project_dir / first
        with ImageStack(first) as stack:
            header_size = float(stack.header.voxel_size_angstrom[0])
    else:
        with ImageStack(path) as stack:
            header_size = float(stack.header.voxel_size_angstrom[0])
            count = len(stack)
        numbers = np.arange(1, count + 1)
        chosen = _choose(numbers, classes, path)
        data, _ = read_mrc(path, permissive=True)
        images = (data[None] if data.ndim == 2 else data)[chosen]
        numbers = numbers[chosen]
    size = angpix if angpix > 0 else (star_size if star_size > 0 else header_size)
    if not size > 0:
        raise InputFileError(path, "the references' pixel size is unknown (no "
                             "rlnImagePixelSize in an optics table, none in the MRC header)",
                             "give it with --references-angpix")
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or images.shape[1] != images.shape[2] or images.shape[1] < 8:
        raise InputFileError(path, f"references must be square 2D images of at least 8 px, "
                             f"found shape {images.shape}", "give 2D class averages")
    if not np.isfinite(images).all():
        raise InputFileError(path, "the references have NaN or infinite pixels",
                             "re-create them, or leave those classes out with --classes")
    if not (images.reshape(len(images), -1).std(axis=1) > 0).any():
        raise InputFileError(path, "every selected reference is flat (empty classes?)",
                             "select populated classes (--classes, or cryospa select)")
    return References(images, float(size), numbers.astype(np.int64), path)


def _choose(numbers: np.ndarray, classes: str, path: Path) -> np.ndarray:
    """Indices of the rows whose number is in ``classes`` (all when empty)."""
    if len(numbers) == 0:
        raise InputFileError(path, "the file holds no references", "give a non-empty set")
    if not classes.strip():
        return np.arange(len(numbers))
    wanted = parse_class_numbers(classes)
    if not wanted:
        raise ParameterError(f"--classes {classes!r} selects no reference")
    missing = sorted(set(wanted) - {int(n) for n in numbers})
    if missing:
        raise ParameterError(
            f"--classes: {', '.join(map(str, missing))} not in {path.name} (it has "
            f"{_ranges(numbers)})")
    return np.flatnonzero(np.isin(numbers, wanted))


def _ranges(numbers: np.ndarray) -> str:
    values = sorted({int(n) for n in numbers})
    if values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}" if len(values) > 1 else str(values[0])
    return ",".join(map(str, values))


def ctf_parameters(row: Mapping[str, Any] | pd.Series, where: object) -> dict[str, float]:
    """Keyword arguments of :func:`cryospa.core.ctf.ctf_2d` from a micrograph's joined row.

    Raises
    ------
    InputFileError
        Missing or non-positive defocus, missing microscope values.
    """
    def number(column: str, default: float | None = None) -> float:
        value = row.get(column, default)
        try:
            out = float(value) if value is not None else math.nan
        except (TypeError, ValueError):
            out = math.nan
        if not math.isfinite(out):
            raise InputFileError(where, f"no valid {column} for {row.get('rlnMicrographName')}",
                                 "re-run CTF estimation, or pick with --no-ctf")
        return out

    du, dv = number("rlnDefocusU"), number("rlnDefocusV")
    if not (du > 0 and dv > 0):
        raise InputFileError(where, f"defocus U, V = {du:g}, {dv:g} Å for "
                             f"{row.get('rlnMicrographName')} (no CTF fit)",
                             "re-run CTF estimation on it or leave it out (subset)")
    return {
        "defocus_u_angstrom": du,
        "defocus_v_angstrom": dv,
        "astigmatism_angle_degrees": number("rlnDefocusAngle", 0.0),
        "voltage_kv": number("rlnVoltage"),
        "spherical_aberration_mm": number("rlnSphericalAberration"),
        "amplitude_contrast": number("rlnAmplitudeContrast"),
        "phase_shift_degrees": number("rlnPhaseShift", 0.0),
        "bfactor_angstrom2": number("rlnCtfBfactor", 0.0),
    }


def _micrographs(ctx: JobContext) -> dict[str, tuple[int, float, dict[str, float] | None]]:
    """Micrograph -> (index, pixel size in Å, CTF parameters or None); {} before the set exists.

    A micrograph whose CTF values are missing gets the error message in place of them (the
    item fails with it).
    """
    table = read_input_set(ctx, "micrographs", "micrographs",
                           "give the output of ctffind (or motioncorr / import with --no-ctf)")
    if table is None:
        return {}
    full = joined(table)
    where = ctx.input("micrographs").path
    out: dict[str, tuple[int, float, Any]] = {}
    sizes: dict[int, float] = {}
    from cryospa.io.star import pixel_size_angstrom

    for i, (_, row) in enumerate(full.iterrows()):
        group = int(row.get("rlnOpticsGroup", 1))
        if group not in sizes:
            sizes[group] = pixel_size_angstrom(table, group)
        ctf: Any = None
        if ctx.params["ctf"]:
            try:
                ctf = ctf_parameters(row, where)
            except InputFileError as err:
                ctf = str(err)
        out[str(row["rlnMicrographName"])] = (i, sizes[group], ctf)
    return out


def _references(ctx: JobContext) -> References:
    """The references, read once per process."""
    refs = ctx.scratch.get("references")
    if refs is None:
        p = ctx.params
        refs = read_references(ctx.abs(ctx.input("references").path), ctx.project_dir,
                               classes=p["classes"], angpix=float(p["references_angpix"]))
        ctx.scratch["references"] = refs
    return refs


def _diameters(ctx: JobContext, refs: References) -> tuple[float, float]:
    """The particle and mask diameters in Å (given, or from the references)."""
    import torch

    from cryospa.core.picking import template_diameters_angstrom

    return template_diameters_angstrom(
        torch.from_numpy(refs.images), pixel_size_angstrom=refs.pixel_size_angstrom,
        particle_diameter_angstrom=float(ctx.params["particle_diameter"]) or None,
        mask_diameter_angstrom=float(ctx.params["mask_diameter"]) or None)


@register
class PickTemplate(PerItemJob):
    """Reference-based (template) picking with 2D references (see the module docstring)."""

    name = "pick template"
    folder = "AutoPick"
    relion_type = 4  # PROC_AUTOPICK
    description = _DESCRIPTION
    inputs = (
        Input("micrographs", (NodeType.MICROGRAPHS,),
              help="micrographs to pick, with their CTF (the output of ctffind)",
              relion="fn_input_autopick"),
        Input("references", (NodeType.CLASS_AVERAGES,),
              help="2D references: class averages (a select or class2d job, or its "
              "class-averages STAR file) or an .mrcs stack", relion="fn_refs_autopick"),
    )
    params = (
        Param("classes", str, "", kind="text", metavar="NUMBERS", multiple=True,
              help="pick with these references only (none given: all): class numbers "
              "(rlnClassNumber) of a class-average set, image numbers of a stack, e.g. 1,3,5, "
              "1 3 5 or 2-4"),
        Param("references_angpix", float, 0.0, unit="Å", range=(0, None), metavar="Å",
              help="pixel size of the references; 0: from their optics table (a STAR set) or "
              "MRC header", relion="angpix_ref"),
        Param("particle_diameter", float, 0.0, unit="Å", range=(0, None), metavar="Å",
              help="particle diameter: the default minimum distance between picks, and twice "
              "the edge band without picks; 0: where the references' mean density profile ends"),
        Param("mask_diameter", float, 0.0, unit="Å", range=(0, None), metavar="Å",
              help="diameter of the disc under which templates and micrograph are compared "
              "(the micrograph's local mean and variance): the particle and a ring of "
              "background; 0: 1.5 particle diameters"),
        Param("invert_refs", bool, True,
              help="the references have white particles and the micrographs dark ones (class "
              "averages of contrast-inverted particles, RELION's default); --no-invert-refs "
              "when both have the same contrast", relion="do_invert_refs"),
        Param("ctf", bool, True,
              help="multiply the references by each micrograph's CTF (needs a CTF job's "
              "micrographs); --no-ctf for micrographs without CTF values",
              relion="do_ctf_autopick"),
        Param("ctf_intact_first_peak", bool, False,
              help="leave the CTF at 1 up to its first peak", condition=lambda p: bool(p["ctf"]),
              condition_text="with --ctf", relion="do_ignore_first_ctfpeak_autopick"),
        Param("lowpass", float, 20.0, unit="Å", range=(0, None), open_min=True,
              help="resolution limit of the comparison (RELION's default 20; against "
              "Einstein-from-noise); the micrographs are down-sampled to half of it per pixel",
              relion="lowpass"),
        Param("shrink", float, 0.0, range=(0, 1), metavar="FRACTION",
              help="0: working grid from --lowpass; else this fraction of the micrograph's size "
              "(a finer grid: slower, more precise positions), as RELION's --shrink",
              relion="shrink"),
        Param("psi_step", float, 5.0, unit="°", range=(0, 360), open_min=True,
              help="in-plane angular sampling of the references (RELION's GUI default 5)",
              relion="psi_sampling_autopick"),
        Param("threshold", float, 0.5, range=(-1, 1), metavar="NCC",
              help="smallest figure of merit of a pick: the normalised cross-correlation with "
              "the best template (-1 to 1); with --auto-threshold only where a micrograph's "
              "candidates do not split into background and particles; fom_histogram.png "
              "shows where they separate", relion="threshold_autopick"),
        Param("auto_threshold", bool, True, relion=None,
              help="each micrograph's threshold splits its candidate peaks into background and "
              "particles (Otsu's threshold on their figures of merit), when the split explains "
              "at least 0.8 of their variance; else --threshold"),
        Param("min_distance", float, 0.0, unit="Å", range=(0, None),
              help="minimum distance between picks; 0: the particle diameter",
              relion="mindist_autopick"),
        Param("max_stddev_noise", float, 0.0, range=(0, None), metavar="FACTOR",
              help="drop picks whose surroundings (one to two particle radii) vary more than "
              "this many times the median over the micrograph (aggregates, ice, carbon; e.g. "
              "1.5); 0: no limit", relion="maxstddevnoise_autopick"),
        PICK_PLOTS_PARAM,
        DEVICE_PARAM,
    )
    outputs = (Output("coordinates", NodeType.COORDINATES, "coordinates.star"),)
    citations = (
        "Scheres (2015) J. Struct. Biol. 189:114-122 (RELION reference-based autopicking)",
        "Roseman (2003) J. Struct. Biol. 145:91-99 (fast local correlation)",
    )

    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """RELION 3.1 autopick job options for its GUI (2D references)."""
        return {"do_log": "No", "do_refs": "Yes", "do_ref3d": "No"}

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """References readable with a pixel size and a selection; micrographs with CTF."""
        from cryospa.compute.device import resolve_device

        resolve_device(params["device"])
        ref_input = inputs["references"][0]
        ref_path = Path(ref_input.path)
        ref_path = ref_path if ref_path.is_absolute() else project_dir / ref_path
        if not ref_path.is_file():
            raise InputFileError(ref_path, "references file not found",
                                 "give a finished select / class2d job or an .mrcs stack")
        refs = read_references(ref_path, project_dir, classes=params["classes"],
                               angpix=float(params["references_angpix"]))
        box_angstrom = refs.images.shape[-1] * refs.pixel_size_angstrom
        if params["particle_diameter"] > box_angstrom:
            raise ParameterError(
                f"pick template: --particle-diameter {params['particle_diameter']:g} Å is larger "
                f"than the references' box ({refs.images.shape[-1]} px of "
                f"{refs.pixel_size_angstrom:g} Å = {box_angstrom:g} Å): give a smaller one")
        mic_path = Path(inputs["micrographs"][0].path)
        mic_path = mic_path if mic_path.is_absolute() else project_dir / mic_path
        if not mic_path.is_file():
            if run.stream:
                return
            raise InputFileError(mic_path, "micrographs STAR file not found",
                                 "give the output of ctffind")
        table = read_relion_star(mic_path, "micrographs")
        if params["ctf"]:
            missing = [c for c in ("rlnDefocusU", "rlnDefocusV") if c not in table.data.columns]
            if missing and not (run.stream and table.data.empty):
                raise InputFileError(
                    mic_path, f"the micrographs have no CTF values ({', '.join(missing)})",
                    "give the micrographs of a CTF job (cryospa ctffind), or pick with --no-ctf")
            full = joined(table)
            for column in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
                if column not in full.columns:
                    raise InputFileError(mic_path, f"no {column} for the CTF",
                                         "import the micrographs with --kv, --cs and --q0")
        from cryospa.io.star import pixel_size_angstrom

        for group in sorted(set(table.optics["rlnOpticsGroup"].astype(int))):
            apix = pixel_size_angstrom(table, group)
            if params["lowpass"] < 2 * apix * 0.999:
                raise ParameterError(
                    f"pick template: --lowpass {params['lowpass']:g} Å is finer than the "
                    f"micrographs' Nyquist resolution ({2 * apix:g} Å, optics group {group}): "
                    "give a larger value")

    def list_items(self, ctx: JobContext) -> list[str]:
        """The micrographs of the input set (re-read at every poll when streaming)."""
        return list_cached(ctx, _micrographs)

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Pick one micrograph; write its coordinate file (and picture)."""
        import torch

        from cryospa.compute.device import resolve_device
        from cryospa.core.picking import pick_template

        index, angpix, ctf = item_info(ctx, key, _micrographs)
        if isinstance(ctf, str):
            raise InputFileError(key, ctf.split(": ", 1)[-1])
        refs = _references(ctx)
        data, _ = read_mrc(ctx.abs(key))
        if data.ndim == 3 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 2:
            raise InputFileError(key, f"a micrograph must be one 2D image, found shape "
                                 f"{data.shape}", "pick summed micrographs, not movies")
        if not np.isfinite(data).all():
            raise InputFileError(key, "the micrograph has NaN or infinite pixels",
                                 "re-create it (motion correction) or leave it out (subset)")
        p = ctx.params
        device = resolve_device(p["device"])
        diameter, mask = _diameters(ctx, refs)
        picks = pick_template(
            torch.from_numpy(data).to(device),
            torch.from_numpy(refs.images).to(device),
            pixel_size_angstrom=angpix,
            reference_pixel_size_angstrom=refs.pixel_size_angstrom,
            particle_diameter_angstrom=diameter,
            mask_diameter_angstrom=mask,
            ctf=ctf,
            ctf_intact_first_peak=bool(p["ctf_intact_first_peak"]),
            lowpass_angstrom=float(p["lowpass"]),
            shrink=float(p["shrink"]),
            psi_step_degrees=float(p["psi_step"]),
            threshold=float(p["threshold"]),
            auto_threshold=bool(p.get("auto_threshold", False)),
            min_distance_angstrom=float(p["min_distance"]) or None,
            max_stddev_noise=float(p["max_stddev_noise"]) or None,
            white=not p["invert_refs"],
        )
        xy = picks.xy.cpu().numpy()
        fom = picks.fom.cpu().numpy()
        n = len(fom)
        table = pd.DataFrame({
            "rlnCoordinateX": xy[:, 0],
            "rlnCoordinateY": xy[:, 1],
            "rlnAutopickFigureOfMerit": fom,
            "rlnClassNumber": refs.class_numbers[picks.reference.cpu().numpy()],
            "rlnAnglePsi": picks.psi_degrees.cpu().numpy(),
        })
        rel = coordinate_file_name(key, SUFFIX)
        out = ctx.path(*PurePosixPath(rel).parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_coordinates_star(out, table)
        plot = None
        if p["plots"] < 0 or index < p["plots"]:
            from cryospa.plots.picking import plot_picks

            h, w = data.shape
            hw, ww = picks.image.shape
            png = out.with_name(out.name[: -len(".star")] + ".png")
            shown = -picks.image if p["invert_refs"] else picks.image  # the micrograph's contrast
            plot_picks(
                png, shown.cpu().numpy(), xy, diameter / angpix, scale=(w / ww, h / hw),
                title=f"{PurePosixPath(key).name}: {n} picks (threshold {picks.threshold:.2f}"
                + (" auto" if picks.split else "") + ", "
                f"{len(refs.images)} references"
                + (f", {picks.n_rejected} dropped by --max-stddev-noise)" if picks.n_rejected
                   else ")"),
            )
            plot = ctx.rel(*PurePosixPath(rel).with_suffix(".png").parts)
        counts, _ = np.histogram(picks.candidate_fom.cpu().numpy(), bins=FOM_BINS)
        return {
            "micrograph": key,
            "coordinates": ctx.rel(*PurePosixPath(rel).parts),
            "n": n,
            "fom_mean": float(fom.mean()) if n else 0.0,
            "too_high": picks.n_rejected,
            "plot": plot,
            "fom_counts": counts.astype(int).tolist(),
            "threshold": picks.threshold,
            "separation": picks.separation,
            "split": picks.split,
            "diameter": diameter,
            "mask_diameter": mask,
        }

    def finalize(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> None:
        """As ``pick log``, plus the references picture and the figure-of-merit histogram."""
        PickLog().finalize(ctx, results)  # the same files as LoG picking
        from cryospa.plots.picking import plot_fom_histogram, plot_references

        counts = np.zeros(len(FOM_BINS) - 1, dtype=np.int64)
        for _, r in results:
            counts += np.asarray(r.get("fom_counts") or np.zeros_like(counts), dtype=np.int64)
        used = [float(r["threshold"]) for _, r in results if r.get("threshold") is not None]
        plot_fom_histogram(ctx.path("fom_histogram.png"), FOM_BINS, counts,
                           float(np.median(used)) if used else float(ctx.params["threshold"]),
                           thresholds=used if ctx.params.get("auto_threshold") else None,
                           n_picked=sum(int(r.get("n", 0)) for _, r in results))
        if not ctx.path("references.png").is_file():
            refs = _references(ctx)
            diameter, mask = _diameters(ctx, refs)
            plot_references(ctx.path("references.png"), refs.images, refs.class_numbers,
                            pixel_size_angstrom=refs.pixel_size_angstrom,
                            diameter_angstrom=diameter, mask_diameter_angstrom=mask)

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``798 picks on 12 micrographs (mean 66.5, 62 to 70 per micrograph); threshold ...``."""
        line = PickLog().summary(ctx, results)
        if not ctx.params.get("auto_threshold"):
            return line
        fixed = float(ctx.params["threshold"])
        split = [float(r["threshold"]) for _, r in results if r.get("split")]
        n = len([r for _, r in results if r.get("separation") is not None])
        if not n:
            return line
        line += (f"; auto threshold {min(split):.2f} to {max(split):.2f}" if split
                 else "; no micrograph's candidates split")
        if len(split) < n:
            line += f", --threshold {fixed:g} on {n - len(split)} of {n} micrographs"
        return line
