"""``cryospa motioncorr``: beam-induced motion correction of movies, as RELION's own, on CPU or GPU.

Per movie (one item each), from a MovieSet (``movies.star`` of ``cryospa import movies``):

1. **Frames.** Frames ``--first_frame_sum`` to ``--last_frame_sum`` (1-based, RELION's
   options; -1 or 0: to the last frame) are read; a movie with fewer frames than that is a
   counted, logged skip (the other movies go on).
2. **Gain and defects.** The gain (``rlnMicrographGainName``, already rotated / flipped by the
   import) is multiplied onto the frames. Its orientation is checked first: if its shape does
   not fit the frames, or if the mean raw frame correlates much better with ``1 / gain`` after
   another of the 8 rotations / flips (the raw frames carry the gain's pixel pattern as
   ``1 / gain``), the job stops and says which ``--gain_rot`` / ``--gain_flip`` of ``cryospa
   import movies`` would fit. Defects (``rlnMicrographDefectFile``: MotionCor2 ``x y w h``
   rectangles, pixels, or a defect map) and hot pixels (pixels of the gain-corrected sum more
   than ``--hot_pixel_sigma`` standard deviations above their local mean; RELION uses 6 over
   the whole sum) are replaced by values drawn from good neighbours.
3. **Global alignment** (:func:`cryospa.core.alignment.align_global`): each frame against the
   sum of the others, B-factor ``--bfactor`` (Å², ``exp(-B k^2 / 4)``), frequencies beyond
   ``--align_resolution`` left out (the frames are Fourier-cropped for the correlation, as
   RELION's automatic ``--ccf_downsample``), peaks within ``--max_shift`` pixels. With
   ``--group_frames N`` (low-dose frames) the sums of N consecutive frames are aligned and the
   shifts interpolated linearly to the frames from the groups' centres.
4. **Local alignment** (``--patches_x`` x ``--patches_y`` > 1): patch shifts on top of the
   global ones, fitted by RELION's third-order polynomial in space and time
   (:mod:`cryospa.core.local_alignment`), and the frames summed with the local shifts.
5. **Sums.** Dose weighting (``--dose_weighting``, Grant & Grigorieff 2015, RELION's filter:
   exposure at the end of each frame, pre-exposure ``--pre_exposure``, dose per frame
   ``--dose_per_frame`` or the movies' ``rlnMicrographDoseRate``, 200 kV exposures counted
   1/0.8); output binning by Fourier cropping (``--bin_factor``, may be non-integer); optional
   non-dose-weighted sum (``--save_noDW``) and power spectrum (``--save_ps``: the centred
   amplitude spectrum ``sqrt(<|F|^2>)`` of the non-dose-weighted aligned sum averaged over
   ``--ps_size`` tiles, pixel size of the output micrograph in its header, for ``cryospa
   ctffind``); float16 MRC (``--float16``; RELION 3.1 cannot read it, RELION 4 can). The
   dose-weighted and the plain sum are made in one pass over the frames (each frame shifted,
   or warped, once; the dose filters made one frame at a time).

Memory: the movie is held once, as float32 (gain, defects and hot pixels applied in place);
the alignment adds the frames' transforms Fourier-cropped to ``--align_resolution`` and a few
frame-sized arrays, the sums a few more. A 4096 x 4096 x 40 movie (2.7 GB as float32) peaks
below twice that (``bench/bench_motioncorr.py --big``).

Outputs, laid out as RELION's (``<stem>`` is the movie's path below its import folder without
the suffix, e.g. ``Movies/mov001``): ``<stem>.mrc`` (dose-weighted when dose weighting, else
the plain aligned sum), ``<stem>_noDW.mrc``, ``<stem>_PS.mrc``, ``<stem>.star`` (RELION's
motion STAR: ``data_general``, ``data_global_shift`` with ``-9999`` for frames outside the
sum, ``data_local_motion_model`` with patches, ``data_hot_pixels`` when any were found),
``<stem>_shifts.png`` (the motion track) and ``corrected_micrographs.star`` (optics with the
output pixel size; ``rlnMicrographName``, ``rlnMicrographMetadata``, ``rlnOpticsGroup``,
``rlnAccumMotionTotal / Early / Late``, and ``rlnMicrographNameNoDW`` / ``rlnCtfPowerSpectrum``
when written). The accumulated motion is written as RELION writes it: path lengths in movie
pixels (its label says Å); the job summary gives both.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import re
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryospa.compute.device import resolve_device
from cryospa.core.alignment import (
    DoseWeights,
    accumulated_motion,
    align_global,
    aligned_sums,
    frame_end_exposures,
)
from cryospa.core.ctf_estimation import averaged_amplitude_spectrum
from cryospa.core.dose import equivalent_exposure
from cryospa.core.fourier import fast_fft_size, fourier_crop
from cryospa.errors import CryospaError, InputFileError, ParameterError
from cryospa.io.movies import (
    compose_gain_orientations,
    correct_defects,
    detect_hot_pixels,
    gain_orientation_scores,
    open_movie,
    read_defects,
    read_gain,
)
from cryospa.io.mrc import write_mrc
from cryospa.io.star import RelionTable, joined, read_relion_star, read_star, write_relion_star
from cryospa.io.star import write_star as write_star_blocks
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

__all__ = ["MotionCorr", "output_stem"]

_DESCRIPTION = __doc__ or ""

#: RELION's value for the shifts of frames outside the sum (``rlnMicrographShiftX/Y``).
MISSING_SHIFT = -9999.0
#: How much better (correlation) another gain orientation must fit before the job stops.
GAIN_ORIENTATION_MARGIN = 0.1
#: RELION's dose per frame (e/Å²) when none is known (accumulated-motion statistics only).
_DEFAULT_DOSE = 1.0
_LOCAL_MODULE = "cryospa.core.local_alignment"
#: Frames read to check the gain before the job starts.
_CHECK_FRAMES = 12


def _dose_weighting(p: Mapping[str, Any]) -> bool:
    return bool(p.get("dose_weighting"))


def _save_ps(p: Mapping[str, Any]) -> bool:
    return bool(p.get("save_ps"))


def output_stem(movie_name: str) -> str:
    """The output path stem of a movie, as RELION names it inside the job folder.

    ``Import/job001/Movies/mov001.tiff`` -> ``Movies/mov001`` (the input job's folder is
    removed); other relative paths keep their folders, absolute ones lose the root.
    """
    name = movie_name.replace("\\", "/")
    match = re.match(r"^(?:\./)?[^/]+/job\d+/(.+)$", name)
    rest = match.group(1) if match else name
    parts = [p for p in Path(rest).parts if p not in ("/", "", ".", "..")]
    if not parts:
        raise InputFileError(movie_name, "not a movie file name")
    return str(Path(*parts).with_suffix(""))


def _binned_shape(shape: tuple[int, int], bin_factor: float) -> tuple[int, int]:
    """Output size after binning by ``bin_factor``: rounded, then made even (as RELION)."""
    out = []
    for n in shape:
        m = round(n / bin_factor)
        out.append(max(2, m - m % 2))
    return out[0], out[1]


def _align_crop(
    shape: tuple[int, int], pixel_size: float, resolution: float
) -> tuple[int, int] | None:
    """Fourier-crop size for the alignment that keeps frequencies up to ``resolution`` Å."""
    if not resolution > 2.0 * pixel_size:
        return None
    crop = []
    for n in shape:
        m = fast_fft_size(math.ceil(n * 2.0 * pixel_size / resolution))
        crop.append(min(m, n))
    return (crop[0], crop[1]) if tuple(crop) != tuple(shape) else None


@dataclass(frozen=True)
class _Movie:
    """What process_item needs to know about one movie (its row of movies.star + optics)."""

    name: str
    path: Path
    optics_group: int
    pixel_size: float
    voltage: float
    gain: str
    defects: str
    dose_per_frame: float | None
    pre_exposure: float


class _Skip(Exception):
    """A movie that cannot be processed as asked (counted and logged, the others go on)."""


def _movies_table(ctx: JobContext) -> RelionTable | None:
    star = ctx.abs(ctx.input("movies").path)
    if not star.is_file():
        return None
    return read_relion_star(star, "movies")


def _row_value(row: Mapping[str, Any], column: str) -> Any:
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    return value


def _movie_from_row(ctx: JobContext, row: Mapping[str, Any], source: Path | None) -> _Movie:
    name = str(row["rlnMicrographMovieName"])
    pixel = _row_value(row, "rlnMicrographOriginalPixelSize")
    if pixel is None:
        raise InputFileError(
            source or "movies.star",
            "the optics table has no rlnMicrographOriginalPixelSize",
            "import the movies with --angpix",
        )
    p = ctx.params
    dose = p["dose_per_frame"]
    if dose is None:
        dose = _row_value(row, "rlnMicrographDoseRate")
    pre = p["pre_exposure"]
    if pre is None:
        pre = _row_value(row, "rlnMicrographPreExposure") or 0.0
    return _Movie(
        name=name,
        path=ctx.abs(name),
        optics_group=int(row.get("rlnOpticsGroup", 1)),
        pixel_size=float(pixel),
        voltage=float(_row_value(row, "rlnVoltage") or 300.0),
        gain=str(_row_value(row, "rlnMicrographGainName") or ""),
        defects=str(_row_value(row, "rlnMicrographDefectFile") or ""),
        dose_per_frame=None if dose is None else float(dose),
        pre_exposure=float(pre),
    )


def _frame_range(n_frames: int, first: int, last: int, name: str) -> tuple[int, int]:
    """0-based ``(start, stop)`` of the frames to sum; :class:`_Skip` if the movie is short."""
    stop = n_frames if last <= 0 else last
    if first > n_frames or stop > n_frames:
        asked = f"frames {first} to {stop}" if last > 0 else f"frames from {first}"
        raise _Skip(
            f"{name}: the movie has {n_frames} frames but --first_frame_sum {first} "
            f"--last_frame_sum {last} asks for {asked}; skipped (use a smaller "
            "--last_frame_sum to include it)"
        )
    if stop - first + 1 < 2:
        raise _Skip(f"{name}: only {stop - first + 1} frame(s) to sum; skipped")
    return first - 1, stop


# ---------------------------------------------------------------------------------------------
# gain


def _import_gain_options(gain_path: Path) -> tuple[int, int, str] | None:
    """``(gain_rot, gain_flip, original gain)`` of the import job that wrote ``gain_path``."""
    job_star = gain_path.parent / "job.star"
    if not job_star.is_file():
        return None
    try:
        options = read_star(job_star).get("joboptions_values")
    except InputFileError:
        return None
    if options is None or "rlnJobOptionVariable" not in options.columns:
        return None
    values = dict(zip(options["rlnJobOptionVariable"].astype(str),
                      options["rlnJobOptionValue"].astype(str), strict=False))
    if "gain_rot" not in values:  # not an import job
        return None
    try:
        return int(values["gain_rot"]), int(values.get("gain_flip", "0")), values.get("gain", "")
    except ValueError:
        return None


_FLIPS = {0: "no flip", 1: "flipped upside down", 2: "flipped left-right"}


def _describe(orientation: tuple[int, int]) -> str:
    rotation, flip = orientation
    turn = "not rotated" if rotation == 0 else f"rotated {90 * rotation}° clockwise"
    return f"{turn}, {_FLIPS[flip]}"


def _check_gain_orientation(
    raw_mean: np.ndarray,
    gain: np.ndarray,
    *,
    gain_path: Path,
    gain_name: str,
    movie_name: str,
    mask: np.ndarray | None = None,
) -> None:
    """Raise :class:`InputFileError` if the gain does not fit the frames as it is.

    The message says which ``--gain_rot`` / ``--gain_flip`` of ``cryospa import movies`` (given
    the options the import used, read from its ``job.star``) would fit.
    """
    shape_ok = tuple(gain.shape) == tuple(raw_mean.shape)
    scores = gain_orientation_scores(raw_mean, gain, mask=mask)
    if not scores:
        fh, fw = raw_mean.shape
        gh, gw = gain.shape
        hint = (
            "one is super-resolution and the other is not: use the matching gain"
            if {(2 * gh, 2 * gw), (2 * gw, 2 * gh), (gh // 2, gw // 2), (gw // 2, gh // 2)}
            & {(fh, fw)}
            else "use the gain reference recorded with this detector and mode"
        )
        raise InputFileError(
            gain_name,
            f"the gain reference is {gw} x {gh} pixels but the frames of {movie_name} are "
            f"{fw} x {fh}, and no rotation or flip makes them fit",
            hint,
        )
    given = scores.get((0, 0), 0.0) if shape_ok else float("-inf")
    best = max(scores, key=lambda k: scores[k])
    better = scores[best] - max(given, 0.0) > GAIN_ORIENTATION_MARGIN and scores[best] > 2 * given
    if shape_ok and (best == (0, 0) or not better):
        return
    imported = _import_gain_options(gain_path)
    before = (imported[0], imported[1]) if imported else (0, 0)
    if shape_ok or better:
        rot, flip = compose_gain_orientations(before, best)
        evidence = (
            f"the raw frames correlate with 1/gain at {scores[best]:.2f} when the gain is "
            f"{_describe(best)}"
            + (f", but at {given:.2f} as it is" if shape_ok else "")
        )
        fix_options = f"--gain_rot {rot} --gain_flip {flip}"
    else:  # the shape fits only after a turn, and the pixels do not tell which one
        options = sorted({compose_gain_orientations(before, o) for o in scores})
        evidence = "the pixel pattern does not tell which of the fitting orientations is right"
        fix_options = " or ".join(f"--gain_rot {r} --gain_flip {f}" for r, f in options)
    problem = (
        f"the gain reference does not fit the frames of {movie_name}"
        + ("" if shape_ok else f" ({gain.shape[1]} x {gain.shape[0]} pixels vs "
                               f"{raw_mean.shape[1]} x {raw_mean.shape[0]})")
        + f": {evidence}"
    )
    source = f" on {imported[2]}" if imported and imported[2] else ""
    used = (
        f" (the import used --gain_rot {before[0]} --gain_flip {before[1]}{source})"
        if imported
        else ""
    )
    raise InputFileError(
        gain_name, problem, f"import the movies again with {fix_options}{used}"
    )


_GAIN_CACHE: dict[tuple[str, int], np.ndarray] = {}
#: (gain file, its mtime, frame shape) whose orientation was checked in this process.
_GAINS_CHECKED: set[tuple[str, int, tuple[int, ...]]] = set()


def _load_gain(path: Path) -> np.ndarray:
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _GAIN_CACHE:
        _GAIN_CACHE.clear()
        _GAIN_CACHE[key] = read_gain(path)
    return _GAIN_CACHE[key]


# ---------------------------------------------------------------------------------------------
# numerics glue


def _group_shifts(
    frames: torch.Tensor, group: int, pixel_size: float, **options: Any
) -> tuple[np.ndarray, int]:
    """Global shifts ``(F, 2)`` aligning sums of ``group`` frames, interpolated to the frames.

    The last group takes the remaining frames (as RELION); each group's shift belongs to its
    mean frame index, and frames before the first / after the last centre are extrapolated
    linearly. Returns the shifts (frame 0 at 0) and the iterations run.
    """
    n = frames.shape[0]
    if group <= 1:
        result = align_global(frames, pixel_size, **options)
        return result.shifts, result.n_iterations
    n_groups = n // group
    if n_groups < 2:
        raise ParameterError(
            f"--group_frames {group} leaves fewer than 2 groups of the {n} frames summed: "
            "use a smaller --group_frames"
        )
    bounds = [g * group for g in range(n_groups)] + [n]
    sums = torch.stack([frames[a:b].sum(dim=0) for a, b in itertools.pairwise(bounds)])
    result = align_global(sums, pixel_size, **options)
    centres = np.array([(a + b - 1) / 2.0 for a, b in itertools.pairwise(bounds)])
    z = np.arange(n, dtype=np.float64)
    shifts = np.empty((n, 2))
    for axis in range(2):
        values = result.shifts[:, axis]
        out = np.interp(z, centres, values)
        lo, hi = z < centres[0], z > centres[-1]
        out[lo] = values[0] + (z[lo] - centres[0]) * (values[1] - values[0]) / (
            centres[1] - centres[0])
        out[hi] = values[-1] + (z[hi] - centres[-1]) * (values[-1] - values[-2]) / (
            centres[-1] - centres[-2])
        shifts[:, axis] = out
    return shifts - shifts[0], result.n_iterations


def _local_alignment_available() -> bool:
    return importlib.util.find_spec(_LOCAL_MODULE) is not None


def _wants_patches(params: Mapping[str, Any]) -> bool:
    return int(params["patches_x"]) * int(params["patches_y"]) > 1


# ---------------------------------------------------------------------------------------------
# the job


@register
class MotionCorr(PerItemJob):
    """Motion correction of movies (see the module docstring)."""

    name = "motioncorr"
    folder = "MotionCorr"
    relion_type = 1  # PROC_MOTIONCORR
    description = _DESCRIPTION
    params = (
        Param("first_frame_sum", int, 1, range=(1, None),
              help="first movie frame (1-based) to align and sum", relion="first_frame_sum"),
        Param("last_frame_sum", int, -1,
              help="last movie frame to align and sum; -1 or 0: the last frame of each movie",
              relion="last_frame_sum"),
        Param("dose_weighting", bool, True,
              help="dose-weight the sum (Grant & Grigorieff 2015 critical exposure, as RELION)",
              relion="do_dose_weighting"),
        Param("dose_per_frame", float, None, unit="e/Å²", range=(0, None), open_min=True,
              help="dose per frame; default: the movies' rlnMicrographDoseRate (import "
              "--dose-per-frame)", relion="dose_per_frame"),
        Param("pre_exposure", float, None, unit="e/Å²", range=(0, None),
              help="dose before the first movie frame; default: the movies' "
              "rlnMicrographPreExposure, else 0", relion="pre_exposure"),
        Param("save_noDW", bool, False, condition=_dose_weighting,
              condition_text="with --dose_weighting",
              help="also write the aligned sum without dose weighting (<movie>_noDW.mrc)",
              relion="do_save_noDW"),
        Param("save_ps", bool, True,
              help="write the averaged amplitude spectrum of the aligned (not dose-weighted) "
              "sum (<movie>_PS.mrc), for CTF estimation", relion="do_save_ps"),
        Param("ps_size", int, 512, unit="px", range=(64, None), condition=_save_ps,
              condition_text="with --save_ps",
              help="tile (box) size of the power spectrum; smaller for micrographs under two "
              "tiles wide"),
        Param("bfactor", float, 150.0, unit="Å²", range=(0, None),
              help="B-factor exp(-B k^2 / 4) weighting the cross-correlation of the global "
              "alignment", relion="bfactor"),
        Param("align_resolution", float, 6.0, unit="Å", range=(0, None),
              help="highest resolution used to find the shifts (the frames are Fourier-cropped "
              "to it for the correlation, like RELION's automatic --ccf_downsample); 0: up to "
              "Nyquist"),
        Param("max_shift", float, None, unit="px", range=(0, None), open_min=True,
              help="search each correlation peak within this distance (movie pixels) of the "
              "current estimate; default: anywhere"),
        Param("patches_x", int, 5, range=(1, 50),
              help="patches along x for local (patch-based) alignment; 1 with --patches_y 1: "
              "global alignment only", relion="patch_x"),
        Param("patches_y", int, 5, range=(1, 50),
              help="patches along y for local alignment", relion="patch_y"),
        Param("group_frames", int, 1, unit="frames", range=(1, None), metavar="N",
              help="align sums of this many consecutive frames (low-dose frames) and "
              "interpolate the shifts", relion="group_frames"),
        Param("bin_factor", float, 1.0, range=(1, None),
              help="bin the output sums by Fourier cropping by this factor (may be "
              "non-integer)", relion="bin_factor"),
        Param("hot_pixel_sigma", float, 6.0, unit="standard deviations", range=(0, None),
              metavar="SIGMA",
              help="replace pixels of the summed gain-corrected movie this far above their "
              "local mean (hot pixels; RELION uses 6); 0: no detection"),
        Param("float16", bool, False,
              help="write the sums as float16 MRC (half the size; RELION >= 4 reads them, "
              "RELION 3.1 does not)", relion="do_float16"),
        DEVICE_PARAM,
    )
    inputs = (Input("movies", (NodeType.MOVIES,), help="the movies to correct",
                    relion="input_star_mics"),)
    outputs = (Output("micrographs", NodeType.MICROGRAPHS, "corrected_micrographs.star"),)
    citations = (
        "Zheng et al. (2017) Nat. Methods 14:331-332 (MotionCor2: patch-based motion)",
        "Zivanov, Nakane & Scheres (2019) IUCrJ 6:5-17 (RELION's own motion correction)",
        "Grant & Grigorieff (2015) eLife 4:e06980 (exposure-dependent dose weighting)",
    )

    # ------------------------------------------------------------------ validation
    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """RELION 3.1 motion-correction job options for its GUI."""
        return {"do_own_motioncor": "Yes", "group_for_ps": "1" if params["save_ps"] else "-1"}

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """Frame range, device, patches, dose and voltage; the gain on the first movie."""
        last, first = int(params["last_frame_sum"]), int(params["first_frame_sum"])
        if last > 0 and last - first + 1 < 2:
            raise ParameterError(
                f"motioncorr: --first_frame_sum {first} --last_frame_sum {last} leaves fewer "
                "than 2 frames to align"
            )
        resolve_device(params["device"])
        if _wants_patches(params) and not _local_alignment_available():
            raise ParameterError(
                "motioncorr: patch-based local alignment is not available in this "
                f"installation ({_LOCAL_MODULE} is missing): use --patches_x 1 --patches_y 1"
            )
        ctx = JobContext(project_dir=project_dir, job_id=0, job_dir="", params=dict(params),
                         inputs=dict(inputs), run=run)
        table = _movies_table(ctx)
        if table is None or len(table.data) == 0:
            return  # streaming: nothing to look at yet
        movies = [_movie_from_row(ctx, {str(k): v for k, v in row.items()}, table.path)
                  for _, row in joined(table).iterrows()]
        for movie in movies:
            _check_dose(movie, params, table.path)
        try:  # a gain of the wrong size or orientation, on the first movie's first frames
            _read_checked(ctx, movies[0], max_frames=_CHECK_FRAMES)
        except _Skip:
            pass

    # ------------------------------------------------------------------ items
    def list_items(self, ctx: JobContext) -> list[str]:
        """The movies of the input set (as far as it is written, when streaming)."""
        table = _movies_table(ctx)
        if table is None:
            return []
        return [str(n) for n in table.data["rlnMicrographMovieName"].tolist()]

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Correct one movie; write its sums, motion STAR and plot."""
        start_time = time.perf_counter()
        table = _movies_table(ctx)
        if table is None:
            raise CryospaError(f"{ctx.input('movies').path}: the movie set has disappeared")
        rows = joined(table)
        match = rows[rows["rlnMicrographMovieName"].astype(str) == key]
        if match.empty:
            raise InputFileError(table.path or "movies.star", f"no movie {key}")
        movie = _movie_from_row(ctx, {str(k): v for k, v in match.iloc[0].items()}, table.path)
        _check_dose(movie, ctx.params, table.path)
        try:
            return _process_movie(ctx, movie, start_time)
        except _Skip as skip:
            ctx.log(str(skip))
            return {"skipped": str(skip)}

    def finalize(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> None:
        """Write ``corrected_micrographs.star``."""
        done = [r for _, r in results if "skipped" not in r]
        table = _movies_table(ctx)
        optics = table.optics.copy() if table is not None else pd.DataFrame(
            {"rlnOpticsGroup": pd.Series([], dtype="int64")})
        pixel = {int(r["optics_group"]): float(r["pixel_size"]) for r in done}
        used = optics["rlnOpticsGroup"].astype(int).isin(pixel) if done else optics.index >= 0
        optics = optics[used].reset_index(drop=True)
        if done:
            optics["rlnMicrographPixelSize"] = [pixel[int(g)] for g in optics["rlnOpticsGroup"]]
        elif "rlnMicrographOriginalPixelSize" in optics.columns:
            optics["rlnMicrographPixelSize"] = optics["rlnMicrographOriginalPixelSize"]
        data = pd.DataFrame(
            {
                "rlnMicrographName": [r["micrograph"] for r in done],
                "rlnMicrographMetadata": [r["metadata"] for r in done],
                "rlnOpticsGroup": pd.Series([int(r["optics_group"]) for r in done],
                                            dtype="int64"),
                "rlnAccumMotionTotal": pd.Series([r["accum_total"] for r in done], dtype=float),
                "rlnAccumMotionEarly": pd.Series([r["accum_early"] for r in done], dtype=float),
                "rlnAccumMotionLate": pd.Series([r["accum_late"] for r in done], dtype=float),
            }
        )
        if any("micrograph_nodw" in r for r in done):
            data["rlnMicrographNameNoDW"] = [r.get("micrograph_nodw", "") for r in done]
        if any("power_spectrum" in r for r in done):
            data["rlnCtfPowerSpectrum"] = [r.get("power_spectrum", "") for r in done]
        write_relion_star(ctx.path("corrected_micrographs.star"),
                          RelionTable("micrographs", data, optics))

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``12 movies corrected, 1 skipped; mean accumulated motion 14.2 Å (8.0 px) ...``."""
        done = [r for _, r in results if "skipped" not in r]
        skipped = len(results) - len(done)
        text = f"{len(done)} movie{'s' if len(done) != 1 else ''} corrected"
        if skipped:
            text += f", {skipped} skipped (see the log)"
        if done:
            total_px = float(np.mean([r["accum_total"] for r in done]))
            total_a = float(np.mean([r["accum_total"] * r["movie_pixel_size"] for r in done]))
            early = float(np.mean([r["accum_early"] for r in done]))
            late = float(np.mean([r["accum_late"] for r in done]))
            text += (
                f"; mean accumulated motion {total_a:.1f} Å ({total_px:.2f} px: early "
                f"{early:.2f}, late {late:.2f})"
            )
        return text


def _check_dose(movie: _Movie, params: Mapping[str, Any], source: Path | None) -> None:
    if not params["dose_weighting"]:
        return
    if movie.dose_per_frame is None:
        raise ParameterError(
            f"motioncorr: dose weighting needs the dose per frame, but {movie.name} has no "
            f"rlnMicrographDoseRate in {source}: give --dose_per_frame (e/Å²) or import the "
            "movies with --dose-per-frame (or use --no-dose-weighting)"
        )
    try:
        equivalent_exposure(1.0, movie.voltage)
    except ParameterError as err:
        raise ParameterError(
            f"motioncorr: {err} (optics group {movie.optics_group}): use --no-dose-weighting"
        ) from err


@dataclass
class _Frames:
    frames: np.ndarray  # (F, h, w) raw, then gain-corrected with defects and hot pixels filled
    n_total: int
    start: int  # 0-based first frame summed
    mask: np.ndarray | None  # (h, w) defects of the defect file
    hot_pixels: np.ndarray  # (n, 2) x, y of the hot pixels found

    shape: tuple[int, ...] = field(init=False)  # (F, h, w) as read

    def __post_init__(self) -> None:
        self.shape = tuple(int(n) for n in self.frames.shape)


def _read_checked(
    ctx: JobContext, movie: _Movie, *, max_frames: int | None = None
) -> tuple[_Frames, np.ndarray | None]:
    """The raw frames to sum and the defects; the gain (checked against them) or None.

    ``max_frames`` reads only the first frames of the range (enough for the gain check).
    """
    p = ctx.params
    with open_movie(movie.path) as reader:
        n_total = reader.n_frames
        start, stop = _frame_range(n_total, int(p["first_frame_sum"]), int(p["last_frame_sum"]),
                                   movie.name)
        if max_frames is not None:
            stop = min(stop, start + max_frames)
        frames = reader.read_frames(start, stop)
    shape = frames.shape[-2:]
    mask = read_defects(ctx.abs(movie.defects), shape) if movie.defects else None
    gain = None
    if movie.gain:
        gain_path = ctx.abs(movie.gain)
        gain = _load_gain(gain_path)
        checked = (str(gain_path), gain_path.stat().st_mtime_ns, frames.shape[-2:])
        if checked not in _GAINS_CHECKED:  # once per gain and frame size in each process
            _check_gain_orientation(frames.mean(axis=0), gain, gain_path=gain_path,
                                   gain_name=movie.gain, movie_name=movie.name, mask=mask)
            _GAINS_CHECKED.add(checked)
    return _Frames(frames, n_total, start, mask, np.zeros((0, 2), dtype=np.int64)), gain


def _load_frames(ctx: JobContext, movie: _Movie) -> _Frames:
    """Read the frames to sum, check and apply the gain, fill defects and hot pixels.

    The movie is held once, as float32: the gain is multiplied and the defects filled in
    place, frame by frame.
    """
    loaded, gain = _read_checked(ctx, movie)
    frames, mask = loaded.frames, loaded.mask
    if gain is not None:
        frames *= gain
    bad = np.zeros(frames.shape[-2:], dtype=bool) if mask is None else mask.copy()
    sigma = float(ctx.params["hot_pixel_sigma"])
    if sigma > 0:
        hot = detect_hot_pixels(frames.sum(axis=0), mask=mask, n_sigma=sigma)
        bad |= hot
        ys, xs = np.nonzero(hot)
        loaded.hot_pixels = np.stack([xs, ys], axis=1)
    if bad.any():
        rng = np.random.default_rng(zlib.crc32(movie.name.encode()))
        for f in range(frames.shape[0]):  # the draws of correct_defects on the whole stack
            frames[f] = correct_defects(frames[f], bad, rng=rng)
    return loaded


def _sums(
    frames: torch.Tensor,
    shifts: np.ndarray,
    local: Any,
    weights: list[DoseWeights | None],
    out_shape: tuple[int, int],
) -> list[torch.Tensor]:
    """Aligned sums of one movie's frames, one per entry of ``weights``, binned to ``out_shape``.

    All sums are made in one pass over the frames (each frame transformed, or warped with
    local motion, once); dose weights are made one frame at a time.
    """
    if local is None:
        totals = aligned_sums(frames, shifts, weights)
    else:
        from cryospa.core import local_alignment

        totals = local_alignment.aligned_sums_local(
            frames, shifts, local.coeffs_x, local.coeffs_y, weights)
    shape = (int(frames.shape[-2]), int(frames.shape[-1]))
    return [fourier_crop(t, out_shape) if out_shape != shape else t for t in totals]


def _write_sum(path: Path, image: torch.Tensor, pixel_size: float, float16: bool) -> None:
    write_mrc(path, image.detach().cpu().numpy(), voxel_size_angstrom=pixel_size,
              float16=float16)


def _process_movie(ctx: JobContext, movie: _Movie, start_time: float) -> dict[str, Any]:
    p = ctx.params
    device = resolve_device(p["device"])
    loaded = _load_frames(ctx, movie)
    n_frames, h, w = loaded.frames.shape
    frames = torch.from_numpy(loaded.frames).to(device)
    loaded.frames = np.empty((0, 0, 0), np.float32)  # not held twice on a GPU (loaded.shape)
    apix = movie.pixel_size
    max_shift = None if p["max_shift"] is None else float(p["max_shift"])
    options: dict[str, Any] = {
        "bfactor": float(p["bfactor"]),
        "crop": _align_crop((h, w), apix, float(p["align_resolution"])),
        "max_shift_px": max_shift,
    }
    group = int(p["group_frames"])
    shifts, n_iterations = _group_shifts(frames, group, apix, **options)

    local = None
    patches = (int(p["patches_x"]), int(p["patches_y"]))
    if patches[0] * patches[1] > 1:
        if not _local_alignment_available():
            raise ParameterError(
                f"patch-based local alignment is not available ({_LOCAL_MODULE} is missing): "
                "use --patches_x 1 --patches_y 1"
            )
        from cryospa.core import local_alignment

        local = local_alignment.align_patches(
            frames, shifts, apix, patches=patches, group=group, max_shift_px=max_shift
        )

    # sums: the dose-weighted and / or the plain one, in one pass
    dose = movie.dose_per_frame
    pre = movie.pre_exposure + (dose or 0.0) * loaded.start
    weighted = bool(p["dose_weighting"]) and dose is not None  # _check_dose: a dose if asked
    want_plain = (not weighted) or p["save_noDW"] or p["save_ps"]
    weights: list[DoseWeights | None] = []
    if weighted:
        assert dose is not None
        weights.append(DoseWeights((h, w), apix, frame_end_exposures(n_frames, dose, pre),
                                   movie.voltage, device=device))
    if want_plain:
        weights.append(None)
    out_shape = _binned_shape((h, w), float(p["bin_factor"]))
    sums = _sums(frames, shifts, local, weights, out_shape)
    del weights
    out_pixel = apix * w / out_shape[1]
    stem = output_stem(movie.name)
    ctx.path(stem).parent.mkdir(parents=True, exist_ok=True)
    float16 = bool(p["float16"])
    result: dict[str, Any] = {}
    plain = sums.pop() if want_plain else None
    if weighted:
        _write_sum(ctx.path(stem + ".mrc"), sums.pop(), out_pixel, float16)
        if p["save_noDW"] and plain is not None:
            _write_sum(ctx.path(stem + "_noDW.mrc"), plain, out_pixel, float16)
            result["micrograph_nodw"] = ctx.rel(stem + "_noDW.mrc")
    elif plain is not None:
        _write_sum(ctx.path(stem + ".mrc"), plain, out_pixel, float16)
    if p["save_ps"] and plain is not None:
        spectrum = averaged_amplitude_spectrum(plain, box=int(p["ps_size"]))
        write_mrc(ctx.path(stem + "_PS.mrc"), spectrum.cpu().numpy().astype(np.float32),
                  voxel_size_angstrom=out_pixel)
        result["power_spectrum"] = ctx.rel(stem + "_PS.mrc")
    del sums, plain

    motion = accumulated_motion(shifts, 1.0, dose_per_frame=dose or _DEFAULT_DOSE,
                                pre_exposure=pre)
    _write_motion_star(ctx.path(stem + ".star"), movie, loaded, shifts, local,
                       bin_factor=float(p["bin_factor"]))
    _plot(ctx.path(stem + "_shifts.png"), movie, loaded, shifts, local, patches, (h, w))
    seconds = time.perf_counter() - start_time
    note = f", local fit RMS {local.rms_residual_px:.2f} px" if local is not None else ""
    ctx.log(
        f"{movie.name}: {n_frames} frames ({loaded.start + 1}-{loaded.start + n_frames} of "
        f"{loaded.n_total}), {len(loaded.hot_pixels)} hot pixels, global motion "
        f"{motion.total:.2f} px (early {motion.early:.2f}, late {motion.late:.2f}) in "
        f"{n_iterations} iterations{note}, {seconds:.1f} s"
    )
    result.update(
        {
            "micrograph": ctx.rel(stem + ".mrc"),
            "metadata": ctx.rel(stem + ".star"),
            "optics_group": movie.optics_group,
            "pixel_size": out_pixel,
            "movie_pixel_size": apix,
            "accum_total": motion.total,
            "accum_early": motion.early,
            "accum_late": motion.late,
            "frames": int(n_frames),
            "hot_pixels": len(loaded.hot_pixels),
            "seconds": round(seconds, 3),
        }
    )
    if local is not None:
        result["local_rms_px"] = float(local.rms_residual_px)
    return result


def _write_motion_star(
    path: Path,
    movie: _Movie,
    loaded: _Frames,
    shifts: np.ndarray,
    local: Any,
    *,
    bin_factor: float,
) -> None:
    """RELION's per-movie motion STAR (``data_general``, ``data_global_shift``, ...)."""
    n_frames, h, w = loaded.shape
    general: dict[str, Any] = {
        "rlnImageSizeX": int(w),
        "rlnImageSizeY": int(h),
        "rlnImageSizeZ": int(loaded.n_total),
        "rlnMicrographMovieName": movie.name,
    }
    if movie.gain:
        general["rlnMicrographGainName"] = movie.gain
    if movie.defects:
        general["rlnMicrographDefectFile"] = movie.defects
    general.update(
        {
            "rlnMicrographBinning": float(bin_factor),
            "rlnMicrographOriginalPixelSize": float(movie.pixel_size),
            "rlnMicrographDoseRate": float(movie.dose_per_frame or _DEFAULT_DOSE),
            "rlnMicrographPreExposure": float(movie.pre_exposure),
            "rlnVoltage": float(movie.voltage),
            "rlnMicrographStartFrame": int(loaded.start + 1),
            "rlnMotionModelVersion": 1 if local is not None else 0,
        }
    )
    all_shifts = np.full((loaded.n_total, 2), MISSING_SHIFT)
    all_shifts[loaded.start : loaded.start + n_frames] = shifts
    blocks: dict[str, Any] = {
        "general": general,
        "global_shift": pd.DataFrame(
            {
                "rlnMicrographFrameNumber": np.arange(1, loaded.n_total + 1),
                "rlnMicrographShiftX": all_shifts[:, 0] + 0.0,
                "rlnMicrographShiftY": all_shifts[:, 1] + 0.0,
            }
        ),
    }
    if local is not None:
        coeffs = np.concatenate([np.asarray(local.coeffs_x, np.float64),
                                 np.asarray(local.coeffs_y, np.float64)])
        blocks["local_motion_model"] = pd.DataFrame(
            {"rlnMotionModelCoeffsIdx": np.arange(coeffs.size), "rlnMotionModelCoeff": coeffs}
        )
        # the measured patch shifts (relative to the global ones), patch by patch, as RELION
        centres = np.asarray(local.patch_centres, dtype=np.float64)  # (P, 2)
        measured = np.asarray(local.patch_shifts, dtype=np.float64)  # (P, F, 2)
        n_patches = centres.shape[0]
        blocks["local_shift"] = pd.DataFrame(
            {
                "rlnMicrographFrameNumber": np.tile(
                    np.arange(loaded.start + 1, loaded.start + n_frames + 1), n_patches),
                "rlnCoordinateX": np.repeat(centres[:, 0], n_frames),
                "rlnCoordinateY": np.repeat(centres[:, 1], n_frames),
                "rlnMicrographShiftX": measured[:, :, 0].reshape(-1),
                "rlnMicrographShiftY": measured[:, :, 1].reshape(-1),
            }
        )
    if len(loaded.hot_pixels):
        blocks["hot_pixels"] = pd.DataFrame(
            {
                "rlnCoordinateX": loaded.hot_pixels[:, 0].astype(np.float64),
                "rlnCoordinateY": loaded.hot_pixels[:, 1].astype(np.float64),
            }
        )
    write_star_blocks(path, blocks)


def _plot(
    path: Path,
    movie: _Movie,
    loaded: _Frames,
    shifts: np.ndarray,
    local: Any,
    patches: tuple[int, int],
    shape: tuple[int, int],
) -> None:
    from cryospa.plots.motion import plot_motion

    plot_motion(
        path,
        shifts,
        first_frame=loaded.start + 1,
        pixel_size_angstrom=movie.pixel_size,
        title=movie.name,
        patch_centres_px=None if local is None else local.patch_centres,
        patch_shifts_px=None if local is None else local.patch_shifts,
        fitted_shifts_px=None if local is None else local.fitted_shifts,
        shape_px=shape,
        patches=patches,
    )

