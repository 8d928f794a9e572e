"""Particle sets: RELION particle STAR rows turned into tensors (poses, shifts, CTFs) and images.

Shared by every step that reads particles (reconstruct, reproject, and later 2D / 3D jobs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cryospa.core.ctf import ctf_2d_on_grid
from cryospa.core.rotations import euler_to_matrix
from cryospa.errors import InputFileError
from cryospa.io.mrc import parse_image_name, read_images
from cryospa.io.star import RelionTable, joined, read_relion_star, require_columns

__all__ = ["ParticleSet", "check_square", "load_particles"]

ANGLE_COLUMNS = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
CTF_COLUMNS = ["rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]
OPTICS_CTF_COLUMNS = ["rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"]


@dataclass
class ParticleSet:
    """Particles of one STAR file with per-row optics joined in.

    Attributes
    ----------
    path
        The STAR file.
    table
        The table as read (for writing derived STAR files).
    rows
        ``table.data`` with the optics columns joined (same row order).
    pixel_size_angstrom
        Pixel size of the images (Å).
    box_size
        Image size in pixels (square images).
    image_root
        Folder that relative ``rlnImageName`` paths resolve against.
    """

    path: Path
    table: RelionTable
    rows: pd.DataFrame
    pixel_size_angstrom: float
    box_size: int
    image_root: Path

    def __len__(self) -> int:
        return len(self.rows)

    def require(self, columns: list[str], *, why: str) -> None:
        """Raise a clear error if a column needed for ``why`` is missing."""
        missing = [c for c in columns if c not in self.rows.columns]
        if missing:
            require_columns(self.rows, columns, path=self.path, table=f"particles (needed {why})")

    def rotations(self, index: np.ndarray | slice | None = None) -> torch.Tensor:
        """``(b, 3, 3)`` float64 RELION rotation matrices from rlnAngleRot/Tilt/Psi."""
        self.require(ANGLE_COLUMNS, why="for orientations")
        angles = self._select(index)[ANGLE_COLUMNS].to_numpy(dtype=np.float64)
        return euler_to_matrix(torch.from_numpy(angles))

    def origins_px(self, index: np.ndarray | slice | None = None) -> torch.Tensor:
        """``(b, 2)`` float64 origins (x, y) in pixels from rlnOriginX/YAngst (0 if absent)."""
        rows = self._select(index)
        if "rlnOriginXAngst" in rows.columns and "rlnOriginYAngst" in rows.columns:
            xy = rows[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=np.float64)
            return torch.from_numpy(xy / self.pixel_size_angstrom)
        return torch.zeros((len(rows), 2), dtype=torch.float64)

    def ctf(
        self,
        index: np.ndarray | slice | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        intact_until_first_peak: bool = False,
    ) -> torch.Tensor:
        """``(b, n, n // 2 + 1)`` CTFs on the rfft grid of the images (RELION convention).

        ``intact_until_first_peak``: 1 below the first peak (RELION's
        ``--ctf_intact_first_peak``).
        """
        self.require(CTF_COLUMNS + OPTICS_CTF_COLUMNS, why="for --ctf")
        rows = self._select(index)

        def col(name: str, default: float) -> torch.Tensor:
            values = (
                rows[name].to_numpy(dtype=np.float64)
                if name in rows.columns
                else np.full(len(rows), default)
            )
            return torch.tensor(values, device=device, dtype=dtype)

        return ctf_2d_on_grid(
            (self.box_size, self.box_size),
            self.pixel_size_angstrom,
            device=device,
            dtype=dtype,
            defocus_u_angstrom=col("rlnDefocusU", 0.0),
            defocus_v_angstrom=col("rlnDefocusV", 0.0),
            astigmatism_angle_degrees=col("rlnDefocusAngle", 0.0),
            voltage_kv=col("rlnVoltage", 300.0),
            spherical_aberration_mm=col("rlnSphericalAberration", 2.7),
            amplitude_contrast=col("rlnAmplitudeContrast", 0.1),
            phase_shift_degrees=col("rlnPhaseShift", 0.0),
            bfactor_angstrom2=col("rlnCtfBfactor", 0.0),
            scale=col("rlnCtfScalefactor", 1.0),
            intact_until_first_peak=intact_until_first_peak,
        )

    def images(self, index: np.ndarray | slice | None = None) -> np.ndarray:
        """``(b, n, n)`` float32 images read from their stacks (each stack opened once)."""
        self.require(["rlnImageName"], why="to read images")
        names = self._select(index)["rlnImageName"].tolist()
        return read_images(names, root=self.image_root, star_path=self.path)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Row-index arrays of consecutive batches."""
        for start in range(0, len(self), batch_size):
            yield np.arange(start, min(start + batch_size, len(self)))

    def _select(self, index: np.ndarray | slice | None) -> pd.DataFrame:
        if index is None:
            return self.rows
        return self.rows.iloc[index]


def _image_root(star_path: Path, rows: pd.DataFrame) -> Path:
    """Folder the image names resolve against.

    RELION resolves them against the working directory (the project folder); we also accept
    the STAR file's folder and its parents, so that e.g. ``Job/run_data.star`` naming
    ``Job/particles.mrcs`` works from anywhere.
    """
    if "rlnImageName" not in rows.columns or rows.empty:
        return Path(os.getcwd())
    _, rel = parse_image_name(str(rows["rlnImageName"].iloc[0]))
    if Path(rel).is_absolute() or Path(rel).exists():
        return Path(os.getcwd())
    folder = star_path.resolve().parent
    for candidate in (folder, *folder.parents):
        if (candidate / rel).exists():
            return candidate
    raise InputFileError(
        star_path,
        f"image stack {rel!r} (first rlnImageName) found neither in the working directory "
        f"{os.getcwd()} nor in the STAR file's folder or its parents",
        "run from the project folder that the image paths are relative to",
    )


def load_particles(
    path: str | os.PathLike[str],
    *,
    pixel_size_angstrom: float | None = None,
    box_size: int | None = None,
    need_images: bool = True,
) -> ParticleSet:
    """Read a particles STAR file (RELION 3.0 files are upgraded) into a :class:`ParticleSet`.

    Parameters
    ----------
    path
        Particles STAR file.
    pixel_size_angstrom
        Overrides the optics table's ``rlnImagePixelSize`` (as RELION's ``--angpix``).
    box_size
        Image size when there are no images to read it from (e.g. projection angles only).
    need_images
        Resolve the image stacks (error if missing); False for angle-only files.
    """
    star_path = Path(path)
    table = read_relion_star(star_path, kind="particles")
    rows = joined(table)
    if pixel_size_angstrom is None:
        if "rlnImagePixelSize" not in rows.columns:
            raise InputFileError(
                star_path,
                "no pixel size: the optics table has no rlnImagePixelSize",
                "give the pixel size with --angpix (Å)",
            )
        sizes = rows["rlnImagePixelSize"].to_numpy(dtype=np.float64)
        if np.any(sizes <= 0) or np.ptp(sizes) > 1e-6 * sizes.max():
            raise InputFileError(
                star_path,
                f"pixel sizes {sorted(set(sizes.tolist()))} Å in the optics table "
                "(must be one value > 0)",
                "give the pixel size with --angpix (Å)",
            )
        pixel_size_angstrom = float(sizes[0])
    elif pixel_size_angstrom <= 0:
        raise InputFileError(
            star_path, f"pixel size {pixel_size_angstrom} Å", "--angpix must be > 0"
        )
    if box_size is None and "rlnImageSize" in rows.columns:
        sizes_px = rows["rlnImageSize"].to_numpy()
        if np.ptp(sizes_px) != 0:
            raise InputFileError(
                star_path,
                f"several image sizes {sorted(set(sizes_px.tolist()))}",
                "process each optics group separately",
            )
        box_size = int(sizes_px[0])
    root = _image_root(star_path, rows) if need_images else Path(os.getcwd())
    if box_size is None:
        if not need_images:
            raise InputFileError(
                star_path,
                "no image size (rlnImageSize) in the optics table",
                "give the box size explicitly",
            )
        first = read_images([str(rows["rlnImageName"].iloc[0])], root=root, star_path=star_path)
        box_size = int(first.shape[-1])
    return ParticleSet(
        path=star_path,
        table=table,
        rows=rows,
        pixel_size_angstrom=float(pixel_size_angstrom),
        box_size=int(box_size),
        image_root=root,
    )


def check_square(images: np.ndarray, *, source: str | os.PathLike[str], box_size: int) -> None:
    """Raise a clear error unless ``images`` are ``(b, box_size, box_size)``."""
    h, w = images.shape[-2:]
    if h != w:
        raise InputFileError(
            source,
            f"images are {w} x {h} pixels; a square box is needed",
            "re-extract the particles with a square box",
        )
    if h != box_size:
        raise InputFileError(
            source,
            f"images are {h} px but rlnImageSize says {box_size} px",
            "fix rlnImageSize in the optics table",
        )
