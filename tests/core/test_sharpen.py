"""Detector MTF correction and RELION-style sharpening (core.bfactor.sharpen_map, divide_by_mtf)."""

from __future__ import annotations

import math

import pytest
import torch

from cryospa.core.bfactor import (
    apply_bfactor,
    divide_by_mtf,
    guinier,
    mtf_at,
    sharpen_fourier,
    sharpen_map,
)
from cryospa.core.fsc import ShellGrid
from tests.core.halfmaps import white_map

N = 64
APIX = 1.5

# an analytic MTF (1/Å): a falling cosine, 1 at 0 and 0.45 at the detector's Nyquist (0.5 / 0.75)
MTF_F = torch.linspace(0, 0.5 / 0.75, 41, dtype=torch.float64)
MTF_V = 1 - 0.55 * torch.sin(0.5 * math.pi * MTF_F / MTF_F[-1]) ** 2


def _apply_mtf(x: torch.Tensor) -> torch.Tensor:
    """Multiply by the MTF below Nyquist (what divide_by_mtf undoes)."""
    grid = ShellGrid((N, N, N), device=x.device)
    freq = grid.radius / (N * APIX)
    factor = torch.where(freq < 1 / (2 * APIX), mtf_at(freq, MTF_F, MTF_V), 1.0).to(x.dtype)
    return torch.fft.irfftn(torch.fft.rfftn(x) * factor, s=(N, N, N))


