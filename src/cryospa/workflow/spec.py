"""Workflow files: parse a YAML chain of jobs and check all of it before anything runs.

A workflow file is a list of steps; each names a job type (as on the command line), its inputs
(earlier steps by name, ``step:output`` for one of several outputs, a job of the project, or a
file) and its parameters (the job type's command-line options, ``dose-per-frame`` or
``dose_per_frame``)::

    name: tutorial                  # optional; default: the file's name
    vars:                           # optional values used below as ${name} or ${expression}
      angpix: 0.885
    steps:
      - name: movies
        job: import movies
        params:
          movies: /data/Movies/*.tiff
          angpix: ${angpix}
      - name: motion
        job: motioncorr
        inputs: {movies: movies}
        params: {patches-x: 5, patches-y: 5, j: 2}

``${...}`` holds a variable or arithmetic on variables and numbers (``${angpix * 360 / 256}``,
``round()``, ``int()``, ``min()``, ``max()``); a value that is only ``${...}`` takes the
expression's type, otherwise the text is substituted. ``j`` is the number of worker processes of
the step (``--j`` on the command line).

:func:`load_workflow` checks the file's shape (keys, names, references to earlier steps,
expressions); :func:`check_workflow` checks it against the registered job types and a project
(job types, parameter names and values, input names and types, files), and reports every
problem at once, each naming the step and the fix.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryospa.errors import CryospaError
from cryospa.project.schema import (
    JOB_TYPES,
    Input,
    JobType,
    load_builtin_jobs,
    validate_params,
)

__all__ = [
    "RUN_KEYS",
    "InputRef",
    "Step",
    "Workflow",
    "WorkflowError",
    "check_workflow",
    "load_workflow",
    "parse_workflow",
]

#: Keys allowed at the top of a workflow file.
TOP_KEYS = ("name", "vars", "steps")
#: Keys allowed in a step.
STEP_KEYS = ("name", "job", "inputs", "params")
#: Run options that a step may set among its parameters (as ``--j`` on the command line).
RUN_KEYS = ("j",)
#: Command-line options of a job that belong to ``cryospa run`` in a workflow.
_WORKFLOW_OPTIONS = {
    "stream": "--stream",
    "poll": "--poll",
    "stream_timeout": "--stream-timeout",
    "batch_size": "--batch-size",
    "project": "--project",
    "background": "(run the workflow in the background instead)",
    "alias": "(steps are named by their name:)",
}
_STEP_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]*$")
_VAR = re.compile(r"\$\{([^}]*)\}")


class WorkflowError(CryospaError):
    """A workflow file that cannot run; ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{source}: " + ("1 problem" if n == 1 else f"{n} problems")
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True)
class InputRef:
    """One input of a step as written: an earlier step (and output) or something else.

    Attributes
    ----------
    text : str
        As written in the file.
    step : str or None
        The earlier step it names, or None for a project job or a file.
    output : str or None
        The output after ``step:``, or None (the step's one output of the right type).

    """

    text: str
    step: str | None = None
    output: str | None = None


