"""Project a map at the orientations of a STAR file (as ``relion_project``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from cryospa.core.fourier import phase_shift_2d
from cryospa.core.projection import centred_ft_to_images, make_projector, project
from cryospa.errors import InputFileError
from cryospa.io.mrc import StackWriter, format_image_name, read_mrc
from cryospa.io.star import split_optics, write_relion_star
from cryospa.jobs.particles import load_particles

__all__ = ["ReprojectResult", "run_reproject"]


@dataclass
class ReprojectResult:
    """What :func:`run_reproject` made."""

    stack: Path
    star: Path
    n_images: int


def run_reproject(
    map_path: str | os.PathLike[str],
    angles_star: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    ctf: bool = False,
    pixel_size_angstrom: float | None = None,
    max_resolution_angstrom: float | None = None,
    padding_factor: float = 2.0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> ReprojectResult:
    """Project ``map_path`` at each row's angles, shift by ``-origin`` and apply the CTF.

    Writes the stack ``output`` (``.mrcs``) and, next to it, a STAR file with the input rows
    whose rlnImageName point into the new stack.
    """
    volume, header = read_mrc(map_path)
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise InputFileError(
            map_path,
            f"map has shape {volume.shape}; a cubic 3D map is needed",
            "resize the map to a cubic box first",
        )
    n = volume.shape[0]
    apix = pixel_size_angstrom
    if apix is None:
        apix = float(header.voxel_size_angstrom[0])
        if apix <= 0:
            raise InputFileError(
                map_path, f"voxel size {apix} Å in the header", "give --angpix (Å)"
            )
    particles = load_particles(angles_star, pixel_size_angstrom=apix, box_size=n, need_images=False)
    out_stack = Path(output)
    if out_stack.suffix != ".mrcs":
        out_stack = out_stack.with_suffix(".mrcs")
    max_radius = None if max_resolution_angstrom is None else n * apix / max_resolution_angstrom
    dev = torch.device(device)
    projector = make_projector(torch.from_numpy(volume).to(dev), padding_factor=padding_factor)
    bar = tqdm(total=len(particles), desc="projecting", unit="image", disable=not progress)
    with StackWriter(out_stack, len(particles), (n, n), voxel_size_angstrom=apix) as writer:
        for idx in particles.batches(batch_size):
            rots = particles.rotations(idx).to(dev, torch.float32)
            ft = project(projector, rots, max_radius_px=max_radius)[0]
            # the particle of a STAR row sits at centre - origin
            ft = ft * phase_shift_2d((n, n), -particles.origins_px(idx).to(dev, torch.float32))
            if ctf:
                ft = ft * particles.ctf(idx, device=dev)
            writer.write(int(idx[0]), centred_ft_to_images(ft, n).cpu().numpy())
            bar.update(idx.size)
    bar.close()
    rows = particles.rows.copy()
    rows["rlnImageName"] = [format_image_name(i, out_stack.name) for i in range(len(rows))]
    rows["rlnImagePixelSize"] = apix
    rows["rlnImageSize"] = n
    rows["rlnImageDimensionality"] = 2
    if "rlnOpticsGroup" not in rows.columns:
        rows["rlnOpticsGroup"] = 1
    out_star = out_stack.with_suffix(".star")
    write_relion_star(out_star, split_optics(rows, "particles"))
    return ReprojectResult(out_stack, out_star, len(rows))
