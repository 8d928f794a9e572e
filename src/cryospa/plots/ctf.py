"""Pictures of CTF estimation: the diagnostic image, the 1D fit, defocus over a set."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cryospa.plots._figure import plt, save_figure

__all__ = ["plot_ctf_diagnostic", "plot_ctf_fit_1d", "plot_defocus_distribution"]


def plot_ctf_diagnostic(
    path: str | os.PathLike[str],
    image: np.ndarray,
    *,
    pixel_size_angstrom: float,
    fit_resolution_angstrom: float,
    title: str = "",
) -> None:
    """Save the ``(b, b)`` diagnostic image (data left, fit right) at one pixel per pixel.

    A dashed half circle on the data side marks the fit resolution (none if it is infinite);
    the title goes in a band above the image.
    """
    from matplotlib.patches import Arc

    b = image.shape[-1]
    dpi = 100
    side = b * max(1, -(-512 // b)) / dpi  # at least 512 display pixels, whole multiples
    band = 0.5
    fig = plt.figure(figsize=(side, side + band), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, 1.0, side / (side + band)))
    ax.imshow(image, cmap="gray", vmin=-2.5, vmax=2.5, interpolation="nearest")
    ax.set_axis_off()
    c = b // 2
    if np.isfinite(fit_resolution_angstrom) and fit_resolution_angstrom > 0:
        radius = b * pixel_size_angstrom / fit_resolution_angstrom
        ax.add_patch(Arc((c, c), 2 * radius, 2 * radius, theta1=90, theta2=270,
                         color="#ffcc00", lw=1.0, ls="--"))
        ax.text(c - radius, c, f"{fit_resolution_angstrom:.1f} Å ", color="#ffcc00",
                ha="right", va="center", fontsize=8)
    ax.text(b * 0.25, b - 6, "data", color="#ffcc00", ha="center", va="bottom", fontsize=9)
    ax.text(b * 0.75, b - 6, "fit", color="#ffcc00", ha="center", va="bottom", fontsize=9)
    fig.text(0.5, 1.0 - 0.5 * band / (side + band), title, ha="center", va="center",
             fontsize=8)
    save_figure(fig, path, dpi=dpi)


def plot_ctf_fit_1d(
    path: str | os.PathLike[str],
    frequency_per_angstrom: np.ndarray,
    spectrum: np.ndarray,
    ctf2: np.ndarray,
    fit_quality: np.ndarray,
    *,
    fit_resolution_angstrom: float,
    fit_range_angstrom: tuple[float, float],
    threshold: float = 0.5,
    title: str = "",
) -> None:
    """Save the 1D fit: the astigmatism-corrected rotational average against the fitted CTF^2.

    All arrays are ``(n,)`` over ``frequency_per_angstrom`` (1/Å). The spectrum is scaled to the
    fit (least squares over the fitted shells) so both share the 0-1 axis; the fit quality
    (correlation in a window of one CTF period either side) is drawn with its threshold; the fit
    resolution is a vertical line and the range outside the fit is shaded.
    """
    k = np.asarray(frequency_per_angstrom, dtype=float)
    y = np.asarray(spectrum, dtype=float)
    model = np.asarray(ctf2, dtype=float)
    low, high = fit_range_angstrom
    used = (k >= 1.0 / low) & (k <= 1.0 / min(high, fit_resolution_angstrom))
    if used.sum() < 3:
        used = np.ones_like(k, dtype=bool)
    design = np.stack([y[used], np.ones(int(used.sum()))], axis=1)
    (a, c), *_ = np.linalg.lstsq(design, model[used], rcond=None)
    fig, ax = plt.subplots(figsize=(8.0, 3.8), dpi=110)
    ax.plot(k, a * y + c, color="#1f77b4", lw=1.0, label="spectrum (rotational average, "
            "astigmatism corrected)")
    ax.plot(k, model, color="#d62728", lw=1.0, label="fitted CTF²")
    ax.plot(k, fit_quality, color="#2ca02c", lw=1.0, ls="--", label="fit quality")
    ax.axhline(threshold, color="grey", lw=0.6, ls=":")
    ax.axvspan(float(k[0]) if len(k) else 0.0, 1.0 / low, color="grey", alpha=0.15, lw=0)
    if 1.0 / high < (k[-1] if len(k) else 0.0):
        ax.axvspan(1.0 / high, float(k[-1]), color="grey", alpha=0.15, lw=0)
    if np.isfinite(fit_resolution_angstrom):
        ax.axvline(1.0 / fit_resolution_angstrom, color="k", lw=0.9)
        ax.text(1.0 / fit_resolution_angstrom, 1.12, f"fit to {fit_resolution_angstrom:.2f} Å ",
                fontsize=8, va="top", ha="right")
    if len(k) > 1:
        ax.set_xlim(float(k[0]), float(k[-1]))
    ax.set_ylim(-0.3, 1.3)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("CTF² (spectrum scaled to it)")

    def inverse(f: Any) -> Any:
        return 1.0 / np.maximum(np.asarray(f, dtype=float), 1e-6)

    top = ax.secondary_xaxis("top", functions=(inverse, inverse))
    top.set_xlabel("resolution (Å)")
    ax.legend(loc="lower left", fontsize=7, ncols=3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_defocus_distribution(
    path: str | os.PathLike[str],
    defocus_u_angstrom: Sequence[float] | np.ndarray,
    defocus_v_angstrom: Sequence[float] | np.ndarray,
    *,
    title: str = "",
) -> None:
    """Save a histogram of the mean defocus and a scatter of astigmatism against it."""
    du = np.asarray(defocus_u_angstrom, dtype=float)
    dv = np.asarray(defocus_v_angstrom, dtype=float)
    mean = 0.5 * (du + dv)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.6), dpi=110)
    bins = max(5, min(40, int(np.sqrt(len(mean))) * 2))
    left.hist(mean, bins=bins, color="#1f77b4", edgecolor="white")
    left.set_xlabel("mean defocus (Å)")
    left.set_ylabel("micrographs")
    right.plot(mean, du - dv, "o", ms=3.5, color="#d62728")
    right.set_xlabel("mean defocus (Å)")
    right.set_ylabel("astigmatism dU - dV (Å)")
    right.set_ylim(bottom=0)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
