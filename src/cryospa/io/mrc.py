"""MRC / MRCS images, stacks and volumes (via ``mrcfile``), and RELION image names.

Array conventions: a 2D image is ``(h, w)`` = ``(ny, nx)``, a stack ``(n, h, w)``, a volume
``(d, h, w)`` = ``(nz, ny, nx)``; everything is returned as float32. Voxel sizes and origins
are in Å, ordered (x, y, z) as in the MRC header.

Stacks versus volumes: RELION writes both with space group 0 and tells them apart by the
file name (``.mrcs`` = stack), so do we: a file is a stack if it is named ``.mrcs`` or its
header says ``ispg == 0`` and ``mz == 1`` with ``nz > 1`` (the MRC2014 image-stack form,
which is what we write). :class:`ImageStack` reads any 2D/3D file as a stack on request.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import mrcfile
import mrcfile.utils
import numpy as np

from cryospa.errors import InputFileError
from cryospa.io._files import atomic_output, require_file

__all__ = [
    "ImageStack",
    "MrcHeaderInfo",
    "StackWriter",
    "format_image_name",
    "parse_image_name",
    "read_images",
    "read_mrc",
    "read_mrc_header",
    "write_mrc",
]

_HEADER_BYTES = 1024
_SUPPORTED_MODES = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class MrcHeaderInfo:
    """What cryospa needs from an MRC header.

    Attributes
    ----------
    shape : tuple of int
        Data shape as returned by :func:`read_mrc`: ``(h, w)`` for a single image,
        ``(n, h, w)`` for a stack, ``(d, h, w)`` for a volume.
    mode : int
        MRC mode (0 int8, 1 int16, 2 float32, 6 uint16, 12 float16).
    voxel_size_angstrom : tuple of float
        (x, y, z) voxel size in Å (``cella / mxyz``; 0 where the header has no cell).
    origin_angstrom : tuple of float
        (x, y, z) origin in Å (header ``origin`` fields).
    is_stack : bool
        True for an image stack (see the module docstring for the rule).

    """

    shape: tuple[int, ...]
    mode: int
    voxel_size_angstrom: tuple[float, float, float]
    origin_angstrom: tuple[float, float, float]
    is_stack: bool


@dataclass(frozen=True)
class _Layout:
    info: MrcHeaderInfo
    dtype: np.dtype[Any]
    offset: int
    nzyx: tuple[int, int, int]


def _read_layout(path: PathLike, *, permissive: bool) -> _Layout:
    """Parse and validate the header; check the file holds all the data it announces."""
    p = require_file(path, what="MRC file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with mrcfile.open(p, mode="r", header_only=True, permissive=True) as mrc:
                header = mrc.header.copy()
        except (ValueError, OSError) as err:
            raise InputFileError(p, f"cannot read the MRC header: {err}", _fix_mrc()) from err
    problems = [str(w.message) for w in caught]
    if problems and not permissive:
        raise InputFileError(
            p,
            "invalid MRC header: " + "; ".join(problems),
            "if the file otherwise looks right (some programs write no 'MAP ' id or machine "
            "stamp), read it with permissive=True",
        )
    mode = int(header.mode)
    if mode not in _SUPPORTED_MODES:
        modes = ", ".join(f"{m} ({t})" for m, t in _SUPPORTED_MODES.items())
        raise InputFileError(
            p, f"unsupported MRC mode {mode}", f"supported modes are {modes}; convert the file"
        )
    dtype = mrcfile.utils.data_dtype_from_header(header)
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if min(nx, ny, nz) <= 0:
        raise InputFileError(p, f"invalid dimensions nx={nx} ny={ny} nz={nz} in the header")
    offset = _HEADER_BYTES + int(header.nsymbt)
    expected = offset + nx * ny * nz * dtype.itemsize
    actual = p.stat().st_size
    if actual < expected:
        raise InputFileError(
            p,
            f"truncated MRC file: the header announces {nz}x{ny}x{nx} values of mode {mode} "
            f"({expected} bytes expected in total) but the file has {actual} bytes",
            "the copy or the writing program was interrupted; copy or regenerate the file",
        )
    ispg, mz = int(header.ispg), int(header.mz)
    is_stack = p.suffix.lower() == ".mrcs" or (ispg == 0 and mz == 1 and nz > 1)
    shape: tuple[int, ...] = (nz, ny, nx) if (nz > 1 or is_stack) else (ny, nx)
    cella = header.cella
    mxyz = (int(header.mx), int(header.my), mz)
    voxel = tuple(
        float(c) / m if m > 0 else 0.0
        for c, m in zip((cella.x, cella.y, cella.z), mxyz, strict=True)
    )
    origin = (float(header.origin.x), float(header.origin.y), float(header.origin.z))
    info = MrcHeaderInfo(
        shape=shape,
        mode=mode,
        voxel_size_angstrom=(voxel[0], voxel[1], voxel[2]),
        origin_angstrom=origin,
        is_stack=is_stack,
    )
    return _Layout(info=info, dtype=dtype, offset=offset, nzyx=(nz, ny, nx))


def _fix_mrc() -> str:
    return "check that this is an MRC file and that it was copied completely"


def _memmap(path: PathLike, layout: _Layout) -> np.memmap[Any, Any]:
    return np.memmap(path, dtype=layout.dtype, mode="r", offset=layout.offset, shape=layout.nzyx)


def read_mrc_header(path: PathLike, *, permissive: bool = True) -> MrcHeaderInfo:
    """Read an MRC header without reading the data.

    Parameters
    ----------
    path : path-like
        MRC / MRCS / MAP file.
    permissive : bool, optional
        If False, header oddities that ``mrcfile`` flags (missing ``MAP`` id, unknown
        machine stamp) raise :class:`InputFileError`. Default True: headers are only read.

    Returns
    -------
    MrcHeaderInfo
        Shape, mode, voxel size (Å), origin (Å) and stack flag.

    Raises
    ------
    InputFileError
        Missing, unreadable or truncated file (the data block is shorter than the header
        announces), or unsupported mode.

    """
    return _read_layout(path, permissive=permissive).info


def read_mrc(path: PathLike, *, permissive: bool = False) -> tuple[np.ndarray, MrcHeaderInfo]:
    """Read a whole MRC file into memory as float32.

    Parameters
    ----------
    path : path-like
        MRC / MRCS / MAP file of mode 0 (int8), 1 (int16), 2 (float32), 6 (uint16) or
        12 (float16).
    permissive : bool, optional
        Accept headers that ``mrcfile`` considers invalid (no ``MAP`` id, bad machine
        stamp). The file size is checked either way.

    Returns
    -------
    data : np.ndarray
        float32, ``(h, w)`` image, ``(n, h, w)`` stack or ``(d, h, w)`` volume.
    info : MrcHeaderInfo
        The header summary (voxel size and origin in Å).

    Raises
    ------
    InputFileError
        Missing, truncated (message gives expected and actual byte sizes) or invalid file.

    """
    layout = _read_layout(path, permissive=permissive)
    mm = _memmap(path, layout)
    data = np.array(mm, dtype=np.float32).reshape(layout.info.shape)
    del mm
    return data, layout.info


def _as_xyz(value: float | Sequence[float], name: str) -> tuple[float, float, float]:
    if isinstance(value, int | float | np.floating | np.integer):
        v = float(value)
        return (v, v, v)
    vals = tuple(float(x) for x in value)
    if len(vals) != 3:
        raise ValueError(f"{name} must be a number or an (x, y, z) triple, got {value!r}")
    return (vals[0], vals[1], vals[2])


def _write_array(
    path: PathLike,
    data: np.ndarray,
    *,
    voxel_size_angstrom: float | Sequence[float],
    origin_angstrom: float | Sequence[float] | None,
    is_stack: bool,
) -> None:
    """Write ``data`` with its dtype kept (must be an MRC dtype), atomically."""
    voxel = _as_xyz(voxel_size_angstrom, "voxel_size_angstrom")
    if min(voxel) < 0:
        raise ValueError(f"voxel_size_angstrom must be >= 0, got {voxel}")
    origin = _as_xyz(origin_angstrom, "origin_angstrom") if origin_angstrom is not None else None
    if data.ndim not in (2, 3):
        raise ValueError(f"MRC data must be 2D (h, w) or 3D (n|d, h, w), got shape {data.shape}")
    if is_stack and data.ndim == 2:
        data = data[None]
    with atomic_output(path) as tmp, warnings.catch_warnings():
        # mrcfile warns about NaN / inf while computing header statistics; the data are
        # written as given, the caller is responsible for their values.
        warnings.simplefilter("ignore", RuntimeWarning)
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(data))
            if data.ndim == 3:
                if is_stack:
                    mrc.set_image_stack()
                else:
                    mrc.set_volume()
            mrc.voxel_size = voxel
            if origin is not None:
                mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = origin
            mrc.update_header_stats()
            mrc.add_label("cryospa")


def write_mrc(
    path: PathLike,
    data: np.ndarray,
    *,
    voxel_size_angstrom: float | Sequence[float],
    origin_angstrom: float | Sequence[float] | None = None,
    float16: bool = False,
    is_stack: bool | None = None,
) -> None:
    """Write an image, stack or volume as float32 (mode 2) or float16 (mode 12), atomically.

    Parameters
    ----------
    path : path-like
        Output file; written to a temporary name in the same folder, then renamed.
    data : np.ndarray
        ``(h, w)`` image, ``(n, h, w)`` stack or ``(d, h, w)`` volume; cast to float32.
    voxel_size_angstrom : float or (x, y, z)
        Pixel / voxel size in Å, stored as ``cella = voxel_size * mxyz``.
    origin_angstrom : float or (x, y, z), optional
        Header origin in Å (default 0).
    float16 : bool, optional
        Write mode 12 (half the size; RELION >= 4 reads it, RELION 3.1 does not).
    is_stack : bool, optional
        Write an image stack (``ispg = 0``, ``mz = 1``). Default: True for ``.mrcs`` files.
        A 2D image written as a stack becomes a stack of one image.

    """
    stack = Path(path).suffix.lower() == ".mrcs" if is_stack is None else bool(is_stack)
    arr = np.asarray(data, dtype=np.float16 if float16 else np.float32)
    _write_array(
        path,
        arr,
        voxel_size_angstrom=voxel_size_angstrom,
        origin_angstrom=origin_angstrom,
        is_stack=stack,
    )


class StackWriter:
    """Write an MRC image stack piece by piece, never holding it whole in memory.

    The file is created at a temporary name next to ``path`` as a memory map of its final
    size; :meth:`write` fills images; leaving the ``with`` block normally computes the header
    statistics (one pass over the memory map) and renames the file into place. On an error
    the temporary file is removed, so a killed or failed writer never leaves a partial stack.

    Parameters
    ----------
    path : path-like
        Output stack (``.mrcs``).
    n_images : int
        Number of images.
    image_shape : (h, w)
        Image size in pixels.
    voxel_size_angstrom : float
        Pixel size in Å.
    float16 : bool, optional
        Mode 12 instead of float32.

    Notes
    -----
    Write 1000 images of 64 x 64 px in batches of 100::

        with StackWriter("out.mrcs", 1000, (64, 64), voxel_size_angstrom=2.0) as w:
            for start in range(0, 1000, 100):
                w.write(start, batch_of_100_images)
    """

    def __init__(
        self,
        path: PathLike,
        n_images: int,
        image_shape: tuple[int, int],
        *,
        voxel_size_angstrom: float,
        float16: bool = False,
    ) -> None:
        if n_images < 1 or len(image_shape) != 2 or min(image_shape) < 1:
            raise ValueError(
                f"need n_images >= 1 and a 2D image shape, got {n_images}, {image_shape}"
            )
        self.path = Path(path)
        self.n_images = int(n_images)
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.voxel_size_angstrom = float(voxel_size_angstrom)
        self._mode = 12 if float16 else 2
        self._context = atomic_output(self.path)
        self._mrc: Any = None

    def __enter__(self) -> StackWriter:
        tmp = self._context.__enter__()
        shape = (self.n_images, *self.image_shape)
        self._mrc = mrcfile.new_mmap(tmp, shape=shape, mrc_mode=self._mode, overwrite=True)
        return self

    def write(self, start: int, images: np.ndarray) -> None:
        """Store ``(k, h, w)`` (or one ``(h, w)``) images at indices ``start .. start + k - 1``."""
        if self._mrc is None:
            raise RuntimeError("StackWriter.write called outside its `with` block")
        arr = np.asarray(images)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.shape[1:] != self.image_shape or start < 0 or start + arr.shape[0] > self.n_images:
            raise ValueError(
                f"cannot write images of shape {arr.shape} at {start} into a stack of "
                f"{self.n_images} x {self.image_shape}"
            )
        self._mrc.data[start : start + arr.shape[0]] = arr

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        mrc, self._mrc = self._mrc, None
        try:
            if exc_type is None and mrc is not None:
                mrc.set_image_stack()
                mrc.voxel_size = self.voxel_size_angstrom
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mrc.update_header_stats()
                mrc.add_label("cryospa")
        finally:
            if mrc is not None:
                mrc.close()
            self._context.__exit__(exc_type, exc, tb)


IndexLike = int | np.integer | slice | Sequence[int] | np.ndarray


class ImageStack:
    """Lazy, memory-mapped access to the images of an MRC / MRCS file.

    Only the images asked for are read. A 2D file is a stack of one image; a 3D file is
    read as ``nz`` images whatever its header says (e.g. a particle stack named ``.mrc``).

    Parameters
    ----------
    path : path-like
        MRC / MRCS file.
    permissive : bool, optional
        Accept headers that ``mrcfile`` calls invalid (default True, as RELION does:
        many particle stacks have no ``MAP`` id). The file size is always checked.

    Examples
    --------
    >>> with ImageStack("Extract/job003/a.mrcs") as stack:  # doctest: +SKIP
    ...     img = stack[5]            # (h, w) float32
    ...     some = stack[[0, 7, 3]]   # (3, h, w)

    """

    def __init__(self, path: PathLike, *, permissive: bool = True) -> None:
        self.path = Path(path)
        self._layout = _read_layout(self.path, permissive=permissive)
        self._data: np.memmap[Any, Any] | None = _memmap(self.path, self._layout)

    @property
    def header(self) -> MrcHeaderInfo:
        """The file's header summary."""
        return self._layout.info

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n, h, w)``."""
        return self._layout.nzyx

    @property
    def image_size(self) -> int:
        """Box size in pixels (``w``; particle images are square)."""
        return self._layout.nzyx[2]

    @property
    def pixel_size_angstrom(self) -> float:
        """Pixel size from the header (x), in Å; 0 if the header has none."""
        return self._layout.info.voxel_size_angstrom[0]

    def __len__(self) -> int:
        return self._layout.nzyx[0]

    def _mm(self) -> np.memmap[Any, Any]:
        if self._data is None:
            raise ValueError(f"{self.path}: image stack is closed")
        return self._data

    def __getitem__(self, index: IndexLike) -> np.ndarray:
        """Return image(s) as float32: ``(h, w)`` for an int, ``(k, h, w)`` otherwise."""
        mm = self._mm()
        n = len(self)
        if isinstance(index, int | np.integer):
            i = int(index)
            if not -n <= i < n:
                raise IndexError(f"{self.path}: image index {i} out of range for {n} images")
            return np.array(mm[i], dtype=np.float32)
        if isinstance(index, slice):
            return np.array(mm[index], dtype=np.float32)
        idx = np.asarray(index)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise TypeError(
                f"image indices must be an int, a slice or a 1D int sequence, got {index!r}"
            )
        idx = idx.astype(np.int64)
        bad = idx[(idx < -n) | (idx >= n)]
        if bad.size:
            raise IndexError(
                f"{self.path}: image indices {bad.tolist()} out of range for {n} images"
            )
        return np.array(mm[idx], dtype=np.float32).reshape(idx.size, *self.shape[1:])

    def close(self) -> None:
        """Release the memory map."""
        self._data = None

    def __enter__(self) -> ImageStack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ImageStack({str(self.path)!r}, shape={self.shape})"


def parse_image_name(name: str) -> tuple[int | None, str]:
    """Split a RELION image name into a 0-based index and a path.

    Parameters
    ----------
    name : str
        ``"000012@Extract/job003/a.mrcs"`` (RELION counts from 1) or a plain path.

    Returns
    -------
    index : int or None
        0-based image index (11 above); None if the name has no ``@`` (whole file).
    path : str
        The stack path as written (relative paths are relative to the project folder).

    Raises
    ------
    ValueError
        If the part before ``@`` is not a positive integer.

    """
    text = str(name).strip()
    if "@" not in text:
        return None, text
    number, path = text.split("@", 1)
    try:
        one_based = int(number)
    except ValueError:
        raise ValueError(f"image name {name!r}: {number!r} before '@' is not an integer") from None
    if one_based < 1:
        raise ValueError(f"image name {name!r}: RELION image numbers start at 1")
    return one_based - 1, path


def format_image_name(index0: int, path: str | os.PathLike[str]) -> str:
    """Format a RELION image name from a 0-based index: ``(11, "a.mrcs") -> "000012@a.mrcs"``."""
    if index0 < 0:
        raise ValueError(f"image index must be >= 0, got {index0}")
    return f"{index0 + 1:06d}@{Path(path).as_posix()}"


def read_images(
    image_names: Iterable[str],
    *,
    root: PathLike = Path("."),
    star_path: PathLike | None = None,
) -> np.ndarray:
    """Read images named RELION-style (``"000012@stack.mrcs"``), opening each stack once.

    Parameters
    ----------
    image_names : iterable of str
        ``rlnImageName`` values. A name without ``@`` must be a single-image file.
    root : path-like, optional
        Folder that relative stack paths are relative to (RELION: the project folder).
    star_path : path-like, optional
        The STAR file the names come from, used in error messages only.

    Returns
    -------
    np.ndarray
        ``(n, h, w)`` float32, in the order of ``image_names``.

    Raises
    ------
    InputFileError
        A stack is missing or too short, or images have different sizes; the message names
        the stack and the (1-based) STAR row that referenced it.

    """
    names = [str(n) for n in image_names]
    base = Path(root)
    where = f" of {star_path}" if star_path is not None else ""
    groups: dict[str, list[tuple[int, int | None]]] = {}
    for row, name in enumerate(names):
        index, rel = parse_image_name(name)
        groups.setdefault(rel, []).append((row, index))
    out: np.ndarray | None = None
    for rel, members in groups.items():
        stack_path = Path(rel) if Path(rel).is_absolute() else base / rel
        first_row = members[0][0]
        if not stack_path.is_file():
            raise InputFileError(
                stack_path,
                f"image stack not found (referenced by rlnImageName {names[first_row]!r} "
                f"in row {first_row + 1}{where})",
                f"run from the project folder or pass root=; paths are resolved against {base}",
            )
        with ImageStack(stack_path) as stack:
            rows = np.array([r for r, _ in members], dtype=np.int64)
            idx = np.empty(len(members), dtype=np.int64)
            for k, (row, index) in enumerate(members):
                if index is None:
                    if len(stack) != 1:
                        raise InputFileError(
                            stack_path,
                            f"row {row + 1}{where} names the whole file but it holds "
                            f"{len(stack)} images",
                            "use 'NNNNNN@file' names to pick one image",
                        )
                    index = 0
                if index >= len(stack):
                    raise InputFileError(
                        stack_path,
                        f"row {row + 1}{where} asks for image {index + 1} but the stack has "
                        f"only {len(stack)} images",
                        "the stack is incomplete or the STAR file belongs to another stack",
                    )
                idx[k] = index
            if out is None:
                out = np.empty((len(names), *stack.shape[1:]), dtype=np.float32)
            elif out.shape[1:] != stack.shape[1:]:
                raise InputFileError(
                    stack_path,
                    f"images are {stack.shape[1:]} but earlier stacks{where} hold "
                    f"{out.shape[1:]} images",
                    "all particles of one table must have the same box size",
                )
            order = np.argsort(idx, kind="stable")  # read in file order
            out[rows[order]] = stack[idx[order]]
    if out is None:
        return np.empty((0, 0, 0), dtype=np.float32)
    return out
