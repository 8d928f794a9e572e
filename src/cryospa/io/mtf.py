"""Detector MTF curves in RELION's STAR form (``rlnResolutionInversePixel``, ``rlnMtfValue``).

RELION ships these tables (``mtf_k2_300kV.star``, ``mtf_falcon4EC_300kV.star``, ...) and reads
them in post-processing and Bayesian polishing. The frequency column is in cycles per *detector*
pixel (0 to 0.5 = Nyquist of the camera); divide it by the detector pixel size in Å (before any
binning; RELION's ``--mtf_angpix``) to get 1/Å.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cryospa.errors import InputFileError
from cryospa.io.star import read_star, write_star

__all__ = ["MtfCurve", "read_mtf", "write_mtf"]

FREQUENCY_COLUMN = "rlnResolutionInversePixel"
VALUE_COLUMN = "rlnMtfValue"


@dataclass(frozen=True)
class MtfCurve:
    """A detector MTF table.

    Attributes
    ----------
    frequency_per_pixel : np.ndarray
        ``(m,)`` strictly increasing spatial frequency in cycles per detector pixel.
    value : np.ndarray
        ``(m,)`` MTF at those frequencies (> 0).
    path : str
        Where it was read from ('' if made in memory).

    """

    frequency_per_pixel: np.ndarray
    value: np.ndarray
    path: str = ""

    def frequency_per_angstrom(self, detector_pixel_angstrom: float) -> np.ndarray:
        """``(m,)`` frequencies in 1/Å for a detector pixel of ``detector_pixel_angstrom`` Å."""
        if not detector_pixel_angstrom > 0:
            raise ValueError(f"detector pixel size must be > 0 Å, got {detector_pixel_angstrom}")
        return self.frequency_per_pixel / detector_pixel_angstrom


def read_mtf(path: str | os.PathLike[str]) -> MtfCurve:
    """Read and check a RELION MTF STAR file.

    Parameters
    ----------
    path : path-like
        STAR file with a loop holding ``rlnResolutionInversePixel`` and ``rlnMtfValue``.

    Returns
    -------
    MtfCurve
        The table, sorted by frequency.

    Raises
    ------
    InputFileError
        Missing or unparsable file; no table with both columns; fewer than 2 rows; values that
        are not finite numbers; a frequency below 0 or repeated; an MTF value <= 1e-10 (RELION
        refuses those too, the division would explode).

    """
    p = Path(path)
    fix = ("give a RELION MTF file (a loop with rlnResolutionInversePixel and rlnMtfValue, e.g. "
           "mtf_k2_300kV.star from RELION's data/ folder)")
    if p.suffix.lower() != ".star":
        raise InputFileError(p, "an MTF file must be a STAR file (.star)", fix)
    blocks = read_star(p)
    table = next(
        (df for df in blocks.values() if FREQUENCY_COLUMN in df.columns and VALUE_COLUMN in df),
        None,
    )
    if table is None:
        have = ", ".join(sorted({str(c) for df in blocks.values() for c in df.columns})) or "none"
        raise InputFileError(
            p, f"no table with columns {FREQUENCY_COLUMN} and {VALUE_COLUMN} (columns: {have})",
            fix,
        )
    freq = pd.to_numeric(table[FREQUENCY_COLUMN], errors="coerce").to_numpy(np.float64)
    value = pd.to_numeric(table[VALUE_COLUMN], errors="coerce").to_numpy(np.float64)
    if freq.size < 2:
        raise InputFileError(p, f"the MTF table has {freq.size} row(s); at least 2 are needed", fix)
    bad = ~(np.isfinite(freq) & np.isfinite(value))
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 1
        raise InputFileError(p, f"row {row} of the MTF table is not a pair of numbers", fix)
    order = np.argsort(freq, kind="stable")
    freq, value = freq[order], value[order]
    if freq[0] < 0:
        raise InputFileError(p, f"negative frequency {freq[0]:g} in {FREQUENCY_COLUMN}", fix)
    if (np.diff(freq) <= 0).any():
        i = int(np.flatnonzero(np.diff(freq) <= 0)[0])
        raise InputFileError(p, f"frequency {freq[i]:g} appears twice in {FREQUENCY_COLUMN}", fix)
    if (value <= 1e-10).any():
        i = int(np.flatnonzero(value <= 1e-10)[0])
        raise InputFileError(
            p, f"MTF value {value[i]:g} at frequency {freq[i]:g} is not > 0; dividing by it "
            "would amplify noise without bound", fix,
        )
    return MtfCurve(frequency_per_pixel=freq, value=value, path=str(p))


def write_mtf(path: str | os.PathLike[str], curve: MtfCurve, *, name: str = "mtf") -> None:
    """Write an MTF table in RELION's form (``data_<name>`` loop), atomically."""
    write_star(
        path,
        {name: pd.DataFrame({FREQUENCY_COLUMN: curve.frequency_per_pixel,
                             VALUE_COLUMN: curve.value})},
    )
