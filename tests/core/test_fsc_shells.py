"""ShellGrid, FSC of transforms, FSC weighting, shell finders, Chen's masking correction on maps."""

from __future__ import annotations

import math

import pytest
import torch

from cryospa.core.filters import radial_average
from cryospa.core.fsc import (
    ShellGrid,
    apply_fsc_weighting,
    first_shell_below,
    fsc,
    fsc_corrected_for_masking,
    fsc_corrected_for_particle_fraction,
    fsc_fourier,
    fsc_weighting_curve,
    last_shell_at_or_above,
    phase_randomise,
    phase_randomise_fourier,
)
from tests.core.halfmaps import half_maps_with_known_resolution, white_map


@pytest.mark.parametrize("shape", [(16, 16, 16), (15, 15, 15), (12, 10, 9), (20, 20)])
def test_shell_grid_matches_radial_average(device, shape):
    grid = ShellGrid(shape, device=device)
    x = torch.randn(shape, dtype=torch.float64, device=device)
    dims = tuple(range(-len(shape), 0))
    power = torch.fft.rfftn(x, dim=dims).abs() ** 2
    torch.testing.assert_close(grid.mean(power), radial_average(power, ndim=len(shape),
                                                                shape=shape))
    # counts: the full FFT's coefficients of each shell
    full = torch.fft.fftn(x, dim=dims)
    freqs = torch.meshgrid(*[torch.fft.fftfreq(s, dtype=torch.float64) for s in shape],
                           indexing="ij")
    r = torch.sqrt(sum(f**2 for f in freqs)) * max(shape)
    idx = torch.floor(r + 0.5).long().reshape(-1)
    counts = torch.bincount(idx, minlength=max(shape) // 2 + 2)[: grid.n_shells]
    torch.testing.assert_close(grid.counts.cpu(), counts.double())
    assert full.numel() == int((idx <= max(shape) // 2).sum()) + int((idx > max(shape) // 2)
                                                                        .sum())
    # per-coefficient look-up puts each shell's value back, corners get `beyond`
    curve = torch.arange(grid.n_shells, dtype=torch.float64, device=device)
    back = grid.per_coefficient(curve, beyond=-1.0)
    expected = torch.where(grid.radius < grid.n_shells - 0.5, torch.floor(grid.radius + 0.5),
                           -1.0)
    torch.testing.assert_close(back, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fsc_fourier_equals_fsc_and_keeps_dtype(device, dtype):
    a = white_map(24, seed=1, dtype=dtype).to(device)
    b = a + 0.7 * white_map(24, seed=2, dtype=dtype).to(device)
    grid = ShellGrid((24, 24, 24), device=device)
    got = fsc_fourier(torch.fft.rfftn(a), torch.fft.rfftn(b), grid=grid)
    assert got.dtype == dtype and got.device.type == torch.device(device).type
    torch.testing.assert_close(got, fsc(a, b))
    # white signal + white noise of 0.7 sd: expected FSC 1 / sqrt(1 + 0.49) in every shell
    assert float(got[4:].mean()) == pytest.approx(1 / math.sqrt(1.49), abs=0.03)
    with pytest.raises(ValueError, match="complex"):
        fsc_fourier(a, b, grid=grid)


def test_fsc_weighting_curve_ignores_the_dc_term(device):
    f = torch.tensor([-1.0, 0.9, 0.5, 0.2, 0.00005, 0.3], dtype=torch.float64, device=device)
    w = fsc_weighting_curve(f)
    assert float(w[0]) == 1.0  # a negative DC FSC does not blank the map (RELION would)
    torch.testing.assert_close(w[1:4], torch.sqrt(2 * f[1:4] / (1 + f[1:4])))
    assert float(w[4:].abs().max()) == 0.0


def test_apply_fsc_weighting_uses_the_nearest_shell(device):
    n = 16
    x = white_map(n, seed=5).to(device)
    curve = torch.linspace(1.0, 0.05, n // 2 + 1, dtype=torch.float64, device=device)
    out = apply_fsc_weighting(x, curve)
    grid = ShellGrid((n, n, n), device=device)
    factor = grid.per_coefficient(fsc_weighting_curve(curve), beyond=0.0)
    torch.testing.assert_close(torch.fft.rfftn(out), torch.fft.rfftn(x) * factor)
    assert float(torch.fft.rfftn(out)[grid.radius >= n // 2 + 0.5].abs().max()) < 1e-12
    with pytest.raises(ValueError, match="fsc_curve"):
        apply_fsc_weighting(x, curve[:-1])


def test_shell_finders():
    c = torch.tensor([-0.5, 0.99, 0.95, 0.7, 0.9, 0.3, 0.1, 0.2])
    assert first_shell_below(c, 0.8) == 3  # shell 0 is never counted
    assert first_shell_below(c, -1.0) is None
    assert last_shell_at_or_above(c, 0.143) == 5  # RELION: stop at the first drop (shell 6)
    assert last_shell_at_or_above(c, 0.0) == 7  # never below: the last shell
    assert last_shell_at_or_above(torch.tensor([1.0, 0.1, 0.9]), 0.143) == 0


def test_fsc_corrected_for_particle_fraction():
    f = torch.tensor([1.0, 0.5, 0.143, 0.0, -0.1], dtype=torch.float64)
    frac = 3.0
    out = fsc_corrected_for_particle_fraction(f, frac)
    torch.testing.assert_close(out, frac * f / (1 + (frac - 1) * f))
    assert float(out[0]) == 1.0 and float(out[3]) == 0.0
    with pytest.raises(ValueError, match="> 0"):
        fsc_corrected_for_particle_fraction(f, 0.0)


def test_phase_randomise_fourier_matches_phase_randomise(device):
    x = white_map(20, seed=7).to(device)
    grid = ShellGrid((20, 20, 20), device=device)
    g1 = torch.Generator(device=device).manual_seed(3)
    g2 = torch.Generator(device=device).manual_seed(3)
    a = phase_randomise(x, beyond_resolution_angstrom=20 * 2.0 / 6, pixel_size_angstrom=2.0,
                        generator=g1)
    b = torch.fft.irfftn(phase_randomise_fourier(torch.fft.rfftn(x), from_radius=6.0, grid=grid,
                                                 generator=g2), s=(20, 20, 20))
    torch.testing.assert_close(a, b)


def test_masking_correction_removes_the_masks_own_correlation():
    # half maps that share only details coarser than shell 10 (independent noise beyond) and a
    # sharp (binary) mask: the masked FSC stays above 0.143 to Nyquist (the mask's edges
    # correlate the halves); Chen et al.'s correction brings the resolution back to shell 10
    # (+ RELION's 2 guard shells at most)
    n, apix, s0 = 64, 2.0, 10
    h1, h2, _, truth = half_maps_with_known_resolution(n, pixel_size=apix, signal_shell=s0,
                                                       noise=0.3)
    sharp = (truth > 0.2 * float(truth.max())).double()
    masked = fsc(h1 * sharp, h2 * sharp)
    unmasked = fsc(h1, h2)
    assert last_shell_at_or_above(unmasked, 0.143) in (s0 - 1, s0, s0 + 1)
    assert last_shell_at_or_above(masked, 0.143) == n // 2  # the mask's false resolution
    start = first_shell_below(unmasked, 0.8)
    assert start is not None and s0 - 1 <= start <= s0 + 1
    g = torch.Generator().manual_seed(0)
    r1 = phase_randomise(h1, beyond_resolution_angstrom=n * apix / start,
                         pixel_size_angstrom=apix, generator=g)
    r2 = phase_randomise(h2, beyond_resolution_angstrom=n * apix / start,
                         pixel_size_angstrom=apix, generator=g)
    random_masked = fsc(r1 * sharp, r2 * sharp)
    # the randomised maps keep the mask's correlation: as high as the masked FSC out there
    torch.testing.assert_close(random_masked[start + 4:], masked[start + 4:], atol=0.1, rtol=0)
    corrected = fsc_corrected_for_masking(masked, random_masked, randomise_from_shell=start)
    shell = last_shell_at_or_above(corrected, 0.143)
    assert s0 - 1 <= shell <= start + 2, (shell, start)


def test_shell_grid_slabs_give_the_same_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    # small slabs (the path of big boxes) and one slab agree exactly
    import cryospa.core.fsc as fsc_module

    x = white_map(18, seed=8)
    y = x + white_map(18, seed=9)
    fx, fy = torch.fft.rfftn(x), torch.fft.rfftn(y)
    whole = ShellGrid((18, 18, 18))
    monkeypatch.setattr(fsc_module, "_CHUNK", 25)  # fewer than a row (18 x 10): 1 row a slab
    sliced = ShellGrid((18, 18, 18))
    assert sliced._step() == 1
    torch.testing.assert_close(sliced.index, whole.index)
    torch.testing.assert_close(sliced.counts, whole.counts)
    torch.testing.assert_close(sliced.fsc(fx, fy), whole.fsc(fx, fy))
    g = sliced.scale_radially(fx.clone(), lambda r: torch.exp(-0.01 * r * r))
    torch.testing.assert_close(g, fx * torch.exp(-0.01 * whole.radius**2))
    m = sliced.radial_map(lambda r: r >= 4.0, torch.bool)
    assert torch.equal(m, whole.radius >= 4.0)
