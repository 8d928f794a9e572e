"""Reconstruct a map from particles with known orientations (as ``relion_reconstruct``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cryospa.core.backprojection import backproject, make_backprojector, reconstruct
from cryospa.core.fourier import phase_shift_2d
from cryospa.core.projection import images_to_centred_ft
from cryospa.core.symmetry import symmetry_operators
from cryospa.errors import InputFileError, ParameterError
from cryospa.io.mrc import write_mrc
from cryospa.jobs.particles import check_square, load_particles

__all__ = ["ReconstructResult", "run_reconstruct"]


@dataclass
class ReconstructResult:
    """What :func:`run_reconstruct` made."""

    output: Path
    n_particles: int
    box_size: int
    pixel_size_angstrom: float
    symmetry: str


def run_reconstruct(
    particles_star: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    ctf: bool = False,
    symmetry: str = "C1",
    pixel_size_angstrom: float | None = None,
    max_resolution_angstrom: float | None = None,
    subset: int | None = None,
    class_number: int | None = None,
    padding_factor: float = 2.0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> ReconstructResult:
    """Back-project particle images at their orientations and origins into a 3D map.

    Parameters
    ----------
    particles_star
        Particles with rlnImageName, rlnAngleRot/Tilt/Psi, rlnOriginX/YAngst (optional) and,
        for ``ctf``, defocus columns and optics.
    output
        Output MRC file (voxel size = the particles' pixel size).
    ctf
        Correct for the CTF (Wiener-like: sum CTF X / sum CTF^2).
    symmetry
        Point group (C1, Cn, Dn, T, O, I1-I4).
    pixel_size_angstrom
        Override the pixel size of the STAR file (Å).
    max_resolution_angstrom
        Ignore frequencies beyond this resolution (Å); Nyquist by default.
    subset
        Only particles with rlnRandomSubset equal to this (1 or 2), as RELION's ``--subset``.
    class_number
        Only particles with rlnClassNumber equal to this.
    """
    particles = load_particles(particles_star, pixel_size_angstrom=pixel_size_angstrom)
    rows = particles.rows
    keep = np.ones(len(rows), dtype=bool)
    for column, value in (("rlnRandomSubset", subset), ("rlnClassNumber", class_number)):
        if value is not None:
            particles.require([column], why=f"to select {column} = {value}")
            keep &= rows[column].to_numpy() == value
    index_all = np.flatnonzero(keep)
    if index_all.size == 0:
        raise InputFileError(particles.path, "no particles left after the subset / class selection")
    n = particles.box_size
    apix = particles.pixel_size_angstrom
    max_radius = None
    if max_resolution_angstrom is not None:
        if max_resolution_angstrom <= 0:
            raise ParameterError(f"--maxres must be > 0 Å, got {max_resolution_angstrom}")
        max_radius = n * apix / max_resolution_angstrom
    dev = torch.device(device)
    sym = symmetry_operators(symmetry, dtype=torch.float64)
    bp = make_backprojector(n, padding_factor=padding_factor, device=dev)
    bar = tqdm(total=index_all.size, desc="back-projecting", unit="particle", disable=not progress)
    for start in range(0, index_all.size, batch_size):
        idx = index_all[start : start + batch_size]
        images = particles.images(idx)
        check_square(images, source=particles.path, box_size=n)
        ft = images_to_centred_ft(torch.from_numpy(images).to(dev))
        # the particle sits at centre - origin: shift by +origin to centre it
        ft = ft * phase_shift_2d((n, n), particles.origins_px(idx).to(dev, torch.float32))
        rot = particles.rotations(idx)
        ctf_values = particles.ctf(idx, device=dev) if ctf else None
        rots = (rot[:, None] @ sym[None]).reshape(-1, 3, 3).to(dev, torch.float32)
        k = sym.shape[0]
        backproject(
            bp,
            ft.repeat_interleave(k, 0) if k > 1 else ft,
            rots,
            ctf=None
            if ctf_values is None
            else (ctf_values.repeat_interleave(k, 0) if k > 1 else ctf_values),
            max_radius_px=max_radius,
        )
        bar.update(idx.size)
    bar.close()
    volume = reconstruct(bp)
    write_mrc(output, volume.cpu().numpy().astype(np.float32), voxel_size_angstrom=apix)
    return ReconstructResult(Path(output), int(index_all.size), n, apix, symmetry)
