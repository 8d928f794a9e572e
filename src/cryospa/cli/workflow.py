"""Workflow commands: ``cryospa run FILE`` and ``cryospa workflow template NAME``.

Each command is a ``(help, add_args, main)`` entry of :data:`COMMANDS`, registered by
:mod:`cryospa.cli.main` as the project commands are. The work is done by
:mod:`cryospa.workflow`; this module only parses the command line and prints.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from cryospa.errors import CryospaError
from cryospa.project.project import Project

__all__ = ["COMMANDS"]

_RUN_HELP = "run a workflow file: a chain of jobs (skips finished steps, continues killed ones)"
_RUN_DESCRIPTION = """\
Run the steps of a workflow file in order, each as a job of the project (see
`cryospa workflow template tutorial` for a commented example). The whole file is checked
before anything runs. Running it again skips the steps whose job finished with the same
parameters and inputs, continues a step whose job was killed or failed, and re-runs a step whose
parameters changed (and the steps that use it). The step -> job table is written to
Workflows/<name>.json in the project.

  cryospa workflow template tutorial > my.yaml      # then edit paths and acquisition values
  cryospa run my.yaml --project MyProject
  cryospa run my.yaml --project MyProject --until particles
  cryospa run my.yaml --project MyProject --stream  # preprocess while the movies arrive
"""


def _run_args(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = _RUN_DESCRIPTION
    p.add_argument("file", help="the workflow file (YAML)")
    p.add_argument("--project", default=None, metavar="DIR",
                   help="the project folder (or a folder inside it); made a new project when "
                   "it is not in one (default: found from the working directory upwards)")
    p.add_argument("--until", default=None, metavar="STEP",
                   help="stop after this step (the steps after it are checked, not run)")
    p.add_argument("--stream", action="store_true",
                   help="run the preprocessing steps (import, motion correction, CTF, picking, "
                   "extraction) at the same time in streaming mode, each in the background, "
                   "then the rest")
    p.add_argument("--stream-timeout", "--stream_timeout", dest="stream_timeout", type=float,
                   default=120.0, metavar="SECONDS",
                   help="with --stream: the import ends this many seconds after the last new "
                   "movie; 0: only with `cryospa stop JOB` (default: 120)")
    p.add_argument("--poll", type=float, default=5.0, metavar="SECONDS",
                   help="with --stream: seconds between looks for new items (default: 5)")
    p.add_argument("--j", type=int, default=1, metavar="N",
                   help="worker processes of the steps that do not set j (default: 1)")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="check the file and say which steps would be skipped, continued or "
                   "run; run nothing")


def _existing_project(path: str | None) -> Project | None:
    """The project ``--project`` names (or the one around it), None if it is a new one."""
    if path is None:
        return Project.open(None)
    folder = Path(path)
    if folder.exists():
        try:
            return Project.open(folder)  # this folder's project, or the one it is in
        except CryospaError:
            pass
    return None


def _run_main(args: argparse.Namespace) -> int:
    from cryospa.workflow.runner import run_workflow, streamed_steps
    from cryospa.workflow.spec import check_workflow, load_workflow

    workflow = load_workflow(args.file, strict=False)
    project = _existing_project(args.project)
    if project is None:  # check everything before the new project is made
        check_workflow(workflow, Path(args.project).absolute(), until=args.until,
                       streamed=streamed_steps(workflow.until(args.until)) if args.stream
                       else frozenset())
        project = Project.init(args.project)
        print(f"new cryospa project in {project.root}", flush=True)
    result = run_workflow(
        project, workflow, until=args.until, stream=args.stream, j=args.j, poll=args.poll,
        stream_timeout=args.stream_timeout, dry_run=args.dry_run,
        command="cryospa " + shlex.join(sys.argv[1:]),
    )
    if not result.ok:
        print(f"cryospa run: {result.message}", file=sys.stderr)
        return 1
    counts: dict[str, int] = {}
    for r in result.steps:
        counts[r.action] = counts.get(r.action, 0) + 1
    done = ", ".join(f"{n} {a}" for a, n in counts.items())
    last = result.steps[-1] if result.steps else None
    where = f"; last: {last.step} in {last.folder}" if last is not None and last.folder else ""
    print(f"workflow {workflow.name}: {len(result.steps)} steps ({done}) in project "
          f"{project.root}{where}", flush=True)
    return 0


def _workflow_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="workflow_command", metavar="COMMAND")
    t = sub.add_parser("template", help="print a shipped workflow file (e.g. tutorial) to "
                       "edit and run", description="Print a shipped workflow file: "
                       "cryospa workflow template tutorial > my.yaml")
    t.add_argument("name", nargs="?", default=None,
                   help="the template (none given: list them)")
    c = sub.add_parser("check", help="check a workflow file without running it",
                       description="Check a workflow file: its shape, job types, parameters, "
                       "inputs and files (against a project when --project is given).")
    c.add_argument("file", help="the workflow file (YAML)")
    c.add_argument("--project", default=None, metavar="DIR",
                   help="check files and jobs against this project (default: none; files "
                   "relative to the working directory)")
    c.add_argument("--until", default=None, metavar="STEP",
                   help="the last step that would run")
    p.set_defaults(_workflow_parser=p)


def _workflow_main(args: argparse.Namespace) -> int:
    from cryospa.workflow.spec import check_workflow, load_workflow
    from cryospa.workflow.templates import template_names, template_text

    if args.workflow_command == "template":
        if args.name is None:
            print("\n".join(template_names()))
            return 0
        sys.stdout.write(template_text(args.name))
        return 0
    if args.workflow_command == "check":
        workflow = load_workflow(args.file, strict=False)
        if args.project is not None:
            project = Project.open(args.project)
            root = project.root
            warnings = check_workflow(
                workflow, root, until=args.until,
                find_job=lambda text: project.find_job(text.partition(":")[0]) is not None)
        else:
            root = Path.cwd()
            warnings = check_workflow(workflow, root, until=args.until)
        for w in warnings:
            print(f"note: {w}")
        steps = workflow.until(args.until)
        print(f"{args.file}: {len(steps)} steps to run ({', '.join(s.name for s in steps)}): "
              "no problem found")
        return 0
    args._workflow_parser.print_help()
    return 1


Command = tuple[str, Callable[[argparse.ArgumentParser], None],
                Callable[[argparse.Namespace], int]]

#: name -> (help, add_args, main)
COMMANDS: dict[str, Command] = {
    "run": (_RUN_HELP, _run_args, _run_main),
    "workflow": ("workflow files: `workflow template tutorial` prints the tutorial's chain, "
                 "`workflow check FILE` checks one", _workflow_args, _workflow_main),
}
