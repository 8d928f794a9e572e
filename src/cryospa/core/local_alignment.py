"""Patch-based local motion estimation and locally aligned sums (beam-induced deformation).

After the whole-frame (global) alignment of :func:`cryospa.core.alignment.align_global`, a
movie's frames still deform locally: the ice domes and moves differently across the field of
view. As MotionCor2 (Zheng et al. 2017, Nat. Methods 14:331) and RELION's own motion
correction (Zivanov et al. 2019, IUCrJ 6:5, ``MotioncorrRunner``) do, the frame is divided into
``patches_x x patches_y`` patches, each patch's frames are aligned on their own, and a smooth
model over space and time, RELION's third-order polynomial (:mod:`cryospa.core.motion`), is
fitted to the patch trajectories:

1. **Patches.** ``nx x ny`` windows of ``w // nx x h // ny`` pixels (made even; at least
   :data:`MIN_PATCH_PX`), spread evenly from edge to edge (they tile the frame, as RELION's).
2. **Globally aligned patch stacks.** Each frame's window is cut at the frame's integer global
   shift and moved by the remaining fraction with a Fourier phase ramp, so the patch frames are
   aligned by the global shifts exactly (no full-frame transform needed); each patch frame's
   mean is removed and its edges tapered (a cosine edge over 1/8 of each side) so that the
   window's border, which does not move with the content, cannot pull the shifts to zero.
3. **Frame groups.** With ``group = g``, ``g`` neighbouring frames are summed before aligning
   (RELION's ``--group_frames``): patch frames at low dose hold few counts, and a group's sum
   aligns more reliably; a group's shift is assigned to its mean frame number.
4. **Patch alignment** is the global algorithm on each patch stack: every (group of) frame(s)
   against the sum of the others, B-factor-weighted cross-correlation, exact sub-pixel peaks,
   iterated to convergence. The B-factor default is 500 Å^2, higher than the global 150 Å^2
   (RELION uses its one ``--bfactor`` for both; MotionCor2 weights its patches separately): a
   patch has ``nx ny`` times fewer pixels, its per-frame correlation is noise-dominated at high
   resolution, and a stronger low-pass trades a slightly broader peak for far fewer false
   peaks. Measured on two simulated tutorial movies (1024 px, 24 frames of 1.277 e/Å², 1.77
   Å/px, 5 x 5 patches of 204 px; one round, true global shifts), RMS error of the fitted
   field: B = 150 Å^2: 0.44 and 0.47 px; 250: 0.33; 500: 0.28 and 0.33; 1000: 0.32 and
   0.36; 2000: 0.52. The correlation is computed on patches Fourier-cropped to the
   frequencies where the weight exceeds 10^-2.
5. **Fit.** Weighted least squares (:func:`cryospa.core.motion.fit_polynomial`) of the 18 + 18
   polynomial coefficients to the patch shifts, with a free constant offset per patch (a
   patch's trajectory is measured relative to its own first frame, whose error would otherwise
   shift the whole trajectory; RELION subtracts the first frame's shift instead), iteratively
   re-weighted: each patch is weighted by the inverse of its robust residual variance (a patch
   over empty ice or carbon, with little signal, counts less) and single outlying shifts by
   Huber's weight. A patch's shift is the window-weighted mean over the patch, so the fit
   uses the mean of the ``x^2`` and ``y^2`` terms over the window, not their value at the
   centre. Terms that the patch layout cannot determine (``x^2`` with fewer than 3 patch
   columns, ...) are set to 0.
6. **Second round.** Every patch is cut again at the global plus fitted local shifts and
   aligned again within a small radius (4 residual scatters of the first fit, at least 2 px;
   at most 3 iterations, as it starts next to the answer), and the polynomial is refitted to
   the fitted shifts plus what this round measures. This removes the first round's gross
   errors (false peaks far from the truth at low dose), and the bias of correlating windowed
   images, which pulls a shift towards zero in proportion to its size (the window does not
   move with the content): what is measured in the second round is small.

Without noise (the simulator's noiseless frames) the fitted field matches the truth to 0.02 px
RMS; at the tutorial's dose to 0.25-0.36 px at the patch centres, where the global shifts
alone are off by 0.5-0.7 px (the simulator's default 3 Å deformation) to 1.5-2.2 px (10 Å);
RELION 3.1's own 5 x 5 local fit is off by 1.6-2.0 px on the same movies
(``bench/bench_local_alignment.py``).

Shifts follow RELION's convention (:mod:`cryospa.core.motion`): the total shift that re-aligns
frame ``z`` at pixel ``(x, y)`` is the global shift plus the polynomial, zero for frame 0; the
aligned sum at output pixel ``q`` is ``sum_z frame_z(q - s_z(q))``.

:func:`shift_and_sum_local` computes that sum by cubic B-spline interpolation: each frame is
sampled at ``q - s_z(q)`` (global plus local shift in one go) as a cubic B-spline of its
pixels, and the B-spline's prefilter (``1 / (2/3 + cos(2 pi k) / 3)`` per axis) is applied once
in Fourier space to the sum, where it commutes with the smooth shift field (exactly for a
uniform shift). This is cardinal cubic-spline interpolation: exact for whole-pixel shifts, and
for sub-pixel shifts its response is within 1.5 % of 1 up to 1/4 of the sampling frequency
and 0.92 at 0.35 (RELION's bilinear interpolation: 0.81 and 0.66). Per-frame Fourier weights
(dose weighting, e.g. :class:`cryospa.core.alignment.DoseWeights`, made one frame at a time)
are applied to each warped frame's transform (they also commute with the smooth warp);
:func:`aligned_sums_local` makes several sums (dose-weighted and plain) from one warp of each
frame. Samples beyond the frame edge take the edge value.

The patches are aligned together (:func:`cryospa.core.alignment.align_stacks`), as many at a
time as fit in 256 MB of patch stacks: all 25 of a 1024 px movie, two of a 4096 px one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as tnf

from cryospa.core.alignment import FrameWeights, align_stacks, frame_weight_getter
from cryospa.core.fourier import phase_shift_2d
from cryospa.core.motion import (
    N_POLYNOMIAL_COEFFS,
    PolynomialFit,
    fit_polynomial,
    polynomial_shift,
)
from cryospa.errors import ParameterError

__all__ = [
    "DEFAULT_PATCH_BFACTOR",
    "MIN_PATCH_PX",
    "LocalAlignment",
    "align_patches",
    "aligned_sums_local",
    "local_shifts_at",
    "patch_layout",
    "shift_and_sum_local",
]

#: Default B-factor (Å^2) of the patches' cross-correlation (module docstring, step 4).
DEFAULT_PATCH_BFACTOR = 500.0
#: Smallest patch side (pixels).
MIN_PATCH_PX = 64
#: Width of the patches' cosine edge, as a fraction of the side.
_TAPER_FRACTION = 0.125
#: Iterations of the re-weighted fit, and Huber's threshold in residual standard deviations.
_FIT_ITERATIONS = 6
_HUBER = 2.0
#: Search radius of the second round: this many residual scatters of the first, at least
#: ``_MIN_RADIUS_PX`` pixels.
_RADIUS_SCATTERS = 4.0
_MIN_RADIUS_PX = 2.0
#: Most iterations of the second round's alignments (they start next to the answer).
_SECOND_ROUND_ITERATIONS = 3


@dataclass(frozen=True)
class LocalAlignment:
    """Result of :func:`align_patches`.

    Attributes
    ----------
    coeffs_x, coeffs_y
        ``(18,)`` RELION ``ThirdOrderPolynomialModel`` coefficients of each axis (movie pixels,
        ``z`` = frame index from 0); write ``coeffs_x[i]`` as ``rlnMotionModelCoeffsIdx`` ``i``
        and ``coeffs_y[i]`` as ``i + 18``.
    patch_centres
        ``(P, 2)`` patch centres ``(x, y)`` (movie pixels), patches in row-major order (x
        fastest).
    patch_shifts
        ``(P, F, 2)`` measured local shifts ``(x, y)`` per patch and frame (pixels, RELION sign),
        relative to the global shifts, each patch's fitted constant offset removed (so they are
        comparable with the polynomial); with frame groups, interpolated linearly between the
        groups' mean frames (extrapolated at the ends).
    fitted_shifts
        ``(P, F, 2)`` the polynomial at the patch centres.
    rms_residual_px
        ``sqrt(mean |patch_shifts - fitted_shifts|^2)`` over patches and frames (pixels).
    patch_size_px
        ``(h, w)`` of a patch.
    patch_weights
        ``(P,)`` the patches' final relative weights in the fit (mean 1).
    """

    coeffs_x: np.ndarray
    coeffs_y: np.ndarray
    patch_centres: np.ndarray
    patch_shifts: np.ndarray
    fitted_shifts: np.ndarray
    rms_residual_px: float
    patch_size_px: tuple[int, int] = (0, 0)
    patch_weights: np.ndarray = field(default_factory=lambda: np.zeros(0))


# ---------------------------------------------------------------------------------------------
# patches


def patch_layout(
    shape_px: tuple[int, int], patches: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """Where the patches lie: origins, size and centres.

    Parameters
    ----------
    shape_px
        ``(h, w)`` of the frames.
    patches
        ``(nx, ny)`` patches along x and y.

    Returns
    -------
    tuple
        ``origins`` ``(P, 2)`` int (x, y) of each patch's first pixel, ``size`` ``(ph, pw)``
        (even, ``h // ny`` and ``w // nx`` rounded down to even) and ``centres`` ``(P, 2)``
        float (x, y) = origin + (size - 1) / 2; patches in row-major order (x fastest).
    """
    h, w = shape_px
    try:
        nx, ny = (int(v) for v in patches)
    except (TypeError, ValueError):
        raise ParameterError(f"patches must be two integers (x, y), got {patches!r}") from None
    if nx < 1 or ny < 1:
        raise ParameterError(f"patches must be >= 1 along x and y, got ({nx}, {ny})")
    if nx * ny < 2:
        raise ParameterError(
            "local alignment needs at least 2 patches (one patch is the whole frame: use the "
            "global alignment alone), got (1, 1)"
        )
    pw, ph = (w // nx) // 2 * 2, (h // ny) // 2 * 2
    if min(pw, ph) < MIN_PATCH_PX:
        most = (w // MIN_PATCH_PX, h // MIN_PATCH_PX)
        raise ParameterError(
            f"{nx} x {ny} patches of a {w} x {h} frame are {pw} x {ph} px, smaller than the "
            f"minimum {MIN_PATCH_PX} px: use at most {most[0]} x {most[1]} patches"
        )

    def starts(n: int, size: int, total: int) -> np.ndarray:
        # evenly from edge to edge; a single patch in the middle
        if n == 1:
            return np.array([(total - size) // 2])
        return np.round(np.linspace(0, total - size, n)).astype(np.int64)

    gy, gx = np.meshgrid(starts(ny, ph, h), starts(nx, pw, w), indexing="ij")
    origins = np.stack([gx.reshape(-1), gy.reshape(-1)], axis=1)
    centres = origins + np.array([(pw - 1) / 2.0, (ph - 1) / 2.0])
    return origins, (ph, pw), centres


def _taper(n: int, device: torch.device) -> torch.Tensor:
    """``(n,)`` window: 1 in the middle, a raised-cosine edge over ``n / 8`` at both ends."""
    edge = max(2, round(n * _TAPER_FRACTION))
    u = torch.arange(n, device=device, dtype=torch.float32)
    distance = torch.minimum(u + 0.5, n - u - 0.5)  # to the nearest end
    ramp = 0.5 - 0.5 * torch.cos(math.pi * (distance / edge).clamp(max=1.0))
    return ramp


def _patch_stack(
    frames: torch.Tensor,
    global_shifts: np.ndarray,
    origin: np.ndarray,
    size: tuple[int, int],
    window: torch.Tensor,
) -> torch.Tensor:
    """``(F, ph, pw)`` patch frames aligned by ``global_shifts``, mean removed, edges tapered.

    ``global_shifts`` ``(F, 2)`` are the RELION shifts to apply at this patch (pixels).
    """
    n_frames, h, w = frames.shape
    ph, pw = size
    dev = frames.device
    whole = np.round(global_shifts).astype(np.int64)  # (F, 2) x, y
    # frame_f(q - g_f) for q in the window = frame_f cut at (origin - whole), moved by the rest
    start_x = np.clip(origin[0] - whole[:, 0], 0, w - pw)
    start_y = np.clip(origin[1] - whole[:, 1], 0, h - ph)
    rest = global_shifts - np.stack([origin[0] - start_x, origin[1] - start_y], axis=1)
    rows = torch.from_numpy(start_y[:, None] + np.arange(ph)).to(dev)  # (F, ph)
    cols = torch.from_numpy(start_x[:, None] + np.arange(pw)).to(dev)  # (F, pw)
    index = torch.arange(n_frames, device=dev)[:, None, None]
    stack = frames[index, rows[:, :, None], cols[:, None, :]].to(torch.float32)
    stack = stack - stack.mean(dim=(-2, -1), keepdim=True)
    ramps = phase_shift_2d((ph, pw), torch.from_numpy(rest).to(dev, torch.float32))
    stack = torch.fft.irfft2(torch.fft.rfft2(stack) * ramps, s=(ph, pw))
    return stack * window


def _group_frames(n_frames: int, group: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Frame ranges ``[start, stop)`` of the groups, and their mean frame numbers."""
    bounds = [(s, min(s + group, n_frames)) for s in range(0, n_frames, group)]
    return bounds, np.array([(a + b - 1) / 2.0 for a, b in bounds])


def _interpolate_groups(values: np.ndarray, z_groups: np.ndarray, n_frames: int) -> np.ndarray:
    """``(P, G, 2)`` values at the groups' mean frames -> ``(P, F, 2)``, linear, extrapolated."""
    if len(z_groups) == n_frames:
        return values.copy()
    z = np.arange(n_frames, dtype=np.float64)
    # segment of each frame: the two groups around it (the first / last pair at the ends)
    seg = np.clip(np.searchsorted(z_groups, z, side="right") - 1, 0, len(z_groups) - 2)
    z0, z1 = z_groups[seg], z_groups[seg + 1]
    t = ((z - z0) / (z1 - z0))[None, :, None]
    return values[:, seg] * (1.0 - t) + values[:, seg + 1] * t


def _auto_crop(size: tuple[int, int], pixel_size: float, bfactor: float) -> tuple[int, int]:
    """Even Fourier-crop size keeping the frequencies where ``exp(-B k^2 / 4) > 1e-2``."""
    if bfactor <= 0:
        return size
    k_max = math.sqrt(4.0 * math.log(100.0) / bfactor)  # 1/Å
    out = []
    for n in size:
        m = 2 * math.ceil(k_max * pixel_size * n)  # 2 k_max / (1 / (n pixel)) samples, even
        out.append(int(min(n, max(m, 32))))
    return out[0], out[1]


def _robust_weights(residuals: np.ndarray, dof_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Observation weights ``(P, G)`` and patch weights ``(P,)`` from ``(P, G, 2)`` residuals.

    A patch's noise ``sigma_p`` is the median residual length / 1.1774 (the median of a 2D
    Gaussian vector's length is ``sigma sqrt(2 ln 2)``), floored at a quarter of the median
    over patches (no patch may dominate the fit); observations further than ``2 sigma_p`` get
    Huber's weight ``2 sigma_p / |e|``.
    """
    length = np.hypot(residuals[..., 0], residuals[..., 1]) * math.sqrt(dof_factor)
    sigma = np.median(length, axis=1) / math.sqrt(2.0 * math.log(2.0))  # (P,)
    floor = max(0.25 * float(np.median(sigma)), 1e-3)
    sigma = np.maximum(sigma, floor)
    patch = 1.0 / sigma**2
    limit = _HUBER * sigma[:, None]
    huber = np.where(length > limit, limit / np.maximum(length, 1e-12), 1.0)
    return patch[:, None] * huber, patch / patch.mean()


# ---------------------------------------------------------------------------------------------
# local alignment


#: Real elements of the patch stacks aligned at once (256 MB): a 1024 px movie's 25 patches
#: together, a 4096 px one's a few at a time.
_GROUP_ELEMENTS = 1 << 26


def _align_patch_group(
    frames: torch.Tensor,
    cut_shifts: list[np.ndarray],
    origins: list[np.ndarray],
    size: tuple[int, int],
    window: torch.Tensor,
    bounds: list[tuple[int, int]],
    pixel_size: float,
    **options: Any,
) -> list[np.ndarray]:
    """``(G, 2)`` shifts of each patch's frame groups relative to its ``cut_shifts`` (group 0 at 0).

    Each patch's frames are cut aligned by its ``cut_shifts`` ``(F, 2)`` (global + predicted
    local shifts at the patch), summed in groups, and the patches are aligned together by
    :func:`cryospa.core.alignment.align_stacks` (each on its own; ``options`` are its keyword
    arguments).
    """
    stacks = []
    for cut, origin in zip(cut_shifts, origins, strict=True):
        stack = _patch_stack(frames, cut, origin, size, window)
        if len(bounds) < cut.shape[0]:
            stack = torch.stack([stack[a:b].sum(dim=0) for a, b in bounds])
        stacks.append(stack)
    return [r.shifts for r in align_stacks(torch.stack(stacks), pixel_size, **options)]


def _fit_robust(
    measured: np.ndarray,
    centres: np.ndarray,
    z_groups: np.ndarray,
    shape_px: tuple[int, int],
    spread_px: tuple[float, float],
) -> tuple[PolynomialFit, np.ndarray, float]:
    """Iteratively re-weighted fit of the polynomial to ``(P, G, 2)`` patch shifts.

    Returns the fit (with one offset per patch), the patches' relative weights ``(P,)`` and the
    robust scatter (pixels) of the residuals (median residual length / 1.1774).
    """
    n_patches, n_groups = measured.shape[:2]
    z_obs = np.broadcast_to(z_groups[None, :], (n_patches, n_groups)).reshape(-1)
    x_obs = np.repeat(centres[:, 0], n_groups)
    y_obs = np.repeat(centres[:, 1], n_groups)
    labels = np.repeat(np.arange(n_patches), n_groups)
    obs = measured.reshape(-1, 2)
    weights = np.ones(n_patches * n_groups)
    patch_weights = np.ones(n_patches)
    scatter = 0.0
    for _ in range(_FIT_ITERATIONS):
        fit = fit_polynomial(
            z_obs,
            x_obs,
            y_obs,
            obs,
            shape_px,
            weights=weights,
            trajectories=labels,
            spread_px=spread_px,
        )
        model = _model_at(fit.coeffs_x, fit.coeffs_y, z_obs, x_obs, y_obs, shape_px, spread_px)
        residuals = (obs - fit.offsets[labels] - model).reshape(n_patches, n_groups, 2)
        n_params = n_patches + int(fit.fitted_terms.sum())
        dof_factor = obs.shape[0] / max(obs.shape[0] - n_params, 1)
        observation_weights, patch_weights = _robust_weights(residuals, dof_factor)
        weights = observation_weights.reshape(-1)
        scatter = float(np.median(np.hypot(residuals[..., 0], residuals[..., 1]))) / math.sqrt(
            2.0 * math.log(2.0)
        )
    return fit, patch_weights, scatter


def align_patches(
    frames: torch.Tensor,
    global_shifts: np.ndarray,
    pixel_size: float,
    *,
    patches: tuple[int, int] = (5, 5),
    bfactor: float = DEFAULT_PATCH_BFACTOR,
    group: int = 1,
    max_iterations: int = 10,
    tolerance_px: float = 0.01,
    max_shift_px: float | None = None,
) -> LocalAlignment:
    """Local motion of a movie: patch trajectories and RELION's polynomial fitted to them.

    Parameters
    ----------
    frames
        ``(F, h, w)`` frames (gain-corrected, defects filled), any real dtype, on any device;
        the computation runs there in float32.
    global_shifts
        ``(F, 2)`` RELION global shifts (pixels), e.g. ``align_global(frames, ...).shifts``.
    pixel_size
        Movie pixel size (Å), for the B-factor.
    patches
        ``(nx, ny)`` patches along x and y (at least 2 in all; each at least
        :data:`MIN_PATCH_PX` pixels).
    bfactor
        B-factor (Å^2) of the patches' cross-correlation, ``exp(-B k^2 / 4)``.
    group
        Frames summed per group before aligning (1 = none).
    max_iterations, tolerance_px
        Of each patch's iterative alignment (as :func:`cryospa.core.alignment.align_global`).
    max_shift_px
        Largest local shift searched per iteration (pixels); ``None``: a quarter of the patch
        side (larger local motions cannot be measured in such a patch anyway).

    Returns
    -------
    LocalAlignment
        Polynomial coefficients, patch centres, measured and fitted patch shifts.
    """
    if frames.ndim != 3:
        raise ParameterError(f"frames must be (F, h, w), got shape {tuple(frames.shape)}")
    n_frames, h, w = frames.shape
    g = np.asarray(global_shifts, dtype=np.float64)
    if g.shape != (n_frames, 2) or not np.all(np.isfinite(g)):
        raise ParameterError(
            f"global shifts must be finite, one (x, y) per frame ({n_frames}, 2), got {g.shape}"
        )
    if not (pixel_size > 0):
        raise ParameterError(f"pixel size must be > 0 Å, got {pixel_size}")
    if not (bfactor >= 0 and math.isfinite(bfactor)):
        raise ParameterError(f"patch B-factor must be >= 0 Å^2, got {bfactor}")
    if int(group) != group or group < 1:
        raise ParameterError(f"frame group must be an integer >= 1, got {group}")
    group = int(group)
    bounds, z_groups = _group_frames(n_frames, group)
    if len(bounds) < 2:
        raise ParameterError(
            f"grouping {group} frames leaves {len(bounds)} group of the movie's {n_frames} "
            f"frames; local alignment needs >= 2 groups: use a smaller group"
        )
    origins, size, centres = patch_layout((h, w), patches)
    ph, pw = size
    search = float(max_shift_px) if max_shift_px is not None else min(ph, pw) / 4.0
    if not (search > 0):
        raise ParameterError(f"max_shift_px must be > 0, got {max_shift_px}")
    crop = _auto_crop(size, pixel_size, bfactor)
    dev = frames.device
    taper_y, taper_x = _taper(ph, dev), _taper(pw, dev)
    window = taper_y[:, None] * taper_x[None, :]
    # a patch's shift is the mean over the patch weighted by window^2 (frame and reference are
    # both tapered): its spread enters the fit of the x^2 and y^2 terms
    spread = (_weighted_sd(taper_x**2), _weighted_sd(taper_y**2))
    n_patches, n_groups = len(origins), len(bounds)
    per_group = max(1, _GROUP_ELEMENTS // (n_frames * ph * pw))  # patches aligned together

    # round 1 measures every patch around the global shifts; round 2 cuts each patch again at
    # the fitted model's shifts and measures what is left within a small radius
    predicted = np.zeros((n_patches, n_frames, 2))  # local shifts the patches are cut at
    radius, iterations = search, max_iterations
    for round_ in range(2):
        measured = np.zeros((n_patches, n_groups, 2))
        for first in range(0, n_patches, per_group):
            chosen = range(first, min(first + per_group, n_patches))
            residuals = _align_patch_group(
                frames,
                [g + predicted[p] for p in chosen],
                [origins[p] for p in chosen],
                size,
                window,
                bounds,
                pixel_size,
                bfactor=bfactor,
                crop=crop,
                max_iterations=iterations,
                tolerance_px=tolerance_px,
                max_shift_px=radius,
            )
            for p, residual in zip(chosen, residuals, strict=True):
                at_groups = np.stack([predicted[p, a:b].mean(axis=0) for a, b in bounds])
                measured[p] = at_groups + residual
        fit, patch_weights, scatter = _fit_robust(measured, centres, z_groups, (h, w), spread)
        if round_ == 0:
            predicted = local_shifts_at(
                fit.coeffs_x, fit.coeffs_y, centres[:, 0], centres[:, 1], n_frames, (h, w)
            )
            radius = min(search, max(_MIN_RADIUS_PX, _RADIUS_SCATTERS * scatter))
            iterations = min(max_iterations, _SECOND_ROUND_ITERATIONS)

    relative = measured - fit.offsets[:, None, :]  # (P, G, 2)
    patch_shifts = _interpolate_groups(relative, z_groups, n_frames)
    fitted = local_shifts_at(
        fit.coeffs_x, fit.coeffs_y, centres[:, 0], centres[:, 1], n_frames, (h, w)
    )
    rms = float(np.sqrt(np.mean(np.sum((patch_shifts - fitted) ** 2, axis=-1))))
    return LocalAlignment(
        coeffs_x=fit.coeffs_x,
        coeffs_y=fit.coeffs_y,
        patch_centres=centres,
        patch_shifts=patch_shifts,
        fitted_shifts=fitted,
        rms_residual_px=rms,
        patch_size_px=(ph, pw),
        patch_weights=patch_weights,
    )


def _model_at(
    coeffs_x: np.ndarray,
    coeffs_y: np.ndarray,
    z: np.ndarray,
    x_px: np.ndarray,
    y_px: np.ndarray,
    shape_px: tuple[int, int],
    spread_px: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """``(..., 2)`` polynomial shifts, averaged over regions of sd ``spread_px`` if given."""
    sx, sy = polynomial_shift(coeffs_x, coeffs_y, z, x_px, y_px, shape_px)
    out = np.stack([sx, sy], axis=-1)
    h, w = shape_px
    z_ = np.asarray(z, dtype=np.float64)
    powers = np.stack([z_, z_ * z_, z_**3], axis=-1)  # (..., 3)
    for index, variance in ((6, (spread_px[0] / w) ** 2), (12, (spread_px[1] / h) ** 2)):
        if variance:
            terms = np.stack([coeffs_x[index : index + 3], coeffs_y[index : index + 3]], axis=1)
            out = out + variance * (powers @ terms)
    return out


def _weighted_sd(weight: torch.Tensor) -> float:
    """Standard deviation (pixels) of the position along a 1D weight profile."""
    w = weight.double().cpu()
    u = torch.arange(w.numel(), dtype=torch.float64)
    mean = (w * u).sum() / w.sum()
    return float(torch.sqrt((w * (u - mean) ** 2).sum() / w.sum()))


def local_shifts_at(
    coeffs_x: np.ndarray,
    coeffs_y: np.ndarray,
    x_px: np.ndarray | float,
    y_px: np.ndarray | float,
    n_frames: int,
    shape_px: tuple[int, int],
) -> np.ndarray:
    """The polynomial's local shifts at positions for every frame.

    Parameters
    ----------
    coeffs_x, coeffs_y
        ``(18,)`` coefficients.
    x_px, y_px
        Positions (pixels), broadcast together to shape ``S``.
    n_frames
        Frames ``z = 0 .. n_frames - 1``.
    shape_px
        ``(h, w)`` of the frames.

    Returns
    -------
    np.ndarray
        ``S + (n_frames, 2)`` shifts ``(x, y)`` (pixels).
    """
    x, y = np.broadcast_arrays(np.asarray(x_px, dtype=np.float64), np.asarray(y_px, np.float64))
    z = np.arange(int(n_frames), dtype=np.float64)
    return _model_at(coeffs_x, coeffs_y, z, x[..., None], y[..., None], shape_px)


# ---------------------------------------------------------------------------------------------
# locally aligned sum


def _bspline_prefilter(shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """``1 / (B(ky) B(kx))`` on the rfft grid, ``B(k) = 2/3 + cos(2 pi k) / 3``."""
    h, w = shape
    ky = torch.fft.fftfreq(h, device=device, dtype=torch.float64)
    kx = torch.fft.rfftfreq(w, device=device, dtype=torch.float64)
    by = 2.0 / 3.0 + torch.cos(2.0 * math.pi * ky) / 3.0
    bx = 2.0 / 3.0 + torch.cos(2.0 * math.pi * kx) / 3.0
    return (1.0 / (by[:, None] * bx[None, :])).to(torch.float32)


def _bspline_pairs(u: torch.Tensor, scale: float) -> tuple[torch.Tensor, ...]:
    """Cubic B-spline at ``u`` as two linear interpolations (Sigg & Hadwiger 2005, GPU Gems 2).

    Returns ``(g0, h0, g1, h1)``: the value at ``u`` is ``g0 L(h0) + g1 L(h1)`` with ``L`` the
    linear interpolation of the samples; ``h`` are returned as ``grid_sample`` coordinates
    (``align_corners=True``: pixel ``i`` is ``i * scale - 1``, ``scale = 2 / (n - 1)``).
    """
    i = torch.floor(u)
    t = u - i
    t2 = t * t
    t3 = t2 * t
    w1 = (4.0 - 6.0 * t2 + 3.0 * t3) / 6.0
    g0 = (5.0 - 3.0 * (t + t2) + 2.0 * t3) / 6.0  # w0 + w1
    g1 = 1.0 - g0  # w2 + w3
    h0 = (i - 1.0 + w1 / g0) * scale - 1.0
    h1 = (i + 1.0 + t3 / (6.0 * g1)) * scale - 1.0
    return g0, h0, g1, h1


def _warp_tile(
    image: torch.Tensor,
    x_px: torch.Tensor,
    y_px: torch.Tensor,
    cx: list[float],
    cy: list[float],
) -> torch.Tensor:
    """Cubic B-spline samples of ``image`` ``(1, 1, h, w)`` at ``q - s(q)`` on a tile.

    ``x_px`` ``(c,)`` and ``y_px`` ``(r,)`` are the tile's pixel columns and rows; ``cx``,
    ``cy`` the 6 spatial coefficients ``(1, x, x^2, y, y^2, xy)`` of each axis' shift at this
    frame (the global shift included in the first). Returns ``(r, c)``.
    """
    h, w = image.shape[-2:]
    xn, yn = (x_px / w - 0.5)[None, :], (y_px / h - 0.5)[:, None]
    sx = cx[0] + xn * (cx[1] + cx[2] * xn + cx[5] * yn) + yn * (cx[3] + cx[4] * yn)
    sy = cy[0] + xn * (cy[1] + cy[2] * xn + cy[5] * yn) + yn * (cy[3] + cy[4] * yn)
    gx0, hx0, gx1, hx1 = _bspline_pairs(x_px[None, :] - sx, 2.0 / (w - 1))
    gy0, hy0, gy1, hy1 = _bspline_pairs(y_px[:, None] - sy, 2.0 / (h - 1))
    total = torch.zeros_like(sx)
    for gx, hx in ((gx0, hx0), (gx1, hx1)):
        for gy, hy in ((gy0, hy0), (gy1, hy1)):
            grid = torch.stack([hx, hy], dim=-1)[None]
            sample = tnf.grid_sample(
                image, grid, mode="bilinear", padding_mode="border", align_corners=True
            )[0, 0]
            total += gx * gy * sample
    return total


def aligned_sums_local(
    frames: torch.Tensor,
    global_shifts: np.ndarray,
    coeffs_x: np.ndarray,
    coeffs_y: np.ndarray,
    weights: Sequence[FrameWeights | None] = (None,),
    *,
    tile: int = 256,
) -> list[torch.Tensor]:
    """Sums of frames moved by the global shifts plus the local polynomial, in one pass.

    Output pixel ``q`` is ``sum_z frame_z(q - s_z(q))`` with ``s_z(q) = global_z +``
    :func:`cryospa.core.motion.polynomial_shift` ``(z, q)``; frames are interpolated as cubic
    B-splines (see the module docstring; samples beyond the edge take the edge value). Each
    frame is warped once and added to every sum, with that sum's per-frame Fourier weights
    (applied to the warped frame's transform): e.g. the plain and the dose-weighted sum
    together. The memory is a few frame-sized arrays per sum, whatever the number of frames.

    Parameters
    ----------
    frames
        ``(F, h, w)`` real frames, any real dtype and device; computed there in float32.
    global_shifts
        ``(F, 2)`` RELION global shifts (pixels).
    coeffs_x, coeffs_y
        ``(18,)`` polynomial coefficients (pixels; zeros: global shifts only).
    weights
        One entry per sum: ``None`` (plain sum) or
        :data:`cryospa.core.alignment.FrameWeights`, e.g.
        :class:`cryospa.core.alignment.DoseWeights` (the dose-weighted sum; made one frame at a
        time) or ``(F, h, w // 2 + 1)`` filters.
    tile
        Side of the square tiles interpolated at once (pixels): bounds the temporary memory
        to a few ``tile x tile`` arrays (256: they stay in the CPU's cache).

    Returns
    -------
    list of torch.Tensor
        One ``(h, w)`` float32 sum per entry of ``weights``, on the frames' device.
    """
    if frames.ndim != 3 or frames.shape[0] < 1:
        raise ParameterError(f"frames must be (F, h, w), got shape {tuple(frames.shape)}")
    n_frames, h, w = frames.shape
    if h < 2 or w < 2:
        raise ParameterError(f"frames must be at least 2 x 2 px, got {h} x {w}")
    g = np.asarray(global_shifts, dtype=np.float64)
    if g.shape != (n_frames, 2):
        raise ParameterError(f"global shifts must be ({n_frames}, 2), got {g.shape}")
    c = [np.asarray(v, dtype=np.float64).reshape(-1) for v in (coeffs_x, coeffs_y)]
    if any(v.size != N_POLYNOMIAL_COEFFS or not np.all(np.isfinite(v)) for v in c):
        raise ParameterError(
            f"polynomial coefficients must be {N_POLYNOMIAL_COEFFS} finite values per axis, got "
            f"{c[0].size} and {c[1].size}"
        )
    coeffs = np.stack(c)  # (2, 18)
    if tile < 1:
        raise ParameterError(f"tile must be >= 1 px, got {tile}")
    dev = frames.device
    rfft_shape = (h, w // 2 + 1)
    getters = [
        None if v is None else frame_weight_getter(v, n_frames, rfft_shape, dev) for v in weights
    ]
    # plain sums accumulate in real space (the same one for all), weighted ones in Fourier space
    real_sum = (
        torch.zeros((h, w), device=dev, dtype=torch.float32) if None in getters else None
    )
    fourier_sums = [
        None if getter is None else torch.zeros(rfft_shape, device=dev, dtype=torch.complex64)
        for getter in getters
    ]
    x_all = torch.arange(w, device=dev, dtype=torch.float32)
    y_all = torch.arange(h, device=dev, dtype=torch.float32)
    warped = torch.empty((h, w), device=dev, dtype=torch.float32)
    for z in range(n_frames):
        powers = np.array([z, z * z, z**3], dtype=np.float64)
        spatial = coeffs.reshape(2, 6, 3) @ powers  # (2, 6): terms 1, x, x^2, y, y^2, xy
        spatial[:, 0] += g[z]
        image = frames[z].to(torch.float32)[None, None]
        cx, cy = spatial[0].tolist(), spatial[1].tolist()
        for r0 in range(0, h, tile):
            for c0 in range(0, w, tile):
                warped[r0 : r0 + tile, c0 : c0 + tile] = _warp_tile(
                    image, x_all[c0 : c0 + tile], y_all[r0 : r0 + tile], cx, cy
                )
        del image
        if real_sum is not None:
            real_sum += warped
        if any(getter is not None for getter in getters):
            warped_ft = torch.fft.rfft2(warped)
            for total, getter in zip(fourier_sums, getters, strict=True):
                if getter is not None and total is not None:
                    total.addcmul_(warped_ft, getter(z))
            del warped_ft
    prefilter = _bspline_prefilter((h, w), dev)
    plain = None if real_sum is None else torch.fft.rfft2(real_sum)
    del real_sum, warped
    out = []
    for total in fourier_sums:
        source = plain if total is None else total
        assert source is not None
        out.append(torch.fft.irfft2(source * prefilter, s=(h, w)))
    return out


def shift_and_sum_local(
    frames: torch.Tensor,
    global_shifts: np.ndarray,
    coeffs_x: np.ndarray,
    coeffs_y: np.ndarray,
    *,
    weights: FrameWeights | None = None,
    tile: int = 256,
) -> torch.Tensor:
    """The aligned sum of frames moved by the global shifts plus the local polynomial.

    One sum of :func:`aligned_sums_local` (see there): ``weights`` ``None`` (plain sum) or
    :data:`cryospa.core.alignment.FrameWeights` (e.g. :class:`~cryospa.core.alignment.DoseWeights`:
    the dose-weighted sum). Returns the ``(h, w)`` float32 sum on the frames' device.
    """
    return aligned_sums_local(
        frames, global_shifts, coeffs_x, coeffs_y, [weights], tile=tile
    )[0]
