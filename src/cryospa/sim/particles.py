"""Particle-level simulation: a stack of extracted particles straight from one or more maps.

What is simulated, per particle (physics in :mod:`cryospa.sim.physics`):

1. a class drawn with the given fractions, an orientation drawn uniformly from SO(3) (Haar
   measure) or read from a STAR file, and an origin uniform in ``[-max_origin, max_origin]`` Å
   along x and y (RELION convention: the particle sits at the image centre minus the origin);
2. the projected potential of the class's map (Fourier-slice projection, in V Å), shifted by
   ``-origin``;
3. the weak-phase image through the CTF of the particle, the coherence and B-factor envelopes
   and the detector MTF; the micrograph of each particle has a mean defocus drawn uniformly in
   the defocus range, astigmatism ``dU - dV`` uniform in ``[0, astigmatism]`` at a random
   angle, and each particle's defocus adds a Gaussian height jitter to both dU and dV;
4. coloured Gaussian noise (counting noise, ice, slow background) scaled so that the particle
   SNR of the data set equals the requested value;
5. contrast inversion (by default, as RELION's extraction with ``--invert_contrast``: white
   particles) and RELION's normalisation (background outside a circle of 75 % of the box:
   zero mean, unit standard deviation).

To let CTF delocalisation carry signal out of the box, as when real particles are extracted,
steps 2 to 4 run in a box ``padding`` times larger which is then cropped (``padding=1``:
periodic images as ``relion_project`` makes).

SNR definition: with ``s_i`` the noiseless image of particle ``i`` (after CTF, envelopes and
MTF) and ``n_i`` its noise, and ``M_i`` a disc of diameter ``particle_diameter`` centred on
the particle (at the image centre minus its origin, clipped to the box),
``SNR = mean_i var_{M_i}(s_i) / mean_i var_{M_i}(n_i)``, with ``var_M`` the variance about the
mean over the disc. The expected noise variance in each disc is known in closed form from the
noise power spectrum (:func:`cryospa.sim.physics.expected_masked_noise_variance`), so one
counting-noise level for the whole data set meets the SNR exactly in expectation. The particle
diameter is by default that of the sphere holding 99 % of the density on the map's support
(voxels above 20 % of its 99.9th percentile).

Maps: each map is read with its voxel size, zero-padded and Fourier-rescaled to the output pixel
size (the padding is chosen so that the rescaled box is an integer number of voxels within
1e-4 relative, or the closest possible; the residual magnification is reported), cropped or
zero-padded to the output box (a box larger than the map is allowed; a box smaller than the
particle is an error), symmetrised if asked, then scaled to Coulomb potential (one factor for
all maps, from the first: the maps are assumed to share one density scale). Atomic models
(PDB / mmCIF files or ``builtin:NAME``, :mod:`cryospa.sim.atomic`) are computed directly at the
output pixel size and box as Coulomb potential relative to ice in volts and are not scaled.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cryospa.core.fourier import centre_to_origin, fourier_rescale, origin_to_centre, phase_shift_2d
from cryospa.core.projection import centred_ft_to_images, make_projector, project
from cryospa.core.rotations import euler_to_matrix, matrix_to_euler, random_rotations
from cryospa.core.symmetry import symmetrise_volume, symmetry_operators
from cryospa.errors import InputFileError, ParameterError
from cryospa.io import atomic_folder, check_new_folder
from cryospa.io.mrc import format_image_name, read_mrc, write_mrc
from cryospa.io.star import read_relion_star, split_optics, write_relion_star
from cryospa.sim.atomic import (
    DEFAULT_ATOMIC_PIXEL_SIZE_ANGSTROM,
    AtomicModelOptions,
    default_box_size,
    is_atomic_model,
)
from cryospa.sim.physics import (
    BackgroundModel,
    Microscope,
    background_power_2d,
    coloured_noise,
    expected_masked_noise_variance,
    interaction_constant_rad_per_volt_angstrom,
    masked_variance,
    normalise_background,
    potential_scale,
    support_mask,
    transfer_2d,
)

__all__ = [
    "ParticleSimulation",
    "TrueMaps",
    "load_maps_for_simulation",
    "prepare_maps",
    "read_angles",
    "read_maps",
    "run_simulate_particles",
    "simulate_particles",
    "write_particle_simulation",
]

PathLike = str | os.PathLike[str]

#: Folder (inside the output folder) of the particle stacks, one per micrograph.
PARTICLES_DIR = "Particles"
#: Folder of the ground truth.
TRUTH_DIR = "ground_truth"


# --------------------------------------------------------------------------------------
# Maps
# --------------------------------------------------------------------------------------


@dataclass
class TrueMaps:
    """The maps particles are projected from, at the output pixel size and box.

    Attributes
    ----------
    volumes
        ``(C, n, n, n)`` float32 Coulomb potential relative to ice (V), one map per class.
    pixel_size_angstrom
        Voxel size (Å).
    particle_radius_px
        Radius (pixels) of the sphere that holds 99 % of the density (largest over the
        classes; density on the support only), or half the given particle diameter.
    magnification_error
        Relative size error left by resampling: the maps are larger than the inputs by this
        fraction (0 when no resampling was needed).
    volts_per_unit
        Factor applied to the input MRC maps' values to make them potentials (V per map
        unit); maps computed from atomic models are in volts already and are not scaled
        (1.0 when every map is such).
    symmetry
        Point group the maps were symmetrised with (``C1``: none).
    sources
        Where each map came from (file names), for the record.
    descriptions
        How each map became a potential, one line per map, for the record.
    """

    volumes: torch.Tensor
    pixel_size_angstrom: float
    particle_radius_px: float
    magnification_error: float = 0.0
    volts_per_unit: float = 1.0
    symmetry: str = "C1"
    sources: list[str] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)

    @property
    def box_size(self) -> int:
        """Box edge (pixels)."""
        return int(self.volumes.shape[-1])

    @property
    def n_classes(self) -> int:
        """Number of maps."""
        return int(self.volumes.shape[0])


def read_maps(
    paths: Sequence[PathLike], *, map_pixel_size_angstrom: float | None = None
) -> tuple[list[np.ndarray], list[float]]:
    """Read cubic MRC maps and their voxel sizes.

    Parameters
    ----------
    paths
        MRC files.
    map_pixel_size_angstrom
        Voxel size (Å) to use instead of the headers'.

    Returns
    -------
    tuple
        ``(volumes, voxel_sizes)``: ``(n, n, n)`` float32 arrays and their voxel sizes (Å).

    Raises
    ------
    InputFileError
        A map is not 3D and cubic, or its header has no voxel size and none is given.
    """
    if not paths:
        raise ParameterError("no map given: use --map map.mrc")
    if map_pixel_size_angstrom is not None and map_pixel_size_angstrom <= 0:
        raise ParameterError(f"--map_angpix must be > 0 Å, got {map_pixel_size_angstrom}")
    volumes: list[np.ndarray] = []
    sizes: list[float] = []
    for path in paths:
        volume, header = read_mrc(path)
        if volume.ndim != 3 or len(set(volume.shape)) != 1:
            raise InputFileError(
                path,
                f"map has shape {volume.shape} (z, y, x); a cubic 3D map is needed",
                "pad or crop it to a cubic box first (e.g. relion_image_handler --new_box)",
            )
        apix = (
            map_pixel_size_angstrom
            if map_pixel_size_angstrom is not None
            else float(header.voxel_size_angstrom[0])
        )
        if apix <= 0:
            raise InputFileError(
                path, f"voxel size {apix} Å in the header", "give the voxel size with --map_angpix"
            )
        if not np.all(np.isfinite(volume)):
            raise InputFileError(path, "map contains NaN or infinite values", "fix the map")
        volumes.append(volume)
        sizes.append(apix)
    return volumes, sizes


def _pad_or_crop(volume: torch.Tensor, size: int) -> torch.Tensor:
    """Centred (pixel ``n // 2`` to ``size // 2``) zero-padding or cropping of a cube."""
    n = volume.shape[-1]
    if size == n:
        return volume
    if size > n:
        before = size // 2 - n // 2
        return F.pad(volume, [before, size - n - before] * 3)
    start = n // 2 - size // 2
    return volume[start : start + size, start : start + size, start : start + size]


def _resample(volume: torch.Tensor, ratio: float) -> tuple[torch.Tensor, float]:
    """Fourier-rescale by ``ratio`` (input / output voxel size); returns the map and size error.

    The map is first zero-padded to the size in ``[n, n + max(8, n // 4)]`` whose rescaled
    size is closest to an integer (the first within 1e-4 relative).
    """
    n = volume.shape[-1]
    if abs(ratio - 1.0) < 1e-9:
        return volume, 0.0
    best_n, best_err = n, math.inf
    for size in range(n, n + max(8, n // 4) + 1):
        target = size * ratio
        err = abs(target - round(target)) / target
        if err < best_err - 1e-15:
            best_n, best_err = size, err
        if err < 1e-4:
            break
    m = max(2, round(best_n * ratio))
    out = fourier_rescale(_pad_or_crop(volume, best_n), (m, m, m))
    actual_ratio = m / best_n  # output voxel = input voxel / actual_ratio
    return out, ratio / actual_ratio - 1.0


def _mass_radius_px(volume: torch.Tensor, fraction: float = 0.99) -> float:
    """Radius (px, about voxel ``n // 2``) of the sphere with ``fraction`` of the support's mass.

    Only the density on the support (:func:`cryospa.sim.physics.support_mask`) counts, so that
    noise in the solvent of a reconstructed map does not inflate the radius.
    """
    n = volume.shape[-1]
    ax = torch.arange(n, dtype=torch.float64) - n // 2
    r = torch.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
    v = volume.detach().to("cpu", torch.float64)
    w = torch.where(support_mask(v), v, torch.zeros_like(v)).reshape(-1)
    order = torch.argsort(r.reshape(-1))
    cum = torch.cumsum(w[order], 0)
    if float(cum[-1]) <= 0:
        raise ParameterError("the map has no positive density: protein must be positive")
    i = int(torch.searchsorted(cum, fraction * cum[-1]))
    return float(r.reshape(-1)[order][min(i, r.numel() - 1)])


def prepare_maps(
    volumes: Sequence[np.ndarray | torch.Tensor],
    map_pixel_sizes_angstrom: Sequence[float],
    *,
    pixel_size_angstrom: float,
    box_size: int,
    symmetry: str = "C1",
    contrast_potential_volt: float = 2.0,
    particle_diameter_angstrom: float | None = None,
    sources: Sequence[str] | None = None,
    absolute: Sequence[bool] | None = None,
    descriptions: Sequence[str] | None = None,
) -> TrueMaps:
    """Resample maps to the output pixel size and box, symmetrise and scale to potential.

    Parameters
    ----------
    volumes
        ``(n_c, n_c, n_c)`` cubic maps (any units, protein positive), one per class; maps
        flagged in ``absolute`` are potentials relative to ice in volts already.
    map_pixel_sizes_angstrom
        Their voxel sizes (Å).
    pixel_size_angstrom
        Output pixel size (Å).
    box_size
        Output box (pixels, even).
    symmetry
        Point group to impose (RELION names; ``C1`` none).
    contrast_potential_volt
        Mean potential of protein relative to ice (V) over the support of the first map that
        is not absolute; all maps that are not absolute get that map's scale factor.
    particle_diameter_angstrom
        Diameter (Å) of the disc the SNR is measured in; default from the maps.
    sources
        Names of the maps, for the record.
    absolute
        Per map: True if it is in volts already (computed from an atomic model,
        :mod:`cryospa.sim.atomic`) and must not be scaled. Default: none is.
    descriptions
        Per map, how it became a potential (default: a line saying how it was scaled).

    Returns
    -------
    TrueMaps
        The maps as projected (they are the ground truth).

    Raises
    ------
    ParameterError
        Bad sizes, the particle does not fit into the box, or an absolute map (an atomic
        model) does not have the symmetry imposed (correlation with its symmetrised self
        below 0.8: the model is not in the group's frame).
    """
    _check_positive("pixel size (--angpix, Å)", pixel_size_angstrom)
    if box_size < 8 or box_size % 2:
        raise ParameterError(f"box size must be even and >= 8 pixels (--box), got {box_size}")
    if contrast_potential_volt <= 0:
        raise ParameterError(f"contrast potential must be > 0 V, got {contrast_potential_volt}")
    if len(volumes) != len(map_pixel_sizes_angstrom):
        raise ParameterError("one voxel size per map is needed")
    ops = symmetry_operators(symmetry)  # raises on an unknown group
    out: list[torch.Tensor] = []
    errors: list[float] = []
    radius = 0.0
    for volume, apix in zip(volumes, map_pixel_sizes_angstrom, strict=True):
        v = torch.as_tensor(np.asarray(volume, dtype=np.float32))
        if v.ndim != 3 or len(set(v.shape)) != 1:
            raise ParameterError(f"maps must be cubic 3D arrays, got shape {tuple(v.shape)}")
        _check_positive("map voxel size (Å)", apix)
        v, err = _resample(v.to(torch.float64), apix / pixel_size_angstrom)
        errors.append(err)
        radius = max(radius, _mass_radius_px(v))
        out.append(v)
    if particle_diameter_angstrom is not None:
        _check_positive("particle diameter (Å)", particle_diameter_angstrom)
        radius = 0.5 * particle_diameter_angstrom / pixel_size_angstrom
    if radius > box_size / 2:
        raise ParameterError(
            f"the particle is {2 * radius * pixel_size_angstrom:.0f} Å across (99 % of the "
            f"map's density) but the box is {box_size} px x {pixel_size_angstrom} Å = "
            f"{box_size * pixel_size_angstrom:.0f} Å: use --box >= "
            f"{2 * math.ceil(radius)} (1.5 to 2 times the particle is usual)"
        )
    names = list(sources) if sources is not None else [f"map{i + 1}" for i in range(len(out))]
    flags = [False] * len(out) if absolute is None else [bool(a) for a in absolute]
    if len(flags) != len(out) or len(names) != len(out):
        raise ParameterError("one source name and one absolute flag per map are needed")
    maps = torch.stack([_pad_or_crop(v, box_size) for v in out]).to(torch.float32)
    if ops.shape[0] > 1:
        symmetric = symmetrise_volume(maps, symmetry)
        for i in np.flatnonzero(flags):
            pair = torch.stack([maps[i].reshape(-1), symmetric[i].reshape(-1)])
            corr = float(torch.corrcoef(pair.to(torch.float64))[0, 1])
            if corr < 0.8:
                raise ParameterError(
                    f"{names[i]}: the model does not have {symmetry} symmetry about the box "
                    f"centre (correlation {corr:.2f} with its symmetrised map): rotate the "
                    f"model so that its symmetry axes lie along RELION's {symmetry} axes "
                    "through its centre, or leave out --sym"
                )
        maps = symmetric
    scaled = [i for i, a in enumerate(flags) if not a]
    scale = 1.0
    if scaled:
        scale = potential_scale(maps[scaled[0]], contrast_potential_volt=contrast_potential_volt)
        if len(scaled) == len(flags):
            maps = maps * scale
        else:
            factors = torch.tensor([1.0 if a else scale for a in flags], dtype=maps.dtype)
            maps = maps * factors[:, None, None, None]
    if descriptions is None:
        descriptions = [
            "potential in volts (not scaled)"
            if a
            else f"scaled by {scale:.6g} V per map unit (mean {contrast_potential_volt:g} V "
            f"over the support of {names[scaled[0]]})"
            for a in flags
        ]
    return TrueMaps(
        volumes=maps,
        pixel_size_angstrom=float(pixel_size_angstrom),
        particle_radius_px=float(radius),
        magnification_error=float(max(errors, key=abs)),
        volts_per_unit=float(scale),
        symmetry=symmetry,
        sources=names,
        descriptions=list(descriptions),
    )


def read_angles(path: PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Orientations (and origins, if present) of a RELION particles STAR file.

    Returns
    -------
    tuple
        ``(angles, origins)``: ``(n, 3)`` rot, tilt, psi (degrees) and ``(n, 2)`` origins x, y
        (Å) or None.
    """
    table = read_relion_star(path, kind="particles")
    rows = table.data
    cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    missing = [c for c in cols if c not in rows.columns]
    if missing:
        raise InputFileError(path, f"no column(s) {missing}", "give a STAR file with angles")
    if rows.empty:
        raise InputFileError(path, "no particle rows", "give a STAR file with angles")
    angles = rows[cols].to_numpy(dtype=np.float64)
    origins = None
    if "rlnOriginXAngst" in rows.columns and "rlnOriginYAngst" in rows.columns:
        origins = rows[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=np.float64)
    return angles, origins


# --------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------


@dataclass
class ParticleSimulation:
    """A simulated particle data set and its ground truth.

    Attributes
    ----------
    images
        ``(n, b, b)`` float32 particle images, normalised (and inverted) as extracted by RELION.
    signals
        ``(n, b, b)`` float32 noiseless part of ``images``, on the same scale and with the same
        sign (``images - signals`` is the noise plus a constant per image).
    particles
        Rows of ``particles.star`` (joined with optics): image and micrograph names, the
        micrograph's defocus, random subset. No angles, like freshly extracted particles.
    truth
        Rows of ``ground_truth/particles_true.star``: the same images with the true angles,
        origins (Å), per-particle defocus and class.
    maps
        The maps projected (ground truth).
    snr
        Requested SNR (see the module docstring).
    snr_realised
        SNR with the noise actually drawn (same definition).
    shot_noise_variance
        Counting-noise variance per pixel in units of the squared mean exposure.
    equivalent_dose_e_per_a2
        The exposure whose counting noise that is, ``1 / (s2 pixel_area)`` (e/Å^2).
    parameters
        Every setting and the seed, for the record.
    """

    images: np.ndarray
    signals: np.ndarray
    particles: pd.DataFrame
    truth: pd.DataFrame
    maps: TrueMaps
    snr: float
    snr_realised: float
    shot_noise_variance: float
    equivalent_dose_e_per_a2: float
    parameters: dict[str, Any]


def _check_positive(what: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ParameterError(f"{what} must be > 0, got {value}")


def _circles(
    size: int, centres_px: torch.Tensor, radius_px: float, *, offset: int = 0
) -> torch.Tensor:
    """``(b, size, size)`` 0/1 discs at ``(b, 2)`` centres (x, y) + offset, radius in pixels."""
    ax = torch.arange(size, dtype=centres_px.dtype, device=centres_px.device) - offset
    dx = ax[None, None, :] - centres_px[:, 0, None, None]
    dy = ax[None, :, None] - centres_px[:, 1, None, None]
    return (dx * dx + dy * dy <= radius_px * radius_px).to(centres_px.dtype)


def _validate(
    *,
    n_particles: int,
    snr: float,
    defocus_range_angstrom: tuple[float, float],
    astigmatism_angstrom: float,
    defocus_jitter_angstrom: float,
    bfactor_angstrom2: float,
    max_origin_angstrom: float,
    n_micrographs: int,
    padding: float,
    box_size: int,
    pixel_size_angstrom: float,
) -> None:
    if n_particles < 1:
        raise ParameterError(f"number of particles (--n) must be >= 1, got {n_particles}")
    _check_positive("SNR (--snr)", snr)
    lo, hi = defocus_range_angstrom
    if not (0 < lo <= hi):
        raise ParameterError(
            f"defocus range must satisfy 0 < min <= max (Å, underfocus positive), got {lo}, {hi}"
        )
    for what, value in (
        ("astigmatism (--astigmatism, Å)", astigmatism_angstrom),
        ("defocus jitter (--defocus_jitter, Å)", defocus_jitter_angstrom),
        ("B-factor (--bfactor, Å^2)", bfactor_angstrom2),
        ("maximum origin (--max_origin, Å)", max_origin_angstrom),
    ):
        if not (value >= 0 and math.isfinite(value)):
            raise ParameterError(f"{what} must be >= 0, got {value}")
    if astigmatism_angstrom / 2 >= lo:
        raise ParameterError(
            f"astigmatism {astigmatism_angstrom} Å is too large for the smallest defocus {lo} Å"
        )
    if max_origin_angstrom >= box_size * pixel_size_angstrom / 4:
        raise ParameterError(
            f"maximum origin {max_origin_angstrom} Å must be below a quarter of the box "
            f"({box_size * pixel_size_angstrom / 4:.1f} Å)"
        )
    if n_micrographs < 1 or n_micrographs > n_particles:
        raise ParameterError(
            f"number of micrographs must be in [1, {n_particles}] (the number of particles), "
            f"got {n_micrographs}"
        )
    if padding < 1:
        raise ParameterError(f"padding must be >= 1, got {padding}")


def simulate_particles(
    maps: TrueMaps,
    fractions: Sequence[float] | None = None,
    *,
    n_particles: int,
    snr: float = 0.05,
    microscope: Microscope | None = None,
    background: BackgroundModel | None = None,
    defocus_range_angstrom: tuple[float, float] = (8000.0, 25000.0),
    astigmatism_angstrom: float = 500.0,
    defocus_jitter_angstrom: float = 50.0,
    bfactor_angstrom2: float = 50.0,
    max_origin_angstrom: float = 5.0,
    n_micrographs: int | None = None,
    angles_degrees: np.ndarray | None = None,
    origins_angstrom: np.ndarray | None = None,
    invert_contrast: bool = True,
    padding: float = 2.0,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> ParticleSimulation:
    """Simulate extracted particle images with known orientations, origins, CTFs and classes.

    Parameters
    ----------
    maps
        From :func:`prepare_maps` (pixel size and box of the output).
    fractions
        Class fractions, one per map, summing to 1 (default: equal).
    n_particles
        Number of particles (must equal the number of rows of ``angles_degrees`` if given).
    snr
        Particle SNR of the data set (see the module docstring); 0.01 to 0.1 is realistic.
    microscope
        Optics (default :class:`~cryospa.sim.physics.Microscope`: 200 kV, Cs 1.4 mm, 0.1).
    background
        Shape of the noise spectrum (default :class:`~cryospa.sim.physics.BackgroundModel`).
    defocus_range_angstrom
        Range (Å) of the micrographs' mean defocus ``(dU + dV) / 2``, underfocus positive.
    astigmatism_angstrom
        Largest ``dU - dV`` (Å); each micrograph draws it uniformly from 0.
    defocus_jitter_angstrom
        Standard deviation (Å) of a particle's defocus about its micrograph's (height in ice).
    bfactor_angstrom2
        B-factor (Å^2) of the damage / blur envelope.
    max_origin_angstrom
        Origins are uniform in ``[-max, max]`` Å along x and y.
    n_micrographs
        Micrographs the particles come from (consecutive blocks); default one per 200
        particles.
    angles_degrees, origins_angstrom
        ``(n, 3)`` RELION Euler angles and ``(n, 2)`` origins to use instead of random ones.
    invert_contrast
        White particles on a dark background, as RELION's extraction with
        ``--invert_contrast`` (needed for a positive reconstruction).
    padding
        Simulate in a box this many times larger, then crop (>= 1).
    seed
        Seed of every random draw; the same seed gives the same data set.
    batch_size
        Particles per batch.
    device
        Where to compute.

    Returns
    -------
    ParticleSimulation
        Images, noiseless signals, STAR rows and ground truth.
    """
    microscope = microscope or Microscope()
    background = background or BackgroundModel()
    b = maps.box_size
    apix = maps.pixel_size_angstrom
    n = int(n_particles)
    if angles_degrees is not None:
        angles_degrees = np.asarray(angles_degrees, dtype=np.float64)
        if angles_degrees.ndim != 2 or angles_degrees.shape != (n, 3):
            raise ParameterError(
                f"{n} particles asked for but {angles_degrees.shape[0]} orientations given"
            )
    if n_micrographs is None:
        n_micrographs = max(1, round(n / 200))
    _validate(
        n_particles=n,
        snr=snr,
        defocus_range_angstrom=defocus_range_angstrom,
        astigmatism_angstrom=astigmatism_angstrom,
        defocus_jitter_angstrom=defocus_jitter_angstrom,
        bfactor_angstrom2=bfactor_angstrom2,
        max_origin_angstrom=max_origin_angstrom,
        n_micrographs=n_micrographs,
        padding=padding,
        box_size=b,
        pixel_size_angstrom=apix,
    )
    n_classes = maps.n_classes
    if fractions is None:
        frac = np.full(n_classes, 1.0 / n_classes)
    else:
        frac = np.asarray(fractions, dtype=np.float64)
        if frac.shape != (n_classes,) or np.any(frac <= 0) or abs(frac.sum() - 1) > 1e-3:
            raise ParameterError(
                f"class fractions must be one positive number per map ({n_classes}) summing to "
                f"1, got {list(frac.ravel())}"
            )
        frac = frac / frac.sum()
    if batch_size < 1:
        raise ParameterError(f"batch size must be >= 1, got {batch_size}")

    # --- metadata: every random draw from one seeded generator, in a fixed order
    rng = np.random.default_rng(seed)
    classes = rng.choice(n_classes, size=n, p=frac) + 1
    torch_gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    if angles_degrees is None:
        angles = matrix_to_euler(random_rotations(n, generator=torch_gen)).numpy()
    else:
        angles = angles_degrees
    origins = rng.uniform(-max_origin_angstrom, max_origin_angstrom, size=(n, 2))
    if origins_angstrom is not None:
        origins = np.asarray(origins_angstrom, dtype=np.float64).reshape(n, 2)
    mic = np.arange(n) * n_micrographs // n
    mean_df = rng.uniform(*defocus_range_angstrom, size=n_micrographs)
    astig = rng.uniform(0.0, astigmatism_angstrom, size=n_micrographs)
    astig_angle = rng.uniform(-90.0, 90.0, size=n_micrographs)
    mic_du, mic_dv = mean_df + astig / 2, mean_df - astig / 2
    height = rng.normal(0.0, defocus_jitter_angstrom, size=n) if defocus_jitter_angstrom else 0
    du = mic_du[mic] + height
    dv = mic_dv[mic] + height
    dang = astig_angle[mic]
    subsets = rng.integers(1, 3, size=n)

    # --- pass 1: noiseless images, their variance in the particle disc, noise shape
    dev = torch.device(device)
    big = max(b, round(b * padding))
    big += big % 2
    start = big // 2 - b // 2
    sigma_e = interaction_constant_rad_per_volt_angstrom(microscope.voltage_kv)
    projectors = [make_projector(maps.volumes[c].to(dev)) for c in range(n_classes)]
    rotations = euler_to_matrix(torch.from_numpy(angles))  # (n, 3, 3) float64
    origins_px = torch.from_numpy(origins / apix)  # (n, 2)
    radius = maps.particle_radius_px
    signals = np.empty((n, b, b), dtype=np.float32)
    var_signal = np.empty(n)
    noise_shape = np.empty(n)  # expected masked noise variance per unit counting-noise power

    def batch_geometry(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full-grid transfer, disc masks in the small and the big box."""
        f32 = torch.float32
        transfer, _ = transfer_2d(
            (big, big),
            apix,
            microscope=microscope,
            defocus_u_angstrom=torch.as_tensor(du[idx], device=dev, dtype=f32),
            defocus_v_angstrom=torch.as_tensor(dv[idx], device=dev, dtype=f32),
            astigmatism_angle_degrees=torch.as_tensor(dang[idx], device=dev, dtype=f32),
            bfactor_angstrom2=bfactor_angstrom2,
            rfft=False,
        )
        centres = (b // 2 - origins_px[idx]).to(dev, f32)  # (nb, 2) x, y in the small box
        small = _circles(b, centres, radius)
        large = F.pad(small, [start, big - b - start, start, big - b - start])
        return transfer, small, large

    for lo in range(0, n, batch_size):
        idx = np.arange(lo, min(lo + batch_size, n))
        ft = torch.empty((idx.size, b, b // 2 + 1), dtype=torch.complex64, device=dev)
        for c in range(n_classes):
            sel = np.flatnonzero(classes[idx] == c + 1)
            if sel.size:
                rots = rotations[idx[sel]].to(dev, torch.float32)
                ft[torch.from_numpy(sel).to(dev)] = project(projectors[c], rots)[0]
        potential = centred_ft_to_images(ft, b) * apix  # (nb, b, b) projected potential, V Å
        potential = F.pad(potential, [start, big - b - start, start, big - b - start])
        transfer, small, large = batch_geometry(idx)
        pft = torch.fft.fft2(centre_to_origin(potential, 2))
        shift = phase_shift_2d((big, big), -origins_px[idx].to(dev, torch.float32), rfft=False)
        contrast = origin_to_centre(
            torch.fft.ifft2(pft * shift * transfer).real * (-2.0 * sigma_e), 2
        )
        contrast = contrast[:, start : start + b, start : start + b]
        signals[idx] = contrast.cpu().numpy()
        var_signal[idx] = masked_variance(contrast, small).cpu().numpy()
        power = background_power_2d((big, big), apix, transfer, background=background)
        noise_shape[idx] = expected_masked_noise_variance(power, large).cpu().numpy()

    shot = float(var_signal.mean() / (snr * noise_shape.mean()))

    # --- pass 2: noise, normalisation, contrast inversion
    images = np.empty((n, b, b), dtype=np.float32)
    var_noise = np.empty(n)
    sign = -1.0 if invert_contrast else 1.0
    for lo in range(0, n, batch_size):
        idx = np.arange(lo, min(lo + batch_size, n))
        transfer, small, _ = batch_geometry(idx)
        power = background_power_2d((big, big), apix, transfer, background=background)
        white = torch.from_numpy(rng.standard_normal((idx.size, big, big), dtype=np.float32))
        noise = coloured_noise(shot * power, white.to(dev))[:, start : start + b, start : start + b]
        var_noise[idx] = masked_variance(noise, small).cpu().numpy()
        signal = torch.from_numpy(signals[idx]).to(dev)
        normed, _, sd = normalise_background(1.0 + signal + noise, background_radius_px=0.375 * b)
        images[idx] = (sign * normed).cpu().numpy()
        signals[idx] = (sign * signal / sd[:, None, None]).cpu().numpy()

    # --- tables
    stacks = [f"{PARTICLES_DIR}/mic{m + 1:03d}.mrcs" for m in range(n_micrographs)]
    index_in_stack = np.arange(n) - np.searchsorted(mic, mic)
    optics = {
        "rlnOpticsGroup": 1,
        "rlnOpticsGroupName": "opticsGroup1",
        "rlnVoltage": microscope.voltage_kv,
        "rlnSphericalAberration": microscope.cs_mm,
        "rlnAmplitudeContrast": microscope.amplitude_contrast,
        "rlnImagePixelSize": apix,
        "rlnImageSize": b,
        "rlnImageDimensionality": 2,
    }
    names = [format_image_name(int(i), stacks[m]) for i, m in zip(index_in_stack, mic, strict=True)]
    mic_names = [f"Micrographs/mic{m + 1:03d}.mrc" for m in mic]
    particles = pd.DataFrame(
        {
            "rlnImageName": names,
            "rlnMicrographName": mic_names,
            "rlnDefocusU": mic_du[mic],
            "rlnDefocusV": mic_dv[mic],
            "rlnDefocusAngle": dang,
            "rlnRandomSubset": subsets,
            **optics,
        }
    )
    truth = pd.DataFrame(
        {
            "rlnImageName": names,
            "rlnMicrographName": mic_names,
            "rlnDefocusU": du,
            "rlnDefocusV": dv,
            "rlnDefocusAngle": dang,
            "rlnAngleRot": angles[:, 0],
            "rlnAngleTilt": angles[:, 1],
            "rlnAnglePsi": angles[:, 2],
            "rlnOriginXAngst": origins[:, 0],
            "rlnOriginYAngst": origins[:, 1],
            "rlnClassNumber": classes,
            "rlnRandomSubset": subsets,
            **optics,
        }
    )
    parameters: dict[str, Any] = {
        "level": "particles",
        "seed": seed,
        "n_particles": n,
        "n_micrographs": n_micrographs,
        "box_size_px": b,
        "pixel_size_angstrom": apix,
        "maps": maps.sources,
        "class_fractions": [float(x) for x in frac],
        "symmetry": maps.symmetry,
        "map_magnification_error": maps.magnification_error,
        "map_volts_per_unit": maps.volts_per_unit,
        "map_potentials": maps.descriptions,
        "particle_diameter_angstrom": 2 * radius * apix,
        "snr": snr,
        "snr_realised": float(var_signal.mean() / var_noise.mean()),
        "shot_noise_variance": shot,
        "equivalent_dose_e_per_a2": 1.0 / (shot * apix * apix),
        "interaction_constant_rad_per_volt_angstrom": sigma_e,
        "microscope": vars(microscope),
        "background": vars(background),
        "defocus_range_angstrom": list(defocus_range_angstrom),
        "astigmatism_angstrom": astigmatism_angstrom,
        "defocus_jitter_angstrom": defocus_jitter_angstrom,
        "bfactor_angstrom2": bfactor_angstrom2,
        "max_origin_angstrom": max_origin_angstrom,
        "orientations": "random uniform" if angles_degrees is None else "given",
        "invert_contrast": invert_contrast,
        "padding": padding,
        "background_radius_px": 0.375 * b,
    }
    return ParticleSimulation(
        images=images,
        signals=signals,
        particles=particles,
        truth=truth,
        maps=maps,
        snr=snr,
        snr_realised=parameters["snr_realised"],
        shot_noise_variance=shot,
        equivalent_dose_e_per_a2=parameters["equivalent_dose_e_per_a2"],
        parameters=parameters,
    )


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


_README = """\
Simulated particles (cryospa simulate --level particles)

particles.star              particles as freshly extracted by RELION (3.1 STAR): image names,
                            micrograph names, the micrograph's defocus (per-particle defocus is
                            in the ground truth), random half-set; no angles
Particles/micNNN.mrcs       particle stacks, one per micrograph; normalised as RELION's
                            extraction{inverted}
ground_truth/particles_true.star
                            the same images with the true rlnAngleRot/Tilt/Psi,
                            rlnOriginX/YAngst, per-particle rlnDefocusU/V/Angle, rlnClassNumber;
                            image paths are relative to this folder (run RELION from here)
ground_truth/map_classNNN.mrc
                            the maps projected, Coulomb potential relative to ice (V), at the
                            particles' pixel size and box
ground_truth/simulation.json
                            every parameter, the seed and derived numbers

{summary}
"""


def write_maps_and_record(folder: Path, maps: TrueMaps, parameters: dict[str, Any]) -> None:
    """Write ``ground_truth/map_classNNN.mrc`` and ``ground_truth/simulation.json``."""
    (folder / TRUTH_DIR).mkdir(parents=True, exist_ok=True)
    for c in range(maps.n_classes):
        write_mrc(
            folder / TRUTH_DIR / f"map_class{c + 1:03d}.mrc",
            maps.volumes[c].cpu().numpy(),
            voxel_size_angstrom=maps.pixel_size_angstrom,
        )
    (folder / TRUTH_DIR / "simulation.json").write_text(
        json.dumps(parameters, indent=2) + "\n", encoding="utf-8"
    )


def write_particle_simulation(sim: ParticleSimulation, output_dir: PathLike) -> Path:
    """Write a simulation into a new folder, atomically (a temporary folder renamed at the end).

    Parameters
    ----------
    sim
        From :func:`simulate_particles`.
    output_dir
        Folder to create (it may exist if empty). Nothing is left behind on failure.

    Returns
    -------
    Path
        The output folder.
    """
    target = Path(output_dir)
    with atomic_folder(target) as tmp:
        (tmp / PARTICLES_DIR).mkdir(parents=True)
        (tmp / TRUTH_DIR).mkdir()
        apix = sim.maps.pixel_size_angstrom
        stacks = sim.particles["rlnImageName"].str.split("@").str[1].to_numpy()
        for stack in dict.fromkeys(stacks):
            write_mrc(
                tmp / stack,
                sim.images[stacks == stack],
                voxel_size_angstrom=apix,
                is_stack=True,
            )
        write_relion_star(tmp / "particles.star", split_optics(sim.particles, "particles"))
        write_relion_star(
            tmp / TRUTH_DIR / "particles_true.star", split_optics(sim.truth, "particles")
        )
        write_maps_and_record(tmp, sim.maps, sim.parameters)
        p = sim.parameters
        summary = "\n".join(
            [
                f"seed {p['seed']}; {p['n_particles']} particles of {p['box_size_px']} px at "
                f"{p['pixel_size_angstrom']} Å/px from {p['n_micrographs']} micrographs",
                f"maps {p['maps']}, fractions {p['class_fractions']}, symmetry {p['symmetry']}",
                f"{p['microscope']['voltage_kv']} kV, Cs {p['microscope']['cs_mm']} mm, "
                f"amplitude contrast {p['microscope']['amplitude_contrast']}",
                f"mean defocus {p['defocus_range_angstrom']} Å, astigmatism up to "
                f"{p['astigmatism_angstrom']} Å, jitter {p['defocus_jitter_angstrom']} Å, "
                f"B {p['bfactor_angstrom2']} Å^2",
                f"SNR {p['snr']} in a {p['particle_diameter_angstrom']:.1f} Å disc (realised "
                f"{p['snr_realised']:.4f}); counting noise of "
                f"{p['equivalent_dose_e_per_a2']:.1f} e/Å^2",
            ]
        )
        (tmp / "README.txt").write_text(
            _README.format(
                inverted=" (contrast inverted: white particles)"
                if p["invert_contrast"]
                else " (not inverted: dark particles)",
                summary=summary,
            ),
            encoding="utf-8",
        )
    return target


def load_maps_for_simulation(
    map_paths: Sequence[PathLike],
    *,
    fractions: Sequence[float] | None,
    map_pixel_size_angstrom: float | None,
    pixel_size_angstrom: float | None,
    box_size: int | None,
    symmetry: str,
    contrast_potential_volt: float,
    particle_diameter_angstrom: float | None,
    atomic_options: AtomicModelOptions | None = None,
) -> TrueMaps:
    """Read the maps of a simulation and prepare them at the output pixel size and box.

    Each entry of ``map_paths`` is an MRC map or an atomic model (``.pdb``, ``.ent``,
    ``.cif``, ``.mmcif``, optionally ``.gz``, or ``builtin:NAME``,
    :func:`cryospa.sim.atomic.is_atomic_model`). MRC maps are read, resampled and scaled as
    :func:`prepare_maps` says. Atomic models are turned into Coulomb potential relative to ice
    (V) directly at the output pixel size and box (:mod:`cryospa.sim.atomic`, with
    ``atomic_options``) and are not scaled; ``--map_angpix`` and ``contrast_potential_volt``
    do not apply to them.

    ``pixel_size_angstrom`` None: the first map's voxel size (for an atomic model
    :data:`cryospa.sim.atomic.DEFAULT_ATOMIC_PIXEL_SIZE_ANGSTROM`). ``box_size`` None: the
    first map's extent at the output pixel size, made even (for an atomic model 1.5 times its
    diameter, :func:`cryospa.sim.atomic.default_box_size`). Shared by every simulation level.
    """
    if not map_paths:
        raise ParameterError("no map given: use --map map.mrc (or an atomic model)")
    if fractions is not None and len(fractions) != len(map_paths):
        raise ParameterError(
            f"{len(map_paths)} map(s) but {len(fractions)} fraction(s): give one per map"
        )
    options = atomic_options if atomic_options is not None else AtomicModelOptions()
    atomic = [is_atomic_model(p) for p in map_paths]
    structures = {i: options.read(p) for i, p in enumerate(map_paths) if atomic[i]}
    mrc_paths = [p for p, a in zip(map_paths, atomic, strict=True) if not a]
    mrc_volumes: list[np.ndarray] = []
    mrc_sizes: list[float] = []
    if mrc_paths:
        mrc_volumes, mrc_sizes = read_maps(
            mrc_paths, map_pixel_size_angstrom=map_pixel_size_angstrom
        )
    if pixel_size_angstrom is not None:
        apix = pixel_size_angstrom
    else:
        apix = DEFAULT_ATOMIC_PIXEL_SIZE_ANGSTROM if atomic[0] else mrc_sizes[0]
    _check_positive("pixel size (--angpix, Å)", apix)
    if box_size is None:
        if atomic[0]:
            box_size = default_box_size(
                structures[0], apix, centre=options.centre_for(map_paths[0])
            )
        else:
            box_size = round(mrc_volumes[0].shape[0] * mrc_sizes[0] / apix)
            box_size += box_size % 2
    if box_size < 8 or box_size % 2:
        raise ParameterError(f"box size must be even and >= 8 pixels (--box), got {box_size}")
    volumes: list[np.ndarray | torch.Tensor] = []
    sizes: list[float] = []
    descriptions: list[str] = []
    mrc = iter(zip(mrc_volumes, mrc_sizes, strict=True))
    for i, path in enumerate(map_paths):
        if atomic[i]:
            computed = options.map(structures[i], path, pixel_size_angstrom=apix, box_size=box_size)
            volumes.append(computed.volume)
            sizes.append(apix)
            descriptions.append(computed.describe())
        else:
            volume, size = next(mrc)
            volumes.append(volume)
            sizes.append(size)
            descriptions.append("")
    maps = prepare_maps(
        volumes,
        sizes,
        pixel_size_angstrom=apix,
        box_size=box_size,
        symmetry=symmetry,
        contrast_potential_volt=contrast_potential_volt,
        particle_diameter_angstrom=particle_diameter_angstrom,
        sources=[str(p) for p in map_paths],
        absolute=atomic,
    )
    maps.descriptions = [
        atomic_text or mrc_text
        for atomic_text, mrc_text in zip(descriptions, maps.descriptions, strict=True)
    ]
    return maps


def run_simulate_particles(
    map_paths: Sequence[PathLike],
    output_dir: PathLike,
    *,
    fractions: Sequence[float] | None = None,
    map_pixel_size_angstrom: float | None = None,
    pixel_size_angstrom: float | None = None,
    box_size: int | None = None,
    symmetry: str = "C1",
    contrast_potential_volt: float = 2.0,
    particle_diameter_angstrom: float | None = None,
    angles_star: PathLike | None = None,
    n_particles: int | None = None,
    atomic_options: AtomicModelOptions | None = None,
    **options: Any,
) -> tuple[ParticleSimulation, Path]:
    """Read maps, simulate particles and write the output folder (the ``simulate`` job).

    Parameters
    ----------
    map_paths
        One MRC map or atomic model (PDB / mmCIF, ``builtin:NAME``) per class.
    output_dir
        New (or empty) output folder.
    fractions
        Class fractions (default equal).
    map_pixel_size_angstrom
        Voxel size of the MRC maps (Å) instead of their headers'.
    pixel_size_angstrom
        Output pixel size (Å); default the first map's voxel size (1.77 Å for a model).
    box_size
        Output box (pixels); default the first map's box after resampling, made even (for a
        model 1.5 times its diameter).
    symmetry, contrast_potential_volt, particle_diameter_angstrom
        See :func:`prepare_maps`.
    angles_star
        STAR file with orientations (and origins) to use; sets the number of particles.
    n_particles
        Number of particles (required without ``angles_star``).
    atomic_options
        How atomic models become maps (:class:`cryospa.sim.atomic.AtomicModelOptions`).
    **options
        Keyword options of :func:`simulate_particles`.

    Returns
    -------
    tuple
        The simulation and the output folder.
    """
    check_new_folder(output_dir)
    angles = origins = None
    if angles_star is not None:
        angles, origins = read_angles(angles_star)
        if n_particles is not None and n_particles != len(angles):
            raise ParameterError(
                f"--n {n_particles} but {angles_star} has {len(angles)} orientations: leave out --n"
            )
        n_particles = len(angles)
    if n_particles is None:
        raise ParameterError("give the number of particles (--n) or a STAR file of angles")
    maps = load_maps_for_simulation(
        map_paths,
        fractions=fractions,
        map_pixel_size_angstrom=map_pixel_size_angstrom,
        pixel_size_angstrom=pixel_size_angstrom,
        box_size=box_size,
        symmetry=symmetry,
        contrast_potential_volt=contrast_potential_volt,
        particle_diameter_angstrom=particle_diameter_angstrom,
        atomic_options=atomic_options,
    )
    sim = simulate_particles(
        maps,
        fractions,
        n_particles=n_particles,
        angles_degrees=angles,
        origins_angstrom=origins,
        **options,
    )
    return sim, write_particle_simulation(sim, output_dir)
