"""Global (whole-frame) motion estimation of movies, aligned sums and dose weighting.

The algorithm follows RELION's own motion correction (``MotioncorrRunner::alignPatch``) and
MotionCor2's global step:

1. the frames' Fourier transforms, optionally Fourier-cropped (``crop``) for speed;
2. every frame is cross-correlated with the sum of all the *other* frames (each shifted by the
   current estimate), so a frame's own noise never correlates with itself; the cross-power
   spectrum is weighted by a B-factor ``exp(-B k^2 / 4)`` (``B`` = 150 Å^2 as RELION's
   ``--bfactor``), with ``k`` in 1/Å;
3. the integer peak of the correlation (within ``max_shift_px`` if given) is refined to
   sub-pixel by evaluating the band-limited correlation on finer and finer grids (0.1, then
   0.01 px; a matrix DFT of the weighted cross-power spectrum: exact Fourier interpolation, so
   none of the bias of a parabola fit on the integer grid), then a parabola on the 0.01 px grid;
4. the shifts are updated and the step repeated until no shift changes by more than
   ``tolerance_px`` (0.01 px) or ``max_iterations`` is reached;
5. the shifts are re-referenced to the first frame.

Shifts are in RELION's convention (:mod:`cryospa.core.motion`): ``s_f`` (``rlnMicrographShiftX/Y``,
movie pixels) is the shift that re-aligns frame ``f``, whose content drifted by ``-s_f``; frame 0
has ``s_0 = 0``; the aligned sum is ``sum_f frame_f`` moved by ``+s_f``
(:func:`cryospa.core.fourier.phase_shift_2d` with ``+s_f``).

Dose weighting is RELION's (``MotioncorrRunner::doseWeighting``): frame ``f`` gets
``w_f(k) = exp(-N_f / (2 Ne(k)))`` with ``N_f`` the 300 kV-equivalent exposure at the *end* of
the frame (pre-exposure included) and ``Ne`` the critical exposure (:mod:`cryospa.core.dose`),
divided by ``sqrt(sum_f w_f(k)^2)`` at every frequency.

Everything is torch, on the device of the input, in float32 (complex64).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cryospa.core.dose import critical_exposure, equivalent_exposure
from cryospa.core.fourier import phase_shift_2d
from cryospa.errors import ParameterError

__all__ = [
    "AccumulatedMotion",
    "GlobalAlignment",
    "accumulated_motion",
    "align_global",
    "bfactor_weight",
    "dose_weighted_sum",
    "dose_weights",
    "frame_end_exposures",
    "shift_and_sum",
]

#: RELION's default B-factor (Å^2) of the cross-correlation in motion correction (``--bfactor``).
DEFAULT_BFACTOR = 150.0
#: RELION's default exposure (e/Å²) separating early from late motion
#: (``--dose_motionstats_cutoff``).
DEFAULT_EARLY_CUTOFF = 4.0


@dataclass(frozen=True)
class GlobalAlignment:
    """Result of :func:`align_global`.

    Attributes
    ----------
    shifts
        ``(F, 2)`` float64 numpy array: RELION shifts ``(sx, sy)`` per frame in movie pixels,
        frame 0 exactly ``(0, 0)``.
    n_iterations
        Iterations run.
    converged
        Whether the last update was below the tolerance.
    last_update_px
        Largest shift change of the last iteration (pixels).
    """

    shifts: np.ndarray
    n_iterations: int
    converged: bool
    last_update_px: float


@dataclass(frozen=True)
class AccumulatedMotion:
    """RELION's ``rlnAccumMotionTotal / Early / Late`` of a movie (:func:`accumulated_motion`)."""

    total: float
    early: float
    late: float


#: After two iterations, the integer peak search is skipped while the largest update stays below
#: this (pixels): the sub-pixel refinement covers +-0.6 px around the current estimate.
_SEARCH_UPDATE_PX = 0.3

# ---------------------------------------------------------------------------------------------
# helpers


