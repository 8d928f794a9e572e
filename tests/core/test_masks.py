"""Tests of cryospa.core.masks: soft spheres / circles, masks from maps (vs relion_mask_create)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryospa.core.masks import _squared_distance_to, mask_from_map, soft_circle, soft_sphere
from tests.conftest import requires_relion, run_relion

DTYPES = [torch.float32, torch.float64]


def _radius(shape, centre, device, dtype=torch.float64):
    axes = [
        torch.arange(n, dtype=dtype, device=device) - c for n, c in zip(shape, centre, strict=True)
    ]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(g**2 for g in grids))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [24, 25])
def test_soft_sphere_values(device, dtype, n):
    radius, width = 5.0, 4.0
    m = soft_sphere(n, radius, edge_width_px=width, device=device, dtype=dtype)
    assert m.shape == (n, n, n) and m.dtype == dtype and m.device.type == torch.device(device).type
    c = n // 2
    r = _radius((n, n, n), (c, c, c), device)
    assert torch.all(m[r <= radius] == 1)
    assert torch.all(m[r >= radius + width] == 0)
    # 0.5 in the middle of the edge: the voxel 7 px from the centre along x
    assert float(m[c, c, c + 7]) == pytest.approx(0.5, abs=1e-6)
    edge = (r > radius) & (r < radius + width)
    expected = 0.5 + 0.5 * torch.cos(math.pi * (r[edge] - radius) / width)
    torch.testing.assert_close(m[edge].double(), expected, atol=1e-6, rtol=0)
    assert torch.all((m[edge] > 0) & (m[edge] < 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(20, 20), (21, 18)])
def test_soft_circle_values_and_centre(device, dtype, shape):
    centre = (8.5, 7.0)
    m = soft_circle(shape, 3.0, edge_width_px=2.0, centre=centre, device=device, dtype=dtype)
    assert m.shape == shape and m.dtype == dtype
    r = _radius(shape, centre, device)
    assert torch.all(m[r <= 3.0] == 1) and torch.all(m[r >= 5.0] == 0)
    # default centre is (h // 2, w // 2); hard edge with width 0
    hard = soft_circle(shape, 4.0, edge_width_px=0.0, device=device, dtype=dtype)
    r0 = _radius(shape, (shape[0] // 2, shape[1] // 2), device)
    torch.testing.assert_close(hard, (r0 <= 4.0).to(dtype))


def test_soft_mask_errors():
    with pytest.raises(ValueError, match="radius"):
        soft_sphere(10, -1.0, edge_width_px=2.0)
    with pytest.raises(ValueError, match="3 positive sizes"):
        soft_sphere((10, 10), 3.0, edge_width_px=2.0)
    with pytest.raises(ValueError, match="centre needs 2"):
        soft_circle(10, 3.0, edge_width_px=2.0, centre=(1.0, 2.0, 3.0))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("max_distance", [2.0, 4.5])
def test_squared_distance_matches_scipy(device, ndim, max_distance):
    ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(ndim)
    shape = (23, 26, 21)[-ndim:]
    region = torch.rand(shape, generator=g) > 0.985
    region[0, 0] = True  # at least one pixel
    d2 = _squared_distance_to(region.to(device), ndim, max_distance).cpu().double()
    ref = torch.from_numpy(ndimage.distance_transform_edt(~region.numpy())) ** 2
    near = ref <= max_distance**2
    torch.testing.assert_close(d2[near], ref[near])
    assert torch.all(d2[~near] > max_distance**2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [20, 21])
def test_mask_from_map_single_voxel(device, dtype, n):
    c = n // 2
    vol = torch.zeros(n, n, n, dtype=dtype, device=device)
    vol[c, c, c] = 1.0
    # soft edge only: a raised cosine around the voxel, = soft sphere of radius 0
    soft = mask_from_map(vol, threshold=0.5, soft_edge_px=5.0)
    assert soft.dtype == dtype and soft.device == vol.device and soft.shape == vol.shape
    torch.testing.assert_close(
        soft, soft_sphere(n, 0.0, edge_width_px=5.0, device=device, dtype=dtype), atol=1e-6, rtol=0
    )
    # extension: everything strictly closer than 3.5 px
    ext = mask_from_map(vol, threshold=0.5, extend_px=3.5)
    r = _radius((n, n, n), (c, c, c), device)
    torch.testing.assert_close(ext, (r < 3.5).to(dtype))
    # shrinking a ball by 2 px keeps the voxels at distance >= 2 from every outside voxel
    ball = (r <= 6.0).to(dtype)
    shrunk = mask_from_map(ball, threshold=0.5, extend_px=-2.0)
    assert torch.all(shrunk <= ball)
    assert torch.all(shrunk[r <= 4.0] == 1) and torch.all(shrunk[r > 5.0] == 0)


def test_mask_from_map_batched_and_errors(device):
    g = torch.Generator().manual_seed(3)
    vols = torch.rand((2, 16, 16, 16), generator=g, dtype=torch.float64).to(device)
    kw = dict(threshold=0.97, extend_px=1.5, soft_edge_px=3.0)
    both = mask_from_map(vols, **kw)
    for i in range(2):
        torch.testing.assert_close(both[i], mask_from_map(vols[i], **kw))
    assert float(both.min()) >= 0 and float(both.max()) <= 1
    with pytest.raises(ValueError, match="pixel_size_angstrom"):
        mask_from_map(vols, threshold=0.5, lowpass_angstrom=10.0)
    with pytest.raises(ValueError, match="soft edge"):
        mask_from_map(vols, threshold=0.5, soft_edge_px=-1.0)


BETAGAL = Path("maps/betagal_relion1x_test/ref_model.mrc")


@pytest.mark.relion
@requires_relion
@pytest.mark.parametrize(
    ("threshold", "extend", "width", "lowpass"),
    [
        (0.0002, 3, 5, None),
        (0.0003, 2, 6, 15.0),  # 23.6 shells: rounded to shell 24 as RELION
    ],
)
def test_mask_from_map_matches_relion_mask_create(
    shared_data, tmp_path, threshold, extend, width, lowpass
):
    src = shared_data / BETAGAL
    if not src.is_file():
        pytest.skip(f"{src} not found")
    shutil.copy(src, tmp_path / "map.mrc")
    pixel = 3.54
    args = [
        "relion_mask_create",
        "--i",
        "map.mrc",
        "--o",
        "mask.mrc",
        "--ini_threshold",
        str(threshold),
        "--extend_inimask",
        str(extend),
        "--width_soft_edge",
        str(width),
    ]
    if lowpass is not None:
        args += ["--lowpass", repr(lowpass), "--angpix", str(pixel)]
    run_relion(args, tmp_path)
    relion = torch.from_numpy(mrcfile.read(tmp_path / "mask.mrc").astype(np.float64))
    vol = torch.from_numpy(mrcfile.read(tmp_path / "map.mrc").astype(np.float64))
    ours = mask_from_map(
        vol,
        threshold=threshold,
        lowpass_angstrom=lowpass,
        pixel_size_angstrom=pixel,
        extend_px=extend,
        soft_edge_px=width,
    )
    a, b = ours > 0.999, relion > 0.999
    dice = float(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert dice > 0.999, dice
    # measured (RELION 3.1.3): Dice 1.0 and max |diff| 2.6e-8 (float32 file rounding) in all cases
    assert float((ours - relion).abs().max()) < 1e-3
    assert float((ours - relion).abs().mean()) < 1e-5
