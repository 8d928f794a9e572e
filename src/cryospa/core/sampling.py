"""Angular sampling as RELION does it: HEALPix directions times in-plane angles.

RELION (``src/healpix_sampling.cpp``) samples projection directions on a HEALPix grid of
``nside = 2**order`` in the **NESTED** pixel ordering (``healpix_base.Set(order, NEST)``) and turns
pixel centres ``(z = cos theta, phi)`` into ``rot = phi`` and ``tilt = theta`` in degrees, with rot
wrapped into [-180, 180]. Its nominal angular step is ``360 / (6 * 2**order)`` degrees (60 at order
0, 15 at order 2, 7.5 at order 3); by default the in-plane angle psi is sampled at the same step,
``psi = k * 360 / ceil(360 / step)`` for ``k = 0 .. ceil(360 / step) - 1``.

With a symmetry group, RELION keeps one direction per set of symmetry-equivalent directions: first
a fixed geometric region (for ``Cn``: ``-180/n <= rot <= 180/n``; for ``Dn``:
``90 - 180/n <= rot <= 90 + 180/n`` and ``tilt <= 90``; similar rules for the other groups), then
it drops, in pixel order, every direction that has a symmetry mate within half the HEALPix
maximum pixel radius of a direction already kept. Here the rot/tilt rules of the cyclic and
dihedral families (and their mirror variants) are RELION's; for ``T``, ``O`` and ``I`` (and their
mirror variants) the first region is instead the Dirichlet cell of a generic reference direction
(the directions closer to it than to any of its symmetry images), followed by the same pixel-order
clean-up. The kept set is a correct asymmetric unit but not always the same copy RELION keeps for
the cubic and icosahedral groups.
"""

from __future__ import annotations

import math

import torch

from cryospa.core.rotations import euler_to_matrix
from cryospa.core.symmetry import symmetry_family, symmetry_operators

__all__ = [
    "angular_step_degrees",
    "healpix_directions",
    "healpix_max_pixel_radius_degrees",
    "healpix_npix",
    "in_plane_angles",
    "local_neighbourhood",
    "orientation_grid",
    "symmetry_unique_directions",
]

_JRLL = (2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4)  # ring number (in units of nside) of each base face
_JPLL = (1, 3, 5, 7, 0, 2, 4, 6, 1, 3, 5, 7)  # longitude index (in units of pi/4) of each face


def _check_order(order: int) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or order < 0 or order > 29:
        raise ValueError(f"HEALPix order must be an integer in [0, 29], got {order!r}")
    return order


def healpix_npix(order: int) -> int:
    """Count the HEALPix pixels of an order: ``12 * nside**2`` with ``nside = 2**order``."""
    return 12 * 4 ** _check_order(order)


def angular_step_degrees(order: int) -> float:
    """RELION's nominal angular sampling of a HEALPix order: ``360 / (6 * 2**order)`` degrees."""
    return 360.0 / (6 * 2 ** _check_order(order))


def healpix_max_pixel_radius_degrees(order: int) -> float:
    """Largest angle between a pixel centre and its corners (HEALPix ``max_pixrad``), degrees.

    Attained for the pixel at the pole-side corner of an equatorial base face: the angle between
    the point ``(z = 2/3, phi = pi / (4 nside))`` and ``(z = 1 - (1 - 1/nside)**2 / 3, phi = 0)``.
    """
    nside = 2 ** _check_order(order)
    z1, p1 = 2.0 / 3.0, math.pi / (4 * nside)
    z2, p2 = 1.0 - (1.0 - 1.0 / nside) ** 2 / 3.0, 0.0
    s1, s2 = math.sqrt(1 - z1 * z1), math.sqrt(1 - z2 * z2)
    v1 = (s1 * math.cos(p1), s1 * math.sin(p1), z1)
    v2 = (s2 * math.cos(p2), s2 * math.sin(p2), z2)
    cross = (
        v1[1] * v2[2] - v1[2] * v2[1],
        v1[2] * v2[0] - v1[0] * v2[2],
        v1[0] * v2[1] - v1[1] * v2[0],
    )
    dot = sum(a * b for a, b in zip(v1, v2, strict=True))
    return math.degrees(math.atan2(math.sqrt(sum(c * c for c in cross)), dot))


