"""Running jobs: validate, record, run (foreground or detached), continue, abort, stop.

The life of a job::

    submit()         validate parameters, resolve inputs, job-specific checks  -- nothing on
                     disk yet, so bad input leaves no trace
                     -> Project.create_job(): record (scheduled), folder, job.star, note.txt
    run_job()        status running (pid, host) -> the job's steps -> succeeded / failed /
                     aborted, with RELION's RELION_JOB_EXIT_* marker and the reason if it failed
    spawn_background()  the same run_job() in a detached process (own session, stdout / stderr
                     to run.out / run.err), started as ``python -m cryospa.project.runner``
    continue_job()   run_job() again with the stored parameters: committed items and completed
                     iterations are skipped

The runner process is the *leader*: only it writes the database. Per-item jobs hand their items to
an :class:`~cryospa.compute.executor.Executor` (inline for ``--j 1``, a local process pool for
``--j N``, later MPI ranks) and commit each result as it arrives; see that module for how an
MPI or queue executor plugs in. A job killed at any moment (even SIGKILL) leaves a readable
project: the database rolls back the unfinished transaction, every output was written under a
temporary name and renamed, and ``cryospa jobs`` reports the job as failed ("process died")
because its pid is gone.

Streaming (``--stream``): the per-item loop keeps listing the input for new items every
``--poll`` seconds, processes them (in batches of ``--batch-size``), and rewrites the job's
output STAR after each batch so downstream streaming jobs see the new items. It ends when the
upstream jobs have all ended, or for imports when ``cryospa stop JOB`` was given (a stop file in
the job directory) or ``--stream-timeout`` seconds passed without a new item.

For crash tests, ``CRYOSPA_DEBUG_ITEM_DELAY`` (seconds) makes the leader wait after each item
has written its outputs and before it is committed, widening the window a kill can hit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from cryospa.compute.executor import make_executor
from cryospa.errors import CryospaError, ParameterError
from cryospa.project.project import (
    RELION_ABORT_FILE,
    STOP_FILE,
    JobRecord,
    Project,
    pid_alive,
    this_host,
)
from cryospa.project.schema import (
    IterativeJob,
    JobContext,
    JobType,
    PerItemJob,
    ResolvedInput,
    RunOptions,
    get_job_type,
    natural_key,
    validate_params,
)

__all__ = [
    "JobAborted",
    "abort_job",
    "continue_job",
    "run_job",
    "spawn_background",
    "stop_job",
    "submit",
]

_TMP_SUFFIX = ".tmp"


class JobAborted(Exception):
    """Raised inside a running job when it is aborted (SIGTERM or RELION's abort file)."""


# --------------------------------------------------------------------------------------
# Submitting
# --------------------------------------------------------------------------------------


def submit(
    project: Project,
    job_type: JobType,
    raw_params: Mapping[str, Any],
    raw_inputs: Mapping[str, Sequence[str]],
    *,
    run: RunOptions | None = None,
    alias: str | None = None,
    background: bool = False,
    command: str = "",
) -> JobRecord:
    """Validate everything, then create the job and run it (here or detached).

    Every check (parameters, files, patterns, inputs and their types, the job's own
    :meth:`~cryospa.project.schema.JobType.check`, the alias) runs before anything is written,
    so bad input raises :class:`CryospaError` and leaves no job behind.

    Returns
    -------
    JobRecord
        The job as recorded at the end (foreground) or once started (background).

    """
    run = run or RunOptions()
    if run.j < 1:
        raise ParameterError(f"--j {run.j}: need at least 1 worker")
    if run.stream and not job_type.streamable:
        raise ParameterError(f"{job_type.name} cannot stream (--stream)")
    if run.poll <= 0:
        raise ParameterError(f"--poll {run.poll}: must be > 0 seconds")
    if run.batch_size < 0 or run.stream_timeout < 0:
        raise ParameterError("--batch-size and --stream-timeout must be >= 0")
    params = validate_params(job_type, raw_params, project_dir=project.root, stream=run.stream)
    declared = {i.name: i for i in job_type.inputs}
    unknown = sorted(set(raw_inputs) - set(declared))
    if unknown:
        raise ParameterError(f"{job_type.name}: unknown input(s) {', '.join(unknown)}")
    resolved: dict[str, list[ResolvedInput]] = {}
    for inp in job_type.inputs:
        specs = list(raw_inputs.get(inp.name) or [])
        if not specs:
            if inp.required:
                types = " or ".join(str(t) for t in inp.types)
                raise ParameterError(f"{job_type.name}: input {inp.option} (a {types}) is required")
            continue
        if len(specs) > 1 and not inp.multiple:
            raise ParameterError(f"{inp.option} takes one input, got {len(specs)}")
        resolved[inp.name] = [project.resolve_input(inp, s, stream=run.stream) for s in specs]
    job_type.check(params, resolved, project.root, run)
    if alias is not None:
        project.check_alias(alias)
    record = project.create_job(
        job_type, params, resolved, run=run, alias=alias, command=command
    )
    if background:
        return spawn_background(project, record.id)
    return run_job(project, record.id)


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


class _Tee:
    """Write to a terminal stream and a log file."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream = stream
        self.log = log

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


@contextmanager
def _job_logs(folder: Path, tee: bool) -> Iterator[None]:
    """In the foreground, copy stdout / stderr into run.out / run.err (as RELION)."""
    if not tee:
        yield
        return
    with open(folder / "run.out", "a", encoding="utf-8") as out, open(
        folder / "run.err", "a", encoding="utf-8"
    ) as err:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = _Tee(old_out, out)
        sys.stderr = _Tee(old_err, err)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = old_out, old_err


@contextmanager
def _sigterm_aborts() -> Iterator[None]:
    """Turn SIGTERM into :class:`JobAborted` while the job runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise JobAborted("aborted (SIGTERM)")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _remove_temporaries(folder: Path) -> None:
    """Delete temporary files left by a killed writer (``.name.<pid>.<hex>.tmp``)."""
    if not folder.is_dir():
        return
    for path in folder.rglob(".*" + _TMP_SUFFIX):
        if path.is_dir() and not path.is_symlink():
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def run_job(
    project: Project, job_id: int, *, j: int | None = None, tee_logs: bool = True
) -> JobRecord:
    """Run (or continue) a recorded job in this process; return its final record.

    A job that raises is recorded as failed with the reason (and the traceback in run.err);
    SIGTERM or RELION's ``RELION_JOB_ABORT_NOW`` file records it as aborted. Only a
    :class:`CryospaError` about the request itself (the job is running elsewhere, deleted)
    is raised.
    """
    project.refresh()
    record = project.job_by_id(job_id)
    if record.deleted:
        raise CryospaError(f"{record.name} was deleted (it is in Trash/)")
    me = os.getpid()
    if record.status == "running" and record.pid != me:
        raise CryospaError(
            f"{record.label} is already running (pid {record.pid} on {record.host})"
        )
    job_type = get_job_type(record.type, record.module)
    run = record.run
    if j is not None:
        run.j = j
    ctx = JobContext(
        project_dir=project.root,
        job_id=record.id,
        job_dir=record.dir,
        params=dict(record.params),
        inputs=project.inputs(record.id),
        run=run,
    )
    folder = project.path(record.dir)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_temporaries(folder)
    (folder / STOP_FILE).unlink(missing_ok=True)
    project.mark_running(record.id, pid=me, host=this_host())
    with _job_logs(folder, tee_logs), _sigterm_aborts():
        try:
            if isinstance(job_type, PerItemJob):
                summary = _run_per_item(project, job_type, ctx)
            elif isinstance(job_type, IterativeJob):
                summary = _run_iterative(project, job_type, ctx)
            else:
                raise CryospaError(f"job type {record.type!r} is neither per-item nor iterative")
            project.finish(record.id, "succeeded", summary=summary, only_if_pid=me)
            print(f"{record.name}: done. {summary}", flush=True)
        except (JobAborted, KeyboardInterrupt) as err:
            project.finish(record.id, "aborted", error=str(err) or "aborted", only_if_pid=me)
            print(f"{record.name}: aborted", file=sys.stderr, flush=True)
        except CryospaError as err:
            project.finish(record.id, "failed", error=str(err), only_if_pid=me)
            print(f"{record.name}: failed: {err}", file=sys.stderr, flush=True)
        except Exception as err:
            traceback.print_exc()
            project.finish(
                record.id, "failed", error=f"{type(err).__name__}: {err}", only_if_pid=me
            )
            print(f"{record.name}: failed: {type(err).__name__}: {err}", file=sys.stderr,
                  flush=True)
    return project.job_by_id(record.id)


def _check_abort(ctx: JobContext) -> None:
    if ctx.path(RELION_ABORT_FILE).exists():
        raise JobAborted(f"aborted ({RELION_ABORT_FILE})")


def _progress(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not sys.stderr.isatty(),
                leave=False)


def _upstream_running(project: Project, ctx: JobContext) -> bool:
    sources = {r.source_job for rs in ctx.inputs.values() for r in rs if r.source_job}
    if not sources:
        return False
    project.refresh()
    return any(project.job_by_id(s).status in ("running", "scheduled") for s in sources)


def _run_per_item(project: Project, job_type: PerItemJob, ctx: JobContext) -> str:
    job_type.prepare(ctx)
    project.clear_failed_items(ctx.job_id)
    done = project.item_results(ctx.job_id)
    failed: dict[str, str] = {}
    delay = float(os.environ.get("CRYOSPA_DEBUG_ITEM_DELAY", "0") or 0)
    has_upstream = any(r.source_job for rs in ctx.inputs.values() for r in rs)
    summary = ""
    finalized_at = -1

    def finalize() -> str:
        nonlocal finalized_at
        results = sorted(done.items(), key=lambda kv: natural_key(kv[0]))
        job_type.finalize(ctx, results)
        text = job_type.summary(ctx, results)
        project.set_summary(ctx.job_id, text)
        finalized_at = len(done)
        return text

    executor = make_executor(ctx.run.j)
    last_new = time.monotonic()
    stopping = False
    grace_until = 0.0
    try:
        while True:
            _check_abort(ctx)
            keys = [k for k in job_type.list_items(ctx) if k not in done and k not in failed]
            if keys or ctx.scratch.get("waiting"):
                last_new = time.monotonic()
            size = ctx.run.batch_size if ctx.run.stream and ctx.run.batch_size > 0 else len(keys)
            for start in range(0, len(keys), max(size, 1)):
                chunk = keys[start : start + max(size, 1)]
                bar = _progress(len(chunk), ctx.job_name)
                for outcome in executor.map_unordered(job_type.process_item, ctx, chunk):
                    if delay:
                        time.sleep(delay)
                    if outcome.ok and outcome.result is not None:
                        project.commit_item(ctx.job_id, outcome.key, ok=True,
                                            result=outcome.result)
                        done[outcome.key] = outcome.result
                    else:
                        error = outcome.error or "no result"
                        project.commit_item(ctx.job_id, outcome.key, ok=False, result=error)
                        failed[outcome.key] = error
                        ctx.log(f"{outcome.key}: failed: {error}")
                        if outcome.traceback:
                            print(outcome.traceback, file=sys.stderr, flush=True)
                    bar.update(1)
                    _check_abort(ctx)
                bar.close()
                if ctx.run.stream:
                    summary = finalize()
                    ctx.log(f"{ctx.job_name}: {summary}")
            if not ctx.run.stream:
                break
            if stopping:
                # a look after the stop was seen: end once nothing new is ready or on its way
                if not keys and (
                    not ctx.scratch.get("waiting") or time.monotonic() > grace_until
                ):
                    break
            else:
                stopping = (
                    ctx.path(STOP_FILE).exists()
                    or job_type.stream_done(ctx)
                    or (has_upstream and not _upstream_running(project, ctx))
                    or (
                        ctx.run.stream_timeout > 0
                        and time.monotonic() - last_new > ctx.run.stream_timeout
                    )
                )
                if stopping:
                    ctx.log(f"{ctx.job_name}: end of stream; collecting the last items")
                    grace_until = (
                        time.monotonic() + job_type.stream_grace(ctx) + 3 * ctx.run.poll
                    )
            _sleep(ctx, ctx.run.poll)
    finally:
        executor.close()
    failure = None
    if failed:
        first = next(iter(failed.items()))
        failure = CryospaError(
            f"{len(failed)} of {len(failed) + len(done)} items failed (first: {first[0]}: "
            f"{first[1]}); fix the cause and `cryospa continue {ctx.job_name}` to retry them"
        )
    if not done:
        raise failure or CryospaError("no items to process (nothing matched the input)")
    if finalized_at != len(done) or not ctx.run.stream:
        summary = finalize()
    if failure is not None:
        raise failure
    return summary


def _sleep(ctx: JobContext, seconds: float) -> None:
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        _check_abort(ctx)
        time.sleep(min(left, 0.25))


def _run_iterative(project: Project, job_type: IterativeJob, ctx: JobContext) -> str:
    job_type.prepare(ctx)
    last, info = 0, {}
    for it, path, stored in project.iterations(ctx.job_id):
        if it != last + 1 or not ctx.abs(path).exists():
            break
        last, info = it, stored
    if last:
        ctx.log(f"{ctx.job_name}: continuing after iteration {last}")
    n = job_type.n_iterations(ctx)
    if not (last and job_type.converged(ctx, last, info)):
        bar = _progress(n - last, ctx.job_name)
        for it in range(last + 1, n + 1):
            _check_abort(ctx)
            info = job_type.run_iteration(ctx, it)
            project.commit_iteration(ctx.job_id, it, ctx.rel(job_type.checkpoint(ctx, it)), info)
            last = it
            bar.update(1)
            if job_type.converged(ctx, it, info):
                break
        bar.close()
    job_type.finalize(ctx, last)
    return job_type.summary(ctx, last, info)


# --------------------------------------------------------------------------------------
# Background, continue, abort, stop
# --------------------------------------------------------------------------------------


def spawn_background(project: Project, job_id: int, *, j: int | None = None) -> JobRecord:
    """Start ``run_job`` in a detached process (own session); output to run.out / run.err.

    Waits (up to 30 s) until the child has recorded itself as running, so the caller sees a
    pid; a child that dies before that is recorded as failed with the end of its run.err.
    """
    record = project.job_by_id(job_id)
    folder = project.path(record.dir)
    cmd = [sys.executable, "-m", "cryospa.project.runner", str(project.root), str(job_id)]
    if j is not None:
        cmd += ["--j", str(j)]
    # the child sees the modules this process sees (job types defined outside cryospa)
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(
        paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]))
    with open(folder / "run.out", "a") as out, open(folder / "run.err", "a") as err:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=project.root, env=env,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = project.job_by_id(job_id)
        if current.pid == proc.pid and current.status != "scheduled":
            break
        code = proc.poll()
        if code is not None:
            current = project.job_by_id(job_id)
            if current.pid != proc.pid:
                tail = _tail(folder / "run.err", 5)
                project.finish(job_id, "failed", error=f"background process exited ({code}): "
                               f"{tail}")
            break
        time.sleep(0.05)
    # do not leave a zombie behind when the caller lives on (tests, web server)
    threading.Thread(target=proc.wait, daemon=True).start()
    return project.job_by_id(job_id)


