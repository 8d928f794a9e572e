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

from dataclasses import dataclass

import numpy as np

from cryospa.errors import ParameterError

__all__ = [
    "N_POLYNOMIAL_COEFFS",
    "PolynomialFit",
    "fit_polynomial",
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


@dataclass(frozen=True)
class PolynomialFit:
    """Result of :func:`fit_polynomial`.

    Attributes
    ----------
    coeffs_x, coeffs_y
        ``(18,)`` coefficients of RELION's model (pixels); terms the data do not determine are 0.
    offsets
        ``(T, 2)`` fitted constant ``(x, y)`` offset of each trajectory (pixels); ``(0, 2)``
        without trajectories.
    fitted_terms
        ``(18,)`` bool: the terms that were fitted.
    """

    coeffs_x: np.ndarray
    coeffs_y: np.ndarray
    offsets: np.ndarray
    fitted_terms: np.ndarray


# terms in the order they are admitted to the fit (lowest degree first): index 3 s + t is
# spatial term s (1, x, x^2, y, y^2, xy) times temporal term t (z, z^2, z^3)
_TERM_ORDER = [3 * s + t for t in range(3) for s in (0, 1, 3, 5, 2, 4)]


def fit_polynomial(
    z: np.ndarray,
    x_px: np.ndarray,
    y_px: np.ndarray,
    shifts: np.ndarray,
    shape_px: tuple[int, int],
    *,
    weights: np.ndarray | None = None,
    trajectories: np.ndarray | None = None,
    spread_px: tuple[float, float] = (0.0, 0.0),
) -> PolynomialFit:
    """Weighted least-squares fit of RELION's polynomial model to observed local shifts.

    Minimises ``sum_i w_i |shifts_i - o_{t_i} - s(z_i, x_i, y_i)|^2`` over the 18 + 18
    coefficients of :func:`polynomial_shift` and, with ``trajectories``, one constant offset
    ``o_t`` per trajectory (a patch's shifts are measured relative to an arbitrary reference,
    e.g. its first frame, whose own error would otherwise bias every other frame). Terms the
    observations cannot determine (e.g. ``x^2`` with patches at only two ``x`` positions) are
    left out (set to 0) rather than given an arbitrary value, admitting terms by increasing
    degree while they add rank to the design.

    Parameters
    ----------
    z
        ``(N,)`` frame numbers of the observations (0 = first frame; fractional for frame groups).
    x_px, y_px
        ``(N,)`` positions (micrograph pixels).
    shifts
        ``(N, 2)`` observed ``(sx, sy)`` (pixels).
    shape_px
        ``(height, width)`` of the frames.
    weights
        ``(N,)`` non-negative weights (default 1).
    trajectories
        ``(N,)`` integer labels ``0 .. T-1``: observations sharing a label share an offset.
    spread_px
        ``(sd_x, sd_y)`` (pixels): each observation is the (weighted) mean shift over a region
        of this standard deviation around its position, such as a patch, rather than the shift
        at the point; the model's mean over the region differs from its value at the centre
        by ``sd^2`` times the ``x^2`` and ``y^2`` terms, which the fit accounts for.

    Returns
    -------
    PolynomialFit
        Coefficients, offsets and the fitted terms.
    """
    z_, x_, y_ = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (z, x_px, y_px))
    obs = np.asarray(shifts, dtype=np.float64)
    n = z_.size
    if x_.size != n or y_.size != n or obs.shape != (n, 2):
        raise ParameterError(
            f"fit_polynomial needs z, x, y of one length N and shifts (N, 2); got {z_.size}, "
            f"{x_.size}, {y_.size} and {obs.shape}"
        )
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != n or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ParameterError(f"fit weights must be N = {n} finite values >= 0")
    if not np.all(np.isfinite(obs)):
        raise ParameterError("observed shifts must be finite")
    h, wd = shape_px
    basis = polynomial_basis(z_, x_ / wd - 0.5, y_ / h - 0.5)  # (N, 18)
    temporal = np.stack([z_, z_ * z_, z_**3], axis=1)
    basis[:, 6:9] += (float(spread_px[0]) / wd) ** 2 * temporal  # mean of x^2 over the region
    basis[:, 12:15] += (float(spread_px[1]) / h) ** 2 * temporal  # mean of y^2
    if trajectories is None:
        n_traj = 0
        offsets_design = np.zeros((n, 0))
    else:
        labels = np.asarray(trajectories).reshape(-1)
        if labels.size != n or labels.min(initial=0) < 0:
            raise ParameterError("trajectory labels must be N integers >= 0")
        n_traj = int(labels.max(initial=-1)) + 1
        offsets_design = np.zeros((n, n_traj))
        offsets_design[np.arange(n), labels.astype(np.int64)] = 1.0
    root = np.sqrt(w)[:, None]
    design = np.concatenate([offsets_design, basis], axis=1) * root  # (N, T + 18)
    scale = np.abs(design).max(axis=0)
    scale[scale == 0] = 1.0
    design /= scale
    # admit columns (offsets first, then terms by degree) while they add rank (Gram-Schmidt)
    chosen: list[int] = []
    q = np.zeros((n, 0))
    for col in [*range(n_traj), *(n_traj + k for k in _TERM_ORDER)]:
        v = design[:, col]
        r = v - q @ (q.T @ v)
        r = r - q @ (q.T @ r)
        norm = float(np.linalg.norm(r))
        if norm > 1e-9 * max(float(np.linalg.norm(v)), 1e-300):
            chosen.append(col)
            q = np.concatenate([q, (r / norm)[:, None]], axis=1)
    solution = np.zeros((n_traj + N_POLYNOMIAL_COEFFS, 2))
    if chosen:
        # least squares through the QR factorisation just built: A = Q R, x = R^-1 Q^T b
        r_factor = q.T @ design[:, chosen]
        sol = np.linalg.solve(r_factor, q.T @ (obs * root))
        solution[chosen] = sol / scale[chosen, None]
    fitted = np.zeros(N_POLYNOMIAL_COEFFS, dtype=bool)
    fitted[[c - n_traj for c in chosen if c >= n_traj]] = True
    coeffs = solution[n_traj:]
    return PolynomialFit(
        coeffs_x=coeffs[:, 0].copy(),
        coeffs_y=coeffs[:, 1].copy(),
        offsets=solution[:n_traj].copy(),
        fitted_terms=fitted,
    )
