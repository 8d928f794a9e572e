"""Pictures of masks and post-processing: mask outline over a map, FSC curves, Guinier plot."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from cryospa.plots._figure import plt, save_figure

__all__ = ["plot_guinier", "plot_mask_over_map", "plot_postprocess_fsc"]


def plot_mask_over_map(
    path: str | os.PathLike[str],
    volume: np.ndarray,
    mask: np.ndarray,
    *,
    title: str = "mask over the map",
) -> None:
    """Central slices (xy, xz, yz) of ``volume`` with the outline of ``mask`` on top.

    ``volume`` and ``mask`` are ``(n, n, n)`` (z, y, x). The 0.5 contour of the mask is drawn
    solid, the outer end of its soft edge (0.01) dashed.
    """
    n = volume.shape[0]
    c = n // 2
    views = (
        ("xy (z = centre)", volume[c], mask[c]),
        ("xz (y = centre)", volume[:, c, :], mask[:, c, :]),
        ("yz (x = centre)", volume[:, :, c], mask[:, :, c]),
    )
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.0), dpi=110)
    for ax, (label, img, m) in zip(axes, views, strict=True):
        lo, hi = np.percentile(img, [1, 99.8])
        ax.imshow(img, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1)
        if m.max() > 0.5 > m.min():
            ax.contour(m, levels=[0.5], colors="tab:red", linewidths=1.2)
        if m.max() > 0.01 > m.min():
            ax.contour(m, levels=[0.01], colors="tab:orange", linewidths=0.9, linestyles="--")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_postprocess_fsc(
    path: str | os.PathLike[str],
    inverse_resolution_per_angstrom: np.ndarray,
    curves: Mapping[str, np.ndarray],
    *,
    resolution_angstrom: float,
    title: str,
) -> None:
    """FSC curves of post-processing with the 0.143 line and the resolution marked.

    RELION's colours: corrected black, unmasked green, masked blue, phase-randomised masked red.
    """
    colours = {"corrected": "black", "unmasked": "tab:green", "masked": "tab:blue",
               "phase-randomised masked": "tab:red"}
    x = inverse_resolution_per_angstrom
    fig, ax = plt.subplots(figsize=(6.6, 4.3), dpi=120)
    for label, values in curves.items():
        ax.plot(x, values, label=label, lw=2.0 if label == "corrected" else 1.3,
                color=colours.get(label))
    ax.axhline(0.143, color="grey", ls="--", lw=0.8)
    ax.axhline(0.0, color="grey", lw=0.5)
    if np.isfinite(resolution_angstrom) and resolution_angstrom > 0:
        ax.axvline(1.0 / resolution_angstrom, color="grey", ls=":", lw=0.9)
        ax.text(1.0 / resolution_angstrom, 1.0, f" {resolution_angstrom:.2f} Å", fontsize=8,
                va="top")
    ax.set_xlim(0, float(x[-1]))
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("Fourier shell correlation")
    ticks = ax.get_xticks()
    top = ax.secondary_xaxis("top")
    top.set_xticks(ticks[ticks > 0])
    top.set_xticklabels([f"{1 / t:.1f}" for t in ticks[ticks > 0]])
    top.set_xlabel("resolution (Å)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_guinier(
    path: str | os.PathLike[str],
    k2_per_angstrom2: np.ndarray,
    curves: Mapping[str, np.ndarray],
    *,
    fit: tuple[float, float] | None = None,
    fit_range_angstrom: tuple[float, float] | None = None,
    title: str = "Guinier plot",
) -> None:
    """Guinier plot: ``ln`` amplitude against ``k^2`` for each curve.

    Non-finite points are left out; the fitted line ``intercept + slope k^2`` (``fit = (slope,
    intercept)``) is dashed and the fit range shaded.
    """
    fig, ax = plt.subplots(figsize=(6.6, 4.3), dpi=120)
    x = np.asarray(k2_per_angstrom2)
    lows = []
    for label, values in curves.items():
        ok = np.isfinite(values) & (x > 0)
        ax.plot(x[ok], values[ok], label=label, lw=1.3)
        if ok.any():
            lows.append(float(np.min(values[ok])))
    if fit_range_angstrom is not None:
        lo_res, hi_res = fit_range_angstrom
        ax.axvspan(1 / lo_res**2, 1 / hi_res**2, color="grey", alpha=0.12, label="fit range")
    if fit is not None:
        slope, intercept = fit
        ax.plot(x, intercept + slope * x, color="black", ls="--", lw=1.0,
                label=f"fit: B = {4 * slope:.1f} Å²")
    ax.set_xlim(0, float(x[-1]))
    if lows:
        ax.set_ylim(bottom=max(min(lows), -99.0) - 0.5)
    ax.set_xlabel("resolution² (1/Å²)")
    ax.set_ylabel("ln(amplitude)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
