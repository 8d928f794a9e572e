import math

import pytest
import torch

from cryospa.core.ctf import (
    ctf_1d,
    ctf_2d,
    ctf_2d_on_grid,
    electron_wavelength_angstrom,
    first_zero_frequencies_per_angstrom,
)

PARAMS = dict(voltage_kv=300.0, spherical_aberration_mm=2.7, amplitude_contrast=0.1)


def test_wavelength() -> None:
    # textbook relativistic wavelengths
    assert electron_wavelength_angstrom(300.0) == pytest.approx(0.019687, abs=2e-6)
    assert electron_wavelength_angstrom(200.0) == pytest.approx(0.025079, abs=2e-6)
    assert electron_wavelength_angstrom(100.0) == pytest.approx(0.037014, abs=2e-6)


@pytest.mark.parametrize("defocus", [5000.0, 15000.0, 30000.0])
@pytest.mark.parametrize("phase", [0.0, 90.0])
def test_ctf_zeros_where_theory_puts_them(defocus: float, phase: float) -> None:
    zeros = first_zero_frequencies_per_angstrom(
        5, defocus_angstrom=defocus, phase_shift_degrees=phase, **PARAMS
    )
    assert len(zeros) == 5
    k = torch.tensor(zeros, dtype=torch.float64)
    values = ctf_1d(k, defocus_angstrom=defocus, phase_shift_degrees=phase, **PARAMS)
    assert values.abs().max() < 1e-9
    # the CTF changes sign at each zero
    eps = 1e-5
    before = ctf_1d(k - eps, defocus_angstrom=defocus, phase_shift_degrees=phase, **PARAMS)
    after = ctf_1d(k + eps, defocus_angstrom=defocus, phase_shift_degrees=phase, **PARAMS)
    assert torch.all(before * after < 0)
    # Scherzer-free check: first zero of a 1.5 um underfocus at 300 kV without Cs term
    # k1 = sqrt((pi - atan(w/sqrt(1-w^2))) / (pi lambda dz)) approximately (Cs small at low k)
    if phase == 0.0 and defocus == 15000.0:
        lam = electron_wavelength_angstrom(300.0)
        approx = math.sqrt((math.pi - math.atan(0.1 / math.sqrt(0.99))) / (math.pi * lam * defocus))
        assert zeros[0] == pytest.approx(approx, rel=0.01)


def test_ctf_low_frequency_sign_and_value() -> None:
    # RELION convention: positive amplitude contrast at k = 0 for underfocus
    v = ctf_1d(torch.zeros(1, dtype=torch.float64), defocus_angstrom=20000.0, **PARAMS)
    assert v.item() == pytest.approx(0.1, abs=1e-12)


def test_astigmatism_angle_convention() -> None:
    # defocus U lies along the astigmatism angle (measured from x towards y)
    angle = 30.0
    k = 0.05
    a = math.radians(angle)
    kx = torch.tensor([k * math.cos(a), k * math.cos(a + math.pi / 2)], dtype=torch.float64)
    ky = torch.tensor([k * math.sin(a), k * math.sin(a + math.pi / 2)], dtype=torch.float64)
    astig = ctf_2d(
        kx,
        ky,
        defocus_u_angstrom=20000.0,
        defocus_v_angstrom=15000.0,
        astigmatism_angle_degrees=angle,
        **PARAMS,
    )
    k_t = torch.tensor([k], dtype=torch.float64)
    along_u = ctf_1d(k_t, defocus_angstrom=20000.0, **PARAMS)
    along_v = ctf_1d(k_t, defocus_angstrom=15000.0, **PARAMS)
    assert astig[0].item() == pytest.approx(along_u.item(), abs=1e-12)
    assert astig[1].item() == pytest.approx(along_v.item(), abs=1e-12)


