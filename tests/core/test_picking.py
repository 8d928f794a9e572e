"""LoG picking and peak finding: analytic LoG responses, known peaks, known particle positions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryospa.core.picking import (
    _periodic_rfft2,
    find_peaks,
    local_maxima,
    log_diameters,
    log_filter,
    match_positions,
    normalise_micrograph,
    pick_log,
    refine_subpixel,
    suppress_close,
    working_shape,
)

APIX = 2.0
DIAM = 100.0


def _micrograph(
    shape: tuple[int, int] = (300, 420), *, noise: float = 0.5, seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, np.ndarray]:
    """Dark projected spheres of diameter ``DIAM`` on a jittered grid, plus white noise.

    Returns the ``(h, w)`` image and the ``(n, 2)`` true centres (x, y) in pixels.
    """
    gen = torch.Generator().manual_seed(seed)
    h, w = shape
    r = DIAM / 2 / APIX
    ys = torch.arange(h, dtype=torch.float64)[:, None]
    xs = torch.arange(w, dtype=torch.float64)[None, :]
    img = torch.zeros(shape, dtype=torch.float64)
    centres = []
    for yc in np.arange(1.3 * r + 8, h - 1.3 * r - 8, 3.2 * r):
        for xc in np.arange(1.3 * r + 8, w - 1.3 * r - 8, 3.2 * r):
            jitter = torch.rand(2, generator=gen, dtype=torch.float64).numpy() - 0.5
            x0, y0 = xc + 6 * jitter[0], yc + 6 * jitter[1]
            centres.append((x0, y0))
            img -= torch.sqrt(torch.clamp(r * r - (xs - x0) ** 2 - (ys - y0) ** 2, min=0)) / r
    img += noise * torch.randn(shape, generator=gen, dtype=torch.float64)
    return (img + 5.0).to(dtype), np.array(centres)


def _match(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Distance from each true centre to the nearest pick (pixels)."""
    return np.linalg.norm(found[:, None] - truth[None], axis=-1).min(axis=0)


# ---------------------------------------------------------------------------------------------
# the LoG filter


def test_log_diameters_as_relion() -> None:
    d, labels = log_diameters(150, 180)
    assert d == pytest.approx([30, 37.5, 50, 75, 150, 165, 180, 360, 540, 720, 900])
    assert labels == [-1, -1, -1, -1, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="min diameter <= max"):
        log_diameters(180, 150)


def test_working_shape() -> None:
    # RELION: 2 * round(1024 * 1.77 / 20) = 182 -> 9.96 Å pixels, Nyquist at 20 Å
    assert working_shape((1024, 1024), pixel_size_angstrom=1.77, max_resolution_angstrom=20) == (
        182, 182)
    assert working_shape((3000, 4000), pixel_size_angstrom=1.0, max_resolution_angstrom=20) == (
        300, 400)
    # never up-sampled
    assert working_shape((100, 90), pixel_size_angstrom=5.0, max_resolution_angstrom=4) == (100, 90)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_response_of_gaussian_blob_is_analytic(dtype: torch.dtype, device: str) -> None:
    # a Gaussian blob exp(-r^2 / 2 s^2) gives at its centre 2 pi^2 s^2 / (k_d^2 a^2) with
    # a = 2 pi^2 s^2 + 1 / (2 k_d^2), k_d = 1 / (2 d): largest (= 1/2) for d = pi s
    n, s = 200, 6.0
    yy, xx = torch.meshgrid(torch.arange(n, dtype=dtype), torch.arange(n, dtype=dtype),
                            indexing="ij")
    blob = torch.exp(-((xx - 100) ** 2 + (yy - 100) ** 2) / (2 * s * s)).to(device)
    values = []
    for d in (10.0, 15.0, math.pi * s, 25.0, 30.0):
        out = log_filter(blob, pixel_size_angstrom=1.0, diameter_angstrom=d)
        assert out.shape == blob.shape and out.dtype == dtype and out.device == blob.device
        kd = 1 / (2 * d)
        a = 2 * math.pi**2 * s * s + 1 / (2 * kd * kd)
        expected = 2 * math.pi**2 * s * s / (kd * kd * a * a)
        assert float(out[100, 100]) == pytest.approx(expected, rel=1e-4)
        values.append(float(out[100, 100]))
    assert int(np.argmax(values)) == 2 and values[2] == pytest.approx(0.5, rel=1e-4)


