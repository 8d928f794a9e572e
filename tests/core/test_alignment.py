"""Global motion estimation, aligned sums and dose weighting: known shifts and the simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryospa.core.alignment import (
    DoseWeights,
    accumulated_motion,
    align_global,
    align_stacks,
    aligned_sums,
    bfactor_weight,
    dose_weighted_sum,
    dose_weights,
    frame_end_exposures,
    shift_and_sum,
)
from cryospa.core.dose import critical_exposure
from cryospa.core.fourier import shift_images
from cryospa.errors import ParameterError
from tests.synthetic import simulation_maps

APIX = 1.77
DOSE = 1.277  # e/Å² per frame, the tutorial's


def _smooth_image(n: int, seed: int = 0) -> torch.Tensor:
    """A random image with a cryo-EM-like falling spectrum (periodic, band-limited)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, n), generator=gen)
    ky = torch.fft.fftfreq(n)[:, None]
    kx = torch.fft.rfftfreq(n)[None, :]
    k2 = ky**2 + kx**2
    return torch.fft.irfft2(torch.fft.rfft2(noise) * torch.exp(-k2 / (2 * 0.08**2)), s=(n, n))


def _drift(n_frames: int, seed: int = 1) -> np.ndarray:
    """RELION shifts of a plausible trajectory: fast start, slow drift, frame 0 at 0."""
    rng = np.random.default_rng(seed)
    f = np.arange(n_frames)[:, None]
    early = 4.0 * (1 - np.exp(-f / 2.5)) * np.array([[0.8, -0.6]])
    late = 0.15 * f * np.array([[0.3, 0.95]])
    jitter = rng.normal(0, 0.1, (n_frames, 2))
    jitter[0] = 0
    return -(early + late + jitter)


def _movie(image: torch.Tensor, shifts: np.ndarray) -> torch.Tensor:
    """Frames whose content drifted by ``-s_f`` (RELION shifts ``s_f``)."""
    return shift_images(image.expand(len(shifts), *image.shape), -torch.from_numpy(shifts).float())


# ---- alignment


def test_recovers_known_shifts_of_periodic_frames() -> None:
    truth = _drift(12)
    frames = _movie(_smooth_image(128), truth)
    result = align_global(frames, APIX)
    assert result.converged
    assert np.all(result.shifts[0] == 0)
    np.testing.assert_allclose(result.shifts, truth, atol=0.005)


def test_cropped_alignment_returns_full_size_pixels() -> None:
    truth = _drift(8, seed=4)
    frames = _movie(_smooth_image(128, seed=2), truth)
    result = align_global(frames, APIX, crop=64)
    np.testing.assert_allclose(result.shifts, truth, atol=0.02)


def test_search_radius_and_invalid_input() -> None:
    truth = _drift(6)
    frames = _movie(_smooth_image(64), truth)
    result = align_global(frames, APIX, max_shift_px=10.0)
    np.testing.assert_allclose(result.shifts, truth, atol=0.01)
    with pytest.raises(ParameterError):
        align_global(frames[:1], APIX)
    with pytest.raises(ParameterError):
        align_global(frames, APIX, crop=63)


def test_align_stacks_aligns_each_stack_as_align_global() -> None:
    # three stacks with different drifts (one converging sooner than the others) aligned
    # together give exactly what each gives alone
    stacks = torch.stack(
        [_movie(_smooth_image(96, seed=s), _drift(6, seed=s)) for s in (1, 2, 3)]
    )
    stacks[2] = stacks[2, :1].expand(6, -1, -1)  # no motion: converges at once
    together = align_stacks(stacks, APIX, crop=64, max_shift_px=20.0)
    assert len(together) == 3
    for stack, result in zip(stacks, together, strict=True):
        alone = align_global(stack, APIX, crop=64, max_shift_px=20.0)
        np.testing.assert_allclose(result.shifts, alone.shifts, atol=1e-9)
        assert result.n_iterations == alone.n_iterations
        assert result.converged == alone.converged
    np.testing.assert_allclose(together[0].shifts, _drift(6, seed=1), atol=0.02)
    assert together[2].n_iterations < together[0].n_iterations
    with pytest.raises(ParameterError, match="stacks must be"):
        align_stacks(stacks[0], APIX)


def test_bfactor_weight() -> None:
    w = bfactor_weight((64, 64), 2.0, 100.0)
    assert float(w[0, 0]) == 0.0
    k = 1.0 / (2.0 * 64) * 5  # index (0, 5)
    assert float(w[0, 5]) == pytest.approx(math.exp(-100.0 * k * k / 4), rel=1e-5)


