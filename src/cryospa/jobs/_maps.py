"""Reading and checking 3D maps given to the map jobs (resize, mask, postprocess)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryospa.errors import InputFileError
from cryospa.io.mrc import read_mrc, read_mrc_header

__all__ = ["MapInfo", "check_mask_values", "load_map", "map_info", "same_pixel_size"]


@dataclass(frozen=True)
class MapInfo:
    """A cubic map's file, box and pixel size."""

    path: Path
    box: int
    pixel_size_angstrom: float


def map_info(path: str | os.PathLike[str], *, what: str, angpix: float | None = None) -> MapInfo:
    """Check from the header that ``path`` is a cubic 3D map with a pixel size.

    ``angpix`` (when given and > 0) overrides the header's pixel size.

    Raises
    ------
    InputFileError
        Not an MRC file, not a cubic 3D map, or no pixel size in the header and none given.

    """
    p = Path(path)
    info = read_mrc_header(p)
    if len(info.shape) != 3 or info.is_stack or len(set(info.shape)) != 1:
        raise InputFileError(
            p, f"{what} has shape {info.shape}; a cubic 3D map is needed",
            "resize it to a cubic box (cryospa resize --box-out)",
        )
    pixel = float(angpix) if angpix else float(info.voxel_size_angstrom[0])
    if not pixel > 0:
        raise InputFileError(p, f"{what} header has no pixel size", "give --angpix")
    return MapInfo(p, int(info.shape[0]), pixel)


def load_map(
    path: str | os.PathLike[str], *, what: str, angpix: float | None = None
) -> tuple[np.ndarray, MapInfo]:
    """Read a cubic map as float32 after :func:`map_info`'s checks; non-finite values refused."""
    info = map_info(path, what=what, angpix=angpix)
    data, _ = read_mrc(info.path, permissive=True)
    if not np.isfinite(data).all():
        raise InputFileError(info.path, f"{what} holds NaN or infinite values",
                             "re-make the map; these values break every Fourier transform")
    return data, info


def same_pixel_size(a: float, b: float) -> bool:
    """Pixel sizes equal to 0.1 % (what an MRC header's float32 cell keeps)."""
    return math.isclose(a, b, rel_tol=1e-3)


def check_mask_values(mask: np.ndarray, path: str | os.PathLike[str]) -> float:
    """A mask must lie in [0, 1] (RELION allows 1e-6 of slack) and not be empty.

    Returns
    -------
    float
        The fraction of the box where the mask is > 0.5.

    """
    lo, hi = float(mask.min()), float(mask.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputFileError(
            path, f"mask values span [{lo:g}, {hi:g}], not [0, 1]",
            "give a soft mask made by cryospa mask or relion_mask_create (1 = particle, "
            "0 = solvent)",
        )
    if hi <= 0:
        raise InputFileError(path, "the mask is empty (all values are 0)",
                             "make it again with a lower --threshold (cryospa mask)")
    return float((mask > 0.5).mean())
