"""Guinier plots, B-factor fitting and B-factor sharpening / blurring.

Convention: a B-factor ``B`` (Å^2) multiplies the Fourier transform by ``exp(-B k^2 / 4)``, ``k``
the spatial frequency in 1/Å. Positive B blurs, negative B sharpens. :func:`fit_bfactor` returns the
map's decay ``B = -4 * slope`` of ``ln|F|`` against ``k^2`` (positive for a blurred map); the
B-factor that RELION's postprocess applies (``rlnBfactorUsedForSharpening``) is ``-B``.
Shells are those of :mod:`cryospa.core.filters` (``round(|k| n)``, ``0 .. n // 2``).

:func:`sharpen_map` chains the sharpening steps of ``relion_postprocess`` (MTF division, FSC
weighting, Guinier fit, B-factor, low-pass) on one Fourier transform; :func:`divide_by_mtf`
corrects for a detector's modulation transfer function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cryospa.core.filters import _check_real_input, _lowpass_profile, radial_average
from cryospa.core.fourier import frequency_grid_2d, frequency_grid_3d
from cryospa.core.fsc import ShellGrid, fsc_weighting_curve

__all__ = [
    "SharpenedMap",
    "apply_bfactor",
    "divide_by_mtf",
    "fit_bfactor",
    "guinier",
    "mtf_at",
    "sharpen_fourier",
    "sharpen_map",
]


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
    # small relative slack so that a shell exactly at a limit is included (as RELION's
    # res <= lowres && res >= highres), even when k^2 was rounded to float32
    use = (gx >= lo * (1 - 1e-6)) & (gx <= hi * (1 + 1e-6)) & torch.isfinite(gy)
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
    shape = _check_real_input(volume, ndim, "apply_bfactor: volume")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel size must be > 0 Å, got {pixel_size_angstrom}")
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


# --------------------------------------------------------------------------------------------
# detector MTF
# --------------------------------------------------------------------------------------------


def mtf_at(
    frequency_per_angstrom: torch.Tensor,
    mtf_frequency_per_angstrom: torch.Tensor,
    mtf_value: torch.Tensor,
) -> torch.Tensor:
    """A tabulated MTF linearly interpolated at spatial frequencies.

    Parameters
    ----------
    frequency_per_angstrom
        Any shape: where to evaluate the MTF (1/Å).
    mtf_frequency_per_angstrom
        ``(m,)`` strictly increasing table frequencies (1/Å): a RELION MTF file's
        ``rlnResolutionInversePixel`` divided by the detector pixel size.
    mtf_value
        ``(m,)`` MTF values (> 0).

    Returns
    -------
    torch.Tensor
        Same shape as ``frequency_per_angstrom``; the first / last table value outside the table
        (as RELION). RELION's ``divideByMtf`` picks the table interval from a uniform-spacing
        estimate (``(f_last - f_0) / m``, one interval short), which shifts its interpolation by
        up to one table step; here the interval holding the frequency is used.

    """
    if (
        mtf_frequency_per_angstrom.ndim != 1
        or mtf_frequency_per_angstrom.shape != mtf_value.shape
        or mtf_value.shape[0] < 2
    ):
        raise ValueError(
            f"MTF table needs two equal-length 1D columns of >= 2 values, got shapes "
            f"{tuple(mtf_frequency_per_angstrom.shape)} and {tuple(mtf_value.shape)}"
        )
    xs = mtf_frequency_per_angstrom.to(device=frequency_per_angstrom.device, dtype=torch.float64)
    ys = mtf_value.to(device=frequency_per_angstrom.device, dtype=torch.float64)
    if not bool((xs[1:] > xs[:-1]).all()):
        raise ValueError("MTF table frequencies must increase strictly")
    f = frequency_per_angstrom.to(torch.float64).clamp(float(xs[0]), float(xs[-1]))
    i1 = torch.searchsorted(xs, f.reshape(-1).contiguous(), right=False).clamp(1, xs.shape[0] - 1)
    x0, x1 = xs[i1 - 1], xs[i1]
    y0, y1 = ys[i1 - 1], ys[i1]
    out = y0 + (y1 - y0) * (f.reshape(-1) - x0) / (x1 - x0)
    return out.reshape(frequency_per_angstrom.shape).to(frequency_per_angstrom.dtype)


def _mtf_divisor(
    grid: ShellGrid,
    pixel_size_angstrom: float,
    mtf_frequency_per_angstrom: torch.Tensor,
    mtf_value: torch.Tensor,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``radius -> 1 / MTF(|k|)``, 1 from Nyquist on (RELION divides only below it)."""
    n = max(grid.shape)
    xs = mtf_frequency_per_angstrom.to(grid.index.device, torch.float64)
    ys = mtf_value.to(grid.index.device, torch.float64)
    if not bool((ys > 0).all()):
        raise ValueError("the MTF must be > 0 at every frequency")

    def factor(r: torch.Tensor) -> torch.Tensor:
        freq = r / (n * pixel_size_angstrom)
        below_nyquist = freq < 1.0 / (2.0 * pixel_size_angstrom)
        return torch.where(below_nyquist, 1.0 / mtf_at(freq, xs, ys), 1.0)

    return factor


