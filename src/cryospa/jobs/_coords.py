"""Shared by the picking jobs: where coordinate files go (RELION's layout) and their plots."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from cryospa.project.schema import Param

__all__ = ["PICK_PLOTS_PARAM", "coordinate_file_name"]

#: ``--plots N`` of the picking jobs.
PICK_PLOTS_PARAM = Param(
    "plots", int, 5, range=(-1, None), metavar="N",
    help="draw the picks on this many micrographs (the first ones of the set); -1: all, 0: none",
)

_JOB_FOLDER = re.compile(r"job\d{3}")


def coordinate_file_name(micrograph: str, suffix: str) -> str:
    """Where RELION puts (and looks for) a micrograph's coordinate file, relative to the job.

    RELION (``decomposePipelineFileName``) drops everything up to and including the first
    ``jobNNN/`` folder of the micrograph's path: ``MotionCorr/job002/Movies/mic1.mrc`` ->
    ``Movies/mic1<suffix>``; a path without one is kept whole (``Mics/mic1.mrc`` ->
    ``Mics/mic1<suffix>``).
    """
    parts = [p for p in PurePosixPath(micrograph).parts if p != "/"]
    for i in range(1, len(parts) - 1):
        if _JOB_FOLDER.match(parts[i]):
            parts = parts[i + 1 :]
            break
    return str(PurePosixPath(*parts).with_suffix("")) + suffix
