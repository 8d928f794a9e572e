"""Where coordinate files go: RELION's layout of per-micrograph coordinate STAR files."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

__all__ = ["coordinate_file_name"]

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
