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

from cryospa.project.nodes import NodeType
from cryospa.project.project import JobRecord, Project
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
