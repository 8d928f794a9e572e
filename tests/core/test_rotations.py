import pytest
import torch

from cryospa.core.rotations import (
    angular_distance_degrees,
    euler_to_matrix,
    matrix_to_euler,
    random_rotations,
    rotation_about_axis,
    viewing_direction,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_euler_matrix_round_trip(device: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    rot = torch.rand(500, generator=g) * 360 - 180
    tilt = torch.rand(500, generator=g) * 180
    psi = torch.rand(500, generator=g) * 360 - 180
    e = torch.stack([rot, tilt, psi], -1).to(device=device, dtype=dtype)
    m = euler_to_matrix(e)
    assert m.shape == (500, 3, 3) and m.dtype == dtype and m.device.type == device
    e2 = matrix_to_euler(m)
    # angles agree (up to the 360 wrap) and so do the matrices
    diff = (e2 - e + 180) % 360 - 180
    tol = 1e-3 if dtype == torch.float32 else 1e-9
    # away from the poles the angles are unique
    regular = (tilt > 1) & (tilt < 179)
    assert diff[regular.to(device)].abs().max() < tol * 100
    assert torch.allclose(euler_to_matrix(e2), m, atol=tol)


def test_matrix_to_euler_at_poles() -> None:
    e = torch.tensor([[30.0, 0.0, 20.0], [30.0, 180.0, 20.0]], dtype=torch.float64)
    m = euler_to_matrix(e)
    e2 = matrix_to_euler(m)
    assert torch.allclose(euler_to_matrix(e2), m, atol=1e-12)
    assert torch.allclose(e2[:, 0], torch.zeros(2, dtype=torch.float64))


def test_relion_matrix_convention() -> None:
    # A = Rz(psi) Ry(tilt) Rz(rot) with passive-form elementary matrices, as in RELION's euler.cpp
    def rz(a: float) -> torch.Tensor:
        a_t = torch.deg2rad(torch.tensor(a, dtype=torch.float64))
        c, s = torch.cos(a_t), torch.sin(a_t)
        return torch.tensor([[c, s, 0], [-s, c, 0], [0, 0, 1]], dtype=torch.float64)

    def ry(a: float) -> torch.Tensor:
        a_t = torch.deg2rad(torch.tensor(a, dtype=torch.float64))
        c, s = torch.cos(a_t), torch.sin(a_t)
        return torch.tensor([[c, 0, -s], [0, 1, 0], [s, 0, c]], dtype=torch.float64)

    rot, tilt, psi = 25.0, 65.0, -110.0
    expected = rz(psi) @ ry(tilt) @ rz(rot)
    got = euler_to_matrix(torch.tensor([rot, tilt, psi], dtype=torch.float64))
    assert torch.allclose(got, expected, atol=1e-12)
    # viewing direction of tilt = 90, rot = 0 is the x axis
    v = viewing_direction(euler_to_matrix(torch.tensor([0.0, 90.0, 0.0], dtype=torch.float64)))
    assert torch.allclose(v, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12)


def test_angular_distance_and_axis_rotation() -> None:
    axis = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    r = rotation_about_axis(axis, 37.0)
    assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(r @ axis, axis, atol=1e-12)
    assert angular_distance_degrees(r, torch.eye(3, dtype=torch.float64)).item() == pytest.approx(
        37.0
    )
    rs = random_rotations(100, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(torch.linalg.det(rs), torch.ones(100, dtype=torch.float64), atol=1e-12)
    assert angular_distance_degrees(rs, rs).max() < 1e-5


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="last dimension of 3"):
        euler_to_matrix(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        matrix_to_euler(torch.zeros(4, 2, 3))