def test_periodic_component_has_the_inside_laplacian() -> None:
    # the periodic Laplacian of the periodic component is the Laplacian of the image computed
    # with neighbours inside the image only (Moisan 2011): no jumps across the edges
    gen = torch.Generator().manual_seed(3)
    x = torch.randn((40, 56), generator=gen, dtype=torch.float64) + torch.linspace(0, 9, 56)
    p = torch.fft.irfft2(_periodic_rfft2(x), s=x.shape)
    lap_p = sum(torch.roll(p, s, d) for s in (1, -1) for d in (0, 1)) - 4 * p
    padded = torch.nn.functional.pad(x[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    lap_inside = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
                  - 4 * x)  # a replicated neighbour adds 0: only inside neighbours count
    torch.testing.assert_close(lap_p, lap_inside)


def test_normalise_micrograph_replaces_outliers() -> None:
    gen = torch.Generator().manual_seed(1)
    x = 100 + 10 * torch.randn((128, 128), generator=gen)
    x[5, 7] = 1e6  # a hot pixel
    y = normalise_micrograph(x)
    assert float(y.mean()) == pytest.approx(0, abs=1e-5)
    assert float(y.std(unbiased=False)) == pytest.approx(1, abs=1e-4)
    assert abs(float(y[5, 7])) < 0.5  # set to the mean before scaling
    assert torch.equal(normalise_micrograph(torch.full((8, 8), 3.0)), torch.zeros(8, 8))


# ---------------------------------------------------------------------------------------------
# peak finding


def test_local_maxima_and_subpixel_refinement(device: str) -> None:
    # three paraboloid peaks at sub-pixel positions: found and located exactly
    h, w = 60, 80
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    peaks = [(12.3, 15.6, 5.0), (40.8, 30.2, 4.0), (25.45, 64.7, 3.0)]  # (y, x, height)
    score = torch.full((h, w), -1e9, dtype=torch.float64)
    for y0, x0, top in peaks:
        score = torch.maximum(score, top - 0.1 * ((yy - y0) ** 2 + (xx - x0) ** 2))
    score = score.to(device)
    index = local_maxima(score, threshold=2.5)
    assert index.device == score.device
    found = refine_subpixel(score, index).cpu().numpy()
    assert len(found) == 3
    for y0, x0, _ in peaks:
        assert np.abs(found - [y0, x0]).sum(axis=1).min() < 1e-9
    assert len(local_maxima(score, threshold=3.5)) == 2
    assert len(local_maxima(score, threshold=2.5, exclude_border_px=13)) == 2  # (12.3, 15.6) out
    with pytest.raises(ValueError, match="2D"):
        local_maxima(score[None])


def test_suppress_close_is_greedy_best_first(device: str) -> None:
    pos = torch.tensor([[0.0, 0.0], [0.0, 3.0], [0.0, 6.0], [0.0, 9.5], [20.0, 0.0]],
                       device=device)
    scores = torch.tensor([1.0, 3.0, 2.0, 0.5, 0.1], device=device)
    # 1 (best) removes 0 and 2; 3 is 6.5 from 1: kept; 4 is far: kept
    keep = suppress_close(pos, scores, 4.0)
    assert keep.device == pos.device
    assert keep.tolist() == [False, True, False, True, True]
    # a radius per peak: the best one excludes only within 2.5, so 2 survives, excludes 3 (at
    # 3.5) but not 0 (at 6)
    keep = suppress_close(pos, scores, torch.tensor([4.0, 2.5, 4.0, 4.0, 4.0]))
    assert keep.tolist() == [True, True, True, False, True]
    assert suppress_close(pos[:0], scores[:0], 1.0).shape == (0,)


def test_find_peaks_max_score_excludes_neighbours() -> None:
    score = torch.zeros((40, 40))
    score[10, 10], score[10, 14] = 10.0, 2.0  # contamination and a weak peak next to it
    score[30, 30] = 3.0
    peaks = find_peaks(score, min_distance_px=6.0, threshold=1.0, max_score=5.0)
    assert peaks.index.tolist() == [[30, 30]] and peaks.n_over_max == 1
    peaks = find_peaks(score, min_distance_px=6.0, threshold=1.0)
    assert peaks.index.tolist() == [[10, 10], [30, 30]]  # best first
    assert peaks.score.tolist() == [10.0, 3.0]


def test_match_positions_one_to_one_closest_first() -> None:
    found = torch.tensor([[0.0, 0.0], [10.0, 0.0], [10.5, 0.0], [30.0, 30.0]])
    truth = torch.tensor([[10.2, 0.0], [0.1, 0.0], [50.0, 50.0]])
    i_found, i_truth = match_positions(found, truth, max_distance=1.0)
    # (0, 1) at 0.1 first, then (1, 0) at 0.2; pick 2 is as close to truth 0 but comes later
    assert i_found.tolist() == [0, 1] and i_truth.tolist() == [1, 0]
    i_found, _ = match_positions(found[:0], truth, max_distance=1.0)
    assert i_found.shape == (0,)


# ---------------------------------------------------------------------------------------------
# the picker


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pick_log_finds_known_particles(dtype: torch.dtype, device: str) -> None:
    img, truth = _micrograph(noise=0.05, dtype=dtype)
    res = pick_log(img.to(device), pixel_size_angstrom=APIX, min_diameter_angstrom=80,
                   max_diameter_angstrom=110)
    assert res.xy.device == img.to(device).device and res.xy.dtype == torch.float64
    assert len(res) == len(truth) == 15  # all found, nothing else
    # within 0.25 px (on a 10 Å working grid, i.e. 5 px): sub-pixel refinement works
    assert _match(res.xy.cpu().numpy(), truth).max() < 0.25
    assert res.working_pixel_size_angstrom == pytest.approx((10.0, 10.0))
    assert set(res.diameter_angstrom.tolist()) <= {80.0, 95.0, 110.0}
    assert bool((res.fom[:-1] >= res.fom[1:]).all())  # best first
    # white particles: the same picks on the inverted image
    white = pick_log(-img.to(device), pixel_size_angstrom=APIX, min_diameter_angstrom=80,
                     max_diameter_angstrom=110, white=True)
    torch.testing.assert_close(white.xy, res.xy, atol=1e-3, rtol=0)


def test_pick_log_in_noise_and_thresholds() -> None:
    img, truth = _micrograph(noise=1.0, seed=2)
    res = pick_log(img, pixel_size_angstrom=APIX, min_diameter_angstrom=80,
                   max_diameter_angstrom=110)
    found = res.xy.numpy()
    assert (_match(found, truth) < 0.1 * DIAM / APIX).all()  # every particle, within 0.1 D
    assert len(found) <= len(truth) + 2
    # the threshold (standard deviations) keeps the better picks only
    strict = pick_log(img, pixel_size_angstrom=APIX, min_diameter_angstrom=80,
                      max_diameter_angstrom=110, adjust_threshold=float(res.fom[5]))
    assert len(strict) == 6
    assert bool((strict.fom >= res.fom[5] - 1e-6).all())
    # the upper threshold drops the strongest
    upper = pick_log(img, pixel_size_angstrom=APIX, min_diameter_angstrom=80,
                     max_diameter_angstrom=110, upper_threshold=float(res.fom[1]))
    assert len(upper) == len(res) - 2 and upper.n_too_high == 2


def test_pick_log_selects_the_size_range() -> None:
    # discs of 100 and 40 Å side by side: each diameter range picks its own, nothing else
    h, w = 320, 400
    ys = torch.arange(h, dtype=torch.float64)[:, None]
    xs = torch.arange(w, dtype=torch.float64)[None, :]
    img = torch.zeros((h, w), dtype=torch.float64)
    centres: dict[float, list[tuple[float, float]]] = {25.0: [], 10.0: []}
    for k, (yc, xc) in enumerate((y, x) for y in range(50, h - 40, 75)
                                 for x in range(50, w - 40, 75)):
        r = 25.0 if k % 2 == 0 else 10.0
        centres[r].append((xc, yc))
        img -= torch.sqrt(torch.clamp(r * r - (xs - xc) ** 2 - (ys - yc) ** 2, min=0)) / 25
    img += 0.05 * torch.randn((h, w), generator=torch.Generator().manual_seed(0),
                              dtype=torch.float64)
    for (lo, hi, max_res), r in (((80, 110, 20), 25.0), ((30, 50, 8), 10.0)):
        res = pick_log(img.float(), pixel_size_angstrom=APIX, min_diameter_angstrom=lo,
                       max_diameter_angstrom=hi, max_resolution_angstrom=max_res)
        truth = np.array(centres[r])
        assert len(res) == len(truth) == 10
        assert _match(res.xy.numpy(), truth).max() < 1.0


def test_pick_log_min_distance() -> None:
    img, truth = _micrograph(noise=0.05)
    # a fixed minimum distance larger than the grid spacing (160 Å +- 6 px) keeps fewer picks
    res = pick_log(img, pixel_size_angstrom=APIX, min_diameter_angstrom=80,
                   max_diameter_angstrom=110, min_distance_angstrom=200)
    xy = res.xy.numpy()
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 1e9
    assert 0 < len(res) < len(truth) and d.min() * APIX >= 200 * 0.99
    assert (_match(truth, xy) < 1.0).all()  # the picks kept are particles


def test_pick_log_empty_and_bad_input() -> None:
    res = pick_log(torch.full((200, 200), 7.0), pixel_size_angstrom=APIX,
                   min_diameter_angstrom=80, max_diameter_angstrom=110)
    assert len(res) == 0 and res.xy.shape == (0, 2)
    with pytest.raises(ValueError, match="2D"):
        pick_log(torch.zeros(3, 20, 20), pixel_size_angstrom=APIX, min_diameter_angstrom=80,
                 max_diameter_angstrom=110)
    with pytest.raises(ValueError, match="min diameter <= max"):
        pick_log(torch.zeros(20, 20), pixel_size_angstrom=APIX, min_diameter_angstrom=80,
                 max_diameter_angstrom=50)
