"""Fourier-space basics: frequency grids, centring, sub-pixel shifts, Fourier crop / pad.

Conventions: ``rfftn`` over the last 2 (images) or 3 (volumes) axes with the DC at index 0 and
the half axis last (x). Real-space centre at pixel ``n // 2``. Frequencies are in cycles per pixel,
or in 1/Å when a pixel size is given. Filters, radial averages and spectra live in
:mod:`cryospa.core.filters`.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "centre_to_origin",
    "fast_fft_size",
    "fourier_crop",
    "fourier_pad",
    "fourier_rescale",
    "frequency_grid_2d",
    "frequency_grid_3d",
    "origin_to_centre",
    "phase_shift_2d",
    "radius_grid_2d",
    "radius_grid_3d",
    "shift_images",
]


def frequency_grid_2d(
    shape: tuple[int, int],
    pixel_size_angstrom: float = 1.0,
    *,
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial frequencies (ky, kx) of the (r)fft grid of an ``(h, w)`` image.

    Returns two ``(h, w // 2 + 1)`` (rfft) or ``(h, w)`` tensors in 1/Å (cycles per pixel when
    ``pixel_size_angstrom`` is 1).
    """
    h, w = shape
    ky = torch.fft.fftfreq(h, d=pixel_size_angstrom, device=device, dtype=dtype)
    if rfft:
        kx = torch.fft.rfftfreq(w, d=pixel_size_angstrom, device=device, dtype=dtype)
    else:
        kx = torch.fft.fftfreq(w, d=pixel_size_angstrom, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ky, kx, indexing="ij")
    return gy, gx


