"""Fourier shell / ring correlation, resolution, phase randomisation and masking correction.

Shells follow :mod:`cryospa.core.filters`: coefficient ``k`` (cycles per pixel) of an ``n``-box
belongs to shell ``round(|k| n)``; there are ``n // 2 + 1`` shells ``0 .. n // 2`` and shell ``s``
is the resolution ``n * pixel_size / s`` Å. Sums over the rfft half grid are weighted so that
they equal sums over the full FFT.
"""

from __future__ import annotations

import math

import torch

from cryospa.core.filters import _radial_sums, shell_radius_grid

__all__ = [
    "fsc",
    "fsc_corrected_for_masking",
    "fsc_weighting_curve",
    "phase_randomise",
    "resolution_at_threshold",
    "shell_resolutions_angstrom",
]


def fsc(a: torch.Tensor, b: torch.Tensor, *, ndim: int = 3) -> torch.Tensor:
    """Fourier shell (``ndim=3``) or ring (``ndim=2``) correlation of two real maps / images.

    ``FSC(s) = sum Re(A conj(B)) / sqrt(sum |A|^2 sum |B|^2)`` over the coefficients of shell
    ``s`` (full-FFT sums).

    Parameters
    ----------
    a, b
        ``(..., n, n, n)`` volumes (``ndim=3``) or ``(..., n, n)`` images (``ndim=2``) of equal
        box size; leading dims broadcast.
    ndim
        3 (FSC, default) or 2 (FRC).

    Returns
    -------
    torch.Tensor
        ``(..., n // 2 + 1)`` correlation per shell ``0 .. n // 2`` (0 where a shell has no
        power). Real dtype of the inputs, their device.

    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 (FRC) or 3 (FSC), got {ndim}")
    kind = "cubic volumes" if ndim == 3 else "square images"
    if a.ndim < ndim or b.ndim < ndim:
        raise ValueError(
            f"FSC needs {kind}, got shapes {tuple(a.shape)} and {tuple(b.shape)} (ndim={ndim})"
        )
    sa = tuple(int(s) for s in a.shape[-ndim:])
    sb = tuple(int(s) for s in b.shape[-ndim:])
    if sa != sb or len(set(sa)) != 1:
        raise ValueError(f"FSC needs {kind} of equal size, got {sa} and {sb}")
    for name, t in (("a", a), ("b", b)):
        if t.is_complex() or not t.is_floating_point():
            raise ValueError(f"FSC needs real floating-point maps, got {name} of dtype {t.dtype}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    dims = tuple(range(-ndim, 0))
    fa = torch.fft.rfftn(a.to(dtype), dim=dims)
    fb = torch.fft.rfftn(b.to(dtype), dim=dims)
    cross = fa.real * fb.real + fa.imag * fb.imag
    pa = fa.real**2 + fa.imag**2
    pb = fb.real**2 + fb.imag**2
    cross, pa, pb = torch.broadcast_tensors(cross, pa, pb)
    num, _ = _radial_sums(cross, sa)
    den_a, _ = _radial_sums(pa, sa)
    den_b, _ = _radial_sums(pb, sa)
    den = torch.sqrt(den_a) * torch.sqrt(den_b)
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def shell_resolutions_angstrom(
    n_shells: int,
    *,
    box_size: int,
    pixel_size_angstrom: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Resolution in Å of shells ``0 .. n_shells - 1``: ``box_size * pixel_size / s``.

    Returns
    -------
    torch.Tensor
        ``(n_shells,)``; shell 0 (the DC term) is ``inf`` (RELION writes 999 there).

    """
    if n_shells < 1 or box_size < 1 or not pixel_size_angstrom > 0:
        raise ValueError(
            f"need n_shells >= 1, box_size >= 1 and pixel size > 0, got {n_shells}, {box_size} "
            f"and {pixel_size_angstrom} Å"
        )
    s = torch.arange(n_shells, device=device, dtype=dtype)
    return box_size * pixel_size_angstrom / s


