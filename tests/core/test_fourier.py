"""Tests of cryospa.core.fourier: frequency grids, centring, sub-pixel shifts, crop / pad."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryospa.core.fourier import (
    centre_to_origin,
    fourier_crop,
    fourier_pad,
    frequency_grid_2d,
    frequency_grid_3d,
    origin_to_centre,
    phase_shift_2d,
    radius_grid_2d,
    radius_grid_3d,
    shift_images,
)

DTYPES = [torch.float32, torch.float64]


def _tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-12


def _gaussian_2d(shape, centre_yx, sigma, dtype, device):
    y = torch.arange(shape[0], dtype=torch.float64, device=device)[:, None]
    x = torch.arange(shape[1], dtype=torch.float64, device=device)[None, :]
    r2 = (y - centre_yx[0]) ** 2 + (x - centre_yx[1]) ** 2
    return torch.exp(-r2 / (2 * sigma**2)).to(dtype)


def _bandlimited(shape, dtype, device, seed=0):
    """Random real array without its Nyquist component(s) (even sizes) on any axis."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    f = torch.fft.fftn(x)
    for axis, n in enumerate(shape):
        if n % 2 == 0:
            index = [slice(None)] * len(shape)
            index[axis] = n // 2
            f[tuple(index)] = 0
    return torch.fft.ifftn(f).real.to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8, 8), (7, 9), (10, 5)])
@pytest.mark.parametrize("pixel", [1.0, 1.7])
def test_frequency_grid_2d_matches_numpy(device, dtype, shape, pixel):
    ky, kx = frequency_grid_2d(shape, pixel, device=device, dtype=dtype)
    assert ky.shape == (shape[0], shape[1] // 2 + 1) and ky.dtype == dtype
    assert ky.device.type == torch.device(device).type
    np.testing.assert_allclose(ky[:, 0].cpu().numpy(), np.fft.fftfreq(shape[0], d=pixel), rtol=1e-6)
    np.testing.assert_allclose(kx[0].cpu().numpy(), np.fft.rfftfreq(shape[1], d=pixel), rtol=1e-6)
    _, kx_full = frequency_grid_2d(shape, pixel, rfft=False, device=device, dtype=dtype)
    assert kx_full.shape == shape
    np.testing.assert_allclose(
        kx_full[0].cpu().numpy(), np.fft.fftfreq(shape[1], d=pixel), rtol=1e-6
    )


@pytest.mark.parametrize("shape", [(6, 8, 10), (5, 7, 9)])
def test_frequency_grid_3d_and_radius_grids(device, shape):
    kz, _, kx = frequency_grid_3d(shape, 2.0, device=device, dtype=torch.float64)
    assert kz.shape == (shape[0], shape[1], shape[2] // 2 + 1)
    np.testing.assert_allclose(kz[:, 0, 0].cpu().numpy(), np.fft.fftfreq(shape[0], d=2.0))
    np.testing.assert_allclose(kx[0, 0].cpu().numpy(), np.fft.rfftfreq(shape[2], d=2.0))
    r = radius_grid_3d(shape, device=device, dtype=torch.float64)
    # Fourier index radius: sqrt(iz^2 + iy^2 + ix^2) with signed indices
    iz = np.fft.fftfreq(shape[0]) * shape[0]
    iy = np.fft.fftfreq(shape[1]) * shape[1]
    ix = np.fft.rfftfreq(shape[2]) * shape[2]
    expected = np.sqrt(iz[:, None, None] ** 2 + iy[None, :, None] ** 2 + ix[None, None, :] ** 2)
    np.testing.assert_allclose(r.cpu().numpy(), expected, atol=1e-12)
    r2 = radius_grid_2d((8, 8), device=device, dtype=torch.float64)
    assert float(r2[0, 4]) == pytest.approx(4.0) and float(r2[3, 4]) == pytest.approx(5.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [32, 33])
def test_centring_round_trip(device, dtype, n):
    x = torch.zeros(2, n, n, dtype=dtype, device=device)
    x[:, n // 2, n // 2] = 1.0
    moved = centre_to_origin(x, 2)
    assert float(moved[0, 0, 0]) == 1.0
    torch.testing.assert_close(origin_to_centre(moved, 2), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(32, 32), (33, 31)])
def test_integer_shift_is_a_roll(device, dtype, shape):
    g = torch.Generator().manual_seed(1)
    x = torch.randn((3, *shape), generator=g, dtype=torch.float64).to(device, dtype)
    shifted = shift_images(x, torch.tensor([3.0, -2.0], dtype=dtype, device=device))
    assert shifted.shape == x.shape and shifted.dtype == dtype and shifted.device == x.device
    torch.testing.assert_close(
        shifted, torch.roll(x, shifts=(-2, 3), dims=(-2, -1)), atol=20 * _tol(dtype), rtol=0
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(48, 48), (47, 49)])
def test_subpixel_shift_is_recovered(device, dtype, shape):
    """A Gaussian blob shifted by (dx, dy) equals the analytic blob at the new centre."""
    centre = (shape[0] // 2, shape[1] // 2)
    sigma = 3.0
    blobs = torch.stack([_gaussian_2d(shape, centre, sigma, dtype, device)] * 2)
    shifts = torch.tensor([[1.3, -0.7], [-2.45, 0.35]], dtype=dtype, device=device)  # (dx, dy)
    moved = shift_images(blobs, shifts)
    for i in range(2):
        dx, dy = (float(v) for v in shifts[i])
        expected = _gaussian_2d(shape, (centre[0] + dy, centre[1] + dx), sigma, dtype, device)
        torch.testing.assert_close(moved[i], expected, atol=1e-5, rtol=0)
        # centroid moved by exactly (dx, dy)
        y = torch.arange(shape[0], dtype=torch.float64, device=device)[:, None]
        x = torch.arange(shape[1], dtype=torch.float64, device=device)[None, :]
        m = moved[i].double()
        cx, cy = float((m * x).sum() / m.sum()), float((m * y).sum() / m.sum())
        assert cx == pytest.approx(centre[1] + dx, abs=1e-3)
        assert cy == pytest.approx(centre[0] + dy, abs=1e-3)
    # round trip
    torch.testing.assert_close(shift_images(moved, -shifts), blobs, atol=1e-5, rtol=0)


def test_phase_shift_shape_and_unit_modulus(device):
    ramps = phase_shift_2d((16, 15), torch.zeros(4, 2, device=device))
    assert ramps.shape == (4, 16, 8) and ramps.is_complex()
    torch.testing.assert_close(ramps.abs(), torch.ones(4, 16, 8, device=device))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 16), (15, 17), (12, 14, 10), (9, 11, 7)])
