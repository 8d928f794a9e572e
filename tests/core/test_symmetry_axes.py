"""Symmetry-axis search and map superposition against maps with known rotations."""

from __future__ import annotations

import pytest
import torch

from cryospa.core.projection import make_projector, project
from cryospa.core.rotations import angular_distance_degrees, random_rotations
from cryospa.core.symmetry import symmetrise_volume, symmetry_operators
from cryospa.core.symmetry_axes import (
    align_to_symmetry_axes,
    anisotropic_part,
    shift_volume,
    superpose,
    symmetry_fit,
    transform_volume,
)


def _d2_map(n: int = 32) -> torch.Tensor:
    """A D2-symmetric map of four unequal Gaussian blobs (a dimer of dimers), centre n // 2."""
    axis = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    p = torch.stack([x, y, z], dim=-1)
    vol = torch.zeros((n, n, n), dtype=torch.float64)
    for centre, sigma, weight in (((5.0, 2.0, 1.0), 2.5, 1.0), ((2.0, -4.0, 3.0), 1.8, 0.7),
                                  ((1.0, 1.0, 6.0), 1.5, 0.5)):
        c = torch.tensor(centre, dtype=torch.float64)
        blob = weight * torch.exp(-((p - c) ** 2).sum(-1) / (2 * sigma**2))
        vol += blob
    return symmetrise_volume(vol, "D2")


def _axis_error_degrees(net: torch.Tensor, symmetry: str) -> float:
    """How far ``net G net^T`` is from ``G`` (0 when the axes coincide, any labelling)."""
    ops = symmetry_operators(symmetry)
    ops = ops[torch.linalg.det(ops) > 0]
    conj = net[None] @ ops @ net.T[None]
    return float(torch.stack([angular_distance_degrees(c[None], ops).min() for c in conj]).max())


def test_anisotropic_part_removes_the_spherical_average() -> None:
    n = 24
    axis = torch.arange(n, dtype=torch.float64) - n // 2
    r2 = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2
    sphere = torch.exp(-r2 / 20.0)
    rest = anisotropic_part(sphere)
    assert float(rest.std()) < 0.05 * float(sphere.std())  # linear interpolation of the profile
    assert float(rest.abs().max()) < 0.05
    d2 = _d2_map(n)
    assert float(anisotropic_part(d2).std()) > 0.3 * float(d2.std())


def test_shift_and_transform_conventions() -> None:
    vol = _d2_map(32)
    moved = shift_volume(vol, torch.tensor([2.0, 0.0, 0.0]))
    torch.testing.assert_close(moved, torch.roll(vol, 2, dims=-1), atol=1e-9, rtol=0)
    # projection of the transformed map in orientation A R^T, shifted, equals the original's
    g = torch.Generator().manual_seed(5)
    rot, a = random_rotations(2, generator=g)
    t = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    w = transform_volume(vol, rot, t)
    p_v = project(make_projector(vol.float()), a[None].float())
    p_w = project(make_projector(w.float()), (a @ rot.T)[None].float())
    d = (a @ t)[:2]
    from cryospa.core.fourier import phase_shift_2d

    ramp = phase_shift_2d((32, 32), (-d).float()[None])
    assert p_v.shape == p_w.shape
    diff = (p_w * ramp - p_v).abs().pow(2).sum() / p_v.abs().pow(2).sum()
    assert float(diff) < 0.02, float(diff)


@pytest.mark.parametrize("seed", [1])
def test_turned_map_is_brought_back_to_its_axes(seed: int) -> None:
    truth = _d2_map(32)
    g = torch.Generator().manual_seed(seed)
    rot = random_rotations(1, generator=g)[0]
    shift = (torch.rand(3, generator=g, dtype=torch.float64) - 0.5) * 4.0
    moved = transform_volume(truth, rot, shift)
    result = align_to_symmetry_axes(moved, "D2")
    net = result.rotation @ rot  # aligned = net truth (+ shift): net must normalise D2
    assert _axis_error_degrees(net, "D2") < 3.0
    assert result.fit > 0.95 and result.pair_correlation > 0.9
    # the group asked for does not fit: low score
    assert symmetry_fit(transform_volume(moved, result.rotation, result.shift_px), "O") < 0.6
    wrong = align_to_symmetry_axes(moved, "O", candidates=1)
    assert wrong.fit < 0.6 < result.fit
    assert wrong.pair_correlation < 0.4


def test_symmetry_fit_of_exact_and_random_maps() -> None:
    truth = _d2_map(24)
    assert symmetry_fit(truth, "D2") > 0.999
    noise = torch.randn((24, 24, 24), generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    assert symmetry_fit(noise, "D2") < 0.6  # about 1 / sqrt(4)
    assert symmetry_fit(noise, "C1") == pytest.approx(1.0)


def test_superpose_finds_rotation_shift_and_hand() -> None:
    truth = _d2_map(32)
    g = torch.Generator().manual_seed(7)
    rot = random_rotations(1, generator=g)[0]
    moved = transform_volume(truth, rot, torch.tensor([1.5, -1.0, 0.5], dtype=torch.float64))
    result = superpose(moved, truth, symmetry="D2")
    assert result.correlation > 0.97 and not result.mirrored
    mirror = torch.roll(torch.flip(moved, dims=(-3,)), 1, dims=-3)
    flipped = superpose(mirror, truth, mirror=True, symmetry="D2")
    assert flipped.mirrored and flipped.correlation > 0.97
    unflipped = superpose(mirror, truth, symmetry="D2")
    assert unflipped.correlation < flipped.correlation - 0.02


def test_bad_volume_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="cubic"):
        align_to_symmetry_axes(torch.zeros((8, 8, 9)), "D2")
