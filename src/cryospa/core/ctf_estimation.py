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
   with ``fit_phase_shift``, phase shifts 0 to 180 degrees in 10 degree steps); the best is
   refined on a 10x finer grid around it.
4. **2D refinement.** ``dz(a) = mean + c cos 2a + s sin 2a`` (and the phase shift) are refined
   with Nelder-Mead, maximising the normalised cross-correlation (Pearson) of the 2D
   normalised spectrum with ``sin^2 chi`` over the fitting annulus, from several astigmatic
   starting points. ``dU = mean + hypot(c, s)``, ``dV = mean - hypot(c, s)``, angle
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

The diagnostic image (:func:`ctf_diagnostic_image`) shows the centred normalised spectrum in
its left half and the fitted ``CTF^2`` in its right half, as CTFFIND's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from cryospa.core.ctf import electron_wavelength_angstrom

__all__ = [
    "CtfFit",
    "NormalisedSpectrum",
    "averaged_amplitude_spectrum",
    "ctf_diagnostic_image",
    "estimate_ctf",
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
    ``spectrum`` is the normalised spectrum the fit was made on (for the diagnostic image).
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
    x = micrograph.to(torch.float64)
    step = b // 2
    tiles = x.unfold(0, b, step).unfold(1, b, step).reshape(-1, b, b)
    tiles = tiles - tiles.mean(dim=(-2, -1), keepdim=True)
    edge = max(2, b // 32)
    ramp = 0.5 - 0.5 * torch.cos(
        math.pi * (torch.arange(edge, dtype=torch.float64, device=x.device) + 0.5) / edge
    )
    taper = torch.ones(b, dtype=torch.float64, device=x.device)
    taper[:edge] = ramp
    taper[-edge:] = ramp.flip(0)
    tiles = tiles * (taper[:, None] * taper[None, :])
    power = torch.zeros((b, b), dtype=torch.float64, device=x.device)
    for chunk in tiles.split(16):
        power += (torch.fft.fft2(chunk).abs() ** 2).sum(0)
    power /= tiles.shape[0]
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
    amplitude: torch.Tensor, pixel_size_angstrom: float, min_resolution_angstrom: float = 30.0
) -> NormalisedSpectrum:
    """Subtract the box-filtered background and normalise the local variance (CTFFIND style)."""
    b = amplitude.shape[-1]
    r = _centred_radius_px(b, amplitude.device, amplitude.dtype)
    r_min = b * pixel_size_angstrom / min_resolution_angstrom
    size = max(3, int(math.sqrt(2.0) * r_min))
    weights = (r >= 0.5 * r_min).to(amplitude.dtype)
    residual = (amplitude - _box_mean(amplitude, weights, size)) * weights
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
    voltage_kv: float = 300.0,
    spherical_aberration_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    box: int = 512,
    min_resolution_angstrom: float = 30.0,
    max_resolution_angstrom: float = 5.0,
    defocus_min_angstrom: float = 5000.0,
    defocus_max_angstrom: float = 50000.0,
    defocus_step_angstrom: float = 500.0,
    fit_phase_shift: bool = False,
    resolution_threshold: float = 0.5,
) -> CtfFit:
    """Estimate defocus U / V, astigmatism angle (and phase shift) of one micrograph.

    ``micrograph`` is ``(h, w)`` (counts or any linear intensity). See the module docstring for
    the method. ``max_resolution_angstrom`` is raised to Nyquist if finer than it.
    """
    apix = float(pixel_size_angstrom)
    if min_resolution_angstrom <= max(max_resolution_angstrom, 2.0 * apix):
        raise ValueError("min_resolution_angstrom must be coarser than max resolution / Nyquist")
    optics = _Optics.of(voltage_kv, spherical_aberration_mm, amplitude_contrast)
    spec = normalise_spectrum(
        averaged_amplitude_spectrum(micrograph, box), apix, min_resolution_angstrom
    )
    b = spec.box
    ky, kx = _frequencies(spec)
    k = torch.sqrt(kx * kx + ky * ky)
    k_lo = 1.0 / min_resolution_angstrom
    k_hi = min(1.0 / max_resolution_angstrom, 0.5 / apix)
    # half plane (the spectrum is centro-symmetric), fitting annulus
    half = (kx > 0) | ((kx == 0) & (ky > 0))
    sel = half & (k >= k_lo) & (k <= k_hi)
    data = spec.values[sel]
    k2 = (k * k)[sel]
    az = torch.atan2(ky[sel], kx[sel])
    cos2, sin2 = torch.cos(2 * az), torch.sin(2 * az)

    # --- 1D exhaustive search on the rotational average (shells of one Fourier pixel)
    shell = torch.round(k[sel] * b * apix).long()
    shell = shell - shell.min()
    n_shells = int(shell.max()) + 1
    counts = torch.bincount(shell, minlength=n_shells).to(torch.float64)
    profile = torch.bincount(shell, weights=data, minlength=n_shells) / counts.clamp_min(1)
    k2_shell = torch.bincount(shell, weights=k2, minlength=n_shells) / counts.clamp_min(1)
    ok = counts > 0
    profile, k2_shell = profile[ok], k2_shell[ok]

    phases = (
        torch.arange(0.0, 180.0, 10.0, dtype=torch.float64) if fit_phase_shift else torch.zeros(1)
    )

    def search(defoci: torch.Tensor, phases_deg: torch.Tensor) -> tuple[float, float]:
        dz = defoci.to(k2_shell)[:, None, None]
        ph = torch.deg2rad(phases_deg.to(k2_shell))[None, :, None]
        model = torch.sin(optics.chi(k2_shell[None, None, :], dz, 0.0) + ph) ** 2
        cc = _pearson(model, profile[None, None, :].expand_as(model))
        i = int(torch.argmax(cc))
        return float(defoci[i // cc.shape[1]]), float(phases_deg[i % cc.shape[1]])

    step = defocus_step_angstrom
    coarse = torch.arange(
        defocus_min_angstrom, defocus_max_angstrom + 0.5 * step, step, dtype=torch.float64
    )
    dz0, ph0 = search(coarse, phases)
    fine = torch.arange(dz0 - step, dz0 + step + 1e-6, step / 10, dtype=torch.float64)
    fine_ph = (
        torch.arange(ph0 - 10.0, ph0 + 10.01, 1.0, dtype=torch.float64)
        if fit_phase_shift
        else phases
    )
    dz0, ph0 = search(fine, fine_ph)

    # --- 2D refinement (Nelder-Mead on mean, c, s [, phase])
    def score(p: np.ndarray) -> float:
        dz = p[0] + p[1] * cos2 + p[2] * sin2
        phase = math.radians(p[3]) if fit_phase_shift else 0.0
        model = torch.sin(optics.chi(k2, dz, phase)) ** 2
        return -float(_pearson(model, data))

    best: tuple[float, np.ndarray] | None = None
    a0 = 0.05 * dz0
    for c0, s0 in ((0.0, 0.0), (a0, 0.0), (0.0, a0)):
        x0 = np.array([dz0, c0, s0, ph0] if fit_phase_shift else [dz0, c0, s0])
        simplex = np.tile(x0, (len(x0) + 1, 1))
        for i, d in enumerate([step / 2, a0 / 2 + 50, a0 / 2 + 50, 10.0][: len(x0)]):
            simplex[i + 1, i] += d
        res = minimize(
            score,
            x0,
            method="Nelder-Mead",
            options={"initial_simplex": simplex, "xatol": 2.0, "fatol": 1e-5, "maxiter": 1000},
        )
        if best is None or res.fun < best[0]:
            best = (float(res.fun), np.asarray(res.x))
    assert best is not None
    p = best[1]
    mean_dz, c, s = float(p[0]), float(p[1]), float(p[2])
    phase_deg = float(p[3]) % 360.0 if fit_phase_shift else 0.0
    half_astig = math.hypot(c, s)
    angle = 0.5 * math.degrees(math.atan2(s, c))
    if angle <= -90.0:
        angle += 180.0

    fit = CtfFit(
        defocus_u_angstrom=mean_dz + half_astig,
        defocus_v_angstrom=mean_dz - half_astig,
        astigmatism_angle_degrees=angle,
        phase_shift_degrees=phase_deg,
        figure_of_merit=-best[0],
        max_resolution_angstrom=math.inf,
        voltage_kv=voltage_kv,
        spherical_aberration_mm=spherical_aberration_mm,
        amplitude_contrast=amplitude_contrast,
        spectrum=spec,
    )
    res_a = _fit_resolution(fit, optics, k_lo, resolution_threshold)
    return CtfFit(**{**fit.__dict__, "max_resolution_angstrom": res_a})


def _fit_resolution(fit: CtfFit, optics: _Optics, k_lo: float, threshold: float) -> float:
    """Resolution (Å) up to which the astigmatism-corrected 1D profile correlates with CTF^2."""
    spec = fit.spectrum
    b, apix = spec.box, spec.pixel_size_angstrom
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
    if kk.numel() < 8:
        return math.inf
    phase = math.radians(fit.phase_shift_degrees)
    chi = optics.chi(kk * kk, mean, phase)
    model = torch.sin(chi) ** 2
    chi_np, prof_np, model_np = chi.cpu().numpy(), prof.cpu().numpy(), model.cpu().numpy()
    last_good = math.inf
    for i in range(len(chi_np)):
        win = np.abs(chi_np - chi_np[i]) <= math.pi
        if win.sum() < 5:
            break
        x, y = prof_np[win], model_np[win]
        x, y = x - x.mean(), y - y.mean()
        den = math.sqrt(float((x * x).sum() * (y * y).sum()))
        cc = float((x * y).sum()) / den if den > 0 else 0.0
        if cc < threshold:
            break
        last_good = 1.0 / float(kk[i])
    return last_good


def ctf_diagnostic_image(fit: CtfFit) -> torch.Tensor:
    """``(box, box)`` image: normalised spectrum on the left, fitted ``CTF^2`` on the right.

    The spectrum is clipped to +-3 and both halves are scaled to zero mean and unit standard
    deviation over the annulus from 30 Å to Nyquist, so they share one grey scale. DC is at
    ``(box // 2, box // 2)`` (row, column); rows are ky, columns kx.
    """
    spec = fit.spectrum
    optics = _Optics.of(fit.voltage_kv, fit.spherical_aberration_mm, fit.amplitude_contrast)
    ky, kx = _frequencies(spec)
    k2 = kx * kx + ky * ky
    az = torch.atan2(ky, kx)
    dz = fit.mean_defocus_angstrom + 0.5 * fit.astigmatism_angstrom * torch.cos(
        2 * (az - math.radians(fit.astigmatism_angle_degrees))
    )
    model = torch.sin(optics.chi(k2, dz, math.radians(fit.phase_shift_degrees))) ** 2
    data = spec.values.clamp(-3.0, 3.0)
    ring = k2 >= (1.0 / 30.0) ** 2

    def standard(x: torch.Tensor) -> torch.Tensor:
        v = x[ring]
        return torch.where(ring, (x - v.mean()) / v.std().clamp_min(1e-12), torch.zeros_like(x))

    out = standard(data)
    c = spec.box // 2
    out[:, c:] = standard(model)[:, c:]
    return out.to(torch.float32)
