"""HEALPix angular sampling as RELION uses it: healpy, RELION's own output, invariants."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryospa.core.rotations import angular_distance_degrees, euler_to_matrix
from cryospa.core.sampling import (
    angular_step_degrees,
    healpix_directions,
    healpix_max_pixel_radius_degrees,
    healpix_npix,
    in_plane_angles,
    local_neighbourhood,
    orientation_grid,
    symmetry_unique_directions,
)
from cryospa.core.symmetry import symmetry_operators, symmetry_order


def unit(rot_tilt: torch.Tensor) -> torch.Tensor:
    rot, tilt = torch.deg2rad(rot_tilt.double()).unbind(-1)
    return torch.stack(
        [torch.cos(rot) * torch.sin(tilt), torch.sin(rot) * torch.sin(tilt), torch.cos(tilt)], -1
    )


def wrapped_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b + 180.0) % 360.0 - 180.0


@pytest.mark.parametrize("order", range(6))
def test_pixel_count_and_ranges(order):
    d = healpix_directions(order)
    assert d.shape == (12 * 4**order, 2) == (healpix_npix(order), 2)
    assert d.dtype == torch.float64
    assert (d[:, 0] >= -180).all() and (d[:, 0] <= 180).all()
    assert (d[:, 1] >= 0).all() and (d[:, 1] <= 180).all()
    # all distinct directions
    v = unit(d)
    gram = v @ v.T - 2 * torch.eye(len(v), dtype=v.dtype)
    assert gram.max() < 1 - 1e-9


@pytest.mark.parametrize("order", range(5))
def test_matches_healpy_nested_pix2ang(order):
    healpy = pytest.importorskip("healpy")
    nside = 2**order
    theta, phi = healpy.pix2ang(nside, np.arange(12 * nside**2), nest=True)
    d = healpix_directions(order)
    torch.testing.assert_close(d[:, 1], torch.from_numpy(np.degrees(theta)), atol=1e-9, rtol=0)
    dphi = wrapped_difference(d[:, 0], torch.from_numpy(np.degrees(phi)))
    assert dphi.abs().max() < 1e-9


@pytest.mark.parametrize("order", range(5))
def test_max_pixel_radius_matches_healpy(order):
    healpy = pytest.importorskip("healpy")
    expected = math.degrees(healpy.max_pixrad(2**order))
    assert healpix_max_pixel_radius_degrees(order) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_directions_are_uniform_on_the_sphere(order):
    """Equal-area pixels: first moment 0, second moment I/3, equal counts per z band."""
    v = unit(healpix_directions(order))
    n = len(v)
    assert v.mean(0).abs().max() < 1e-12
    second = v.T @ v / n
    torch.testing.assert_close(second, torch.eye(3, dtype=v.dtype) / 3, atol=2.0 / n, rtol=0)
    # HEALPix rings: the polar caps (|z| > 2/3) hold exactly 1/6 of the pixels each, so
    # the equatorial belt |z| <= 2/3 holds 2/3 of them, the fraction of the sphere's area.
    assert int((v[:, 2].abs() <= 2 / 3 + 1e-12).sum()) == pytest.approx(2 * n / 3, abs=4 * 2**order)


def test_dtype_and_device(device):
    d = healpix_directions(1, dtype=torch.float32, device=device)
    assert d.dtype == torch.float32 and d.device.type == device
    g = orientation_grid(0, dtype=torch.float32, device=device)
    assert g.dtype == torch.float32 and g.device.type == device
    psi = in_plane_angles(30.0, device=device)
    assert psi.device.type == device


def test_angular_step_and_psi_as_relion():
    assert [angular_step_degrees(o) for o in range(5)] == [60.0, 30.0, 15.0, 7.5, 3.75]
    torch.testing.assert_close(in_plane_angles(15.0), torch.arange(24, dtype=torch.float64) * 15)
    assert in_plane_angles(10.0).shape == (36,)
    psi7 = in_plane_angles(7.0)  # ceil(360 / 7) = 52 angles, step shrunk to 360 / 52
    assert psi7.shape == (52,)
    assert float(psi7[1]) == pytest.approx(360 / 52)
    assert float(psi7[-1]) < 360.0


def test_orientation_grid_c1_is_directions_times_psi():
    grid = orientation_grid(1)
    assert grid.shape == (48 * 12, 3)
    d = healpix_directions(1)
    torch.testing.assert_close(grid[:12, :2], d[0].expand(12, 2))
    torch.testing.assert_close(grid[:12, 2], in_plane_angles(30.0))
    torch.testing.assert_close(grid[::12, :2], d)
    assert orientation_grid(1, psi_step_degrees=90.0).shape == (48 * 4, 3)


def read_relion_sampling(path: Path) -> tuple[dict[str, str], torch.Tensor]:
    """Minimal reader for a RELION *_sampling.star file (general block and directions loop)."""
    general: dict[str, str] = {}
    columns: list[str] = []
    rows: list[list[float]] = []
    block = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            block = line
            continue
        if line.startswith("loop_"):
            continue
        if line.startswith("_"):
            parts = line.split()
            if block == "data_sampling_general":
                general[parts[0][4:]] = parts[1]
            else:
                columns.append(parts[0][4:])
            continue
        if block == "data_sampling_directions":
            rows.append([float(x) for x in line.split()])
    assert columns == ["AngleRot", "AngleTilt"]
    return general, torch.tensor(rows, dtype=torch.float64)


def test_matches_relion_sampling_directions(shared_data):
    """RELION's run_it025_sampling_3D.star lists its HEALPix directions (order 2, C1 here)."""
    path = shared_data / "star" / "relion_outputs" / "run_it025_sampling_3D.star"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    general, relion = read_relion_sampling(path)
    order = int(general["HealpixOrder"])
    symmetry = general["SymmetryGroup"]
    assert float(general["TiltAngleLimit"]) < -90  # no tilt limit applied by RELION
    grid = orientation_grid(order, symmetry=symmetry)
    ours = grid[:: len(in_plane_angles(float(general["PsiStep"]))), :2]
    assert ours.shape == relion.shape
    assert wrapped_difference(ours[:, 0], relion[:, 0]).abs().max() < 1e-3
    assert (ours[:, 1] - relion[:, 1]).abs().max() < 1e-3
    # RELION's default psi step for 3D is the HEALPix step of the order
    assert float(general["PsiStep"]) == pytest.approx(angular_step_degrees(order))


