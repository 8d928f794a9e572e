"""Running a workflow: each step's job is found and skipped, continued, or created and run.

For each step, in the order of the file (up to ``until``), the step's inputs become the jobs of
the steps they name, its parameters are validated (defaults filled) and its inputs resolved, all
through the project API (:func:`~cryospa.project.runner.submit`,
:func:`~cryospa.project.runner.continue_job`). Then the step's job is looked up: first the job
recorded for the step by an earlier run, then any job of the project of the same type, with the
same parameters and the same inputs (so a run killed between creating a job and recording it
still finds it):

* none: a new job is created and run;
* succeeded: the step is skipped;
* failed or aborted (killed, interrupted), or scheduled: the job is continued (finished items
  and completed iterations are kept);
* running (a streaming job started by an earlier run that is still going): it is waited for.

A step whose parameters or inputs changed gets a new job, and so does every step after it that
uses it (its inputs changed). The mapping step -> job is written, atomically, to
``Workflows/<name>.json`` in the project after every step, next to a copy of the workflow file.

Streaming (``stream=True``): the preprocessing steps (imports, motion correction, CTF, picking,
extraction) whose inputs are all streamed steps start first, each in the background in streaming
mode, so movies are corrected, fitted, picked and extracted while they arrive; the import ends
``stream_timeout`` seconds after the last new movie (or with ``cryospa stop JOB``), the steps after
it when their input has ended. The other steps run when they have all finished.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryospa.errors import CryospaError
from cryospa.io._files import write_text_atomic
from cryospa.project.project import JobRecord, Project
from cryospa.project.runner import continue_job, submit
from cryospa.project.schema import JobType, ResolvedInput, RunOptions, validate_params
from cryospa.workflow.spec import (
    Step,
    Workflow,
    WorkflowError,
    check_workflow,
    find_job_type,
    option_name,
)

__all__ = [
    "STATE_FOLDER",
    "STREAMING_JOBS",
    "StepResult",
    "WorkflowResult",
    "read_state",
    "run_workflow",
    "streamed_steps",
]

#: Project folder holding each workflow's step -> job mapping and a copy of its file.
STATE_FOLDER = "Workflows"
#: Job types a streaming workflow runs in streaming mode (when their inputs stream too).
STREAMING_JOBS = frozenset({
    "import movies", "import micrographs", "import coordinates", "motioncorr", "ctffind",
    "pick log", "pick template", "extract",
})
_ACTIVE = ("running", "scheduled")


@dataclass
class StepResult:
    """What happened to one step.

    ``action`` is ``skipped`` (its job had finished with the same parameters), ``continued``
    (its job had been killed or had failed), ``ran`` (a new job), ``waited`` (its job was
    already running) or, in a dry run, ``would run`` / ``would continue``.
    """

    step: str
    action: str
    job: str = ""
    folder: str = ""
    status: str = ""
    summary: str = ""
    seconds: float = 0.0


@dataclass
class WorkflowResult:
    """The outcome of :func:`run_workflow`: one result per step handled, in order."""

    steps: list[StepResult] = field(default_factory=list)
    failed: str | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        """Whether every step handled succeeded (or was skipped)."""
        return self.failed is None

    def by_step(self) -> dict[str, StepResult]:
        """Results by step name."""
        return {r.step: r for r in self.steps}


# --------------------------------------------------------------------------------------
# The step -> job mapping
# --------------------------------------------------------------------------------------


def state_path(project: Project, name: str) -> Path:
    """``Workflows/<name>.json`` in the project."""
    return project.root / STATE_FOLDER / f"{name}.json"


def read_state(project: Project, name: str) -> dict[str, str]:
    """Step name -> job name (``job003``) recorded for workflow ``name`` (empty if none)."""
    path = state_path(project, name)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # never half written (atomic); unreadable means edited by hand: rebuild it
    steps = data.get("steps", {}) if isinstance(data, dict) else {}
    return {str(k): str(v["job"]) for k, v in steps.items()
            if isinstance(v, dict) and "job" in v}


def _write_state(project: Project, workflow: Workflow, jobs: Mapping[str, JobRecord]) -> None:
    path = state_path(project, workflow.name)
    path.parent.mkdir(exist_ok=True)
    old: dict[str, Any] = {}
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8")).get("steps", {})
        except (OSError, json.JSONDecodeError, AttributeError):
            old = {}
    steps = dict(old)
    for name, rec in jobs.items():
        steps[name] = {"job": rec.name, "type": rec.type, "folder": rec.dir + "/"}
    order = {s.name: s.index for s in workflow.steps}
    ordered = dict(sorted(steps.items(), key=lambda kv: order.get(kv[0], 10**6)))
    data = {"workflow": workflow.name, "file": workflow.source, "updated": time.time(),
            "steps": ordered}
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _save_copy(project: Project, workflow: Workflow) -> None:
    if workflow.text:
        folder = project.root / STATE_FOLDER
        folder.mkdir(exist_ok=True)
        write_text_atomic(folder / f"{workflow.name}.yaml", workflow.text)


# --------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------


def streamed_steps(steps: Sequence[Step]) -> frozenset[str]:
    """The steps that stream: preprocessing job types whose inputs are all streamed steps."""
    out: set[str] = set()
    for step in steps:
        cls = find_job_type(step.job)
        if cls is None or not cls.streamable or cls.name not in STREAMING_JOBS:
            continue
        refs = [r for rs in step.inputs.values() for r in rs]
        if all(r.step in out for r in refs):
            out.add(step.name)
    return frozenset(out)


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _param_changes(job: JobRecord, job_type: JobType, params: Mapping[str, Any]) -> list[str]:
    """Parameters that differ between a job and new values (a missing one is its default)."""
    defaults = _json({p.name: p.default for p in job_type.params})
    old, new = _json(dict(job.params)), _json(dict(params))
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, defaults.get(key)), new.get(key, defaults.get(key))
        if a != b:
            changes.append(f"{option_name(key)} {a} -> {b}")
    return changes


def _input_key(inputs: Mapping[str, list[ResolvedInput]]) -> dict[str, list[tuple[Any, ...]]]:
    return {name: [(r.source_job, r.source_output, r.path) for r in rs]
            for name, rs in inputs.items() if rs}


@dataclass
class _Request:
    """A step made concrete: its job type, validated parameters, inputs and run options."""

    step: Step
    job_type: JobType
    raw_params: dict[str, Any]
    params: dict[str, Any]
    specs: dict[str, list[str]]
    resolved: dict[str, list[ResolvedInput]]
    run: RunOptions


class _StepRefused(Exception):
    """A step the project refused (nothing of it ran); the message names the step."""

    def __init__(self, step: Step, message: str) -> None:
        super().__init__(message)
        self.step = step


class _Runner:
    def __init__(
        self,
        project: Project,
        workflow: Workflow,
        *,
        j: int,
        poll: float,
        stream_timeout: float,
        command: str,
        echo: Callable[[str], None],
        dry_run: bool,
    ) -> None:
        self.project = project
        self.workflow = workflow
        self.j = j
        self.poll = poll
        self.stream_timeout = stream_timeout
        self.command = command
        self.echo = echo
        self.dry_run = dry_run
        self.recorded = read_state(project, workflow.name)
        self.jobs: dict[str, JobRecord] = {}
        self.pending: set[str] = set()  # dry run: steps that would get a new job
        self.result = WorkflowResult()
        self.total = len(workflow.steps)

    # ----------------------------------------------------------------------------------
    def tag(self, step: Step) -> str:
        return f"[{step.index}/{self.total}] {step.name}"

    def request(self, step: Step, *, stream: bool) -> _Request:
        cls = find_job_type(step.job)
        if cls is None:  # check_workflow refused it already
            raise WorkflowError(self.workflow.source, [f"{step.label}: not registered"])
        job_type = cls()
        specs: dict[str, list[str]] = {}
        for name, refs in step.inputs.items():
            specs[name] = [
                (self.jobs[r.step].name + (f":{r.output}" if r.output else ""))
                if r.step is not None else r.text
                for r in refs
            ]
        run = RunOptions(j=step.j or self.j)
        if stream:
            has_upstream = any(r.step is not None for r in step.step_refs())
            run = RunOptions(j=run.j, stream=True, poll=self.poll,
                             stream_timeout=0.0 if has_upstream else self.stream_timeout)
        try:
            params = validate_params(job_type, step.params, project_dir=self.project.root,
                                     stream=stream)
            declared = {i.name: i for i in job_type.inputs}
            resolved = {
                name: [self.project.resolve_input(declared[name], s, stream=stream)
                       for s in ss]
                for name, ss in specs.items()
            }
        except CryospaError as err:
            raise WorkflowError(self.workflow.source, [f"{step.label}: {err}"]) from err
        return _Request(step, job_type, dict(step.params), params, specs, resolved, run)

    def find_existing(self, req: _Request) -> JobRecord | None:
        """The step's job from an earlier run: same type, parameters and inputs."""
        self.project.refresh()
        mapped = self.recorded.get(req.step.name)
        candidates = [j for j in reversed(self.project.jobs()) if j.type == req.job_type.name]
        candidates.sort(key=lambda j: j.name != mapped)  # the recorded job first
        want = _input_key(req.resolved)
        for job in candidates:
            if _param_changes(job, req.job_type, req.params):
                continue
            if _input_key(self.project.inputs(job.id)) == want:
                return job
        if mapped is not None:
            old = self.project.find_job(mapped)
            if old is not None and old.type == req.job_type.name and not old.deleted:
                changes = _param_changes(old, req.job_type, req.params)
                why = ("parameters changed (" + ", ".join(changes[:4])
                       + (", ..." if len(changes) > 4 else "") + ")" if changes
                       else "its inputs changed")
                self.echo(f"{self.tag(req.step)}: {why} since {old.name}: a new job")
        return None

    # ----------------------------------------------------------------------------------
    def start(self, step: Step, *, stream: bool, background: bool) -> JobRecord | None:
        """Skip, continue, wait for or create the step's job; None in a dry run.

        Raises :class:`_StepRefused` when the project refuses the step (its job type's own
        checks, an input that is not ready).
        """
        try:
            return self._start(step, stream=stream, background=background)
        except WorkflowError as err:
            raise _StepRefused(step, "; ".join(err.problems)) from err
        except CryospaError as err:
            raise _StepRefused(step, f"{step.label}: {err}") from err

    def _start(self, step: Step, *, stream: bool, background: bool) -> JobRecord | None:
        if self.dry_run and any(r.step in self.pending for r in step.step_refs()):
            self.pending.add(step.name)
            self.echo(f"{self.tag(step)}: would run, continue or skip {step.job} once its "
                      "inputs are done")
            self.result.steps.append(StepResult(step.name, "would run"))
            return None
        req = self.request(step, stream=stream)
        existing = self.find_existing(req)
        tag = self.tag(step)
        if existing is not None and existing.status == "succeeded":
            self.echo(f"{tag}: skipped: {existing.name} finished with the same parameters "
                      f"({existing.dir}/)")
            self.record(step, existing, "skipped")
            return existing
        if self.dry_run:
            action = "would continue" if existing is not None else "would run"
            what = f"{existing.name} ({existing.status})" if existing else f"a new {step.job} job"
            self.echo(f"{tag}: {action} {what}")
            self.pending.add(step.name)
            self.result.steps.append(StepResult(step.name, action,
                                                existing.name if existing else ""))
            return existing
        command = f"{self.command} (step {step.name!r})"
        mode = " in streaming mode, in the background" if background else ""
        t0 = time.monotonic()
        if existing is not None and existing.status == "running":
            self.echo(f"{tag}: {existing.name} is already running (pid {existing.pid} on "
                      f"{existing.host}); waiting for it ({existing.dir}/)")
            self.jobs[step.name] = existing
            _write_state(self.project, self.workflow, {step.name: existing})
            action = "waited"
            record = existing if background else self.wait_for(existing)
        elif existing is not None:
            why = f": {existing.error.splitlines()[0]}" if existing.error else ""
            self.echo(f"{tag}: continuing {existing.name} ({existing.status}{why}){mode} in "
                      f"{existing.dir}/")
            self.jobs[step.name] = existing
            _write_state(self.project, self.workflow, {step.name: existing})
            action = "continued"
            record = continue_job(self.project, existing.id, background=background,
                                  j=req.run.j, command=command)
        else:
            self.echo(f"{tag}: running {step.job}{mode}")
            action = "ran"
            record = submit(self.project, req.job_type, req.raw_params, req.specs, run=req.run,
                            background=background, command=command)
        seconds = time.monotonic() - t0
        if not background:
            self.echo(f"{tag}: {record.name} {record.status} in {seconds:.1f} s "
                      f"({record.dir}/)")
        self.record(step, record, action, seconds)
        return record

    def record(self, step: Step, job: JobRecord, action: str, seconds: float = 0.0) -> None:
        self.jobs[step.name] = job
        if not self.dry_run:
            _write_state(self.project, self.workflow, {step.name: job})
        self.result.steps.append(StepResult(step.name, action, job.name, job.dir + "/",
                                            job.status, job.summary, seconds))

    def wait_for(self, job: JobRecord) -> JobRecord:
        while True:
            self.project.refresh()
            current = self.project.job_by_id(job.id)
            if current.status not in _ACTIVE:
                return current
            time.sleep(max(0.2, min(self.poll, 2.0)))

    def check_ended(self, step: Step, record: JobRecord) -> bool:
        """Report a step whose job did not succeed; return whether it did."""
        if record.status == "succeeded":
            return True
        error = record.error or record.status
        self.result.failed = step.name
        self.result.message = (
            f"step {step.name!r}: {record.name} {record.status}: {error}\n"
            f"  its folder: {record.dir}/ (run.out, run.err); fix the cause and run the "
            f"workflow again: it continues {record.name} (or edit the step's parameters: "
            "a new job)"
        )
        return False

    # ----------------------------------------------------------------------------------
    def run_streamed(self, steps: Sequence[Step]) -> bool:
        started: dict[str, JobRecord] = {}
        for step in steps:
            record = self.start(step, stream=True, background=True)
            if record is None:
                continue
            if record.status in _ACTIVE:
                started[step.name] = record
                if not step.step_refs():
                    timeout = (f"{self.stream_timeout:g} s after the last new file"
                               if self.stream_timeout > 0 else "never by itself")
                    self.echo(f"{self.tag(step)}: {record.name} watches for new files; it "
                              f"ends {timeout}, or with `cryospa stop {record.name}`")
            elif not self.dry_run and not self.check_ended(step, record):
                return False
        if self.dry_run or not started:
            return True
        seen: dict[str, str] = {}
        by_name = {s.name: s for s in steps}
        try:
            while True:
                self.project.refresh()
                active = False
                for name, rec in started.items():
                    current = self.project.job_by_id(rec.id)
                    if current.summary and current.summary != seen.get(name):
                        seen[name] = current.summary
                        self.echo(f"{self.tag(by_name[name])} ({current.name}, streaming): "
                                  f"{current.summary}")
                    active = active or current.status in _ACTIVE
                if not active:
                    break
                time.sleep(max(0.2, min(self.poll, 2.0)))
        except KeyboardInterrupt:
            names = ", ".join(r.name for r in started.values())
            self.result.failed = next(iter(started))
            self.result.message = (
                f"interrupted; the streaming jobs ({names}) go on in the background "
                "(`cryospa jobs`; `cryospa stop JOB` ends an import, `cryospa abort JOB` any "
                "job): run the workflow again to wait for them and go on"
            )
            return False
        ok = True
        for name, rec in started.items():
            final = self.project.job_by_id(rec.id)
            self.jobs[name] = final
            for r in self.result.steps:
                if r.step == name:
                    r.status, r.summary = final.status, final.summary
            if final.status != "succeeded" and ok:
                ok = self.check_ended(by_name[name], final)
        return ok