def _compact_bits(v: torch.Tensor, order: int) -> torch.Tensor:
    """Collect the even bits of ``v`` (bit 2k goes to bit k), for ``order`` output bits."""
    out = torch.zeros_like(v)
    for k in range(order):
        out |= ((v >> (2 * k)) & 1) << k
    return out


def healpix_directions(
    order: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Centres of all HEALPix pixels in RELION's order and angles.

    Parameters
    ----------
    order
        HEALPix order; ``nside = 2**order``, ``npix = 12 * nside**2``.
    dtype, device
        Of the returned tensor (the computation is done in float64).

    Returns
    -------
    torch.Tensor
        ``(npix, 2)`` (rot, tilt) in degrees for NESTED pixel indices ``0 .. npix - 1``:
        ``rot = phi`` wrapped into [-180, 180], ``tilt = theta`` in [0, 180].

    """
    _check_order(order)
    nside = 2**order
    npix = 12 * nside * nside
    pix = torch.arange(npix, dtype=torch.int64, device=device)
    face = pix // (nside * nside)
    ipf = pix % (nside * nside)
    ix = _compact_bits(ipf, order)
    iy = _compact_bits(ipf >> 1, order)
    jrll = torch.tensor(_JRLL, dtype=torch.int64, device=device)[face]
    jpll = torch.tensor(_JPLL, dtype=torch.int64, device=device)[face]
    jr = jrll * nside - ix - iy - 1  # ring index counted from the north pole, 1 .. 4 nside - 1

    north = jr < nside
    south = jr > 3 * nside
    nr = torch.where(north, jr, torch.where(south, 4 * nside - jr, torch.full_like(jr, nside)))
    kshift = torch.where(north | south, torch.zeros_like(jr), (jr - nside) & 1)
    f64 = torch.float64
    nr_f = nr.to(f64)
    # cos(theta); in the caps also sin(theta) directly for accuracy near the poles.
    cap_tmp = nr_f * nr_f / (3.0 * nside * nside)
    z = torch.where(
        north,
        1.0 - cap_tmp,
        torch.where(south, cap_tmp - 1.0, (2 * nside - jr).to(f64) * 2.0 / (3.0 * nside)),
    )
    sin_cap = torch.sqrt(cap_tmp * (2.0 - cap_tmp))
    sin_theta = torch.where(north | south, sin_cap, torch.sqrt((1.0 - z) * (1.0 + z)))
    theta = torch.atan2(sin_theta, z)

    jp = (jpll * nr + ix - iy + 1 + kshift) // 2
    jp = torch.where(jp > 4 * nside, jp - 4 * nside, jp)
    jp = torch.where(jp < 1, jp + 4 * nside, jp)
    phi = (jp.to(f64) - (kshift.to(f64) + 1.0) * 0.5) * (math.pi / 2.0 / nr_f)

    rot = torch.rad2deg(phi)
    rot = torch.where(rot > 180.0, rot - 360.0, rot)
    tilt = torch.rad2deg(theta)
    return torch.stack([rot, tilt], dim=-1).to(dtype=dtype)


def in_plane_angles(
    step_degrees: float,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """In-plane (psi) angles as RELION samples them.

    Parameters
    ----------
    step_degrees
        Requested step in degrees, in (0, 360].
    dtype, device
        Of the returned tensor.

    Returns
    -------
    torch.Tensor
        ``(n_psi,)`` angles ``k * 360 / n_psi`` in degrees, ``k = 0 .. n_psi - 1``, with
        ``n_psi = ceil(360 / step_degrees)`` (the step is shrunk to divide 360 evenly).

    """
    if not (0.0 < step_degrees <= 360.0):
        raise ValueError(f"psi step must be in (0, 360] degrees, got {step_degrees!r}")
    n_psi = math.ceil(360.0 / step_degrees - 1e-9)
    return torch.arange(n_psi, dtype=torch.float64, device=device).mul(360.0 / n_psi).to(dtype)


def _unit_directions(rot_tilt: torch.Tensor) -> torch.Tensor:
    rot, tilt = torch.deg2rad(rot_tilt).unbind(-1)
    return torch.stack(
        [torch.cos(rot) * torch.sin(tilt), torch.sin(rot) * torch.sin(tilt), torch.cos(tilt)], -1
    )


def _geometric_region(rot_tilt: torch.Tensor, symmetry: str, ops: torch.Tensor) -> torch.Tensor:
    """Boolean ``(n,)`` mask of the first, geometric asymmetric-unit cut."""
    family, n = symmetry_family(symmetry)
    rot, tilt = rot_tilt.unbind(-1)
    upper = tilt <= 90.0
    if family == "C":
        return (rot >= -180.0 / n) & (rot <= 180.0 / n)
    if family in ("CI", "CS"):
        return upper
    if family == "CV":
        return (rot >= 0.0) & (rot <= 180.0 / n)
    if family == "CH":
        return (rot >= -180.0 / n) & (rot <= 180.0 / n) & upper
    if family == "S":
        return (rot >= -360.0 / n) & (rot <= 360.0 / n) & upper
    if family == "D":
        if n == 1:
            return upper
        return (rot >= 90.0 - 180.0 / n) & (rot <= 90.0 + 180.0 / n) & upper
    if family in ("DV", "DH"):
        return (rot >= 90.0) & (rot <= 90.0 + 180.0 / n) & upper
    # Cubic and icosahedral groups: Dirichlet cell of a generic reference direction.
    v = _unit_directions(rot_tilt)  # (n, 3)
    ref = torch.tensor([0.3, 0.2, 1.0], dtype=v.dtype, device=v.device)
    ref = ref / torch.linalg.vector_norm(ref)
    images = ops @ ref  # (m, 3): g ref
    dots = v @ images.T  # (n, m)
    return dots[:, 0] >= dots.amax(dim=1) - 1e-9


def symmetry_unique_directions(
    rot_tilt: torch.Tensor,
    symmetry: str,
    *,
    max_angle_degrees: float,
) -> torch.Tensor:
    """Select directions that form an asymmetric unit of a symmetry group.

    Parameters
    ----------
    rot_tilt
        ``(n, 2)`` directions (rot, tilt) in degrees, e.g. from :func:`healpix_directions`.
    symmetry
        Point-group name (see :func:`cryospa.core.symmetry.symmetry_operators`).
    max_angle_degrees
        A direction is dropped when one of its symmetry mates lies within this angle of a
        direction kept before it (RELION uses half the HEALPix maximum pixel radius).

    Returns
    -------
    torch.Tensor
        ``(m,)`` int64 indices into ``rot_tilt``, increasing. See the module docstring for which
        copy of each direction is kept.

    """
    if rot_tilt.dim() != 2 or rot_tilt.shape[-1] != 2:
        raise ValueError(f"directions need shape (n, 2), got {tuple(rot_tilt.shape)}")
    if max_angle_degrees < 0:
        raise ValueError(f"max_angle_degrees must be >= 0, got {max_angle_degrees!r}")
    rt = rot_tilt.to(torch.float64)
    ops = symmetry_operators(symmetry, device=rt.device)  # (m, 3, 3)
    candidates = torch.nonzero(_geometric_region(rt, symmetry, ops)).flatten()
    if ops.shape[0] == 1:
        return candidates.to(rot_tilt.device)
    v = _unit_directions(rt[candidates])  # (c, 3)
    mates = torch.einsum("mij,cj->cmi", ops, v).reshape(-1, 3)  # (c * m, 3): g v for every g
    n_ops = ops.shape[0]
    n_cand = v.shape[0]
    cos_max = math.cos(math.radians(max_angle_degrees))
    # Pairs (i, k), k < i, where a symmetry mate of candidate k lies within max_angle of i.
    # Computed in chunks of rows to bound memory; such pairs only occur along the seams.
    partners: list[list[int]] = [[] for _ in range(n_cand)]
    chunk = max(1, 2**22 // max(1, n_cand * n_ops))
    for start in range(0, n_cand, chunk):
        rows = v[start : start + chunk]  # (r, 3)
        near = (rows @ mates.T).reshape(rows.shape[0], n_cand, n_ops).amax(dim=-1) > cos_max
        idx = torch.arange(start, start + rows.shape[0], device=v.device)
        near &= torch.arange(n_cand, device=v.device) < idx[:, None]
        for i, k in torch.nonzero(near).tolist():
            partners[start + i].append(k)
    kept = torch.zeros(n_cand, dtype=torch.bool)
    for i in range(n_cand):
        kept[i] = not any(bool(kept[k]) for k in partners[i])
    return candidates[kept.to(candidates.device)]


def orientation_grid(
    order: int,
    *,
    psi_step_degrees: float | None = None,
    symmetry: str = "C1",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """All orientations of RELION's coarse grid: HEALPix directions times psi angles.

    Parameters
    ----------
    order
        HEALPix order of the directions.
    psi_step_degrees
        In-plane step; default RELION's, :func:`angular_step_degrees` of ``order``.
    symmetry
        Point group: directions are first reduced to an asymmetric unit with
        :func:`symmetry_unique_directions` (threshold half the maximum pixel radius, as RELION).
    dtype, device
        Of the returned tensor.

    Returns
    -------
    torch.Tensor
        ``(n_dir * n_psi, 3)`` Euler angles (rot, tilt, psi) in degrees, direction-major (all psi
        of the first direction first), as RELION enumerates them.

    """
    directions = healpix_directions(order)
    if symmetry_family(symmetry) != ("C", 1):
        keep = symmetry_unique_directions(
            directions, symmetry, max_angle_degrees=0.5 * healpix_max_pixel_radius_degrees(order)
        )
        directions = directions[keep]
    step = angular_step_degrees(order) if psi_step_degrees is None else psi_step_degrees
    psi = in_plane_angles(step)
    n_dir, n_psi = directions.shape[0], psi.shape[0]
    grid = torch.cat(
        [directions.repeat_interleave(n_psi, dim=0), psi.repeat(n_dir).unsqueeze(-1)], dim=-1
    )
    return grid.to(dtype=dtype, device=device)


def local_neighbourhood(
    euler_degrees: torch.Tensor,
    grid_euler_degrees: torch.Tensor,
    max_angle_degrees: float,
    *,
    symmetry: str = "C1",
) -> torch.Tensor:
    """Grid orientations within an angle of a given orientation, symmetry mates included.

    The distance is the geodesic angle on SO(3) between rotation matrices (the angle of the single
    rotation taking one to the other). With a symmetry group ``G``, orientation ``A`` is
    equivalent to ``A g`` for every ``g`` in ``G`` (``V(g p) = V(p)``), and the distance is the
    smallest over ``g``.

    Parameters
    ----------
    euler_degrees
        ``(3,)`` (rot, tilt, psi) in degrees.
    grid_euler_degrees
        ``(n, 3)`` grid orientations in degrees.
    max_angle_degrees
        Largest accepted distance, in degrees (inclusive).
    symmetry
        Point-group name; ``"C1"`` for none.

    Returns
    -------
    torch.Tensor
        ``(k,)`` int64 indices into the grid, increasing, on the grid's device.

    """
    if euler_degrees.shape != (3,):
        raise ValueError(f"euler angles need shape (3,), got {tuple(euler_degrees.shape)}")
    if grid_euler_degrees.dim() != 2 or grid_euler_degrees.shape[-1] != 3:
        raise ValueError(f"grid needs shape (n, 3), got {tuple(grid_euler_degrees.shape)}")
    if max_angle_degrees < 0:
        raise ValueError(f"max_angle_degrees must be >= 0, got {max_angle_degrees!r}")
    dev = grid_euler_degrees.device
    a0 = euler_to_matrix(euler_degrees.to(device=dev, dtype=torch.float64))  # (3, 3)
    grid = euler_to_matrix(grid_euler_degrees.to(torch.float64))  # (n, 3, 3)
    ops = symmetry_operators(symmetry, device=dev)
    ops = ops[torch.linalg.det(ops) > 0]  # mirror images are not orientations of the same map
    mates = a0 @ ops  # (m, 3, 3): A0 g
    # trace(G M^T) for every grid G and mate M.
    traces = torch.einsum("nij,mij->nm", grid, mates)  # (n, m)
    cos = ((traces.amax(dim=1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    cos_max = math.cos(math.radians(max_angle_degrees))
    return torch.nonzero(cos >= cos_max - 1e-12).flatten()
