"""The motion track of a movie: global shifts per frame and, with patches, the local tracks.

As RELION's motion-correction logfile: the global trajectory (``rlnMicrographShiftX/Y``,
movie pixels) with the frame numbers marked, and for patch-based alignment a picture of the
field of view with the local tracks at the patch centres, magnified so they can be seen.
"""

from __future__ import annotations

import math
import os

import numpy as np

from cryospa.plots._figure import plt, save_figure

__all__ = ["local_track_magnification", "plot_motion"]


def local_track_magnification(
    tracks_px: np.ndarray, spacing_px: float, *, fill: float = 0.4
) -> float:
    """A round factor (1, 2, 5, 10, 20, ...) making the longest local track ``fill`` x spacing.

    Never below 1.
    ``tracks_px`` is ``(P, F, 2)``: local shifts per patch and frame (pixels).
    """
    largest = float(np.max(np.hypot(tracks_px[..., 0], tracks_px[..., 1]))) if tracks_px.size else 0
    if not largest > 0:
        return 1.0
    wanted = fill * spacing_px / largest
    if wanted <= 1:
        return 1.0
    decade = 10.0 ** math.floor(math.log10(wanted))
    for step in (5.0, 2.0, 1.0):
        if step * decade <= wanted:
            return step * decade
    return decade  # pragma: no cover


def plot_motion(
    path: str | os.PathLike[str],
    shifts_px: np.ndarray,
    *,
    first_frame: int = 1,
    pixel_size_angstrom: float | None = None,
    title: str = "",
    patch_centres_px: np.ndarray | None = None,
    patch_shifts_px: np.ndarray | None = None,
    fitted_shifts_px: np.ndarray | None = None,
    shape_px: tuple[int, int] | None = None,
    patches: tuple[int, int] | None = None,
) -> None:
    """Plot a movie's motion and save it as a PNG.

    Parameters
    ----------
    path
        Output PNG.
    shifts_px
        ``(F, 2)`` global shifts (x, y) in movie pixels of the frames summed, RELION's sign
        (the shift that re-aligns each frame).
    first_frame
        1-based movie frame number of ``shifts_px[0]`` (for the labels).
    pixel_size_angstrom
        Movie pixel size; adds the drift in Å to the title.
    title
        Title (the movie name).
    patch_centres_px, patch_shifts_px, fitted_shifts_px
        With patch alignment: ``(P, 2)`` patch centres (x, y), ``(P, F, 2)`` measured local
        shifts and ``(P, F, 2)`` the fitted polynomial at the centres, relative to the global
        shifts (movie pixels).
    shape_px
        ``(h, w)`` of the frames (the field drawn with the local tracks).
    patches
        ``(patches_x, patches_y)``, for the magnification (patch spacing).
    """
    s = np.asarray(shifts_px, dtype=np.float64)
    local = patch_centres_px is not None and fitted_shifts_px is not None and shape_px is not None
    fig, axes = plt.subplots(1, 2 if local else 1, figsize=(11.0 if local else 5.6, 5.0),
                             dpi=110, squeeze=False)
    ax = axes[0, 0]
    ax.plot(s[:, 0], s[:, 1], "-", color="tab:blue", lw=1.2, zorder=1)
    ax.scatter(s[:, 0], s[:, 1], c=np.arange(len(s)), cmap="viridis", s=18, zorder=2)
    ax.plot(s[0, 0], s[0, 1], "o", ms=9, mfc="none", mec="tab:green", zorder=3,
            label=f"frame {first_frame}")
    ax.plot(s[-1, 0], s[-1, 1], "s", ms=9, mfc="none", mec="tab:red", zorder=3,
            label=f"frame {first_frame + len(s) - 1}")
    step = max(1, math.ceil(len(s) / 12))
    for i in range(0, len(s), step):
        ax.annotate(str(first_frame + i), (s[i, 0], s[i, 1]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7, color="0.25")
    ax.set_xlabel("shift X (movie pixels)")
    ax.set_ylabel("shift Y (movie pixels)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    path_length = float(np.sum(np.hypot(*np.diff(s, axis=0).T))) if len(s) > 1 else 0.0
    label = f"global motion: {path_length:.2f} px"
    if pixel_size_angstrom:
        label += f" ({path_length * pixel_size_angstrom:.1f} Å)"
    ax.set_title(label, fontsize=10)

    if patch_centres_px is not None and fitted_shifts_px is not None and shape_px is not None:
        _draw_local(axes[0, 1], shape_px, np.asarray(patch_centres_px, dtype=np.float64),
                    np.asarray(fitted_shifts_px, dtype=np.float64),
                    None if patch_shifts_px is None else np.asarray(patch_shifts_px, np.float64),
                    patches)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def _draw_local(
    ax: plt.Axes,
    shape_px: tuple[int, int],
    centres: np.ndarray,
    fitted: np.ndarray,
    measured: np.ndarray | None,
    patches: tuple[int, int] | None,
) -> None:
    """The field of view with the local tracks (relative to the first frame) at the centres."""
    h, w = shape_px
    px, py = patches if patches is not None else (max(1, round(math.sqrt(len(centres)))),) * 2
    fitted_rel = fitted - fitted[:, :1]
    # measured tracks carry an arbitrary offset per patch: placed on their fit on average
    measured_rel = (
        None
        if measured is None
        else measured - (measured - fitted).mean(axis=1, keepdims=True) - fitted[:, :1]
    )
    # scaled to the fit (measured outliers, e.g. patches without signal, fall off the field)
    mag = local_track_magnification(fitted_rel, min(w / px, h / py))
    ax.add_patch(plt.Rectangle((0, 0), w, h, fill=False, ec="0.5", lw=1))
    for p in range(len(centres)):
        cx, cy = centres[p]
        ax.plot(cx + mag * fitted_rel[p, :, 0], cy + mag * fitted_rel[p, :, 1], "-",
                color="tab:red", lw=1.5, zorder=3, label="fit" if p == 0 else None)
        if measured_rel is not None:
            ax.plot(cx + mag * measured_rel[p, :, 0], cy + mag * measured_rel[p, :, 1], ".",
                    color="tab:blue", ms=3, label="measured" if p == 0 else None)
        ax.plot(cx, cy, "k+", ms=6)
    ax.set_xlim(-0.05 * w, 1.05 * w)
    ax.set_ylim(1.05 * h, -0.05 * h)  # image orientation: row 0 at the top
    ax.set_aspect("equal")
    ax.set_xlabel("x (movie pixels)")
    ax.set_ylabel("y (movie pixels)")
    ax.set_title(f"local motion at the patch centres (x {mag:g})", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