def test_crop_and_pad_keep_the_mean(device, dtype, shape):
    g = torch.Generator().manual_seed(2)
    x = (torch.randn((2, *shape), generator=g, dtype=torch.float64) + 0.7).to(device, dtype)
    small = tuple(s - 4 for s in shape)
    large = tuple(2 * s for s in shape)
    for new in (small, large):
        y = fourier_crop(x, new) if new == small else fourier_pad(x, new)
        assert y.shape == (2, *new) and y.dtype == dtype and y.device == x.device
        torch.testing.assert_close(
            y.mean(dim=tuple(range(1, y.ndim))),
            x.mean(dim=tuple(range(1, x.ndim))),
            atol=_tol(dtype),
            rtol=_tol(dtype),
        )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 16), (15, 17), (12, 14, 10), (9, 11, 7)])
def test_pad_then_crop_round_trip(device, dtype, shape):
    """Exact for odd sizes; for even sizes exact once the Nyquist component is absent."""
    x = torch.stack([_bandlimited(shape, dtype, device, seed=s) for s in (3, 4)])
    large = tuple(2 * s + 1 for s in shape)
    back = fourier_crop(fourier_pad(x, large), shape)
    torch.testing.assert_close(back, x, atol=20 * _tol(dtype), rtol=0)


@pytest.mark.parametrize("shape", [(16, 16), (15, 17), (12, 14, 10), (9, 11, 7)])
def test_pad_interpolates_through_the_samples(device, shape):
    """Zero-padding by 2 is sinc interpolation: every other pixel is an original sample."""
    x = _bandlimited(shape, torch.float64, device, seed=5)
    up = fourier_pad(x, tuple(2 * s for s in shape))
    # original pixel i sits at 2 * (i - n // 2) + n in the padded grid (centres coincide)
    index = tuple(slice(n - 2 * (n // 2), None, 2) for n in shape)
    torch.testing.assert_close(up[index], x, atol=1e-12, rtol=0)


def test_pad_then_crop_round_trip_keeps_nyquist(device):
    x = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64, device=device)
    back = fourier_crop(fourier_pad(x, (8,)), (4,))
    torch.testing.assert_close(back, x)
    g = torch.Generator().manual_seed(0)
    for shape, big in (((8, 8), (14, 12)), ((7, 8, 6), (10, 11, 12))):
        img = torch.randn(shape, generator=g, dtype=torch.float64).to(device)
        torch.testing.assert_close(fourier_crop(fourier_pad(img, big), shape), img)


def test_rescale_errors():
    with pytest.raises(ValueError, match="cannot rescale"):
        fourier_crop(torch.zeros(4), (2, 2))
    assert float(fourier_pad(torch.ones(3, 3), (5, 5)).mean()) == pytest.approx(1.0, rel=1e-6)