def resolution_at_threshold(
    fsc_curve: torch.Tensor,
    *,
    box_size: int,
    pixel_size_angstrom: float,
    threshold: float = 0.143,
    interpolate: bool = True,
) -> float:
    """Resolution (Å) where an FSC curve first drops below ``threshold``.

    Parameters
    ----------
    fsc_curve
        ``(n_shells,)`` FSC per shell ``0 .. n_shells - 1`` of a ``box_size`` box.
    box_size
        Box edge in pixels.
    pixel_size_angstrom
        Pixel size in Å.
    threshold
        FSC threshold (0.143 for gold-standard half maps, 0.5 against a model).
    interpolate
        ``True``: interpolate linearly (in shell index, i.e. spatial frequency) between the last
        shell at or above the threshold and the first shell below it. ``False``: the resolution
        of the last shell at or above the threshold, as ``relion_postprocess`` reports it.

    Returns
    -------
    float
        Resolution in Å. If the curve never drops below the threshold, the resolution of the last
        shell (Nyquist, ``2 * pixel_size``, for even boxes), as RELION reports; ``inf`` if the
        curve is already below the threshold at shell 1. Shell 0 (the DC term, a single
        coefficient that carries no resolution information and is often negative for maps of
        normalised particles) is ignored, as RELION sets it to 1.

    """
    if fsc_curve.ndim != 1 or fsc_curve.shape[0] < 2:
        raise ValueError(f"fsc_curve must be (n_shells >= 2,), got shape {tuple(fsc_curve.shape)}")
    if box_size < 1 or not pixel_size_angstrom > 0:
        raise ValueError(
            f"need box_size >= 1 and pixel size > 0, got {box_size} and {pixel_size_angstrom} Å"
        )
    curve = fsc_curve.detach().to("cpu", torch.float64).clone()
    curve[0] = 1.0  # the DC term: no resolution information
    below = torch.nonzero(curve < threshold).flatten()
    if below.numel() == 0:
        shell = float(curve.shape[0] - 1)
    else:
        i = int(below[0])
        if i <= 1:
            return math.inf
        hi, lo = float(curve[i - 1]), float(curve[i])
        if interpolate and hi != lo:
            shell = (i - 1) + (hi - threshold) / (hi - lo)
        else:
            shell = float(i - 1)
        if shell <= 0:
            return math.inf
    return box_size * pixel_size_angstrom / shell


