"""Tests of cryospa.core.filters: radial averages, spectra, raised-cosine filters, 1D filtering."""

from __future__ import annotations

import math

import pytest
import torch

from cryospa.core.filters import (
    bandpass,
    filter_by_1d,
    highpass,
    lowpass,
    power_spectrum_1d,
    radial_average,
    shell_radius_grid,
    whiten,
)

DTYPES = [torch.float32, torch.float64]


def _tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-11


def _full_fft_radial_average(values_full: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Brute force: average a full-FFT-grid quantity over shells round(|k| n), n = max(shape)."""
    n = max(shape)
    freqs = [torch.fft.fftfreq(s, dtype=torch.float64) for s in shape]
    grids = torch.meshgrid(*freqs, indexing="ij")
    r = torch.sqrt(sum(g**2 for g in grids)) * n
    idx = torch.floor(r + 0.5).long()
    out = [values_full[..., idx == s].mean(-1) for s in range(n // 2 + 1)]
    return torch.stack(out, -1)


def _random(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [16, 17])
@pytest.mark.parametrize("ndim", [2, 3])
def test_radial_average_of_constant_is_constant(device, dtype, n, ndim):
    rfft_shape = (n,) * (ndim - 1) + (n // 2 + 1,)
    values = torch.full((2, *rfft_shape), 3.25, dtype=dtype, device=device)
    avg = radial_average(values, ndim=ndim)
    assert avg.shape == (2, n // 2 + 1)
    assert avg.dtype == dtype and avg.device.type == torch.device(device).type
    torch.testing.assert_close(avg, torch.full_like(avg, 3.25), rtol=_tol(dtype), atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape", [(16, 16), (15, 15), (12, 12, 12), (13, 13, 13), (12, 17), (9, 10, 8)]
)
def test_power_spectrum_equals_full_fft_brute_force(device, dtype, shape):
    ndim = len(shape)
    x = _random((3, *shape), dtype, device)
    got = power_spectrum_1d(x, ndim=ndim)
    full = torch.fft.fftn(x.double().cpu(), dim=tuple(range(-ndim, 0)))
    expected = _full_fft_radial_average(full.abs() ** 2 / math.prod(shape), shape)
    assert got.shape == (3, max(shape) // 2 + 1)
    torch.testing.assert_close(got.double().cpu(), expected, rtol=_tol(dtype) * 10, atol=0)


@pytest.mark.parametrize("shape", [(12, 17), (9, 10, 8)])
def test_radial_average_non_square_needs_shape(device, shape):
    ndim = len(shape)
    rfft_shape = (*shape[:-1], shape[-1] // 2 + 1)
    values = torch.ones(rfft_shape, device=device)
    with pytest.raises(ValueError, match="pass shape"):
        radial_average(values, ndim=ndim)
    assert radial_average(values, ndim=ndim, shape=shape).shape == (max(shape) // 2 + 1,)
    with pytest.raises(ValueError, match="does not match"):
        radial_average(values, ndim=ndim, shape=(*shape[:-1], shape[-1] + 2))


def test_radial_average_rejects_complex_and_bad_ndim(device):
    with pytest.raises(ValueError, match="real floating-point"):
        radial_average(torch.ones(8, 5, dtype=torch.complex64, device=device), ndim=2)
    with pytest.raises(ValueError, match="ndim must be 2"):
        radial_average(torch.ones(8, 5, device=device), ndim=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [64, 65])
def test_power_spectrum_of_white_noise_is_its_variance(device, dtype, n):
    sigma = 2.5
    x = sigma * _random((4, n, n), dtype, device, seed=1)
    spec = power_spectrum_1d(x, ndim=2).mean(0)  # (n_shells,)
    # shells 4.. hold >= 25 coefficients per image (x4 images); relative sd ~ 1/sqrt(count)
    shells = torch.arange(4, n // 2 + 1)
    count = 2 * math.pi * shells.double() * 4
    rel = (spec[4:].double().cpu() / sigma**2 - 1).abs()
    assert torch.all(rel < 5 / torch.sqrt(count)), rel.max()


def _transfer(x, y, ndim):
    """Ratio of the Fourier transforms of output y and input x on the rfft grid."""
    dims = tuple(range(-ndim, 0))
    return torch.fft.rfftn(y, dim=dims) / torch.fft.rfftn(x, dim=dims)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [32, 33])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("edge", [2.0, 5.0])
def test_lowpass_keeps_below_and_kills_beyond(device, dtype, n, ndim, edge):
    shape = (n,) * ndim
    x = _random((2, *shape), dtype, device, seed=3)
    pixel, res = 1.5, 6.0
    y = lowpass(x, res, pixel_size_angstrom=pixel, edge_width_px=edge, ndim=ndim)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    cut = n * pixel / res
    r = shell_radius_grid(shape, device=device, dtype=torch.float64)
    t = _transfer(x.double(), y.double(), ndim)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    below = r <= cut - edge / 2
    beyond = r >= cut + edge / 2
    assert (t[..., below] - 1).abs().max() < tol
    assert torch.fft.rfftn(y.double(), dim=tuple(range(-ndim, 0)))[..., beyond].abs().max() < (
        tol * torch.fft.rfftn(x.double(), dim=tuple(range(-ndim, 0))).abs().max()
    )
    # raised cosine in between, 0.5 at the cut
    mid = (r > cut - edge / 2) & (r < cut + edge / 2)
    expected = 0.5 + 0.5 * torch.cos(math.pi * (r[mid] - cut + edge / 2) / edge)
    torch.testing.assert_close(
        t[..., mid].real, expected.expand_as(t[..., mid].real), atol=tol, rtol=0
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [24, 25])
def test_lowpass_plus_highpass_is_identity_and_bandpass_is_product(device, dtype, n):
    x = _random((3, n, n), dtype, device, seed=4)
    kw = dict(pixel_size_angstrom=2.0, edge_width_px=3.0, ndim=2)
    lo = lowpass(x, 8.0, **kw)
    hi = highpass(x, 8.0, **kw)
    torch.testing.assert_close(lo + hi, x, atol=20 * _tol(dtype), rtol=0)
    # the high-pass removes the mean
    assert hi.mean(dim=(-2, -1)).abs().max() < 20 * _tol(dtype)
    band = bandpass(x, highpass_angstrom=20.0, lowpass_angstrom=8.0, **kw)
    torch.testing.assert_close(
        band, highpass(lowpass(x, 8.0, **kw), 20.0, **kw), atol=20 * _tol(dtype), rtol=0
    )


def test_lowpass_hard_edge_and_errors(device):
    n = 20
    x = _random((n, n), torch.float64, device)
    y = lowpass(x, 4.0, pixel_size_angstrom=1.0, edge_width_px=0, ndim=2)
    r = shell_radius_grid((n, n), device=device, dtype=torch.float64)
    t = _transfer(x, y, 2)
    assert (t[r <= 5.0] - 1).abs().max() < 1e-10
    assert torch.fft.rfft2(y)[r > 5.0].abs().max() < 1e-9
    with pytest.raises(ValueError, match="resolution must be > 0"):
        lowpass(x, 0.0, pixel_size_angstrom=1.0, ndim=2)
    with pytest.raises(ValueError, match="pixel size"):
        lowpass(x, 4.0, pixel_size_angstrom=-1.0, ndim=2)
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        lowpass(x, 4.0, pixel_size_angstrom=1.0, ndim=3)
    with pytest.raises(ValueError, match="highpass_angstrom > lowpass_angstrom"):
        bandpass(x, highpass_angstrom=5.0, lowpass_angstrom=10.0, pixel_size_angstrom=1.0, ndim=2)
    with pytest.raises(ValueError, match="real floating-point"):
        lowpass(x.to(torch.complex128), 4.0, pixel_size_angstrom=1.0, ndim=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [16, 17])
@pytest.mark.parametrize("ndim", [2, 3])
def test_filter_by_1d_interpolates_linearly_between_shells(device, dtype, n, ndim):
    shape = (n,) * ndim
    x = _random((2, *shape), dtype, device, seed=5)
    n_shells = n // 2 + 1
    curve = torch.arange(n_shells, dtype=dtype, device=device) * 0.1 + 1.0  # 1 + 0.1 s
    y = filter_by_1d(x, curve, ndim=ndim)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    r = shell_radius_grid(shape, device=device, dtype=torch.float64)
    expected = 1.0 + 0.1 * r.clamp(max=n_shells - 1)
    t = _transfer(x.double(), y.double(), ndim)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    inside = r <= n // 2 - 0.5  # away from the Nyquist planes made Hermitian by irfftn
    torch.testing.assert_close(
        t[..., inside].real, expected[inside].expand(2, -1), atol=tol, rtol=0
    )


def test_filter_by_1d_constant_and_batched_curves(device):
    x = _random((3, 12, 12), torch.float64, device, seed=6)
    torch.testing.assert_close(filter_by_1d(x, torch.full((7,), 2.0, device=device), ndim=2), 2 * x)
    curves = torch.tensor([1.0, 0.0, -3.0], dtype=torch.float64, device=device)[:, None].expand(
        3, 7
    )
    y = filter_by_1d(x, curves, ndim=2)
    torch.testing.assert_close(
        y, x * torch.tensor([1.0, 0.0, -3.0], device=device)[:, None, None], atol=1e-12, rtol=0
    )
    with pytest.raises(ValueError, match="n_shells"):
        filter_by_1d(x, torch.ones((), device=device), ndim=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [64, 63])
def test_whiten_white_and_coloured_noise(device, dtype, n):
    x = 3.0 * _random((8, n, n), dtype, device, seed=7)
    w = whiten(x)
    assert w.shape == x.shape and w.dtype == dtype and w.device == x.device
    assert abs(float(w.double().var()) - 1.0) < 0.02
    # coloured noise with a known spectrum comes out flat
    n_shells = n // 2 + 1
    s = torch.arange(n_shells, dtype=torch.float64, device=device)
    amplitude = torch.exp(-s / 10.0) + 0.05
    coloured = filter_by_1d(_random((8, n, n), dtype, device, seed=8), amplitude.to(dtype), ndim=2)
    flat = whiten(coloured, noise_spectrum=(amplitude**2).to(dtype))
    spec = power_spectrum_1d(flat.double(), ndim=2).mean(0)
    # ~pi s independent coefficients per shell and image; 5 sigma statistical bound
    bound = 5 / torch.sqrt(math.pi * s[2:] * 8)
    assert torch.all((spec[2:] - 1).abs() < bound), (spec[2:] - 1).abs().max()
