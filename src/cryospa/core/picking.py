"""Particle picking: Laplacian-of-Gaussian blobs, 2D templates, peaks a minimum distance apart.

Three parts:

* **Peak finding** (any picker: LoG, template matching). :func:`local_maxima` finds
  the pixels of a score map that are at least as high as their 8 neighbours and above a
  threshold; :func:`refine_subpixel` moves each to the vertex of a parabola through it and its
  two neighbours along each axis; :func:`suppress_close` is greedy non-maximum suppression by
  distance (the best peak is kept, every weaker one closer than its exclusion radius is
  dropped, and so on); :func:`find_peaks` chains the three. :func:`match_positions` pairs
  picks with known positions one to one (precision and recall against a ground truth).
* **The LoG picker** (:func:`pick_log`), after RELION's reference-free picker
  (``relion_autopick --LoG``; ``AutoPicker::autoPickLoGOneMicrograph``; Zivanov et al. 2018,
  eLife 7:e42166, methods):

  1. the micrograph is normalised (pixels more than ``outlier_zscore`` standard deviations from
     the mean are replaced by the mean of the others; then zero mean, unit variance) and
     negated unless the particles are white, so that particles are bright;
  2. it is down-sampled by Fourier cropping to a working pixel size of half the maximum
     resolution (the working image's Nyquist frequency is ``1 / max_resolution``), taking the
     periodic component of the micrograph (Moisan 2011) so that the FFTs do not see the jumps
     between opposite edges;
  3. it is filtered with scale-normalised LoG filters, in Fourier space
     ``L_d(k) = (k / k_d)^2 exp(-k^2 / (2 k_d^2))`` with ``k_d = 1 / (2 d)`` for a blob diameter
     ``d`` (RELION's ``LoGFilterMap``; ``L_d`` peaks at ``2 / e`` for every ``d``, so the
     responses of different scales compare). The diameters are ``min / 5, min / 4, min / 3,
     min / 2`` (too small), ``min, (min + max) / 2, max`` (in range) and ``2 max .. 5 max``
     (too big) (:func:`log_diameters`);
  4. each pixel keeps its best response (the figure of merit) and the diameter giving it; pixels
     whose best diameter is out of range, or that lie within half the minimum diameter of an
     edge, cannot be picked;
  5. the mean and standard deviation of the figure of merit over the pickable pixels set the
     scale: a pick needs a positive response and at least ``mean + adjust_threshold * sd``;
  6. peaks are taken best first; each excludes the others within ``(its diameter + min) / 2``
     (RELION's neighbour rule; or a fixed minimum distance); a peak at or above
     ``mean + upper_threshold * sd`` (carbon edges, ice contamination) is not picked but still
     excludes its neighbours.

  Differences from RELION: candidate peaks are local maxima (RELION takes the highest remaining
  pixel, which may be the flank of an excluded peak); peak positions are refined to sub-pixel
  precision on the working grid (RELION's are whole working pixels); the periodic component
  (RELION filters the micrograph as it is, and its LoG answers the edges' jumps); non-square
  micrographs are processed as they are (RELION pads them to a square with noise); the edge
  band does not enter the statistics; outliers are replaced by the mean of the other pixels;
  the figure of merit reported is in standard deviations above the mean (RELION reports the
  raw response). On the simulated tutorial set these raise F1 from 0.78 (RELION 3.1) to 0.85.

* **The template picker** (:func:`pick_template`), after RELION's reference-based autopicker
  (``relion_autopick --ref``; ``AutoPicker::autoPickOneMicrograph``; Scheres 2015, J. Struct.
  Biol. 189:114), with the figure of merit of Roseman's fast local correlation (2003, J. Struct.
  Biol. 145:91):

  1. the micrograph is normalised as for LoG picking, negated unless the particles are white
     (the references have white particles), and down-sampled by Fourier cropping of its periodic
     component to a working pixel of half ``lowpass_angstrom`` (RELION's ``--lowpass`` with
     ``--shrink 0``; ``shrink`` sets another working grid, as RELION's);
  2. each reference is low-passed to the working Nyquist frequency, resampled to the working
     pixel size and rotated in-plane every ``psi_step_degrees`` (:func:`rotated_templates`;
     RELION's psi convention), multiplied by the micrograph's CTF (on a padded box, so that
     the CTF's delocalisation is kept; optionally left at 1 up to its first peak), then cut to
     the disc of the mask diameter and normalised there to zero mean and unit norm;
  3. the micrograph's local mean and variance under the disc are computed at every position
     by FFT (correlations with the disc of the image and of its square), and the cross-
     correlation of every template with the micrograph by one batched FFT product (templates x
     angles, a bounded number at a time); the figure of merit of a position is the normalised
     cross-correlation ``sum(t x) / (sqrt(N) sd_local)``, Pearson's r between the template and
     the micrograph under the disc (-1 to 1), best over references and angles, and which
     reference and angle gave it;
  4. peaks of at least ``threshold`` are picked best first, each excluding the others within
     the minimum distance (default: the particle diameter); none within half a particle (and
     half the mask) of an edge; with ``max_stddev_noise``, peaks whose surroundings (the ring
     outside the particle) have a standard deviation above that many times its median over the
     micrograph (aggregates, ice, carbon edges) are dropped but still exclude their neighbours.
     With ``auto_threshold`` the threshold is the micrograph's own: the candidate peaks (those
     kept by the minimum distance, figure of merit >= 0) fall into background and particles,
     two groups whose figures of merit are split by Otsu's threshold
     (:func:`otsu_threshold`, the split that maximises the variance between the groups); when
     the split explains less than ``min_separation`` of the variance (an empty micrograph: one
     group of background peaks; or a crowded one) ``threshold`` is used. The normalised
     cross-correlation of particles depends on their contrast (defocus, ice, pixel size, the
     particle's mass), so a fixed threshold that suits one data set cuts another's particles.

  Differences from RELION: RELION's figure of merit is a ratio of Gaussian likelihoods (of the
  CTF-filtered reference against an empty one) relative to its expected value, with the
  micrograph normalised by the mean and standard deviation in the ring outside the particle;
  ours is the plain normalised cross-correlation under the whole disc (comparable between
  micrographs and references, and its histogram separates particles from background);
  RELION's ``--max_stddev_noise`` is in units of the micrograph's standard deviation, ours
  relative to the median over the micrograph; peaks are local maxima refined to sub-pixel
  positions, and the templates are cut to the disc after the CTF is applied.

Conventions: images ``(h, w)``; positions are ``(x, y)`` = (column, row) in pixels with pixel
``i`` centred at ``i`` (0-based, as RELION's coordinates); everything stays on the input's
device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cryospa.core.ctf import ctf_2d
from cryospa.core.fourier import centre_to_origin, fast_fft_size, fourier_rescale, origin_to_centre

__all__ = [
    "LogPicks",
    "Peaks",
    "TemplatePicks",
    "find_peaks",
    "local_maxima",
    "log_diameters",
    "log_filter",
    "match_positions",
    "normalise_micrograph",
    "otsu_threshold",
    "pick_log",
    "pick_template",
    "psi_angles",
    "reference_particle_diameter_angstrom",
    "refine_subpixel",
    "rotated_templates",
    "suppress_close",
    "template_diameters_angstrom",
    "working_shape",
]


# --------------------------------------------------------------------------------------------
# peak finding (shared by the pickers)
# --------------------------------------------------------------------------------------------


def _check_map(score: torch.Tensor, name: str = "score") -> None:
    if score.ndim != 2 or not score.is_floating_point():
        raise ValueError(
            f"{name} must be a real 2D (h, w) map, got shape {tuple(score.shape)} "
            f"and dtype {score.dtype}"
        )


def local_maxima(
    score: torch.Tensor, *, threshold: float = -math.inf, exclude_border_px: int = 0
) -> torch.Tensor:
    """Pixels at least as high as their 8 neighbours and ``>= threshold``.

    Parameters
    ----------
    score
        ``(h, w)`` map; ``-inf`` or NaN marks pixels that cannot be peaks.
    threshold
        Smallest accepted value.
    exclude_border_px
        Pixels closer than this to an edge are not peaks.

    Returns
    -------
    torch.Tensor
        ``(n, 2)`` long (row, column) of the maxima, in row-major order. On a flat plateau every
        pixel is returned (:func:`suppress_close` keeps one).
    """
    _check_map(score)
    if exclude_border_px < 0:
        raise ValueError(f"exclude_border_px must be >= 0, got {exclude_border_px}")
    s = torch.nan_to_num(score, nan=-math.inf)
    pooled = F.max_pool2d(s[None, None], kernel_size=3, stride=1, padding=1)[0, 0]
    ok = (s >= pooled) & (s >= threshold) & torch.isfinite(s)
    b = int(exclude_border_px)
    if b > 0:
        ok[:b] = False
        ok[-b:] = False
        ok[:, :b] = False
        ok[:, -b:] = False
    return torch.nonzero(ok)


def refine_subpixel(score: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Sub-pixel peak positions: the vertex of a parabola through 3 pixels along each axis.

    Parameters
    ----------
    score
        ``(h, w)`` map (finite around the peaks).
    index
        ``(n, 2)`` long (row, column) of peaks (e.g. from :func:`local_maxima`).

    Returns
    -------
    torch.Tensor
        ``(n, 2)`` (row, column) in pixels, each within half a pixel of ``index`` (peaks on an
        edge or next to a non-finite value are not moved along that axis).
    """
    _check_map(score)
    h, w = score.shape
    out = index.to(score.dtype).clone()
    if index.numel() == 0:
        return out
    r, c = index[:, 0], index[:, 1]
    for axis, (pos, size) in enumerate(((r, h), (c, w))):
        lo = (pos - 1).clamp(min=0)
        hi = (pos + 1).clamp(max=size - 1)
        if axis == 0:
            f0, fm, fp = score[r, c], score[lo, c], score[hi, c]
        else:
            f0, fm, fp = score[r, c], score[r, lo], score[r, hi]
        curv = fm - 2 * f0 + fp
        good = (pos > 0) & (pos < size - 1) & torch.isfinite(fm + fp + f0) & (curv < 0)
        delta = torch.where(good, 0.5 * (fm - fp) / torch.where(good, curv, -1.0), 0.0)
        out[:, axis] += delta.clamp(-0.5, 0.5)
    return out