def phase_randomise(
    x: torch.Tensor,
    *,
    beyond_resolution_angstrom: float,
    pixel_size_angstrom: float,
    ndim: int = 3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace the Fourier phases beyond a resolution by random ones, keeping the amplitudes.

    Coefficients with ``|k| >= pixel_size / beyond_resolution`` (cycles per pixel) get uniform
    random phases; in shell units that is ``radius >= n * pixel_size / resolution``, which is
    RELION's ``randomizePhasesBeyond`` (``r^2 >= index^2``) when the resolution is that of shell
    ``index``. The random phases are those of the transform of real white noise, hence
    Friedel-symmetric: the output is exactly real and keeps the power spectrum.

    Parameters
    ----------
    x
        ``(..., d, h, w)`` volumes (``ndim=3``) or ``(..., h, w)`` images (``ndim=2``).
    beyond_resolution_angstrom
        Randomise at this resolution (Å) and finer.
    pixel_size_angstrom
        Pixel size in Å.
    ndim
        3 (default) or 2.
    generator
        Optional ``torch.Generator`` (on ``x``'s device) for reproducible phases.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as ``x``.

    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if x.ndim < ndim or x.is_complex() or not x.is_floating_point():
        raise ValueError(
            f"phase_randomise needs real (..., {'d, ' if ndim == 3 else ''}h, w) data, got shape "
            f"{tuple(x.shape)} and dtype {x.dtype}"
        )
    if not beyond_resolution_angstrom > 0 or not pixel_size_angstrom > 0:
        raise ValueError(
            f"resolution and pixel size must be > 0 Å, got {beyond_resolution_angstrom} and "
            f"{pixel_size_angstrom}"
        )
    shape = tuple(int(s) for s in x.shape[-ndim:])
    dims = tuple(range(-ndim, 0))
    n = max(shape)
    cut = n * pixel_size_angstrom / beyond_resolution_angstrom
    r = shell_radius_grid(shape, device=x.device, dtype=torch.float64)
    # small tolerance so that a resolution computed from shell s randomises shell radius s
    randomise = r >= cut - 1e-6 * max(cut, 1.0)
    f = torch.fft.rfftn(x, dim=dims)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    g = torch.fft.rfftn(noise, dim=dims)
    mag_g = torch.abs(g)
    unit = torch.where(mag_g > 0, g / torch.where(mag_g > 0, mag_g, 1.0), torch.ones_like(g))
    f = torch.where(randomise, torch.abs(f) * unit, f)
    return torch.fft.irfftn(f, s=shape, dim=dims)


def fsc_corrected_for_masking(
    fsc_masked: torch.Tensor,
    fsc_masked_phase_randomised: torch.Tensor,
    *,
    randomise_from_shell: int,
    guard_shells: int = 2,
) -> torch.Tensor:
    """Correct a masked FSC for the mask's own correlation (Chen et al. 2013, as RELION).

    ``FSC_true = (FSC_t - FSC_n) / (1 - FSC_n)`` for shells ``>= randomise_from_shell +
    guard_shells``, ``FSC_true = FSC_t`` below, where ``FSC_t`` is the FSC of the masked half maps
    and ``FSC_n`` that of the masked phase-randomised half maps. RELION's ``relion_postprocess``
    starts the correction 2 shells beyond the randomisation shell (``guard_shells=2``) and sets a
    non-positive DC value of either curve to 1.

    Parameters
    ----------
    fsc_masked, fsc_masked_phase_randomised
        ``(..., n_shells)`` curves.
    randomise_from_shell
        First shell whose phases were randomised (RELION: first shell where the unmasked FSC
        drops below 0.8).
    guard_shells
        Extra shells before the correction starts (default 2, as RELION).

    Returns
    -------
    torch.Tensor
        ``(..., n_shells)`` corrected curve (0 where ``FSC_n == 1``).

    """
    if fsc_masked.shape != fsc_masked_phase_randomised.shape:
        raise ValueError(
            f"FSC curves must have equal shapes, got {tuple(fsc_masked.shape)} and "
            f"{tuple(fsc_masked_phase_randomised.shape)}"
        )
    if randomise_from_shell < 0 or guard_shells < 0:
        raise ValueError(
            f"randomise_from_shell and guard_shells must be >= 0, got {randomise_from_shell} "
            f"and {guard_shells}"
        )
    t = fsc_masked.clone()
    nrand = fsc_masked_phase_randomised.clone()
    t[..., 0] = torch.where(t[..., 0] <= 0, 1.0, t[..., 0])
    nrand[..., 0] = torch.where(nrand[..., 0] <= 0, 1.0, nrand[..., 0])
    denom = 1.0 - nrand
    corrected = torch.where(denom != 0, (t - nrand) / torch.where(denom != 0, denom, 1.0), 0.0)
    shells = torch.arange(t.shape[-1], device=t.device)
    return torch.where(shells < randomise_from_shell + guard_shells, t, corrected)


def fsc_weighting_curve(fsc_curve: torch.Tensor) -> torch.Tensor:
    """Rosenthal & Henderson (2003) weight ``sqrt(2 FSC / (1 + FSC))`` per shell.

    As in RELION's postprocess, the weight is 0 where FSC <= 0 and for every shell from the first
    one where the FSC drops below 1e-4 onwards (so noise beyond the resolution is removed).

    Parameters
    ----------
    fsc_curve
        ``(..., n_shells)`` FSC between half maps.

    Returns
    -------
    torch.Tensor
        ``(..., n_shells)`` weights in ``[0, 1]``, to be used with
        :func:`cryospa.core.filters.filter_by_1d`.

    """
    f = fsc_curve.clamp(min=0.0)
    weights = torch.sqrt(2 * f / (1 + f))
    dropped = torch.cumsum((fsc_curve < 1e-4).to(torch.int32), dim=-1) > 0
    return torch.where(dropped, torch.zeros_like(weights), weights)
