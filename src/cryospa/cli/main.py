"""The ``cryospa`` command.

Three kinds of subcommand:

* one module per tool in :mod:`cryospa.cli` (``reconstruct``, ``fsc``, ...): a docstring (its
  help), ``add_args(parser)`` and ``main(args)``;
* the project commands of :mod:`cryospa.cli.project` (``init``, ``jobs``, ``show``,
  ``continue``, ``abort``, ``stop``, ``delete``, ``graph``) and the workflow commands of
  :mod:`cryospa.cli.workflow` (``run``, ``workflow``);
* one subcommand per registered job type (``import movies``, ``subset``, ...), generated from
  the job's declaration by :mod:`cryospa.cli.jobs`.

Only the subcommand being run is imported, so ``--help`` and the start of a job are quick: job
types come from their declarations (:mod:`cryospa.project.job_index`, no job module imported
until one runs), the tool modules import torch inside ``main``, and ``cryospa --help`` reads the
tool modules' docstrings without importing them. Errors of type
:class:`cryospa.errors.CryospaError` are printed as one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

from cryospa import __version__
from cryospa.errors import CryospaError

#: subcommand name -> module under cryospa.cli
SUBCOMMANDS: dict[str, str] = {
    "reconstruct": "reconstruct",
    "reproject": "reproject",
    "fsc": "fsc",
    "simulate": "simulate",
    "demo": "demo",
}


def _tool_doc(module_name: str) -> str:
    """The docstring of ``cryospa.cli.<module_name>``, read without importing the module."""
    spec = importlib.util.find_spec(f"cryospa.cli.{module_name}")
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return (importlib.import_module(f"cryospa.cli.{module_name}").__doc__ or "").strip()
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    return (ast.get_docstring(tree, clean=False) or "").strip()


def build_parser(only: str | None = None, *, listing: bool = False) -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered (or only the command ``only``).

    ``listing``: for ``cryospa --help`` (and unknown commands): the tool subcommands
    (:data:`SUBCOMMANDS`) get their help line but not their options, so that their modules
    (torch) are not imported; :func:`main` parses again with the full parser if a tool is
    chosen this way.
    """
    from cryospa.cli.jobs import register_job_commands
    from cryospa.cli.project import COMMANDS as PROJECT_COMMANDS
    from cryospa.cli.workflow import COMMANDS as WORKFLOW_COMMANDS

    COMMANDS = {**PROJECT_COMMANDS, **WORKFLOW_COMMANDS}

    parser = argparse.ArgumentParser(
        prog="cryospa",
        description="cryospa: cryo-EM single-particle analysis (RELION-compatible files).",
    )
    parser.add_argument("--version", action="version", version=f"cryospa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, command_main) in COMMANDS.items():
        if only is not None and name != only:
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_main=command_main)
    if only is None or (only not in SUBCOMMANDS and only not in COMMANDS):
        register_job_commands(sub, only=only)
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            continue
        if listing and only is None:
            doc = _tool_doc(module_name)
            p = sub.add_parser(name, help=doc.splitlines()[0] if doc else name, description=doc,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            p.set_defaults(_tool_stub=True)
            continue
        module = importlib.import_module(f"cryospa.cli.{module_name}")
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(
            name,
            help=doc.splitlines()[0] if doc else name,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_args(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cryospa`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    first = args_list[0] if args_list and not args_list[0].startswith("-") else None
    parser = build_parser(first) if first is not None else build_parser(listing=True)
    if first is not None and parser._subparsers is not None:
        choices = parser._subparsers._group_actions[0].choices or {}
        if first not in choices:  # unknown command: the full listing gives the full message
            parser = build_parser(listing=True)
    args = parser.parse_args(args_list)
    if getattr(args, "_tool_stub", False):  # a tool reached through the listing (cryospa -- fsc)
        args = build_parser().parse_args(args_list)
    if not getattr(args, "_main", None):
        group_parser = getattr(args, "_group_parser", None)
        (group_parser or parser).print_help()
        return 1
    try:
        result = args._main(args)
    except CryospaError as err:
        print(f"cryospa {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
