"""Reading and writing the STAR file of a typed set (movies, micrographs, particles)."""

from __future__ import annotations

from pathlib import Path

from cryospa.errors import CryospaError, InputFileError
from cryospa.io.star import Kind, RelionTable, read_relion_star
from cryospa.project.nodes import NodeType
from cryospa.project.schema import JobContext, ResolvedInput

__all__ = ["SET_TYPES", "name_column", "read_input_set", "read_set"]

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