def test_mtf_at_interpolates_and_clamps(device):
    f = torch.tensor([0.0, 0.5, 1.0, 1.5, 3.0, -1.0], dtype=torch.float64, device=device)
    xs = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    ys = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    out = mtf_at(f, xs, ys)
    expected = torch.tensor([1.0, 0.75, 0.5, 0.375, 0.25, 1.0], dtype=torch.float64)
    torch.testing.assert_close(out.cpu(), expected)
    assert out.device.type == torch.device(device).type
    with pytest.raises(ValueError, match="increase strictly"):
        mtf_at(f, torch.tensor([0.0, 1.0, 1.0]), ys)
    with pytest.raises(ValueError, match=">= 2 values"):
        mtf_at(f, xs[:1], ys[:1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_divide_by_mtf_inverts_the_mtf_below_nyquist(device, dtype):
    x = white_map(N, seed=3, dtype=dtype).to(device)
    blurred = _apply_mtf(x)
    back = divide_by_mtf(blurred, MTF_F, MTF_V, pixel_size_angstrom=APIX)
    assert back.dtype == dtype and back.device.type == torch.device(device).type
    # exact below Nyquist; coefficients at and beyond Nyquist are left alone both ways
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(back, x, atol=tol, rtol=0)
    # the blurred map lost the expected power at 3/4 Nyquist: MTF^2 there
    grid = ShellGrid((N, N, N), device=device)
    p0 = grid.mean(torch.fft.rfftn(x).abs() ** 2)
    p1 = grid.mean(torch.fft.rfftn(blurred).abs() ** 2)
    s = 24
    f = torch.tensor([s / (N * APIX)], dtype=torch.float64)
    expected = float(mtf_at(f, MTF_F, MTF_V)[0]) ** 2
    assert float(p1[s] / p0[s]) == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("b0", [60.0, 150.0])
def test_sharpen_map_recovers_a_known_bfactor(device, b0):
    # a flat-spectrum map blurred by B0: the Guinier fit over 10 Å .. Nyquist finds B = 4 slope
    # = -B0 (the B-factor that undoes the blur), and the sharpened map is the original one
    x = white_map(N, seed=1).to(device)
    blurred = apply_bfactor(x, b0, pixel_size_angstrom=APIX)
    out = sharpen_map(blurred, pixel_size_angstrom=APIX, auto_bfactor=True)
    assert out.bfactor_angstrom2 == pytest.approx(-b0, rel=0.02)
    assert out.fit_slope == pytest.approx(out.bfactor_angstrom2 / 4)
    assert out.fit_correlation is not None and out.fit_correlation > 0.95
    # the sharpened Guinier plot is flat (slope ~0) over the fit range (without the Nyquist
    # shell, half of which lies in the zeroed corners)
    k2 = out.k2
    use = (k2 >= 0.01) & torch.isfinite(out.ln_amplitude_sharpened)
    use[-1] = False
    slope = torch.linalg.lstsq(
        torch.stack([k2[use], torch.ones_like(k2[use])], 1).cpu(),
        out.ln_amplitude_sharpened[use, None].cpu(),
    ).solution[0, 0]
    assert abs(float(slope)) * 4 < 0.02 * b0
    # the exact B and no low-pass: the original map comes back, its corners beyond Nyquist
    # zeroed as RELION does
    exact = sharpen_map(blurred, pixel_size_angstrom=APIX, bfactor_angstrom2=-b0)
    grid = ShellGrid((N, N, N), device=device)
    inside = grid.radius <= N / 2
    fx = torch.fft.rfftn(x) * inside
    torch.testing.assert_close(torch.fft.rfftn(exact.volume), fx,
                               atol=1e-9 * float(fx.abs().max()), rtol=0)


def test_sharpen_map_with_mtf_and_relion_normalised_guinier(device):
    b0 = 100.0
    x = white_map(N, seed=2).to(device)
    observed = _apply_mtf(apply_bfactor(x, b0, pixel_size_angstrom=APIX))
    without = sharpen_map(observed, pixel_size_angstrom=APIX, auto_bfactor=True)
    with_mtf = sharpen_map(observed, pixel_size_angstrom=APIX, auto_bfactor=True,
                           mtf=(MTF_F, MTF_V))
    # the MTF division removes the detector's share of the fall-off
    assert with_mtf.bfactor_angstrom2 == pytest.approx(-b0, rel=0.03)
    assert without.bfactor_angstrom2 < with_mtf.bfactor_angstrom2 - 5
    # Guinier curves: ln mean |F| / N^3 (RELION's normalised transform) = guinier() - ln N^3
    k2, ln_f = guinier(observed, pixel_size_angstrom=APIX)
    torch.testing.assert_close(with_mtf.ln_amplitude_original, ln_f - 3 * math.log(N))
    torch.testing.assert_close(with_mtf.k2, k2)
    assert bool((with_mtf.ln_amplitude_mtf_corrected[1:] >= with_mtf.ln_amplitude_original[1:]
                 - 1e-9).all())


def test_sharpen_map_fsc_weighting_lowpass_and_adhoc(device):
    x = white_map(N, seed=4).to(device)
    n_shells = N // 2 + 1
    fsc_curve = torch.linspace(1.0, -0.2, n_shells, dtype=torch.float64, device=device)
    out = sharpen_map(x, pixel_size_angstrom=APIX, fsc_curve=fsc_curve, bfactor_angstrom2=-50.0,
                      lowpass_resolution_angstrom=N * APIX / 10.4)
    assert out.bfactor_angstrom2 == -50.0 and out.fit_slope is None
    # the low-pass is rounded to shell 10, as RELION
    assert out.lowpass_resolution_angstrom == pytest.approx(N * APIX / 10)
    grid = ShellGrid((N, N, N), device=device)
    amp_in = grid.mean(torch.fft.rfftn(x).abs())
    amp_out = grid.mean(torch.fft.rfftn(out.volume).abs())
    ratio = amp_out / amp_in
    s = 5  # per coefficient: the shell's weight times exp(B k^2 / 4) at its own k
    f = float(fsc_curve[s])
    in_shell = grid.per_coefficient(torch.arange(N // 2 + 1, device=device).double(),
                                    beyond=-1.0) == s
    fx, fo = torch.fft.rfftn(x)[in_shell], torch.fft.rfftn(out.volume)[in_shell]
    k2 = (grid.radius[in_shell] / (N * APIX)) ** 2
    expected = math.sqrt(2 * f / (1 + f)) * torch.exp(50.0 / 4 * k2)
    torch.testing.assert_close(fo, fx * expected, atol=1e-9 * float(fx.abs().max()), rtol=0)
    assert float(ratio[s]) == pytest.approx(float(expected.mean()), rel=0.01)
    assert float(ratio[12:].abs().max()) < 1e-12  # beyond the low-pass edge (shell 11)
    # weighted curve: -inf where the weighting removed everything (FSC < 1e-4 from shell 28 on)
    first_zero = int(torch.nonzero(fsc_curve < 1e-4)[0])
    assert torch.isinf(out.ln_amplitude_weighted[first_zero:]).all()
    assert torch.isfinite(out.ln_amplitude_weighted[:first_zero]).all()


def test_sharpen_errors(device):
    x = white_map(16).to(device)
    with pytest.raises(ValueError, match="cubic"):
        sharpen_map(x[:, :, :8], pixel_size_angstrom=1.0)
    with pytest.raises(ValueError, match="fsc_curve"):
        sharpen_map(x, pixel_size_angstrom=1.0, fsc_curve=torch.ones(5, device=device))
    with pytest.raises(ValueError, match="fewer than 2 Guinier points"):
        # 16 px x 1 Å: shells at 16, 8, 5.3 ... Å; 10 Å to 12 Å holds none
        sharpen_map(x, pixel_size_angstrom=1.0, auto_bfactor=True,
                    fit_min_resolution_angstrom=12.0, fit_max_resolution_angstrom=10.0)
    with pytest.raises(ValueError, match="complex rfft"):
        sharpen_fourier(torch.fft.rfftn(x).real, grid=ShellGrid((16, 16, 16)),
                        pixel_size_angstrom=1.0)
    with pytest.raises(ValueError, match="pixel size"):
        divide_by_mtf(x, MTF_F, MTF_V, pixel_size_angstrom=0.0)
