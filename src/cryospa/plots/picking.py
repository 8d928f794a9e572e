"""Pictures of picked particles, picks per micrograph, template-picking references and scores.

A micrograph with a circle at every pick; the number of picks per micrograph; the references of
template picking and the histogram of its figure of merit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from cryospa.plots._figure import plt, save_figure

__all__ = ["plot_fom_histogram", "plot_picks", "plot_picks_per_micrograph", "plot_references"]


def plot_picks(
    path: str | os.PathLike[str],
    image: np.ndarray,
    xy: np.ndarray,
    diameters: np.ndarray | float,
    *,
    scale: tuple[float, float] = (1.0, 1.0),
    title: str = "",
    others: dict[str, tuple[np.ndarray, str]] | None = None,
) -> None:
    """Save a PNG of ``image`` (grey, 1st-99th percentile) with a circle at every pick.

    Parameters
    ----------
    path
        Output PNG.
    image
        ``(h, w)`` picture (e.g. the low-passed, down-sampled micrograph).
    xy
        ``(n, 2)`` pick centres (x, y) in micrograph pixels.
    diameters
        Circle diameters in micrograph pixels, one for all or ``(n,)``.
    scale
        ``(sx, sy)`` micrograph pixels per ``image`` pixel (the picture may be down-sampled).
    title
        Figure title.
    others
        Extra point sets to draw as small markers, ``label -> ((m, 2) xy, colour)`` (e.g. the
        true positions in a benchmark).
    """
    from matplotlib.patches import Circle

    h, w = image.shape
    sx, sy = scale
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    size = 7.0
    fig, ax = plt.subplots(figsize=(size, size * h / w + 0.4), dpi=110)
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1,
              extent=(-0.5 * sx, (w - 0.5) * sx, (h - 0.5) * sy, -0.5 * sy))
    d = np.broadcast_to(np.asarray(diameters, dtype=float), (len(xy),))
    for (x, y), di in zip(np.asarray(xy, dtype=float), d, strict=True):
        ax.add_patch(Circle((x, y), di / 2, fill=False, color="#ffcc00", lw=0.9))
    for label, (pts, colour) in (others or {}).items():
        pts = np.asarray(pts, dtype=float).reshape(-1, 2)
        ax.plot(pts[:, 0], pts[:, 1], "+", color=colour, ms=6, mew=1.2, label=label)
    if others:
        ax.legend(loc="upper right", fontsize=7, framealpha=0.7)
    ax.set_xlim(-0.5 * sx, (w - 0.5) * sx)
    ax.set_ylim((h - 0.5) * sy, -0.5 * sy)
    ax.set_axis_off()
    ax.set_title(title or f"{len(xy)} picks", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_picks_per_micrograph(
    path: str | os.PathLike[str], counts: Sequence[int], *, title: str = "picks per micrograph"
) -> None:
    """Save a PNG of the number of picks on each micrograph (in input order) and its histogram."""
    n = np.asarray(counts, dtype=int)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.0, 3.0), dpi=110,
                                 gridspec_kw={"width_ratios": [2, 1]})
    a1.plot(np.arange(1, len(n) + 1), n, ".-", lw=0.8, ms=4)
    a1.set_xlabel("micrograph")
    a1.set_ylabel("picks")
    a1.grid(alpha=0.3)
    a2.hist(n, bins=min(30, max(1, len(n))), color="#4477aa")
    a2.set_xlabel("picks per micrograph")
    a2.set_ylabel("micrographs")
    fig.suptitle(f"{title}: {int(n.sum())} in total, mean {n.mean():.1f}" if len(n) else title,
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_references(
    path: str | os.PathLike[str],
    images: np.ndarray,
    numbers: Sequence[int] | np.ndarray,
    *,
    pixel_size_angstrom: float,
    diameter_angstrom: float,
    mask_diameter_angstrom: float,
) -> None:
    """Save a PNG gallery of 2D references with the particle (yellow) and mask (cyan) circles.

    Parameters
    ----------
    path
        Output PNG.
    images
        ``(n, b, b)`` references (white particles), centre at ``b // 2``.
    numbers
        The class number shown above each.
    pixel_size_angstrom
        Their pixel size.
    diameter_angstrom, mask_diameter_angstrom
        The particle diameter and the diameter of the comparison's disc.
    """
    from matplotlib.patches import Circle

    n = len(images)
    cols = min(n, 8)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.55 * rows + 0.4), dpi=110,
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for k in range(n):
        ax = axes.flat[k]
        img = np.asarray(images[k], dtype=float)
        b = img.shape[-1]
        lo, hi = np.percentile(img, [1, 99.5])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        for d, colour in ((diameter_angstrom, "#ffcc00"), (mask_diameter_angstrom, "#44ccff")):
            ax.add_patch(Circle((b // 2, b // 2), d / pixel_size_angstrom / 2, fill=False,
                                color=colour, lw=0.7))
        ax.set_title(f"#{int(numbers[k])}", fontsize=8)
    fig.suptitle(f"{n} references ({pixel_size_angstrom:g} Å/px); particle "
                 f"{diameter_angstrom:.0f} Å, mask {mask_diameter_angstrom:.0f} Å", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_fom_histogram(
    path: str | os.PathLike[str], edges: np.ndarray, counts: np.ndarray, threshold: float,
    *, thresholds: Sequence[float] | None = None, n_picked: int | None = None,
) -> None:
    """Save a PNG histogram of the figure of merit of candidate peaks, with the threshold.

    Parameters
    ----------
    path
        Output PNG.
    edges
        ``(m + 1,)`` bin edges.
    counts
        ``(m,)`` peaks per bin.
    threshold
        The picking threshold (a vertical line; bins above it are picks); with ``thresholds``
        their median.
    thresholds
        Each micrograph's own threshold (automatic thresholds): their range is shaded.
    n_picked
        The number of picks, for the title (default: the peaks in bins above ``threshold``).
    """
    edges = np.asarray(edges, dtype=float)
    counts = np.asarray(counts, dtype=float)
    fig, ax = plt.subplots(figsize=(6.0, 3.2), dpi=110)
    picked = edges[:-1] >= threshold
    width = np.diff(edges)
    ax.bar(edges[:-1][~picked], counts[~picked], width=width[~picked], align="edge",
           color="#bbbbbb", label="below the threshold")
    ax.bar(edges[:-1][picked], counts[picked], width=width[picked], align="edge",
           color="#4477aa", label="picked")
    if thresholds is not None and len(thresholds):
        lo, hi = float(np.min(thresholds)), float(np.max(thresholds))
        ax.axvspan(lo, hi, color="#cc3311", alpha=0.12,
                   label=f"per-micrograph thresholds {lo:.2f} to {hi:.2f}")
        ax.axvline(threshold, color="#cc3311", lw=1.2, label=f"median {threshold:.2f}")
    else:
        ax.axvline(threshold, color="#cc3311", lw=1.2, label=f"threshold {threshold:g}")
    ax.set_xlabel("figure of merit (normalised cross-correlation)")
    ax.set_ylabel("candidate peaks")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    picks = int(counts[picked].sum()) if n_picked is None else int(n_picked)
    ax.set_title(f"{int(counts.sum())} candidate peaks, {picks} picked",
                 fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
