"""Matplotlib without a display, and saving a figure atomically (temporary name, then rename)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["plt", "save_figure"]


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int | None = None) -> None:
    """Save ``fig`` to ``path`` (format from the suffix) through a temporary file, then close it.

    A job killed while saving leaves either the old picture or none, never half a PNG.
    """
    path = os.fspath(path)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{ext or '.png'}"
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
