"""CTF estimation from a micrograph, after CTFFIND4 (Rohou & Grigorieff 2015, JSB 192:216).

Steps (all on torch tensors, CPU or CUDA; the fit itself uses :mod:`scipy.optimize`):

1. **Averaged spectrum.** The micrograph is cut into overlapping square tiles (``box``, 50 %
   overlap; default 512, smaller for micrographs under two boxes wide), each tile has its mean
   removed and a narrow cosine edge taper applied, and the power spectra are averaged. The
   amplitude spectrum ``sqrt(<|F|^2>)`` is used from then on, as in CTFFIND.
2. **Background.** A box convolution of the (centred) amplitude spectrum with a square kernel
   of ``sqrt(2) box apix / min_resolution`` pixels (CTFFIND's choice: wider than a Thon ring in
   the fitting range), leaving out the low-frequency peak below half the low-resolution limit,
   is subtracted; the local variance of the remainder is then normalised by a box convolution
   of its square with the same kernel. The result oscillates around 0 with unit local
   variance wherever there are Thon rings.
3. **1D search.** The rotational average of the normalised spectrum between ``min_resolution``
   and ``max_resolution`` (at most Nyquist) is correlated with ``CTF^2`` of a round CTF for
   every mean defocus from ``defocus_min`` to ``defocus_max`` in ``defocus_step`` steps (and,
   with ``fit_phase_shift``, phase shifts over the given range and step, e.g. 0 to 180 degrees
   in 10 degree steps); the best is refined on a 10x finer grid around it.
4. **2D refinement.** ``dz(a) = mean + c cos 2a + s sin 2a`` (and the phase shift) are refined
   with Nelder-Mead, maximising the normalised cross-correlation (Pearson) of the 2D
   normalised spectrum with ``sin^2 chi`` over the fitting annulus, from several astigmatic
   starting points (or, with ``exhaustive_search``, from the best points of a grid over mean
   defocus, astigmatism and angle). With an astigmatism tolerance, CTFFIND's restraint
   ``(dU - dV)^2 / (2 tolerance^2 n_pixels)`` is subtracted from the score.
   ``dU = mean + hypot(c, s)``, ``dV = mean - hypot(c, s)``, angle
   ``atan2(s, c) / 2`` in degrees (RELION convention, ``dU >= dV``, angle in (-90, 90]). The
   cross-correlation at the optimum is the figure of merit (``rlnCtfFigureOfMerit``).
5. **Fit resolution** (``rlnCtfMaxResolution``). Every pixel of the normalised spectrum is
   moved to the radius ``k'`` at which a round CTF of the mean defocus has the same phase
   (astigmatism correction), and the spectrum is averaged in thin ``k'`` shells from the
   low-resolution limit to Nyquist. Around each shell, the Pearson correlation of this 1D
   profile with ``sin^2 chi(k')`` is computed in a window spanning one CTF period on either
   side (``chi +- pi``). The fit resolution is ``1 / k'`` of the last shell before that
   correlation first drops below ``resolution_threshold`` (default 0.5), like CTFFIND's
   "Thon rings detected up to". It is ``inf`` if the first window is already below.

:func:`estimate_ctf` runs all five steps on a micrograph; :func:`estimate_ctf_from_spectrum`
steps 2 to 5 on an amplitude spectrum computed elsewhere (e.g. saved by motion correction).
:func:`ctf_fit_profile` gives the 1D profile of step 5 (CTFFIND's rotational average and fit,
for plots). The diagnostic image (:func:`ctf_diagnostic_image`) shows the centred normalised
spectrum in its left half and the fitted ``CTF^2`` in its right half, as CTFFIND's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from cryospa.core.ctf import electron_wavelength_angstrom

__all__ = [
    "CtfFit",
    "CtfProfile",
    "NormalisedSpectrum",
    "averaged_amplitude_spectrum",
    "ctf_diagnostic_image",
    "ctf_fit_profile",
    "estimate_ctf",
    "estimate_ctf_from_spectrum",
    "normalise_spectrum",
]


@dataclass(frozen=True)
class NormalisedSpectrum:
    """Background-subtracted, variance-normalised amplitude spectrum, DC at ``(box//2, box//2)``.

    ``values`` is ``(box, box)`` (float64); ``pixel_size_angstrom`` that of the micrograph.
    """

    values: torch.Tensor
    pixel_size_angstrom: float

    @property
    def box(self) -> int:
        """Side of the spectrum (pixels)."""
        return int(self.values.shape[-1])


@dataclass(frozen=True)
class CtfFit:
    """Result of :func:`estimate_ctf` (RELION convention: ``defocus_u >= defocus_v``, in Å).

    ``figure_of_merit`` is the 2D cross-correlation of the fit (``rlnCtfFigureOfMerit``),
    ``max_resolution_angstrom`` the resolution up to which the Thon rings are fitted
    (``rlnCtfMaxResolution``, ``inf`` if none), ``phase_shift_degrees`` 0 unless fitted.
    ``spectrum`` is the normalised spectrum the fit was made on (for the diagnostic image),
    ``fit_range_angstrom`` the (low, high) resolution limits of the fit in Å.
    """

    defocus_u_angstrom: float
    defocus_v_angstrom: float
    astigmatism_angle_degrees: float
    phase_shift_degrees: float
    figure_of_merit: float
    max_resolution_angstrom: float
    voltage_kv: float
    spherical_aberration_mm: float
    amplitude_contrast: float
    spectrum: NormalisedSpectrum
    fit_range_angstrom: tuple[float, float] = (30.0, 5.0)

    @property
    def mean_defocus_angstrom(self) -> float:
        """``(dU + dV) / 2`` (Å)."""
        return 0.5 * (self.defocus_u_angstrom + self.defocus_v_angstrom)

    @property
    def astigmatism_angstrom(self) -> float:
        """``dU - dV`` (Å)."""
        return self.defocus_u_angstrom - self.defocus_v_angstrom


# ----------------------------------------------------------------------------- spectrum


def _default_box(shape: tuple[int, int], box: int) -> int:
    smallest = min(shape)
    if smallest >= 2 * box:
        return box
    return max(64, min(box, (smallest // 2) // 32 * 32))


def averaged_amplitude_spectrum(micrograph: torch.Tensor, box: int = 512) -> torch.Tensor:
    """Amplitude spectrum averaged over overlapping tiles, centred (DC at ``box // 2``).

    ``box`` is reduced for micrographs smaller than two boxes (see module docstring). Returns a
    ``(b, b)`` float64 tensor on the micrograph's device.
    """
    if micrograph.ndim != 2:
        raise ValueError(f"expected a 2D micrograph, got shape {tuple(micrograph.shape)}")
    h, w = micrograph.shape
    b = _default_box((h, w), box)
    if min(h, w) < b:
        raise ValueError(f"micrograph {h}x{w} is smaller than the box {b}")
    step = b // 2
    # (rows, cols, b, b) view of the tiles: no copy; one row of tiles at a time in float64
    view = micrograph.unfold(0, b, step).unfold(1, b, step)
    dev = micrograph.device
    edge = max(2, b // 32)
    ramp = 0.5 - 0.5 * torch.cos(
        math.pi * (torch.arange(edge, dtype=torch.float64, device=dev) + 0.5) / edge
    )
    taper = torch.ones(b, dtype=torch.float64, device=dev)
    taper[:edge] = ramp
    taper[-edge:] = ramp.flip(0)
    window = taper[:, None] * taper[None, :]
    power = torch.zeros((b, b), dtype=torch.float64, device=dev)
    for row in view:  # (cols, b, b)
        tiles = row.to(torch.float64)
        tiles = (tiles - tiles.mean(dim=(-2, -1), keepdim=True)) * window
        power += (torch.fft.fft2(tiles).abs() ** 2).sum(0)
    power /= view.shape[0] * view.shape[1]
    return torch.fft.fftshift(torch.sqrt(power), dim=(-2, -1))


def _box_sum_1d(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Sum over a centred window of odd ``size`` along ``dim`` (zero padding), by cumsum."""
    pad = size // 2
    x = x.movedim(dim, -1)
    c = torch.cumsum(F.pad(x, (pad + 1, pad)), dim=-1)
    out = c[..., size:] - c[..., :-size]
    return out.movedim(-1, dim)


def _box_mean(values: torch.Tensor, weights: torch.Tensor, size: int) -> torch.Tensor:
    """Weighted mean in a ``size`` x ``size`` window (zero padding, weights renormalised)."""
    size = size | 1

    def box(x: torch.Tensor) -> torch.Tensor:
        return _box_sum_1d(_box_sum_1d(x, size, 0), size, 1)

    return box(values * weights) / box(weights).clamp_min(1e-12)


def _centred_radius_px(b: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    f = torch.arange(b, device=device, dtype=dtype) - b // 2
    return torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)


def normalise_spectrum(
    amplitude: torch.Tensor,
    pixel_size_angstrom: float,
    min_resolution_angstrom: float = 30.0,
    *,
    ctf2: torch.Tensor | None = None,
) -> NormalisedSpectrum:
    """Subtract the box-filtered background and normalise the local variance (CTFFIND style).

    ``amplitude`` is the ``(b, b)`` centred amplitude spectrum. With ``ctf2`` (``(b, b)``, the
    ``sin^2 chi`` of a first fit on the same grid), the background is corrected for the Thon
    rings inside the box: the amplitude is regressed on ``ctf2`` in each box
    (``A = background + envelope * ctf2``), and the box mean is replaced by the ring-free level
    ``background + envelope / 2``. Where rings are as wide as the box (low resolution, high
    defocus), the plain box mean follows the ring and removes part of it; the corrected one
    does not.
    """
    b = amplitude.shape[-1]
    r = _centred_radius_px(b, amplitude.device, amplitude.dtype)
    r_min = b * pixel_size_angstrom / min_resolution_angstrom
    size = max(3, int(math.sqrt(2.0) * r_min))
    weights = (r >= 0.5 * r_min).to(amplitude.dtype)
    mean = _box_mean(amplitude, weights, size)
    residual = amplitude - mean
    if ctf2 is not None:
        s = ctf2.to(amplitude)
        mean_s = _box_mean(s, weights, size)
        var_s = _box_mean(s * s, weights, size) - mean_s**2
        cov = _box_mean(amplitude * s, weights, size) - mean * mean_s
        # envelope only where the box sees enough of a ring (a whole one has variance 1/8)
        envelope = torch.where(var_s > 0.02, cov / var_s.clamp_min(1e-12), torch.zeros_like(cov))
        residual = residual + envelope.clamp_min(0.0) * (mean_s - 0.5)
    residual = residual * weights
    variance = _box_mean(residual**2, weights, size)
    scale = torch.sqrt(variance.clamp_min(1e-30))
    values = torch.where(weights > 0, residual / scale, torch.zeros_like(residual))
    return NormalisedSpectrum(values=values, pixel_size_angstrom=float(pixel_size_angstrom))


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True)
class _Optics:
    lam: float
    cs: float  # Å
    w_phase: float  # arctan(w / sqrt(1 - w^2))

    @staticmethod
    def of(voltage_kv: float, cs_mm: float, amplitude_contrast: float) -> _Optics:
        lam = float(electron_wavelength_angstrom(voltage_kv))
        w = amplitude_contrast
        return _Optics(lam, cs_mm * 1e7, math.atan(w / math.sqrt(1.0 - w * w)))

    def chi(self, k2: torch.Tensor, dz: torch.Tensor | float, phase_rad: float) -> torch.Tensor:
        return (
            math.pi * self.lam * dz * k2
            - 0.5 * math.pi * self.cs * self.lam**3 * k2 * k2
            + phase_rad
            + self.w_phase
        )


def _pearson(x: torch.Tensor, y: torch.Tensor, dim: int = -1) -> torch.Tensor:
    xc = x - x.mean(dim, keepdim=True)
    yc = y - y.mean(dim, keepdim=True)
    num = (xc * yc).sum(dim)
    den = torch.sqrt((xc * xc).sum(dim) * (yc * yc).sum(dim)).clamp_min(1e-30)
    return num / den


def _frequencies(spec: NormalisedSpectrum) -> tuple[torch.Tensor, torch.Tensor]:
    b = spec.box
    f = (torch.arange(b, device=spec.values.device, dtype=torch.float64) - b // 2) / (
        b * spec.pixel_size_angstrom
    )
    ky, kx = torch.meshgrid(f, f, indexing="ij")
    return ky, kx


# ----------------------------------------------------------------------------- estimation


def estimate_ctf(
    micrograph: torch.Tensor,
    pixel_size_angstrom: float,
    *,
    box: int = 512,
    **options: Any,
) -> CtfFit:
    """Estimate defocus U / V, astigmatism angle (and phase shift) of one micrograph.

    ``micrograph`` is ``(h, w)`` (counts or any linear intensity); its tiled amplitude spectrum
    (:func:`averaged_amplitude_spectrum`, ``box``) is fitted by
    :func:`estimate_ctf_from_spectrum`, whose keyword arguments ``options`` are.
    """
    return estimate_ctf_from_spectrum(
        averaged_amplitude_spectrum(micrograph, box), pixel_size_angstrom, **options
    )


@dataclass(frozen=True)
class _FitData:
    """The half-plane pixels of the fitting annulus of a normalised spectrum."""

    values: torch.Tensor  # (n,) normalised spectrum
    k2: torch.Tensor  # (n,) |k|^2 in 1/Å^2
    azimuth: torch.Tensor  # (n,) atan2(ky, kx) in (-pi/2, pi/2]
    cos2: torch.Tensor  # (n,) cos(2 azimuth)
    sin2: torch.Tensor  # (n,) sin(2 azimuth)
    shell: torch.Tensor  # (n,) index of the one-pixel shell, from 0
    n_shells: int


def _fit_data(spec: NormalisedSpectrum, k_lo: float, k_hi: float) -> _FitData:
    b, apix = spec.box, spec.pixel_size_angstrom
    ky, kx = _frequencies(spec)
    k = torch.sqrt(kx * kx + ky * ky)
    # half plane (the spectrum is centro-symmetric), fitting annulus
    half = (kx > 0) | ((kx == 0) & (ky > 0))
    sel = half & (k >= k_lo) & (k <= k_hi)
    az = torch.atan2(ky[sel], kx[sel])
    shell = torch.round(k[sel] * b * apix).long()
    shell = shell - shell.min()
    return _FitData(spec.values[sel], (k * k)[sel], az, torch.cos(2 * az), torch.sin(2 * az),
                    shell, int(shell.max()) + 1)


def _weighted_pearson(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last dimension with weights ``w`` (broadcast)."""
    sw = w.sum(-1, keepdim=True).clamp_min(1e-30)
    xc = x - (w * x).sum(-1, keepdim=True) / sw
    yc = y - (w * y).sum(-1, keepdim=True) / sw
    num = (w * xc * yc).sum(-1)
    den = torch.sqrt((w * xc * xc).sum(-1) * (w * yc * yc).sum(-1)).clamp_min(1e-30)
    return num / den


def _shell_profiles(fd: _FitData, group: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, ...]:
    """Mean spectrum, mean ``k^2`` and weight (1 if not empty) per (group, shell)."""
    idx = group * fd.n_shells + fd.shell
    size = n_groups * fd.n_shells
    counts = torch.bincount(idx, minlength=size).to(fd.values).reshape(n_groups, -1)
    sums = torch.bincount(idx, weights=fd.values, minlength=size).reshape(n_groups, -1)
    k2 = torch.bincount(idx, weights=fd.k2, minlength=size).reshape(n_groups, -1)
    n = counts.clamp_min(1)
    return sums / n, k2 / n, (counts > 0).to(fd.values)


def _search_1d(
    optics: _Optics,
    profile: torch.Tensor,
    k2_shell: torch.Tensor,
    weight: torch.Tensor,
    defoci: torch.Tensor,
    phases_deg: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grid search of a round CTF against radial profiles ``(g, m)`` (one per group).

    ``defoci`` is ``(d,)`` or ``(g, d)``. Returns the best defocus, phase (degrees) and
    correlation of each group, ``(g,)`` each.
    """
    dz = defoci.to(k2_shell)
    dz = dz.expand(profile.shape[0], -1) if dz.ndim == 1 else dz
    ph = torch.deg2rad(phases_deg.to(k2_shell))[None, None, :, None]
    chi = optics.chi(k2_shell[:, None, None, :], dz[:, :, None, None], 0.0) + ph
    model = torch.sin(chi) ** 2  # (g, d, p, m)
    cc = _weighted_pearson(model, profile[:, None, None, :], weight[:, None, None, :])
    flat = cc.reshape(cc.shape[0], -1)
    best = torch.argmax(flat, dim=1)
    n_ph = len(phases_deg)
    rows = torch.arange(len(best), device=best.device)
    return (dz[rows, best // n_ph], phases_deg.to(dz)[best % n_ph], flat[rows, best])


def _search_defocus(
    optics: _Optics,
    profile: torch.Tensor,
    k2_shell: torch.Tensor,
    weight: torch.Tensor,
    coarse: torch.Tensor,
    step: float,
    phases_deg: torch.Tensor,
    phase_step: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_search_1d` on ``coarse``, then 10x finer around each group's best."""
    dz, ph, _ = _search_1d(optics, profile, k2_shell, weight, coarse, phases_deg)
    offsets = torch.arange(-step, step + 1e-6, step / 10, dtype=dz.dtype, device=dz.device)
    if len(phases_deg) > 1:
        # (the fine phase search is done for the whole profile only: one group)
        phases_deg = torch.arange(float(ph[0]) - phase_step, float(ph[0]) + phase_step + 1e-6,
                                  phase_step / 10, dtype=torch.float64)
    return _search_1d(optics, profile, k2_shell, weight, dz[:, None] + offsets, phases_deg)


def _sector_start(
    fd: _FitData, optics: _Optics, coarse: torch.Tensor, step: float, phase_deg: float,
    n_sectors: int = 12,
) -> np.ndarray | None:
    """``(mean, c, s)`` from a defocus search in each azimuthal sector, or None.

    The defocus of each of ``n_sectors`` sectors of azimuth (over 180 degrees) is searched as
    in the 1D search, and ``dz(a) = mean + c cos 2a + s sin 2a`` is fitted to them by least
    squares weighted by each sector's correlation, dropping outliers (more than two defocus
    steps and three median deviations off) once. This finds large astigmatism, which smears
    the rings of the rotational average.
    """
    sector = torch.clamp(
        (torch.remainder(fd.azimuth, math.pi) / math.pi * n_sectors).long(), max=n_sectors - 1
    )
    profile, k2_shell, weight = _shell_profiles(fd, sector, n_sectors)
    phases = torch.tensor([phase_deg], dtype=torch.float64)
    dz, _, cc = _search_defocus(optics, profile, k2_shell, weight, coarse, step, phases, 1.0)
    theta = (torch.arange(n_sectors, dtype=torch.float64) + 0.5) * math.pi / n_sectors
    design = torch.stack([torch.ones_like(theta), torch.cos(2 * theta), torch.sin(2 * theta)], 1)
    w = cc.cpu().clamp_min(0.0)
    dz = dz.cpu()
    keep = w > 0
    coef = None
    for _ in range(2):
        if int(keep.sum()) < 4:
            return None
        sw = torch.sqrt(w[keep])[:, None]
        coef = torch.linalg.lstsq(design[keep] * sw, (dz[keep] * sw[:, 0])[:, None]).solution[:, 0]
        residual = (dz - design @ coef).abs()
        mad = float(residual[keep].median())
        keep = keep & (residual <= max(2.0 * step, 3.0 * mad))
    return None if coef is None else coef.numpy()


def _scores_2d(
    fd: _FitData,
    optics: _Optics,
    params: torch.Tensor,
    tolerance: float | None,
    chunk_elements: int = 1 << 22,
) -> torch.Tensor:
    """Restrained 2D score of each ``(mean, c, s, phase_deg)`` row of ``params`` ``(p, 4)``.

    Pearson correlation of ``sin^2 chi`` with the spectrum, minus CTFFIND's astigmatism
    restraint ``(dU - dV)^2 / (2 tolerance^2 n_pixels)`` when a tolerance is given.
    """
    p = params.to(fd.k2)
    out = []
    rows = max(1, chunk_elements // max(1, fd.values.numel()))
    for part in p.split(rows):
        dz = part[:, 0:1] + part[:, 1:2] * fd.cos2 + part[:, 2:3] * fd.sin2
        model = torch.sin(optics.chi(fd.k2, dz, 0.0) + torch.deg2rad(part[:, 3:4])) ** 2
        cc = _pearson(model, fd.values.expand_as(model))
        if tolerance is not None and tolerance > 0:
            astig = 2.0 * torch.hypot(part[:, 1], part[:, 2])
            cc = cc - 0.5 * (astig / tolerance) ** 2 / fd.values.numel()
        out.append(cc)
    return torch.cat(out)


def _exhaustive_starts(
    fd: _FitData, optics: _Optics, dz0: float, ph0: float, step: float, tolerance: float | None
) -> list[np.ndarray]:
    """Best three ``(mean, c, s, phase)`` of a grid over mean defocus and astigmatism."""
    max_astig = min(max(3000.0, 10.0 * (tolerance or 0.0)), dz0)
    means = dz0 + step * torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64)
    halves = torch.arange(step / 4, max_astig / 2 + 1e-6, step / 4, dtype=torch.float64)
    angles = torch.deg2rad(torch.arange(0.0, 180.0, 10.0, dtype=torch.float64))
    h, a = torch.meshgrid(halves, angles, indexing="ij")
    cs = torch.cat([torch.zeros(1, 2, dtype=torch.float64),
                    torch.stack([h * torch.cos(2 * a), h * torch.sin(2 * a)], -1).reshape(-1, 2)])
    grid = torch.cat(
        [
            means.repeat_interleave(len(cs))[:, None],
            cs.repeat(len(means), 1),
            torch.full((len(means) * len(cs), 1), ph0, dtype=torch.float64),
        ],
        dim=1,
    )
    scores = _scores_2d(fd, optics, grid, tolerance)
    best = torch.argsort(scores, descending=True)[:3].tolist()
    return [grid[i].numpy() for i in best]


def _refine(
    fd: _FitData,
    starts: list[tuple[np.ndarray, float]],
    *,
    optics: _Optics,
    fit_phase_shift: bool,
    tolerance: float | None,
    steps: tuple[float, float],
) -> np.ndarray:
    """The best ``(mean, c, s, phase)`` of Nelder-Mead runs from each start.

    ``starts`` are ``((mean, c, s, phase), initial astigmatism step)``; the phase is 0 unless
    fitted.
    """
    n_par = 4 if fit_phase_shift else 3

    def score(p: np.ndarray) -> float:
        row = torch.tensor([[p[0], p[1], p[2], p[3] if fit_phase_shift else 0.0]],
                           dtype=torch.float64)
        return -float(_scores_2d(fd, optics, row, tolerance)[0])

    best: tuple[float, np.ndarray] | None = None
    for x, d_astig in starts:
        x0 = np.asarray(x, dtype=np.float64)[:n_par]
        simplex = np.tile(x0, (n_par + 1, 1))
        for i, d in enumerate([steps[0], d_astig, d_astig, steps[1]][:n_par]):
            simplex[i + 1, i] += d
        res = minimize(
            score,
            x0,
            method="Nelder-Mead",
            options={"initial_simplex": simplex, "xatol": 2.0, "fatol": 1e-5, "maxiter": 1000},
        )
        if best is None or res.fun < best[0]:
            best = (float(res.fun), np.asarray(res.x))
    if best is None:
        raise ValueError("no starting point to refine from")
    p = best[1]
    return np.array([p[0], p[1], p[2], p[3] % 360.0 if fit_phase_shift else 0.0])


def _make_fit(
    p: np.ndarray,
    spec: NormalisedSpectrum,
    optics: _Optics,
    fit_phase_shift: bool,
    min_resolution_angstrom: float,
    k_hi: float,
    voltage_kv: float,
    spherical_aberration_mm: float,
    amplitude_contrast: float,
) -> CtfFit:
    """A :class:`CtfFit` from ``(mean, c, s, phase)`` (figure of merit and resolution unset)."""
    mean_dz, c, s = float(p[0]), float(p[1]), float(p[2])
    half_astig = math.hypot(c, s)
    angle = 0.5 * math.degrees(math.atan2(s, c))
    if angle <= -90.0:
        angle += 180.0
    return CtfFit(
        defocus_u_angstrom=mean_dz + half_astig,
        defocus_v_angstrom=mean_dz - half_astig,
        astigmatism_angle_degrees=angle,
        phase_shift_degrees=float(p[3]) if fit_phase_shift else 0.0,
        figure_of_merit=math.nan,
        max_resolution_angstrom=math.inf,
        voltage_kv=voltage_kv,
        spherical_aberration_mm=spherical_aberration_mm,
        amplitude_contrast=amplitude_contrast,
        spectrum=spec,
        fit_range_angstrom=(min_resolution_angstrom, 1.0 / k_hi),
    )


def _ctf2_grid(fit: CtfFit) -> torch.Tensor:
    """The fitted ``sin^2 chi`` on the centred ``(b, b)`` grid of the fit's spectrum."""
    optics = _Optics.of(fit.voltage_kv, fit.spherical_aberration_mm, fit.amplitude_contrast)
    ky, kx = _frequencies(fit.spectrum)
    dz = fit.mean_defocus_angstrom + 0.5 * fit.astigmatism_angstrom * torch.cos(
        2 * (torch.atan2(ky, kx) - math.radians(fit.astigmatism_angle_degrees))
    )
    chi = optics.chi(kx * kx + ky * ky, dz, math.radians(fit.phase_shift_degrees))
    return torch.sin(chi) ** 2


def estimate_ctf_from_spectrum(
    amplitude: torch.Tensor,
    pixel_size_angstrom: float,
    *,
    voltage_kv: float = 300.0,
    spherical_aberration_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    min_resolution_angstrom: float = 30.0,
    max_resolution_angstrom: float = 5.0,
    defocus_min_angstrom: float = 5000.0,
    defocus_max_angstrom: float = 50000.0,
    defocus_step_angstrom: float = 500.0,
    astigmatism_tolerance_angstrom: float | None = None,
    exhaustive_search: bool = False,
    fit_phase_shift: bool = False,
    phase_shift_min_degrees: float = 0.0,
    phase_shift_max_degrees: float = 180.0,
    phase_shift_step_degrees: float = 10.0,
    resolution_threshold: float = 0.5,
) -> CtfFit:
    """Fit the CTF to a centred amplitude spectrum (steps 2 to 5 of the module docstring).

    Parameters
    ----------
    amplitude
        ``(b, b)`` centred amplitude spectrum ``sqrt(<|F|^2>)`` (DC at ``(b // 2, b // 2)``),
        as :func:`averaged_amplitude_spectrum` returns and motion correction saves.
    pixel_size_angstrom
        Pixel size of the image the spectrum was computed from (Å).
    voltage_kv, spherical_aberration_mm, amplitude_contrast
        Microscope constants.
    min_resolution_angstrom, max_resolution_angstrom
        Fitting range (Å); the high limit is raised to Nyquist if finer than it.
    defocus_min_angstrom, defocus_max_angstrom, defocus_step_angstrom
        Range and step of the 1D search of the mean defocus (Å, underfocus positive).
    astigmatism_tolerance_angstrom
        Expected astigmatism (Å): the 2D score is lowered by CTFFIND's restraint
        ``(dU - dV)^2 / (2 tolerance^2 n)`` (``n`` fitted pixels); None or <= 0: no restraint.
    exhaustive_search
        Before the 2D refinement, score a grid of mean defoci (1D optimum +- half a step),
        astigmatism (up to 3000 Å or ten times the tolerance, never more than the mean
        defocus; steps of half a defocus step) and angle (10 degree steps) and refine from the
        best three (slower; for strongly astigmatic data). Otherwise the refinement starts
        from a round CTF and two 5 % astigmatic ones.
    fit_phase_shift, phase_shift_min_degrees, phase_shift_max_degrees, phase_shift_step_degrees
        Also fit a phase shift (phase plate), searched over this range and step, then refined.
    resolution_threshold
        Correlation below which the Thon rings no longer count as fitted (step 5).

    Returns
    -------
    CtfFit
        The fit (RELION convention, ``dU >= dV``, angle in (-90, 90]).

    Raises
    ------
    ValueError
        A spectrum that is not square 2D or not finite, a bad resolution or defocus range, or
        an empty phase shift range.
    """
    if amplitude.ndim != 2 or amplitude.shape[0] != amplitude.shape[1] or amplitude.shape[0] < 16:
        raise ValueError(f"expected a square 2D amplitude spectrum, got {tuple(amplitude.shape)}")
    if not bool(torch.isfinite(amplitude).all()):
        raise ValueError("the amplitude spectrum has NaN or infinite values")
    apix = float(pixel_size_angstrom)
    if min_resolution_angstrom <= max(max_resolution_angstrom, 2.0 * apix):
        raise ValueError(
            f"min_resolution_angstrom {min_resolution_angstrom:g} must be coarser than the "
            f"max resolution {max_resolution_angstrom:g} Å and Nyquist {2 * apix:g} Å"
        )
    if not 0 < defocus_min_angstrom <= defocus_max_angstrom or defocus_step_angstrom <= 0:
        raise ValueError(
            f"bad defocus search {defocus_min_angstrom:g} to {defocus_max_angstrom:g} Å in steps "
            f"of {defocus_step_angstrom:g} Å: need 0 < min <= max and step > 0"
        )
    if fit_phase_shift and not (
        phase_shift_step_degrees > 0 and phase_shift_min_degrees <= phase_shift_max_degrees
    ):
        raise ValueError(
            f"bad phase shift search {phase_shift_min_degrees:g} to {phase_shift_max_degrees:g} "
            f"degrees in steps of {phase_shift_step_degrees:g}"
        )
    optics = _Optics.of(voltage_kv, spherical_aberration_mm, amplitude_contrast)
    spec = normalise_spectrum(amplitude.to(torch.float64), apix, min_resolution_angstrom)
    k_lo = 1.0 / min_resolution_angstrom
    k_hi = min(1.0 / max_resolution_angstrom, 0.5 / apix)
    fd = _fit_data(spec, k_lo, k_hi)
    tolerance = astigmatism_tolerance_angstrom

    # --- 1D exhaustive search on the rotational average, then 10x finer around the best
    step = defocus_step_angstrom
    ph_step = phase_shift_step_degrees
    if fit_phase_shift:
        phases = torch.arange(phase_shift_min_degrees, phase_shift_max_degrees + 1e-6, ph_step,
                              dtype=torch.float64)
    else:
        phases = torch.zeros(1, dtype=torch.float64)
    coarse = torch.arange(
        defocus_min_angstrom, defocus_max_angstrom + 0.5 * step, step, dtype=torch.float64
    )
    profile, k2_shell, weight = _shell_profiles(fd, torch.zeros_like(fd.shell), 1)
    dz_t, ph_t, _ = _search_defocus(optics, profile, k2_shell, weight, coarse, step, phases,
                                    ph_step)
    dz0, ph0 = float(dz_t[0]), float(ph_t[0])

    # --- 2D refinement (Nelder-Mead on mean, c, s [, phase]) from several starts
    a0 = 0.05 * dz0
    starts = [(np.array([dz0, c0, s0, ph0]), a0 / 2 + 50) for c0, s0 in
              ((0.0, 0.0), (a0, 0.0), (0.0, a0))]
    sector = _sector_start(fd, optics, coarse, step, ph0)
    if sector is not None:
        starts.append((np.array([*sector, ph0]), step / 2))
    if exhaustive_search:
        starts += [(x, step / 2) for x in _exhaustive_starts(fd, optics, dz0, ph0, step,
                                                               tolerance)]
    refine = partial(_refine, optics=optics, fit_phase_shift=fit_phase_shift,
                     tolerance=tolerance, steps=(step / 2, ph_step))
    p = refine(fd, starts)
    # --- ring-corrected background (see normalise_spectrum), then refine once more
    fit = _make_fit(p, spec, optics, fit_phase_shift, float(min_resolution_angstrom), k_hi,
                    voltage_kv, spherical_aberration_mm, amplitude_contrast)
    spec = normalise_spectrum(amplitude.to(torch.float64), apix, min_resolution_angstrom,
                              ctf2=_ctf2_grid(fit))
    fd = _fit_data(spec, k_lo, k_hi)
    p = refine(fd, [(p, step / 4)])
    fit = _make_fit(p, spec, optics, fit_phase_shift, float(min_resolution_angstrom), k_hi,
                    voltage_kv, spherical_aberration_mm, amplitude_contrast)
    # the figure of merit is the plain correlation (without the restraint)
    row = torch.tensor([[p[0], p[1], p[2], p[3] if fit_phase_shift else 0.0]],
                       dtype=torch.float64)
    fit = replace(fit, figure_of_merit=float(_scores_2d(fd, optics, row, None)[0]))
    fitted = ctf_fit_profile(fit)
    return replace(fit, max_resolution_angstrom=fitted.fit_resolution(resolution_threshold))


# ----------------------------------------------------------------------------- 1D profile


@dataclass(frozen=True)
class CtfProfile:
    """Astigmatism-corrected rotational average of a fit's spectrum (CTFFIND's "avrot").

    Every pixel of the normalised spectrum is moved to the radius ``k'`` at which a round CTF
    of the mean defocus has its phase, then averaged in half-pixel shells of ``k'`` from the
    low-resolution limit of the fit to Nyquist. All arrays are ``(n,)`` float64 numpy arrays.

    Attributes
    ----------
    frequency_per_angstrom
        ``k'`` of each shell (1/Å).
    spectrum
        Mean normalised spectrum in the shell.
    ctf2
        The fitted ``CTF^2 = sin^2 chi(k')`` (round, mean defocus, fitted phase shift).
    fit_quality
        Pearson correlation of ``spectrum`` and ``ctf2`` in a window of one CTF period on
        either side of the shell (``chi +- pi``); NaN where the window has under 5 shells.
    """

    frequency_per_angstrom: np.ndarray
    spectrum: np.ndarray
    ctf2: np.ndarray
    fit_quality: np.ndarray

    def fit_resolution(self, threshold: float = 0.5) -> float:
        """``1 / k'`` (Å) of the last shell before ``fit_quality`` first drops below ``threshold``.

        ``inf`` if the first shell is already below (no Thon rings fitted).
        """
        last_good = math.inf
        for k, q in zip(self.frequency_per_angstrom, self.fit_quality, strict=True):
            if not q >= threshold:  # also stops at NaN
                break
            last_good = 1.0 / float(k)
        return last_good


def ctf_fit_profile(fit: CtfFit) -> CtfProfile:
    """The 1D profile of ``fit`` against its fitted ``CTF^2`` (see :class:`CtfProfile`)."""
    spec = fit.spectrum
    b, apix = spec.box, spec.pixel_size_angstrom
    optics = _Optics.of(fit.voltage_kv, fit.spherical_aberration_mm, fit.amplitude_contrast)
    k_lo = 1.0 / fit.fit_range_angstrom[0]
    ky, kx = _frequencies(spec)
    k2 = kx * kx + ky * ky
    half = (kx > 0) | ((kx == 0) & (ky > 0))
    sel = half & (k2 >= k_lo**2) & (k2 <= (0.5 / apix) ** 2)
    data, k2s = spec.values[sel], k2[sel]
    az = torch.atan2(ky[sel], kx[sel])
    mean = fit.mean_defocus_angstrom
    dz = mean + 0.5 * fit.astigmatism_angstrom * torch.cos(
        2 * (az - math.radians(fit.astigmatism_angle_degrees))
    )
    # equivalent k'^2 = u of a round CTF of the mean defocus: A u^2 - B u + C = 0
    a_ = 0.5 * math.pi * optics.cs * optics.lam**3
    b_ = math.pi * optics.lam * mean
    c_ = math.pi * optics.lam * dz * k2s - a_ * k2s * k2s
    disc = (b_ * b_ - 4 * a_ * c_).clamp_min(0.0)
    u = 2 * c_ / (b_ + torch.sqrt(disc))  # stable form of (B - sqrt(disc)) / (2A)
    kp = torch.sqrt(u.clamp_min(0.0))
    # half-pixel shells in k'
    shell = torch.floor(kp * b * apix * 2).long()
    n = int(shell.max()) + 1
    counts = torch.bincount(shell, minlength=n).to(torch.float64)
    prof = torch.bincount(shell, weights=data, minlength=n)
    kk = (torch.arange(n, dtype=torch.float64, device=data.device) + 0.5) / (2 * b * apix)
    ok = (counts > 0) & (kk >= k_lo) & (kk <= 0.5 / apix)
    prof, kk = prof[ok] / counts[ok], kk[ok]
    chi = optics.chi(kk * kk, mean, math.radians(fit.phase_shift_degrees))
    model = torch.sin(chi) ** 2
    chi_np, prof_np, model_np = chi.cpu().numpy(), prof.cpu().numpy(), model.cpu().numpy()
    # Pearson correlation in every window at once: (n, n) window matrix, sums by products
    win = (np.abs(chi_np[:, None] - chi_np[None, :]) <= math.pi).astype(np.float64)
    n = win.sum(1)
    sx, sy = win @ prof_np, win @ model_np
    sxy = win @ (prof_np * model_np) - sx * sy / n
    sxx = win @ (prof_np * prof_np) - sx * sx / n
    syy = win @ (model_np * model_np) - sy * sy / n
    den = np.sqrt(np.clip(sxx, 0.0, None) * np.clip(syy, 0.0, None))
    quality = np.where(den > 0, sxy / np.where(den > 0, den, 1.0), 0.0)
    quality[n < 5] = np.nan
    return CtfProfile(kk.cpu().numpy(), prof_np, model_np, quality)


# ----------------------------------------------------------------------------- diagnostic


def _azimuthal_average(values: torch.Tensor, half_angle_degrees: float, n: int = 9) -> torch.Tensor:
    """Mean of ``values`` ``(b, b)`` rotated about ``(b // 2, b // 2)`` by ``n`` angles."""
    b = values.shape[-1]
    c = b // 2
    x = values.to(torch.float32)
    idx = torch.arange(b, device=x.device, dtype=torch.float32) - c
    yy, xx = torch.meshgrid(idx, idx, indexing="ij")
    t = torch.deg2rad(
        torch.linspace(-half_angle_degrees, half_angle_degrees, n, device=x.device)
    )[:, None, None]
    xs = torch.cos(t) * xx - torch.sin(t) * yy + c
    ys = torch.sin(t) * xx + torch.cos(t) * yy + c
    grid = torch.stack((xs / (b - 1) * 2 - 1, ys / (b - 1) * 2 - 1), dim=-1)  # (n, b, b, 2)
    rotated = F.grid_sample(x.expand(n, 1, b, b), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True)
    return rotated.mean(dim=(0, 1)).to(values.dtype)


def ctf_diagnostic_image(fit: CtfFit, *, smoothing_degrees: float = 3.0) -> torch.Tensor:
    """``(box, box)`` image: normalised spectrum on the left, fitted ``CTF^2`` on the right.

    The spectrum is clipped to +-3 and, for display, averaged over rotations of up to
    ``smoothing_degrees`` about its centre (along the rings, which keeps them sharp while
    averaging the noise away; 0 = none); both halves are then scaled to zero mean and unit
    standard deviation over the annulus from the fit's low-resolution limit to Nyquist, so they
    share one grey scale.
    DC is at ``(box // 2, box // 2)`` (row, column); rows are ky, columns kx.
    """
    spec = fit.spectrum
    ky, kx = _frequencies(spec)
    k2 = kx * kx + ky * ky
    model = _ctf2_grid(fit)
    data = spec.values.clamp(-3.0, 3.0)
    if smoothing_degrees > 0:
        data = _azimuthal_average(data, smoothing_degrees)
    ring = k2 >= (1.0 / fit.fit_range_angstrom[0]) ** 2

    def standard(x: torch.Tensor) -> torch.Tensor:
        v = x[ring]
        return torch.where(ring, (x - v.mean()) / v.std().clamp_min(1e-12), torch.zeros_like(x))

    out = standard(data)
    c = spec.box // 2
    out[:, c:] = standard(model)[:, c:]
    return out.to(torch.float32)
