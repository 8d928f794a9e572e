"""Fourier shell correlation between two maps, with an optional mask (as relion_postprocess)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryospa.core.fsc import fsc, resolution_at_threshold
from cryospa.errors import InputFileError
from cryospa.io.mrc import read_mrc
from cryospa.io.star import write_star

__all__ = ["FscResult", "run_fsc"]


@dataclass
class FscResult:
    """An FSC curve with the resolutions at 0.143 and 0.5."""

    shells: np.ndarray  # (n_shells,) shell index
    inverse_resolution: np.ndarray  # (n_shells,) 1/Å
    fsc: np.ndarray  # (n_shells,)
    resolution_0143: float  # Å
    resolution_05: float  # Å
    pixel_size_angstrom: float
    box_size: int

    def table(self) -> pd.DataFrame:
        """RELION-style FSC table (rlnSpectralIndex, rlnResolution, rlnAngstromResolution, ...).

        As RELION (``postprocessing.cpp``), shell 0 is written as 999 Å and ``1 / 999`` 1/Å
        rather than 0, so every row has ``rlnResolution == 1 / rlnAngstromResolution``.
        """
        with np.errstate(divide="ignore"):
            angstrom = np.where(
                self.inverse_resolution > 0, 1.0 / np.maximum(self.inverse_resolution, 1e-30), 999.0
            )
        return pd.DataFrame(
            {
                "rlnSpectralIndex": self.shells.astype(int),
                "rlnResolution": 1.0 / angstrom,
                "rlnAngstromResolution": angstrom,
                "rlnFourierShellCorrelation": self.fsc,
            }
        )


def _load_map(path: str | os.PathLike[str], what: str) -> tuple[np.ndarray, float]:
    data, header = read_mrc(path)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputFileError(
            path,
            f"{what} has shape {data.shape}; a cubic 3D map is needed",
            "resize it to a cubic box",
        )
    return data, float(header.voxel_size_angstrom[0])


def run_fsc(
    map1: str | os.PathLike[str],
    map2: str | os.PathLike[str],
    *,
    mask: str | os.PathLike[str] | None = None,
    pixel_size_angstrom: float | None = None,
    star_out: str | os.PathLike[str] | None = None,
    png_out: str | os.PathLike[str] | None = None,
) -> FscResult:
    """FSC between two maps (multiplied by ``mask`` first if given); optionally write STAR / PNG."""
    a, apix1 = _load_map(map1, "map 1")
    b, apix2 = _load_map(map2, "map 2")
    if a.shape != b.shape:
        raise InputFileError(
            map2,
            f"box {b.shape} differs from {map1}'s {a.shape}",
            "resample both maps to the same box and pixel size",
        )
    apix = pixel_size_angstrom if pixel_size_angstrom is not None else apix1
    if pixel_size_angstrom is None and not math.isclose(apix1, apix2, rel_tol=1e-3):
        raise InputFileError(
            map2,
            f"voxel size {apix2} Å differs from {map1}'s {apix1} Å",
            "give --angpix if the headers are wrong",
        )
    if not apix > 0:
        raise InputFileError(map1, f"voxel size {apix} Å in the header", "give --angpix (Å)")
    ta = torch.from_numpy(a).double()
    tb = torch.from_numpy(b).double()
    if mask is not None:
        m, _ = _load_map(mask, "mask")
        if m.shape != a.shape:
            raise InputFileError(
                mask,
                f"mask box {m.shape} differs from the maps' {a.shape}",
                "make the mask on the same box as the maps",
            )
        tm = torch.from_numpy(m).double()
        ta, tb = ta * tm, tb * tm
    n = a.shape[0]
    curve = fsc(ta, tb)
    shells = np.arange(curve.shape[0])
    result = FscResult(
        shells=shells,
        inverse_resolution=shells / (n * apix),
        fsc=curve.numpy(),
        resolution_0143=resolution_at_threshold(
            curve, box_size=n, pixel_size_angstrom=apix, threshold=0.143
        ),
        resolution_05=resolution_at_threshold(
            curve, box_size=n, pixel_size_angstrom=apix, threshold=0.5
        ),
        pixel_size_angstrom=apix,
        box_size=n,
    )
    if star_out is not None:
        general = {
            "rlnFinalResolution": result.resolution_0143,
        }
        write_star(star_out, {"general": general, "fsc": result.table()})
    if png_out is not None:
        from cryospa.plots import plot_fsc  # matplotlib is slow to import: only when plotting

        plot_fsc(
            png_out,
            result.inverse_resolution,
            {"FSC": result.fsc},
            title=f"FSC {Path(map1).name} vs {Path(map2).name}: "
            f"{result.resolution_0143:.2f} Å at 0.143, {result.resolution_05:.2f} Å at 0.5",
        )
    return result
