"""Typed data nodes (what flows between jobs) and their RELION 3.1 pipeline codes.

A node is one file that stands for a set: ``movies.star`` is a MovieSet, ``run_data.star`` a
ParticleSet, ``run_class001.mrc`` a Volume. Jobs declare the node types they accept and
produce; the project checks them when an input is given, and ``default_pipeline.star`` lists
them with RELION 3.1's integer node types (``NODE_MOVIES`` = 0 ... ``NODE_POLISH_PARAMS`` = 15
in RELION 3.1 ``src/pipeline_jobs.h``).
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from cryospa.errors import InputFileError

__all__ = ["RELION_NODE_CODES", "NodeType", "detect_node_type"]


class NodeType(StrEnum):
    """The kinds of data a job reads or writes."""

    MOVIES = "MovieSet"
    MICROGRAPHS = "MicrographSet"
    COORDINATES = "CoordinateSet"
    PARTICLES = "ParticleSet"
    CLASS_AVERAGES = "ClassAverages"
    VOLUME = "Volume"
    MASK = "Mask"
    HALF_MAPS = "HalfMaps"
    POSTPROCESS = "PostProcess"
    FSC = "FSC"
    OPTIMISER = "Optimiser"
    LOGFILE = "LogFile"


#: RELION 3.1 ``NODE_*`` integer codes; node types absent here are not listed in the pipeline.
RELION_NODE_CODES: dict[NodeType, int] = {
    NodeType.MOVIES: 0,  # NODE_MOVIES
    NodeType.MICROGRAPHS: 1,  # NODE_MICS
    NodeType.COORDINATES: 2,  # NODE_MIC_COORDS
    NodeType.PARTICLES: 3,  # NODE_PART_DATA
    NodeType.CLASS_AVERAGES: 5,  # NODE_REFS (2D references, class averages)
    NodeType.VOLUME: 6,  # NODE_3DREF
    NodeType.MASK: 7,  # NODE_MASK
    NodeType.OPTIMISER: 9,  # NODE_OPTIMISER
    NodeType.HALF_MAPS: 10,  # NODE_HALFMAP
    NodeType.LOGFILE: 13,  # NODE_PDF_LOGFILE
    NodeType.POSTPROCESS: 14,  # NODE_POST
}

_MAP_SUFFIXES = {".mrc", ".map", ".mrcs"}


def detect_node_type(
    path: str | os.PathLike[str], accepted: tuple[NodeType, ...]
) -> NodeType | None:
    """The node type of a plain file given as a job input, or None if it fits none of ``accepted``.

    STAR files are recognised by their tables (``data_movies`` / ``data_micrographs`` /
    ``data_particles``, or the key column of RELION 3.0 files); an MRC file is a Volume or a
    Mask, whichever is accepted (the file alone cannot tell them apart).

    Raises
    ------
    InputFileError
        The file does not exist or cannot be parsed.

    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "input file not found", "check the path (relative to the project)")
    suffix = p.suffix.lower()
    if suffix in _MAP_SUFFIXES:
        if suffix == ".mrcs" and NodeType.CLASS_AVERAGES in accepted:
            return NodeType.CLASS_AVERAGES  # a stack of 2D references
        for t in (NodeType.VOLUME, NodeType.MASK, NodeType.HALF_MAPS):
            if t in accepted:
                return t
        return NodeType.VOLUME
    if suffix == ".star":
        from cryospa.io.star import read_star

        blocks = read_star(p)
        names = set(blocks)
        columns = {c for b in blocks.values() for c in b.columns}
        if "movies" in names or (
            "rlnMicrographMovieName" in columns and "micrographs" not in names
        ):
            return NodeType.MOVIES
        if "particles" in names or "rlnImageName" in columns:
            if NodeType.CLASS_AVERAGES in accepted and (
                "rlnClassNumber" not in columns or NodeType.PARTICLES not in accepted
            ):
                return NodeType.CLASS_AVERAGES
            return NodeType.PARTICLES
        if "rlnReferenceImage" in columns and NodeType.CLASS_AVERAGES in accepted:
            return NodeType.CLASS_AVERAGES  # RELION's class_averages.star of a Select job
        if "micrographs" in names or "rlnMicrographName" in columns:
            if "rlnMicrographCoordinates" in columns or "coordinate_files" in names:
                return NodeType.COORDINATES
            return NodeType.MICROGRAPHS
        if "rlnCoordinateX" in columns:
            return NodeType.COORDINATES
        if "optimiser_general" in names or "rlnModelStarFile" in columns:
            return NodeType.OPTIMISER
        if "fsc" in names or "rlnFourierShellCorrelation" in columns:
            return NodeType.FSC
        if "general" in names and "rlnFinalResolution" in columns:
            return NodeType.POSTPROCESS
        return None
    if suffix == ".box":
        return NodeType.COORDINATES
    return None