def divide_by_mtf(
    volume: torch.Tensor,
    mtf_frequency_per_angstrom: torch.Tensor,
    mtf_value: torch.Tensor,
    *,
    pixel_size_angstrom: float,
    ndim: int = 3,
) -> torch.Tensor:
    """Divide the Fourier transform by a detector MTF (RELION's ``divideByMtf``).

    Coefficients below Nyquist (``|k| < 1 / (2 pixel_size)``) are divided by the MTF
    interpolated at ``|k|`` (:func:`mtf_at`); the others are left alone.

    Parameters
    ----------
    volume
        ``(..., d, h, w)`` (``ndim=3``) or ``(..., h, w)`` (``ndim=2``) real data.
    mtf_frequency_per_angstrom, mtf_value
        ``(m,)`` MTF table (see :func:`mtf_at`); for a RELION MTF file, the frequencies are
        ``rlnResolutionInversePixel / detector_pixel_size`` (the detector pixel, before any
        binning: ``--mtf_angpix``).
    pixel_size_angstrom
        Pixel size of ``volume`` in Å.
    ndim
        3 or 2.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as ``volume``.

    """
    shape = _check_real_input(volume, ndim, "divide_by_mtf: volume")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel size must be > 0 Å, got {pixel_size_angstrom}")
    dims = tuple(range(-ndim, 0))
    grid = ShellGrid(shape, device=volume.device)
    factor = _mtf_divisor(grid, pixel_size_angstrom, mtf_frequency_per_angstrom, mtf_value)
    f = torch.fft.rfftn(volume, dim=dims)
    lead = f.shape[:-ndim]
    for one in f.reshape(-1, *grid.rfft_shape):  # in place, one map at a time
        grid.scale_radially(one, factor)
    return torch.fft.irfftn(f.reshape(*lead, *grid.rfft_shape), s=shape, dim=dims)


# --------------------------------------------------------------------------------------------
# the whole sharpening of relion_postprocess
# --------------------------------------------------------------------------------------------


@dataclass
class SharpenedMap:
    """What :func:`sharpen_map` made.

    Attributes
    ----------
    volume : torch.Tensor
        ``(n, n, n)`` sharpened, low-passed map.
    k2 : torch.Tensor
        ``(n // 2 + 1,)`` squared spatial frequency of shells ``0 .. n // 2`` (1/Å^2), float64.
    ln_amplitude_original, ln_amplitude_mtf_corrected, ln_amplitude_weighted, \
ln_amplitude_sharpened : torch.Tensor
        ``(n // 2 + 1,)`` Guinier curves ``ln`` mean ``|F| / N`` (forward transform divided by
        the number of voxels ``N``, as RELION) of the map as given, after the MTF division,
        after the FSC weighting and after the B-factor; ``-inf`` where a shell is 0. The mean
        is over the whole sphere of each shell (full-FFT weights); RELION averages over its
        half transform, where the ``kx = 0`` plane counts twice as much as on the sphere,
        which moves its fitted B-factor by a few per cent for maps with strong features along
        the box axes (-78.9 against -75.6 Å^2 on a simulated D2 map aligned to them).
    bfactor_angstrom2 : float
        B-factor applied (Å^2, negative sharpens; RELION's ``rlnBfactorUsedForSharpening``).
    fit_slope, fit_intercept, fit_correlation : float or None
        The Guinier fit (slope in Å^2, so that ``B = 4 * slope``; intercept; squared correlation)
        when the B-factor was estimated.
    lowpass_resolution_angstrom : float or None
        Resolution of the final low-pass (the shell it was rounded to), None if none.

    """

    volume: torch.Tensor
    k2: torch.Tensor
    ln_amplitude_original: torch.Tensor
    ln_amplitude_mtf_corrected: torch.Tensor
    ln_amplitude_weighted: torch.Tensor
    ln_amplitude_sharpened: torch.Tensor
    bfactor_angstrom2: float
    fit_slope: float | None
    fit_intercept: float | None
    fit_correlation: float | None
    lowpass_resolution_angstrom: float | None


