"""Tests of cryospa.core.fsc against analytic answers and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from cryospa.core.filters import filter_by_1d, power_spectrum_1d, shell_radius_grid
from cryospa.core.fsc import (
    fsc,
    fsc_corrected_for_masking,
    fsc_weighting_curve,
    phase_randomise,
    resolution_at_threshold,
    shell_resolutions_angstrom,
)

DTYPES = [torch.float32, torch.float64]


def _random(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _shell_counts(n: int, ndim: int) -> torch.Tensor:
    """Number of full-FFT coefficients per shell round(|k| n), shells 0 .. n // 2."""
    k = torch.fft.fftfreq(n, dtype=torch.float64) * n
    grids = torch.meshgrid(*([k] * ndim), indexing="ij")
    idx = torch.floor(torch.sqrt(sum(g**2 for g in grids)) + 0.5).long().flatten()
    idx = idx[idx <= n // 2]
    return torch.bincount(idx, minlength=n // 2 + 1).double()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [16, 17])
@pytest.mark.parametrize("ndim", [2, 3])
def test_fsc_of_map_with_itself_is_one(device, dtype, n, ndim):
    x = _random((2, *(n,) * ndim), dtype, device) + 0.3
    curve = fsc(x, x, ndim=ndim)
    assert curve.shape == (2, n // 2 + 1)
    assert curve.dtype == dtype and curve.device == x.device
    torch.testing.assert_close(curve, torch.ones_like(curve), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [32, 33])
@pytest.mark.parametrize("ndim", [2, 3])
def test_fsc_of_independent_noise_is_small(device, dtype, n, ndim):
    a = _random((n,) * ndim, dtype, device, seed=1)
    b = _random((n,) * ndim, dtype, device, seed=2)
    curve = fsc(a, b, ndim=ndim).double().cpu()
    counts = _shell_counts(n, ndim)
    assert torch.all(curve[1:].abs() < 3 / torch.sqrt(counts[1:])), curve


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [48, 49])
def test_fsc_matches_known_spectral_snr(device, dtype, n):
    """Map + noise1 vs map + noise2 with SNR(s) per shell: FSC = SNR / (1 + SNR)."""
    signal = _random((n, n, n), dtype, device, seed=3)  # white, power 1 per shell
    s = torch.arange(n // 2 + 1, dtype=torch.float64, device=device)
    snr = 20.0 * torch.exp(-s / 4.0)  # smooth, from 20 down to ~0
    noise_amp = (1 / torch.sqrt(snr)).to(dtype)
    n1 = filter_by_1d(_random((n, n, n), dtype, device, seed=4), noise_amp, ndim=3)
    n2 = filter_by_1d(_random((n, n, n), dtype, device, seed=5), noise_amp, ndim=3)
    curve = fsc(signal + n1, signal + n2).double().cpu()
    # expected from the realised per-shell powers (removes the interpolation of noise_amp)
    ps = power_spectrum_1d(signal.double(), ndim=3).cpu()
    pn = 0.5 * (power_spectrum_1d(n1.double(), ndim=3) + power_spectrum_1d(n2.double(), ndim=3))
    realised = ps / (ps + pn.cpu())
    analytic = (snr / (1 + snr)).cpu()
    counts = _shell_counts(n, 3)
    for expected in (realised, analytic):
        tol = 4 / torch.sqrt(counts[1:]) + (0.0 if expected is realised else 0.03)
        assert torch.all((curve[1:] - expected[1:]).abs() < tol), (curve - expected).abs().max()


def test_fsc_shape_errors(device):
    a = torch.zeros(64, 64, 60, device=device)
    b = torch.zeros(64, 64, 64, device=device)
    with pytest.raises(ValueError, match=r"cubic volumes of equal size, got \(64, 64, 60\)"):
        fsc(a, b)
    with pytest.raises(ValueError, match="square images"):
        fsc(torch.zeros(8, 10, device=device), torch.zeros(8, 10, device=device), ndim=2)
    with pytest.raises(ValueError, match="ndim"):
        fsc(b, b, ndim=4)


def test_fsc_broadcasts_leading_dims(device):
    a = _random((3, 12, 12), torch.float64, device, seed=6)
    b = _random((12, 12), torch.float64, device, seed=7)
    batched = fsc(a, b, ndim=2)
    assert batched.shape == (3, 7)
    for i in range(3):
        torch.testing.assert_close(batched[i], fsc(a[i], b, ndim=2))


def test_shell_resolutions(device):
    res = shell_resolutions_angstrom(
        5, box_size=8, pixel_size_angstrom=1.5, device=device, dtype=torch.float64
    )
    assert math.isinf(float(res[0]))
    torch.testing.assert_close(
        res[1:], torch.tensor([12.0, 6.0, 4.0, 3.0], dtype=torch.float64, device=device)
    )
    with pytest.raises(ValueError, match="pixel size"):
        shell_resolutions_angstrom(5, box_size=8, pixel_size_angstrom=0.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_resolution_at_threshold_of_synthetic_curves(device, dtype):
    box, pixel = 64, 1.2
    s = torch.arange(box // 2 + 1, dtype=dtype, device=device)
    curve = 1.0 - s / 20.0  # crosses 0.143 at s = 17.14
    res = resolution_at_threshold(curve, box_size=box, pixel_size_angstrom=pixel)
    assert res == pytest.approx(box * pixel / (20 * (1 - 0.143)), rel=1e-5)
    # RELION reports the last shell at or above the threshold (shell 17)
    res_relion = resolution_at_threshold(
        curve, box_size=box, pixel_size_angstrom=pixel, interpolate=False
    )
    assert res_relion == pytest.approx(box * pixel / 17, rel=1e-6)
    assert resolution_at_threshold(
        curve, box_size=box, pixel_size_angstrom=pixel, threshold=0.5
    ) == pytest.approx(box * pixel / 10, rel=1e-5)
    # never crosses: Nyquist
    assert resolution_at_threshold(
        torch.ones_like(curve), box_size=box, pixel_size_angstrom=pixel
    ) == pytest.approx(2 * pixel)
    # below at once: infinitely bad
    assert math.isinf(
        resolution_at_threshold(torch.zeros_like(curve), box_size=box, pixel_size_angstrom=pixel)
    )
    with pytest.raises(ValueError, match="n_shells"):
        resolution_at_threshold(curve[None], box_size=box, pixel_size_angstrom=pixel)
    # a negative DC shell (maps of normalised particles) does not count
    dc_negative = curve.clone()
    dc_negative[0] = -1.0
    assert resolution_at_threshold(
        dc_negative, box_size=box, pixel_size_angstrom=pixel, threshold=0.5
    ) == pytest.approx(box * pixel / 10, rel=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [32, 33])
@pytest.mark.parametrize("ndim", [2, 3])
def test_phase_randomise_keeps_amplitudes_and_decorrelates(device, dtype, n, ndim):
    shape = (n,) * ndim
    x = _random((2, *shape), dtype, device, seed=8)
    pixel, res = 1.0, 4.0  # randomise from radius n / 4
    gen = torch.Generator(device=device).manual_seed(11)
    y = phase_randomise(
        x, beyond_resolution_angstrom=res, pixel_size_angstrom=pixel, ndim=ndim, generator=gen
    )
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    dims = tuple(range(-ndim, 0))
    fx, fy = torch.fft.rfftn(x.double(), dim=dims), torch.fft.rfftn(y.double(), dim=dims)
    torch.testing.assert_close(fy.abs(), fx.abs(), rtol=1e-5, atol=1e-5 * float(fx.abs().max()))
    px, py = power_spectrum_1d(x, ndim=ndim), power_spectrum_1d(y, ndim=ndim)
    torch.testing.assert_close(py, px, rtol=1e-5, atol=1e-6 * float(px.max()))
    r = shell_radius_grid(shape, device=device, dtype=torch.float64)
    cut = n * pixel / res
    torch.testing.assert_close(
        fy[..., r < cut], fx[..., r < cut], rtol=1e-5, atol=1e-5 * float(fx.abs().max())
    )
    curve = fsc(x, y, ndim=ndim).double().cpu()
    shells = torch.arange(n // 2 + 1)
    before = shells < cut - 0.5  # shells entirely below the cut
    beyond = shells >= cut + 0.5  # shells entirely beyond
    torch.testing.assert_close(
        curve[..., before], torch.ones_like(curve[..., before]), atol=1e-5, rtol=0
    )
    counts = _shell_counts(n, ndim)
    assert torch.all(curve[..., beyond].abs() < 4 / torch.sqrt(counts[beyond])), curve
    # reproducible with a seeded generator, different without
    gen2 = torch.Generator(device=device).manual_seed(11)
    y2 = phase_randomise(
        x, beyond_resolution_angstrom=res, pixel_size_angstrom=pixel, ndim=ndim, generator=gen2
    )
    torch.testing.assert_close(y2, y)


def test_phase_randomise_from_shell_resolution_includes_that_shell(device):
    """A resolution computed from shell s randomises radius s (RELION: r^2 >= s^2)."""
    n, pixel, s = 20, 1.3, 5
    res = float(
        shell_resolutions_angstrom(
            n // 2 + 1, box_size=n, pixel_size_angstrom=pixel, dtype=torch.float64
        )[s]
    )
    x = torch.zeros(n, n, n, dtype=torch.float64, device=device)
    x[n // 2, n // 2, n // 2] = 1.0  # flat amplitude 1, linear phase
    y = phase_randomise(
        x,
        beyond_resolution_angstrom=res,
        pixel_size_angstrom=pixel,
        generator=torch.Generator(device=device).manual_seed(0),
    )
    fx, fy = torch.fft.rfftn(x), torch.fft.rfftn(y)
    r = shell_radius_grid((n, n, n), device=device, dtype=torch.float64)
    on_shell = (r - s).abs() < 1e-9
    assert (fx[on_shell] - fy[on_shell]).abs().min() > 1e-6  # all changed (a.s.)
    torch.testing.assert_close(fy[r < s - 1e-9], fx[r < s - 1e-9])


def test_phase_randomise_errors(device):
    with pytest.raises(ValueError, match="> 0"):
        phase_randomise(
            torch.zeros(8, 8, 8, device=device),
            beyond_resolution_angstrom=0.0,
            pixel_size_angstrom=1.0,
        )
    with pytest.raises(ValueError, match="real"):
        phase_randomise(
            torch.zeros(8, 8, device=device),
            beyond_resolution_angstrom=3.0,
            pixel_size_angstrom=1.0,
        )


def test_fsc_corrected_for_masking(device):
    t = torch.tensor([1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4], dtype=torch.float64, device=device)
    nrand = torch.tensor(
        [1.0, 0.9, 0.8, 0.6, 0.5, 0.2, 0.0, 0.5], dtype=torch.float64, device=device
    )
    out = fsc_corrected_for_masking(t, nrand, randomise_from_shell=2)
    expected = t.clone()
    for i in range(4, 8):
        expected[i] = (t[i] - nrand[i]) / (1 - nrand[i])
    torch.testing.assert_close(out, expected)
    assert float(out[6]) == pytest.approx(0.5)  # FSC_n = 0: unchanged
    assert float(out[7]) < 0  # FSC_n > FSC_t gives a negative value, as RELION's postprocess
    out0 = fsc_corrected_for_masking(t, nrand, randomise_from_shell=2, guard_shells=0)
    assert float(out0[2]) == pytest.approx((0.9 - 0.8) / 0.2)
    # batched, and a non-positive DC is set to 1 as RELION does
    tb = torch.stack([t, t]).clone()
    tb[1, 0] = -1.0
    outb = fsc_corrected_for_masking(tb, torch.stack([nrand, nrand]), randomise_from_shell=2)
    torch.testing.assert_close(outb[1], out)
    with pytest.raises(ValueError, match="equal shapes"):
        fsc_corrected_for_masking(t, nrand[:-1], randomise_from_shell=2)


def test_fsc_weighting_curve(device):
    f = torch.tensor([1.0, 0.9, 0.143, 0.05, -0.01, 0.2, 0.3], dtype=torch.float64, device=device)
    w = fsc_weighting_curve(f)
    expected = torch.sqrt(2 * f.clamp(min=0) / (1 + f.clamp(min=0)))
    expected[4:] = 0.0  # from the first shell below 1e-4 on
    torch.testing.assert_close(w, expected)
    assert float(w[0]) == 1.0
