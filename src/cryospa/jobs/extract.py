"""``cryospa extract``: cut particle boxes out of micrographs, as RELION 3.1's Extract job.

Inputs: ``--micrographs`` (a MicrographSet, normally ``micrographs_ctf.star`` of a CTF job, whose
CTF columns are joined into the particles) and either ``--coordinates`` (a CoordinateSet:
``coordinates.star`` listing ``rlnMicrographName`` -> coordinate file, from an import or a
picking job) or, to re-extract refined particles, ``--particles`` (a ParticleSet with
``rlnMicrographName``, ``rlnCoordinateX/Y`` and the refined ``rlnOriginX/YAngst``).

Per micrograph (one item each), as ``relion_preprocess --extract``:

* each coordinate is truncated to whole pixels and that pixel becomes the box centre
  (pixel ``box // 2``); the sub-pixel part is left in the image (see
  :mod:`cryospa.core.extraction`);
* boxes that cross the micrograph's edge are dropped and counted (``--edge drop``, the
  default); ``--edge pad`` keeps them with the missing pixels filled by the nearest edge
  pixels, as RELION does;
* each box is re-scaled by Fourier cropping to ``--rescale`` pixels (pixel size times
  ``box / rescale``), normalised (the background, outside a circle of ``--bg_diameter``
  pixels, gets zero mean and unit standard deviation after a least-squares plane over it is
  subtracted) and, with ``--invert_contrast``, multiplied by -1 (white particles);
* the boxes go to one stack per micrograph, ``<job>/<micrograph path after its job
  folder, without extension>.mrcs`` (``Extract/job007/Movies/mic001.mrcs``), and the rows to
  ``<same>_extract.star``.

Re-extraction (``--particles``) with ``--recenter`` (default) moves each coordinate by the
whole-pixel part of the refined origin (``x - round(origin / pixel size)``) and keeps the
sub-pixel remainder as the new origin, as RELION's ``--recenter``; the particles keep their
other columns (angles, classes, their own CTF). ``--reset_offsets`` sets the origins to 0
instead.

``particles.star`` (RELION 3.1): ``data_optics`` (the micrographs' optics groups with
``rlnImagePixelSize``, ``rlnImageSize``, ``rlnImageDimensionality`` 2) and ``data_particles``
(the coordinate file's columns, ``rlnImageName`` ``000001@Extract/job007/.../mic001.mrcs``,
``rlnMicrographName``, ``rlnOpticsGroup``, and from a CTF job ``rlnCtfMaxResolution``,
``rlnCtfFigureOfMerit``, ``rlnDefocusU/V``, ``rlnDefocusAngle``, ``rlnCtfBfactor``,
``rlnCtfScalefactor``, ``rlnPhaseShift``).

``--bg_diameter`` is in pixels of the extraction box before re-scaling, as in RELION's GUI
(-1: 75 % of the box); the normalisation's radius is ``int(diameter / 2 * rescale / box)``
pixels of the output box, as the ``--bg_radius`` RELION's GUI passes to ``relion_preprocess``.
Like RELION 3.1, no ``rlnGroupNumber`` is written (refinement groups by micrograph).

Micrographs without CTF columns are extracted without them (a warning is logged once); a
micrograph whose own CTF values are missing or not positive, whose coordinate file is empty,
or that is smaller than the box is skipped, logged and counted while the others finish. A job
that extracts no particle at all fails, listing why.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryospa.compute.device import resolve_device
from cryospa.core.extraction import (
    box_centres,
    boxes_inside,
    boxes_touch,
    extract_boxes,
    preprocess_particles,
    recentre_coordinates,
)
from cryospa.errors import CryospaError, InputFileError, ParameterError
from cryospa.io.coords import read_coordinates
from cryospa.io.mrc import StackWriter, format_image_name, read_mrc
from cryospa.io.star import (
    RelionTable,
    joined,
    pixel_size_angstrom,
    read_relion_star,
    read_star,
    write_relion_star,
    write_star,
)
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

__all__ = ["Extract", "background_radius_px", "output_root"]

_DESCRIPTION = __doc__ or ""

#: CTF columns RELION's extraction copies from the micrographs (with their defaults).
CTF_COLUMNS: dict[str, float] = {
    "rlnDefocusU": 0.0,
    "rlnDefocusV": 0.0,
    "rlnDefocusAngle": 0.0,
    "rlnCtfBfactor": 0.0,
    "rlnCtfScalefactor": 1.0,
    "rlnPhaseShift": 0.0,
}
#: Copied only when the micrographs STAR has them.
CTF_QUALITY_COLUMNS = ("rlnCtfMaxResolution", "rlnCtfFigureOfMerit", "rlnBeamTiltX",
                       "rlnBeamTiltY")
_XY = ["rlnCoordinateX", "rlnCoordinateY"]
_ORIGINS = ["rlnOriginXAngst", "rlnOriginYAngst"]
_JOB_FOLDER = re.compile(r"job\d+")
#: Pixels of the boxes processed at once (bounded memory: 4 M pixels, 16 MB of float32).
_BATCH_PIXELS = 1 << 22


def output_root(micrograph: str) -> PurePosixPath:
    """The micrograph's path after its job folder, without extension (RELION's output name).

    ``MotionCorr/job002/Movies/mic001.mrc`` -> ``Movies/mic001``; a path without a job folder
    is kept whole (without a leading ``/`` or ``..``).
    """
    parts = PurePosixPath(micrograph).parts
    jobs = [i for i, p in enumerate(parts[:-1]) if _JOB_FOLDER.fullmatch(p)]
    rest = parts[jobs[-1] + 1 :] if jobs else tuple(p for p in parts if p not in ("/", "..", "."))
    return PurePosixPath(*rest).with_suffix("")


def background_radius_px(box: int, output_size: int, diameter_px: float) -> int:
    """Background radius in pixels of the output box, as RELION's GUI computes ``--bg_radius``.

    ``diameter_px`` is in pixels of the extraction box (before re-scaling); a negative value
    means 75 % of the box. The radius is ``int(diameter / 2 * output_size / box)``.
    """
    diameter = 0.75 * box if diameter_px < 0 else diameter_px
    return int(diameter / 2 * output_size / box)


# --------------------------------------------------------------------------------------
# Reading the inputs (cached per file version, in the leader and in every worker)
# --------------------------------------------------------------------------------------


def _stamp(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except OSError as err:
        raise InputFileError(path, "input file not found", "check the input job") from err
    return str(path), st.st_mtime_ns, st.st_size


def _relion_table(path: Path, kind: str) -> RelionTable:
    return read_relion_star(path, kind)  # type: ignore[arg-type]


def _names_index(names: list[str]) -> dict[str, str]:
    """Lookup of a micrograph by its exact name, its name after the job folder, or its stem."""
    index: dict[str, str] = {}
    ambiguous: set[str] = set()
    for name in names:
        for key in (f"post:{output_root(name)}", f"stem:{PurePosixPath(name).stem}"):
            if key in index and index[key] != name:
                ambiguous.add(key)
            index.setdefault(key, name)
        index[name] = name
    for key in ambiguous:
        del index[key]
    return index


def _lookup(index: Mapping[str, str], micrograph: str) -> str | None:
    for key in (micrograph, f"post:{output_root(micrograph)}",
                f"stem:{PurePosixPath(micrograph).stem}"):
        if key in index:
            return index[key]
    return None


@dataclass
class _Inputs:
    """The job's inputs as tables (re-read when a file changes, e.g. while streaming)."""

    micrographs: RelionTable
    mic_rows: pd.DataFrame  # joined with optics, indexed by rlnMicrographName
    mics_path: Path
    coord_files: dict[str, str] | None  # source micrograph name -> coordinate file
    particles: RelionTable | None
    particle_rows: dict[str, np.ndarray]  # source micrograph name -> particle row numbers
    source_index: dict[str, str]  # lookup into the coordinate / particle micrograph names

    @property
    def has_ctf(self) -> bool:
        return "rlnDefocusU" in self.mic_rows.columns

    def sources(self, micrograph: str) -> str | None:
        """The coordinate / particle micrograph name matching ``micrograph`` (or None)."""
        return _lookup(self.source_index, micrograph)