@dataclass
class Step:
    """One step of a workflow (see the module docstring).

    Attributes
    ----------
    index : int
        Position in the file, from 1.
    name : str
        The step's name (unique in the file).
    job : str
        The job type as written (``import movies``).
    inputs : dict of str to list of InputRef
        By input name (``-`` in names turned into ``_``).
    params : dict
        Parameter values by parameter name (``_`` names), ``${...}`` already evaluated.
    j : int or None
        Worker processes (``j:`` among the parameters), None: the default.

    """

    index: int
    name: str
    job: str
    inputs: dict[str, list[InputRef]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    j: int | None = None

    @property
    def label(self) -> str:
        """``step 'motion' (motioncorr)``."""
        return f"step {self.name!r} ({self.job})"

    def step_refs(self) -> list[InputRef]:
        """The inputs that name earlier steps."""
        return [r for refs in self.inputs.values() for r in refs if r.step is not None]


@dataclass
class Workflow:
    """A parsed workflow file."""

    name: str
    steps: list[Step]
    source: str = "<workflow>"
    variables: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    problems: list[str] = field(default_factory=list)

    def step(self, name: str) -> Step:
        """The step of this name."""
        for s in self.steps:
            if s.name == name:
                return s
        raise WorkflowError(self.source, [f"no step {name!r} (steps: {self.step_names()})"])

    def step_names(self) -> str:
        """The step names, comma-separated."""
        return ", ".join(s.name for s in self.steps) or "none"

    def until(self, name: str | None) -> list[Step]:
        """The steps up to and including ``name`` (all steps for None)."""
        if name is None:
            return list(self.steps)
        if name not in {s.name for s in self.steps}:
            raise WorkflowError(self.source, [
                f"--until {name}: no such step (steps: {self.step_names()})"])
        last = self.step(name).index
        return [s for s in self.steps if s.index <= last]


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------


def key_name(key: str) -> str:
    """A key as written (``--dose-per-frame``) -> its parameter name (``dose_per_frame``)."""
    return key.strip().lstrip("-").replace("-", "_")


def option_name(name: str) -> str:
    """A parameter name -> its spelling in workflow files and on the command line."""
    return name.replace("_", "-")


def normalise_job_name(text: str) -> str:
    """``Import  Movies`` -> ``import movies``."""
    return " ".join(text.strip().lower().split())


def find_job_type(name: str) -> type[JobType] | None:
    """The registered job type ``name`` (built-in job modules loaded), or None."""
    load_builtin_jobs()
    wanted = normalise_job_name(name)
    for candidate in (wanted, wanted.replace("_", "-"), wanted.replace("-", "_"),
                      wanted.replace("_", " ")):
        if candidate in JOB_TYPES:
            return JOB_TYPES[candidate]
    return None


# --------------------------------------------------------------------------------------
# ${...} expressions
# --------------------------------------------------------------------------------------

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "round": round, "int": int, "float": float, "min": min, "max": max, "abs": abs,
    "ceil": math.ceil, "floor": math.floor,
}