# ---- sums


def test_shift_and_sum_restores_the_original() -> None:
    image = _smooth_image(96, seed=5)
    truth = _drift(7, seed=2)
    frames = _movie(image, truth)
    total = shift_and_sum(torch.fft.rfft2(frames), truth)
    torch.testing.assert_close(total, 7 * image, atol=1e-4, rtol=0)
    weighted = shift_and_sum(torch.fft.rfft2(frames), truth, torch.full((7,), 0.5))
    torch.testing.assert_close(weighted, 3.5 * image, atol=1e-4, rtol=0)


def test_dose_weights_follow_relion_formula() -> None:
    shape = (64, 80)
    ends = frame_end_exposures(5, DOSE, pre_exposure=0.5)
    np.testing.assert_allclose(ends, 0.5 + DOSE * np.arange(1, 6))
    w = dose_weights(shape, APIX, ends, 300.0)
    assert w.shape == (5, 64, 41)
    ky = torch.fft.fftfreq(64, d=APIX, dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(80, d=APIX, dtype=torch.float64)[None, :]
    ne = critical_exposure(torch.sqrt(ky**2 + kx**2))
    raw = torch.stack([torch.exp(-float(n) / (2 * ne)) for n in ends])
    expected = raw / torch.sqrt((raw**2).sum(0))
    torch.testing.assert_close(w.double(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w[:, 0, 0], torch.full((5,), 1 / math.sqrt(5)))
    # 200 kV: exposures count 1 / 0.8
    w200 = dose_weights(shape, APIX, ends, 200.0)
    torch.testing.assert_close(w200, dose_weights(shape, APIX, ends / 0.8, 300.0))
    # the unit sum of squares per frequency
    torch.testing.assert_close((w**2).sum(0), torch.ones(64, 41))


def test_dose_weights_frame_by_frame_and_extreme_exposures() -> None:
    shape = (48, 64)
    ends = frame_end_exposures(40, 2.5, pre_exposure=3.0)
    per_frame = DoseWeights(shape, 0.5, ends, 200.0)
    assert len(per_frame) == 40
    torch.testing.assert_close(per_frame(7), dose_weights(shape, 0.5, ends, 200.0)[7])
    # after 400 e/Å² every exp(-N / Ne) of RELION's formula underflows in float32 (Ne <= 2.81
    # e/Å² at high frequency); made relative to the first frame, the weights stay finite
    w = DoseWeights(shape, 0.5, ends + 400.0, 300.0).all()
    assert bool(torch.isfinite(w).all())
    torch.testing.assert_close(
        (w.double() ** 2).sum(0), torch.ones(48, 33, dtype=torch.float64), rtol=2e-6, atol=0
    )
    torch.testing.assert_close(w[:, 0, 0], torch.full((40,), 1 / math.sqrt(40)))
    with pytest.raises(ParameterError, match="at least one frame"):
        DoseWeights(shape, 0.5, [], 300.0)


def test_aligned_sums_in_one_pass_equal_the_sums_one_by_one() -> None:
    truth = _drift(5, seed=3)
    frames = _movie(_smooth_image(64, seed=1), truth)
    frames_ft = torch.fft.rfft2(frames)
    ends = frame_end_exposures(5, DOSE)
    per_frame = DoseWeights((64, 64), APIX, ends, 300.0)
    dw, plain, half = aligned_sums(frames, truth, [per_frame, None, torch.full((5,), 0.5)])
    torch.testing.assert_close(dw, dose_weighted_sum(frames_ft, truth, APIX, ends, 300.0))
    torch.testing.assert_close(plain, shift_and_sum(frames_ft, truth))
    torch.testing.assert_close(half, 0.5 * plain)
    # transforms and real frames give the same sums; the input is left as it was
    before = frames_ft.clone()
    torch.testing.assert_close(aligned_sums(frames_ft, truth, [per_frame])[0], dw)
    torch.testing.assert_close(frames_ft, before)
    with pytest.raises(ParameterError, match="weights"):
        aligned_sums(frames, truth, [torch.ones((5, 64, 64))])
    with pytest.raises(ParameterError, match="dose weights are for 5 frames"):
        aligned_sums(frames[:4], truth[:4], [per_frame])


def test_dose_weighted_sum_equals_weighted_shift_and_sum() -> None:
    truth = _drift(4)
    frames_ft = torch.fft.rfft2(_movie(_smooth_image(64), truth))
    ends = frame_end_exposures(4, DOSE)
    a = dose_weighted_sum(frames_ft, truth, APIX, ends, 300.0)
    b = shift_and_sum(frames_ft, truth, dose_weights((64, 64), APIX, ends, 300.0))
    torch.testing.assert_close(a, b)


# ---- statistics


def test_accumulated_motion_as_relion() -> None:
    shifts = np.array([[0, 0], [3, 4], [3, 4], [0, 0], [0, 1]], dtype=float)
    # cutoff frame (4 - 0) / 1.277 = 3.13: steps ending at 1-based frames 2 and 3 are early
    m = accumulated_motion(shifts, dose_per_frame=DOSE)
    assert (m.total, m.early, m.late) == pytest.approx((11.0, 5.0, 6.0))
    m = accumulated_motion(shifts, APIX, dose_per_frame=DOSE, pre_exposure=2.0)
    # cutoff frame (4 - 2) / 1.277 = 1.57: nothing early
    assert (m.total, m.early, m.late) == pytest.approx((11 * APIX, 0.0, 11 * APIX))


# ---- against the simulator (ldh, tutorial dose): slow


@pytest.fixture(scope="module")
def ldh_movie():  # type: ignore[no-untyped-def]
    from cryospa.sim.movies import MotionModel, MovieSimulator

    maps = simulation_maps("builtin:ldh", APIX)
    sim = MovieSimulator(
        maps,
        n_movies=1,
        movie_shape_px=(512, 512),
        n_frames=20,
        dose_per_frame=DOSE,
        particles_per_micrograph=25,
        seed=3,
        motion=MotionModel(local_angstrom=0.0),  # the global trajectory is the whole truth
    )
    movie = sim.movie(0, keep_expected=True)
    raw = movie.raw.astype(np.float32) * sim.gain.astype(np.float32)
    # defect correction (the job's business): fill dead columns and hot pixels with the mean
    fill = float(raw.mean())
    raw[:, :, sim.dead_columns] = fill
    if len(sim.hot_pixels):
        raw[:, sim.hot_pixels[:, 1], sim.hot_pixels[:, 0]] = fill
    return sim, movie.expected, raw


@pytest.mark.slow
def test_noiseless_simulated_movie_shifts_equal_truth(ldh_movie) -> None:  # type: ignore[no-untyped-def]
    sim, expected, _ = ldh_movie
    truth = sim.global_shifts[0]
    assert np.hypot(*truth[-1]) > 3.0  # a real drift
    result = align_global(torch.from_numpy(expected), APIX)
    assert result.converged
    np.testing.assert_allclose(result.shifts, truth, atol=0.02)


@pytest.mark.slow
def test_raw_poisson_movie_shifts_near_truth(ldh_movie) -> None:  # type: ignore[no-untyped-def]
    sim, _, raw = ldh_movie
    truth = sim.global_shifts[0]
    result = align_global(torch.from_numpy(raw), APIX)
    rms = float(np.sqrt(((result.shifts - truth) ** 2).sum(axis=1).mean()))
    assert rms < 0.3  # measured 0.20 px (seed 3); RELION's motioncorr: 0.3-1.2 px on such data


@pytest.mark.slow
def test_dose_weighting_improves_high_resolution_agreement(ldh_movie) -> None:  # type: ignore[no-untyped-def]
    sim, expected, raw = ldh_movie
    truth = sim.global_shifts[0]
    n_frames, h, w = raw.shape
    frames_ft = torch.fft.rfft2(torch.from_numpy(raw))
    ends = frame_end_exposures(n_frames, sim.dose_per_frame, sim.pre_exposure)
    weighted = dose_weighted_sum(frames_ft, truth, APIX, ends, 300.0)
    plain = shift_and_sum(frames_ft, truth)
    reference = torch.fft.rfft2(torch.from_numpy(expected[0]))
    ky = torch.fft.fftfreq(h, d=APIX)[:, None]
    kx = torch.fft.rfftfreq(w, d=APIX)[None, :]
    k = torch.sqrt(ky**2 + kx**2)
    shell = (k > 1 / 8.0) & (k < 1 / 5.0)

    def frc(image: torch.Tensor) -> float:
        a, b = torch.fft.rfft2(image)[shell], reference[shell]
        return float(
            (a * b.conj()).real.sum() / torch.sqrt((a.abs() ** 2).sum() * (b.abs() ** 2).sum())
        )

    assert frc(weighted) > frc(plain) + 0.01
