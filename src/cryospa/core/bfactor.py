"""Guinier plots, B-factor fitting and B-factor sharpening / blurring.

Convention: a B-factor ``B`` (Å^2) multiplies the Fourier transform by ``exp(-B k^2 / 4)``, ``k``
the spatial frequency in 1/Å. Positive B blurs, negative B sharpens. :func:`fit_bfactor` returns the
map's decay ``B = -4 * slope`` of ``ln|F|`` against ``k^2`` (positive for a blurred map); the
B-factor that RELION's postprocess applies (``rlnBfactorUsedForSharpening``) is ``-B``.
Shells are those of :mod:`cryospa.core.filters` (``round(|k| n)``, ``0 .. n // 2``).
"""

from __future__ import annotations

import torch

from cryospa.core.filters import radial_average
from cryospa.core.fourier import frequency_grid_2d, frequency_grid_3d

__all__ = ["apply_bfactor", "fit_bfactor", "guinier"]


def guinier(
    x: torch.Tensor,
    *,
    pixel_size_angstrom: float,
    box_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Guinier plot: ``ln`` of the mean Fourier amplitude per shell against ``k^2``.

    Parameters
    ----------
    x
        Either ``(..., n, n, n)`` cubic real volume(s), or ``(n_shells,)`` mean amplitudes per
        shell ``0 .. n_shells - 1`` (a 1D radial amplitude profile).
    pixel_size_angstrom
        Pixel size in Å.
    box_size
        Box edge ``n`` for a 1D profile (default ``2 * (n_shells - 1)``, an even box); ignored
        for volumes.

    Returns
    -------
    k2 : torch.Tensor
        ``(n_shells,)`` squared spatial frequency ``(s / (n * pixel_size))^2`` in 1/Å^2, shells
        ``s = 0 .. n // 2`` (up to Nyquist).
    ln_amplitude : torch.Tensor
        ``(..., n_shells)`` natural log of the mean ``|F|`` per shell (unnormalised FFT; ``-inf``
        where the amplitude is 0). Same dtype / device as ``x``.

    """
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel size must be > 0 Å, got {pixel_size_angstrom}")
    if x.is_complex() or not x.is_floating_point():
        raise ValueError(f"guinier needs real data, got dtype {x.dtype}")
    if x.ndim == 1:
        n_shells = x.shape[0]
        if n_shells < 2:
            raise ValueError(f"a 1D amplitude profile needs >= 2 shells, got {n_shells}")
        n = 2 * (n_shells - 1) if box_size is None else int(box_size)
        if n // 2 + 1 != n_shells:
            raise ValueError(
                f"box size {n} has {n // 2 + 1} shells, but the profile has {n_shells}"
            )
        amplitudes = x
    elif x.ndim >= 3:
        shape = tuple(int(s) for s in x.shape[-3:])
        if len(set(shape)) != 1:
            raise ValueError(f"guinier needs cubic volumes, got {shape}")
        n = shape[0]
        f = torch.fft.rfftn(x, dim=(-3, -2, -1))
        amplitudes = radial_average(torch.abs(f), ndim=3, shape=shape)
    else:
        raise ValueError(
            f"guinier takes a (n_shells,) amplitude profile or (..., n, n, n) volumes, got shape "
            f"{tuple(x.shape)}"
        )
    s = torch.arange(n // 2 + 1, device=x.device, dtype=x.dtype)
    k2 = (s / (n * pixel_size_angstrom)) ** 2
    return k2, torch.log(amplitudes)


def fit_bfactor(
    guinier_x: torch.Tensor,
    guinier_y: torch.Tensor,
    *,
    min_resolution_angstrom: float = 10.0,
    max_resolution_angstrom: float,
) -> tuple[float, float, float]:
    """Fit a straight line to a Guinier plot between two resolutions (RELION's auto B-factor).

    Parameters
    ----------
    guinier_x
        ``(n_shells,)`` ``k^2`` in 1/Å^2 (from :func:`guinier`).
    guinier_y
        ``(n_shells,)`` ``ln`` mean amplitude.
    min_resolution_angstrom
        Low-resolution end of the fit in Å (RELION ``--autob_lowres``, default 10 Å).
    max_resolution_angstrom
        High-resolution end of the fit in Å (usually the FSC = 0.143 resolution).

    Returns
    -------
    bfactor : float
        ``B = -4 * slope`` in Å^2: the map's decay (positive for a blurred map). Sharpen with
        :func:`apply_bfactor` and ``-B``.
    intercept : float
        ``ln`` amplitude at ``k = 0`` of the fitted line.
    correlation : float
        Squared correlation coefficient of the fit (what RELION reports as the fit correlation).

    """
    if guinier_x.ndim != 1 or guinier_x.shape != guinier_y.shape:
        raise ValueError(
            f"guinier_x and guinier_y must be equal-length 1D curves, got {tuple(guinier_x.shape)}"
            f" and {tuple(guinier_y.shape)}"
        )
    if not min_resolution_angstrom > max_resolution_angstrom > 0:
        raise ValueError(
            f"need min_resolution_angstrom > max_resolution_angstrom > 0 (e.g. 10 Å and 3 Å), got "
            f"{min_resolution_angstrom} and {max_resolution_angstrom}"
        )
    gx = guinier_x.detach().to("cpu", torch.float64)
    gy = guinier_y.detach().to("cpu", torch.float64)
    lo = 1.0 / min_resolution_angstrom**2
    hi = 1.0 / max_resolution_angstrom**2
    # small relative slack so that a shell exactly at a limit is included
    use = (gx >= lo * (1 - 1e-9)) & (gx <= hi * (1 + 1e-9)) & torch.isfinite(gy)
    if int(use.sum()) < 2:
        raise ValueError(
            f"fewer than 2 Guinier points between {min_resolution_angstrom} Å and "
            f"{max_resolution_angstrom} Å: widen the range or use a larger box"
        )
    x, y = gx[use], gy[use]
    xm, ym = x.mean(), y.mean()
    sxx = ((x - xm) ** 2).sum()
    syy = ((y - ym) ** 2).sum()
    sxy = ((x - xm) * (y - ym)).sum()
    slope = sxy / sxx
    intercept = ym - slope * xm
    corr = sxy**2 / (sxx * syy) if syy > 0 else torch.tensor(1.0, dtype=torch.float64)
    return -4.0 * float(slope), float(intercept), float(corr)


def apply_bfactor(
    volume: torch.Tensor,
    bfactor_angstrom2: float,
    *,
    pixel_size_angstrom: float,
    ndim: int = 3,
) -> torch.Tensor:
    """Multiply the Fourier transform by ``exp(-B k^2 / 4)`` (``k`` in 1/Å).

    Negative ``B`` sharpens, positive ``B`` blurs; ``apply_bfactor(apply_bfactor(v, -B), B)`` is
    ``v``. Unlike RELION no frequency is zeroed here: low-pass the result (e.g. with
    :func:`cryospa.core.filters.lowpass`) after sharpening.

    Parameters
    ----------
    volume
        ``(..., d, h, w)`` (``ndim=3``, default) or ``(..., h, w)`` (``ndim=2``) real data.
    bfactor_angstrom2
        B-factor in Å^2.
    pixel_size_angstrom
        Pixel size in Å.
    ndim
        3 or 2.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as ``volume``.

    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if volume.ndim < ndim or volume.is_complex() or not volume.is_floating_point():
        raise ValueError(
            f"apply_bfactor needs real data with at least {ndim} dims, got shape "
            f"{tuple(volume.shape)} and dtype {volume.dtype}"
        )
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel size must be > 0 Å, got {pixel_size_angstrom}")
    shape = tuple(int(s) for s in volume.shape[-ndim:])
    dims = tuple(range(-ndim, 0))
    grids: tuple[torch.Tensor, ...]
    if ndim == 3:
        grids = frequency_grid_3d(
            (shape[0], shape[1], shape[2]),
            pixel_size_angstrom,
            device=volume.device,
            dtype=volume.dtype,
        )
    else:
        grids = frequency_grid_2d(
            (shape[0], shape[1]), pixel_size_angstrom, device=volume.device, dtype=volume.dtype
        )
    k2 = sum((g**2 for g in grids), torch.zeros_like(grids[0]))
    factor = torch.exp(-(bfactor_angstrom2 / 4.0) * k2)
    return torch.fft.irfftn(torch.fft.rfftn(volume, dim=dims) * factor, s=shape, dim=dims)
