"""Local (patch-based) motion: polynomial fit, patch alignment and the locally aligned sum.

Known answers: analytic movies (a band-limited image evaluated exactly at the deformed
positions), the movie simulator's ground truth (noiseless and at the tutorial's dose), and
RELION's polynomial model itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryospa.core.alignment import (
    DoseWeights,
    align_global,
    dose_weights,
    frame_end_exposures,
    shift_and_sum,
)
from cryospa.core.local_alignment import (
    MIN_PATCH_PX,
    align_patches,
    aligned_sums_local,
    local_shifts_at,
    patch_layout,
    shift_and_sum_local,
)
from cryospa.core.motion import fit_polynomial, polynomial_shift
from cryospa.errors import ParameterError
from tests.synthetic import simulation_maps

DOSE = 1.277  # e/Å² per frame, the tutorial's


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # type: ignore[no-untyped-def]
    """One torch thread: the patch work is many small operations, for which a second thread
    on a shared 2-core machine costs far more (waiting for a busy core) than it gains."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- analytic movies


def _waves(n_waves: int, seed: int, k_max: float) -> tuple[np.ndarray, ...]:
    """Random plane waves (cycles/px): a band-limited image that can be evaluated anywhere."""
    rng = np.random.default_rng(seed)
    k = rng.uniform(0.01, k_max, n_waves)
    theta = rng.uniform(0, 2 * np.pi, n_waves)
    amplitude = rng.normal(size=n_waves) / np.sqrt(k)
    phase = rng.uniform(0, 2 * np.pi, n_waves)
    return k * np.cos(theta), k * np.sin(theta), amplitude, phase


def _image_at(x: torch.Tensor, y: torch.Tensor, waves: tuple[np.ndarray, ...]) -> torch.Tensor:
    kx, ky, amplitude, phase = waves
    out = torch.zeros_like(x)
    for i in range(len(kx)):
        out += float(amplitude[i]) * torch.cos(
            2 * math.pi * (float(kx[i]) * x + float(ky[i]) * y) + float(phase[i])
        )
    return out


