"""Particle coordinate files: RELION coordinate STAR files and EMAN ``.box`` files.

Coordinates are particle centres in micrograph pixels, ``rlnCoordinateX`` = column,
``rlnCoordinateY`` = row, as in RELION. An EMAN box line is ``x y w h`` with ``(x, y)`` the
first (lower-left) corner of the box, so the centre is ``(x + w/2, y + h/2)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cryospa.errors import InputFileError
from cryospa.io._files import require_file, write_text_atomic
from cryospa.io.star import read_star, require_columns, write_star

__all__ = ["read_coordinates", "write_box", "write_coordinates_star"]

PathLike = str | os.PathLike[str]
_XY = ["rlnCoordinateX", "rlnCoordinateY"]


def read_coordinates(path: PathLike) -> pd.DataFrame:
    """Read particle coordinates from a RELION ``.star`` or an EMAN ``.box`` file.

    Parameters
    ----------
    path : path-like
        ``.star``: the block holding ``rlnCoordinateX/Y``; other columns
        (``rlnAutopickFigureOfMerit``, ``rlnClassNumber``, ``rlnAnglePsi`` ...) are kept.
        ``.box``: whitespace-separated ``x y w h`` lines (extra numbers ignored).

    Returns
    -------
    pd.DataFrame
        At least ``rlnCoordinateX``, ``rlnCoordinateY`` (float, pixel centres); from a box
        file also ``box_size`` (the box width in pixels).

    """
    p = require_file(path, what="coordinate file")
    if p.suffix.lower() == ".box":
        return _read_box(p)
    blocks = read_star(p)
    for block in blocks.values():
        if set(_XY) <= set(block.columns):
            df = block.copy()
            df.attrs.pop("star_pairs", None)
            for col in _XY:
                df[col] = pd.to_numeric(df[col]).astype(np.float64)
            return df.reset_index(drop=True)
    names = ", ".join(f"data_{n}" for n in blocks)
    raise InputFileError(
        p,
        f"no table with columns rlnCoordinateX and rlnCoordinateY (blocks: {names})",
        "give a RELION coordinate STAR file or an EMAN .box file",
    )


def _read_box(path: Path) -> pd.DataFrame:
    rows: list[list[float]] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split()
            try:
                values = [float(t) for t in parts[:4]]
            except ValueError:
                values = []
            if len(values) < 4:
                raise InputFileError(
                    path,
                    f"line {lineno} is not 'x y w h': {text[:60]!r}",
                    "EMAN .box files have four numbers per line",
                )
            rows.append(values)
    arr = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return pd.DataFrame(
        {
            "rlnCoordinateX": arr[:, 0] + arr[:, 2] / 2,
            "rlnCoordinateY": arr[:, 1] + arr[:, 3] / 2,
            "box_size": arr[:, 2],
        }
    )


def write_coordinates_star(path: PathLike, df: pd.DataFrame) -> None:
    """Write a RELION coordinate STAR file (one ``data_`` block with a loop), atomically.

    Parameters
    ----------
    path : path-like
        Output ``.star`` (RELION names them ``<micrograph>_<suffix>.star``).
    df : pd.DataFrame
        Needs ``rlnCoordinateX``, ``rlnCoordinateY`` (pixel centres); other ``rln*``
        columns are written too, non-RELION columns (e.g. ``box_size``) are dropped.

    """
    require_columns(df, _XY, path=path, table="coordinates")
    cols = _XY + [c for c in df.columns if c.startswith("rln") and c not in _XY]
    write_star(path, {"": df[cols].reset_index(drop=True)})


def write_box(path: PathLike, df: pd.DataFrame, *, box_size: int) -> None:
    """Write an EMAN ``.box`` file (``x y w h`` per line, tab-separated), atomically.

    Parameters
    ----------
    path : path-like
        Output ``.box``.
    df : pd.DataFrame
        ``rlnCoordinateX``, ``rlnCoordinateY`` (pixel centres).
    box_size : int
        Box width and height in pixels; the corner is ``centre - box_size / 2``.

    """
    if box_size <= 0:
        raise ValueError(f"box_size must be > 0, got {box_size}")
    require_columns(df, _XY, path=path, table="coordinates")
    half = box_size / 2
    x = pd.to_numeric(df["rlnCoordinateX"]).to_numpy(np.float64) - half
    y = pd.to_numeric(df["rlnCoordinateY"]).to_numpy(np.float64) - half
    lines = [f"{_num(a)}\t{_num(b)}\t{box_size}\t{box_size}" for a, b in zip(x, y, strict=True)]
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def _num(value: float) -> str:
    """Shortest exact text for a coordinate (integers without a decimal point)."""
    return np.format_float_positional(value, trim="-")
