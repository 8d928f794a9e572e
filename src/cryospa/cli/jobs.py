"""Job-type subcommands, generated from the job declarations (:mod:`cryospa.project.schema`).

``cryospa import movies ...`` -> the job type named "import movies": a two-word name becomes a
command group (``import``) with one subcommand per job type (``movies``, ``micrographs``, ...).
The options, their help (unit, default, range) and the validation all come from the job's
declaration; this module only turns the parsed options into a
:func:`~cryospa.project.runner.submit`.

The declarations come from :mod:`cryospa.project.job_index` (no job module is imported to build
the parser); the job that runs is imported alone, by :func:`_job_main`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from cryospa.project.job_index import job_declarations, job_module
from cryospa.project.schema import (
    JobType,
    add_job_arguments,
    describe_job_type,
    get_job_type,
    params_from_namespace,
)

__all__ = ["job_groups", "register_job_commands"]


def job_groups() -> dict[str, list[type[JobType]]]:
    """First word of the job type name -> job types (declarations of every built-in type)."""
    groups: dict[str, list[type[JobType]]] = {}
    for name, cls in sorted(job_declarations().items()):
        groups.setdefault(name.split()[0], []).append(cls)
    return groups


def register_job_commands(sub: Any, only: str | None = None) -> None:
    """Add the job-type subcommands to the top-level subparsers ``sub``."""
    for group, classes in job_groups().items():
        if only is not None and group != only:
            continue
        if len(classes) == 1 and len(classes[0].name.split()) == 1:
            jt = classes[0]()
            p = sub.add_parser(group, help=jt.one_line(), description=describe_job_type(jt),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            _add_job(p, jt)
            continue
        gp = sub.add_parser(group, help=f"{group} jobs: "
                            + ", ".join(c.name.split(" ", 1)[1] for c in classes))
        gsub = gp.add_subparsers(dest="job_kind", metavar="KIND")
        gp.set_defaults(_group_parser=gp)
        for cls in classes:
            jt = cls()
            p = gsub.add_parser(cls.name.split(" ", 1)[1], help=jt.one_line(),
                                description=describe_job_type(jt),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
            _add_job(p, jt)


def _add_job(parser: argparse.ArgumentParser, jt: JobType) -> None:
    add_job_arguments(parser, jt)
    parser.set_defaults(_main=_job_main, _job_type=jt.name, _job_module=job_module(type(jt)))


def _job_main(args: argparse.Namespace) -> int:
    from cryospa.project.project import Project
    from cryospa.project.runner import submit

    jt = get_job_type(args._job_type, args._job_module)
    params, inputs, run = params_from_namespace(jt, args)
    project = Project.open(args.project)
    record = submit(
        project, jt, params, inputs, run=run, alias=args.alias, background=args.background,
        command="cryospa " + shlex.join(sys.argv[1:]),
    )
    if record.status == "running":
        print(f"{record.name} running in the background (pid {record.pid}); log in "
              f"{record.dir}/run.out")
        return 0
    if record.status == "succeeded":
        return 0
    print(f"{record.name} {record.status}: {record.error}", file=sys.stderr)
    return 1
