"""Project commands: init, jobs, show, continue, abort, stop, delete, graph.

Each command is a ``(doc, add_args, main)`` entry of :data:`COMMANDS`; :mod:`cryospa.cli.main`
registers them next to the one-module subcommands and the job types.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a command runs: the project layer loads pandas and the io layer
    from cryospa.project.project import JobRecord, Project


def _open(folder: str | None) -> Project:
    from cryospa.project.project import Project

    return Project.open(folder)


def _project_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project",
        default=None,
        metavar="DIR",
        help="the project folder (default: found from the working directory upwards)",
    )


def _command_line() -> str:
    return "cryospa " + shlex.join(sys.argv[1:])


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def _duration(job: JobRecord) -> str:
    if not job.started:
        return "-"
    end = job.ended or (time.time() if job.status == "running" else job.started)
    seconds = max(0, int(end - job.started))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ---------------------------------------------------------------------------------------
def _init_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default=".", help="project folder (default: here)")


def _init_main(args: argparse.Namespace) -> int:
    from cryospa.project.project import Project

    project = Project.init(args.dir)
    print(f"new cryospa project in {project.root}")
    return 0


def _jobs_args(p: argparse.ArgumentParser) -> None:
    _project_arg(p)
    p.add_argument("--all", action="store_true", help="include deleted jobs")


def _jobs_main(args: argparse.Namespace) -> int:
    project = _open(args.project)
    project.refresh()
    rows = [("job", "type", "alias", "status", "start", "duration", "host", "summary")]
    for j in project.jobs(include_deleted=args.all):
        status = j.status + (" (deleted)" if j.deleted else "")
        note = j.summary or ""
        if j.status == "failed" and j.error:
            note = (note + "; " if note else "") + j.error.splitlines()[0]
        rows.append((j.name, j.type, j.alias or "-", status, _when(j.started), _duration(j),
                     j.host or "-", note[:100]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1])
    return 0


def _job_ref_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job003, 3, an alias, or Import/job003/")
    _project_arg(p)


def _tail(path: Path, n: int) -> list[str]:
    if not path.is_file():
        return []
    return path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:]


def _show_main(args: argparse.Namespace) -> int:
    project = _open(args.project)
    project.refresh()
    job = project.job(args.job)
    print(f"{job.name}  {job.type}" + (f"  alias {job.alias}" if job.alias else ""))
    print(f"  folder:   {job.dir}/" + ("  (deleted: in Trash/)" if job.deleted else ""))
    print(f"  status:   {job.status}")
    print(f"  started:  {_when(job.started)}   duration {_duration(job)}   host {job.host or '-'}"
          f"   pid {job.pid or '-'}")
    if job.summary:
        print(f"  summary:  {job.summary}")
    if job.error:
        print(f"  error:    {job.error}")
    print("  parameters:")
    for k, v in job.params.items():
        print(f"    {k} = {v}")
    run = job.run
    print(f"    (run: --j {run.j}" + (f", --stream, --poll {run.poll:g}, --batch-size "
                                      f"{run.batch_size}" if run.stream else "") + ")")
    inputs = project.inputs(job.id)
    if inputs:
        print("  inputs:")
        for name, rs in inputs.items():
            for r in rs:
                print(f"    {name}: {r.describe()}  {r.path}")
    outputs = project.outputs(job.id)
    if outputs:
        print("  outputs:")
        for o in outputs:
            exists = "" if project.path(o.path).exists() else "  (not written yet)"
            print(f"    {o.name} ({o.node_type}): {o.path}{exists}")
    done = project.item_results(job.id)
    failed = project.item_results(job.id, "failed")
    if done or failed:
        print(f"  items:    {len(done)} done, {len(failed)} failed")
        for key, res in list(failed.items())[:5]:
            print(f"    failed {key}: {res.get('error', '')}")
    its = project.iterations(job.id)
    if its:
        print(f"  iterations: {len(its)} completed (last: {its[-1][1]})")
    deps = project.dependents(job.id)
    if deps:
        print("  used by:  " + ", ".join(d.label for d in deps))
    folder = project.path(job.dir) if not job.deleted else project.root / "Trash" / job.dir
    for name, n in (("run.out", 10), ("run.err", 10)):
        lines = _tail(folder / name, n)
        if lines:
            print(f"  {name} (last {len(lines)} lines):")
            for line in lines:
                print("    " + line)
    return 0


def _continue_args(p: argparse.ArgumentParser) -> None:
    _job_ref_args(p)
    p.add_argument("--background", action="store_true", help="run detached")
    p.add_argument("--j", type=int, default=None, metavar="N",
                   help="worker processes (default: as the job was run)")


def _continue_main(args: argparse.Namespace) -> int:
    from cryospa.project.runner import continue_job

    project = _open(args.project)
    record = continue_job(project, args.job, background=args.background, j=args.j,
                          command=_command_line())
    return _report(record)


def _report(record: JobRecord) -> int:
    if record.status == "running":
        print(f"{record.name} running in the background (pid {record.pid} on {record.host}); "
              f"log in {record.dir}/run.out")
        return 0
    if record.status == "succeeded":
        return 0
    print(f"{record.name} {record.status}: {record.error}", file=sys.stderr)
    return 1


def _abort_main(args: argparse.Namespace) -> int:
    from cryospa.project.runner import abort_job

    project = _open(args.project)
    record = abort_job(project, args.job)
    print(f"{record.name} aborted")
    return 0


def _stop_main(args: argparse.Namespace) -> int:
    from cryospa.project.runner import stop_job

    project = _open(args.project)
    record = stop_job(project, args.job)
    print(f"{record.name} will finish after the items already arrived")
    return 0


def _delete_main(args: argparse.Namespace) -> int:
    project = _open(args.project)
    job = project.job(args.job)
    dependents = project.delete(job.id)
    print(f"{job.name} moved to Trash/{job.dir}/")
    if dependents:
        names = ", ".join(d.label for d in dependents)
        print(f"warning: {names} used its outputs; their inputs now point into the trash",
              file=sys.stderr)
    return 0


def _graph_args(p: argparse.ArgumentParser) -> None:
    _project_arg(p)
    p.add_argument("--o", default=None, metavar="PNG",
                   help="also draw the graph into this picture (.png / .svg / .pdf)")


def _graph_main(args: argparse.Namespace) -> int:
    from cryospa.project.graph import graph_picture, graph_text

    project = _open(args.project)
    project.refresh()
    print(graph_text(project))
    if args.o:
        graph_picture(project, args.o)
        print(f"picture: {args.o}")
    return 0


Command = tuple[str, Callable[[argparse.ArgumentParser], None],
                Callable[[argparse.Namespace], int]]

#: name -> (help, add_args, main)
COMMANDS: dict[str, Command] = {
    "init": ("make a folder a cryospa project (project.sqlite, default_pipeline.star)",
             _init_args, _init_main),
    "jobs": ("list the jobs: id, type, alias, status, start, duration, host, summary",
             _jobs_args, _jobs_main),
    "show": ("one job: parameters, inputs, outputs, items, log tail, summary",
             _job_ref_args, _show_main),
    "continue": ("run a job again with its stored parameters, skipping finished items and "
                 "iterations", _continue_args, _continue_main),
    "abort": ("abort a running job (SIGTERM to its processes; status aborted)",
              _job_ref_args, _abort_main),
    "stop": ("end a streaming job gracefully (it processes what has arrived, then finishes)",
             _job_ref_args, _stop_main),
    "delete": ("move a job to Trash/ (warns about jobs that use it)",
               _job_ref_args, _delete_main),
    "graph": ("provenance: which job made what from what (text; --o for a picture)",
              _graph_args, _graph_main),
}
