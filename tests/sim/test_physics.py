"""Image-formation pieces of the simulator against analytic answers."""

from __future__ import annotations

import math

import pytest
import torch

from cryospa.core.filters import power_spectrum_1d, radial_average
from cryospa.errors import ParameterError
from cryospa.sim.physics import (
    BackgroundModel,
    Microscope,
    background_power_2d,
    coloured_noise,
    detector_mtf_2d,
    envelope_2d,
    expected_masked_noise_variance,
    interaction_constant_rad_per_volt_angstrom,
    masked_variance,
    normalise_background,
    potential_scale,
    transfer_2d,
)


def test_interaction_constant_textbook_values() -> None:
    # Kirkland (2010), table: sigma = 0.00065 (300 kV), 0.00073 (200 kV) rad / (V Å)
    assert interaction_constant_rad_per_volt_angstrom(300.0) == pytest.approx(6.526e-4, rel=2e-3)
    assert interaction_constant_rad_per_volt_angstrom(200.0) == pytest.approx(7.288e-4, rel=2e-3)
    with pytest.raises(ParameterError):
        interaction_constant_rad_per_volt_angstrom(0.0)


def test_envelope_is_one_at_dc_decreasing_and_matches_b_factor() -> None:
    k = torch.linspace(0, 0.25, 50, dtype=torch.float64)
    zero = torch.zeros_like(k)
    coherent = Microscope(illumination_semiangle_mrad=0.0, energy_spread_ev=0.0)
    env = envelope_2d(
        k,
        zero,
        microscope=coherent,
        defocus_u_angstrom=15000.0,
        defocus_v_angstrom=15000.0,
        astigmatism_angle_degrees=0.0,
        bfactor_angstrom2=80.0,
    )
    assert torch.allclose(env, torch.exp(-80.0 * k**2 / 4))
    real = envelope_2d(
        k,
        zero,
        microscope=Microscope(),
        defocus_u_angstrom=15000.0,
        defocus_v_angstrom=15000.0,
        astigmatism_angle_degrees=0.0,
    )
    assert real[0] == pytest.approx(1.0)
    assert bool(torch.all(real[1:] <= real[:-1] + 1e-12))
    assert 0.5 < float(real[-1]) < 1.0  # FEG: a mild envelope at 4 Å


def test_detector_mtf_is_pixel_sinc() -> None:
    mtf = detector_mtf_2d((64, 64), rfft=True, dtype=torch.float64)
    assert float(mtf[0, 0]) == pytest.approx(1.0)
    assert float(mtf[0, 32]) == pytest.approx(2 / math.pi)  # Nyquist along x
    assert float(mtf[32, 32]) == pytest.approx((2 / math.pi) ** 2)


def test_coloured_noise_has_the_requested_spectrum() -> None:
    n, b = 64, 400
    du = torch.full((b,), 12000.0, dtype=torch.float64)
    transfer, _ = transfer_2d(
        (n, n),
        2.0,
        microscope=Microscope(),
        defocus_u_angstrom=du,
        defocus_v_angstrom=du - 300,
        astigmatism_angle_degrees=torch.full((b,), 30.0, dtype=torch.float64),
        rfft=False,
    )
    power = background_power_2d((n, n), 2.0, transfer, background=BackgroundModel())
    gen = torch.Generator().manual_seed(0)
    noise = coloured_noise(power, torch.randn(b, n, n, generator=gen, dtype=torch.float64))
    measured = power_spectrum_1d(noise, ndim=2).mean(0)
    expected = radial_average(power[0, :, : n // 2 + 1].contiguous(), ndim=2)
    # 400 images x ~6 r pixels per shell: a few % per shell
    assert torch.allclose(measured[1:], expected[1:], rtol=0.12)
    # stronger at low frequency than at high (ice + slow background), flat beyond
    assert float(expected[1]) > 1.5 * float(expected[-1])
    assert float(expected[-5:].std() / expected[-5:].mean()) < 0.1


def test_expected_masked_noise_variance_matches_sampling() -> None:
    n, b = 48, 2000
    gen = torch.Generator().manual_seed(1)
    k = torch.fft.fftfreq(n, dtype=torch.float64)
    power = 1.0 + 20.0 * torch.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / 0.002)
    ax = torch.arange(n, dtype=torch.float64) - n // 2
    mask = ((ax[:, None] ** 2 + ax[None, :] ** 2) <= 10.0**2).to(torch.float64)
    noise = coloured_noise(power, torch.randn(b, n, n, generator=gen, dtype=torch.float64))
    measured = masked_variance(noise, mask).mean()
    expected = expected_masked_noise_variance(power[None], mask[None])[0]
    assert float(measured) == pytest.approx(float(expected), rel=0.03)
    # the low-frequency part really reduces the variance about the disc mean
    assert float(expected) < 0.97 * float(power.mean())


def test_normalise_background_zero_mean_unit_sd_outside_circle() -> None:
    gen = torch.Generator().manual_seed(2)
    x = 5.0 + 3.0 * torch.randn(4, 32, 32, generator=gen, dtype=torch.float64)
    out, mean, _ = normalise_background(x, background_radius_px=12.0)
    ax = torch.arange(32, dtype=torch.float64) - 16
    bg = (ax[:, None] ** 2 + ax[None, :] ** 2) > 144
    assert torch.allclose(out[:, bg].mean(-1), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out[:, bg].std(-1, correction=0), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(mean, torch.full((4,), 5.0, dtype=torch.float64), atol=0.5)
    with pytest.raises(ParameterError):
        normalise_background(x, background_radius_px=40.0)


def test_potential_scale_sets_support_mean() -> None:
    v = torch.zeros(20, 20, 20)
    v[5:15, 5:15, 5:15] = 0.25
    s = potential_scale(v, contrast_potential_volt=2.0)
    assert s * 0.25 == pytest.approx(2.0)
    with pytest.raises(ParameterError):
        potential_scale(-v, contrast_potential_volt=2.0)


def test_microscope_rejects_bad_optics() -> None:
    with pytest.raises(ParameterError):
        Microscope(voltage_kv=-1)
    with pytest.raises(ParameterError):
        Microscope(amplitude_contrast=1.0)
    with pytest.raises(ParameterError):
        BackgroundModel(low_frequency_length_angstrom=0)
