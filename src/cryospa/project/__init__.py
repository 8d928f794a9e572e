"""cryospa.project: the project database, job records, job directories, provenance, running.

* :mod:`~cryospa.project.db`: ``project.sqlite`` (WAL, transactions, several processes at once).
* :mod:`~cryospa.project.project`: :class:`Project` (init / open, jobs, inputs, outputs, trash,
  RELION 3.1 ``default_pipeline.star``).
* :mod:`~cryospa.project.schema`: the declarative job model (:class:`Param`, :class:`Input`,
  :class:`Output`, :class:`PerItemJob`, :class:`IterativeJob`, the registry, CLI generation
  and validation).
* :mod:`~cryospa.project.runner`: submit / run / continue / abort / stop, foreground or
  detached; the per-item and iterative loops, streaming.
* :mod:`~cryospa.project.graph`: provenance as text and as a picture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryospa.project.nodes import NodeType
from cryospa.project.schema import (
    Input,
    IterativeJob,
    JobContext,
    JobType,
    Output,
    Param,
    PerItemJob,
    ResolvedInput,
    RunOptions,
    register,
)

if TYPE_CHECKING:
    from cryospa.project.project import JobRecord, Project


def __getattr__(name: str) -> Any:
    # Project / JobRecord on first use: cryospa.project.project loads pandas and the io layer,
    # which importing cryospa.project.schema (the command line's --help) does not need
    if name in ("JobRecord", "Project"):
        from cryospa.project import project

        return getattr(project, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Input",
    "IterativeJob",
    "JobContext",
    "JobRecord",
    "JobType",
    "NodeType",
    "Output",
    "Param",
    "PerItemJob",
    "Project",
    "ResolvedInput",
    "RunOptions",
    "register",
]
