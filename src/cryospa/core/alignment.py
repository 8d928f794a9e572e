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

The frames' cropped transforms are moved by each iteration's shift updates in place, so the
memory is those transforms plus a few chunks of correlations. :func:`align_stacks` aligns many
independent stacks (a movie's patches) at once, each exactly as :func:`align_global` would.

Shifts are in RELION's convention (:mod:`cryospa.core.motion`): ``s_f`` (``rlnMicrographShiftX/Y``,
movie pixels) is the shift that re-aligns frame ``f``, whose content drifted by ``-s_f``; frame 0
has ``s_0 = 0``; the aligned sum is ``sum_f frame_f`` moved by ``+s_f``
(:func:`cryospa.core.fourier.phase_shift_2d` with ``+s_f``).

Dose weighting is RELION's (``MotioncorrRunner::doseWeighting``): frame ``f`` gets
``w_f(k) = exp(-N_f / (2 Ne(k)))`` with ``N_f`` the 300 kV-equivalent exposure at the *end* of
the frame (pre-exposure included) and ``Ne`` the critical exposure (:mod:`cryospa.core.dose`),
divided by ``sqrt(sum_f w_f(k)^2)`` at every frequency. :class:`DoseWeights` makes these
filters one frame at a time (two float32 maps kept, whatever the number of frames), and
:func:`aligned_sums` makes several sums (e.g. dose-weighted and plain) in one pass over the
frames, transforming and shifting each frame once: the memory of the sums does not grow with
the number of frames.

Everything is torch, on the device of the input, in float32 (complex64).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import torch

from cryospa.core.dose import critical_exposure, equivalent_exposure
from cryospa.core.fourier import phase_shift_2d
from cryospa.errors import ParameterError

