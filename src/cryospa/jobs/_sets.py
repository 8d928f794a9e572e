"""Reading and writing the STAR file of a typed set (movies, micrographs, particles)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from cryospa.errors import CryospaError, InputFileError
from cryospa.io.star import Kind, RelionTable, read_relion_star
from cryospa.project.nodes import NodeType
from cryospa.project.schema import JobContext, ResolvedInput

__all__ = ["SET_TYPES", "item_info", "list_cached", "name_column", "read_input_set", "read_set"]

#: Node types that are RELION metadata tables, and their table kind.
SET_TYPES: dict[NodeType, Kind] = {
    NodeType.MOVIES: "movies",
    NodeType.MICROGRAPHS: "micrographs",
    NodeType.PARTICLES: "particles",
    NodeType.CLASS_AVERAGES: "particles",
}


def read_set(project_dir: Path, resolved: ResolvedInput) -> RelionTable:
    """The RELION table of a set input."""
    kind = SET_TYPES.get(resolved.node_type)
    if kind is None:
        raise CryospaError(f"{resolved.describe()} is not a STAR set of movies, micrographs or "
                           "particles")
    path = Path(resolved.path)
    return read_relion_star(path if path.is_absolute() else project_dir / path, kind)


def name_column(table: RelionTable) -> str:
    """The column naming the movie / micrograph of each row."""
    if table.kind == "movies":
        return "rlnMicrographMovieName"
    return "rlnMicrographName"


def read_input_set(ctx: JobContext, name: str, kind: Kind, fix: str) -> RelionTable | None:
    """The RELION table of the job's input ``name``; None while a streamed input has no file yet.

    ``fix`` says which jobs make a suitable input (for the error when the file is missing).
    """
    star = ctx.abs(ctx.input(name).path)
    if not star.is_file():
        if ctx.run.stream:
            return None
        raise InputFileError(star, f"{kind} STAR file not found", fix)
    return read_relion_star(star, kind)


_Info = TypeVar("_Info")
_ITEMS = "input_items"


def list_cached(ctx: JobContext, load: Callable[[JobContext], Mapping[str, Any]]) -> list[str]:
    """The keys of an input set for ``list_items``, the set kept for :func:`item_info`.

    ``load`` reads the set (again at every poll when streaming).
    """
    items = ctx.scratch[_ITEMS] = load(ctx)
    return list(items)


def item_info(
    ctx: JobContext, key: str, load: Callable[[JobContext], Mapping[str, _Info]]
) -> _Info:
    """What :func:`list_cached` loaded for ``key``.

    Loaded again if this process has not seen it (a worker process, or a new streamed item).
    """
    items = ctx.scratch.get(_ITEMS)
    if not items or key not in items:
        items = ctx.scratch[_ITEMS] = load(ctx)
    return items[key]
