"""Particle extraction numerics: box centring, edges, ramp removal, normalisation, re-centring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryospa.core.extraction import (
    _rescale_images,
    background_mask,
    box_centres,
    boxes_inside,
    boxes_touch,
    extract_boxes,
    normalise_background,
    preprocess_particles,
    recentre_coordinates,
    relion_round,
    subtract_background_ramp,
)
from cryospa.core.fourier import fourier_rescale, shift_images


def _ramp_micrograph(h: int, w: int, device: str = "cpu") -> torch.Tensor:
    """Pixel (row, col) holds 1000 * row + col: every box says where it came from."""
    rows = torch.arange(h, dtype=torch.float64, device=device)[:, None]
    cols = torch.arange(w, dtype=torch.float64, device=device)[None, :]
    return 1000 * rows + cols


def test_box_centres_truncate_towards_zero() -> None:
    coords = torch.tensor([[10.7, 3.2], [0.999, 5.0], [-0.5, 7.9999]])
    assert box_centres(coords).tolist() == [[10, 3], [0, 5], [0, 7]]
    with pytest.raises(ValueError, match="finite"):
        box_centres(torch.tensor([[math.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        box_centres(torch.zeros(3, 3))


@pytest.mark.parametrize("box", [8, 9])
def test_extract_boxes_put_the_coordinate_pixel_at_the_box_centre(device: str, box: int) -> None:
    mic = _ramp_micrograph(40, 50, device).to(torch.float32)
    coords = torch.tensor([[20.6, 15.2], [4.0, box // 2 + 0.9], [50 - box + box // 2, 40 - 5]])
    centres = box_centres(coords)
    inside = boxes_inside(centres, box, (40, 50))
    assert inside.tolist() == [True, True, True]
    boxes = extract_boxes(mic, centres, box)
    assert boxes.shape == (3, box, box) and boxes.dtype == torch.float32
    assert boxes.device.type == device
    for b, (cx, cy) in zip(boxes, centres.tolist(), strict=True):
        assert b[box // 2, box // 2].item() == 1000 * cy + cx
        first_x, first_y = cx - box // 2, cy - box // 2
        expected = mic[first_y : first_y + box, first_x : first_x + box]
        assert torch.equal(b, expected)


def test_boxes_inside_and_touching_at_the_edges() -> None:
    box, shape = 8, (30, 40)  # boxes span centre - 4 .. centre + 3
    centres = torch.tensor([[4, 4], [3, 10], [36, 26], [37, 10], [-3, 10], [-4, 10], [43, 33],
                            [44, 10]])
    assert boxes_inside(centres, box, shape).tolist() == [True, False, True, False, False, False,
                                                          False, False]
    assert boxes_touch(centres, box, shape).tolist() == [True, True, True, True, True, False,
                                                         True, False]


def test_pad_edges_repeats_the_nearest_pixels_as_relion() -> None:
    mic = torch.from_numpy(np.random.default_rng(0).normal(size=(20, 24)))
    centres = torch.tensor([[1, 2], [22, 18], [-2, 10]])
    boxes = extract_boxes(mic, centres, 8, pad_edges=True)
    padded = np.pad(mic.numpy(), 10, mode="edge")  # the edge value continued outwards
    for b, (cx, cy) in zip(boxes.numpy(), centres.tolist(), strict=True):
        y0, x0 = cy - 4 + 10, cx - 4 + 10
        np.testing.assert_array_equal(b, padded[y0 : y0 + 8, x0 : x0 + 8])
    with pytest.raises(ValueError, match="cross the edge"):
        extract_boxes(mic, centres, 8)
    with pytest.raises(ValueError, match="entirely outside"):
        extract_boxes(mic, torch.tensor([[-9, 5]]), 8, pad_edges=True)


def test_a_particle_sits_at_the_centre_minus_its_origin() -> None:
    """A blob at (x, y) is found at B//2 + (x - int(x)) in its box: origin = -(x - int(x))."""
    n, box = 96, 32
    x, y = 47.3, 40.8
    yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float64),
                            torch.arange(n, dtype=torch.float64), indexing="ij")
    mic = torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.5**2))
    b = extract_boxes(mic, box_centres(torch.tensor([[x, y]])), box)[0]
    origin = torch.tensor([[-(x - int(x)), -(y - int(y))]], dtype=torch.float64)
    centred = shift_images(b[None], origin)[0]  # shifting by +origin centres the particle
    peak = int(torch.argmax(centred))
    assert divmod(peak, box) == (box // 2, box // 2)
    cy, cx = (float((centred * g).sum() / centred.sum()) for g in
              torch.meshgrid(torch.arange(box, dtype=torch.float64),
                             torch.arange(box, dtype=torch.float64), indexing="ij"))
    assert abs(cx - box // 2) < 1e-6 and abs(cy - box // 2) < 1e-6


def test_background_mask_counts_pixels_beyond_the_radius() -> None:
    mask = background_mask(10, 3)
    d = np.arange(10) - 5
    expected = (d[:, None] ** 2 + d[None, :] ** 2) > 9
    np.testing.assert_array_equal(mask.numpy(), expected)
    assert not background_mask(8, 4)[4, 0]  # exactly r away: not background
    with pytest.raises(ValueError, match="half"):
        background_mask(10, 6)


def _relion_normalise(image: np.ndarray, radius: int, ramp: bool) -> np.ndarray:
    """A loop-by-loop reference of RELION's normalise(): plane fit, then background stats."""
    b = image.shape[0]
    img = image.astype(np.float64).copy()
    pts = [(j - b // 2, i - b // 2, img[i, j]) for i in range(b) for j in range(b)
           if (i - b // 2) ** 2 + (j - b // 2) ** 2 > radius * radius]
    if ramp:
        a = np.array([[x, y, 1.0] for x, y, _ in pts])
        coef, *_ = np.linalg.lstsq(a, np.array([v for *_, v in pts]), rcond=None)
        for i in range(b):
            for j in range(b):
                img[i, j] -= coef[0] * (j - b // 2) + coef[1] * (i - b // 2) + coef[2]
    bg = np.array([img[y + b // 2, x + b // 2] for x, y, _ in pts])
    avg = bg.mean()
    sd = math.sqrt(((bg - avg) ** 2).mean())
    return (img - avg) / sd


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ramp", [True, False])
def test_normalise_background_matches_relion(device: str, dtype: torch.dtype, ramp: bool) -> None:
    rng = np.random.default_rng(3)
    b, r = 24, 9
    yy, xx = np.mgrid[0:b, 0:b]
    images = rng.normal(5.0, 2.0, (3, b, b)) + 0.3 * xx - 0.2 * yy  # noise on a slope
    out = normalise_background(torch.tensor(images, dtype=dtype, device=device), r, ramp=ramp)
    assert out.dtype == dtype and out.device.type == device and out.shape == (3, b, b)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for got, img in zip(out.cpu().numpy(), images, strict=True):
        np.testing.assert_allclose(got, _relion_normalise(img, r, ramp), atol=tol)
        bg = got[background_mask(b, r).numpy()]
        assert abs(bg.mean()) < tol and abs(bg.std() - 1) < tol


def test_ramp_removal_takes_out_a_plane_exactly() -> None:
    b = 16
    yy, xx = torch.meshgrid(torch.arange(b, dtype=torch.float64),
                            torch.arange(b, dtype=torch.float64), indexing="ij")
    plane = 3.0 + 0.5 * xx - 1.25 * yy
    bump = torch.zeros(b, b, dtype=torch.float64)
    bump[6:10, 6:10] = 7.0  # inside the radius: does not tilt the fit
    out = subtract_background_ramp((plane + bump)[None], 5)[0]
    torch.testing.assert_close(out, bump, atol=1e-10, rtol=0)


def test_flat_background_is_left_as_relion_does() -> None:
    img = torch.zeros(1, 12, 12, dtype=torch.float64)
    img[0, 5:7, 5:7] = 4.0
    out = normalise_background(img, 4)
    torch.testing.assert_close(out, img, atol=1e-12, rtol=0)


def test_preprocess_rescales_then_normalises_then_inverts() -> None:
    rng = np.random.default_rng(5)
    boxes = torch.tensor(rng.normal(100.0, 10.0, (4, 32, 32)))
    out = preprocess_particles(boxes, output_size=16, background_radius_px=6, invert_contrast=True)
    expected = -normalise_background(fourier_rescale(boxes, (16, 16)), 6)
    torch.testing.assert_close(out, expected)
    assert preprocess_particles(boxes) is boxes  # nothing asked, nothing done
    with pytest.raises(ValueError, match="half"):
        preprocess_particles(boxes, output_size=16, background_radius_px=9)


@pytest.mark.parametrize("sizes", [(64, 32), (64, 48), (44, 30), (32, 64), (30, 44), (33, 20)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_rescale_equals_fourier_rescale(device: str, sizes: tuple[int, int],
                                             dtype: torch.dtype) -> None:
    b, s = sizes
    images = torch.randn(3, b, b, dtype=dtype, device=device)
    fast = _rescale_images(images, s)
    assert fast.shape == (3, s, s) and fast.dtype == dtype and fast.device == images.device
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(fast, fourier_rescale(images, (s, s)), atol=tol, rtol=tol)


def test_relion_round_halves_away_from_zero() -> None:
    x = torch.tensor([2.5, -2.5, 0.49, -0.5, 1.5000001, -3.2])
    assert relion_round(x).tolist() == [3.0, -3.0, 0.0, -1.0, 2.0, -3.0]


def test_recentre_keeps_the_particle_position_and_a_sub_pixel_origin() -> None:
    apix = 1.77
    coords = torch.tensor([[100.0, 200.0], [50.25, 60.75], [10.0, 10.0]], dtype=torch.float64)
    origins_px = torch.tensor([[3.4, -2.6], [-2.5, 2.5], [0.2, -0.49]], dtype=torch.float64)
    new_coords, new_origins = recentre_coordinates(coords, origins_px * apix, apix)
    torch.testing.assert_close(new_coords, torch.tensor(
        [[97.0, 203.0], [53.25, 57.75], [10.0, 10.0]], dtype=torch.float64))
    torch.testing.assert_close(new_origins / apix, torch.tensor(
        [[0.4, 0.4], [0.5, -0.5], [0.2, -0.49]], dtype=torch.float64))
    # the particle (coordinate - origin) has not moved
    torch.testing.assert_close(new_coords - new_origins / apix, coords - origins_px)
    with pytest.raises(ValueError, match="pixel size"):
        recentre_coordinates(coords, origins_px, 0.0)
