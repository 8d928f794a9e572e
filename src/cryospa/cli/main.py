"""The ``cryospa`` command.

Three kinds of subcommand:

* one module per tool in :mod:`cryospa.cli` (``reconstruct``, ``fsc``, ...): a docstring (its
  help), ``add_args(parser)`` and ``main(args)``;
* the project commands of :mod:`cryospa.cli.project` (``init``, ``jobs``, ``show``,
  ``continue``, ``abort``, ``stop``, ``delete``, ``graph``);
* one subcommand per registered job type (``import movies``, ``subset``, ...), generated from
  the job's declaration by :mod:`cryospa.cli.jobs`.

Only the subcommand being run is imported (``cryospa jobs`` does not load torch). Errors of
type :class:`cryospa.errors.CryospaError` are printed as one clear line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cryospa import __version__
from cryospa.errors import CryospaError

#: subcommand name -> module under cryospa.cli
SUBCOMMANDS: dict[str, str] = {
    "reconstruct": "reconstruct",
    "reproject": "reproject",
    "fsc": "fsc",
    "simulate": "simulate",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered (or only the command ``only``)."""
    from cryospa.cli.jobs import register_job_commands
    from cryospa.cli.project import COMMANDS

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
    parser = build_parser(first)
    if first is not None and parser._subparsers is not None:
        choices = parser._subparsers._group_actions[0].choices or {}
        if first not in choices:  # unknown command: the full parser gives the full message
            parser = build_parser()
    args = parser.parse_args(args_list)
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