def _crop_rfft(ft: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Fourier-crop ``(..., h, w // 2 + 1)`` rfft2 data to a smaller even ``shape``."""
    h, w = shape
    full_h = ft.shape[-2]
    if h == full_h and w // 2 + 1 == ft.shape[-1]:
        return ft
    rows = torch.cat(
        [
            torch.arange(0, h // 2, device=ft.device),
            torch.arange(full_h - h // 2, full_h, device=ft.device),
        ]
    )
    return ft[..., rows, : w // 2 + 1]


def _physical_k2(shape: tuple[int, int], pixel_size: float, device: torch.device) -> torch.Tensor:
    """``|k|^2`` (1/Å^2) on the rfft grid of an ``(h, w)`` image of pixel size ``pixel_size``."""
    h, w = shape
    ky = torch.fft.fftfreq(h, d=pixel_size, device=device, dtype=torch.float64)
    kx = torch.fft.rfftfreq(w, d=pixel_size, device=device, dtype=torch.float64)
    return ky[:, None] ** 2 + kx[None, :] ** 2


def bfactor_weight(
    shape: tuple[int, int],
    pixel_size: float,
    bfactor: float = DEFAULT_BFACTOR,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``exp(-B k^2 / 4)`` (``k`` in 1/Å), 0 at ``k = 0``, on the ``(h, w // 2 + 1)`` rfft grid."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    k2 = _physical_k2(shape, pixel_size, dev)
    weight = torch.exp(-float(bfactor) * k2 / 4.0)
    weight[0, 0] = 0.0
    return weight.to(torch.float32)


def _check_frames(frames: torch.Tensor) -> None:
    if frames.ndim != 3:
        raise ParameterError(f"frames must be (F, h, w), got shape {tuple(frames.shape)}")
    if frames.shape[0] < 2:
        raise ParameterError(f"motion estimation needs >= 2 frames, got {frames.shape[0]}")
    if frames.shape[-1] % 2 or frames.shape[-2] % 2:
        raise ParameterError(f"frame sizes must be even, got {tuple(frames.shape[-2:])}")


def _refine_peaks(
    cross: torch.Tensor,
    start: torch.Tensor,
    shape: tuple[int, int],
    levels: int = 2,
    half_width: int = 6,
) -> torch.Tensor:
    """Refine integer peaks of ``irfft2(cross)`` by Fourier interpolation on finer grids.

    ``cross`` is ``(B, h, w // 2 + 1)`` complex, ``start`` the ``(B, 2)`` (x, y) peaks. Each level
    evaluates the band-limited correlation exactly (matrix DFT, complex64) on a
    ``(2 half_width + 1)^2`` grid of step ``10^-level`` px around the current best (+-0.6 px, then
    +-0.06 px: a little more than the previous step's uncertainty) and keeps the maximum; a parabola
    through the maximum and its neighbours along each axis of the last grid gives the final
    position (its error is far below the last step, on which the peak is smooth).
    """
    h, w = shape
    dev = cross.device
    ky = torch.fft.fftfreq(h, device=dev, dtype=torch.float64)
    kx = torch.fft.rfftfreq(w, device=dev, dtype=torch.float64)
    # phases 2 pi k x are formed in float64 (x up to hundreds of px), the products in complex64
    # the rfft half-plane counts twice except the kx = 0 and Nyquist columns
    col = torch.full_like(kx, 2.0)
    col[0] = 1.0
    if w % 2 == 0:
        col[-1] = 1.0
    c = cross.to(torch.complex64) * col.to(torch.float32)
    best = start.to(torch.float64).clone()
    offsets = torch.arange(-half_width, half_width + 1, device=dev, dtype=torch.float64)
    n = offsets.numel()
    batch = torch.arange(c.shape[0], device=dev)
    ones_y = torch.ones((c.shape[0], n, h), dtype=torch.float64, device=dev)
    ones_x = torch.ones((c.shape[0], kx.numel(), n), dtype=torch.float64, device=dev)
    step = 1.0
    for level in range(levels):
        step /= 10.0
        xs = best[:, 0, None] + offsets * step  # (B, n)
        ys = best[:, 1, None] + offsets * step
        ey = torch.polar(ones_y, (2 * math.pi) * torch.remainder(ys[:, :, None] * ky, 1.0))
        ex = torch.polar(ones_x, (2 * math.pi) * torch.remainder(kx[:, None] * xs[:, None, :], 1.0))
        ey, ex = ey.to(torch.complex64), ex.to(torch.complex64)  # (B, n, h), (B, wh, n)
        values = torch.bmm(torch.bmm(ey, c), ex).real  # (B, n_y, n_x)
        flat = values.reshape(values.shape[0], -1).argmax(dim=1)
        j, i = flat // n, flat % n
        best = torch.stack([xs[batch, i], ys[batch, j]], dim=1)
        if level == levels - 1:
            jj, ii = j.clamp(1, n - 2), i.clamp(1, n - 2)
            centre = values[batch, jj, ii]
            for axis, (lo, hi) in enumerate(
                (
                    (values[batch, jj, ii - 1], values[batch, jj, ii + 1]),
                    (values[batch, jj - 1, ii], values[batch, jj + 1, ii]),
                )
            ):
                curvature = lo + hi - 2.0 * centre
                offset = torch.where(
                    curvature < 0, 0.5 * (lo - hi) / curvature.clamp(max=-1e-300), 0.0
                ).clamp(-0.5, 0.5)
                index = ii if axis == 0 else jj
                grid = xs if axis == 0 else ys
                best[:, axis] = grid[batch, index] + offset * step
    return best


def _find_peaks(
    cross: torch.Tensor, shape: tuple[int, int], max_shift_px: float | None
) -> torch.Tensor:
    """Integer peaks (x, y) of ``irfft2(cross)`` as signed displacements, ``(B, 2)`` float64."""
    h, w = shape
    cc = torch.fft.irfft2(cross, s=(h, w))
    dev = cc.device
    y = torch.fft.fftfreq(h, d=1.0 / h, device=dev)
    x = torch.fft.fftfreq(w, d=1.0 / w, device=dev)
    if max_shift_px is not None:
        outside = (y[:, None] ** 2 + x[None, :] ** 2) > float(max_shift_px) ** 2
        cc = cc.masked_fill(outside, float("-inf"))
    flat = cc.reshape(cc.shape[0], -1).argmax(dim=1)
    iy, ix = flat // w, flat % w
    return torch.stack([x[ix], y[iy]], dim=1).to(torch.float64)


# ---------------------------------------------------------------------------------------------
# global alignment


def align_global(
    frames: torch.Tensor,
    pixel_size: float,
    *,
    bfactor: float = DEFAULT_BFACTOR,
    crop: int | tuple[int, int] | None = None,
    max_iterations: int = 10,
    tolerance_px: float = 0.01,
    max_shift_px: float | None = None,
    batch_size: int = 8,
) -> GlobalAlignment:
    """Whole-frame shifts of a movie by iterative alignment of each frame to the sum of the others.

    Parameters
    ----------
    frames
        ``(F, h, w)`` real frames (gain-corrected, defects filled), any real dtype; the
        computation runs on their device in float32.
    pixel_size
        Movie pixel size (Å), for the B-factor.
    bfactor
        B-factor (Å^2) weighting the cross-correlation, ``exp(-B k^2 / 4)``.
    crop
        Fourier-crop the frames to this even size (``n`` or ``(h, w)``, each at most the frame
        size) before aligning: faster, and loses only frequencies the B-factor damps anyway.
        Shifts are returned in full-size pixels.
    max_iterations, tolerance_px
        Stop after ``max_iterations`` or when no shift changes by more than ``tolerance_px``.
    max_shift_px
        Search the correlation peak within this radius (full-size pixels) of the current estimate;
        ``None``: anywhere.
    batch_size
        Frames whose correlations are computed at once (memory).

    Returns
    -------
    GlobalAlignment
        Shifts in RELION's convention, frame 0 at ``(0, 0)``.
    """
    _check_frames(frames)
    if not (pixel_size > 0):
        raise ParameterError(f"pixel size must be > 0 Å, got {pixel_size}")
    if max_iterations < 1:
        raise ParameterError(f"max_iterations must be >= 1, got {max_iterations}")
    n_frames, h, w = frames.shape
    if crop is None:
        ch, cw = h, w
    elif isinstance(crop, int):
        ch = cw = int(crop)
    else:
        ch, cw = int(crop[0]), int(crop[1])
    if ch % 2 or cw % 2 or not (2 <= ch <= h and 2 <= cw <= w):
        raise ParameterError(f"crop must be even and at most the frame size {(h, w)}, got {crop}")
    scale = torch.tensor([w / cw, h / ch], dtype=torch.float64, device=frames.device)
    dev = frames.device

    data = torch.empty((n_frames, ch, cw // 2 + 1), dtype=torch.complex64, device=dev)
    for start in range(0, n_frames, batch_size):
        chunk = frames[start : start + batch_size].to(torch.float32)
        data[start : start + batch_size] = _crop_rfft(torch.fft.rfft2(chunk), (ch, cw))
    cropped_pixel = pixel_size * w / cw
    weight = bfactor_weight((ch, cw), cropped_pixel, bfactor, device=dev)
    max_crop = None if max_shift_px is None else float(max_shift_px) / float(scale.min())

    shifts = torch.zeros((n_frames, 2), dtype=torch.float64, device=dev)  # cropped pixels
    update = float("inf")
    n_done = 0
    for iteration in range(1, max_iterations + 1):
        n_done = iteration
        # integer peak search (an inverse FFT per frame) while shifts may still jump by pixels
        search = iteration <= 2 or update > _SEARCH_UPDATE_PX
        ramps = phase_shift_2d((ch, cw), shifts.to(torch.float32))
        total = (data * ramps).sum(dim=0)
        deltas = torch.empty_like(shifts)
        for start in range(0, n_frames, batch_size):
            aligned = data[start : start + batch_size] * ramps[start : start + batch_size]
            # CC(d) = sum_p R(p) A(p - d): peak at d where the frame must move by +d
            cross = (total[None] - aligned) * aligned.conj() * weight
            if search:
                peaks = _find_peaks(cross, (ch, cw), max_crop)
            else:  # the estimate moves by well under a pixel: refine around it directly
                peaks = torch.zeros((cross.shape[0], 2), dtype=torch.float64, device=dev)
            deltas[start : start + batch_size] = _refine_peaks(cross, peaks, (ch, cw))
        shifts = shifts + deltas
        update = float((deltas * scale).norm(dim=1).max())
        if update < tolerance_px:
            break
    result = (shifts - shifts[0]) * scale
    return GlobalAlignment(
        shifts=result.cpu().numpy().astype(np.float64),
        n_iterations=n_done,
        converged=update < tolerance_px,
        last_update_px=update,
    )


# ---------------------------------------------------------------------------------------------
# sums and dose weighting


def _as_shifts(
    shifts: torch.Tensor | np.ndarray, n_frames: int, device: torch.device
) -> torch.Tensor:
    s = torch.as_tensor(
        np.asarray(shifts, dtype=np.float64) if isinstance(shifts, np.ndarray) else shifts
    )
    s = s.to(device=device, dtype=torch.float32)
    if s.shape != (n_frames, 2):
        raise ParameterError(f"shifts must be ({n_frames}, 2), got {tuple(s.shape)}")
    return s


def shift_and_sum(
    frames_ft: torch.Tensor,
    shifts: torch.Tensor | np.ndarray,
    weights: torch.Tensor | np.ndarray | None = None,
    *,
    shape: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The aligned (optionally weighted) sum of frames, in real space.

    Parameters
    ----------
    frames_ft
        ``(F, h, w // 2 + 1)`` rfft2 of the frames.
    shifts
        ``(F, 2)`` RELION shifts (pixels): frame ``f`` is moved by ``+s_f``.
    weights
        ``None`` (plain sum), ``(F,)`` per-frame factors or ``(F, h, w // 2 + 1)`` per-frequency
        filters (e.g. :func:`dose_weights`).
    shape
        ``(h, w)`` of the frames; default ``(h, 2 (w_half - 1))`` (even width).

    Returns
    -------
    torch.Tensor
        ``(h, w)`` float32 sum.
    """
    n_frames, h, wh = frames_ft.shape
    out_shape = shape if shape is not None else (h, 2 * (wh - 1))
    s = _as_shifts(shifts, n_frames, frames_ft.device)
    total = torch.zeros((h, wh), dtype=torch.complex64, device=frames_ft.device)
    wt: torch.Tensor | None = None
    if weights is not None:
        wt = torch.as_tensor(weights).to(frames_ft.device, torch.float32)
        if wt.ndim == 1:
            wt = wt[:, None, None]
        if wt.shape[0] != n_frames:
            raise ParameterError(f"weights must have {n_frames} frames, got {tuple(wt.shape)}")
    for f in range(n_frames):
        term = frames_ft[f].to(torch.complex64) * phase_shift_2d(out_shape, s[f])
        if wt is not None:
            term = term * wt[f]
        total += term
    return torch.fft.irfft2(total, s=out_shape)


def frame_end_exposures(
    n_frames: int, dose_per_frame: float, pre_exposure: float = 0.0
) -> np.ndarray:
    """Exposure (e/Å²) at the end of each frame: ``pre + dose (f + 1)``, ``f = 0 .. F-1``."""
    return float(pre_exposure) + float(dose_per_frame) * (np.arange(n_frames) + 1.0)


def dose_weights(
    shape: tuple[int, int],
    pixel_size: float,
    exposures_end: Sequence[float] | np.ndarray,
    voltage: float,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """RELION's dose-weighting filters ``(F, h, w // 2 + 1)`` (float32) on the rfft grid.

    ``w_f(k) = exp(-N_f / (2 Ne(k))) / sqrt(sum_g exp(-N_g / Ne(k)))`` with ``N_f`` the
    300 kV-equivalent exposure at the end of frame ``f`` (``exposures_end``, e/Å², pre-exposure
    included; see :func:`frame_end_exposures`) and ``Ne`` the critical exposure. At ``k = 0``
    every weight is ``1 / sqrt(F)``.
    """
    exposures = [equivalent_exposure(float(e), voltage) for e in exposures_end]
    if not exposures:
        raise ParameterError("dose weighting needs at least one frame")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    k = torch.sqrt(_physical_k2(shape, pixel_size, dev))
    ne = critical_exposure(k)
    n = torch.tensor(exposures, dtype=torch.float64, device=dev)[:, None, None]
    w = torch.exp(-n / (2.0 * ne))
    w = w / torch.sqrt((w * w).sum(dim=0))
    return w.to(torch.float32)


def dose_weighted_sum(
    frames_ft: torch.Tensor,
    shifts: torch.Tensor | np.ndarray,
    pixel_size: float,
    exposures_end: Sequence[float] | np.ndarray,
    voltage: float,
    *,
    shape: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The aligned, dose-weighted sum (RELION's ``--dose_weighting``) of rfft2 frames.

    ``frames_ft`` is ``(F, h, w // 2 + 1)``; the other arguments as :func:`shift_and_sum` and
    :func:`dose_weights`.
    """
    h, wh = frames_ft.shape[-2:]
    out_shape = shape if shape is not None else (h, 2 * (wh - 1))
    weights = dose_weights(out_shape, pixel_size, exposures_end, voltage, device=frames_ft.device)
    return shift_and_sum(frames_ft, shifts, weights, shape=out_shape)


# ---------------------------------------------------------------------------------------------
# statistics


def accumulated_motion(
    shifts: np.ndarray | torch.Tensor,
    pixel_size: float = 1.0,
    *,
    dose_per_frame: float,
    pre_exposure: float = 0.0,
    early_cutoff: float = DEFAULT_EARLY_CUTOFF,
) -> AccumulatedMotion:
    """RELION's accumulated global motion of one movie: total, early and late path lengths.

    As ``MotioncorrRunner`` (``rlnAccumMotionTotal / Early / Late``): the path length
    ``sum_f |s_f - s_{f-1}|`` over frames ``f = 1 .. F-1`` (0-based); a step belongs to the
    early part when its end frame's 1-based number ``f + 1`` is ``<= (cutoff - pre) / dose``
    (``cutoff`` = RELION's ``--dose_motionstats_cutoff``, 4 e/Å²), else to the late part.

    The result is in units of ``shifts * pixel_size``: Å for the movie pixel size. RELION sums
    its shifts in pixels and writes those numbers (despite the label's "Å"); pass
    ``pixel_size=1`` to reproduce its STAR values.
    """
    if not (dose_per_frame > 0):
        raise ParameterError(f"dose per frame must be > 0 e/Å², got {dose_per_frame}")
    s = np.asarray(
        shifts.detach().cpu() if isinstance(shifts, torch.Tensor) else shifts, dtype=np.float64
    )
    if s.ndim != 2 or s.shape[1] != 2:
        raise ParameterError(f"shifts must be (F, 2), got {s.shape}")
    steps = np.hypot(*np.diff(s, axis=0).T) * float(pixel_size)
    cutoff_frame = (float(early_cutoff) - float(pre_exposure)) / float(dose_per_frame)
    frame_number = np.arange(2, s.shape[0] + 1, dtype=np.float64)  # 1-based end frame of a step
    early = frame_number <= cutoff_frame
    return AccumulatedMotion(
        total=float(steps.sum()), early=float(steps[early].sum()), late=float(steps[~early].sum())
    )
