"""The ``cryospa`` command: one subcommand per module in :mod:`cryospa.cli`.

Each subcommand module has a docstring (its help), ``add_args(parser)`` and ``main(args)``;
it parses, then calls library code. Errors of type :class:`cryospa.errors.CryospaError`
are printed as one clear line and exit with status 2.
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


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="cryospa",
        description="cryospa: cryo-EM single-particle analysis (RELION-compatible files).",
    )
    parser.add_argument("--version", action="version", version=f"cryospa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 1
    try:
        result = args._main(args)
    except CryospaError as err:
        print(f"cryospa {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
