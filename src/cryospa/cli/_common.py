"""Options shared by several subcommands."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def add_compute_args(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--j`` and ``--batch``."""
    g = parser.add_argument_group("compute")
    g.add_argument(
        "--device",
        default="auto",
        help="where to compute: auto (a CUDA GPU if present, else CPU), cpu, cuda, cuda:N "
        "(default: auto)",
    )
    g.add_argument(
        "--j",
        type=int,
        default=None,
        metavar="N",
        help="number of CPU threads (default: torch's choice, all cores)",
    )
    g.add_argument(
        "--batch",
        type=int,
        default=256,
        metavar="N",
        help="images processed at once; lower it if memory runs short (default: 256)",
    )


def compute_from_args(args: argparse.Namespace) -> torch.device:
    """Apply ``--j`` and return the device of ``--device``."""
    from cryospa.compute.device import resolve_device, set_threads  # imports torch

    set_threads(args.j)
    return resolve_device(args.device)


def show_progress() -> bool:
    """Progress bars only when stderr is a terminal."""
    return sys.stderr.isatty()