def run_workflow(
    project: Project,
    workflow: Workflow,
    *,
    until: str | None = None,
    stream: bool = False,
    j: int = 1,
    poll: float = 5.0,
    stream_timeout: float = 120.0,
    dry_run: bool = False,
    command: str = "",
    echo: Callable[[str], None] | None = None,
) -> WorkflowResult:
    """Run (or resume) ``workflow`` in ``project``; see the module docstring.

    Parameters
    ----------
    project : Project
        Where the jobs go.
    workflow : Workflow
        From :func:`~cryospa.workflow.spec.load_workflow`.
    until : str or None
        Stop after this step.
    stream : bool
        Run the preprocessing steps concurrently in streaming mode.
    j : int
        Worker processes of steps that do not set ``j``.
    poll : float
        Seconds between looks for new items (streaming) and status checks.
    stream_timeout : float
        Streaming: a streaming import ends this many seconds after its last new file
        (0: only with ``cryospa stop``).
    dry_run : bool
        Only say what would run.
    command : str
        The command line, recorded in each job's note.txt.
    echo : callable or None
        Where progress lines go (default: print).

    Returns
    -------
    WorkflowResult
        Per step: skipped / continued / ran / waited, its job and folder; ``failed`` names the
        step whose job did not succeed (the later steps were not run).

    Raises
    ------
    WorkflowError
        The workflow does not fit the job types or the project (nothing was run).

    """
    if j < 1:
        raise WorkflowError(workflow.source, [f"--j {j}: need at least 1 worker"])
    if poll <= 0 or stream_timeout < 0:
        raise WorkflowError(workflow.source, ["--poll must be > 0 and --stream-timeout >= 0"])
    out = echo or (lambda line: print(line, flush=True))
    steps = workflow.until(until)
    streamed = streamed_steps(steps) if stream else frozenset()
    warnings = check_workflow(
        workflow, project.root, until=until, streamed=streamed,
        find_job=lambda text: project.find_job(text.partition(":")[0]) is not None,
    )
    for w in warnings:
        out(f"note: {w}")
    if not dry_run:
        _save_copy(project, workflow)
    runner = _Runner(project, workflow, j=j, poll=poll, stream_timeout=stream_timeout,
                     command=command or f"cryospa run {workflow.source}", echo=out,
                     dry_run=dry_run)
    try:
        if streamed and not runner.run_streamed([s for s in steps if s.name in streamed]):
            return runner.result
        for step in steps:
            if step.name in streamed:
                continue
            record = runner.start(step, stream=False, background=False)
            if record is not None and not dry_run and not runner.check_ended(step, record):
                break
    except _StepRefused as err:
        runner.result.failed = err.step.name
        done = [s.name for s in steps if s.index < err.step.index]
        runner.result.message = (
            f"{err}\n  fix the step and run the workflow again"
            + (f": the steps before it ({', '.join(done)}) will be skipped" if done else "")
        )
    return runner.result