def _tail(path: Path, n: int) -> str:
    if not path.is_file():
        return ""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return " | ".join(lines[-n:])


def continue_job(
    project: Project,
    ref: str | int,
    *,
    background: bool = False,
    j: int | None = None,
    command: str = "",
) -> JobRecord:
    """Run a job again with its stored parameters, skipping what is already done."""
    project.refresh()
    record = project.job(ref)
    if record.deleted:
        raise CryospaError(f"{record.name} was deleted (it is in Trash/)")
    if record.status == "running":
        raise CryospaError(
            f"{record.label} is running (pid {record.pid} on {record.host}); abort it first"
        )
    job_type = get_job_type(record.type, record.module)
    project.write_job_star(record, job_type, project.inputs(record.id), is_continue=True)
    project.append_note(record, command)
    if background:
        return spawn_background(project, record.id, j=j)
    return run_job(project, record.id, j=j)


def abort_job(project: Project, ref: str | int) -> JobRecord:
    """Abort a running job: RELION's abort file, SIGTERM to its process group, status aborted."""
    project.refresh()
    record = project.job(ref)
    if record.status != "running":
        raise CryospaError(f"{record.label} is not running (status {record.status})")
    project.path(record.dir).joinpath(RELION_ABORT_FILE).touch()
    if record.host == this_host() and record.pid and pid_alive(record.pid):
        try:
            if os.getpgid(record.pid) == record.pid and record.pid != os.getpid():
                os.killpg(record.pid, signal.SIGTERM)
            elif record.pid != os.getpid():
                os.kill(record.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    project.finish(record.id, "aborted", error="aborted by the user",
                   only_if_pid=record.pid)
    return project.job_by_id(record.id)


def stop_job(project: Project, ref: str | int) -> JobRecord:
    """Ask a streaming job to finish gracefully (process what has arrived, then end)."""
    project.refresh()
    record = project.job(ref)
    if record.status != "running":
        raise CryospaError(f"{record.label} is not running (status {record.status})")
    if not record.run.stream:
        raise CryospaError(f"{record.label} is not streaming: use `cryospa abort` to stop it")
    project.path(record.dir).joinpath(STOP_FILE).touch()
    return record


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m cryospa.project.runner PROJECT JOB_ID [--j N]``: the detached runner."""
    import argparse

    parser = argparse.ArgumentParser(prog="cryospa-runner", description=_main.__doc__)
    parser.add_argument("project")
    parser.add_argument("job_id", type=int)
    parser.add_argument("--j", type=int, default=None)
    args = parser.parse_args(argv)
    project = Project.open(args.project)
    record = run_job(project, args.job_id, j=args.j, tee_logs=False)
    return 0 if record.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(_main())
