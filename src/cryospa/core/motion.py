"""Beam-induced motion models in RELION's conventions.

A movie's motion is stored as RELION's motion correction stores it (per-movie STAR file):

* global shifts ``(sx_f, sy_f)`` per frame ``f`` in movie pixels (``rlnMicrographShiftX/Y``):
  the shift that re-aligns the frame; the frame's content drifted by ``-s_f``. The aligned sum
  takes ``sum_f frame_f(q - s_f(q))`` at output pixel ``q``.
* a local deformation on top, RELION's ``ThirdOrderPolynomialModel`` (motion model version 1):
  18 coefficients per axis, polynomial in the frame number ``z`` (0 for the first frame summed)
  and the normalised position ``x = q_x / width - 0.5``, ``y = q_y / height - 0.5``::

      s(z, x, y) = (c0 z + c1 z^2 + c2 z^3) + (c3 z + c4 z^2 + c5 z^3) x
                 + (c6 z + ...) x^2 + (c9 z + ...) y + (c12 z + ...) y^2 + (c15 z + ...) x y

  (``src/micrograph_model.cpp`` in RELION). The total shift at ``q`` in frame ``z`` is the
  global shift plus this polynomial.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "N_POLYNOMIAL_COEFFS",
    "polynomial_basis",
    "polynomial_shift",
]

#: Coefficients per axis of RELION's third-order polynomial motion model.
N_POLYNOMIAL_COEFFS = 18


def polynomial_basis(
    z: np.ndarray | float, x: np.ndarray | float, y: np.ndarray | float
) -> np.ndarray:
    """The 18 terms of RELION's polynomial model at broadcast ``(z, x, y)``: shape ``(..., 18)``."""
    z, x, y = np.broadcast_arrays(
        np.asarray(z, dtype=np.float64),
        np.asarray(x, dtype=np.float64),
        np.asarray(y, dtype=np.float64),
    )
    spatial = (np.ones_like(x), x, x * x, y, y * y, x * y)
    temporal = (z, z * z, z * z * z)
    return np.stack([s * t for s in spatial for t in temporal], axis=-1)


def polynomial_shift(
    coeffs_x: np.ndarray,
    coeffs_y: np.ndarray,
    z: np.ndarray | float,
    x_px: np.ndarray | float,
    y_px: np.ndarray | float,
    shape_px: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Local shifts (pixels) of RELION's polynomial model at pixel positions.

    Parameters
    ----------
    coeffs_x, coeffs_y
        The 18 coefficients of each axis.
    z
        Frame number, 0 for the first frame of the sum.
    x_px, y_px
        Positions in micrograph pixels (column, row).
    shape_px
        ``(height, width)`` of the movie frames.

    Returns
    -------
    tuple
        ``(sx, sy)`` arrays broadcast from the inputs.
    """
    h, w = shape_px
    basis = polynomial_basis(z, np.asarray(x_px) / w - 0.5, np.asarray(y_px) / h - 0.5)
    return basis @ np.asarray(coeffs_x, dtype=np.float64), basis @ np.asarray(
        coeffs_y, dtype=np.float64
    )
