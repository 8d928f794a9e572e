"""Tests of cryospa.core.bfactor: Guinier plot, B-factor fit, sharpening / blurring."""

from __future__ import annotations

import math

import pytest
import torch

from cryospa.core.bfactor import apply_bfactor, fit_bfactor, guinier
from cryospa.core.filters import radial_average

DTYPES = [torch.float32, torch.float64]


def _flat_amplitude_volume(n: int, dtype, device, seed=0) -> torch.Tensor:
    """Real volume whose Fourier amplitudes are all 1 (random phases)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, n, n), generator=g, dtype=torch.float64)
    f = torch.fft.rfftn(noise)
    return torch.fft.irfftn(f / f.abs(), s=(n, n, n)).to(device=device, dtype=dtype)


def _white_noise(n: int, dtype, device, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, n, n), generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [64, 65])
@pytest.mark.parametrize("b0", [30.0, 100.0, 200.0])
@pytest.mark.parametrize("kind", ["flat", "noise"])
def test_known_bfactor_is_recovered(device, dtype, n, b0, kind):
    pixel = 1.0
    make = _flat_amplitude_volume if kind == "flat" else _white_noise
    vol = make(n, dtype, device, seed=1)
    blurred = apply_bfactor(vol, b0, pixel_size_angstrom=pixel)
    k2, ln_f = guinier(blurred, pixel_size_angstrom=pixel)
    assert k2.shape == (n // 2 + 1,) and ln_f.shape == (n // 2 + 1,)
    assert ln_f.dtype == dtype and ln_f.device == vol.device
    b, intercept, corr = fit_bfactor(
        k2, ln_f, min_resolution_angstrom=10.0, max_resolution_angstrom=3.0
    )
    assert b == pytest.approx(b0, abs=5.0)
    assert corr > 0.99
    # the intercept is the log mean amplitude of the unblurred map
    expected_intercept = 0.0 if kind == "flat" else math.log(math.sqrt(math.pi * n**3) / 2)
    assert intercept == pytest.approx(expected_intercept, abs=0.05)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [32, 33])
@pytest.mark.parametrize("ndim", [2, 3])
def test_sharpen_then_blur_is_identity(device, dtype, n, ndim):
    g = torch.Generator().manual_seed(2)
    x = torch.randn((2, *(n,) * ndim), generator=g, dtype=torch.float64).to(device, dtype)
    b = 20.0 if dtype == torch.float32 else 60.0
    sharp = apply_bfactor(x, -b, pixel_size_angstrom=1.1, ndim=ndim)
    assert sharp.shape == x.shape and sharp.dtype == dtype and sharp.device == x.device
    back = apply_bfactor(sharp, b, pixel_size_angstrom=1.1, ndim=ndim)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(back, x, atol=tol, rtol=0)
    torch.testing.assert_close(
        apply_bfactor(x, 0.0, pixel_size_angstrom=1.1, ndim=ndim), x, atol=tol, rtol=0
    )
    # sharpening raises the high frequencies
    assert float(sharp.std()) > float(x.std())


def test_apply_bfactor_matches_analytic_factor(device):
    n, pixel, b = 16, 2.0, 80.0
    x = torch.zeros(n, n, n, dtype=torch.float64, device=device)
    x[0, 0, 0] = 1.0  # transform = 1 everywhere
    f = torch.fft.rfftn(apply_bfactor(x, b, pixel_size_angstrom=pixel))
    # coefficient (kz, ky, kx) = (0, 0, 3) is at k = 3 / (n * pixel) 1/Å
    k = 3 / (n * pixel)
    assert float(f[0, 0, 3].real) == pytest.approx(math.exp(-b * k * k / 4), rel=1e-12)


@pytest.mark.parametrize("n", [32, 33])
def test_guinier_of_profile_equals_guinier_of_volume(device, n):
    vol = _white_noise(n, torch.float64, device, seed=3)
    k2, ln_f = guinier(vol, pixel_size_angstrom=1.5)
    profile = radial_average(torch.fft.rfftn(vol).abs(), ndim=3)
    k2b, ln_fb = guinier(profile, pixel_size_angstrom=1.5, box_size=n)
    torch.testing.assert_close(k2b, k2)
    torch.testing.assert_close(ln_fb, ln_f)
    s = torch.arange(n // 2 + 1, dtype=torch.float64, device=device)
    torch.testing.assert_close(k2, (s / (n * 1.5)) ** 2)


def test_fit_bfactor_exact_line_and_errors():
    x = torch.linspace(0, 0.25, 40, dtype=torch.float64)
    y = 3.0 - (150.0 / 4) * x
    b, intercept, corr = fit_bfactor(x, y, max_resolution_angstrom=2.5)
    assert b == pytest.approx(150.0, abs=1e-9)
    assert intercept == pytest.approx(3.0, abs=1e-9)
    assert corr == pytest.approx(1.0, abs=1e-12)
    y_bad = y.clone()
    y_bad[30] = -math.inf  # a zero amplitude is skipped
    assert fit_bfactor(x, y_bad, max_resolution_angstrom=2.5)[0] == pytest.approx(150.0)
    with pytest.raises(ValueError, match="fewer than 2 Guinier points"):
        fit_bfactor(x[:2], y[:2], max_resolution_angstrom=9.0)
    with pytest.raises(ValueError, match="min_resolution_angstrom > max_resolution_angstrom"):
        fit_bfactor(x, y, min_resolution_angstrom=3.0, max_resolution_angstrom=5.0)
    with pytest.raises(ValueError, match="equal-length"):
        fit_bfactor(x, y[:-1], max_resolution_angstrom=3.0)


def test_guinier_and_apply_errors(device):
    with pytest.raises(ValueError, match="cubic"):
        guinier(torch.zeros(8, 8, 6, device=device), pixel_size_angstrom=1.0)
    with pytest.raises(ValueError, match="amplitude profile or"):
        guinier(torch.zeros(8, 8, device=device), pixel_size_angstrom=1.0)
    with pytest.raises(ValueError, match="box size 10 has 6 shells"):
        guinier(torch.ones(5, device=device), pixel_size_angstrom=1.0, box_size=10)
    with pytest.raises(ValueError, match="pixel size"):
        apply_bfactor(torch.zeros(8, 8, 8, device=device), 10.0, pixel_size_angstrom=0.0)
