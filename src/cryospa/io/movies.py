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
    "MovieReader",
    "apply_gain",
    "correct_defects",
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