def test_bfactor_envelope_and_scale() -> None:
    k = torch.linspace(0, 0.3, 50, dtype=torch.float64)
    plain = ctf_1d(k, defocus_angstrom=10000.0, **PARAMS)
    env = ctf_1d(k, defocus_angstrom=10000.0, bfactor_angstrom2=100.0, scale=0.5, **PARAMS)
    assert torch.allclose(env, 0.5 * plain * torch.exp(-100.0 * k * k / 4), atol=1e-12)


def test_batched_grid_friedel_and_device(device: str) -> None:
    du = torch.tensor([10000.0, 20000.0], device=device)
    c = ctf_2d_on_grid(
        (64, 64),
        1.5,
        rfft=False,
        device=device,
        defocus_u_angstrom=du,
        defocus_v_angstrom=du - 500,
        astigmatism_angle_degrees=torch.tensor([10.0, 80.0], device=device),
        **PARAMS,
    )
    assert c.shape == (2, 64, 64) and c.device.type == device and c.dtype == torch.float32
    # the CTF is even: C(k) = C(-k) (the Nyquist row and column, k = -1/2 only, are excluded)
    flipped = torch.roll(torch.flip(c, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    keep = torch.ones(64, dtype=torch.bool)
    keep[32] = False
    assert torch.allclose(c[:, keep][:, :, keep], flipped[:, keep][:, :, keep], atol=1e-4)
    r = ctf_2d_on_grid(
        (64, 64),
        1.5,
        device=device,
        defocus_u_angstrom=du,
        defocus_v_angstrom=du - 500,
        astigmatism_angle_degrees=torch.tensor([10.0, 80.0], device=device),
        **PARAMS,
    )
    assert r.shape == (2, 64, 33)
    assert torch.allclose(r[..., :32], c[..., :32], atol=1e-6)  # column 32: +1/2 vs -1/2


def test_intact_until_first_peak() -> None:
    """RELION's --ctf_intact_first_peak: 1 up to the first maximum of |CTF|, unchanged after."""
    k = torch.linspace(0.0, 0.25, 2001, dtype=torch.float64)[None, :]  # (1, K) 1/Å, one ray
    zero = torch.zeros_like(k)
    params = dict(defocus_u_angstrom=15000.0, defocus_v_angstrom=15000.0, voltage_kv=300.0,
                  spherical_aberration_mm=2.7, amplitude_contrast=0.1, bfactor_angstrom2=40.0)
    plain = ctf_2d(k, zero, **params)[0]
    intact = ctf_2d(k, zero, intact_until_first_peak=True, **params)[0]
    envelope = torch.exp(-40.0 * k[0] ** 2 / 4.0)
    peak = int(torch.argmax((torch.diff(plain / envelope) < 0).to(torch.int64)))  # first max
    assert 300 < peak < 340  # 0.04 1/Å: sqrt(1 / (2 lambda defocus)) at 300 kV, 1.5 µm
    torch.testing.assert_close(intact[:peak - 1], envelope[:peak - 1])
    torch.testing.assert_close(intact[peak + 2 :], plain[peak + 2 :])
    # on a 2D astigmatic grid the CTF is 1 at the origin and below |CTF| elsewhere only
    # where it was replaced
    grid = ctf_2d_on_grid((64, 64), 2.0, defocus_u_angstrom=20000.0, defocus_v_angstrom=15000.0,
                          astigmatism_angle_degrees=30.0, voltage_kv=300.0,
                          spherical_aberration_mm=2.7, amplitude_contrast=0.1,
                          intact_until_first_peak=True)
    assert float(grid[0, 0]) == 1.0
    changed = grid != ctf_2d_on_grid((64, 64), 2.0, defocus_u_angstrom=20000.0,
                                     defocus_v_angstrom=15000.0, astigmatism_angle_degrees=30.0,
                                     voltage_kv=300.0, spherical_aberration_mm=2.7,
                                     amplitude_contrast=0.1)
    assert bool((grid[changed] == 1.0).all()) and 0 < int(changed.sum()) < grid.numel() // 4
