"""Movies (TIFF via ``tifffile``, MRC/MRCS memory-mapped), gain references and defects.

Frames are ``(h, w)`` = ``(ny, nx)`` float32 arrays in detector counts; a block of frames is
``(k, h, w)``. Frame access never loads the whole movie: TIFF movies are read page by page
(one page per frame; LZW / zlib / deflate compression via ``imagecodecs``), MRC movies
through a memory map.

Gain references follow RELION 3.1: the gain is multiplicative (``corrected = raw * gain``)
and ``--gain_rot`` / ``--gain_flip`` rotate first, then flip (see :func:`read_gain`).

TIFF orientation: RELION (like MotionCor2 and IMOD) flips TIFF images along the slow axis when
it reads or writes them (row ``r`` of the file is row ``h - 1 - r`` of the image), whatever the
``TIFFTAG_ORIENTATION``. cryospa does the same for TIFF movies and TIFF gain references, so
frame ``(row, column)`` indices, gain references made for RELION and coordinates on the motion
corrected micrographs agree with RELION's (checked against ``relion_image_handler``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import tifffile

from cryospa.errors import InputFileError
from cryospa.io._files import atomic_output, require_file
from cryospa.io.mrc import ImageStack, _write_array, read_mrc

__all__ = [
    "GAIN_ORIENTATIONS",
    "MovieReader",
    "apply_gain",
    "compose_gain_orientations",
    "correct_defects",
    "detect_hot_pixels",
    "gain_orientation_scores",
    "open_movie",
    "read_defects",
    "read_gain",
    "transform_gain",
    "write_mrc_movie",
    "write_tiff_movie",
]

PathLike = str | os.PathLike[str]

_TIFF_SUFFIXES = {".tif", ".tiff", ".gain"}
_MRC_SUFFIXES = {".mrc", ".mrcs", ".map"}
_EER_COMPRESSIONS = {65000, 65001, 65002}


class MovieReader:
    """Frame-by-frame access to a movie. Create with :func:`open_movie`.

    Attributes
    ----------
    path : Path
        The movie file.
    n_frames : int
        Number of frames.
    frame_shape : tuple of int
        ``(h, w)`` in pixels.

    """

    path: Path
    n_frames: int
    frame_shape: tuple[int, int]

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` (0-based; negative counts from the end) as float32 ``(h, w)``."""
        return self._read(self._index(i))

    def read_frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start`` to ``stop - 1`` as float32 ``(k, h, w)`` (Python slice rules)."""
        indices = range(self.n_frames)[slice(start, stop)]
        out = np.empty((len(indices), *self.frame_shape), dtype=np.float32)
        for k, i in enumerate(indices):
            out[k] = self._read(i)
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.n_frames):
            yield self._read(i)

    def __len__(self) -> int:
        return self.n_frames

    def _index(self, i: int) -> int:
        if not -self.n_frames <= i < self.n_frames:
            raise IndexError(f"{self.path}: frame {i} out of range for {self.n_frames} frames")
        return i % self.n_frames

    def _read(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> MovieReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, n_frames={self.n_frames}, "
            f"frame_shape={self.frame_shape})"
        )


class _TiffMovie(MovieReader):
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._tif: tifffile.TiffFile | None = tifffile.TiffFile(path)
        except Exception as err:  # tifffile raises TiffFileError, ValueError, struct.error...
            raise InputFileError(path, f"cannot read TIFF movie: {err}", _TIFF_FIX) from err
        pages = self._tif.pages
        self.n_frames = len(pages)
        if self.n_frames == 0:
            self.close()
            raise InputFileError(path, "TIFF file has no pages (frames)", _TIFF_FIX)
        first = pages.first
        if int(first.compression) in _EER_COMPRESSIONS:
            self.close()
            raise InputFileError(
                path,
                "this is an EER movie (TIFF with EER compression), which this reader does not "
                "decode",
                "convert it to TIFF/MRC frames first (e.g. relion_convert_to_tiff)",
            )
        if len(first.shape) != 2:
            self.close()
            raise InputFileError(
                path,
                f"TIFF pages have shape {first.shape}; expected one 2D frame per page",
                _TIFF_FIX,
            )
        self.frame_shape = (int(first.shape[0]), int(first.shape[1]))

    def _read(self, i: int) -> np.ndarray:
        if self._tif is None:
            raise ValueError(f"{self.path}: movie is closed")
        page = self._tif.pages[i]
        try:
            frame = page.asarray()
        except Exception as err:
            raise InputFileError(self.path, f"cannot decode frame {i}: {err}", _TIFF_FIX) from err
        if frame.shape != self.frame_shape:
            raise InputFileError(
                self.path,
                f"frame {i} has shape {frame.shape}, frame 0 has {self.frame_shape}",
                "all frames of a movie must have the same size",
            )
        return np.asarray(frame[::-1], dtype=np.float32)  # RELION's slow-axis flip

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None


_TIFF_FIX = "check that the file is a complete multi-page TIFF movie"


class _MrcMovie(MovieReader):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stack: ImageStack | None = ImageStack(path)
        n, h, w = self._stack.shape
        self.n_frames = n
        self.frame_shape = (h, w)

    def _read(self, i: int) -> np.ndarray:
        if self._stack is None:
            raise ValueError(f"{self.path}: movie is closed")
        return self._stack[i]

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


def open_movie(path: PathLike) -> MovieReader:
    """Open a movie for frame-by-frame reading.

    Parameters
    ----------
    path : path-like
        ``.tif`` / ``.tiff`` (one frame per page, any compression ``imagecodecs`` can
        decode) or ``.mrc`` / ``.mrcs`` (frames along z).

    Returns
    -------
    MovieReader
        Use as a context manager; ``frame(i)``, ``read_frames(start, stop)``, iteration.

    """
    p = require_file(path, what="movie")
    suffix = p.suffix.lower()
    if suffix in _TIFF_SUFFIXES:
        return _TiffMovie(p)
    if suffix in _MRC_SUFFIXES:
        return _MrcMovie(p)
    if suffix == ".eer":
        raise InputFileError(p, "EER movies are not supported yet", "convert them to TIFF first")
    raise InputFileError(
        p, f"unknown movie format {suffix!r}", "movies must be .tif/.tiff or .mrc/.mrcs"
    )


def _frames_array(frames: Any) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"frames must be (n, h, w) or (h, w), got shape {arr.shape}")
    return arr


def write_tiff_movie(
    path: PathLike,
    frames: np.ndarray,
    *,
    compression: Literal["zlib", "lzw"] | None = "zlib",
) -> None:
    """Write a multi-page TIFF movie, one page per frame, atomically.

    Parameters
    ----------
    path : path-like
        Output ``.tif`` / ``.tiff``.
    frames : np.ndarray
        ``(n, h, w)`` counts; uint8, int8, uint16, int16 and float32 are kept, other
        floats are written as float32, other integers must fit int16/uint16.
    compression : {"zlib", "lzw", None}, optional
        Lossless page compression (zlib = Adobe deflate).

    """
    arr = _frames_array(frames)
    if compression not in ("zlib", "lzw", None):
        raise ValueError(f"compression must be 'zlib', 'lzw' or None, got {compression!r}")
    if arr.dtype.kind == "f" and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    elif arr.dtype.kind in "iu" and arr.dtype.itemsize > 2:
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        target = np.uint16 if lo >= 0 else np.int16
        info = np.iinfo(target)
        if lo < info.min or hi > info.max:
            raise ValueError(f"integer frames in [{lo}, {hi}] do not fit {np.dtype(target)}")
        arr = arr.astype(target)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    bigtiff = arr.nbytes > 2**31
    with atomic_output(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
        for frame in arr:
            tw.write(
                np.ascontiguousarray(frame[::-1]),  # RELION's slow-axis flip
                photometric="minisblack",
                compression=compression,
                contiguous=False,
            )


def write_mrc_movie(path: PathLike, frames: np.ndarray, *, voxel_size_angstrom: float) -> None:
    """Write an MRC movie (an image stack, frames along z), atomically.

    Parameters
    ----------
    path : path-like
        Output ``.mrcs`` (or ``.mrc``); written as a stack either way.
    frames : np.ndarray
        ``(n, h, w)``; int8 (mode 0), int16 (1), float32 (2), uint16 (6), float16 (12) are
        kept; uint8 is widened to uint16, other floats become float32.
    voxel_size_angstrom : float
        Pixel size in Å.

    """
    arr = _frames_array(frames)
    if arr.dtype == np.uint8 or arr.dtype == np.bool_:
        arr = arr.astype(np.uint16)
    elif arr.dtype.kind == "f" and arr.dtype not in (np.float32, np.float16):
        arr = arr.astype(np.float32)
    elif arr.dtype.kind in "iu" and arr.dtype not in (np.int8, np.int16, np.uint16):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        target = np.uint16 if lo >= 0 else np.int16
        info = np.iinfo(target)
        if lo < info.min or hi > info.max:
            raise ValueError(f"integer frames in [{lo}, {hi}] do not fit {np.dtype(target)}")
        arr = arr.astype(target)
    _write_array(
        path, arr, voxel_size_angstrom=voxel_size_angstrom, origin_angstrom=None, is_stack=True
    )


# --------------------------------------------------------------------------------------
# Gain
# --------------------------------------------------------------------------------------


def transform_gain(gain: np.ndarray, *, rotation: int = 0, flip: int = 0) -> np.ndarray:
    """Rotate, then flip, a gain image exactly as RELION 3.1 ``--gain_rot`` / ``--gain_flip``.

    Parameters
    ----------
    gain : np.ndarray
        ``(h, w)`` gain, row 0 first as stored in the file.
    rotation : {0, 1, 2, 3}
        Number of 90° turns *clockwise* as displayed with row 0 at the top (RELION's
        ``relion_display``; MotionCor2 ``-RotGain``). 1: ``out[r, c] = in[h-1-c, r]``.
    flip : {0, 1, 2}
        Applied after the rotation. 1: upside down (``out[r, c] = in[h-1-r, c]``,
        MotionCor2 ``-FlipGain 1``); 2: left-right (``out[r, c] = in[r, w-1-c]``).

    Returns
    -------
    np.ndarray
        ``(h, w)``, or ``(w, h)`` for rotations 1 and 3.

    Notes
    -----
    From RELION 3.1 ``src/motioncorr_runner.cpp`` (``MotioncorrRunner::prepareGainReference``:
    rotation first with ``ImageOp::rotate90/180/270``, then ``ImageOp::flipY`` /
    ``ImageOp::flipX``) and ``src/jaz/image_op.h`` (``rotate90`` writes
    ``dest(x, ydim-1-y) = src(y, x)``, i.e. clockwise; ``rotate270`` writes
    ``dest(xdim-1-x, y) = src(y, x)``), 3dem/relion on GitHub.

    """
    g = np.asarray(gain)
    if g.ndim != 2:
        raise ValueError(f"gain must be 2D (h, w), got shape {g.shape}")
    if rotation not in (0, 1, 2, 3):
        raise ValueError(f"gain rotation must be 0, 1, 2 or 3 (x 90° clockwise), got {rotation}")
    if flip not in (0, 1, 2):
        raise ValueError(
            f"gain flip must be 0 (none), 1 (upside down) or 2 (left-right), got {flip}"
        )
    out = np.rot90(g, k=-rotation)  # np.rot90 with negative k turns clockwise
    if flip == 1:
        out = out[::-1, :]
    elif flip == 2:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def read_gain(path: PathLike, *, rotation: int = 0, flip: int = 0) -> np.ndarray:
    """Read a gain reference (MRC or TIFF) and apply RELION's rotation / flip.

    Parameters
    ----------
    path : path-like
        ``.mrc`` (single image or a stack of one) or ``.tif`` / ``.tiff`` / ``.gain``.
    rotation : {0, 1, 2, 3}
        RELION ``--gain_rot``: 90° clockwise turns (see :func:`transform_gain`).
    flip : {0, 1, 2}
        RELION ``--gain_flip``: 0 none, 1 upside down, 2 left-right; after the rotation.

    Returns
    -------
    np.ndarray
        float32 ``(h, w)`` multiplicative gain (``corrected = raw * gain``).

    """
    p = require_file(path, what="gain reference")
    suffix = p.suffix.lower()
    if suffix in _TIFF_SUFFIXES:
        try:
            with tifffile.TiffFile(p) as tif:
                gain = tif.pages.first.asarray()[::-1]  # RELION's slow-axis flip
        except Exception as err:
            raise InputFileError(p, f"cannot read TIFF gain reference: {err}") from err
    elif suffix in _MRC_SUFFIXES:
        gain, _ = read_mrc(p, permissive=True)
    else:
        raise InputFileError(
            p,
            f"unknown gain reference format {suffix!r}",
            "give an MRC or TIFF gain (convert .dm4 with IMOD dm2mrc)",
        )
    gain = np.asarray(gain, dtype=np.float32)
    if gain.ndim == 3 and gain.shape[0] == 1:
        gain = gain[0]
    if gain.ndim != 2:
        raise InputFileError(p, f"gain reference must be one 2D image, got shape {gain.shape}")
    return transform_gain(gain, rotation=rotation, flip=flip).astype(np.float32, copy=False)


def apply_gain(
    frame: np.ndarray,
    gain: np.ndarray,
    *,
    movie_path: PathLike | None = None,
    gain_path: PathLike | None = None,
) -> np.ndarray:
    """Gain-correct frame(s): ``frame * gain`` (RELION's multiplicative convention).

    Parameters
    ----------
    frame : np.ndarray
        ``(..., h, w)`` raw counts.
    gain : np.ndarray
        ``(h, w)`` gain (after :func:`read_gain`'s rotation / flip).
    movie_path, gain_path : path-like, optional
        Named in the error message.

    Returns
    -------
    np.ndarray
        float32 ``(..., h, w)``.

    Raises
    ------
    InputFileError
        The frame size differs from the gain size (message names both files and shapes).

    """
    f = np.asarray(frame)
    g = np.asarray(gain)
    if f.shape[-2:] != g.shape:
        fh, fw = f.shape[-2:]
        if (fw, fh) == g.shape:
            fix = "the gain is transposed relative to the movie: try --gain_rot 1 or 3"
        elif g.shape == (2 * fh, 2 * fw) or (2 * g.shape[0], 2 * g.shape[1]) == (fh, fw):
            fix = "one is super-resolution and the other is not: use the matching gain"
        else:
            fix = "use the gain reference recorded with this detector and mode"
        raise InputFileError(
            movie_path if movie_path is not None else "<movie>",
            f"frame size (h, w) = {(fh, fw)} does not match the gain reference "
            f"{gain_path if gain_path is not None else '<gain>'} of shape {g.shape}",
            fix,
        )
    return np.multiply(f, g, dtype=np.float32)


# --------------------------------------------------------------------------------------
# Defects
# --------------------------------------------------------------------------------------


def read_defects(path: PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Read a detector defect file into a boolean mask.

    Parameters
    ----------
    path : path-like
        One of

        * a text file of rectangles ``x y w h`` per line (MotionCor2 ``-DefectFile``,
          RELION ``--defect_file``): ``x``, ``y`` = column, row of the first corner,
          0-based; ``w``, ``h`` in pixels;
        * a text file of pixels ``x y`` per line (column, row; 0-based);
        * an image defect map (``.mrc`` / ``.tif``), non-zero = defect, as RELION accepts.

        Lines that are empty or start with ``#`` are ignored.
    shape : (h, w)
        Frame shape; rectangles are clipped to it.

    Returns
    -------
    np.ndarray
        bool ``(h, w)``, True at defective pixels.

    Raises
    ------
    InputFileError
        Unparsable text (e.g. a SerialEM defect list), pixels outside the frame, or an
        image map of another shape.

    """
    p = require_file(path, what="defect file")
    h, w = (int(shape[0]), int(shape[1]))
    suffix = p.suffix.lower()
    if suffix in _MRC_SUFFIXES or suffix in {".tif", ".tiff"}:
        if suffix in _MRC_SUFFIXES:
            image, _ = read_mrc(p, permissive=True)
        else:
            image = tifffile.imread(p)
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[0] == 1:
            image = image[0]
        if image.shape != (h, w):
            raise InputFileError(
                p,
                f"defect map has shape {image.shape} but the frames are {(h, w)}",
                "use the map for this detector mode (or rotate it like the gain)",
            )
        return image != 0
    rows = _read_number_rows(p)
    mask = np.zeros((h, w), dtype=bool)
    if not rows:
        return mask
    ncols = {len(r) for r in rows}
    if ncols == {4}:
        for lineno, (x, y, rw, rh) in enumerate(rows, start=1):
            if rw < 0 or rh < 0:
                raise InputFileError(p, f"rectangle {lineno} has negative width/height", "x y w h")
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + rw, w), min(y + rh, h)
            if x1 > x0 and y1 > y0:
                mask[y0:y1, x0:x1] = True
        return mask
    if ncols == {2}:
        xy = np.array(rows, dtype=np.int64)
        outside = (xy[:, 0] < 0) | (xy[:, 0] >= w) | (xy[:, 1] < 0) | (xy[:, 1] >= h)
        if outside.any():
            first = xy[outside][0].tolist()
            raise InputFileError(
                p,
                f"{int(outside.sum())} defect pixels lie outside the {w}x{h} frame "
                f"(first: x={first[0]}, y={first[1]})",
                "check that the defect list is for this detector mode",
            )
        mask[xy[:, 1], xy[:, 0]] = True
        return mask
    raise InputFileError(
        p,
        f"defect text lines have {sorted(ncols)} numbers; expected 4 (x y w h) or 2 (x y)",
        "use a MotionCor2-style defect file",
    )


def _read_number_rows(path: Path) -> list[tuple[int, ...]]:
    rows: list[tuple[int, ...]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                rows.append(tuple(round(float(t)) for t in text.replace(",", " ").split()))
            except ValueError:
                raise InputFileError(
                    path,
                    f"line {lineno} is not a list of numbers: {line.strip()[:60]!r}",
                    "give x y w h rectangles or x y pixels per line (a SerialEM defect list "
                    "must be converted first, e.g. with IMOD 'clip defect')",
                ) from None
    return rows


def correct_defects(
    frame: np.ndarray,
    mask: np.ndarray,
    *,
    rng: np.random.Generator | None = None,
    max_radius: int = 64,
) -> np.ndarray:
    """Replace defective pixels with values drawn from good neighbours.

    Each bad pixel takes the value of a randomly chosen good pixel in a square window
    around it; windows grow (1, 2, 4, ... up to ``max_radius`` pixels) for pixels whose
    neighbourhood is all bad (e.g. inside a bad column). Pixels still unresolved get the
    mean of all good pixels. Random good values keep the local noise statistics, so the
    filled pixels neither bias the frame alignment nor create a fixed pattern.

    Parameters
    ----------
    frame : np.ndarray
        ``(h, w)`` or ``(k, h, w)`` frame(s).
    mask : np.ndarray
        bool ``(h, w)``, True = defect.
    rng : np.random.Generator, optional
        Random source (default: a fresh ``np.random.default_rng()``).
    max_radius : int, optional
        Largest window half-width in pixels.

    Returns
    -------
    np.ndarray
        float32 copy of ``frame`` with the defects filled; good pixels are unchanged.

    """
    f = np.asarray(frame, dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    if f.shape[-2:] != m.shape:
        raise ValueError(f"mask shape {m.shape} differs from frame shape {f.shape[-2:]}")
    if f.ndim == 3:
        gen = rng if rng is not None else np.random.default_rng()
        return np.stack([correct_defects(x, m, rng=gen, max_radius=max_radius) for x in f])
    if f.ndim != 2:
        raise ValueError(f"frame must be (h, w) or (k, h, w), got shape {f.shape}")
    out = f.copy()
    if not m.any():
        return out
    if m.all():
        raise ValueError("every pixel is marked defective")
    gen = rng if rng is not None else np.random.default_rng()
    h, w = m.shape
    ys, xs = np.nonzero(m)
    radius = 1
    while ys.size and radius <= max_radius:
        for _ in range(4):  # a few draws per radius
            if not ys.size:
                break
            dy = gen.integers(-radius, radius + 1, size=ys.size)
            dx = gen.integers(-radius, radius + 1, size=ys.size)
            ny = np.clip(ys + dy, 0, h - 1)
            nx = np.clip(xs + dx, 0, w - 1)
            ok = ~m[ny, nx]
            out[ys[ok], xs[ok]] = f[ny[ok], nx[ok]]
            ys, xs = ys[~ok], xs[~ok]
        radius *= 2
    if ys.size:
        out[ys, xs] = f[~m].mean()
    return out


# --------------------------------------------------------------------------------------
# Gain orientation and hot pixels
# --------------------------------------------------------------------------------------

#: The 8 distinct orientations of an image as RELION ``(--gain_rot, --gain_flip)`` pairs
#: (:func:`transform_gain`); the other 4 pairs repeat them (e.g. ``(2, 2)`` = ``(0, 1)``).
GAIN_ORIENTATIONS: tuple[tuple[int, int], ...] = (
    (0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1), (0, 2), (1, 2),
)


def compose_gain_orientations(first: tuple[int, int], then: tuple[int, int]) -> tuple[int, int]:
    """The single ``(rotation, flip)`` doing ``first``, then ``then`` (:func:`transform_gain`).

    Used to express a correction of an already rotated / flipped gain as the options of the
    original file: ``transform_gain(transform_gain(g, *first), *then)`` equals
    ``transform_gain(g, *result)``, with ``result`` taken from :data:`GAIN_ORIENTATIONS`.
    """
    probe = np.arange(6).reshape(2, 3)  # non-square, distinct values: tells all 8 apart
    target = transform_gain(
        transform_gain(probe, rotation=first[0], flip=first[1]), rotation=then[0], flip=then[1]
    )
    for rotation, flip in GAIN_ORIENTATIONS:
        candidate = transform_gain(probe, rotation=rotation, flip=flip)
        if candidate.shape == target.shape and np.array_equal(candidate, target):
            return rotation, flip
    raise AssertionError("the 8 orientations form a group")  # pragma: no cover


def _box_mean(image: np.ndarray, weight: np.ndarray, half: int) -> np.ndarray:
    """Weighted mean of ``image`` over ``(2 half + 1)^2`` windows (edges: the pixels inside)."""
    size = 2 * half + 1

    def box_sum(x: np.ndarray) -> np.ndarray:
        c = np.cumsum(np.pad(x, ((half + 1, half), (0, 0))), axis=0)
        x = c[size:] - c[:-size]
        c = np.cumsum(np.pad(x, ((0, 0), (half + 1, half))), axis=1)
        return c[:, size:] - c[:, :-size]

    w = weight.astype(np.float64)
    return box_sum(image * w) / np.maximum(box_sum(w), 1e-12)


def _high_pass(image: np.ndarray, good: np.ndarray, half: int = 4) -> np.ndarray:
    """``image`` minus its local mean over good pixels, 0 at bad pixels."""
    out = image - _box_mean(np.where(good, image, 0.0), good, half)
    return np.where(good, out, 0.0)


def _robust_sigma(values: np.ndarray) -> float:
    """Standard deviation from the median absolute deviation (std if the MAD is 0)."""
    if values.size == 0:
        return 0.0
    mad = float(np.median(np.abs(values - np.median(values))))
    return 1.4826 * mad if mad > 0 else float(values.std())


def gain_orientation_scores(
    frame_mean: np.ndarray, gain: np.ndarray, *, mask: np.ndarray | None = None
) -> dict[tuple[int, int], float]:
    """How well the raw frames fit ``1 / gain`` under each orientation of the gain.

    A counting detector's raw frames are the electrons divided by the gain (RELION's gain is
    multiplied onto them), so the mean raw frame carries the gain's pixel-to-pixel pattern as
    ``1 / gain``. For every orientation of :data:`GAIN_ORIENTATIONS` whose shape matches the
    frames, the Pearson correlation of the high-passed mean frame with the high-passed
    ``1 / gain`` is computed (local means over 9 x 9 pixels removed, so smooth illumination or
    ice variations do not count; pixels of ``mask``, without counts, with a gain <= 0 or more
    than 8 robust standard deviations off are left out). The high-pass filter commutes with
    the rotations and flips, so it is applied once to each image.

    Parameters
    ----------
    frame_mean : np.ndarray
        ``(h, w)`` mean of raw (not gain-corrected) frames.
    gain : np.ndarray
        The gain as it would be applied (after any rotation / flip already made).
    mask : np.ndarray, optional
        bool ``(h, w)``, True at known defects.

    Returns
    -------
    dict
        ``(rotation, flip)`` applied to ``gain`` (:func:`transform_gain`) to correlation; only
        orientations whose shape matches the frames appear (none: no orientation fits).
    """
    raw = np.asarray(frame_mean, dtype=np.float64)
    g = np.asarray(gain, dtype=np.float64)
    shapes = {
        o: transform_gain(np.empty(g.shape, dtype=bool), rotation=o[0], flip=o[1]).shape
        for o in GAIN_ORIENTATIONS
    }
    fitting = [o for o in GAIN_ORIENTATIONS if shapes[o] == raw.shape]
    scores: dict[tuple[int, int], float] = {}
    raw_good = (raw > 0) & np.isfinite(raw)
    if mask is not None:
        raw_good &= ~np.asarray(mask, dtype=bool)
    gain_good = (g > 0) & np.isfinite(g)
    if not fitting or raw_good.sum() < 16 or gain_good.sum() < 16:
        return scores
    hp_raw = _high_pass(raw, raw_good)
    hp_inv = _high_pass(np.where(gain_good, 1.0 / np.where(gain_good, g, 1.0), 0.0), gain_good)
    for values, good in ((hp_raw, raw_good), (hp_inv, gain_good)):
        sigma = _robust_sigma(values[good])
        if sigma > 0:
            good &= np.abs(values) <= 8 * sigma
    for rotation, flip in fitting:
        inv = transform_gain(hp_inv, rotation=rotation, flip=flip)
        good = raw_good & transform_gain(gain_good, rotation=rotation, flip=flip)
        a = hp_raw[good]
        b = inv[good]
        a = a - a.mean()
        b = b - b.mean()
        norm = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
        scores[(rotation, flip)] = float(np.dot(a, b) / norm) if norm > 0 else 0.0
    return scores


def detect_hot_pixels(
    total: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    n_sigma: float = 6.0,
    half_window: int = 8,
) -> np.ndarray:
    """Hot pixels of a gain-corrected movie sum: far above their local mean.

    A pixel is hot when ``total - local mean > n_sigma * sigma``, with the local mean over the
    good pixels of a ``(2 half_window + 1)^2`` window and ``sigma`` the robust (median absolute
    deviation) standard deviation of ``total - local mean`` over the image. RELION
    (``MotioncorrRunner``) flags pixels of the unaligned sum above ``mean + 6 std`` of the whole
    sum; the local mean keeps the test valid under uneven illumination and ice.

    Parameters
    ----------
    total : np.ndarray
        ``(h, w)`` sum of gain-corrected frames.
    mask : np.ndarray, optional
        bool ``(h, w)``: known defects, left out of the statistics and never reported.
    n_sigma : float
        Threshold in standard deviations.
    half_window : int
        Half side of the local-mean window (pixels).

    Returns
    -------
    np.ndarray
        bool ``(h, w)``, True at the hot pixels found.
    """
    x = np.asarray(total, dtype=np.float64)
    good = np.isfinite(x)
    if mask is not None:
        good &= ~np.asarray(mask, dtype=bool)
    if good.sum() < 16:
        return np.zeros(x.shape, dtype=bool)
    residual = x - _box_mean(np.where(good, x, 0.0), good, half_window)
    sigma = _robust_sigma(residual[good])
    if not sigma > 0:
        return np.zeros(x.shape, dtype=bool)
    return good & (residual > float(n_sigma) * sigma)
