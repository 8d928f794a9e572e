"""In-plane pose sampling for 2D classification: psi angles and translations, coarse and fine.

RELION samples on a coarse grid and, with adaptive oversampling of order 1, splits every coarse
sample into ``2`` in-plane angles and ``2 x 2`` translations at half the step (Scheres 2016,
Methods Enzymol. 579:125; RELION ``HealpixSampling``):

* coarse psi ``psi_c = c * 360 / J_c`` (``J_c = ceil(360 / (2 * psi_step))``, the step shrunk to
  divide 360), fine children ``psi_c -+ step_c / 4``: a uniform fine grid of ``2 J_c`` angles at
  ``step_c / 2`` offset by a quarter of the coarse step;
* coarse translations on a square grid of step ``2 * offset_step`` pixels inside the disc of
  radius ``offset_range`` (RELION's ``-ceil(range / step) .. ceil(range / step)``), fine children
  ``t_c + (-+ offset_step / 2, -+ offset_step / 2)``.

``psi_step`` and ``offset_step`` are the *fine* steps (as the RELION GUI's "in-plane angular
sampling" and "offset search step", which it doubles for ``relion_refine --psi_step
--offset_step`` with ``--oversampling 1``). The exhaustive search uses the same fine grid (all
children of all coarse samples), so adaptive and exhaustive results are comparable pose by pose.

Index layouts: fine psi ``j_f = 2 j_c + a`` (``a`` in 0, 1), fine translation ``t_f = n_t t_c + b``
(``n_t`` = 4, or 1 when ``offset_range`` is 0 and only the origin is searched).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryospa.core.rotations import euler_to_matrix
from cryospa.core.sampling import in_plane_angles

__all__ = ["InPlaneSampling", "rotations_2d", "translation_grid"]


def rotations_2d(psi_degrees: torch.Tensor) -> torch.Tensor:
    """``(J,)`` psi in degrees -> ``(J, 2, 2)`` RELION 2D matrices.

    The top-left block of ``euler_to_matrix((0, 0, psi))``; a reference turned by psi is
    ``ref(R^T r)``.
    """
    zeros = torch.zeros_like(psi_degrees)
    return euler_to_matrix(torch.stack([zeros, zeros, psi_degrees], dim=-1))[..., :2, :2]


def translation_grid(
    offset_range_px: float, offset_step_px: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Coarse and fine translations (module docstring): ``(T_c, 2)``, ``(n_t T_c, 2)``, ``n_t``.

    Shifts (dx, dy) in pixels, float64; a range of 0 searches only the origin (``n_t = 1``).
    """
    if offset_range_px < 0:
        raise ValueError(f"offset range must be >= 0 pixels, got {offset_range_px}")
    if offset_range_px == 0:
        coarse_t = torch.zeros((1, 2), dtype=torch.float64)
        return coarse_t, coarse_t.clone(), 1
    if not offset_step_px > 0:
        raise ValueError(f"offset step must be > 0 pixels, got {offset_step_px}")
    step = 2.0 * offset_step_px
    maxr = math.ceil(offset_range_px / step - 1e-9)
    axis = torch.arange(-maxr, maxr + 1, dtype=torch.float64) * step
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
    inside = (grid * grid).sum(-1) <= offset_range_px**2 + 1e-9
    coarse_t = grid[inside]
    h = offset_step_px / 2.0
    corners = torch.tensor([[-h, -h], [h, -h], [-h, h], [h, h]], dtype=torch.float64)
    fine_t = (coarse_t[:, None, :] + corners[None]).reshape(-1, 2)
    return coarse_t, fine_t, 4


@dataclass(frozen=True)
class InPlaneSampling:
    """Coarse and fine in-plane angles and translations (see the module docstring).

    Attributes
    ----------
    psi_step_degrees, offset_range_px, offset_step_px
        The requested fine steps and the search radius.
    coarse_psi, fine_psi
        ``(J_c,)`` and ``(2 J_c,)`` float64 angles in degrees.
    coarse_translations, fine_translations
        ``(T_c, 2)`` and ``(n_t T_c, 2)`` float64 shifts (dx, dy) in pixels.
    translation_children
        ``n_t``, fine translations per coarse one.
    """

    psi_step_degrees: float
    offset_range_px: float
    offset_step_px: float
    coarse_psi: torch.Tensor
    fine_psi: torch.Tensor
    coarse_translations: torch.Tensor
    fine_translations: torch.Tensor
    translation_children: int

    @classmethod
    def make(
        cls, *, psi_step_degrees: float, offset_range_px: float, offset_step_px: float
    ) -> InPlaneSampling:
        """Build the grids (float64, CPU)."""
        if not 0 < psi_step_degrees <= 180:
            raise ValueError(f"psi step must be in (0, 180] degrees, got {psi_step_degrees}")
        if offset_range_px < 0:
            raise ValueError(f"offset range must be >= 0 pixels, got {offset_range_px}")
        if offset_range_px > 0 and not offset_step_px > 0:
            raise ValueError(f"offset step must be > 0 pixels, got {offset_step_px}")
        coarse_psi = in_plane_angles(2.0 * psi_step_degrees)
        step_c = 360.0 / coarse_psi.numel()
        quarter = step_c / 4.0
        fine_psi = torch.stack([coarse_psi - quarter, coarse_psi + quarter], dim=-1).reshape(-1)
        coarse_t, fine_t, children = translation_grid(offset_range_px, offset_step_px)
        return cls(
            psi_step_degrees=float(psi_step_degrees),
            offset_range_px=float(offset_range_px),
            offset_step_px=float(offset_step_px),
            coarse_psi=coarse_psi,
            fine_psi=fine_psi,
            coarse_translations=coarse_t,
            fine_translations=fine_t,
            translation_children=children,
        )

    @property
    def fine_psi_step_degrees(self) -> float:
        """The fine psi step actually used (360 / number of fine angles)."""
        return 360.0 / self.fine_psi.numel()

    @property
    def fine_cell_area_px2(self) -> float:
        """Area (px^2) each fine translation stands for (1 with no translation search)."""
        return self.offset_step_px**2 if self.translation_children > 1 else 1.0
