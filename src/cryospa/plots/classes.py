"""Gallery of 2D class averages (largest class first); particles' amplitudes in their classes."""

from __future__ import annotations

import math
import os

import numpy as np

from cryospa.plots._figure import plt, save_figure

__all__ = ["class_gallery", "gallery_order", "plot_amplitude_histogram"]


def gallery_order(fractions: np.ndarray) -> np.ndarray:
    """Class indices (0-based) from the largest class to the smallest (ties: lower number first)."""
    f = np.asarray(fractions, dtype=np.float64)
    return np.lexsort((np.arange(f.size), -f))


def class_gallery(
    images: np.ndarray,
    fractions: np.ndarray,
    resolutions_angstrom: np.ndarray,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    columns: int = 0,
    selected: np.ndarray | None = None,
    captions: list[str] | None = None,
) -> np.ndarray:
    """Save a grid of class averages sorted by class size, each labelled.

    Parameters
    ----------
    images
        ``(K, n, n)`` class averages.
    fractions
        ``(K,)`` class distribution (fraction of the particles).
    resolutions_angstrom
        ``(K,)`` estimated resolution of each class (999: none).
    path
        Output picture (PNG), written atomically.
    title
        Figure title.
    columns
        Images per row (0: about square).
    selected
        ``(K,)`` booleans: a green frame around selected classes, a red one around the others.
    captions
        ``K`` extra caption lines (e.g. a score), one per class.

    Returns
    -------
    np.ndarray
        The order shown (0-based class indices).
    """
    k = int(images.shape[0])
    order = gallery_order(fractions)
    cols = columns if columns > 0 else max(1, math.ceil(math.sqrt(k)))
    rows = max(1, math.ceil(k / cols))
    height = 1.75 + (0.25 if captions is not None else 0.0)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, height * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for slot, cls in enumerate(order):
        ax = axes.flat[slot]
        img = np.asarray(images[cls], dtype=np.float64)
        lo, hi = np.percentile(img, [1, 99.5]) if np.ptp(img) > 0 else (0.0, 1.0)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower")
        res = float(resolutions_angstrom[cls])
        res_text = f"{res:.1f} Å" if res < 999 else "-"
        text = f"#{cls + 1}  {100 * float(fractions[cls]):.1f} %\n{res_text}"
        if captions is not None:
            text += "\n" + captions[cls]
        ax.set_title(text, fontsize=7)
        if selected is not None:
            colour = "tab:green" if bool(selected[cls]) else "tab:red"
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2.5)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return order


def plot_amplitude_histogram(
    path: str | os.PathLike[str], relative: np.ndarray, threshold: float, *, title: str = ""
) -> None:
    """Save a PNG histogram of particles' signal amplitudes relative to their class average.

    Parameters
    ----------
    path
        Output PNG.
    relative
        ``(P,)`` amplitude (of the weakest half) of each particle relative to its class's and
        micrograph's median (1 = a whole particle of its class).
    threshold
        Particles below it are removed (a vertical line).
    title
        Figure title.
    """
    values = np.asarray(relative, dtype=float)
    values = values[np.isfinite(values)]
    fig, ax = plt.subplots(figsize=(6.0, 3.2), dpi=110)
    if values.size:
        lo = min(float(np.percentile(values, 0.5)), threshold) - 0.05
        hi = float(np.percentile(values, 99.5)) + 0.05
        edges = np.linspace(lo, max(hi, lo + 0.1), 61).tolist()
        clipped = np.clip(values, edges[0], edges[-1])
        ax.hist(clipped[clipped >= threshold], bins=edges, color="#4477aa", label="kept")
        ax.hist(clipped[clipped < threshold], bins=edges, color="#cc3311",
                label="removed (below the threshold)")
    ax.axvline(threshold, color="#cc3311", lw=1.2, ls="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("weakest-half amplitude relative to the class's (1 = a whole particle)")
    ax.set_ylabel("particles")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