# --- symmetry reduction ---------------------------------------------------------------------

GROUPS = ["C2", "C4", "C7", "D2", "D3", "T", "O", "I1", "I2", "I3", "I4", "C3v", "D2h", "Oh"]


def reduced(order: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    d = healpix_directions(order)
    keep = symmetry_unique_directions(
        d, name, max_angle_degrees=0.5 * healpix_max_pixel_radius_degrees(order)
    )
    return d, keep


@pytest.mark.parametrize("name", GROUPS)
def test_symmetry_reduction_is_an_asymmetric_unit(name):
    """About npix / |G| directions; no kept pair are mates; every direction has a kept mate near.

    Measured at order 3 (768 pixels): counts 0.97-1.19 x npix / |G| (C7 0.97, T 0.97, I1/I2
    1.09, Oh 1.19), covering radius (largest distance from any pixel centre to the nearest
    symmetry image of a kept direction) <= 0.9 x the maximum pixel radius (0 when the group maps
    the HEALPix grid onto itself, as C2, C4, D2).
    """
    order = 3
    d, keep = reduced(order, name)
    ops = symmetry_operators(name)
    npix = len(d)
    assert keep.dtype == torch.int64 and (keep.diff() > 0).all()
    expected = npix / symmetry_order(name)
    assert expected * 0.9 <= len(keep) <= expected * 1.25
    kept = unit(d[keep])  # (k, 3)
    mates = torch.einsum("gij,kj->kgi", ops, kept)  # (k, g, 3)
    # no two kept directions are symmetry mates (within half a pixel radius)
    cos_pair = torch.einsum("kgi,li->klg", mates, kept).amax(-1)
    cos_pair -= 3 * torch.eye(len(kept), dtype=cos_pair.dtype)
    half = 0.5 * healpix_max_pixel_radius_degrees(order)
    assert cos_pair.max() <= math.cos(math.radians(half)) + 1e-12
    # covering: every pixel centre is near a symmetry image of a kept direction
    allv = unit(d)
    cos_cover = torch.einsum("kgi,ni->nkg", mates, allv).flatten(1).amax(-1)
    cover = torch.rad2deg(torch.acos(cos_cover.clamp(-1, 1))).max()
    assert cover <= 1.0 * healpix_max_pixel_radius_degrees(order)


def test_cn_and_dn_regions_are_relions():
    d, keep = reduced(3, "C4")
    assert (d[keep, 0].abs() <= 45.0 + 1e-9).all()
    d, keep = reduced(3, "D3")
    rot, tilt = d[keep].unbind(-1)
    assert ((rot >= 30.0 - 1e-9) & (rot <= 150.0 + 1e-9) & (tilt <= 90.0)).all()


def test_orientation_grid_with_symmetry_has_fewer_orientations():
    full = orientation_grid(2)
    c4 = orientation_grid(2, symmetry="C4")
    assert full.shape == (192 * 24, 3)
    assert c4.shape[0] == pytest.approx(full.shape[0] / 4, rel=0.15)


def test_symmetry_unique_directions_bad_arguments():
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        symmetry_unique_directions(torch.zeros(3, 3), "C2", max_angle_degrees=1.0)
    with pytest.raises(ValueError, match="-1"):
        symmetry_unique_directions(torch.zeros(3, 2), "C2", max_angle_degrees=-1.0)
    with pytest.raises(ValueError, match="valid forms"):
        symmetry_unique_directions(torch.zeros(3, 2), "Q2", max_angle_degrees=1.0)


@pytest.mark.parametrize("bad", [-1, 30, 1.5, True])
def test_bad_order_raises(bad):
    with pytest.raises(ValueError, match="order"):
        healpix_directions(bad)


@pytest.mark.parametrize("bad", [0.0, -5.0, 400.0])
def test_bad_psi_step_raises(bad):
    with pytest.raises(ValueError, match="psi step"):
        in_plane_angles(bad)


# --- local neighbourhoods -------------------------------------------------------------------


def so3_ball_fraction(angle_degrees: float) -> float:
    """Fraction of SO(3) (Haar) within a geodesic angle a of a point: (a - sin a) / pi."""
    a = math.radians(angle_degrees)
    return (a - math.sin(a)) / math.pi


def test_local_neighbourhood_c1_is_exact_ball():
    grid = orientation_grid(2)  # 4608 orientations
    centre = torch.tensor([40.0, 70.0, 100.0], dtype=torch.float64)
    dist = angular_distance_degrees(euler_to_matrix(grid), euler_to_matrix(centre))
    for max_angle in (10.0, 20.0, 30.0):
        idx = local_neighbourhood(centre, grid, max_angle)
        expected = torch.nonzero(dist <= max_angle).flatten()
        assert torch.equal(idx, expected)
        # size sensible: within a factor 2 of the Haar volume of the ball
        assert 0.5 < len(idx) / (so3_ball_fraction(max_angle) * len(grid)) < 2.0
    # a grid orientation itself, with a zero radius, finds just itself
    assert local_neighbourhood(grid[123], grid, 0.0).tolist() == [123]


@pytest.mark.parametrize("name", ["C4", "D2", "I1"])
def test_local_neighbourhood_with_symmetry_is_union_over_mates(name):
    grid = orientation_grid(2)
    centre = torch.tensor([10.0, 40.0, -30.0], dtype=torch.float64)
    a0 = euler_to_matrix(centre)
    union: set[int] = set()
    for g in symmetry_operators(name):
        mate = a0 @ g
        dist = angular_distance_degrees(euler_to_matrix(grid), mate)
        union |= set(torch.nonzero(dist <= 15.0).flatten().tolist())
    idx = local_neighbourhood(centre, grid, 15.0, symmetry=name)
    assert idx.tolist() == sorted(union)
    assert len(idx) > len(local_neighbourhood(centre, grid, 15.0))


def test_local_neighbourhood_bad_arguments():
    grid = orientation_grid(0)
    with pytest.raises(ValueError, match=r"\(2,\)"):
        local_neighbourhood(torch.zeros(2), grid, 10.0)
    with pytest.raises(ValueError, match=r"\(4, 2\)"):
        local_neighbourhood(torch.zeros(3), torch.zeros(4, 2), 10.0)
    with pytest.raises(ValueError, match="-3"):
        local_neighbourhood(torch.zeros(3), grid, -3.0)
