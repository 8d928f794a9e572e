"""Reading and writing the STAR file of a typed set (movies, micrographs, particles)."""

from __future__ import annotations

from pathlib import Path

from cryospa.errors import CryospaError
from cryospa.io.star import Kind, RelionTable, read_relion_star
from cryospa.project.nodes import NodeType
from cryospa.project.schema import ResolvedInput

__all__ = ["SET_TYPES", "name_column", "read_set"]

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
