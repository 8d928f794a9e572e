"""Radiation damage as a function of exposure, and dose weighting.

The model is the critical exposure of Grant & Grigorieff (2015, eLife 4:e06980, eq. 3): the
amplitude of the specimen's signal at spatial frequency ``k`` (1/Å) after an exposure ``N``
(e/Å² at 300 kV) falls as ``exp(-N / (2 Ne(k)))`` with::

    Ne(k) = a k^b + c,     a = 0.245, b = -1.665, c = 2.81

At 200 kV an electron damages more: as RELION (``MotioncorrRunner``), the exposure at 200 kV
is divided by 0.8 to give the 300 kV equivalent. The dose-weighting filter of a frame that was
exposed from ``N0`` to ``N1`` uses the exposure at the end of the frame, as RELION does; the
simulator uses the mean attenuation over the frame (:func:`frame_attenuation`).
"""

from __future__ import annotations

import torch

from cryospa.errors import ParameterError

__all__ = [
    "critical_exposure",
    "equivalent_exposure",
    "frame_attenuation",
]

_A, _B, _C = 0.245, -1.665, 2.81


def equivalent_exposure(exposure_e_per_a2: float, voltage_kv: float) -> float:
    """The 300 kV-equivalent exposure (RELION's rule: 200 kV exposures count 1 / 0.8)."""
    if abs(voltage_kv - 300.0) <= 5.0:
        return exposure_e_per_a2
    if abs(voltage_kv - 200.0) <= 5.0:
        return exposure_e_per_a2 / 0.8
    raise ParameterError(
        f"the exposure-dependent damage model is known at 200 and 300 kV only, got {voltage_kv} kV"
    )


def critical_exposure(k_per_angstrom: torch.Tensor) -> torch.Tensor:
    """``Ne(k)`` (e/Å², 300 kV) at spatial frequencies ``k`` (1/Å); infinite at ``k = 0``."""
    k = k_per_angstrom.abs()
    safe = torch.where(k > 0, k, torch.ones_like(k))
    ne = _A * safe.pow(_B) + _C
    return torch.where(k > 0, ne, torch.full_like(k, float("inf")))


def frame_attenuation(
    critical_exposure_e_per_a2: torch.Tensor, start_e_per_a2: float, end_e_per_a2: float
) -> torch.Tensor:
    """Mean amplitude attenuation over a frame exposed from ``start`` to ``end`` (e/Å², 300 kV).

    ``(1 / (N1 - N0)) * integral_N0^N1 exp(-N / (2 Ne)) dN``, or ``exp(-N0 / (2 Ne))`` when
    ``N1 == N0``; ``critical_exposure_e_per_a2`` is ``Ne`` from :func:`critical_exposure`.
    """
    if not (0 <= start_e_per_a2 <= end_e_per_a2):
        raise ParameterError(
            f"frame exposure must satisfy 0 <= start <= end, got {start_e_per_a2}, {end_e_per_a2}"
        )
    two_ne = 2.0 * critical_exposure_e_per_a2
    first = torch.exp(-start_e_per_a2 / two_ne)
    width = end_e_per_a2 - start_e_per_a2
    if width == 0:
        return first
    last = torch.exp(-end_e_per_a2 / two_ne)
    mean = two_ne * (first - last) / width
    return torch.nan_to_num(mean, nan=1.0)  # inf * 0 at k = 0: no attenuation
