"""Rotations: RELION's ZYZ Euler angles and rotation matrices.

Convention (RELION, inherited from Xmipp): the three Euler angles (rot, tilt, psi), in degrees,
define the matrix

    A = Rz(psi) @ Ry(tilt) @ Rz(rot)

with ``Rz(a) = [[cos a, sin a, 0], [-sin a, cos a, 0], [0, 0, 1]]`` and
``Ry(b) = [[cos b, 0, -sin b], [0, 1, 0], [sin b, 0, cos b]]``. ``A`` maps volume coordinates
(x, y, z) to projection-image coordinates: ``P(x, y) = integral V(A^T (x, y, z)) dz``. The viewing
direction (the beam, in volume coordinates) is the third row of ``A``:
``(cos rot sin tilt, sin rot sin tilt, cos tilt)``.

All functions are batched over leading dimensions and keep dtype and device.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "angular_distance_degrees",
    "euler_to_matrix",
    "matrix_to_euler",
    "random_rotations",
    "rotation_about_axis",
    "viewing_direction",
]


def euler_to_matrix(euler_degrees: torch.Tensor) -> torch.Tensor:
    """RELION Euler angles to rotation matrices.

    Parameters
    ----------
    euler_degrees
        ``(..., 3)`` angles (rot, tilt, psi) in degrees.

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)`` rotation matrices ``A = Rz(psi) Ry(tilt) Rz(rot)``.
    """
    if euler_degrees.shape[-1] != 3:
        raise ValueError(
            f"euler angles need a last dimension of 3, got shape {tuple(euler_degrees.shape)}"
        )
    rad = torch.deg2rad(euler_degrees)
    ca, cb, cg = torch.cos(rad).unbind(-1)
    sa, sb, sg = torch.sin(rad).unbind(-1)
    cc = cb * ca
    cs = cb * sa
    sc = sb * ca
    ss = sb * sa
    rows = [
        torch.stack([cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb], dim=-1),
        torch.stack([-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb], dim=-1),
        torch.stack([sc, ss, cb], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def matrix_to_euler(matrices: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to RELION Euler angles (inverse of :func:`euler_to_matrix`).

    Parameters
    ----------
    matrices
        ``(..., 3, 3)`` rotation matrices.

    Returns
    -------
    torch.Tensor
        ``(..., 3)`` angles (rot, tilt, psi) in degrees; rot and psi in (-180, 180], tilt in
        [0, 180]. At the poles (tilt 0 or 180) rot is set to 0 and the whole in-plane rotation
        goes into psi.
    """
    if matrices.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices need shape (..., 3, 3), got {tuple(matrices.shape)}")
    a = matrices
    eps = 16 * torch.finfo(a.dtype).eps
    abs_sb = torch.sqrt(a[..., 0, 2] ** 2 + a[..., 1, 2] ** 2)
    regular = abs_sb > eps
    # Regular case: sin(tilt) > 0 chosen, so tilt in (0, pi).
    psi_reg = torch.atan2(a[..., 1, 2], -a[..., 0, 2])
    rot_reg = torch.atan2(a[..., 2, 1], a[..., 2, 0])
    tilt_reg = torch.atan2(abs_sb, a[..., 2, 2])
    # Poles: rot = 0 and the in-plane angle goes into psi.
    up = a[..., 2, 2] > 0
    psi_pole = torch.where(
        up, torch.atan2(-a[..., 1, 0], a[..., 0, 0]), torch.atan2(a[..., 1, 0], -a[..., 0, 0])
    )
    tilt_pole = torch.where(up, torch.zeros_like(abs_sb), torch.full_like(abs_sb, math.pi))
    rot = torch.where(regular, rot_reg, torch.zeros_like(rot_reg))
    tilt = torch.where(regular, tilt_reg, tilt_pole)
    psi = torch.where(regular, psi_reg, psi_pole)
    return torch.rad2deg(torch.stack([rot, tilt, psi], dim=-1))


def viewing_direction(matrices: torch.Tensor) -> torch.Tensor:
    """Unit projection direction in volume coordinates, ``(..., 3)``: the third row of ``A``."""
    return matrices[..., 2, :]


def angular_distance_degrees(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Geodesic distance between rotations, in degrees.

    Parameters
    ----------
    r1, r2
        ``(..., 3, 3)`` rotation matrices (broadcast against each other).

    Returns
    -------
    torch.Tensor
        ``(...)`` angle of ``r1 @ r2^T`` in [0, 180] degrees.
    """
    rel = r1 @ r2.transpose(-1, -2)
    trace = rel.diagonal(dim1=-2, dim2=-1).sum(-1)
    cos = ((trace - 1.0) / 2.0).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


def rotation_about_axis(axis: torch.Tensor, angle_degrees: torch.Tensor | float) -> torch.Tensor:
    """Matrix of an active rotation by ``angle_degrees`` about ``axis`` (right-hand rule).

    Parameters
    ----------
    axis
        ``(..., 3)`` axis (need not be normalised).
    angle_degrees
        ``(...)`` angle in degrees, or a float.

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)`` matrices ``R`` with ``R @ v`` the rotated vector.
    """
    axis = axis / torch.linalg.vector_norm(axis, dim=-1, keepdim=True)
    angle = torch.deg2rad(torch.as_tensor(angle_degrees, dtype=axis.dtype, device=axis.device))
    x, y, z = axis.unbind(-1)
    c = torch.cos(angle)
    s = torch.sin(angle)
    t = 1 - c
    rows = [
        torch.stack([t * x * x + c, t * x * y - s * z, t * x * z + s * y], dim=-1),
        torch.stack([t * x * y + s * z, t * y * y + c, t * y * z - s * x], dim=-1),
        torch.stack([t * x * z - s * y, t * y * z + s * x, t * z * z + c], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def random_rotations(
    n: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``n`` rotations drawn uniformly from SO(3) (Haar measure), as ``(n, 3, 3)`` matrices."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, dim=-2).to(dtype=dtype, device=device)
