"""Contrast transfer function in the RELION / CTFFIND convention.

Model (Mindell & Grigorieff 2003; Rohou & Grigorieff 2015; RELION ``ctf.h``)::

    lambda  = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))       [Å], V in volts (relativistic)
    dz(a)   = (dU + dV)/2 + (dU - dV)/2 cos(2 (a - a_ast))      [Å], underfocus positive
    chi(k)  = pi lambda dz k^2 - pi/2 Cs lambda^3 k^4 + phase_shift + arcsin(w)
    CTF(k)  = scale * sin(chi(k)) * exp(-B k^2 / 4)

with ``k`` the spatial frequency in 1/Å, ``a`` the azimuth of the frequency vector measured from
the x axis (image column axis) towards y (row axis), ``a_ast`` the astigmatism angle
(``rlnDefocusAngle``) in degrees, ``Cs`` in Å (given in mm), ``w`` the amplitude contrast and the
phase shift (``rlnPhaseShift``) in degrees. Defocus U is the defocus along ``a_ast``; by
convention ``dU >= dV``. With underfocus (dU, dV > 0) the CTF is positive at low frequency, as in
RELION (``CTF = -sin(-chi)``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cryospa.core.fourier import frequency_grid_2d

__all__ = [
    "ctf_1d",
    "ctf_2d",
    "ctf_2d_on_grid",
    "electron_wavelength_angstrom",
    "first_zero_frequencies_per_angstrom",
]


def electron_wavelength_angstrom(voltage_kv: float | torch.Tensor) -> torch.Tensor | float:
    """Relativistic electron wavelength in Å for an acceleration voltage in kV."""
    v = voltage_kv * 1e3
    if isinstance(v, torch.Tensor):
        return 12.2643247 / torch.sqrt(v * (1.0 + v * 0.978466e-6))
    return 12.2643247 / math.sqrt(v * (1.0 + v * 0.978466e-6))


def _as(x: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def ctf_2d(
    kx_per_angstrom: torch.Tensor,
    ky_per_angstrom: torch.Tensor,
    *,
    defocus_u_angstrom: float | torch.Tensor,
    defocus_v_angstrom: float | torch.Tensor,
    astigmatism_angle_degrees: float | torch.Tensor = 0.0,
    voltage_kv: float | torch.Tensor,
    spherical_aberration_mm: float | torch.Tensor,
    amplitude_contrast: float | torch.Tensor,
    phase_shift_degrees: float | torch.Tensor = 0.0,
    bfactor_angstrom2: float | torch.Tensor = 0.0,
    scale: float | torch.Tensor = 1.0,
    intact_until_first_peak: bool = False,
) -> torch.Tensor:
    """CTF at given 2D spatial frequencies.

    Parameters
    ----------
    kx_per_angstrom, ky_per_angstrom
        ``(h, w)`` (or any shape) frequency components in 1/Å along x (columns) and y (rows).
    defocus_u_angstrom, defocus_v_angstrom, astigmatism_angle_degrees, phase_shift_degrees,
    bfactor_angstrom2, scale
        Floats or ``(...)`` tensors (a batch, one value per image); a batch is broadcast as
        ``(..., 1, 1)`` against the frequency grid.
    voltage_kv, spherical_aberration_mm, amplitude_contrast
        Microscope constants (floats or ``(...)`` tensors).
    intact_until_first_peak
        Set the CTF to 1 (before the envelope and scale) where ``|chi| < pi / 2``, i.e. below
        its first peak, as RELION's ``--ctf_intact_first_peak``.

    Returns
    -------
    torch.Tensor
        ``(..., h, w)`` CTF values.
    """
    kx = kx_per_angstrom
    ky = ky_per_angstrom

    def b(x: float | torch.Tensor) -> torch.Tensor:
        t = _as(x, kx)
        return t[..., None, None] if t.ndim > 0 else t

    du, dv = b(defocus_u_angstrom), b(defocus_v_angstrom)
    ang = torch.deg2rad(b(astigmatism_angle_degrees))
    lam = electron_wavelength_angstrom(b(voltage_kv))
    cs = b(spherical_aberration_mm) * 1e7
    w = b(amplitude_contrast)
    k2 = kx * kx + ky * ky
    azimuth = torch.atan2(ky, kx)
    dz = 0.5 * (du + dv) + 0.5 * (du - dv) * torch.cos(2.0 * (azimuth - ang))
    chi = (
        math.pi * lam * dz * k2
        - 0.5 * math.pi * cs * lam**3 * k2 * k2
        + torch.deg2rad(b(phase_shift_degrees))
        + torch.atan(w / torch.sqrt(1.0 - w * w))
    )
    out = torch.sin(chi)
    if intact_until_first_peak:
        out = torch.where(chi.abs() < 0.5 * math.pi, torch.ones_like(out), out)
    bf = b(bfactor_angstrom2)
    if bool(torch.any(bf != 0)):
        out = out * torch.exp(-bf * k2 / 4.0)
    return out * b(scale)


def ctf_2d_on_grid(
    shape: tuple[int, int],
    pixel_size_angstrom: float,
    *,
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **ctf_params: Any,
) -> torch.Tensor:
    """CTF sampled on the (r)fft grid of an ``(h, w)`` image, DC at index 0.

    ``ctf_params`` are the keyword arguments of :func:`ctf_2d`. Returns ``(..., h, w // 2 + 1)``
    for ``rfft=True`` or ``(..., h, w)`` otherwise.
    """
    ky, kx = frequency_grid_2d(shape, pixel_size_angstrom, rfft=rfft, device=device, dtype=dtype)
    return ctf_2d(kx, ky, **ctf_params)


def ctf_1d(
    k_per_angstrom: torch.Tensor,
    *,
    defocus_angstrom: float | torch.Tensor,
    voltage_kv: float | torch.Tensor,
    spherical_aberration_mm: float | torch.Tensor,
    amplitude_contrast: float | torch.Tensor,
    phase_shift_degrees: float | torch.Tensor = 0.0,
    bfactor_angstrom2: float | torch.Tensor = 0.0,
    scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Radial (non-astigmatic) CTF at frequencies ``k`` (1/Å), any shape."""
    zero = torch.zeros_like(k_per_angstrom)
    k = k_per_angstrom
    if isinstance(defocus_angstrom, torch.Tensor) and defocus_angstrom.ndim > 0:
        # batch of defoci: (..., 1, 1) broadcasting in ctf_2d expects a 2D grid
        k = k.reshape(1, -1) if k.ndim == 1 else k
        zero = torch.zeros_like(k)
    return ctf_2d(
        k,
        zero,
        defocus_u_angstrom=defocus_angstrom,
        defocus_v_angstrom=defocus_angstrom,
        voltage_kv=voltage_kv,
        spherical_aberration_mm=spherical_aberration_mm,
        amplitude_contrast=amplitude_contrast,
        phase_shift_degrees=phase_shift_degrees,
        bfactor_angstrom2=bfactor_angstrom2,
        scale=scale,
    )


def first_zero_frequencies_per_angstrom(
    n_zeros: int,
    *,
    defocus_angstrom: float,
    voltage_kv: float,
    spherical_aberration_mm: float,
    amplitude_contrast: float,
    phase_shift_degrees: float = 0.0,
) -> list[float]:
    """Analytic frequencies (1/Å) of the first ``n_zeros`` CTF zeros for a round CTF.

    Zeros are where ``chi(k) = n pi``; ``chi`` is a quadratic in ``u = k^2``
    (``-a u^2 + b u + c = n pi``), solved for the smallest positive root per ``n``.
    """
    lam = float(electron_wavelength_angstrom(voltage_kv))
    a = 0.5 * math.pi * spherical_aberration_mm * 1e7 * lam**3
    b = math.pi * lam * defocus_angstrom
    c = math.radians(phase_shift_degrees) + math.atan(
        amplitude_contrast / math.sqrt(1 - amplitude_contrast**2)
    )
    zeros: list[float] = []
    n = 1
    while len(zeros) < n_zeros:
        # a u^2 - b u + (n pi - c) = 0
        disc = b * b - 4 * a * (n * math.pi - c)
        if disc < 0:
            break
        u = (b - math.sqrt(disc)) / (2 * a) if a > 0 else (n * math.pi - c) / b
        if u > 0:
            zeros.append(math.sqrt(u))
        n += 1
    return zeros
