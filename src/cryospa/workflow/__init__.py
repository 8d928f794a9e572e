"""cryospa.workflow: declarative workflow files (a YAML chain of jobs) and their runner.

* :mod:`~cryospa.workflow.spec`: parse a workflow file and check every step against the job
  types and the project before anything runs (:func:`load_workflow`, :func:`check_workflow`).
* :mod:`~cryospa.workflow.runner`: run it, skipping finished steps and continuing killed ones
  (:func:`run_workflow`), optionally streaming the preprocessing steps.
* :mod:`~cryospa.workflow.templates`: the shipped workflows (``cryospa workflow template``).
"""

from cryospa.workflow.runner import StepResult, WorkflowResult, read_state, run_workflow
from cryospa.workflow.spec import (
    InputRef,
    Step,
    Workflow,
    WorkflowError,
    check_workflow,
    load_workflow,
    parse_workflow,
)
from cryospa.workflow.templates import template_names, template_text

__all__ = [
    "InputRef",
    "Step",
    "StepResult",
    "Workflow",
    "WorkflowError",
    "WorkflowResult",
    "check_workflow",
    "load_workflow",
    "parse_workflow",
    "read_state",
    "run_workflow",
    "template_names",
    "template_text",
]
