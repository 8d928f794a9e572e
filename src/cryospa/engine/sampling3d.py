"""Orientation sampling for 3D: global HEALPix grids and local searches, coarse and fine.

Global search (RELION's ``HealpixSampling`` with oversampling order 1): coarse orientations are
the HEALPix directions of ``order`` (NESTED; with a point group only an asymmetric unit, as
:func:`cryospa.core.sampling.orientation_grid`) times in-plane angles at the same nominal step
``360 / (6 2^order)`` degrees. Each coarse orientation has 8 fine children: the 4 NESTED child
pixels of order ``order + 1`` (indices ``4 p .. 4 p + 3``) times the 2 in-plane angles
``psi -+ step / 4``. Fine pose ``8 c + 2 q + a`` is child ``q`` (direction) and ``a`` (psi) of
coarse pose ``c``.

Local search (auto-refine once the sampling is fine, RELION's local searches with priors): the
orientations near each particle's current one, ``A = exp([w]_x) A_prev`` with the rotation
vector ``w`` on a cubic grid of step ``s`` (radians, the nominal step of ``order``) inside a
ball of radius ``range``; fine children at ``w -+ s / 4`` per axis (8 per coarse). Near the
identity this grid is uniform on SO(3) to better than 1 % within 20 degrees. The prior is a
Gaussian of standard deviation ``sigma`` on ``|w|`` (RELION: ``sigma = 2 step``, range 3
sigma), times the cell volume, so it stays a probability per sample.

Symmetry needs no special care in local mode (the grid is relative to the particle's current
orientation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryospa.core.rotations import euler_to_matrix, rotation_about_axis
from cryospa.core.sampling import (
    angular_step_degrees,
    healpix_directions,
    healpix_max_pixel_radius_degrees,
    in_plane_angles,
    symmetry_unique_directions,
)
from cryospa.core.symmetry import symmetry_family

__all__ = ["POSE_CHILDREN", "OrientationSampling"]

#: Fine orientations per coarse one (4 directions x 2 psi, or 2 x 2 x 2 rotation vectors).
POSE_CHILDREN = 8


def _rotvec_matrices(w: torch.Tensor) -> torch.Tensor:
    """``(P, 3)`` rotation vectors (radians) -> ``(P, 3, 3)`` matrices."""
    angle = torch.linalg.vector_norm(w, dim=-1)
    axis = torch.where(angle[:, None] > 0, w, torch.tensor([0.0, 0.0, 1.0], dtype=w.dtype))
    return rotation_about_axis(axis, torch.rad2deg(angle))


@dataclass(frozen=True)
class OrientationSampling:
    """Coarse orientations, their fine children and their log prior (module docstring).

    Attributes
    ----------
    order
        HEALPix order of the coarse grid (its nominal step in :attr:`step_degrees`).
    local
        Local search around each particle's orientation (matrices are then relative).
    coarse_matrices, fine_matrices
        ``(P, 3, 3)`` and ``(8 P, 3, 3)`` float32: absolute orientations (global) or the
        perturbations ``exp([w]_x)`` (local).
    coarse_log_prior, fine_log_prior
        ``(P,)`` and ``(8 P,)`` float32 log prior probability of each sample.
    sigma_degrees
        Prior width of a local search (0 for global).
    """

    order: int
    local: bool
    coarse_matrices: torch.Tensor
    fine_matrices: torch.Tensor
    coarse_log_prior: torch.Tensor
    fine_log_prior: torch.Tensor
    sigma_degrees: float = 0.0

    @property
    def step_degrees(self) -> float:
        """Nominal coarse step."""
        return angular_step_degrees(self.order)

    @property
    def fine_step_degrees(self) -> float:
        """Nominal fine step (half the coarse one)."""
        return 0.5 * self.step_degrees

    @property
    def n_coarse(self) -> int:
        """Coarse orientations ``P``."""
        return int(self.coarse_matrices.shape[0])

    @classmethod
    def global_grid(cls, order: int, symmetry: str = "C1") -> OrientationSampling:
        """HEALPix directions (asymmetric unit of ``symmetry``) times psi, and children."""
        directions = healpix_directions(order)
        pixels = torch.arange(directions.shape[0])
        if symmetry_family(symmetry) != ("C", 1):
            keep = symmetry_unique_directions(
                directions, symmetry,
                max_angle_degrees=0.5 * healpix_max_pixel_radius_degrees(order))
            directions, pixels = directions[keep], pixels[keep]
        step = angular_step_degrees(order)
        psi = in_plane_angles(step)
        n_dir, n_psi = directions.shape[0], psi.shape[0]
        coarse = torch.cat([directions.repeat_interleave(n_psi, 0),
                            psi.repeat(n_dir)[:, None]], dim=1)  # (P, 3)
        child_dirs = healpix_directions(order + 1)[
            (4 * pixels[:, None] + torch.arange(4)).reshape(-1)].reshape(n_dir, 4, 2)
        step_psi = 360.0 / n_psi
        child_psi = torch.stack([psi - step_psi / 4.0, psi + step_psi / 4.0], dim=-1)  # (J, 2)
        # fine pose 8 c + 2 q + a, c = d J + j
        d = child_dirs[:, None, :, None, :].expand(n_dir, n_psi, 4, 2, 2)
        p = child_psi[None, :, None, :, None].expand(n_dir, n_psi, 4, 2, 1)
        fine = torch.cat([d, p], dim=-1).reshape(-1, 3)
        n_c = coarse.shape[0]
        return cls(
            order=order,
            local=False,
            coarse_matrices=euler_to_matrix(coarse).to(torch.float32),
            fine_matrices=euler_to_matrix(fine).to(torch.float32),
            coarse_log_prior=torch.full((n_c,), -math.log(n_c), dtype=torch.float32),
            fine_log_prior=torch.full((8 * n_c,), -math.log(8 * n_c), dtype=torch.float32),
        )

    @classmethod
    def local_grid(
        cls, order: int, *, sigma_degrees: float, range_degrees: float | None = None
    ) -> OrientationSampling:
        """Rotation vectors on a cube of the step of ``order`` within ``range`` (3 sigma)."""
        if not sigma_degrees > 0:
            raise ValueError(f"local search needs sigma > 0 degrees, got {sigma_degrees}")
        step = math.radians(angular_step_degrees(order))
        reach = math.radians(3.0 * sigma_degrees if range_degrees is None else range_degrees)
        m = max(1, math.floor(reach / step + 1e-9))
        axis = torch.arange(-m, m + 1, dtype=torch.float64) * step
        g = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        coarse = g[(g * g).sum(-1) <= max(reach, step) ** 2 + 1e-12]
        h = step / 4.0
        corners = torch.tensor([[sx, sy, sz] for sx in (-h, h) for sy in (-h, h)
                                for sz in (-h, h)], dtype=torch.float64)
        fine = (coarse[:, None, :] + corners[None]).reshape(-1, 3)
        sigma = math.radians(sigma_degrees)

        def log_prior(w: torch.Tensor, cell: float) -> torch.Tensor:
            r2 = (w * w).sum(-1)
            return (-r2 / (2 * sigma**2) - 1.5 * math.log(2 * math.pi * sigma**2)
                    + math.log(cell)).to(torch.float32)

        return cls(
            order=order,
            local=True,
            coarse_matrices=_rotvec_matrices(coarse).to(torch.float32),
            fine_matrices=_rotvec_matrices(fine).to(torch.float32),
            coarse_log_prior=log_prior(coarse, step**3),
            fine_log_prior=log_prior(fine, (step / 2) ** 3),
            sigma_degrees=float(sigma_degrees),
        )

    def absolute(
        self, index: torch.Tensor, base: torch.Tensor | None, *, fine: bool
    ) -> torch.Tensor:
        """Orientation matrices of samples ``index`` ``(B, S)``: ``(B, S, 3, 3)``.

        ``base`` ``(B, 3, 3)``: the particles' current orientations (local searches only).
        """
        table = (self.fine_matrices if fine else self.coarse_matrices).to(index.device)
        rel = table[index]
        if not self.local:
            return rel
        if base is None:
            raise ValueError("a local search needs the particles' current orientations")
        return rel @ base.to(rel.dtype)[:, None]
