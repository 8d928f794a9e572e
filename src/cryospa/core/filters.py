"""Fourier filters, radial averages and 1D spectra of images and volumes.

Conventions
-----------
* Transforms are ``torch.fft.rfftn`` over the last ``ndim`` axes (2 for images ``(..., h, w)``,
  3 for volumes ``(..., d, h, w)``), DC at index 0, half axis last.
* **Shells.** A Fourier coefficient at spatial frequency ``k`` (cycles per pixel) has the radius
  ``r = |k| * n`` in *Fourier pixels*, where ``n`` is the box size (the largest real-space edge
  when the box is not square / cubic). It belongs to shell ``round(r)`` (``floor(r + 0.5)``, as
  RELION's ``ROUND``). There are ``n // 2 + 1`` shells, ``0 .. n // 2``; shell ``s`` is the
  resolution ``n * pixel_size / s`` Å. Coefficients with ``round(r) > n // 2`` (the corners of
  the box) belong to no shell.
* **Half-grid weights.** A quantity sampled on the rfft half grid is averaged with weight 2 for
  the columns ``0 < kx < w / 2`` (they stand for ``k`` and ``-k`` of the full FFT) and weight 1
  for ``kx = 0`` and, for even ``w``, ``kx = w / 2``. Radial averages hence equal those computed
  on the full FFT for Friedel-symmetric quantities (``|F|^2``, ``Re(F1 conj(F2))``, ...).
* **Raised-cosine edges** (RELION's ``lowPassFilterMap``): a low-pass at shell ``c`` with edge
  width ``w`` Fourier pixels keeps ``r <= c - w / 2`` untouched, removes ``r >= c + w / 2`` and
  multiplies by ``0.5 + 0.5 cos(pi (r - c + w / 2) / w)`` in between (0.5 at ``r = c``). Unlike
  RELION, ``c = n * pixel_size / resolution`` is not rounded to an integer shell.
* **Power** is ``|F|^2 / N`` with the unnormalised forward FFT and ``N`` the number of pixels of
  one image / volume, so white noise of variance ``sigma^2`` has a flat spectrum ``sigma^2``.
"""

from __future__ import annotations

import math

import torch

from cryospa.core.fourier import frequency_grid_2d, frequency_grid_3d

__all__ = [
    "bandpass",
    "filter_by_1d",
    "highpass",
    "lowpass",
    "power_spectrum_1d",
    "radial_average",
    "shell_radius_grid",
    "whiten",
]


# --------------------------------------------------------------------------------------------
# geometry helpers
# --------------------------------------------------------------------------------------------


def _check_ndim(ndim: int) -> None:
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 (images) or 3 (volumes), got {ndim}")


def _check_real_input(x: torch.Tensor, ndim: int, name: str = "x") -> tuple[int, ...]:
    _check_ndim(ndim)
    if x.ndim < ndim:
        raise ValueError(
            f"{name} needs at least {ndim} dimensions for ndim={ndim}, got shape {tuple(x.shape)}"
        )
    if x.is_complex() or not x.is_floating_point():
        raise ValueError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}")
    return tuple(int(s) for s in x.shape[-ndim:])


