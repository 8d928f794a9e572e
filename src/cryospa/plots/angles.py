"""Angular distribution of particle orientations and central slices of 3D maps."""

from __future__ import annotations

import os

import numpy as np

from cryospa.plots._figure import save_figure

__all__ = ["plot_angular_distribution", "plot_central_slices"]


def plot_angular_distribution(
    rot_degrees: np.ndarray,
    tilt_degrees: np.ndarray,
    path: str | os.PathLike[str],
    *,
    title: str = "",
    weights: np.ndarray | None = None,
) -> None:
    """Density of viewing directions (rot, tilt) on an equal-area (Hammer) map of the sphere."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot(111, projection="hammer")
    lon = np.deg2rad(((np.asarray(rot_degrees) + 180.0) % 360.0) - 180.0)
    lat = np.deg2rad(90.0 - np.asarray(tilt_degrees))
    hb = ax.hexbin(lon, lat, C=weights, gridsize=36, mincnt=1, cmap="viridis",
                   reduce_C_function=np.sum if weights is not None else np.mean)
    fig.colorbar(hb, ax=ax, shrink=0.7, label="particles")
    ax.grid(True, alpha=0.3)
    ax.set_title(title or f"{len(lon)} particles: viewing directions (rot, 90 - tilt)")
    save_figure(fig, path)


def plot_central_slices(
    volumes: list[np.ndarray], labels: list[str], path: str | os.PathLike[str], *,
    title: str = "",
) -> None:
    """Central XY, XZ and YZ slices of each map, one row per map."""
    from matplotlib.figure import Figure

    rows = len(volumes)
    fig = Figure(figsize=(6.0, 2.0 * rows + 0.4))
    for r, (vol, label) in enumerate(zip(volumes, labels, strict=True)):
        c = vol.shape[0] // 2
        for col, (img, name) in enumerate(((vol[c], "XY"), (vol[:, c], "XZ"),
                                           (vol[:, :, c], "YZ"))):
            ax = fig.add_subplot(rows, 3, 3 * r + col + 1)
            ax.imshow(img, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0:
                ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