def _shift_field(
    coeffs: np.ndarray, z: int, x: torch.Tensor, y: torch.Tensor, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """RELION's polynomial at pixel positions, evaluated directly (torch, any shape)."""
    h, w = shape
    xn, yn = x / w - 0.5, y / h - 0.5
    out = []
    for axis in range(2):
        c = coeffs[axis].reshape(6, 3) @ np.array([z, z * z, z**3], dtype=np.float64)
        out.append(c[0] + c[1] * xn + c[2] * xn**2 + c[3] * yn + c[4] * yn**2 + c[5] * xn * yn)
    return out[0], out[1]


def _analytic_movie(
    shape: tuple[int, int],
    global_shifts: np.ndarray,
    coeffs: np.ndarray,
    waves: tuple[np.ndarray, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames whose aligned sum is exactly the image: ``frame_z(q - s_z(q)) = I(q)``.

    ``frame_z(p) = I(q)`` with ``q`` solving ``q - s_z(q) = p`` (fixed-point iteration; the
    field is smooth, so it converges to machine precision in a few steps). Returns the frames
    ``(F, h, w)`` and the reference image ``I`` on the pixel grid.
    """
    h, w = shape
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    frames = []
    for z in range(len(global_shifts)):
        qx, qy = xx.clone(), yy.clone()
        for _ in range(8):
            sx, sy = _shift_field(coeffs, z, qx, qy, shape)
            qx, qy = xx + global_shifts[z, 0] + sx, yy + global_shifts[z, 1] + sy
        frames.append(_image_at(qx, qy, waves))
    return torch.stack(frames).float(), _image_at(xx, yy, waves).float()


def _trajectory(n_frames: int) -> np.ndarray:
    """RELION global shifts of a plausible drift: fast start, then slow."""
    z = np.arange(n_frames)
    early = 1.0 - np.exp(-z / 2.0)
    return -np.stack([3.0 * early + 0.25 * z, -2.0 * early + 0.15 * z], axis=1)


def _deformation(seed: int, n_frames: int, largest_px: float, shape: tuple[int, int]) -> np.ndarray:
    """``(2, 18)`` random polynomial coefficients, largest |shift| at the last frame given."""
    rng = np.random.default_rng(seed)
    z = np.arange(n_frames, dtype=np.float64)
    temporal, *_ = np.linalg.lstsq(
        np.stack([z, z * z, z**3], 1), 1.0 - np.exp(-z / 3.0), rcond=None
    )
    c = np.zeros((2, 18))
    for axis in range(2):
        for s in range(6):
            c[axis, 3 * s : 3 * s + 3] = rng.normal() * temporal
    h, w = shape
    gy, gx = np.meshgrid(np.linspace(0, h - 1, 9), np.linspace(0, w - 1, 9), indexing="ij")
    sx, sy = polynomial_shift(c[0], c[1], n_frames - 1, gx, gy, shape)
    return c * largest_px / float(np.max(np.hypot(sx, sy)))


def _rms_after_offset(estimate: np.ndarray, truth: np.ndarray) -> float:
    """RMS length of ``estimate - truth`` (..., 2) after removing their mean difference."""
    d = (estimate - truth).reshape(-1, 2)
    d = d - d.mean(axis=0)
    return float(np.sqrt((d**2).sum(axis=1).mean()))


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))


# ---- the polynomial fit


def test_fit_polynomial_recovers_every_coefficient_and_offsets() -> None:
    rng = np.random.default_rng(0)
    cx, cy = rng.normal(size=18), rng.normal(size=18)
    shape = (900, 1200)
    xs, ys = np.meshgrid(np.linspace(60, 1140, 5), np.linspace(40, 860, 4))
    n_patches, n_frames = xs.size, 9
    z = np.repeat(np.arange(n_frames, dtype=float)[None], n_patches, 0).reshape(-1)
    x, y = np.repeat(xs.reshape(-1), n_frames), np.repeat(ys.reshape(-1), n_frames)
    labels = np.repeat(np.arange(n_patches), n_frames)
    offsets = rng.normal(size=(n_patches, 2))
    sx, sy = polynomial_shift(cx, cy, z, x, y, shape)
    observed = np.stack([sx, sy], 1) + offsets[labels]
    fit = fit_polynomial(z, x, y, observed, shape, trajectories=labels)
    assert fit.fitted_terms.all()
    np.testing.assert_allclose(fit.coeffs_x, cx, atol=1e-9)
    np.testing.assert_allclose(fit.coeffs_y, cy, atol=1e-9)
    np.testing.assert_allclose(fit.offsets, offsets, atol=1e-9)
    # a wrong observation with zero weight changes nothing
    spoiled = observed.copy()
    spoiled[5] += 40.0
    weights = np.ones(len(z))
    weights[5] = 0.0
    refit = fit_polynomial(z, x, y, spoiled, shape, weights=weights, trajectories=labels)
    np.testing.assert_allclose(refit.coeffs_x, cx, atol=1e-9)


def test_fit_polynomial_leaves_out_what_the_layout_cannot_determine() -> None:
    # two patch columns, one row: x^2, y, y^2 and xy are not determined and must stay 0
    rng = np.random.default_rng(1)
    c = np.zeros(18)
    c[0:3] = rng.normal(size=3)  # constant
    c[3:6] = rng.normal(size=3)  # x
    x = np.repeat([100.0, 300.0], 6)
    y = np.full(12, 200.0)
    z = np.tile(np.arange(6.0), 2)
    sx, _ = polynomial_shift(c, c, z, x, y, (400, 400))
    fit = fit_polynomial(z, x, y, np.stack([sx, sx], 1), (400, 400))
    assert fit.fitted_terms[:6].all() and not fit.fitted_terms[6:].any()
    np.testing.assert_allclose(fit.coeffs_x, c, atol=1e-9)


def test_fit_polynomial_patch_spread_term() -> None:
    # observations that are means over regions of sd 30 px: the x^2 / y^2 terms' means differ
    # from their values at the centres by sd^2 / size^2, which spread_px accounts for
    rng = np.random.default_rng(2)
    cx, cy = rng.normal(size=18), rng.normal(size=18)
    shape = (600, 600)
    xs, ys = np.meshgrid(np.linspace(60, 540, 4), np.linspace(60, 540, 4))
    z = np.repeat(np.arange(6.0)[None], 16, 0).reshape(-1)
    x, y = np.repeat(xs.reshape(-1), 6), np.repeat(ys.reshape(-1), 6)
    u = np.linspace(-3, 3, 61) * 30.0  # samples of a Gaussian region of sd 30 px
    weight = np.exp(-0.5 * (u / 30.0) ** 2)
    gx, gy = np.meshgrid(u, u)
    gw = (weight[None, :] * weight[:, None]).reshape(-1)
    means = []
    for zi, xi, yi in zip(z, x, y, strict=True):
        sx, sy = polynomial_shift(cx, cy, zi, xi + gx.reshape(-1), yi + gy.reshape(-1), shape)
        means.append([np.sum(sx * gw) / gw.sum(), np.sum(sy * gw) / gw.sum()])
    sd = float(np.sqrt(np.sum(gw * gx.reshape(-1) ** 2) / gw.sum()))
    fit = fit_polynomial(z, x, y, np.array(means), shape, spread_px=(sd, sd))
    np.testing.assert_allclose(fit.coeffs_x, cx, atol=1e-6)
    naive = fit_polynomial(z, x, y, np.array(means), shape)
    assert np.abs(naive.coeffs_x - cx).max() > 1e-3


# ---- patches and bad input


def test_patch_layout_tiles_the_frame() -> None:
    origins, (ph, pw), centres = patch_layout((1024, 1024), (5, 5))
    assert (ph, pw) == (204, 204)
    assert origins[0].tolist() == [0, 0] and origins[-1].tolist() == [1024 - 204, 1024 - 204]
    assert origins[1].tolist()[1] == 0  # x runs fastest
    np.testing.assert_allclose(centres, origins + 101.5)
    origins, (ph, pw), _ = patch_layout((300, 500), (3, 2))
    assert (ph, pw) == (150, 166) and len(origins) == 6


def test_bad_input_raises_clear_errors() -> None:
    frames = torch.zeros((6, 256, 256))
    shifts = np.zeros((6, 2))
    with pytest.raises(ParameterError, match="at least 2 patches"):
        align_patches(frames, shifts, 1.77, patches=(1, 1))
    with pytest.raises(ParameterError, match=f"minimum {MIN_PATCH_PX} px: use at most 4 x 4"):
        align_patches(frames, shifts, 1.77, patches=(5, 5))
    with pytest.raises(ParameterError, match="patches must be >= 1"):
        align_patches(frames, shifts, 1.77, patches=(0, 3))
    with pytest.raises(ParameterError, match="global shifts"):
        align_patches(frames, np.zeros((5, 2)), 1.77, patches=(2, 2))
    with pytest.raises(ParameterError, match="use a smaller group"):
        align_patches(frames, shifts, 1.77, patches=(2, 2), group=6)
    with pytest.raises(ParameterError, match="pixel size"):
        align_patches(frames, shifts, 0.0, patches=(2, 2))
    with pytest.raises(ParameterError, match="weights"):
        shift_and_sum_local(
            frames, shifts, np.zeros(18), np.zeros(18), weights=torch.ones((6, 256, 256))
        )
    with pytest.raises(ParameterError, match="coefficients"):
        shift_and_sum_local(frames, shifts, np.zeros(17), np.zeros(18))


def test_local_shifts_at_matches_the_model() -> None:
    rng = np.random.default_rng(3)
    cx, cy = rng.normal(size=18), rng.normal(size=18)
    x, y = np.array([[10.0, 200.0]]), np.array([[30.0, 90.0]])
    out = local_shifts_at(cx, cy, x, y, 4, (128, 256))
    assert out.shape == (1, 2, 4, 2)
    sx, sy = polynomial_shift(cx, cy, 3, 200.0, 90.0, (128, 256))
    np.testing.assert_allclose(out[0, 1, 3], [sx, sy])
    np.testing.assert_allclose(out[..., 0, :], 0.0)  # frame 0 never moves


# ---- the locally aligned sum


def test_shift_and_sum_local_equals_exact_warp(device: str) -> None:
    shape, n_frames = (192, 224), 6
    coeffs = _deformation(4, n_frames, 3.0, shape)
    shifts = _trajectory(n_frames)
    frames, reference = _analytic_movie(shape, shifts, coeffs, _waves(120, 5, k_max=0.35))
    frames = frames.to(device)
    total = shift_and_sum_local(frames, shifts, coeffs[0], coeffs[1], tile=64)
    assert total.shape == shape and total.dtype == torch.float32
    assert total.device == frames.device
    inner = (slice(16, -16), slice(16, -16))  # edge pixels sample beyond the frame
    mean = (total / n_frames).cpu()
    assert _correlation(mean[inner], reference[inner]) > 0.9999
    relative = float((mean[inner] - reference[inner]).pow(2).mean().sqrt() / reference.std())
    assert relative < 0.015  # measured 0.008 (cubic B-spline, waves up to 0.35 cycles/px)
    # the global shifts alone leave the local deformation: far worse
    global_only = shift_and_sum(torch.fft.rfft2(frames), shifts).cpu() / n_frames
    assert _correlation(global_only[inner], reference[inner]) < 0.99


def test_shift_and_sum_local_whole_pixels_and_weights() -> None:
    # whole-pixel shifts without local motion: cardinal B-spline interpolation is exact, so the
    # sum equals the Fourier-shifted sum away from the edges; weights act per frame
    gen = torch.Generator().manual_seed(0)
    frames = torch.randn((4, 96, 128), generator=gen)
    shifts = np.array([[0, 0], [2, -1], [3, -3], [5, -4]], dtype=float)
    zero = np.zeros(18)
    inner = (slice(12, -12), slice(12, -12))
    exact = shift_and_sum(torch.fft.rfft2(frames), shifts)
    plain = shift_and_sum_local(frames, shifts, zero, zero)
    torch.testing.assert_close(plain[inner], exact[inner], atol=2e-4, rtol=0)
    weights = dose_weights((96, 128), 1.77, frame_end_exposures(4, 8.0), 300.0)
    exact_w = shift_and_sum(torch.fft.rfft2(frames), shifts, weights)
    weighted = shift_and_sum_local(frames, shifts, zero, zero, weights=weights)
    # the filters' tails reach the edges, where the two sums differ (edge value vs wrap-around)
    error = (weighted[inner] - exact_w[inner]).pow(2).mean().sqrt() / exact_w[inner].std()
    assert float(error) < 2e-3


def test_local_sums_in_one_pass_equal_the_sums_one_by_one() -> None:
    shape, n_frames = (96, 128), 5
    gen = torch.Generator().manual_seed(1)
    frames = torch.randn((n_frames, *shape), generator=gen)
    coeffs = _deformation(2, n_frames, 2.0, shape)
    shifts = _trajectory(n_frames)
    per_frame = DoseWeights(shape, 1.77, frame_end_exposures(n_frames, 8.0), 300.0)
    dw, plain = aligned_sums_local(frames, shifts, coeffs[0], coeffs[1], [per_frame, None])
    # the filters made frame by frame weight as the (F, h, w // 2 + 1) ones
    alone = shift_and_sum_local(frames, shifts, coeffs[0], coeffs[1], weights=per_frame.all())
    torch.testing.assert_close(dw, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain, shift_and_sum_local(frames, shifts, coeffs[0], coeffs[1]),
                               atol=1e-5, rtol=0)
    with pytest.raises(ParameterError, match="dose weights are for 5 frames"):
        aligned_sums_local(frames[:4], shifts[:4], coeffs[0], coeffs[1], [per_frame])


# ---- patch alignment on analytic movies (noiseless: exact recovery)


@pytest.fixture(scope="module")
def analytic_movie() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    shape, n_frames = (384, 384), 10
    coeffs = _deformation(6, n_frames, 4.0, shape)
    shifts = _trajectory(n_frames)
    frames, _ = _analytic_movie(shape, shifts, coeffs, _waves(40, 7, k_max=0.15))
    return frames, shifts, coeffs


def _field_error(result, global_shifts, true_global, coeffs, shape) -> float:  # type: ignore[no-untyped-def]
    """RMS error of the total shift field on a 9 x 9 grid over the whole frame."""
    h, w = shape
    gy, gx = np.meshgrid(np.linspace(0, h - 1, 9), np.linspace(0, w - 1, 9), indexing="ij")
    n_frames = len(true_global)
    estimate = global_shifts + local_shifts_at(
        result.coeffs_x, result.coeffs_y, gx, gy, n_frames, shape
    )
    truth = true_global + local_shifts_at(coeffs[0], coeffs[1], gx, gy, n_frames, shape)
    return _rms_after_offset(estimate, truth)


def test_noiseless_patches_recover_the_polynomial(analytic_movie) -> None:  # type: ignore[no-untyped-def]
    frames, true_global, coeffs = analytic_movie
    shape = tuple(frames.shape[-2:])
    found = align_global(frames, 3.54).shifts
    result = align_patches(frames, found, 3.54, patches=(3, 3))
    n_frames = len(true_global)
    assert result.patch_shifts.shape == (9, n_frames, 2)
    assert result.fitted_shifts.shape == (9, n_frames, 2)
    assert result.patch_centres.shape == (9, 2) and result.patch_size_px == (128, 128)
    global_only = _field_error(
        type("R", (), {"coeffs_x": np.zeros(18), "coeffs_y": np.zeros(18)})(),
        found,
        true_global,
        coeffs,
        shape,
    )
    error = _field_error(result, found, true_global, coeffs, shape)
    assert global_only > 0.8  # a real deformation (largest 4 px; global only: 1.06 px)
    assert error < 0.03  # measured 0.010 px over the whole frame, corners included
    assert result.rms_residual_px < 0.03
    # at the patch centres the measured shifts agree with the fitted model
    np.testing.assert_allclose(result.patch_shifts, result.fitted_shifts, atol=0.05)


def test_frame_groups_and_a_blank_patch(analytic_movie) -> None:  # type: ignore[no-untyped-def]
    frames, true_global, coeffs = analytic_movie
    shape = tuple(frames.shape[-2:])
    # groups of 2 frames: the shifts are interpolated back to every frame
    grouped = align_patches(frames, true_global, 3.54, patches=(3, 3), group=2)
    assert grouped.patch_shifts.shape == (9, len(true_global), 2)
    assert _field_error(grouped, true_global, true_global, coeffs, shape) < 0.04  # 0.014
    # a patch without signal (flat) measures nonsense: the robust fit must not follow it
    blank = frames.clone()
    blank[:, 128:256, 128:256] = 0.0
    result = align_patches(blank, true_global, 3.54, patches=(3, 3))
    assert _field_error(result, true_global, true_global, coeffs, shape) < 0.05  # 0.016
    assert result.patch_weights[4] < 0.5 * np.median(result.patch_weights)


# ---- the movie simulator: noiseless and at the tutorial's dose


def _simulated_movie(
    size: int, n_frames: int, pixel_size: float, local_angstrom: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Gain-corrected, defect-filled raw frames, noiseless frames, true global shifts, coeffs."""
    from cryospa.sim.movies import MotionModel, MovieSimulator

    sim = MovieSimulator(
        simulation_maps("builtin:ldh", pixel_size),
        n_movies=1,
        movie_shape_px=(size, size),
        n_frames=n_frames,
        dose_per_frame=DOSE,
        particles_per_micrograph=max(10, 60 * size * size // 1024**2),
        seed=seed,
        motion=MotionModel(local_angstrom=local_angstrom),
    )
    movie = sim.movie(0, keep_expected=True)
    raw = movie.raw.astype(np.float32) * sim.gain.astype(np.float32)
    fill = float(raw.mean())  # defect correction, the job's business: the mean
    raw[:, :, sim.dead_columns] = fill
    if len(sim.hot_pixels):
        raw[:, sim.hot_pixels[:, 1], sim.hot_pixels[:, 0]] = fill
    assert movie.expected is not None
    return (
        torch.from_numpy(raw),
        torch.from_numpy(movie.expected),
        sim.global_shifts[0],
        sim.local_coeffs[0],
    )


def _patch_errors(result, found: np.ndarray, true_global: np.ndarray, coeffs: np.ndarray, shape):  # type: ignore[no-untyped-def]
    """RMS error at the patch centres of global only and of global + local (constant removed)."""
    n_frames = len(true_global)
    x, y = result.patch_centres[:, 0], result.patch_centres[:, 1]
    truth = true_global + local_shifts_at(coeffs[0], coeffs[1], x, y, n_frames, shape)
    estimate = found + local_shifts_at(result.coeffs_x, result.coeffs_y, x, y, n_frames, shape)
    return _rms_after_offset(np.broadcast_to(found, truth.shape), truth), _rms_after_offset(
        estimate, truth
    )


@pytest.fixture(scope="module")
def small_movie():  # type: ignore[no-untyped-def]
    # 512 x 512 px x 12 frames at twice the tutorial's pixel size, strong local motion (12 Å)
    return _simulated_movie(512, 12, 3.54, 12.0, seed=5)


def test_simulated_movie_noiseless_exact(small_movie) -> None:  # type: ignore[no-untyped-def]
    _, expected, true_global, coeffs = small_movie
    result = align_patches(expected, true_global, 3.54, patches=(3, 3))
    glob, local = _patch_errors(result, true_global, true_global, coeffs, (512, 512))
    assert glob > 0.6  # the deformation is real (global only: 0.90 px)
    assert local < 0.05  # measured 0.02 px


def test_simulated_movie_at_tutorial_dose(small_movie) -> None:  # type: ignore[no-untyped-def]
    raw, _, true_global, coeffs = small_movie
    found = align_global(raw, 3.54).shifts
    result = align_patches(raw, found, 3.54, patches=(3, 3))
    glob, local = _patch_errors(result, found, true_global, coeffs, (512, 512))
    assert glob > 0.8  # global alignment alone is far off
    assert local < 0.5  # the criterion (measured 0.26; global only 0.91)
    assert local < 0.5 * glob


@pytest.mark.slow
@pytest.mark.parametrize("local_angstrom", [3.0, 10.0])
def test_tutorial_size_movie(local_angstrom: float) -> None:
    # the tutorial's acquisition: 1024 x 1024 px x 24 frames, 1.77 Å/px, 1.277 e/Å² per frame,
    # 5 x 5 patches; the simulator's default local deformation (3 Å) and a strong one (10 Å)
    raw, _, true_global, coeffs = _simulated_movie(1024, 24, 1.77, local_angstrom, seed=11)
    found = align_global(raw, 1.77).shifts
    result = align_patches(raw, found, 1.77, patches=(5, 5))
    glob, local = _patch_errors(result, found, true_global, coeffs, (1024, 1024))
    assert local < 0.5  # measured 0.26 (3 Å) and 0.36 (10 Å); global only 0.67 and 2.18
    assert local < 0.6 * glob