def evaluate(expression: str, variables: Mapping[str, Any]) -> Any:
    """Value of a ``${...}`` expression: variables, numbers, + - * / // % **, a few functions.

    Raises
    ------
    ValueError
        Syntax error, unknown variable or function, anything else (attribute access, ...).

    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"${{{expression}}} is not a valid expression") from err

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in variables:
                known = ", ".join(variables) or "none"
                raise ValueError(f"unknown variable {node.id!r} in ${{{expression}}} "
                                 f"(vars: {known})")
            return variables[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = ev(node.operand)
            return -value if isinstance(node.op, ast.USub) else +value
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in _FUNCTIONS and not node.keywords):
            return _FUNCTIONS[node.func.id](*(ev(a) for a in node.args))
        raise ValueError(f"${{{expression}}}: only variables, numbers, + - * / // % ** and "
                         f"{', '.join(_FUNCTIONS)}() are allowed")

    try:
        return ev(tree)
    except (TypeError, ZeroDivisionError, OverflowError) as err:
        raise ValueError(f"${{{expression}}}: {err}") from err


def substitute(value: Any, variables: Mapping[str, Any]) -> Any:
    """``value`` with its ``${...}`` replaced (recursively in lists); other values unchanged."""
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _VAR.fullmatch(value.strip())
    if whole:
        return evaluate(whole.group(1), variables)

    def text(m: re.Match[str]) -> str:
        v = evaluate(m.group(1), variables)
        return f"{v:g}" if isinstance(v, float) else str(v)

    return _VAR.sub(text, value)


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def load_workflow(path: str | os.PathLike[str], *, strict: bool = True) -> Workflow:
    """Read and parse a workflow file (see :func:`parse_workflow`)."""
    p = Path(path)
    if not p.is_file():
        raise WorkflowError(str(p), ["file not found: check the path"])
    text = p.read_text(encoding="utf-8")
    return parse_workflow(text, source=str(p), default_name=p.stem, strict=strict)


def parse_workflow(text: str, *, source: str = "<workflow>", default_name: str = "workflow",
                   strict: bool = True) -> Workflow:
    """Parse a workflow's YAML text and check its shape.

    Checks here need no project and no job registry: the keys, step names (unique, simple),
    ``${...}`` expressions, and that every input naming a step names an *earlier* one. With
    ``strict=False`` the problems found in well-formed YAML are kept in ``problems`` (for
    :func:`check_workflow` to report with its own) instead of raised.

    Raises
    ------
    WorkflowError
        With every problem found (only the unreadable ones when not ``strict``).

    """
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise WorkflowError(source, [f"not valid YAML: {err}"]) from err
    if not isinstance(data, dict):
        raise WorkflowError(source, ["expected a mapping with 'steps:' (a list of steps), "
                                     "see `cryospa workflow template tutorial`"])
    problems: list[str] = []
    unknown = [str(k) for k in data if k not in TOP_KEYS]
    if unknown:
        problems.append(f"unknown top-level key(s) {', '.join(unknown)} "
                        f"(allowed: {', '.join(TOP_KEYS)})")
    name = str(data.get("name") or default_name)
    if not _STEP_NAME.match(name):
        problems.append(f"name {name!r}: use letters, digits, '_', '-', '.', '+'")
    variables = _parse_vars(data.get("vars"), problems)
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        problems.append("'steps:' must be a non-empty list of steps (- name: ..., job: ...)")
        raise WorkflowError(source, problems)

    names: list[str] = []
    for i, raw in enumerate(raw_steps, start=1):
        if isinstance(raw, dict) and isinstance(raw.get("name"), str | int):
            names.append(str(raw["name"]))
        else:
            names.append(f"#{i}")
    position: dict[str, int] = {}
    for i, n in enumerate(names, start=1):
        if n in position:
            problems.append(f"step {i} and step {position[n]} are both named {n!r}: step "
                            "names must be unique")
        else:
            position[n] = i

    steps = []
    for i, raw in enumerate(raw_steps, start=1):
        step = _parse_step(i, raw, names, position, variables, problems)
        if step is not None:
            steps.append(step)
    if problems and strict:
        raise WorkflowError(source, problems)
    return Workflow(name=name, steps=steps, source=source, variables=variables, text=text,
                    problems=problems)


def _parse_vars(raw: Any, problems: list[str]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append("'vars:' must be a mapping (name: value)")
        return {}
    variables: dict[str, Any] = {}
    for key, value in raw.items():
        k = str(key)
        if not k.isidentifier():
            problems.append(f"vars: {k!r} is not a valid name (letters, digits, '_')")
            continue
        try:
            variables[k] = substitute(value, variables)
        except ValueError as err:
            problems.append(f"vars: {k}: {err}")
    return variables


def _parse_step(
    index: int,
    raw: Any,
    names: list[str],
    position: Mapping[str, int],
    variables: Mapping[str, Any],
    problems: list[str],
) -> Step | None:
    if not isinstance(raw, dict):
        problems.append(f"step {index}: expected a mapping with name:, job:, inputs:, params:")
        return None
    name = names[index - 1]
    where = f"step {name!r}" if not name.startswith("#") else f"step {index}"
    unknown = [str(k) for k in raw if k not in STEP_KEYS]
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)} (a step has "
                        f"{', '.join(STEP_KEYS)}; job parameters go under params:)")
    if name.startswith("#"):
        problems.append(f"{where}: give it a name: (used by later steps' inputs)")
    elif not _STEP_NAME.match(name) or (name.startswith("job") and name[3:].isdigit()):
        problems.append(f"{where}: name {name!r}: use letters, digits, '_', '-', '.', '+', "
                        "starting with a letter, and not a job number")
    job = raw.get("job")
    if not isinstance(job, str) or not job.strip():
        problems.append(f"{where}: job: is missing (a job type as on the command line, "
                        "e.g. 'import movies', 'motioncorr')")
        job = ""
    step = Step(index=index, name=name, job=normalise_job_name(job))
    where = step.label if job else where

    raw_inputs = raw.get("inputs") or {}
    if not isinstance(raw_inputs, dict):
        problems.append(f"{where}: inputs: must be a mapping (input name: step or file)")
        raw_inputs = {}
    for key, value in raw_inputs.items():
        values = value if isinstance(value, list) else [value]
        refs = []
        for v in values:
            try:
                v = substitute(v, variables)
            except ValueError as err:
                problems.append(f"{where}: input {key}: {err}")
                continue
            if not isinstance(v, str | int) or isinstance(v, bool) or str(v).strip() == "":
                problems.append(f"{where}: input {key}: {v!r} is not a step name or a file")
                continue
            ref = _input_ref(str(v).strip(), step, names, position, problems, where, key)
            if ref is not None:
                refs.append(ref)
        step.inputs[key_name(str(key))] = refs

    raw_params = raw.get("params") or {}
    if not isinstance(raw_params, dict):
        problems.append(f"{where}: params: must be a mapping (parameter: value)")
        raw_params = {}
    for key, value in raw_params.items():
        pname = key_name(str(key))
        try:
            value = substitute(value, variables)
        except ValueError as err:
            problems.append(f"{where}: parameter {key}: {err}")
            continue
        if isinstance(value, dict | list):
            problems.append(f"{where}: parameter {key}: expected one value, got {value!r}")
            continue
        if pname == "j":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{where}: j: {value!r}: the number of worker processes, a "
                                "whole number >= 1")
            else:
                step.j = value
            continue
        if pname in step.params:
            problems.append(f"{where}: parameter {key} is given twice")
        step.params[pname] = value
    return step


def _input_ref(
    text: str,
    step: Step,
    names: list[str],
    position: Mapping[str, int],
    problems: list[str],
    where: str,
    key: str,
) -> InputRef | None:
    target, _, output = text.partition(":")
    if target not in position:
        return InputRef(text)  # a project job or a file: checked against the project
    at = position[target]
    if at == step.index:
        problems.append(f"{where}: input {key}: {target!r} is this step itself: name an "
                        "earlier step")
        return None
    if at > step.index:
        problems.append(
            f"{where}: input {key}: step {target!r} comes later (step {at}; this is step "
            f"{step.index}); steps run in the order of the file: move {target!r} before "
            f"{step.name!r}"
        )
        return None
    return InputRef(text, step=target, output=output or None)


# --------------------------------------------------------------------------------------
# Checking against the job registry and a project
# --------------------------------------------------------------------------------------


def check_workflow(
    workflow: Workflow,
    project_dir: str | os.PathLike[str],
    *,
    until: str | None = None,
    streamed: frozenset[str] = frozenset(),
    find_job: Callable[[str], bool] | None = None,
) -> list[str]:
    """Check every step against its job type and the project; return warnings.

    Steps after ``until`` are checked too, except that a job type not registered in this
    installation is only a warning there (the steps that run are all available). The problems
    found by a non-strict :func:`parse_workflow` come first.

    Parameters
    ----------
    workflow : Workflow
        From :func:`parse_workflow`.
    project_dir : path
        Relative file parameters and inputs are relative to it (as on the command line).
    until : str or None
        Last step to run.
    streamed : frozenset of str
        Steps that will stream (their file patterns may match nothing yet).
    find_job : callable or None
        ``find_job(text) -> bool``: whether ``text`` names a job of the project (for inputs
        that are neither steps nor files).

    Raises
    ------
    WorkflowError
        With every problem found.

    """
    root = Path(project_dir)
    load_builtin_jobs()
    running = {s.name for s in workflow.until(until)}
    problems: list[str] = list(workflow.problems)
    warnings: list[str] = []
    types: dict[str, JobType | None] = {}
    missing = [s for s in workflow.steps if s.job and find_job_type(s.job) is None]
    first_missing = missing[0].index if missing else 0
    for step in workflow.steps:
        cls = find_job_type(step.job) if step.job else None
        jt = cls() if cls is not None else None
        types[step.name] = jt
        if jt is None:
            if not step.job:
                continue  # reported by the parser
            close = difflib.get_close_matches(step.job, sorted(JOB_TYPES), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            message = (f"{step.label}: job type {step.job!r} is not registered in this "
                       "installation of cryospa")
            if step.name in running:
                before = [s.name for s in workflow.steps if s.index < first_missing]
                fix = (f"; run the steps before it with --until {before[-1]}" if before else "")
                problems.append(f"{message} ({hint}available: {', '.join(sorted(JOB_TYPES))})"
                                + fix)
            else:
                warnings.append(message + " (after --until: not run now)")
            continue
        _check_params(step, jt, root, step.name in streamed, problems)
        _check_inputs(step, jt, types, root, find_job, problems)
    if problems:
        raise WorkflowError(workflow.source, problems)
    return warnings


def _check_params(step: Step, jt: JobType, root: Path, stream: bool,
                  problems: list[str]) -> None:
    known = {p.name for p in jt.params}
    valid = ", ".join([*(option_name(p.name) for p in jt.params), *RUN_KEYS])
    unknown = [k for k in step.params if k not in known]
    for k in unknown:
        if k in _WORKFLOW_OPTIONS:
            problems.append(f"{step.label}: {option_name(k)} is not a parameter of a step: "
                            f"{_WORKFLOW_OPTIONS[k]} of `cryospa run`")
            continue
        close = difflib.get_close_matches(k, sorted(known), n=1)
        hint = f"did you mean {option_name(close[0])}? " if close else ""
        problems.append(f"{step.label}: unknown parameter {option_name(k)} ({hint}valid: "
                        f"{valid})")
    if unknown:
        return
    try:
        validate_params(jt, step.params, project_dir=root, stream=stream)
    except CryospaError as err:
        text = str(err)
        if text.startswith(f"{jt.name}: "):
            text = text[len(jt.name) + 2:]
        problems.append(f"{step.label}: {text}")


def _check_inputs(
    step: Step,
    jt: JobType,
    types: Mapping[str, JobType | None],
    root: Path,
    find_job: Callable[[str], bool] | None,
    problems: list[str],
) -> None:
    declared = {i.name: i for i in jt.inputs}
    for name in step.inputs:
        if name not in declared:
            valid = ", ".join(option_name(i) for i in declared) or "none"
            problems.append(f"{step.label}: unknown input {option_name(name)} (valid: {valid})")
    for inp in jt.inputs:
        refs = step.inputs.get(inp.name) or []
        if not refs:
            if inp.required:
                wanted = " or ".join(str(t) for t in inp.types)
                problems.append(f"{step.label}: input {option_name(inp.name)} (a {wanted}) is "
                                "required: add it under inputs: (an earlier step's name or a "
                                "file)")
            continue
        if len(refs) > 1 and not inp.multiple:
            problems.append(f"{step.label}: input {option_name(inp.name)} takes one input, "
                            f"got {len(refs)}")
        for ref in refs:
            if ref.step is not None:
                problem = _check_step_output(ref, inp, types.get(ref.step))
            else:
                problem = _check_external(ref, root, find_job)
            if problem:
                problems.append(f"{step.label}: input {option_name(inp.name)}: {problem}")


def _check_step_output(ref: InputRef, inp: Input, source: JobType | None) -> str | None:
    if source is None:
        return None  # an unregistered job type: reported on its own step
    wanted = " or ".join(str(t) for t in inp.types)
    outputs = source.outputs
    have = ", ".join(f"{o.name} ({o.type or 'as its input'})" for o in outputs) or "none"
    if ref.output is not None:
        chosen = [o for o in outputs if o.name == ref.output]
        if not chosen:
            return (f"step {ref.step!r} ({source.name}) has no output {ref.output!r} "
                    f"(it has: {have})")
        if chosen[0].type is not None and chosen[0].type not in inp.types:
            return (f"{ref.text} is a {chosen[0].type}, but this input needs a {wanted}")
        return None
    fitting = [o for o in outputs if o.type in inp.types]
    undecided = [o for o in outputs if o.type is None]
    if not fitting and not undecided:
        return (f"step {ref.step!r} ({source.name}) makes no {wanted} (it makes: {have}): "
                "name another step")
    if len(fitting) > 1:
        names = ", ".join(f"{ref.step}:{o.name}" for o in fitting)
        return f"step {ref.step!r} has several {wanted} outputs: write one of {names}"
    return None


def _check_external(ref: InputRef, root: Path,
                    find_job: Callable[[str], bool] | None) -> str | None:
    path = Path(ref.text)
    full = path if path.is_absolute() else root / path
    if full.is_file():
        return None
    if find_job is not None and find_job(ref.text):
        return None
    return (f"{ref.text!r} is no earlier step, no job of the project and no file (files are "
            f"relative to the project {root}): fix the step name or the path")