def _ln_mean_amplitude(f: torch.Tensor, grid: ShellGrid, n_voxels: int) -> torch.Tensor:
    amp = grid.mean(torch.abs(f)) / n_voxels
    return torch.where(amp > 0, torch.log(amp.clamp(min=torch.finfo(amp.dtype).tiny)),
                       torch.full_like(amp, -math.inf))


def sharpen_map(
    volume: torch.Tensor,
    *,
    pixel_size_angstrom: float,
    fsc_curve: torch.Tensor | None = None,
    mtf: tuple[torch.Tensor, torch.Tensor] | None = None,
    auto_bfactor: bool = False,
    fit_min_resolution_angstrom: float = 10.0,
    fit_max_resolution_angstrom: float = 0.0,
    bfactor_angstrom2: float = 0.0,
    lowpass_resolution_angstrom: float | None = None,
    lowpass_edge_px: float = 2.0,
) -> SharpenedMap:
    """Sharpen a map as ``relion_postprocess``: MTF, FSC weighting, B-factor, low-pass.

    In Fourier space, in this order: (1) divide by the detector MTF (:func:`divide_by_mtf`);
    (2) multiply each shell by ``sqrt(2 FSC / (1 + FSC))`` (Rosenthal & Henderson 2003), 0 from
    the first shell where the FSC drops below 1e-4 (:func:`~cryospa.core.fsc.apply_fsc_weighting`);
    (3) with ``auto_bfactor``, fit a straight line to the Guinier plot of the weighted map
    (``ln`` mean amplitude against ``k^2``) over shells between ``fit_min_resolution_angstrom``
    and ``fit_max_resolution_angstrom`` (0: up to Nyquist; shells zeroed by the weighting are
    left out), and take ``B = 4 * slope``; else use ``bfactor_angstrom2``; (4) multiply by
    ``exp(-B k^2 / 4)`` up to Nyquist and zero the corners beyond it; (5) low-pass with a
    raised cosine of ``lowpass_edge_px`` Fourier pixels at the shell
    ``round(n * pixel_size / lowpass_resolution_angstrom)``.

    Parameters
    ----------
    volume
        ``(n, n, n)`` real map (usually the average of two half maps).
    pixel_size_angstrom
        Pixel size in Å.
    fsc_curve
        ``(n // 2 + 1,)`` FSC for the weighting (the mask-corrected FSC of the half maps); None:
        no FSC weighting.
    mtf
        ``(frequencies in 1/Å, values)`` of the detector MTF (see :func:`mtf_at`); None: none.
    auto_bfactor
        Estimate the B-factor from the Guinier plot (RELION ``--auto_bfac``).
    fit_min_resolution_angstrom, fit_max_resolution_angstrom
        The fit range in Å (RELION ``--autob_lowres`` 10, ``--autob_highres`` 0).
    bfactor_angstrom2
        The B-factor to apply when not estimated (RELION ``--adhoc_bfac``; negative sharpens).
    lowpass_resolution_angstrom
        Final low-pass in Å (RELION: the FSC resolution, or ``--low_pass``); None: none.
    lowpass_edge_px
        Width of the low-pass edge in Fourier pixels (RELION ``--filter_edge_width`` 2).

    Returns
    -------
    SharpenedMap
        The map, the Guinier curves and the B-factor.

    Raises
    ------
    ValueError
        Bad shapes, or a Guinier fit range holding fewer than 2 shells.

    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1 or not volume.is_floating_point():
        raise ValueError(f"sharpen_map needs a real cubic (n, n, n) map, got {tuple(volume.shape)}")
    return sharpen_fourier(
        torch.fft.rfftn(volume, dim=(-3, -2, -1)),
        grid=ShellGrid((int(volume.shape[0]),) * 3, device=volume.device),
        pixel_size_angstrom=pixel_size_angstrom,
        fsc_curve=fsc_curve,
        mtf=mtf,
        auto_bfactor=auto_bfactor,
        fit_min_resolution_angstrom=fit_min_resolution_angstrom,
        fit_max_resolution_angstrom=fit_max_resolution_angstrom,
        bfactor_angstrom2=bfactor_angstrom2,
        lowpass_resolution_angstrom=lowpass_resolution_angstrom,
        lowpass_edge_px=lowpass_edge_px,
    )


def sharpen_fourier(
    f: torch.Tensor,
    *,
    grid: ShellGrid,
    pixel_size_angstrom: float,
    fsc_curve: torch.Tensor | None = None,
    mtf: tuple[torch.Tensor, torch.Tensor] | None = None,
    auto_bfactor: bool = False,
    fit_min_resolution_angstrom: float = 10.0,
    fit_max_resolution_angstrom: float = 0.0,
    bfactor_angstrom2: float = 0.0,
    lowpass_resolution_angstrom: float | None = None,
    lowpass_edge_px: float = 2.0,
) -> SharpenedMap:
    """:func:`sharpen_map` of a map given by its rfft transform ``f`` on ``grid`` (a cubic box).

    ``f`` is ``(n, n, n // 2 + 1)`` complex (``torch.fft.rfftn`` of the map); it is not changed.
    The other parameters, the result and the errors are those of :func:`sharpen_map`.
    """
    if grid.ndim != 3 or len(set(grid.shape)) != 1:
        raise ValueError(f"sharpen_fourier needs a cubic box, got {grid.shape}")
    if not f.is_complex() or tuple(f.shape) != grid.rfft_shape:
        raise ValueError(f"f must be the complex rfft of the box, shape {grid.rfft_shape}"
                         f", got {tuple(f.shape)} ({f.dtype})")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel size must be > 0 Å, got {pixel_size_angstrom}")
    shape = grid.shape
    n = shape[0]
    n_shells = grid.n_shells
    n_voxels = n**3
    device = f.device
    dtype = f.real.dtype
    # float64: the fit range compares k^2 with 1 / resolution^2, shell by shell, as RELION does
    k2 = (torch.arange(n_shells, device=device, dtype=torch.float64)
          / (n * pixel_size_angstrom)) ** 2
    ln_in = _ln_mean_amplitude(f, grid, n_voxels)
    f = f.clone()  # every step below scales it in place
    if mtf is not None:
        grid.scale_radially(f, _mtf_divisor(grid, pixel_size_angstrom, mtf[0], mtf[1]))
    ln_mtf = _ln_mean_amplitude(f, grid, n_voxels)
    if fsc_curve is not None:
        if fsc_curve.ndim != 1 or fsc_curve.shape[0] != n_shells:
            raise ValueError(
                f"fsc_curve must be ({n_shells},) for a box of {n}, got {tuple(fsc_curve.shape)}"
            )
        weights = fsc_weighting_curve(fsc_curve.to(device=device, dtype=dtype))
        f *= grid.per_coefficient(weights, beyond=0.0)
    ln_weighted = _ln_mean_amplitude(f, grid, n_voxels)
    slope = intercept = corr = None
    bfactor = float(bfactor_angstrom2)
    if auto_bfactor:
        nyquist = 2.0 * pixel_size_angstrom
        decay, intercept, corr = fit_bfactor(
            k2, ln_weighted,
            min_resolution_angstrom=fit_min_resolution_angstrom,
            max_resolution_angstrom=max(fit_max_resolution_angstrom, nyquist),
        )
        slope = -decay / 4.0
        bfactor = 4.0 * slope
    if bfactor != 0.0:
        scale = bfactor / 4.0 / (n * pixel_size_angstrom) ** 2

        def envelope(r: torch.Tensor) -> torch.Tensor:
            # up to Nyquist; RELION zeroes the corners here
            return torch.where(r <= n / 2.0, torch.exp(-scale * r * r), 0.0)

        grid.scale_radially(f, envelope)
    ln_sharp = _ln_mean_amplitude(f, grid, n_voxels)
    lowpass_at = None
    if lowpass_resolution_angstrom is not None:
        if not lowpass_resolution_angstrom > 0:
            raise ValueError(
                f"low-pass resolution must be > 0 Å, got {lowpass_resolution_angstrom}"
            )
        cut = math.floor(n * pixel_size_angstrom / lowpass_resolution_angstrom + 0.5)
        lowpass_at = n * pixel_size_angstrom / cut if cut > 0 else math.inf
        grid.scale_radially(f, lambda r: _lowpass_profile(r, float(cut), lowpass_edge_px))
    out = torch.fft.irfftn(f, s=shape, dim=(-3, -2, -1))
    return SharpenedMap(
        volume=out,
        k2=k2,
        ln_amplitude_original=ln_in,
        ln_amplitude_mtf_corrected=ln_mtf,
        ln_amplitude_weighted=ln_weighted,
        ln_amplitude_sharpened=ln_sharp,
        bfactor_angstrom2=bfactor,
        fit_slope=slope,
        fit_intercept=intercept,
        fit_correlation=corr,
        lowpass_resolution_angstrom=lowpass_at,
    )