def shell_radius_grid(
    shape: tuple[int, ...],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Radius in Fourier pixels (``|k| * n``) of every rfft coefficient of a real ``shape`` box.

    Parameters
    ----------
    shape
        Real-space size ``(h, w)`` or ``(d, h, w)``.
    device, dtype
        Where and in which real dtype to build the grid.

    Returns
    -------
    torch.Tensor
        ``(h, w // 2 + 1)`` or ``(d, h, w // 2 + 1)`` radii, ``|k|`` in cycles per pixel times
        ``n = max(shape)``; equal to the Fourier index radius for square / cubic boxes.

    """
    n = max(shape)
    if len(shape) == 2:
        ky, kx = frequency_grid_2d((shape[0], shape[1]), rfft=True, device=device, dtype=dtype)
        return torch.sqrt(ky**2 + kx**2) * n
    if len(shape) == 3:
        kz, ky, kx = frequency_grid_3d(
            (shape[0], shape[1], shape[2]), rfft=True, device=device, dtype=dtype
        )
        return torch.sqrt(kz**2 + ky**2 + kx**2) * n
    raise ValueError(f"shape must have 2 or 3 entries, got {shape}")


def _half_grid_weights(
    w: int, *, device: torch.device | str | None, dtype: torch.dtype
) -> torch.Tensor:
    """``(w // 2 + 1,)`` multiplicities of the rfft columns in the full FFT."""
    weights = torch.full((w // 2 + 1,), 2.0, device=device, dtype=dtype)
    weights[0] = 1.0
    if w % 2 == 0:
        weights[-1] = 1.0
    return weights


def _shell_index(shape: tuple[int, ...], device: torch.device | str | None) -> torch.Tensor:
    """Flat ``(M,)`` shell index of every rfft coefficient; ``n // 2 + 1`` marks "no shell"."""
    n_shells = max(shape) // 2 + 1
    r = shell_radius_grid(shape, device=device, dtype=torch.float64)
    idx = torch.floor(r + 0.5).to(torch.long)
    idx = torch.where(idx < n_shells, idx, torch.full_like(idx, n_shells))
    return idx.reshape(-1)


def _radial_sums(values: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted shell sums of a real rfft-grid quantity and the shell weights (full-FFT counts).

    ``values`` is ``(..., *rfft_shape)``; returns ``(..., n_shells)`` sums and ``(n_shells,)``
    counts.
    """
    ndim = len(shape)
    n_shells = max(shape) // 2 + 1
    lead = values.shape[:-ndim]
    idx = _shell_index(shape, values.device)
    col_w = _half_grid_weights(shape[-1], device=values.device, dtype=values.dtype)
    weights = torch.broadcast_to(col_w, values.shape[-ndim:]).reshape(-1)  # (M,)
    flat = values.reshape(-1, idx.numel()) * weights  # (B, M)
    sums = torch.zeros(flat.shape[0], n_shells + 1, device=values.device, dtype=values.dtype)
    sums.index_add_(1, idx, flat)
    counts = torch.zeros(n_shells + 1, device=values.device, dtype=values.dtype)
    counts.index_add_(0, idx, weights)
    return sums[:, :n_shells].reshape(*lead, n_shells), counts[:n_shells]


def _infer_shape(rfft_shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    h = rfft_shape[-2]
    expected = (h,) * (ndim - 1) + (h // 2 + 1,)
    if tuple(rfft_shape) != expected:
        raise ValueError(
            f"cannot infer the real-space box from rfft grid {tuple(rfft_shape)}: a square / cubic "
            f"box of size {h} would give {expected}; pass shape=(...) with the real-space size"
        )
    return (h,) * ndim


def radial_average(
    values: torch.Tensor,
    *,
    ndim: int,
    shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Average a real quantity on the rfft grid over Fourier shells.

    Parameters
    ----------
    values
        ``(..., h, w // 2 + 1)`` (``ndim=2``) or ``(..., d, h, w // 2 + 1)`` (``ndim=3``) real
        values on the rfft grid (e.g. ``|F|^2``), assumed Friedel-symmetric (the value at ``-k``
        equals the value at ``k``), DC at index 0.
    ndim
        2 for images, 3 for volumes.
    shape
        Real-space size of the last ``ndim`` axes. Needed only for non-square / non-cubic boxes
        (the rfft grid does not tell an even from an odd width); by default the box is taken to
        be square / cubic with edge ``h``.

    Returns
    -------
    torch.Tensor
        ``(..., n // 2 + 1)`` shell averages (shell ``round(|k| n)``, see the module docstring),
        equal to the averages over the full FFT grid. Same dtype and device as ``values``.

    """
    _check_ndim(ndim)
    if values.ndim < ndim:
        raise ValueError(
            f"values needs at least {ndim} dimensions for ndim={ndim}, got {tuple(values.shape)}"
        )
    if values.is_complex() or not values.is_floating_point():
        raise ValueError(
            f"radial_average needs a real floating-point quantity (e.g. |F|^2 or "
            f"Re(F1 conj(F2))), got dtype {values.dtype}"
        )
    rfft_shape = tuple(int(s) for s in values.shape[-ndim:])
    if shape is None:
        shape = _infer_shape(rfft_shape, ndim)
    else:
        shape = tuple(int(s) for s in shape)
        if len(shape) != ndim or rfft_shape != (*shape[:-1], shape[-1] // 2 + 1):
            raise ValueError(
                f"real-space shape {shape} does not match the rfft grid {rfft_shape} (ndim={ndim})"
            )
    sums, counts = _radial_sums(values, shape)
    return sums / counts


def power_spectrum_1d(x: torch.Tensor, *, ndim: int) -> torch.Tensor:
    """Rotationally averaged power spectrum of real images / volumes.

    Parameters
    ----------
    x
        ``(..., h, w)`` images (``ndim=2``) or ``(..., d, h, w)`` volumes (``ndim=3``).
    ndim
        2 or 3.

    Returns
    -------
    torch.Tensor
        ``(..., n // 2 + 1)`` mean of ``|F|^2 / N`` per shell (``N`` pixels per image, ``n`` the
        largest edge), so white noise of variance ``sigma^2`` gives ``sigma^2`` in every shell.

    """
    shape = _check_real_input(x, ndim)
    f = torch.fft.rfftn(x, dim=tuple(range(-ndim, 0)))
    power = (f.real**2 + f.imag**2) / math.prod(shape)
    return radial_average(power, ndim=ndim, shape=shape)


def _interpolate_curve(curve: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Sample ``(..., n_shells)`` curves at fractional shell radii ``r`` (any shape).

    Linear between shells, constant (the last value) beyond the last shell. Returns
    ``(..., *r.shape)``.
    """
    n_shells = curve.shape[-1]
    r_flat = r.reshape(-1).clamp(max=float(n_shells - 1))
    i0 = torch.floor(r_flat).to(torch.long)
    i1 = (i0 + 1).clamp(max=n_shells - 1)
    frac = r_flat - i0.to(r_flat.dtype)
    out = curve[..., i0] * (1 - frac) + curve[..., i1] * frac
    return out.reshape(*curve.shape[:-1], *r.shape)


def filter_by_1d(x: torch.Tensor, curve: torch.Tensor, *, ndim: int) -> torch.Tensor:
    """Multiply the Fourier transform of real images / volumes by a radial 1D curve.

    Parameters
    ----------
    x
        ``(..., h, w)`` (``ndim=2``) or ``(..., d, h, w)`` (``ndim=3``) real array.
    curve
        ``(n_shells,)`` or ``(..., n_shells)`` (broadcast against the leading dims of ``x``)
        factor per shell, shell ``s`` at radius ``s`` Fourier pixels (``|k| * n``,
        ``n = max(box)``). Usually ``n_shells = n // 2 + 1``.
    ndim
        2 or 3.

    Returns
    -------
    torch.Tensor
        Filtered array, same shape, dtype and device as ``x``. The factor at radius ``r`` is
        interpolated linearly between shells ``floor(r)`` and ``floor(r) + 1`` and held at the last
        value beyond the last shell (the corners of the box).

    """
    shape = _check_real_input(x, ndim)
    if curve.ndim < 1 or curve.shape[-1] < 1:
        raise ValueError(f"curve must be (..., n_shells), got shape {tuple(curve.shape)}")
    dims = tuple(range(-ndim, 0))
    r = shell_radius_grid(shape, device=x.device, dtype=x.dtype)
    factor = _interpolate_curve(curve.to(device=x.device, dtype=x.dtype), r)
    f = torch.fft.rfftn(x, dim=dims) * factor
    return torch.fft.irfftn(f, s=shape, dim=dims)


def whiten(
    images: torch.Tensor,
    *,
    noise_spectrum: torch.Tensor | None = None,
    ndim: int = 2,
) -> torch.Tensor:
    """Flatten the power spectrum of images (or volumes): divide ``F`` by ``sqrt(power)``.

    Parameters
    ----------
    images
        ``(..., h, w)`` images (or ``(..., d, h, w)`` volumes with ``ndim=3``).
    noise_spectrum
        ``(n_shells,)`` or ``(..., n_shells)`` power per shell in the convention of
        :func:`power_spectrum_1d` (``|F|^2 / N``). By default each image's own
        :func:`power_spectrum_1d` is used.
    ndim
        2 (default) or 3.

    Returns
    -------
    torch.Tensor
        Whitened images, same shape / dtype / device. Where the spectrum is zero the factor is 0.
        Noise with the given spectrum comes out with unit variance per pixel.

    """
    _check_real_input(images, ndim, "images")
    if noise_spectrum is None:
        noise_spectrum = power_spectrum_1d(images, ndim=ndim)
    spec = noise_spectrum.to(device=images.device, dtype=images.dtype)
    inv = torch.where(spec > 0, torch.rsqrt(spec.clamp(min=torch.finfo(spec.dtype).tiny)), 0.0)
    return filter_by_1d(images, inv, ndim=ndim)


# --------------------------------------------------------------------------------------------
# raised-cosine low / high / band pass
# --------------------------------------------------------------------------------------------


def _lowpass_profile(r: torch.Tensor, cut: float, edge_width: float) -> torch.Tensor:
    """Raised-cosine low-pass factor at radii ``r`` (Fourier pixels), 0.5 at ``cut``."""
    if edge_width <= 0:
        return (r <= cut).to(r.dtype)
    lo = max(0.0, cut - edge_width / 2)
    hi = cut + edge_width / 2
    width = hi - lo
    t = ((r - lo) / width).clamp(0.0, 1.0)
    return 0.5 + 0.5 * torch.cos(math.pi * t)


def _check_filter_args(
    resolution_angstrom: float, pixel_size_angstrom: float, edge_width_px: float
) -> None:
    if not resolution_angstrom > 0:
        raise ValueError(f"resolution must be > 0 Å, got {resolution_angstrom}")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel size must be > 0 Å, got {pixel_size_angstrom}")
    if edge_width_px < 0:
        raise ValueError(f"edge width must be >= 0 Fourier pixels, got {edge_width_px}")


def _apply_profile(x: torch.Tensor, ndim: int, profile: torch.Tensor) -> torch.Tensor:
    shape = tuple(int(s) for s in x.shape[-ndim:])
    dims = tuple(range(-ndim, 0))
    return torch.fft.irfftn(torch.fft.rfftn(x, dim=dims) * profile, s=shape, dim=dims)


def lowpass(
    x: torch.Tensor,
    resolution_angstrom: float,
    *,
    pixel_size_angstrom: float,
    edge_width_px: float = 2.0,
    ndim: int,
) -> torch.Tensor:
    """Low-pass filter real images / volumes with a raised-cosine edge (RELION style).

    Parameters
    ----------
    x
        ``(..., h, w)`` (``ndim=2``) or ``(..., d, h, w)`` (``ndim=3``) real array.
    resolution_angstrom
        Cut-off resolution in Å; the filter is 0.5 at shell ``c = n * pixel_size / resolution``.
    pixel_size_angstrom
        Pixel size in Å.
    edge_width_px
        Width of the raised cosine in Fourier pixels: shells ``<= c - w/2`` are kept untouched,
        shells ``>= c + w/2`` removed. 0 gives a hard cut (keep ``r <= c``).
    ndim
        2 or 3.

    Returns
    -------
    torch.Tensor
        Filtered array, same shape, dtype and device as ``x``.

    """
    shape = _check_real_input(x, ndim)
    _check_filter_args(resolution_angstrom, pixel_size_angstrom, edge_width_px)
    cut = max(shape) * pixel_size_angstrom / resolution_angstrom
    r = shell_radius_grid(shape, device=x.device, dtype=x.dtype)
    return _apply_profile(x, ndim, _lowpass_profile(r, cut, edge_width_px))


def highpass(
    x: torch.Tensor,
    resolution_angstrom: float,
    *,
    pixel_size_angstrom: float,
    edge_width_px: float = 2.0,
    ndim: int,
) -> torch.Tensor:
    """High-pass filter (remove details coarser than ``resolution_angstrom``); see :func:`lowpass`.

    The factor is ``1 - lowpass factor``: 0 for shells ``<= c - w/2`` (including the DC term, so
    the mean is removed), 1 for shells ``>= c + w/2``.
    """
    shape = _check_real_input(x, ndim)
    _check_filter_args(resolution_angstrom, pixel_size_angstrom, edge_width_px)
    cut = max(shape) * pixel_size_angstrom / resolution_angstrom
    r = shell_radius_grid(shape, device=x.device, dtype=x.dtype)
    return _apply_profile(x, ndim, 1.0 - _lowpass_profile(r, cut, edge_width_px))


def bandpass(
    x: torch.Tensor,
    *,
    highpass_angstrom: float,
    lowpass_angstrom: float,
    pixel_size_angstrom: float,
    edge_width_px: float = 2.0,
    ndim: int,
) -> torch.Tensor:
    """Keep details between ``highpass_angstrom`` (coarse end) and ``lowpass_angstrom`` (fine end).

    The factor is the product of the :func:`highpass` and :func:`lowpass` factors, each with a
    raised-cosine edge of ``edge_width_px`` Fourier pixels. ``highpass_angstrom`` must be larger
    than ``lowpass_angstrom`` (e.g. 300 Å and 20 Å).
    """
    shape = _check_real_input(x, ndim)
    _check_filter_args(highpass_angstrom, pixel_size_angstrom, edge_width_px)
    _check_filter_args(lowpass_angstrom, pixel_size_angstrom, edge_width_px)
    if not highpass_angstrom > lowpass_angstrom:
        raise ValueError(
            f"bandpass needs highpass_angstrom > lowpass_angstrom (coarse > fine), got "
            f"{highpass_angstrom} Å and {lowpass_angstrom} Å"
        )
    n = max(shape)
    r = shell_radius_grid(shape, device=x.device, dtype=x.dtype)
    low = _lowpass_profile(r, n * pixel_size_angstrom / lowpass_angstrom, edge_width_px)
    high = 1.0 - _lowpass_profile(r, n * pixel_size_angstrom / highpass_angstrom, edge_width_px)
    return _apply_profile(x, ndim, low * high)