def frequency_grid_3d(
    shape: tuple[int, int, int],
    pixel_size_angstrom: float = 1.0,
    *,
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spatial frequencies (kz, ky, kx) of the (r)fft grid of a ``(d, h, w)`` volume."""
    d, h, w = shape
    kz = torch.fft.fftfreq(d, d=pixel_size_angstrom, device=device, dtype=dtype)
    ky = torch.fft.fftfreq(h, d=pixel_size_angstrom, device=device, dtype=dtype)
    if rfft:
        kx = torch.fft.rfftfreq(w, d=pixel_size_angstrom, device=device, dtype=dtype)
    else:
        kx = torch.fft.fftfreq(w, d=pixel_size_angstrom, device=device, dtype=dtype)
    gz, gy, gx = torch.meshgrid(kz, ky, kx, indexing="ij")
    return gz, gy, gx


def radius_grid_2d(
    shape: tuple[int, int],
    *,
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fourier radius in pixels (Fourier index units, ``k * n``) of an ``(h, w)`` (r)fft grid.

    For a square image the value is the shell index ``|k| * n``; for a non-square one each axis
    is scaled by its own size (radius relative to the x axis size ``w``).
    """
    ky, kx = frequency_grid_2d(shape, rfft=rfft, device=device, dtype=dtype)
    return torch.sqrt((ky * shape[0]) ** 2 + (kx * shape[1]) ** 2)


def radius_grid_3d(
    shape: tuple[int, int, int],
    *,
    rfft: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Fourier radius in pixels (``|k| * n``) of a ``(d, h, w)`` (r)fft grid."""
    kz, ky, kx = frequency_grid_3d(shape, rfft=rfft, device=device, dtype=dtype)
    return torch.sqrt((kz * shape[0]) ** 2 + (ky * shape[1]) ** 2 + (kx * shape[2]) ** 2)


def centre_to_origin(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Roll the last ``ndim`` axes so pixel ``n // 2`` moves to index 0 (before an FFT)."""
    dims = tuple(range(-ndim, 0))
    shifts = tuple(-(x.shape[d] // 2) for d in dims)
    return torch.roll(x, shifts=shifts, dims=dims)


def origin_to_centre(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """Inverse of :func:`centre_to_origin` (after an inverse FFT)."""
    dims = tuple(range(-ndim, 0))
    shifts = tuple(x.shape[d] // 2 for d in dims)
    return torch.roll(x, shifts=shifts, dims=dims)


def phase_shift_2d(
    shape: tuple[int, int],
    shifts_px: torch.Tensor,
    *,
    rfft: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Phase ramps that translate images by ``shifts_px``.

    Parameters
    ----------
    shape
        ``(h, w)`` real-space image size.
    shifts_px
        ``(..., 2)`` shifts (dx, dy) in pixels; positive moves content towards larger x / y.

    Returns
    -------
    torch.Tensor
        ``(..., h, w // 2 + 1)`` complex factors ``exp(-2 pi i (kx dx + ky dy))``.
    """
    real_dtype = shifts_px.dtype if shifts_px.is_floating_point() else torch.float32
    dev = device or shifts_px.device
    h, w = shape
    ky = torch.fft.fftfreq(h, device=dev, dtype=real_dtype)
    kx = (torch.fft.rfftfreq if rfft else torch.fft.fftfreq)(w, device=dev, dtype=real_dtype)
    # separable: exp(-2 pi i ky dy) (column) times exp(-2 pi i kx dx) (row)
    phase_y = -2.0 * math.pi * ky * shifts_px[..., 1, None].to(dev, real_dtype)
    phase_x = -2.0 * math.pi * kx * shifts_px[..., 0, None].to(dev, real_dtype)
    ramp_y = torch.polar(torch.ones_like(phase_y), phase_y)
    ramp_x = torch.polar(torch.ones_like(phase_x), phase_x)
    return ramp_y[..., :, None] * ramp_x[..., None, :]


def shift_images(images: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Translate ``(..., h, w)`` real images by ``(..., 2)`` sub-pixel shifts (dx, dy) in pixels.

    Periodic boundary (the content wraps around), exact for band-limited images.
    """
    h, w = images.shape[-2:]
    ramp = phase_shift_2d((h, w), shifts_px.to(images.dtype), device=images.device)
    return torch.fft.irfft2(torch.fft.rfft2(images) * ramp, s=(h, w))


def _resize_fft_axis(f: torch.Tensor, axis: int, new: int) -> torch.Tensor:
    """Crop or zero-pad a full FFT (DC at index 0) along one axis to ``new`` samples.

    The Nyquist term of an even size is handled as in ``scipy.signal.resample``: cropping to
    an even size sums the ``+new/2`` and ``-new/2`` components into the new Nyquist bin; padding
    from an even size splits the old Nyquist term equally between ``+old/2`` and ``-old/2``.
    """
    old = f.shape[axis]
    if new == old:
        return f
    device = f.device
    if new < old:
        freqs = torch.fft.fftfreq(new, d=1.0 / new, device=device).round().long()  # (new,)
        out = f.index_select(axis, freqs % old)
        if new % 2 == 0:
            nyq = new // 2  # index of frequency -new/2 in the new array
            extra = f.narrow(axis, nyq, 1)  # frequency +new/2 of the source
            out.narrow(axis, nyq, 1).add_(extra)
        return out
    shape = list(f.shape)
    shape[axis] = new
    out = torch.zeros(shape, dtype=f.dtype, device=device)
    freqs = torch.fft.fftfreq(old, d=1.0 / old, device=device).round().long()
    out.index_copy_(axis, freqs % new, f)
    if old % 2 == 0:
        half = f.narrow(axis, old // 2, 1) * 0.5  # the old Nyquist term (frequency -old/2)
        out.narrow(axis, new - old // 2, 1).copy_(half)
        out.narrow(axis, old // 2, 1).copy_(half)
    return out


def fourier_crop(x: torch.Tensor, new_shape: tuple[int, ...]) -> torch.Tensor:
    """Down-sample real images / volumes by cropping their Fourier transform.

    Parameters
    ----------
    x
        ``(..., *shape)`` real array; the last ``len(new_shape)`` axes are resampled.
    new_shape
        Target size per axis (each <= the current size).

    Returns
    -------
    torch.Tensor
        ``(..., *new_shape)``, scaled so that the mean value (and hence densities) are kept.
        The pixel size grows by ``old / new``.
    """
    return fourier_rescale(x, new_shape)


def fourier_pad(x: torch.Tensor, new_shape: tuple[int, ...]) -> torch.Tensor:
    """Up-sample real images / volumes by zero-padding their Fourier transform (sinc)."""
    return fourier_rescale(x, new_shape)


def fourier_rescale(x: torch.Tensor, new_shape: tuple[int, ...]) -> torch.Tensor:
    """Resample the last ``len(new_shape)`` axes to ``new_shape`` in Fourier space (crop or pad).

    Mean values are preserved. Even-size Nyquist terms are summed when cropping and split when
    padding, so that padding then cropping back is the identity.
    """
    ndim = len(new_shape)
    if ndim < 1 or x.ndim < ndim:
        raise ValueError(f"cannot rescale an array of shape {tuple(x.shape)} to {new_shape}")
    dims = tuple(range(-ndim, 0))
    old_shape = tuple(x.shape[d] for d in dims)
    if old_shape == tuple(new_shape):
        return x.clone()
    f = torch.fft.fftn(centre_to_origin(x, ndim), dim=dims)
    for d, n in zip(dims, new_shape, strict=True):
        f = _resize_fft_axis(f, d, n)
    out = torch.fft.ifftn(f, dim=dims).real
    scale = math.prod(new_shape) / math.prod(old_shape)
    return origin_to_centre(out * scale, ndim).to(x.dtype)


def fast_fft_size(n: int) -> int:
    """The smallest even ``m >= n`` whose prime factors are 2, 3, 5 and 7 (fast FFTs)."""
    m = max(int(n), 2)
    while True:
        if m % 2 == 0:
            k = m
            for p in (2, 3, 5, 7):
                while k % p == 0:
                    k //= p
            if k == 1:
                return m
        m += 1
