"""``cryospa import movies``: register raw movies (TIFF / MRC) as a MovieSet.

Per movie (one item each): read the header (frames, frame size), check it against the gain
reference, and symlink the file into the job's ``Movies/`` folder. ``finalize`` writes
``movies.star`` in RELION 3.1 form: ``data_optics`` (one optics group: name, pixel size, voltage,
Cs, amplitude contrast) and ``data_movies`` (``rlnMicrographMovieName``, ``rlnOpticsGroup``, and
when given ``rlnMicrographGainName``, ``rlnMicrographDefectFile``, ``rlnMicrographDoseRate``,
``rlnMicrographPreExposure``, the labels RELION 3.1 uses for them in its motion-correction
metadata).

The gain reference is read once, rotated / flipped as RELION's ``--gain_rot`` / ``--gain_flip``
say, and written as ``gain.mrc`` in the job folder: downstream jobs use it as it is, with no
rotation or flip left to get wrong.

With ``--stream`` the job watches the pattern: a new file is registered once it has not changed
for ``--settle`` seconds (nor between two polls) and its header can be read, so files still
being copied are skipped until they are complete. The stream ends with ``cryospa stop JOB``
or ``--stream-timeout``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cryospa.errors import InputFileError
from cryospa.io.movies import open_movie, read_gain
from cryospa.io.mrc import read_mrc_header, write_mrc
from cryospa.io.star import RelionTable, write_relion_star
from cryospa.jobs._importing import (
    OPTICS_PARAMS,
    SETTLE_PARAM,
    link_into,
    list_pattern,
    optics_row,
    pattern_base,
    stable_files,
)
from cryospa.project.nodes import NodeType
from cryospa.project.schema import (
    JobContext,
    Output,
    Param,
    PerItemJob,
    ResolvedInput,
    RunOptions,
    register,
)

__all__ = ["ImportMovies"]

_DESCRIPTION = __doc__ or ""


def _has_gain(p: Mapping[str, Any]) -> bool:
    return bool(p.get("gain"))


@register
class ImportMovies(PerItemJob):
    """Import raw movies as a MovieSet (see the module docstring)."""

    name = "import movies"
    folder = "Import"
    relion_type = 0  # PROC_IMPORT
    description = _DESCRIPTION
    params = (
        Param("movies", str, None, required=True, kind="pattern", metavar="PATTERN",
              help="movie files, a pattern relative to the project, e.g. 'Raw/*.tif' (quote it)",
              relion="fn_in_raw"),
        *OPTICS_PARAMS,
        Param("dose_per_frame", float, None, unit="e/Å²", range=(0, None), open_min=True,
              help="electron dose per frame (used by motion correction's dose weighting)"),
        Param("pre_exposure", float, 0.0, unit="e/Å²", range=(0, None),
              help="dose before the first frame"),
        Param("gain", str, "", kind="file", metavar="FILE",
              help="gain reference (MRC or TIFF), multiplied onto the frames as in RELION"),
        Param("gain_rot", int, 0, choices=(0, 1, 2, 3), condition=_has_gain,
              condition_text="with --gain",
              help="rotate the gain by this many 90° turns clockwise (RELION --gain_rot)"),
        Param("gain_flip", int, 0, choices=(0, 1, 2), condition=_has_gain,
              condition_text="with --gain",
              help="after rotating, flip the gain: 1 upside down, 2 left-right (RELION "
              "--gain_flip)"),
        Param("defects", str, "", kind="file", metavar="FILE",
              help="detector defect file (x y w h rectangles, x y pixels, or a defect map)"),
        SETTLE_PARAM,
    )
    outputs = (Output("movies", NodeType.MOVIES, "movies.star"),)
    citations = (
        "Scheres (2012) J. Struct. Biol. 180:519-530 (RELION)",
        "Zivanov et al. (2018) eLife 7:e42166 (RELION 3 import and optics groups)",
    )

    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """RELION 3.1 import job options for its GUI."""
        return {"do_raw": "Yes", "is_multiframe": "Yes", "do_other": "No",
                "beamtilt_x": "0", "beamtilt_y": "0", "fn_mtf": ""}

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """The gain reference must be readable."""
        if params["gain"]:
            gain_path = Path(params["gain"])
            read_gain(gain_path if gain_path.is_absolute() else project_dir / gain_path)

    def prepare(self, ctx: JobContext) -> None:
        """Write the rotated / flipped gain as ``gain.mrc``."""
        p = ctx.params
        if p["gain"]:
            gain = read_gain(ctx.abs(p["gain"]), rotation=p["gain_rot"], flip=p["gain_flip"])
            target = ctx.path("gain.mrc")
            if not target.is_file() or read_mrc_header(target).shape != gain.shape:
                write_mrc(target, gain, voxel_size_angstrom=p["angpix"])

    def list_items(self, ctx: JobContext) -> list[str]:
        """Files matching the pattern (when streaming: complete ones whose header reads)."""
        keys = stable_files(ctx, list_pattern(ctx, ctx.params["movies"]), slot="movies")
        if not ctx.run.stream:
            return keys
        ready: set[str] = ctx.scratch.setdefault("movies_header_ok", set())
        out = []
        for key in keys:
            if key not in ready:
                try:
                    with open_movie(ctx.abs(key)):
                        pass
                except (InputFileError, OSError):
                    ctx.scratch["waiting"] = ctx.scratch.get("waiting", 0) + 1
                    ctx.scratch["movies_ready"].discard(key)
                    continue
                ready.add(key)
            out.append(key)
        return out

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Read the header, check it against the gain, link the movie."""
        path = ctx.abs(key)
        with open_movie(path) as movie:
            n_frames = movie.n_frames
            ny, nx = movie.frame_shape
        if ctx.params["gain"]:
            gain_shape = read_mrc_header(ctx.path("gain.mrc")).shape[-2:]
            if tuple(gain_shape) != (ny, nx):
                raise InputFileError(
                    key,
                    f"frames are {nx} x {ny} pixels but the gain reference (after rotation "
                    f"{ctx.params['gain_rot']}, flip {ctx.params['gain_flip']}) is "
                    f"{gain_shape[1]} x {gain_shape[0]}",
                    "check --gain-rot / --gain-flip",
                )
        name = link_into(ctx, key, "Movies", pattern_base(ctx.params["movies"]))
        return {"movie": name, "frames": int(n_frames), "nx": int(nx), "ny": int(ny)}

    def finalize(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> None:
        """Write ``movies.star``."""
        p = ctx.params
        optics = pd.DataFrame([optics_row(p, "rlnMicrographOriginalPixelSize")])
        data = pd.DataFrame(
            {
                "rlnMicrographMovieName": [r["movie"] for _, r in results],
                "rlnOpticsGroup": pd.Series([1] * len(results), dtype="int64"),
            }
        )
        if p["gain"]:
            data["rlnMicrographGainName"] = ctx.rel("gain.mrc")
        if p["defects"]:
            data["rlnMicrographDefectFile"] = _project_path(ctx, p["defects"])
        if p["dose_per_frame"] is not None:
            data["rlnMicrographDoseRate"] = float(p["dose_per_frame"])
            data["rlnMicrographPreExposure"] = float(p["pre_exposure"])
        write_relion_star(ctx.path("movies.star"), RelionTable("movies", data, optics))

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``24 movies, 24 frames, 4096 x 4096, 0.885 Å/px``."""
        if not results:
            return "0 movies"
        frames = sorted({r["frames"] for _, r in results})
        sizes = sorted({(r["nx"], r["ny"]) for _, r in results})
        frame_text = f"{frames[0]}" if len(frames) == 1 else f"{frames[0]}-{frames[-1]}"
        size_text = ", ".join(f"{nx} x {ny}" for nx, ny in sizes)
        n = len(results)
        return (
            f"{n} movie{'s' if n != 1 else ''}, {frame_text} frames, {size_text}, "
            f"{ctx.params['angpix']:g} Å/px"
        )


def _project_path(ctx: JobContext, path: str) -> str:
    absolute = Path(os.path.abspath(ctx.abs(path)))
    try:
        return str(absolute.relative_to(ctx.project_dir))
    except ValueError:
        return str(absolute)