def _abs(project_dir: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else project_dir / p


def _load_inputs(project_dir: Path, inputs: Mapping[str, list[ResolvedInput]]) -> _Inputs:
    """The inputs as tables, read again only when one of the files has changed."""
    mics_path = _abs(project_dir, inputs["micrographs"][0].path)
    mode = "particles" if inputs.get("particles") else "coordinates"
    source_path = _abs(project_dir, inputs[mode][0].path)
    return _read_inputs(_stamp(mics_path), _stamp(source_path), mode)


@functools.lru_cache(maxsize=4)
def _read_inputs(mics_stamp: tuple[str, int, int], source_stamp: tuple[str, int, int],
                 mode: str) -> _Inputs:
    mics_path, path = Path(mics_stamp[0]), Path(source_stamp[0])
    mics = _relion_table(mics_path, "micrographs")
    if "rlnMicrographName" not in mics.data.columns:
        raise InputFileError(mics_path, "no rlnMicrographName column", "give a micrographs STAR")
    mic_rows = joined(mics)
    mic_rows.index = pd.Index(mic_rows["rlnMicrographName"].astype(str))
    coord_files = particles = None
    groups: dict[str, np.ndarray] = {}
    if mode == "particles":
        particles = _relion_table(path, "particles")
        missing = [c for c in ["rlnMicrographName", *_XY] if c not in particles.data.columns]
        if missing:
            raise InputFileError(path, f"particles have no {', '.join(missing)}",
                                 "re-extraction needs the micrograph and coordinates of each "
                                 "particle")
        names = particles.data["rlnMicrographName"].astype(str).to_numpy()
        groups = {str(k): v for k, v in pd.Series(np.arange(len(names))).groupby(names)
                  .agg(np.array).items()}
        sources = list(groups)
    else:
        blocks = read_star(path) if path.suffix == ".star" else {}
        for block in blocks.values():
            if {"rlnMicrographName", "rlnMicrographCoordinates"} <= set(block.columns):
                coord_files = dict(zip(block["rlnMicrographName"].astype(str),
                                       block["rlnMicrographCoordinates"].astype(str),
                                       strict=True))
                break
        else:
            raise InputFileError(
                path,
                "not a coordinate list: no table with rlnMicrographName and "
                "rlnMicrographCoordinates",
                "give the coordinates.star of an import coordinates or picking job",
            )
        sources = list(coord_files)
    return _Inputs(mics, mic_rows, mics_path, coord_files, particles, groups,
                   _names_index(sources))


# --------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------


def _even(value: int) -> bool:
    return value % 2 == 0


@register
class Extract(PerItemJob):
    """Extract particles from micrographs (see the module docstring)."""

    name = "extract"
    folder = "Extract"
    relion_type = 5  # PROC_EXTRACT
    description = _DESCRIPTION
    inputs = (
        Input("micrographs", (NodeType.MICROGRAPHS,), help="the micrographs, normally with "
              "their CTF (micrographs_ctf.star of a CTF job)", relion="star_mics"),
        Input("coordinates", (NodeType.COORDINATES,), required=False,
              help="particle coordinates per micrograph (coordinates.star of an import or "
              "picking job)", relion="coords_suffix"),
        Input("particles", (NodeType.PARTICLES,), required=False,
              help="instead of --coordinates: refined particles to re-extract (their "
              "micrograph, coordinates and origins)", relion="fndata_reextract"),
    )
    params = (
        Param("box", int, 256, unit="px", range=(2, 8192), relion="extract_size",
              help="box size at the micrographs' pixel size, even (the tutorial: 256 at "
              "0.885 Å/px)"),
        Param("rescale", int, 0, unit="px", range=(0, 8192), relion="rescale",
              help="re-scale the boxes to this size by Fourier cropping (pixel size times "
              "box / rescale), even; 0: keep the box (the tutorial's first pass: 64)"),
        Param("invert_contrast", bool, True, relion="do_invert",
              help="multiply by -1, so that dark particles become white (as RELION wants "
              "them)"),
        Param("norm", bool, True, relion="do_norm",
              help="normalise each particle: zero mean and unit standard deviation of the "
              "background, outside a circle of --bg_diameter"),
        Param("bg_diameter", float, -1.0, unit="px", relion="bg_diameter",
              condition=lambda p: bool(p["norm"]), condition_text="with --norm",
              help="diameter of the background circle in pixels of the extraction box "
              "(before re-scaling), as RELION's GUI; -1: 75 % of the box (the tutorial: "
              "200 for a 256 px box)"),
        Param("ramp", bool, True, condition=lambda p: bool(p["norm"]),
              condition_text="with --norm",
              help="subtract the least-squares plane over the background before normalising "
              "(RELION's default; --no-ramp as its --no_ramp)"),
        Param("edge", str, "drop", choices=("drop", "pad"),
              help="boxes crossing the micrograph's edge: drop them (counted), or pad them with "
              "the nearest edge pixels as RELION does"),
        Param("float16", bool, False, relion="do_float16",
              help="write the stacks as float16 (MRC mode 12; half the size; RELION >= 4 "
              "reads it, RELION 3.1 does not)"),
        Param("recenter", bool, True, relion="do_recenter",
              help="with --particles: move each box onto the refined origin (the whole-pixel "
              "part; the sub-pixel rest stays as the origin), as RELION's --recenter"),
        Param("reset_offsets", bool, False, relion="do_reset_offsets",
              help="with --particles: set the origins to 0 instead of re-centring"),
        DEVICE_PARAM,
    )
    outputs = (Output("particles", NodeType.PARTICLES, "particles.star"),)
    citations = ("Scheres (2012) J. Struct. Biol. 180:519-530 (RELION)",)

    # ----------------------------------------------------------------------------------
    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """RELION 3.1 extraction options for its GUI."""
        return {
            "do_rescale": "Yes" if params["rescale"] else "No",
            "rescale": str(params["rescale"] or params["box"]),
        }

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """One source of positions, even sizes, a background circle that fits the box."""
        given = [n for n in ("coordinates", "particles") if inputs.get(n)]
        if len(given) != 1:
            raise ParameterError(
                "extract: give either --coordinates (extract at picked positions) or "
                "--particles (re-extract refined particles), "
                + ("not both" if given else "got neither")
            )
        box, rescale = int(params["box"]), int(params["rescale"])
        if not _even(box):
            raise ParameterError(f"extract: --box {box} px must be even (RELION needs even boxes)")
        if rescale and not _even(rescale):
            raise ParameterError(f"extract: --rescale {rescale} px must be even")
        if params["recenter"] and params["reset_offsets"] and inputs.get("particles"):
            raise ParameterError("extract: --recenter and --reset-offsets exclude each other; "
                                 "give --no-recenter with --reset-offsets")
        if params["norm"]:
            out = rescale or box
            diameter = float(params["bg_diameter"])
            radius = background_radius_px(box, out, diameter)
            if radius < 1 or 2 * radius > out:
                raise ParameterError(
                    f"extract: --bg-diameter {diameter:g} px gives a background radius of "
                    f"{radius} px in the {out} px output box; it must be >= 1 px and at most "
                    "half the box (RELION: 2 x bg_radius <= box). Use -1 for 75 % of the box"
                )
        resolve_device(str(params["device"]))
        if inputs.get("particles") and not run.stream:
            path = _abs(project_dir, inputs["particles"][0].path)
            columns = set(read_relion_star(path, "particles").data.columns)
            needed = ["rlnMicrographName", *_XY]
            if params["recenter"] and not params["reset_offsets"]:
                needed += _ORIGINS
            missing = [c for c in needed if c not in columns]
            if missing:
                raise InputFileError(
                    path, f"the particles have no {', '.join(missing)}",
                    "re-extraction needs each particle's micrograph and coordinates, and "
                    "--recenter its refined origins (give --no-recenter to keep the boxes)",
                )

    # ----------------------------------------------------------------------------------
    def _inputs(self, ctx: JobContext) -> _Inputs:
        return _load_inputs(ctx.project_dir, ctx.inputs)

    def list_items(self, ctx: JobContext) -> list[str]:
        """Micrographs of the micrographs STAR that have coordinates (or particles)."""
        if ctx.run.stream and not ctx.abs(ctx.input("micrographs").path).is_file():
            return []  # the upstream job has not written its first batch yet
        source = ctx.input("particles" if ctx.inputs.get("particles") else "coordinates")
        if ctx.run.stream and not ctx.abs(source.path).is_file():
            return []
        inp = self._inputs(ctx)
        if not inp.has_ctf and not ctx.scratch.get("warned_ctf"):
            ctx.scratch["warned_ctf"] = True
            ctx.log(f"{ctx.job_name}: warning: {inp.mics_path.name} has no CTF columns "
                    "(rlnDefocusU ...): the particles are extracted without CTF; run a CTF job "
                    "first for refinement")
        keys: list[str] = []
        roots: dict[PurePosixPath, str] = {}
        for name in inp.mic_rows.index:
            if inp.sources(name) is None:
                continue
            root = output_root(name)
            if root in roots and roots[root] != name:
                raise InputFileError(
                    inp.mics_path,
                    f"micrographs {roots[root]} and {name} would both be extracted to "
                    f"{root}.mrcs",
                    "give the micrographs distinct file names",
                )
            roots[root] = name
            keys.append(str(name))
        if not ctx.run.stream and not ctx.scratch.get("told_missing"):
            ctx.scratch["told_missing"] = True
            missing = len(inp.mic_rows) - len(keys)
            if missing:
                ctx.log(f"{ctx.job_name}: {missing} of {len(inp.mic_rows)} micrographs have no "
                        "coordinates and are not extracted")
        return keys

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Extract the particles of one micrograph: stack and per-micrograph STAR."""
        inp = self._inputs(ctx)
        p = ctx.params
        box = int(p["box"])
        out_size = int(p["rescale"]) or box
        mic = inp.mic_rows.loc[[key]].iloc[0]
        group = int(mic["rlnOpticsGroup"])
        apix = pixel_size_angstrom(inp.micrographs, group)
        root = output_root(key)
        result: dict[str, Any] = {"micrograph": key, "stack": "", "star": "", "n": 0,
                                  "dropped": 0, "padded": 0, "skipped": "", "optics_group": group,
                                  "pixel_size": apix * box / out_size}

        def skip(reason: str) -> dict[str, Any]:
            ctx.log(f"{ctx.job_name}: {key}: skipped: {reason}")
            result["skipped"] = reason
            return result

        rows = self._positions(ctx, inp, key)
        if rows.empty:
            return skip("no particles in its coordinate file")
        if inp.has_ctf:
            du, dv = (_number(mic.get(c)) for c in ("rlnDefocusU", "rlnDefocusV"))
            if not (math.isfinite(du) and math.isfinite(dv) and du > 0 and dv > 0):
                return skip(f"no CTF (defocus U, V = {du}, {dv} Å in {inp.mics_path.name}); "
                            "re-run CTF estimation on it or deselect it")
        image, _ = read_mrc(ctx.abs(key), permissive=True)
        if image.ndim == 3 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 2:
            raise InputFileError(key, f"a micrograph must be one 2D image, found {image.shape}")
        h, w = image.shape
        if box > min(h, w):
            return skip(f"the {box} px box is larger than the {w} x {h} micrograph")

        coords = torch.tensor(rows[_XY].to_numpy(np.float64))
        if inp.particles is not None:
            rows = rows.copy()
            if p["reset_offsets"]:
                for c in _ORIGINS:
                    rows[c] = 0.0
            elif p["recenter"]:
                if not set(_ORIGINS) <= set(rows.columns):
                    raise InputFileError(ctx.input("particles").path,
                                         "no rlnOriginXAngst / rlnOriginYAngst to re-centre on",
                                         "give --no-recenter, or refined particles")
                origins = torch.tensor(rows[_ORIGINS].to_numpy(np.float64))
                coords, new_origins = recentre_coordinates(coords, origins, apix)
                rows[_XY] = coords.numpy()
                rows[_ORIGINS] = new_origins.numpy()
        centres = box_centres(coords)
        pad = p["edge"] == "pad"
        inside = boxes_inside(centres, box, (h, w)).numpy()
        keep = boxes_touch(centres, box, (h, w)).numpy() if pad else inside
        result["dropped"] = int((~keep).sum())
        result["padded"] = int((keep & ~inside).sum())
        if result["dropped"]:
            ctx.log(f"{ctx.job_name}: {key}: {result['dropped']} of {len(rows)} boxes "
                    + ("lie outside" if pad else "cross the edge") + ", dropped")
        rows = rows.loc[keep].reset_index(drop=True)
        centres = centres[torch.from_numpy(keep)]
        n = len(rows)
        if n == 0:
            return result

        device = resolve_device(str(p["device"]))
        micrograph = torch.from_numpy(image).to(device)
        radius = background_radius_px(box, out_size, float(p["bg_diameter"])) if p["norm"] else None
        stack_rel = ctx.rel(*root.parts[:-1], root.name + ".mrcs")
        stack = ctx.abs(stack_rel)
        stack.parent.mkdir(parents=True, exist_ok=True)
        with StackWriter(stack, n, (out_size, out_size), voxel_size_angstrom=apix * box / out_size,
                         float16=bool(p["float16"])) as writer:
            batch = max(1, _BATCH_PIXELS // (box * box))
            for start in range(0, n, batch):
                boxes = extract_boxes(micrograph, centres[start : start + batch], box,
                                      pad_edges=pad)
                particles = preprocess_particles(
                    boxes, output_size=out_size, background_radius_px=radius,
                    ramp=bool(p["ramp"]), invert_contrast=bool(p["invert_contrast"]),
                )
                writer.write(start, particles.cpu().numpy())

        table = self._particle_rows(inp, rows, mic, key, stack_rel, group)
        star_rel = ctx.rel(*root.parts[:-1], root.name + "_extract.star")
        write_star(ctx.abs(star_rel), {"particles": table})
        groups = sorted({int(g) for g in table["rlnOpticsGroup"]})
        result.update(stack=stack_rel, star=star_rel, n=n, groups=groups)
        return result

    def _positions(self, ctx: JobContext, inp: _Inputs, key: str) -> pd.DataFrame:
        """The rows to extract on micrograph ``key``: coordinates or particles."""
        source = inp.sources(key)
        if source is None:
            raise InputFileError(key, "has no coordinates in the input")
        if inp.particles is not None:
            return inp.particles.data.iloc[inp.particle_rows[source]].reset_index(drop=True)
        path = ctx.abs((inp.coord_files or {})[source])
        if path.is_file() and path.stat().st_size == 0:
            return pd.DataFrame(columns=_XY)
        try:
            df = read_coordinates(path)
        except InputFileError:
            blocks = read_star(path) if path.suffix == ".star" else {}
            if all(len(b) == 0 for b in blocks.values()):  # a STAR file without rows
                return pd.DataFrame(columns=_XY)
            raise
        keep = [c for c in df.columns if c.startswith("rln") and c != "rlnMicrographName"]
        return df[keep]

    def _particle_rows(self, inp: _Inputs, rows: pd.DataFrame, mic: pd.Series, key: str,
                       stack_rel: str, group: int) -> pd.DataFrame:
        """RELION's particle columns for the extracted rows."""
        table = rows.copy()
        table["rlnImageName"] = [format_image_name(i, stack_rel) for i in range(len(rows))]
        table["rlnMicrographName"] = key
        if "rlnOpticsGroup" not in table.columns:
            table["rlnOpticsGroup"] = group
        if inp.has_ctf and "rlnDefocusU" not in rows.columns:
            for column in CTF_QUALITY_COLUMNS:
                if column in mic.index and column not in table.columns:
                    table[column] = mic[column]
            for column, default in CTF_COLUMNS.items():
                value = mic.get(column, default)
                table[column] = default if pd.isna(value) else float(value)
        return table

    # ----------------------------------------------------------------------------------
    def finalize(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> None:
        """Join the per-micrograph STAR files into ``particles.star`` with its optics table."""
        parts = [r for _, r in results if r["n"]]
        if not parts:
            if ctx.run.stream:
                return  # nothing yet
            raise CryospaError(
                f"{ctx.job_name}: no particles extracted: " + _skip_text(results)
                + "; check --box against the micrographs and the coordinates"
            )
        cache: dict[str, tuple[tuple[str, int, int], pd.DataFrame]] = ctx.scratch.setdefault(
            "stars", {})
        frames = []
        for r in parts:
            stamp = _stamp(ctx.abs(r["star"]))
            if r["star"] not in cache or cache[r["star"]][0] != stamp:
                cache[r["star"]] = (stamp, read_star(ctx.abs(r["star"]))["particles"])
            frames.append(cache[r["star"]][1])
        data = pd.concat(frames, ignore_index=True)
        for column in data.columns:  # columns only some micrographs had: RELION's defaults
            if data[column].isna().any():
                filler: Any = "" if data[column].dtype == object else 0
                data[column] = data[column].fillna(filler)
        optics = self._optics(ctx, parts, data)
        write_relion_star(ctx.path("particles.star"), RelionTable("particles", data, optics))

    def _optics(self, ctx: JobContext, parts: list[dict[str, Any]],
                data: pd.DataFrame) -> pd.DataFrame:
        """Optics groups of the extracted particles, with the image pixel size and size."""
        inp = self._inputs(ctx)
        box = int(ctx.params["box"])
        out_size = int(ctx.params["rescale"]) or box
        source = inp.particles if inp.particles is not None else inp.micrographs
        used = sorted(set(data["rlnOpticsGroup"].astype(int)))
        optics = source.optics.loc[source.optics["rlnOpticsGroup"].astype(int).isin(used)].copy()
        missing = sorted(set(used) - set(optics["rlnOpticsGroup"].astype(int)))
        if missing:
            raise InputFileError(source.path or "input", f"optics groups {missing} are not in "
                                 "its optics table", "fix rlnOpticsGroup")
        pixel: dict[int, set[float]] = {}
        for r in parts:
            for g in r["groups"]:
                pixel.setdefault(int(g), set()).add(round(float(r["pixel_size"]), 9))
        sizes = []
        for g in optics["rlnOpticsGroup"].astype(int):
            values = pixel.get(g, set())
            if len(values) != 1:
                raise CryospaError(
                    f"{ctx.job_name}: particles of optics group {g} come from micrographs of "
                    f"different pixel sizes ({sorted(values)}); give them separate optics groups"
                )
            sizes.append(values.pop())
        optics["rlnImagePixelSize"] = sizes
        optics["rlnImageSize"] = out_size
        optics["rlnImageDimensionality"] = 2
        if "rlnMicrographOriginalPixelSize" not in optics.columns and inp.particles is None:
            optics["rlnMicrographOriginalPixelSize"] = optics["rlnMicrographPixelSize"]
        return optics.drop(columns=[c for c in ("rlnMicrographPixelSize",) if c in optics])

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``1234 particles from 12 micrographs (8 dropped at edges), 256 -> 64 px, 3.54 Å/px``."""
        n = sum(r["n"] for _, r in results)
        used = sum(1 for _, r in results if r["n"])
        dropped = sum(r["dropped"] for _, r in results)
        box = int(ctx.params["box"])
        out = int(ctx.params["rescale"]) or box
        size = f"{box} px" if out == box else f"{box} -> {out} px"
        pixels = sorted({round(r["pixel_size"], 4) for _, r in results if r["n"]})
        text = f"{n} particles from {used} micrographs"
        notes = []
        padded = sum(r.get("padded", 0) for _, r in results)
        if dropped:
            notes.append(f"{dropped} dropped " + ("outside" if ctx.params["edge"] == "pad"
                                                  else "at edges"))
        if padded:
            notes.append(f"{padded} padded at edges")
        skipped = sum(1 for _, r in results if r["skipped"])
        if skipped:
            notes.append(f"{skipped} micrographs skipped")
        if notes:
            text += " (" + ", ".join(notes) + ")"
        text += f", {size}"
        if pixels:
            text += ", " + ", ".join(f"{a:g}" for a in pixels) + " Å/px"
        return text


def _number(value: Any) -> float:
    """A STAR value as a float (NaN if missing or not a number)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _skip_text(results: list[tuple[str, dict[str, Any]]]) -> str:
    reasons: dict[str, int] = {}
    for _, r in results:
        reason = r["skipped"] or (f"all {r['dropped']} boxes crossed the edge" if r["dropped"]
                                  else "")
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
    if not reasons:
        return "no micrographs"
    return "; ".join(f"{count} micrographs: {reason}" for reason, count in reasons.items())