__all__ = [
    "AccumulatedMotion",
    "DoseWeights",
    "FrameWeights",
    "GlobalAlignment",
    "accumulated_motion",
    "align_global",
    "align_stacks",
    "aligned_sums",
    "bfactor_weight",
    "dose_weighted_sum",
    "dose_weights",
    "frame_end_exposures",
    "frame_weight_getter",
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
    ones_y = torch.ones((c.shape[0], n, h), dtype=torch.float32, device=dev)
    ones_x = torch.ones((c.shape[0], kx.numel(), n), dtype=torch.float32, device=dev)
    step = 1.0
    for level in range(levels):
        step /= 10.0
        xs = best[:, 0, None] + offsets * step  # (B, n)
        ys = best[:, 1, None] + offsets * step
        # phases reduced to one turn in float64, then made complex64 directly
        phase_y = (2 * math.pi) * torch.remainder(ys[:, :, None] * ky, 1.0)
        phase_x = (2 * math.pi) * torch.remainder(kx[:, None] * xs[:, None, :], 1.0)
        ey = torch.polar(ones_y, phase_y.to(torch.float32))  # (B, n, h)
        ex = torch.polar(ones_x, phase_x.to(torch.float32))  # (B, wh, n)
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


def _find_peaks(cross: torch.Tensor, shape: tuple[int, int], outside: torch.Tensor | None
                ) -> torch.Tensor:
    """Integer peaks (x, y) of ``irfft2(cross)`` as signed displacements, ``(B, 2)`` float64.

    ``outside`` is ``None`` or an ``(h, w)`` bool mask of displacements not to search.
    """
    h, w = shape
    cc = torch.fft.irfft2(cross, s=(h, w))
    if outside is not None:
        cc.masked_fill_(outside, float("-inf"))
    flat = cc.reshape(cc.shape[0], -1).argmax(dim=1)
    iy, ix = flat // w, flat % w
    dev = cc.device
    y = torch.fft.fftfreq(h, d=1.0 / h, device=dev, dtype=torch.float64)
    x = torch.fft.fftfreq(w, d=1.0 / w, device=dev, dtype=torch.float64)
    return torch.stack([x[ix], y[iy]], dim=1)


def _search_mask(shape: tuple[int, int], max_shift_px: float | None, device: torch.device
                 ) -> torch.Tensor | None:
    """``(h, w)`` True at displacements (FFT order) further than ``max_shift_px``; or None."""
    if max_shift_px is None:
        return None
    h, w = shape
    y = torch.fft.fftfreq(h, d=1.0 / h, device=device)
    x = torch.fft.fftfreq(w, d=1.0 / w, device=device)
    return (y[:, None] ** 2 + x[None, :] ** 2) > float(max_shift_px) ** 2


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
        Frames transformed, and (at least) frames whose correlations are computed, at once
        (memory: a few arrays of this many cropped transforms).

    Returns
    -------
    GlobalAlignment
        Shifts in RELION's convention, frame 0 at ``(0, 0)``.
    """
    _check_frames(frames)
    return align_stacks(
        frames[None],
        pixel_size,
        bfactor=bfactor,
        crop=crop,
        max_iterations=max_iterations,
        tolerance_px=tolerance_px,
        max_shift_px=max_shift_px,
        batch_size=batch_size,
    )[0]


#: Complex elements of the correlations computed at once by :func:`align_stacks` (32 MB).
_CHUNK_ELEMENTS = 1 << 22


def align_stacks(
    stacks: torch.Tensor,
    pixel_size: float,
    *,
    bfactor: float = DEFAULT_BFACTOR,
    crop: int | tuple[int, int] | None = None,
    max_iterations: int = 10,
    tolerance_px: float = 0.01,
    max_shift_px: float | None = None,
    batch_size: int = 8,
) -> list[GlobalAlignment]:
    """:func:`align_global` of several independent stacks at once (e.g. a movie's patches).

    ``stacks`` is ``(S, F, h, w)``; each stack is aligned on its own, exactly as
    :func:`align_global` would (its own iterations, stopping when it converges), but the
    arithmetic of all stacks is done in common batches: for many small stacks, far fewer (and
    larger) operations. Other parameters as :func:`align_global`. Returns one
    :class:`GlobalAlignment` per stack.
    """
    if stacks.ndim != 4:
        raise ParameterError(f"stacks must be (S, F, h, w), got shape {tuple(stacks.shape)}")
    for stack in stacks[:1]:
        _check_frames(stack)
    if not (pixel_size > 0):
        raise ParameterError(f"pixel size must be > 0 Å, got {pixel_size}")
    if max_iterations < 1:
        raise ParameterError(f"max_iterations must be >= 1, got {max_iterations}")
    n_stacks, n_frames, h, w = stacks.shape
    if crop is None:
        ch, cw = h, w
    elif isinstance(crop, int):
        ch = cw = int(crop)
    else:
        ch, cw = int(crop[0]), int(crop[1])
    if ch % 2 or cw % 2 or not (2 <= ch <= h and 2 <= cw <= w):
        raise ParameterError(f"crop must be even and at most the frame size {(h, w)}, got {crop}")
    dev = stacks.device
    scale = torch.tensor([w / cw, h / ch], dtype=torch.float64, device=dev)

    # the cropped transforms, moved by the current shifts as they are updated (in place)
    data = torch.empty((n_stacks, n_frames, ch, cw // 2 + 1), dtype=torch.complex64, device=dev)
    flat_data = data.view(n_stacks * n_frames, ch, cw // 2 + 1)
    flat_frames = stacks.reshape(n_stacks * n_frames, h, w)
    for start in range(0, n_stacks * n_frames, batch_size):
        chunk = flat_frames[start : start + batch_size].to(torch.float32)
        flat_data[start : start + batch_size] = _crop_rfft(torch.fft.rfft2(chunk), (ch, cw))
    cropped_pixel = pixel_size * w / cw
    weight = bfactor_weight((ch, cw), cropped_pixel, bfactor, device=dev)
    max_crop = None if max_shift_px is None else float(max_shift_px) / float(scale.min())
    outside = _search_mask((ch, cw), max_crop, dev)
    chunk_size = max(batch_size, _CHUNK_ELEMENTS // (ch * (cw // 2 + 1)))

    shifts = torch.zeros((n_stacks, n_frames, 2), dtype=torch.float64, device=dev)  # cropped px
    update = np.full(n_stacks, np.inf)
    n_done = np.zeros(n_stacks, dtype=np.int64)
    active = np.ones(n_stacks, dtype=bool)
    frame_index = torch.arange(n_frames, device=dev)
    for iteration in range(1, max_iterations + 1):
        live = np.flatnonzero(active)
        n_done[live] = iteration
        # integer peak search (an inverse FFT per frame) while shifts may still jump by pixels
        search = torch.from_numpy((iteration <= 2) | (update[live] > _SEARCH_UPDATE_PX)).to(dev)
        live_t = torch.from_numpy(live).to(dev)
        totals = data.sum(dim=1) if len(live) == n_stacks else data[live_t].sum(dim=1)  # (L, ..)
        # (stack, frame) pairs of the live stacks, in chunks
        pair_stack = torch.arange(len(live), device=dev).repeat_interleave(n_frames)
        pair_frame = frame_index.repeat(len(live))
        deltas = torch.empty((len(live) * n_frames, 2), dtype=torch.float64, device=dev)
        for start in range(0, len(pair_stack), chunk_size):
            ps = pair_stack[start : start + chunk_size]
            aligned = data[live_t[ps], pair_frame[start : start + chunk_size]]
            # CC(d) = sum_p R(p) A(p - d): peak at d where the frame must move by +d
            cross = totals[ps] - aligned
            cross *= aligned.conj()
            cross *= weight
            # where the estimate moves by well under a pixel, refine around it directly
            peaks = torch.zeros((len(ps), 2), dtype=torch.float64, device=dev)
            wanted = search[ps]
            if bool(wanted.all()):
                peaks = _find_peaks(cross, (ch, cw), outside)
            elif bool(wanted.any()):
                peaks[wanted] = _find_peaks(cross[wanted], (ch, cw), outside)
            deltas[start : start + chunk_size] = _refine_peaks(cross, peaks, (ch, cw))
            del cross, aligned
        deltas = deltas.view(len(live), n_frames, 2)
        shifts[live_t] += deltas
        update[live] = (deltas * scale).norm(dim=-1).amax(dim=1).cpu().numpy()
        active[live] = update[live] >= tolerance_px
        moving = torch.from_numpy(np.flatnonzero(active[live])).to(dev)  # the ones going on
        if iteration == max_iterations or len(moving) == 0:
            break
        # move the data of the stacks that go on by this iteration's shifts, in chunks
        move_stack = live_t[moving].repeat_interleave(n_frames)
        move_frame = frame_index.repeat(len(moving))
        move_delta = deltas[moving].reshape(-1, 2).to(torch.float32)
        for start in range(0, len(move_stack), chunk_size):
            index = (move_stack[start : start + chunk_size], move_frame[start : start + chunk_size])
            data[index] *= phase_shift_2d((ch, cw), move_delta[start : start + chunk_size])
    result = ((shifts - shifts[:, :1]) * scale).cpu().numpy().astype(np.float64)
    return [
        GlobalAlignment(
            shifts=result[i],
            n_iterations=int(n_done[i]),
            converged=bool(update[i] < tolerance_px),
            last_update_px=float(update[i]),
        )
        for i in range(n_stacks)
    ]


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


def frame_end_exposures(
    n_frames: int, dose_per_frame: float, pre_exposure: float = 0.0
) -> np.ndarray:
    """Exposure (e/Å²) at the end of each frame: ``pre + dose (f + 1)``, ``f = 0 .. F-1``."""
    return float(pre_exposure) + float(dose_per_frame) * (np.arange(n_frames) + 1.0)


class DoseWeights:
    """RELION's dose-weighting filters of a movie's frames, made one frame at a time.

    Frame ``f``'s filter on the ``(h, w // 2 + 1)`` rfft grid is
    ``w_f(k) = exp(-N_f / (2 Ne(k))) / sqrt(sum_g exp(-N_g / Ne(k)))`` with ``N_f`` the
    300 kV-equivalent exposure at the end of frame ``f`` (``exposures_end``, e/Å², pre-exposure
    included; see :func:`frame_end_exposures`) and ``Ne`` the critical exposure
    (:mod:`cryospa.core.dose`). At ``k = 0`` every weight is ``1 / sqrt(F)``.

    Only two float32 maps are kept (``1 / (2 Ne)`` and the normalisation), whatever the number
    of frames: ``weights(f)`` computes frame ``f``'s filter (one ``exp`` over the grid). The
    exposures are counted from the smallest one (the ratio is the same), so that the
    normalisation never underflows in float32.

    Parameters
    ----------
    shape
        ``(h, w)`` of the frames (real space).
    pixel_size
        Pixel size (Å).
    exposures_end
        ``(F,)`` exposures at the end of each frame (e/Å², at ``voltage``).
    voltage
        Acceleration voltage (kV): 200 kV exposures count ``1 / 0.8``.
    device
        Where the filters are made (default: the CPU).
    """

    def __init__(
        self,
        shape: tuple[int, int],
        pixel_size: float,
        exposures_end: Sequence[float] | np.ndarray,
        voltage: float,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        exposures = np.array([equivalent_exposure(float(e), voltage) for e in exposures_end])
        if exposures.size == 0:
            raise ParameterError("dose weighting needs at least one frame")
        if not (pixel_size > 0):
            raise ParameterError(f"pixel size must be > 0 Å, got {pixel_size}")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.shape = (int(shape[0]), int(shape[1]))
        self.device = dev
        k = torch.sqrt(_physical_k2(self.shape, pixel_size, dev))
        self._half_rate = (0.5 / critical_exposure(k)).to(torch.float32)  # 0 at k = 0
        del k
        self._relative = (exposures - exposures.min()).tolist()
        total = torch.zeros_like(self._half_rate)
        for n in self._relative:
            total += torch.exp(self._half_rate * (-2.0 * n))
        self._inv_norm = total.rsqrt_()

    def __len__(self) -> int:
        """Number of frames."""
        return len(self._relative)

    def __call__(self, frame: int) -> torch.Tensor:
        """Frame ``frame``'s filter, ``(h, w // 2 + 1)`` float32 on :attr:`device`."""
        return torch.exp(self._half_rate * -self._relative[frame]).mul_(self._inv_norm)

    def all(self) -> torch.Tensor:
        """Every frame's filter, ``(F, h, w // 2 + 1)`` float32 (``F`` times the memory)."""
        return torch.stack([self(f) for f in range(len(self))])


def dose_weights(
    shape: tuple[int, int],
    pixel_size: float,
    exposures_end: Sequence[float] | np.ndarray,
    voltage: float,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """RELION's dose-weighting filters of all frames at once, ``(F, h, w // 2 + 1)`` float32.

    See :class:`DoseWeights`, which makes them one frame at a time: use it (it is accepted
    wherever these filters are) for large movies, where all filters at once take as much
    memory as the movie's Fourier transforms.
    """
    return DoseWeights(shape, pixel_size, exposures_end, voltage, device=device).all()


#: Per-frame Fourier weights of an aligned sum: ``(F,)`` factors, ``(F, h, w // 2 + 1)``
#: filters, or a callable returning frame ``f``'s ``(h, w // 2 + 1)`` filter (or a factor),
#: e.g. :class:`DoseWeights`.
FrameWeights: TypeAlias = torch.Tensor | np.ndarray | Callable[[int], torch.Tensor]


def frame_weight_getter(
    weights: FrameWeights,
    n_frames: int,
    rfft_shape: tuple[int, int],
    device: torch.device,
) -> Callable[[int], torch.Tensor]:
    """Frame ``f`` -> its float32 weight on ``device``: a ``(h, w // 2 + 1)`` filter or a factor.

    Checks the number of frames and the filters' shape (:data:`FrameWeights`); raises
    :class:`~cryospa.errors.ParameterError` naming the expected shape.
    """
    expected = (n_frames, *rfft_shape)
    if callable(weights) and not isinstance(weights, torch.Tensor | np.ndarray):
        if isinstance(weights, DoseWeights) and (
            len(weights) != n_frames or weights.shape[0] != rfft_shape[0]
            or weights.shape[1] // 2 + 1 != rfft_shape[1]
        ):
            raise ParameterError(
                f"dose weights are for {len(weights)} frames of {weights.shape}, the sum has "
                f"{n_frames} frames with transforms of {rfft_shape}"
            )
        function = weights

        def call(f: int) -> torch.Tensor:
            w = torch.as_tensor(function(f)).to(device, torch.float32)
            if w.ndim and tuple(w.shape) != rfft_shape:
                raise ParameterError(
                    f"the weights of frame {f} are {tuple(w.shape)}, expected {rfft_shape}"
                )
            return w

        return call
    wt = torch.as_tensor(weights).to(device, torch.float32)
    if wt.ndim == 1:
        wt = wt[:, None, None]
    if wt.shape[0] != n_frames or (wt.shape[1:] != (1, 1) and tuple(wt.shape) != expected):
        raise ParameterError(
            f"weights must be (F,) or (F, h, w // 2 + 1) = {expected}, got {tuple(wt.shape)}"
        )
    return lambda f: wt[f]


def aligned_sums(
    frames: torch.Tensor,
    shifts: torch.Tensor | np.ndarray,
    weights: Sequence[FrameWeights | None] = (None,),
    *,
    shape: tuple[int, int] | None = None,
) -> list[torch.Tensor]:
    """Aligned sums of the same frames under several weightings, in one pass.

    Each frame is transformed (if real) and shifted once, then added to every sum with that
    sum's weight; the memory is a few frame-sized arrays per sum, whatever the number of
    frames.

    Parameters
    ----------
    frames
        ``(F, h, w)`` real frames, or ``(F, h, w // 2 + 1)`` their rfft2 (complex).
    shifts
        ``(F, 2)`` RELION shifts (pixels): frame ``f`` is moved by ``+s_f``.
    weights
        One entry per sum: ``None`` (plain sum) or :data:`FrameWeights` (e.g.
        :class:`DoseWeights`: the dose-weighted sum).
    shape
        ``(h, w)`` of the frames when ``frames`` are transforms; default ``(h, 2 (w_half - 1))``
        (even width).

    Returns
    -------
    list of torch.Tensor
        One ``(h, w)`` float32 sum per entry of ``weights``, on the frames' device.
    """
    if frames.ndim != 3:
        raise ParameterError(f"frames must be (F, h, w), got shape {tuple(frames.shape)}")
    dev = frames.device
    n_frames, h = frames.shape[:2]
    if frames.is_complex():
        out_shape = shape if shape is not None else (h, 2 * (frames.shape[2] - 1))
    else:
        out_shape = (h, int(frames.shape[2]))
    rfft_shape = (h, out_shape[1] // 2 + 1)
    if frames.is_complex() and frames.shape[2] != rfft_shape[1]:
        raise ParameterError(f"transforms of {tuple(frames.shape)} do not fit shape {out_shape}")
    s = _as_shifts(shifts, n_frames, dev)
    getters = [
        None if w is None else frame_weight_getter(w, n_frames, rfft_shape, dev) for w in weights
    ]
    totals = [torch.zeros(rfft_shape, dtype=torch.complex64, device=dev) for _ in getters]
    for f in range(n_frames):
        if frames.is_complex():
            ft = frames[f].to(torch.complex64) * phase_shift_2d(out_shape, s[f])
        else:
            ft = torch.fft.rfft2(frames[f].to(torch.float32))
            ft *= phase_shift_2d(out_shape, s[f])
        for total, getter in zip(totals, getters, strict=True):
            if getter is None:
                total += ft
            else:
                total.addcmul_(ft, getter(f))
    return [torch.fft.irfft2(total, s=out_shape) for total in totals]


def shift_and_sum(
    frames_ft: torch.Tensor,
    shifts: torch.Tensor | np.ndarray,
    weights: FrameWeights | None = None,
    *,
    shape: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The aligned (optionally weighted) sum of frames, in real space.

    One sum of :func:`aligned_sums`: ``frames_ft`` ``(F, h, w // 2 + 1)`` rfft2 of the frames
    (or the real frames), ``shifts`` ``(F, 2)`` RELION shifts (frame ``f`` moved by ``+s_f``),
    ``weights`` ``None`` (plain sum) or :data:`FrameWeights`. Returns the ``(h, w)`` float32
    sum.
    """
    return aligned_sums(frames_ft, shifts, [weights], shape=shape)[0]


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
    :class:`DoseWeights` (made one frame at a time).
    """
    h, wh = frames_ft.shape[-2:]
    out_shape = shape if shape is not None else (h, 2 * (wh - 1))
    weights = DoseWeights(out_shape, pixel_size, exposures_end, voltage, device=frames_ft.device)
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
