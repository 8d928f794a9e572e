"""STAR files (read via ``starfile``) and RELION 3.1+ metadata tables.

Two levels:

* :func:`read_star` / :func:`write_star`: any STAR file as ``{block name: DataFrame}``
  (block name without ``data_``; ``data_`` alone gives ``""``). Key-value blocks (e.g.
  ``data_general``) come back as one-row DataFrames flagged ``df.attrs["star_pairs"] = True``
  and are written back as key-value blocks.
* :class:`RelionTable`: a RELION particles / micrographs / movies table with its
  ``data_optics`` table. RELION 3.0 and older files (no optics table, ``rlnOriginX`` in
  pixels, ``rlnMagnification`` + ``rlnDetectorPixelSize``) are upgraded on reading.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import starfile

from cryospa.errors import InputFileError
from cryospa.io._files import require_file, write_text_atomic
from cryospa.io.mrc import parse_image_name, read_mrc_header

__all__ = [
    "OPTICS_COLUMNS",
    "RelionTable",
    "joined",
    "pixel_size_angstrom",
    "read_relion_star",
    "read_star",
    "require_columns",
    "split_optics",
    "write_relion_star",
    "write_star",
]

PathLike = str | os.PathLike[str]
Kind = Literal["particles", "micrographs", "movies"]
KINDS: tuple[Kind, ...] = ("particles", "micrographs", "movies")

#: Columns that belong to the optics table in RELION 3.1+.
OPTICS_COLUMNS: frozenset[str] = frozenset(
    {
        "rlnOpticsGroupName",
        "rlnOpticsGroup",
        "rlnMtfFileName",
        "rlnMicrographOriginalPixelSize",
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
        "rlnImagePixelSize",
        "rlnImageSize",
        "rlnImageDimensionality",
        "rlnMicrographPixelSize",
        "rlnMicrographBinning",
        "rlnCtfDataAreCtfPremultiplied",
        "rlnBeamTiltX",
        "rlnBeamTiltY",
        "rlnOddZernike",
        "rlnEvenZernike",
        "rlnMagMat00",
        "rlnMagMat01",
        "rlnMagMat10",
        "rlnMagMat11",
    }
)

# Columns parsed as text even when they look like numbers (file names, group names).
_STRING_COLUMNS = [
    "rlnImageName",
    "rlnImageOriginalName",
    "rlnMicrographName",
    "rlnMicrographMovieName",
    "rlnMicrographMetadata",
    "rlnOpticsGroupName",
    "rlnMtfFileName",
    "rlnCtfImage",
    "rlnReferenceImage",
    "rlnGroupName",
    "rlnOddZernike",
    "rlnEvenZernike",
]

_PIXEL_SIZE_COLUMN: dict[str, str] = {
    "particles": "rlnImagePixelSize",
    "micrographs": "rlnMicrographPixelSize",
    "movies": "rlnMicrographOriginalPixelSize",
}

# Column that identifies each kind of table in files without named blocks.
_KEY_COLUMN: dict[str, str] = {
    "particles": "rlnImageName",
    "micrographs": "rlnMicrographName",
    "movies": "rlnMicrographMovieName",
}

STAR_VERSION_LINE = "# version 30001"
_NEEDS_QUOTES = re.compile(r'[\s"]')


# --------------------------------------------------------------------------------------
# Generic STAR
# --------------------------------------------------------------------------------------


def read_star(path: PathLike) -> dict[str, pd.DataFrame]:
    """Read every data block of a STAR file.

    Parameters
    ----------
    path : path-like
        STAR file (RELION 1.x to 5 forms).

    Returns
    -------
    dict of str to pd.DataFrame
        Block name (without ``data_``) to table, in file order. Key-value blocks become
        one-row DataFrames with ``attrs["star_pairs"] = True``.

    Raises
    ------
    InputFileError
        Missing or unparsable file, or a file with no ``data_`` block.

    """
    p = require_file(path, what="STAR file")
    try:
        raw = starfile.read(p, always_dict=True, parse_as_string=_STRING_COLUMNS)
    except Exception as err:  # starfile / pandas raise many types on malformed text
        raise InputFileError(
            p, f"cannot parse STAR file: {type(err).__name__}: {err}", "check the file format"
        ) from err
    if not raw:
        raise InputFileError(p, "no data_ block found", "is this a STAR file?")
    blocks: dict[str, pd.DataFrame] = {}
    for name, block in raw.items():
        if isinstance(block, pd.DataFrame):
            df = block.reset_index(drop=True)
        else:
            df = pd.DataFrame({k: [v] for k, v in dict(block).items()})
            df.attrs["star_pairs"] = True
        blocks[str(name)] = df
    return blocks


def _format_column(values: pd.Series) -> list[str]:
    """Format one column as STAR tokens, keeping full precision for floats."""
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return ["1" if bool(v) else "0" for v in values.tolist()]
    if pd.api.types.is_integer_dtype(dtype):
        return [str(int(v)) for v in values.tolist()]
    if pd.api.types.is_float_dtype(dtype):
        if dtype == np.float32:
            # shortest repr that round-trips the float32 value
            return [str(v) for v in values.to_numpy()]
        return [repr(v) for v in values.astype(np.float64).tolist()]
    search = _NEEDS_QUOTES.search
    return [
        v if type(v) is str and v and search(v) is None else _format_token(v)
        for v in values.tolist()
    ]


def _format_token(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return '""'
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, float | np.floating):
        return repr(float(value))
    text = str(value)
    if text == "" or _NEEDS_QUOTES.search(text):
        if '"' in text:
            raise ValueError(f"STAR value {text!r} contains both spaces and double quotes")
        return f'"{text}"'
    return text


def _format_loop(name: str, df: pd.DataFrame) -> list[str]:
    lines = [STAR_VERSION_LINE, "", f"data_{name}", "", "loop_"]
    lines += [f"_{col} #{i}" for i, col in enumerate(df.columns, start=1)]
    if len(df.columns) and len(df):
        cols = []
        for col in df.columns:
            tokens = _format_column(df[col])
            width = max(len(t) for t in tokens)
            cols.append([t.rjust(width) for t in tokens])
        lines += [" ".join(row) for row in zip(*cols, strict=True)]
    lines.append("")
    return lines


def _format_pairs(name: str, pairs: Mapping[str, Any]) -> list[str]:
    lines = [STAR_VERSION_LINE, "", f"data_{name}", ""]
    width = max((len(k) for k in pairs), default=0) + 1
    for key, value in pairs.items():
        if isinstance(value, bool | np.bool_):
            token = "1" if value else "0"
        elif isinstance(value, int | np.integer):
            token = str(int(value))
        else:
            token = _format_token(value)
        lines.append(f"_{key.ljust(width)} {token}")
    lines.append("")
    return lines


def write_star(path: PathLike, blocks: Mapping[str, pd.DataFrame | Mapping[str, Any]]) -> None:
    """Write STAR data blocks, RELION-readable, atomically.

    Parameters
    ----------
    path : path-like
        Output file (written to a temporary name, then renamed).
    blocks : mapping of str to DataFrame or mapping
        Block name (without ``data_``) to a table (written as a ``loop_``) or to a
        ``{label: value}`` mapping (written as key-value pairs). A one-row DataFrame with
        ``attrs["star_pairs"]`` set (as :func:`read_star` returns them) is written as pairs.
        Floats are written with the shortest text that reads back to the same value.
        Column names are written as given (``rlnDefocusU`` -> ``_rlnDefocusU``).

    """
    lines: list[str] = [""]
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            if block.attrs.get("star_pairs") and len(block) == 1:
                lines += _format_pairs(name, {str(k): v for k, v in block.iloc[0].items()})
            else:
                lines += _format_loop(name, block)
        elif isinstance(block, Mapping):
            lines += _format_pairs(name, block)
        else:
            raise TypeError(f"block {name!r}: expected a DataFrame or a mapping, got {type(block)}")
        lines.append("")
    write_text_atomic(path, "\n".join(lines) + "\n")


def require_columns(
    df: pd.DataFrame, columns: Iterable[str], *, path: PathLike | None, table: str
) -> None:
    """Raise :class:`InputFileError` if ``df`` lacks any of ``columns``.

    Parameters
    ----------
    df : pd.DataFrame
        The table.
    columns : iterable of str
        Required column names (``rlnDefocusU`` ...).
    path : path-like or None
        File the table came from (named in the message).
    table : str
        Table (block) name, named in the message.

    """
    missing = [c for c in columns if c not in df.columns]
    if missing:
        names = ", ".join(missing)
        plural = "columns" if len(missing) > 1 else "column"
        raise InputFileError(
            path if path is not None else "<table in memory>",
            f"table '{table}' has no {plural} {names}",
            f"use a STAR file from the job that produces {names}, or add the {plural}",
        )


# --------------------------------------------------------------------------------------
# RELION tables
# --------------------------------------------------------------------------------------


@dataclass
class RelionTable:
    """A RELION 3.1+ metadata table with its optics groups.

    Attributes
    ----------
    kind : {"particles", "micrographs", "movies"}
        Which table this is (the name of its data block).
    data : pd.DataFrame
        One row per particle / micrograph / movie; ``rlnOpticsGroup`` links to ``optics``.
    optics : pd.DataFrame
        One row per optics group (``rlnOpticsGroup``, ``rlnVoltage``, pixel sizes ...).
    other_blocks : dict
        Any other blocks of the file, kept as read.
    path : Path or None
        The file the table was read from (for error messages).

    """

    kind: Kind
    data: pd.DataFrame
    optics: pd.DataFrame
    other_blocks: dict[str, pd.DataFrame] = field(default_factory=dict)
    path: Path | None = None


def _guess_kind(df: pd.DataFrame) -> Kind | None:
    for kind in KINDS:
        if _KEY_COLUMN[kind] in df.columns:
            return kind
    return None


def read_relion_star(path: PathLike, kind: Kind | None = None) -> RelionTable:
    """Read a RELION particles / micrographs / movies STAR file.

    Parameters
    ----------
    path : path-like
        STAR file. RELION 3.1+ files have ``data_optics`` plus ``data_particles`` (or
        ``data_micrographs`` / ``data_movies``), in any order.
    kind : {"particles", "micrographs", "movies"}, optional
        Table to read; by default detected from the block names, or for RELION 3.0 files
        from the columns (``rlnImageName`` -> particles, ``rlnMicrographName`` ->
        micrographs, ``rlnMicrographMovieName`` -> movies).

    Returns
    -------
    RelionTable
        RELION 3.0 and older files are upgraded: optics groups are built from the per-row
        optical columns (one group per distinct voltage / Cs / amplitude contrast / pixel
        size / beam tilt), pixel size = ``rlnDetectorPixelSize * 1e4 / rlnMagnification``
        (Å), ``rlnOriginX/Y/Z`` (pixels) become ``rlnOriginX/Y/ZAngst`` (Å), and
        ``rlnOpticsGroup`` is added. Other columns are kept untouched. For particles, the
        image size is read from the first stack's header when the stack can be found
        (relative to the STAR file's folder, then to the working directory); otherwise
        ``rlnImageSize`` is left out.

    Raises
    ------
    InputFileError
        No table of the requested kind, optics groups referenced but not defined, or an
        old file with pixel-based origins but no pixel size.

    """
    p = Path(path)
    blocks = read_star(p)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    wanted: list[Kind] = [kind] if kind is not None else list(KINDS)
    for k in wanted:
        if k in blocks:
            data = blocks[k]
            optics = blocks.get("optics")
            others = {n: b for n, b in blocks.items() if n not in (k, "optics")}
            if optics is None:
                table = _upgrade(p, k, data, others)
            else:
                table = RelionTable(k, data, optics, others, p)
                _check_optics(table)
            return table
    # RELION <= 3.0: one unnamed (or differently named) block, no optics table.
    for name, block in blocks.items():
        if name == "optics" or block.attrs.get("star_pairs"):
            continue
        found = _guess_kind(block)
        if found is not None and (kind is None or found == kind):
            others = {n: b for n, b in blocks.items() if n != name}
            return _upgrade(p, found, block, others)
    what = kind or "particles, micrographs or movies"
    raise InputFileError(
        p,
        f"no {what} table found (blocks: {', '.join(repr(n) for n in blocks)})",
        "give a RELION particles / micrographs / movies STAR file",
    )


def _check_optics(table: RelionTable) -> None:
    where = table.path
    require_columns(table.optics, ["rlnOpticsGroup"], path=where, table="optics")
    require_columns(table.data, ["rlnOpticsGroup"], path=where, table=table.kind)
    known = set(table.optics["rlnOpticsGroup"].tolist())
    used = set(table.data["rlnOpticsGroup"].tolist())
    unknown = sorted(used - known)
    if unknown:
        raise InputFileError(
            where if where is not None else "<table in memory>",
            f"table '{table.kind}' refers to optics groups {unknown} that are not in the "
            "optics table",
            "add them to data_optics or fix rlnOpticsGroup",
        )


def _image_size_from_stack(star_path: Path, data: pd.DataFrame) -> int | None:
    if "rlnImageName" not in data.columns or len(data) == 0:
        return None
    _, rel = parse_image_name(str(data["rlnImageName"].iloc[0]))
    for base in (star_path.parent, Path(".")):
        candidate = Path(rel) if Path(rel).is_absolute() else base / rel
        if candidate.is_file():
            try:
                return int(read_mrc_header(candidate).shape[-1])
            except InputFileError:
                return None
    return None


def _upgrade(
    path: Path, kind: Kind, data: pd.DataFrame, others: dict[str, pd.DataFrame]
) -> RelionTable:
    """Convert a RELION <= 3.0 table (optics per row) into the 3.1 form."""
    df = data.copy()
    angpix: pd.Series | None = None
    if {"rlnMagnification", "rlnDetectorPixelSize"} <= set(df.columns):
        mag = pd.to_numeric(df["rlnMagnification"], errors="coerce")
        dps = pd.to_numeric(df["rlnDetectorPixelSize"], errors="coerce")
        if (mag <= 0).any() or mag.isna().any():
            raise InputFileError(
                path, "rlnMagnification is missing or <= 0 in some rows", "fix the magnification"
            )
        angpix = dps * 1e4 / mag
        df = df.drop(columns=["rlnMagnification", "rlnDetectorPixelSize"])
    elif "rlnImagePixelSize" in df.columns:
        angpix = pd.to_numeric(df["rlnImagePixelSize"], errors="coerce")
        df = df.drop(columns=["rlnImagePixelSize"])
    # Origins in pixels -> Å.
    for old, new in [
        ("rlnOriginX", "rlnOriginXAngst"),
        ("rlnOriginY", "rlnOriginYAngst"),
        ("rlnOriginZ", "rlnOriginZAngst"),
        ("rlnOriginXPrior", "rlnOriginXPriorAngst"),
        ("rlnOriginYPrior", "rlnOriginYPriorAngst"),
        ("rlnOriginZPrior", "rlnOriginZPriorAngst"),
    ]:
        if old in df.columns:
            if angpix is None:
                raise InputFileError(
                    path,
                    f"RELION 3.0 table has {old} (pixels) but no pixel size "
                    "(rlnMagnification + rlnDetectorPixelSize)",
                    "add those columns or convert the origins to Å (rlnOriginXAngst) first",
                )
            df[old] = pd.to_numeric(df[old]) * angpix
            df = df.rename(columns={old: new})
    # Per-row optics -> columns that will move into the optics table.
    if angpix is not None:
        if kind == "particles":
            df["rlnImagePixelSize"] = angpix
            df["rlnMicrographOriginalPixelSize"] = angpix
        elif kind == "micrographs":
            df["rlnMicrographPixelSize"] = angpix
            df["rlnMicrographOriginalPixelSize"] = angpix
        else:
            df["rlnMicrographOriginalPixelSize"] = angpix
    if kind == "particles":
        size = _image_size_from_stack(path, df)
        if size is not None:
            df["rlnImageSize"] = size
            df["rlnImageDimensionality"] = 2
    df = df.drop(columns=[c for c in ("rlnOpticsGroup", "rlnOpticsGroupName") if c in df.columns])
    table = split_optics(df, kind)
    table.other_blocks = others
    table.path = path
    return table


def joined(table: RelionTable) -> pd.DataFrame:
    """Each data row with its optics-group columns merged in.

    Parameters
    ----------
    table : RelionTable
        The table.

    Returns
    -------
    pd.DataFrame
        ``len(table.data)`` rows in the original order; the data columns first, then the
        optics columns the data do not already have (a data column wins over an optics
        column of the same name).

    """
    _check_optics(table)
    extra = [c for c in table.optics.columns if c not in table.data.columns]
    optics = table.optics[["rlnOpticsGroup", *extra]]
    out = table.data.merge(optics, on="rlnOpticsGroup", how="left", validate="many_to_one")
    out.index = table.data.index
    return out


def split_optics(df: pd.DataFrame, kind: Kind) -> RelionTable:
    """Inverse of :func:`joined`: move optics columns into a deduplicated optics table.

    Parameters
    ----------
    df : pd.DataFrame
        Rows with optics columns (see :data:`OPTICS_COLUMNS`) repeated per row.
    kind : {"particles", "micrographs", "movies"}
        Table kind.

    Returns
    -------
    RelionTable
        ``data`` keeps the non-optics columns (and ``rlnOpticsGroup``) in their order;
        ``optics`` has one row per group, sorted by group number. Without an
        ``rlnOpticsGroup`` column, one group per distinct combination of optics values is
        made (numbered 1, 2, ... in order of first appearance, named ``opticsGroupN``).

    Raises
    ------
    ValueError
        Rows of one optics group disagree on an optics value.

    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    optics_cols = [c for c in df.columns if c in OPTICS_COLUMNS]
    data = df.copy()
    if "rlnOpticsGroup" not in data.columns:
        value_cols = [c for c in optics_cols if c != "rlnOpticsGroupName"]
        if value_cols:
            keys = data[value_cols].astype(str).agg("\x1f".join, axis=1)
            codes, _ = pd.factorize(keys)
            group = pd.Series(codes + 1, index=data.index, dtype="int64")
        else:
            group = pd.Series(1, index=data.index, dtype="int64")
        data.insert(len(data.columns), "rlnOpticsGroup", group)
        if "rlnOpticsGroupName" not in data.columns:
            data["rlnOpticsGroupName"] = "opticsGroup" + group.astype(str)
        optics_cols = [c for c in data.columns if c in OPTICS_COLUMNS]
    first = ["rlnOpticsGroup"] + (
        ["rlnOpticsGroupName"] if "rlnOpticsGroupName" in optics_cols else []
    )
    ordered = first + [c for c in optics_cols if c not in first]
    per_row = data[ordered]
    optics = per_row.drop_duplicates().sort_values("rlnOpticsGroup", kind="stable")
    if optics["rlnOpticsGroup"].duplicated().any():
        bad = optics.loc[optics["rlnOpticsGroup"].duplicated(keep=False), "rlnOpticsGroup"]
        raise ValueError(
            f"rows of optics group(s) {sorted(set(bad.tolist()))} have different optics "
            "values; give them different rlnOpticsGroup numbers"
        )
    optics = optics.reset_index(drop=True)
    data = data.drop(columns=[c for c in ordered if c != "rlnOpticsGroup"])
    return RelionTable(kind=kind, data=data, optics=optics)


def write_relion_star(path: PathLike, table: RelionTable, *, data_first: bool = False) -> None:
    """Write a RELION 3.1 STAR file: ``data_optics``, the data block, then other blocks.

    Parameters
    ----------
    path : path-like
        Output file (atomic write).
    table : RelionTable
        The table; every ``rlnOpticsGroup`` of the data must be in the optics table.
    data_first : bool
        Write the data block before ``data_optics``. RELION finds both blocks by name, but a
        few RELION 3.1 programs read only the first block of a file: ``relion_autopick --ref``
        needs ``rlnImageName`` / ``rlnReferenceImage`` there (class-average sets).

    """
    _check_optics(table)
    blocks: dict[str, pd.DataFrame] = (
        {table.kind: table.data, "optics": table.optics} if data_first
        else {"optics": table.optics, table.kind: table.data}
    )
    for name, block in table.other_blocks.items():
        if name not in blocks:
            blocks[name] = block
    write_star(path, blocks)


def pixel_size_angstrom(table: RelionTable, optics_group: int = 1) -> float:
    """Pixel size of one optics group, in Å.

    Uses ``rlnImagePixelSize`` for particles, ``rlnMicrographPixelSize`` for micrographs
    and ``rlnMicrographOriginalPixelSize`` for movies.

    Raises
    ------
    InputFileError
        The column or the group is missing, or the value is not > 0.

    """
    column = _PIXEL_SIZE_COLUMN[table.kind]
    where = table.path if table.path is not None else "<table in memory>"
    require_columns(table.optics, [column, "rlnOpticsGroup"], path=table.path, table="optics")
    rows = table.optics.loc[table.optics["rlnOpticsGroup"] == optics_group, column]
    if rows.empty:
        raise InputFileError(
            where,
            f"optics group {optics_group} is not in the optics table",
            f"groups present: {sorted(table.optics['rlnOpticsGroup'].tolist())}",
        )
    value = float(rows.iloc[0])
    if not value > 0:
        raise InputFileError(
            where,
            f"pixel size {value} Å ({column}) in optics group {optics_group}",
            "set the pixel size (e.g. --angpix) when importing",
        )
    return value
