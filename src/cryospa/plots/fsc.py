"""FSC curves against spatial frequency, with a resolution axis on top."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from cryospa.plots._figure import plt, save_figure

__all__ = ["plot_fsc"]


def plot_fsc(
    path: str | os.PathLike[str],
    inverse_resolution_per_angstrom: np.ndarray,
    curves: dict[str, np.ndarray],
    *,
    thresholds: Sequence[float] = (0.143, 0.5),
    title: str = "Fourier shell correlation",
) -> None:
    """Plot one or more FSC curves against spatial frequency (1/Å) and save a PNG."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, values in curves.items():
        ax.plot(inverse_resolution_per_angstrom, values, label=label, lw=1.6)
    for t in thresholds:
        ax.axhline(t, color="grey", ls="--", lw=0.8)
        ax.text(
            inverse_resolution_per_angstrom[-1], t, f" {t}", va="center", fontsize=8, color="grey"
        )
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlim(0, float(inverse_resolution_per_angstrom[-1]))
    ticks = ax.get_xticks()
    secondary = ax.secondary_xaxis("top", functions=(lambda f: f, lambda f: f))
    secondary.set_xticks(ticks[ticks > 0])
    secondary.set_xticklabels([f"{1 / t:.1f}" for t in ticks[ticks > 0]])
    secondary.set_xlabel("resolution (Å)")
    ax.set_title(title, fontsize=10)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