def suppress_close(
    positions: torch.Tensor, scores: torch.Tensor, radius: float | torch.Tensor
) -> torch.Tensor:
    """Greedy non-maximum suppression by distance.

    Peaks are visited best first; a peak not yet excluded is kept and excludes every other peak
    closer than its own ``radius``.

    Parameters
    ----------
    positions
        ``(n, 2)`` positions (any units, the same as ``radius``).
    scores
        ``(n,)`` higher is better (ties: the earlier index first).
    radius
        Exclusion radius, one for all or ``(n,)`` per peak (> 0).

    Returns
    -------
    torch.Tensor
        ``(n,)`` bool, True for the kept peaks (on the input's device).
    """
    n = positions.shape[0]
    if positions.ndim != 2 or positions.shape[1] != 2 or scores.shape != (n,):
        raise ValueError(
            f"positions must be (n, 2) and scores (n,), got {tuple(positions.shape)} and "
            f"{tuple(scores.shape)}"
        )
    device = positions.device
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=device)
    # a short sequential loop over small arrays: done on the CPU whatever the input's device
    pos = positions.detach().to("cpu", torch.float64)
    sc = scores.detach().to("cpu", torch.float64)
    r = torch.as_tensor(radius, dtype=torch.float64).to("cpu").expand(n)
    order = torch.sort(-sc, stable=True).indices
    pos, r2 = pos[order], (r[order] ** 2)
    alive = torch.ones(n, dtype=torch.bool)
    kept = torch.zeros(n, dtype=torch.bool)
    alive_list = alive.numpy()  # shares memory with ``alive``: a cheap per-element test
    for i in range(n):
        if not alive_list[i]:
            continue
        kept[i] = True
        rest = pos[i + 1 :]
        d2 = ((rest - pos[i]) ** 2).sum(-1)
        alive[i + 1 :] &= d2 >= r2[i]
    keep = torch.zeros(n, dtype=torch.bool)
    keep[order] = kept
    return keep.to(device)


@dataclass
class Peaks:
    """Peaks of a score map, best first.

    Attributes
    ----------
    yx
        ``(n, 2)`` sub-pixel (row, column) positions.
    index
        ``(n, 2)`` long (row, column) pixel of each peak.
    score
        ``(n,)`` the map's value at ``index``.
    n_over_max
        Peaks that excluded their neighbours but were dropped for reaching ``max_score``.
    """

    yx: torch.Tensor
    index: torch.Tensor
    score: torch.Tensor
    n_over_max: int = 0

    def __len__(self) -> int:
        return int(self.score.shape[0])


def find_peaks(
    score: torch.Tensor,
    *,
    min_distance_px: float | torch.Tensor,
    threshold: float = -math.inf,
    max_score: float = math.inf,
    exclude_border_px: int = 0,
    subpixel: bool = True,
) -> Peaks:
    """Local maxima above ``threshold``, at least a minimum distance apart, best first.

    Parameters
    ----------
    score
        ``(h, w)`` map; ``-inf`` marks pixels that cannot be peaks.
    min_distance_px
        Exclusion radius in pixels around a kept peak: one value, or an ``(h, w)`` map read at
        each peak (a radius per peak, e.g. from its detected size).
    threshold
        Smallest value of a peak.
    max_score
        Peaks at or above this value still exclude their neighbours but are dropped (e.g. to
        reject contamination).
    exclude_border_px
        No peaks closer than this to an edge.
    subpixel
        Refine positions with :func:`refine_subpixel`.

    Returns
    -------
    Peaks
    """
    _check_map(score)
    index = local_maxima(score, threshold=threshold, exclude_border_px=exclude_border_px)
    values = score[index[:, 0], index[:, 1]]
    yx = refine_subpixel(score, index) if subpixel else index.to(score.dtype)
    if isinstance(min_distance_px, torch.Tensor) and min_distance_px.ndim == 2:
        if min_distance_px.shape != score.shape:
            raise ValueError(
                f"min_distance_px map {tuple(min_distance_px.shape)} does not match the score "
                f"map {tuple(score.shape)}"
            )
        radius: float | torch.Tensor = min_distance_px[index[:, 0], index[:, 1]]
    else:
        radius = min_distance_px
    keep = suppress_close(yx, values, radius)
    over = keep & (values >= max_score)
    keep = keep & ~over
    order = torch.argsort(values[keep], descending=True, stable=True)
    return Peaks(yx[keep][order], index[keep][order], values[keep][order], int(over.sum()))


