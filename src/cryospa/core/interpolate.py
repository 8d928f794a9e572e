"""Real-space rotation of volumes and images by interpolation.

Convention: the origin of every rotation is the voxel ``n // 2`` along each axis (as in RELION).
Coordinates are in voxels, ordered ``(x, y, z)`` with x the last array axis, y the second last and
z the third last. Rotations are *active*: for a rotation matrix ``R`` the output is

    out(p) = in(R^T p),

so a feature at position ``p`` in the input appears at ``R p`` in the output. Samples falling
outside the box read zero. Interpolation is :func:`torch.nn.functional.grid_sample` with
``align_corners=True`` (grid value -1 is the centre of the first voxel, +1 the centre of the last).

Relation to RELION's Euler matrices ``A`` (:func:`cryospa.core.rotations.euler_to_matrix`): the
projection of a volume ``V`` in orientation ``A`` is ``rotate_volume(V, A).sum(-3)``, and changing
psi by ``delta`` turns that projection into ``rotate_images(projection, -delta)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["rotate_images", "rotate_volume"]

InterpolationOrder = Literal["linear", "nearest"]
_MODES = {"linear": "bilinear", "nearest": "nearest"}


def _mode(order: str) -> str:
    if order not in _MODES:
        raise ValueError(
            f"interpolation order {order!r} not supported: use one of {sorted(_MODES)}"
        )
    return _MODES[order]


def _affine_theta(rot: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``(n, k, k + 1)`` matrices for :func:`torch.nn.functional.affine_grid` sampling ``R^T p``.

    ``rot`` is ``(n, k, k)`` acting on centred voxel coordinates ``p`` (x first); ``shape`` is the
    array shape (z, y, x order). With ``align_corners=True`` the normalised coordinate of voxel
    index ``i`` on an axis of ``m`` samples is ``u = s i - 1``, ``s = 2 / (m - 1)``, and
    ``p = i - m // 2``. The source of output ``u`` is then ``S R^T S^-1 u + t`` with
    ``t = S R^T S^-1 1 + S (c - R^T c) - 1`` (``S = diag(s)``, ``c`` the centre indices).
    """
    sizes = torch.tensor(shape[::-1], dtype=rot.dtype, device=rot.device)  # (x, y[, z]) sizes
    scale = 2.0 / (sizes - 1)
    centre = torch.div(sizes, 2, rounding_mode="floor")
    rt = rot.transpose(-1, -2)
    lin = scale[:, None] * rt / scale[None, :]  # S R^T S^-1, (n, k, k)
    ones = torch.ones_like(scale)
    shift = lin @ ones + scale * (centre - rt @ centre) - 1.0  # (n, k)
    return torch.cat([lin, shift[..., None]], dim=-1)


def _check_box(shape: tuple[int, ...], what: str) -> None:
    if any(n < 2 for n in shape):
        raise ValueError(f"{what} box {shape} too small: every axis needs at least 2 samples")


def rotate_volume(
    volume: torch.Tensor,
    rotation: torch.Tensor,
    *,
    order: InterpolationOrder = "linear",
) -> torch.Tensor:
    """Rotate volumes about their centre voxel ``n // 2`` (active rotation).

    Parameters
    ----------
    volume
        ``(..., d, h, w)`` real volume(s), array axes (z, y, x).
    rotation
        ``(..., 3, 3)`` rotation matrices acting on column vectors ``(x, y, z)`` in voxels. The
        leading dimensions of ``volume`` and ``rotation`` are broadcast against each other, so one
        volume can be rotated by a batch ``(b, 3, 3)`` of matrices, or a batch of volumes by one
        matrix.
    order
        ``"linear"`` (trilinear) or ``"nearest"``.

    Returns
    -------
    torch.Tensor
        ``(*broadcast(volume.shape[:-3], rotation.shape[:-2]), d, h, w)``:
        ``out(p) = volume(rotation^T p)``; samples from outside the box are zero. Same dtype and
        device as ``volume``.

    """
    if volume.dim() < 3:
        raise ValueError(f"volume needs shape (..., d, h, w), got {tuple(volume.shape)}")
    if rotation.dim() < 2 or rotation.shape[-2:] != (3, 3):
        raise ValueError(f"rotation needs shape (..., 3, 3), got {tuple(rotation.shape)}")
    mode = _mode(order)
    shape = tuple(volume.shape[-3:])
    _check_box(shape, "volume")
    batch = torch.broadcast_shapes(volume.shape[:-3], rotation.shape[:-2])
    n = math.prod(batch)
    vol = volume.expand(*batch, *shape).reshape(n, 1, *shape)
    rot = (
        rotation.to(dtype=volume.dtype, device=volume.device).expand(*batch, 3, 3).reshape(n, 3, 3)
    )
    theta = _affine_theta(rot, shape)  # (n, 3, 4)
    grid = F.affine_grid(theta, [n, 1, *shape], align_corners=True)  # (n, d, h, w, 3) as (x, y, z)
    out = F.grid_sample(vol, grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out.reshape(*batch, *shape)


def rotate_images(
    images: torch.Tensor,
    angles_degrees: torch.Tensor | float,
    *,
    order: InterpolationOrder = "linear",
) -> torch.Tensor:
    """Rotate images about their centre pixel ``n // 2`` (active, counter-clockwise in x, y).

    Parameters
    ----------
    images
        ``(..., h, w)`` real image(s), array axes (y, x).
    angles_degrees
        ``(...)`` rotation angles in degrees (broadcast against the leading dimensions of
        ``images``), or a float. A positive angle takes a point at ``(x, y) = (1, 0)`` to
        ``(cos a, sin a)``, i.e. the matrix ``[[cos a, -sin a], [sin a, cos a]]`` acting on
        ``(x, y)`` with y the row index.
    order
        ``"linear"`` (bilinear) or ``"nearest"``.

    Returns
    -------
    torch.Tensor
        ``(*broadcast(images.shape[:-2], angles.shape), h, w)`` rotated images,
        ``out(p) = images(R^T p)``; samples from outside the box are zero. Same dtype and device
        as ``images``.

    """
    if images.dim() < 2:
        raise ValueError(f"images need shape (..., h, w), got {tuple(images.shape)}")
    mode = _mode(order)
    shape = tuple(images.shape[-2:])
    _check_box(shape, "image")
    angles = torch.as_tensor(angles_degrees, dtype=images.dtype, device=images.device)
    batch = torch.broadcast_shapes(images.shape[:-2], angles.shape)
    n = math.prod(batch)
    img = images.expand(*batch, *shape).reshape(n, 1, *shape)
    rad = torch.deg2rad(angles.expand(batch).reshape(n))
    c, s = torch.cos(rad), torch.sin(rad)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (n, 2, 2)
    theta = _affine_theta(rot, shape)  # (n, 2, 3)
    grid = F.affine_grid(theta, [n, 1, *shape], align_corners=True)  # (n, h, w, 2) as (x, y)
    out = F.grid_sample(img, grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out.reshape(*batch, *shape)
