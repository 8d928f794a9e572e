"""CTFFIND4-like CTF estimation on simulated micrographs with known defocus.

Measured (CPU, 2 threads), TRUTH below, LDH at 1.77 Å/px and 30.65 e/Å²: mean defocus within
0.05 %, dU / dV within 0.2 %, angle within 2 degrees (astigmatism 400-1000 Å), FOM 0.29-0.35,
Thon rings fitted up to Nyquist (3.54 Å), at 768^2 and 1024^2; 0.1-0.2 s per 1024^2 micrograph
on an idle machine (1-3 s under load). Poisson noise alone: FOM about 0.02, no rings.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryospa.core.ctf_estimation import (
    CtfFit,
    averaged_amplitude_spectrum,
    ctf_diagnostic_image,
    estimate_ctf,
)
from cryospa.sim import simulate_micrographs
from cryospa.sim.particles import TrueMaps
from tests.synthetic import simulation_maps

APIX = 1.77
DOSE = 30.65  # the tutorial's total dose


def _fit(micrograph: torch.Tensor, min_resolution_angstrom: float = 30.0) -> CtfFit:
    # the simulator's default microscope
    return estimate_ctf(
        micrograph,
        APIX,
        voltage_kv=200.0,
        spherical_aberration_mm=1.4,
        amplitude_contrast=0.1,
        min_resolution_angstrom=min_resolution_angstrom,
    )


TRUTH = np.array([[12400.0, 11600.0, 30.0], [20500.0, 19500.0, -60.0], [9000.0, 8600.0, 75.0]])


@pytest.fixture(scope="module")
def ldh_maps() -> TrueMaps:
    return simulation_maps("builtin:ldh", APIX)


def _check(micrographs: np.ndarray, truth: np.ndarray) -> None:
    for mic, (du, dv, angle) in zip(micrographs, truth, strict=True):
        fit = _fit(torch.from_numpy(mic))
        assert fit.defocus_u_angstrom >= fit.defocus_v_angstrom
        assert fit.mean_defocus_angstrom == pytest.approx(0.5 * (du + dv), rel=0.01)
        assert fit.defocus_u_angstrom == pytest.approx(du, rel=0.02)
        assert fit.defocus_v_angstrom == pytest.approx(dv, rel=0.02)
        if du - dv > 300:
            assert abs((fit.astigmatism_angle_degrees - angle + 90.0) % 180.0 - 90.0) < 5.0
        assert -90.0 < fit.astigmatism_angle_degrees <= 90.0
        assert math.isfinite(fit.max_resolution_angstrom)
        assert 2 * APIX - 1e-6 <= fit.max_resolution_angstrom < 10.0
        assert fit.figure_of_merit > 0.15


def test_defocus_and_astigmatism_of_simulated_micrographs(ldh_maps: TrueMaps) -> None:
    sim = simulate_micrographs(
        ldh_maps,
        n_micrographs=3,
        micrograph_shape_px=(768, 768),
        particles_per_micrograph=35,
        dose_e_per_a2=DOSE,
        micrograph_defocus=TRUTH,
        seed=1,
    )
    _check(sim.micrographs, TRUTH)


@pytest.mark.slow
def test_random_defoci_on_1024_micrographs(ldh_maps: TrueMaps) -> None:
    sim = simulate_micrographs(
        ldh_maps,
        n_micrographs=4,
        micrograph_shape_px=(1024, 1024),
        particles_per_micrograph=60,
        dose_e_per_a2=DOSE,
        defocus_range_angstrom=(6000.0, 30000.0),
        astigmatism_angstrom=1500.0,
        seed=2,
    )
    table = sim.ctf_table
    truth = table[["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]].to_numpy(np.float64)
    _check(sim.micrographs, truth)


def test_noise_only_gives_a_low_figure_of_merit() -> None:
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.poisson(DOSE * APIX**2, (512, 512)).astype(np.float32))
    fit = _fit(noise)
    assert fit.figure_of_merit < 0.06
    assert fit.max_resolution_angstrom > 10.0


def test_diagnostic_image_and_spectrum_shapes() -> None:
    rng = np.random.default_rng(1)
    mic = torch.from_numpy(rng.normal(size=(600, 700)))
    spectrum = averaged_amplitude_spectrum(mic, box=512)
    assert spectrum.shape == (288, 288)  # box reduced for a micrograph under two boxes
    fit = _fit(mic)
    image = ctf_diagnostic_image(fit)
    assert image.shape == (288, 288) and image.dtype == torch.float32
    assert torch.isfinite(image).all()
    with pytest.raises(ValueError):
        _fit(mic, min_resolution_angstrom=3.0)