def match_positions(
    found: torch.Tensor, truth: torch.Tensor, *, max_distance: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match picks to true positions one to one, closest pairs first, within a distance.

    Parameters
    ----------
    found, truth
        ``(n, 2)`` and ``(m, 2)`` positions (same units as ``max_distance``).
    max_distance
        Pairs further apart than this are never matched.

    Returns
    -------
    i_found, i_truth
        ``(k,)`` long indices of the matched pairs (each pick and each true position at most
        once), closest pair first. Precision is ``k / n``, recall ``k / m``.
    """
    if found.ndim != 2 or truth.ndim != 2 or found.shape[-1] != 2 or truth.shape[-1] != 2:
        raise ValueError(
            f"found and truth must be (n, 2), got {tuple(found.shape)} and {tuple(truth.shape)}"
        )
    d = torch.cdist(found.to(torch.float64), truth.to(found.device, torch.float64))
    pairs = torch.nonzero(d <= max_distance).cpu()
    order = torch.argsort(d[pairs[:, 0], pairs[:, 1]].cpu(), stable=True)
    used_f: set[int] = set()
    used_t: set[int] = set()
    out: list[tuple[int, int]] = []
    for i, j in pairs[order].tolist():
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
            out.append((i, j))
    idx = torch.tensor(out, dtype=torch.long).reshape(-1, 2).to(found.device)
    return idx[:, 0], idx[:, 1]


# --------------------------------------------------------------------------------------------
# the Laplacian-of-Gaussian picker
# --------------------------------------------------------------------------------------------


def log_diameters(
    min_diameter_angstrom: float, max_diameter_angstrom: float, *, max_search: int = 5
) -> tuple[list[float], list[int]]:
    """The blob diameters searched by the LoG picker and whether each is in range.

    Returns
    -------
    diameters : list of float
        In Å: ``min / max_search, ..., min / 2, min, (min + max) / 2, max, 2 max, ...,
        max_search * max``.
    labels : list of int
        -1 too small, 0 in range, +1 too big.
    """
    lo, hi = float(min_diameter_angstrom), float(max_diameter_angstrom)
    if not (0 < lo <= hi):
        raise ValueError(f"need 0 < min diameter <= max diameter, got {lo} and {hi} Å")
    if max_search < 1:
        raise ValueError(f"max_search must be >= 1, got {max_search}")
    small = [lo / i for i in range(max_search, 1, -1)]
    big = [hi * i for i in range(2, max_search + 1)]
    diameters = [*small, lo, (lo + hi) / 2, hi, *big]
    labels = [-1] * len(small) + [0, 0, 0] + [1] * len(big)
    return diameters, labels


def working_shape(
    shape: tuple[int, int], *, pixel_size_angstrom: float, max_resolution_angstrom: float
) -> tuple[int, int]:
    """Size of the down-sampled image whose Nyquist frequency is ``1 / max_resolution``.

    Each axis of ``n`` pixels becomes ``2 round(n * pixel_size / max_resolution)`` (as RELION's
    ``--lowpass`` with ``--shrink 0``), at least 2 and at most ``n`` (no up-sampling).
    """
    if pixel_size_angstrom <= 0 or max_resolution_angstrom <= 0:
        raise ValueError(
            f"pixel size and maximum resolution must be > 0, got {pixel_size_angstrom} and "
            f"{max_resolution_angstrom} Å"
        )
    out = []
    for n in shape:
        m = 2 * round(n * pixel_size_angstrom / max_resolution_angstrom)
        out.append(int(min(max(m, 2), n)))
    return out[0], out[1]


def normalise_micrograph(micrograph: torch.Tensor, *, outlier_zscore: float = 8.0) -> torch.Tensor:
    """Zero mean and unit standard deviation, after replacing outliers by the mean.

    Pixels more than ``outlier_zscore`` standard deviations from the mean (hot pixels, dead
    areas) are first set to the mean of the others (RELION's autopicker uses the mean of all).
    A constant image becomes zeros.
    """
    _check_map(micrograph, "micrograph")
    x = micrograph.to(torch.float32) if micrograph.dtype == torch.float16 else micrograph
    mean, sd = x.mean(), x.std(unbiased=False)
    if not bool(sd > 0):
        return torch.zeros_like(x)
    outlier = (x - mean).abs() > outlier_zscore * sd
    if bool(outlier.any()):
        x = torch.where(outlier, x[~outlier].mean(), x)
    mean, sd = x.mean(), x.std(unbiased=False)
    return (x - mean) / sd if bool(sd > 0) else torch.zeros_like(x)


def log_filter(
    image: torch.Tensor,
    *,
    pixel_size_angstrom: float | tuple[float, float],
    diameter_angstrom: float,
) -> torch.Tensor:
    """Scale-normalised Laplacian-of-Gaussian response of ``image`` for blobs of one diameter.

    In Fourier space the image is multiplied by ``(k / k_d)^2 exp(-k^2 / (2 k_d^2))``,
    ``k_d = 1 / (2 d)`` (the negative Laplacian of a Gaussian, so bright blobs give positive
    responses; its gain peaks at ``2 / e`` at ``k = sqrt(2) k_d`` whatever ``d``).

    Parameters
    ----------
    image
        ``(..., h, w)`` real images.
    pixel_size_angstrom
        Pixel size, or ``(along y, along x)`` for non-square pixels.
    diameter_angstrom
        Blob diameter ``d``.

    Returns
    -------
    torch.Tensor
        ``(..., h, w)`` filtered images.
    """
    if image.ndim < 2 or not image.is_floating_point():
        raise ValueError(f"image must be real (..., h, w), got {tuple(image.shape)}")
    filters = _log_filters(image.shape[-2:], pixel_size_angstrom,
                           torch.tensor([float(diameter_angstrom)]), device=image.device,
                           dtype=image.dtype)
    return torch.fft.irfft2(torch.fft.rfft2(image) * filters[0], s=image.shape[-2:])


def _periodic_rfft2(x: torch.Tensor) -> torch.Tensor:
    """rfft2 of the periodic component of ``x`` (Moisan 2011, J. Math. Imaging Vis. 39:161).

    An image is the sum of a periodic component and a smooth one that carries the jumps between
    opposite edges. Filtering the periodic component with FFTs does not see the image's edges
    as steps (which the LoG filters would answer along every edge); the smooth component has a
    zero Laplacian inside the image, so dropping it changes LoG responses only near the edges.
    """
    h, w = x.shape[-2:]
    v = torch.zeros_like(x)  # the jumps across the edges
    v[..., 0, :] = x[..., -1, :] - x[..., 0, :]
    v[..., -1, :] = -v[..., 0, :]
    v[..., :, 0] += x[..., :, -1] - x[..., :, 0]
    v[..., :, -1] += x[..., :, 0] - x[..., :, -1]
    real = torch.float64 if x.dtype == torch.float64 else torch.float32
    cy = torch.cos(2 * math.pi * torch.fft.fftfreq(h, device=x.device, dtype=real))
    cx = torch.cos(2 * math.pi * torch.fft.rfftfreq(w, device=x.device, dtype=real))
    denom = 2 * cy[:, None] + 2 * cx[None, :] - 4  # (h, w // 2 + 1), 0 only at the origin
    denom[0, 0] = 1.0
    smooth = torch.fft.rfft2(v) / denom
    smooth[..., 0, 0] = 0
    return torch.fft.rfft2(x) - smooth


def _crop_rfft2(
    ft: torch.Tensor, shape: tuple[int, int], new_shape: tuple[int, int]
) -> torch.Tensor:
    """Down-sample by Fourier cropping: rfft2 of ``shape`` -> rfft2 of the smaller ``new_shape``.

    The frequencies below the new Nyquist frequency are kept, the Nyquist row and column of an
    even new size are set to 0 (a symmetric low-pass), and the values are scaled so that the
    inverse transform keeps the image's mean. Pixel 0 stays on pixel 0: a position ``x`` in the
    small image is ``x * n / n'`` in the large one.
    """
    (h, w), (hn, wn) = shape, new_shape
    if (hn, wn) == (h, w):
        return ft
    rows = torch.fft.fftfreq(hn, d=1.0 / hn, device=ft.device).round().long() % h  # (hn,)
    out = ft.index_select(-2, rows)[..., : wn // 2 + 1] * (hn * wn / (h * w))
    if hn % 2 == 0:
        out[..., hn // 2, :] = 0
    if wn % 2 == 0:
        out[..., wn // 2] = 0
    return out


def _log_filters(
    shape: tuple[int, ...] | torch.Size,
    pixel_size: float | tuple[float, float],
    diameters: torch.Tensor,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The ``(n_d, h, w // 2 + 1)`` LoG filters ``(k / k_d)^2 exp(-(k / k_d)^2 / 2)``."""
    h, w = int(shape[0]), int(shape[1])
    py, px = (pixel_size, pixel_size) if isinstance(pixel_size, int | float) else pixel_size
    ky = torch.fft.fftfreq(h, d=float(py), device=device, dtype=dtype)
    kx = torch.fft.rfftfreq(w, d=float(px), device=device, dtype=dtype)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2  # (h, w // 2 + 1) in 1/Å²
    q = k2 * (2.0 * diameters.to(device, dtype))[:, None, None] ** 2  # (n_d, h, w // 2 + 1)
    return q * torch.exp(-0.5 * q)


def _best_log_response(
    ft: torch.Tensor,
    shape: tuple[int, int],
    pixel_size: tuple[float, float],
    diameters: list[float],
    *,
    max_elements: int = 2**25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest LoG response over the diameters and the index of the diameter giving it.

    ``ft`` is the rfft2 of an ``(h, w)`` image; the filters are applied a batch at a time (at
    most ``max_elements`` real values at once). Ties go to the first diameter.
    """
    real = torch.float64 if ft.dtype == torch.complex128 else torch.float32
    d = torch.tensor(diameters, dtype=torch.float64)
    step = max(1, max_elements // (shape[0] * shape[1]))

    def batch(start: int) -> tuple[torch.Tensor, torch.Tensor]:
        filters = _log_filters(shape, pixel_size, d[start : start + step], device=ft.device,
                               dtype=real)
        value, index = torch.fft.irfft2(ft * filters, s=shape).max(dim=0)  # (h, w)
        return value, index + start

    best, arg = batch(0)
    for start in range(step, len(diameters), step):
        value, index = batch(start)
        better = value > best
        best = torch.where(better, value, best)
        arg = torch.where(better, index, arg)
    return best, arg


@dataclass
class LogPicks:
    """Result of :func:`pick_log` for one micrograph.

    Attributes
    ----------
    xy
        ``(n, 2)`` float64 particle centres (x, y) in micrograph pixels, best first.
    fom
        ``(n,)`` figure of merit: the LoG response in standard deviations above the mean of the
        pickable pixels.
    diameter_angstrom
        ``(n,)`` the in-range LoG diameter giving each pick's best response.
    image
        ``(h', w')`` the normalised, down-sampled micrograph (particles bright unless
        ``white``; i.e. negated for dark particles), for display.
    working_pixel_size_angstrom
        ``(along y, along x)`` pixel size of ``image``.
    mean, sd
        Statistics of the LoG response over the pickable pixels.
    threshold, upper
        Picks have ``threshold <= fom < upper`` (in standard deviations).
    n_too_high
        Peaks dropped for reaching ``upper``.
    """

    xy: torch.Tensor
    fom: torch.Tensor
    diameter_angstrom: torch.Tensor
    image: torch.Tensor
    working_pixel_size_angstrom: tuple[float, float]
    mean: float
    sd: float
    threshold: float
    upper: float
    n_too_high: int

    def __len__(self) -> int:
        return int(self.fom.shape[0])


def pick_log(
    micrograph: torch.Tensor,
    *,
    pixel_size_angstrom: float,
    min_diameter_angstrom: float,
    max_diameter_angstrom: float,
    max_resolution_angstrom: float = 20.0,
    white: bool = False,
    adjust_threshold: float = 0.0,
    upper_threshold: float = 999.0,
    min_distance_angstrom: float | None = None,
    neighbour_factor: float = 1.0,
    outlier_zscore: float = 8.0,
    max_search: int = 5,
    edge_angstrom: float | None = None,
) -> LogPicks:
    """Pick particles on one micrograph with RELION's Laplacian-of-Gaussian method.

    See the module docstring for the steps.

    Parameters
    ----------
    micrograph
        ``(h, w)`` real image (any units; particles dark unless ``white``).
    pixel_size_angstrom
        Its pixel size.
    min_diameter_angstrom, max_diameter_angstrom
        Range of particle diameters.
    max_resolution_angstrom
        Resolution the micrograph is down-sampled to (working pixel = half of it); no
        down-sampling when it is finer than Nyquist.
    white
        Particles brighter than the background (e.g. after contrast inversion).
    adjust_threshold
        Lower threshold in standard deviations above the mean response (higher: fewer picks).
    upper_threshold
        Peaks at or above this many standard deviations are not picked (contamination).
    min_distance_angstrom
        Fixed minimum distance between picks; None: RELION's rule, ``(d + min) / 2`` with ``d``
        the diameter detected at the stronger pick, times ``neighbour_factor``.
    neighbour_factor
        Scales RELION's neighbour distance (RELION's ``--LoG_neighbour`` / 100).
    outlier_zscore
        Pixels further than this many standard deviations from the mean are replaced by it.
    max_search
        The too-small / too-big diameters go down to ``min / max_search`` and up to
        ``max_search * max``.
    edge_angstrom
        No picks closer than this to an edge (None: half the minimum diameter, as RELION).

    Returns
    -------
    LogPicks
        On the micrograph's device.
    """
    _check_map(micrograph, "micrograph")
    if min_distance_angstrom is not None and min_distance_angstrom <= 0:
        raise ValueError(f"min_distance_angstrom must be > 0, got {min_distance_angstrom}")
    if neighbour_factor <= 0:
        raise ValueError(f"neighbour_factor must be > 0, got {neighbour_factor}")
    diameters, labels = log_diameters(
        min_diameter_angstrom, max_diameter_angstrom, max_search=max_search
    )
    h, w = micrograph.shape
    x = normalise_micrograph(micrograph, outlier_zscore=outlier_zscore)
    if not white:
        x = -x
    hw, ww = working_shape(
        (h, w), pixel_size_angstrom=pixel_size_angstrom,
        max_resolution_angstrom=max_resolution_angstrom,
    )
    ft = _crop_rfft2(_periodic_rfft2(x), (h, w), (hw, ww))  # rfft2 of the working image
    image = torch.fft.irfft2(ft, s=(hw, ww))
    py, px = pixel_size_angstrom * h / hw, pixel_size_angstrom * w / ww

    # best response over the scales, and which scale gave it
    best, arg = _best_log_response(ft, (hw, ww), (py, px), diameters)
    best_label = torch.tensor(labels, device=image.device)[arg]
    best_d = torch.tensor(diameters, device=image.device, dtype=image.dtype)[arg]

    # pickable: best scale in range, not within the edge band
    edge = 0.5 * min_diameter_angstrom if edge_angstrom is None else edge_angstrom
    edge_y, edge_x = math.ceil(edge / py), math.ceil(edge / px)
    ok = best_label == 0
    ok[:edge_y] = False
    ok[hw - edge_y :] = False
    ok[:, :edge_x] = False
    ok[:, ww - edge_x :] = False
    values = best[ok]
    empty = torch.zeros((0,), dtype=torch.float64, device=image.device)
    if values.numel() < 2 or not bool(values.std(unbiased=False) > 0):
        return LogPicks(empty.reshape(0, 2), empty, empty, image, (py, px), 0.0, 0.0,
                        adjust_threshold, upper_threshold, 0)
    mean, sd = float(values.mean()), float(values.std(unbiased=False))
    z = torch.where(ok & (best > 0), (best - mean) / sd, -math.inf)

    # exclusion radius in working pixels (isotropic within the ~1 % of rounding the axes)
    pix = math.sqrt(py * px)
    if min_distance_angstrom is None:
        radius: float | torch.Tensor = (best_d + min_diameter_angstrom) / 2 * neighbour_factor / pix
    else:
        radius = min_distance_angstrom / pix
    peaks = find_peaks(z, min_distance_px=radius, threshold=adjust_threshold,
                       max_score=upper_threshold, subpixel=False)
    # sub-pixel positions on the working grid -> micrograph pixels (pixel 0 stays on pixel 0)
    yx = refine_subpixel(best, peaks.index).to(torch.float64)
    ys, xs = yx[:, 0] * (h / hw), yx[:, 1] * (w / ww)
    return LogPicks(
        xy=torch.stack([xs, ys], dim=-1),
        fom=peaks.score.to(torch.float64),
        diameter_angstrom=best_d[peaks.index[:, 0], peaks.index[:, 1]].to(torch.float64),
        image=image,
        working_pixel_size_angstrom=(py, px),
        mean=mean,
        sd=sd,
        threshold=adjust_threshold,
        upper=upper_threshold,
        n_too_high=peaks.n_over_max,
    )


# --------------------------------------------------------------------------------------------
# the template (reference-based) picker
# --------------------------------------------------------------------------------------------


def psi_angles(psi_step_degrees: float) -> torch.Tensor:
    """In-plane angles ``0, s, 2 s, ...`` (degrees) with ``s`` adjusted to divide 360 evenly.

    As RELION's autopicker: ``n = round(360 / step)`` angles ``360 k / n`` (one angle, 0, for a
    step of 360 or more).
    """
    if not psi_step_degrees > 0:
        raise ValueError(f"psi step must be > 0 degrees, got {psi_step_degrees}")
    n = max(1, round(360.0 / float(psi_step_degrees)))
    return torch.arange(n, dtype=torch.float64) * (360.0 / n)


def _radial_profile(references: torch.Tensor) -> torch.Tensor:
    """Mean over references of their rotational average minus the corner value, ``(b // 2 + 1,)``.

    Shell ``i`` holds the pixels at distance ``[i - 0.5, i + 0.5)`` from the centre ``b // 2``.
    """
    refs = _check_references(references)
    b = refs.shape[-1]
    y = torch.arange(b, device=refs.device, dtype=refs.dtype) - b // 2
    r = torch.sqrt(y[:, None] ** 2 + y[None, :] ** 2).round().long().flatten()  # (b * b,)
    values = (refs - refs[:, :1, :1]).mean(0).flatten()  # the corner is the outside value
    n_shells = int(r.max()) + 1
    total = torch.zeros(n_shells, dtype=refs.dtype, device=refs.device)
    count = torch.zeros_like(total)
    total.index_add_(0, r, values)
    count.index_add_(0, r, torch.ones_like(values))
    return total[: b // 2 + 1] / count[: b // 2 + 1].clamp(min=1)


def reference_particle_diameter_angstrom(
    references: torch.Tensor, *, pixel_size_angstrom: float, fraction: float = 0.05
) -> float:
    """Diameter of the particle in 2D references: where their mean density profile ends.

    The rotational average of the references (their corner value subtracted), averaged over
    the references, is followed outwards from its peak to the first radius where it falls to
    ``fraction`` of the peak (linearly interpolated between shells). For class averages this is
    the particle's edge (beyond it lies flat or slightly negative background), for projections
    the edge of the density.

    Parameters
    ----------
    references
        ``(n, b, b)`` images with white particles, centre at pixel ``b // 2``.
    pixel_size_angstrom
        Their pixel size.
    fraction
        Relative level taken as the edge.

    Returns
    -------
    float
        Diameter in Å (the box size when the profile never falls that low).
    """
    profile = _radial_profile(references).to(torch.float64)
    b = references.shape[-1]
    peak_at = int(torch.argmax(profile))
    peak = float(profile[peak_at])
    if not peak > 0:
        return b * pixel_size_angstrom
    level = fraction * peak
    for i in range(peak_at + 1, len(profile)):
        if float(profile[i]) <= level:
            hi, lo = float(profile[i - 1]), float(profile[i])
            radius = i - 1 + (hi - level) / (hi - lo) if hi > lo else float(i)
            return float(min(2 * radius, b) * pixel_size_angstrom)
    return b * pixel_size_angstrom


def template_diameters_angstrom(
    references: torch.Tensor,
    *,
    pixel_size_angstrom: float,
    particle_diameter_angstrom: float | None = None,
    mask_diameter_angstrom: float | None = None,
    mask_factor: float = 1.5,
) -> tuple[float, float]:
    """The particle and mask diameters of template picking, given or from the references.

    The particle diameter defaults to :func:`reference_particle_diameter_angstrom`, the mask
    diameter to ``mask_factor`` particle diameters: the disc of the comparison holds a ring of
    background around the particle, so that neighbours and aggregates lower the figure of merit
    (and its values compare between data sets).

    Returns
    -------
    (float, float)
        Particle and mask diameters in Å.
    """
    particle = (float(particle_diameter_angstrom) if particle_diameter_angstrom
                else reference_particle_diameter_angstrom(
                    references, pixel_size_angstrom=pixel_size_angstrom))
    mask = float(mask_diameter_angstrom) if mask_diameter_angstrom else mask_factor * particle
    return particle, mask


def _check_references(references: torch.Tensor) -> torch.Tensor:
    if references.ndim == 2:
        references = references[None]
    if (references.ndim != 3 or references.shape[-1] != references.shape[-2]
            or not references.is_floating_point() or references.shape[0] == 0):
        raise ValueError(
            f"references must be real square images (n, b, b) with n >= 1, got shape "
            f"{tuple(references.shape)} and dtype {references.dtype}"
        )
    if references.shape[-1] < 4:
        raise ValueError(f"references of {references.shape[-1]} px are too small (>= 4 px)")
    return references.to(torch.float32) if references.dtype == torch.float16 else references


def _disc_offsets(
    box: int, pixel_size: tuple[float, float], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``(box, box)`` distance in Å of each pixel from the centre pixel ``box // 2``."""
    c = box // 2
    py, px = pixel_size
    ys = (torch.arange(box, device=device, dtype=dtype) - c) * py
    xs = (torch.arange(box, device=device, dtype=dtype) - c) * px
    return torch.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)


def rotated_templates(
    references: torch.Tensor,
    psi_degrees: torch.Tensor,
    *,
    reference_pixel_size_angstrom: float,
    pixel_size_angstrom: float | tuple[float, float],
    box_px: int,
) -> torch.Tensor:
    """References low-passed, resampled to another pixel size and rotated in-plane.

    Each reference is low-passed to the Nyquist frequency of the new pixel size, Fourier
    resampled to half the new pixel size (a 2x oversampled grid) and interpolated (bilinear)
    on the new grid, rotated by each psi. The rotation is RELION's: the template for ``psi`` is
    ``out(r) = ref(R^T r)`` with ``R`` the in-plane block of ``euler_to_matrix((0, 0, psi))``,
    so that a particle given ``rlnAnglePsi = psi`` (2D classification's convention) is the
    reference rotated by ``psi``.

    Parameters
    ----------
    references
        ``(n, b, b)`` images, centre at pixel ``b // 2``.
    psi_degrees
        ``(p,)`` in-plane angles.
    reference_pixel_size_angstrom
        Pixel size of ``references``.
    pixel_size_angstrom
        New pixel size, or ``(along y, along x)``.
    box_px
        New box size (centre at ``box_px // 2``).

    Returns
    -------
    torch.Tensor
        ``(n, p, box_px, box_px)`` on the references' device and dtype; values are densities
        (the mean is kept by the resampling).
    """
    refs = _check_references(references)
    n, b, _ = refs.shape
    device, dtype = refs.device, refs.dtype
    py, px = ((pixel_size_angstrom, pixel_size_angstrom)
              if isinstance(pixel_size_angstrom, int | float) else pixel_size_angstrom)
    a = float(reference_pixel_size_angstrom)
    if not (a > 0 and py > 0 and px > 0 and box_px >= 1):
        raise ValueError(f"pixel sizes must be > 0 and the box >= 1, got {a}, {(py, px)} Å and "
                         f"{box_px} px")
    # low-pass to the new grid's Nyquist frequency, then resample to half the new pixel size
    k_max = 1.0 / (2.0 * max(py, px))
    ky = torch.fft.fftfreq(b, d=a, device=device, dtype=dtype)
    kx = torch.fft.rfftfreq(b, d=a, device=device, dtype=dtype)
    keep = (ky[:, None] ** 2 + kx[None, :] ** 2) <= k_max**2
    ft = torch.fft.rfft2(centre_to_origin(refs, 2)) * keep
    refs = origin_to_centre(torch.fft.irfft2(ft, s=(b, b)), 2)
    bi = 2 * round(b * a / min(py, px))  # twice the size at the new pixel size
    if bi < b:
        refs = fourier_rescale(refs, (bi, bi))
        a = a * b / bi
        b = bi
    # bilinear interpolation of the rotated, rescaled grid
    psi = torch.deg2rad(psi_degrees.to(device, torch.float64)).to(dtype)  # (p,)
    c, s = torch.cos(psi), torch.sin(psi)
    centre = box_px // 2
    oy = (torch.arange(box_px, device=device, dtype=dtype) - centre) * py  # Å
    ox = (torch.arange(box_px, device=device, dtype=dtype) - centre) * px
    gy, gx = torch.meshgrid(oy, ox, indexing="ij")  # (box, box)
    # R = [[c, s], [-s, c]] on (x, y); R^T r = (c x - s y, s x + c y)
    qx = c[:, None, None] * gx - s[:, None, None] * gy  # (p, box, box) Å
    qy = s[:, None, None] * gx + c[:, None, None] * gy
    ix = qx / a + b // 2  # reference pixels
    iy = qy / a + b // 2
    grid = torch.stack([2 * ix / (b - 1) - 1, 2 * iy / (b - 1) - 1], dim=-1)  # (p, box, box, 2)
    p = psi.shape[0]
    img = refs[:, None].expand(n, p, b, b).reshape(n * p, 1, b, b)
    grid = grid[None].expand(n, p, box_px, box_px, 2).reshape(n * p, box_px, box_px, 2)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(n, p, box_px, box_px)


def _place_at_origin(tiles: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(..., b, b)`` tiles centred at ``b // 2`` -> ``(..., h, w)`` with the centre at (0, 0)."""
    b = tiles.shape[-1]
    h, w = shape
    c = b // 2
    out = tiles.new_zeros((*tiles.shape[:-2], h, w))
    rows = (torch.arange(b, device=tiles.device) - c) % h
    cols = (torch.arange(b, device=tiles.device) - c) % w
    out[..., rows[:, None], cols[None, :]] = tiles
    return out


@dataclass
class TemplatePicks:
    """Result of :func:`pick_template` for one micrograph.

    Attributes
    ----------
    xy
        ``(n, 2)`` float64 particle centres (x, y) in micrograph pixels, best first.
    fom
        ``(n,)`` figure of merit: the normalised cross-correlation (Pearson's r between the
        CTF-filtered template and the micrograph under the circular mask) of the best template.
    reference
        ``(n,)`` long, 0-based index of the best reference.
    psi_degrees
        ``(n,)`` float64 in-plane angle of the best template (RELION's ``rlnAnglePsi``).
    image
        ``(h', w')`` the normalised, low-passed working micrograph (particles bright, as the
        references), for display.
    fom_map
        ``(h', w')`` the best figure of merit at every working pixel (-inf where nothing can be
        picked).
    working_pixel_size_angstrom
        ``(along y, along x)`` pixel size of ``image``.
    noise_sd_map
        ``(h', w')`` standard deviation of the working micrograph in the ring around each
        position (from the particle's radius to the larger of its diameter and the mask's
        radius), relative to its median over the
        micrograph (the quantity ``max_stddev_noise`` limits).
    threshold
        Picks have ``fom >= threshold``.
    n_rejected
        Peaks dropped for their surroundings' standard deviation (``max_stddev_noise``).
    diameter_angstrom
        The particle diameter used.
    mask_diameter_angstrom
        The diameter of the disc of the comparison.
    candidate_fom
        ``(m,)`` float64 figure of merit of every candidate peak of at least
        ``min(threshold, 0)`` kept by the minimum distance, picked or not (its histogram shows
        where particles and background separate).
    separation
        With ``auto_threshold``: the fraction of the candidates' variance Otsu's split explains
        (``threshold`` is the split when it reaches ``min_separation``); else None.
    split
        ``threshold`` is this micrograph's split (else the ``threshold`` given).
    """

    xy: torch.Tensor
    fom: torch.Tensor
    reference: torch.Tensor
    psi_degrees: torch.Tensor
    image: torch.Tensor
    fom_map: torch.Tensor
    working_pixel_size_angstrom: tuple[float, float]
    noise_sd_map: torch.Tensor
    threshold: float
    n_rejected: int
    diameter_angstrom: float
    mask_diameter_angstrom: float
    candidate_fom: torch.Tensor
    separation: float | None = None
    split: bool = False

    def __len__(self) -> int:
        return int(self.fom.shape[0])


def _local_sums(
    ft: torch.Tensor, ft_sq: torch.Tensor, mask: torch.Tensor, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Local mean and variance of an image under ``mask`` at every position (by FFT).

    ``ft`` and ``ft_sq`` are the rfft2 of the image and of its square, ``mask`` an ``(b, b)``
    weight centred at ``b // 2``. Returns ``(mean, var, n)``: ``(h, w)`` maps and the mask's
    weight.
    """
    n = float(mask.sum())
    fm = torch.fft.rfft2(_place_at_origin(mask, shape)).conj()
    mean = torch.fft.irfft2(ft * fm, s=shape) / n
    mean_sq = torch.fft.irfft2(ft_sq * fm, s=shape) / n
    return mean, (mean_sq - mean * mean).clamp(min=0), n


def pick_template(
    micrograph: torch.Tensor,
    references: torch.Tensor,
    *,
    pixel_size_angstrom: float,
    reference_pixel_size_angstrom: float,
    particle_diameter_angstrom: float | None = None,
    mask_diameter_angstrom: float | None = None,
    ctf: Mapping[str, Any] | None = None,
    ctf_intact_first_peak: bool = False,
    lowpass_angstrom: float = 20.0,
    shrink: float = 0.0,
    psi_step_degrees: float = 5.0,
    threshold: float = 0.5,
    auto_threshold: bool = False,
    min_separation: float = 0.8,
    min_distance_angstrom: float | None = None,
    max_stddev_noise: float | None = None,
    white: bool = False,
    outlier_zscore: float = 8.0,
    edge_angstrom: float | None = None,
    max_elements: int = 2**20,
) -> TemplatePicks:
    """Pick particles on one micrograph by matching 2D references (RELION's reference picking).

    See the module docstring for the steps.

    Parameters
    ----------
    micrograph
        ``(h, w)`` real image (particles dark unless ``white``).
    references
        ``(n, b, b)`` 2D references with white particles (class averages of contrast-inverted
        particles, or projections), centre at ``b // 2``.
    pixel_size_angstrom, reference_pixel_size_angstrom
        Pixel sizes of the micrograph and of the references.
    particle_diameter_angstrom
        Diameter of the particles: the default minimum distance between picks and twice the
        edge band (None: from the references, :func:`reference_particle_diameter_angstrom`).
    mask_diameter_angstrom
        Diameter of the disc under which the templates and the micrograph's local mean and
        variance are compared (None: 1.5 particle diameters, :func:`template_diameters_angstrom`).
    ctf
        Keyword arguments of :func:`cryospa.core.ctf.ctf_2d` for this micrograph (defocus,
        astigmatism, voltage, Cs, amplitude contrast, ...): the templates are multiplied by
        it; None: no CTF.
    ctf_intact_first_peak
        Leave the CTF at 1 up to its first peak (RELION's ``--ctf_intact_first_peak``).
    lowpass_angstrom
        Resolution limit of the comparison: frequencies beyond ``1 / lowpass`` are dropped and,
        with ``shrink`` 0, the micrograph is down-sampled to a working pixel of half of it.
    shrink
        0: working grid from ``lowpass_angstrom``; in (0, 1]: the working grid is this fraction
        of the micrograph's size, as RELION's ``--shrink`` (finer than the low-pass's grid: the
        low-passed spectrum is zero-padded; coarser: the resolution is limited by the grid).
    psi_step_degrees
        In-plane angular step (:func:`psi_angles`).
    threshold
        Smallest figure of merit (normalised cross-correlation, -1 to 1) of a pick (with
        ``auto_threshold``: where the candidates do not split).
    auto_threshold
        Set the threshold from this micrograph's candidate peaks (Otsu; see the module
        docstring).
    min_separation
        With ``auto_threshold``: the least fraction of the candidates' variance the split must
        explain (Otsu's separability; 2 / pi = 0.64 for one Gaussian group; 0.87-0.95 on
        micrographs of particles).
    min_distance_angstrom
        Minimum distance between picks (None: the particle diameter).
    max_stddev_noise
        Drop peaks whose surroundings (the ring from the particle's radius to the larger of the
        mask's radius and the particle's diameter) have a standard deviation above this many
        times its median over the micrograph (aggregates, ice, carbon edges); they still
        exclude their neighbours. None: no limit.
    white
        Particles brighter than the background in the micrograph.
    outlier_zscore
        Micrograph pixels further than this many standard deviations from the mean are
        replaced by it.
    edge_angstrom
        No picks closer than this to an edge (None: half the particle diameter; never closer
        than half the mask).
    max_elements
        Largest number of real values in one batch of correlation maps (bounds the memory:
        about 16 bytes each; the default, 16 MB, is also the fastest on a CPU).

    Returns
    -------
    TemplatePicks
        On the micrograph's device.
    """
    _check_map(micrograph, "micrograph")
    refs = _check_references(references).to(micrograph.device)
    if not (pixel_size_angstrom > 0 and reference_pixel_size_angstrom > 0):
        raise ValueError(f"pixel sizes must be > 0, got {pixel_size_angstrom} (micrograph) and "
                         f"{reference_pixel_size_angstrom} Å (references)")
    if not lowpass_angstrom >= 2 * pixel_size_angstrom * 0.999:
        raise ValueError(f"low-pass {lowpass_angstrom} Å is finer than Nyquist "
                         f"({2 * pixel_size_angstrom} Å)")
    if not 0 <= shrink <= 1:
        raise ValueError(f"shrink must be in [0, 1], got {shrink}")
    if min_distance_angstrom is not None and not min_distance_angstrom > 0:
        raise ValueError(f"min_distance_angstrom must be > 0, got {min_distance_angstrom}")
    if max_stddev_noise is not None and not max_stddev_noise > 0:
        raise ValueError(f"max_stddev_noise must be > 0, got {max_stddev_noise}")
    for value in (particle_diameter_angstrom, mask_diameter_angstrom):
        if value is not None and not value > 0:
            raise ValueError(f"particle and mask diameters must be > 0 Å, got {value}")
    diameter, mask_d = template_diameters_angstrom(
        refs, pixel_size_angstrom=reference_pixel_size_angstrom,
        particle_diameter_angstrom=particle_diameter_angstrom,
        mask_diameter_angstrom=mask_diameter_angstrom)
    if not (diameter > 0 and mask_d > 0):
        raise ValueError(f"particle and mask diameters must be > 0 Å, got {diameter} and "
                         f"{mask_d}")

    # the working micrograph: normalised, particles bright, low-passed and down-sampled
    h, w = micrograph.shape
    x = normalise_micrograph(micrograph, outlier_zscore=outlier_zscore)
    if not white:
        x = -x
    real = x.dtype
    lp_shape = working_shape((h, w), pixel_size_angstrom=pixel_size_angstrom,
                             max_resolution_angstrom=lowpass_angstrom)
    shape = lp_shape
    if shrink > 0:
        shape = (min(h, max(2, 2 * round(shrink * h / 2))),
                 min(w, max(2, 2 * round(shrink * w / 2))))
    hw, ww = shape
    crop = (min(hw, lp_shape[0]), min(ww, lp_shape[1]))
    ft = _crop_rfft2(_periodic_rfft2(x), (h, w), crop)
    if shape != crop:  # zero-pad the low-passed spectrum onto the finer working grid
        ft = _pad_rfft2(ft, crop, shape)
    image = torch.fft.irfft2(ft, s=shape)
    py, px = pixel_size_angstrom * h / hw, pixel_size_angstrom * w / ww
    pix = math.sqrt(py * px)

    # templates: rotated, rescaled, CTF-filtered, masked to the particle's disc, normalised
    psi = psi_angles(psi_step_degrees)
    outer = max(0.5 * mask_d, diameter)  # outer radius of the ring around the particle
    box = 2 * math.ceil(outer / min(py, px)) + 3  # odd, the ring and a margin
    # rotated in a box holding the whole reference (its density outside the disc reaches the
    # disc through the CTF), then cut to the disc's box
    extent = refs.shape[-1] * float(reference_pixel_size_angstrom) / min(py, px)
    big = max(box, 2 * math.ceil(extent / 2) + 1)
    tiles = rotated_templates(refs.to(real), psi, reference_pixel_size_angstrom=float(
        reference_pixel_size_angstrom), pixel_size_angstrom=(py, px), box_px=big)
    n_ref, n_psi = tiles.shape[:2]
    tiles = tiles.reshape(n_ref * n_psi, big, big)
    if ctf is not None:
        tiles = _apply_ctf(tiles, (py, px), ctf, intact_first_peak=ctf_intact_first_peak)
    cut = (big - box) // 2
    tiles = tiles[:, cut : cut + box, cut : cut + box]
    dist = _disc_offsets(box, (py, px), micrograph.device, real)
    disc = (dist <= 0.5 * mask_d).to(real)  # (box, box)
    ring = ((dist > 0.5 * diameter) & (dist <= outer)).to(real)
    n_disc = float(disc.sum())
    tiles = (tiles - (tiles * disc).sum((-2, -1), keepdim=True) / n_disc) * disc
    norm = tiles.square().sum((-2, -1), keepdim=True).sqrt()
    tiles = torch.where(norm > 0, tiles / norm.clamp(min=1e-30), 0.0)

    # local statistics of the micrograph under the disc (and in the ring around it)
    ft_sq = torch.fft.rfft2(image * image)
    _, var, n = _local_sums(ft, ft_sq, disc, shape)
    sd = torch.sqrt(var)
    # a floor on the local SD: flat areas (no noise) must not make large ratios out of rounding
    floor = 1e-3 * float(image.std()) + 1e-30
    denom = math.sqrt(n) * sd.clamp(min=floor)
    _, ring_var, _ = _local_sums(ft, ft_sq, ring, shape)
    ring_sd = torch.sqrt(ring_var)

    # best normalised cross-correlation over references and angles, a batch at a time
    best = torch.full(shape, -math.inf, dtype=real, device=micrograph.device)
    arg = torch.zeros(shape, dtype=torch.long, device=micrograph.device)
    step = max(1, max_elements // (hw * ww))
    for start in range(0, tiles.shape[0], step):
        chunk = tiles[start : start + step]
        ft_t = torch.fft.rfft2(_place_at_origin(chunk, shape))  # (k, hw, ww // 2 + 1)
        cc = torch.fft.irfft2(ft[None] * ft_t.conj(), s=shape)  # (k, hw, ww)
        value, index = cc.max(dim=0)
        better = value > best
        best = torch.where(better, value, best)
        arg = torch.where(better, index + start, arg)
    fom = (best / denom).clamp(-1.0, 1.0)

    # pickable pixels: away from the edges
    edge = max(0.5 * diameter if edge_angstrom is None else float(edge_angstrom), 0.5 * mask_d)
    ey, ex = math.ceil(edge / py), math.ceil(edge / px)
    ok = torch.ones(shape, dtype=torch.bool, device=micrograph.device)
    ok[:ey] = False
    ok[hw - ey :] = False
    ok[:, :ex] = False
    ok[:, ww - ex :] = False
    fom = torch.where(ok, fom, -math.inf)
    rel_ring = ring_sd / ring_sd[ok].median().clamp(min=1e-30) if bool(ok.any()) else ring_sd

    # peaks best first, a minimum distance apart (candidates down to 0, for the histogram of
    # the figure of merit; a peak above the threshold is only excluded by a stronger one, so
    # the picks are the same); high-variance surroundings dropped
    index = local_maxima(fom, threshold=min(float(threshold), 0.0))
    values = fom[index[:, 0], index[:, 1]]
    min_dist = diameter if min_distance_angstrom is None else float(min_distance_angstrom)
    yx = refine_subpixel(fom, index).to(torch.float64)
    keep = suppress_close(yx, values, min_dist / pix)
    candidate_fom = values[keep].to(torch.float64)
    separation, split = None, False
    if auto_threshold:
        otsu, separation = otsu_threshold(candidate_fom[candidate_fom >= 0])
        split = separation >= min_separation
        if split:
            threshold = otsu
    keep = keep & (values >= threshold)
    n_rejected = 0
    if max_stddev_noise is not None:
        noisy = rel_ring[index[:, 0], index[:, 1]] > max_stddev_noise
        n_rejected = int((keep & noisy).sum())
        keep = keep & ~noisy
    order = torch.argsort(values[keep], descending=True, stable=True)
    index, yx, values = index[keep][order], yx[keep][order], values[keep][order]
    which = arg[index[:, 0], index[:, 1]]
    return TemplatePicks(
        xy=torch.stack([yx[:, 1] * (w / ww), yx[:, 0] * (h / hw)], dim=-1),
        fom=values.to(torch.float64),
        reference=which // n_psi,
        psi_degrees=psi.to(micrograph.device)[which % n_psi],
        image=image,
        fom_map=fom,
        working_pixel_size_angstrom=(py, px),
        noise_sd_map=rel_ring,
        threshold=float(threshold),
        n_rejected=n_rejected,
        diameter_angstrom=diameter,
        mask_diameter_angstrom=mask_d,
        candidate_fom=candidate_fom,
        separation=separation,
        split=split,
    )


def otsu_threshold(values: torch.Tensor) -> tuple[float, float]:
    """Otsu's split of a 1D sample into a low and a high group.

    Returns the threshold (midway between the two values it falls between) that maximises the
    between-group variance ``w0 w1 (m1 - m0)^2``, and the fraction of the total variance it
    explains (Otsu's separability, 0 to 1: 2 / pi for a Gaussian sample, near 1 for two groups
    far apart). Exact over the sorted values (no histogram). Fewer than 2 distinct values:
    ``(value, 0)`` (``(-inf, 0)`` when empty).
    """
    v = torch.sort(values.detach().to(torch.float64).flatten().cpu()).values
    m = v.numel()
    if m == 0:
        return -math.inf, 0.0
    total = float(((v - v.mean()) ** 2).mean())
    if m < 2 or total <= 0:
        return float(v[0]), 0.0
    count = torch.arange(1, m, dtype=torch.float64)  # size of the low group
    w0 = count / m
    low = torch.cumsum(v, 0)[:-1] / count
    high = (v.sum() - torch.cumsum(v, 0)[:-1]) / (m - count)
    between = w0 * (1 - w0) * (high - low) ** 2
    between = torch.where(v[1:] > v[:-1], between, -1.0)  # split only between distinct values
    i = int(torch.argmax(between))
    return float(0.5 * (v[i] + v[i + 1])), float(between[i]) / total


def _pad_rfft2(
    ft: torch.Tensor, shape: tuple[int, int], new_shape: tuple[int, int]
) -> torch.Tensor:
    """Up-sample by zero-padding: rfft2 of ``shape`` -> rfft2 of the larger ``new_shape``.

    The inverse of :func:`_crop_rfft2` for band-limited spectra (pixel 0 stays on pixel 0, the
    mean is kept).
    """
    (h, w), (hn, wn) = shape, new_shape
    rows = torch.fft.fftfreq(h, d=1.0 / h, device=ft.device).round().long() % hn  # (h,)
    out = ft.new_zeros((*ft.shape[:-2], hn, wn // 2 + 1))
    out[..., rows, : w // 2 + 1] = ft * (hn * wn / (h * w))
    return out


def _apply_ctf(
    tiles: torch.Tensor,
    pixel_size: tuple[float, float],
    ctf: Mapping[str, Any],
    *,
    intact_first_peak: bool,
) -> torch.Tensor:
    """Multiply ``(k, b, b)`` tiles (centre ``b // 2``) by a CTF, in a box padded twice."""
    b = tiles.shape[-1]
    big = fast_fft_size(2 * b)
    c, cb = b // 2, big // 2
    padded = tiles.new_zeros((tiles.shape[0], big, big))
    padded[:, cb - c : cb - c + b, cb - c : cb - c + b] = tiles
    py, px = pixel_size
    ky = torch.fft.fftfreq(big, d=py, device=tiles.device, dtype=tiles.dtype)
    kx = torch.fft.rfftfreq(big, d=px, device=tiles.device, dtype=tiles.dtype)
    gy, gx = torch.meshgrid(ky, kx, indexing="ij")
    values = ctf_2d(gx, gy, intact_until_first_peak=intact_first_peak, **dict(ctf))
    ft = torch.fft.rfft2(centre_to_origin(padded, 2)) * values
    out = origin_to_centre(torch.fft.irfft2(ft, s=(big, big)), 2)
    return out[:, cb - c : cb - c + b, cb - c : cb - c + b]
