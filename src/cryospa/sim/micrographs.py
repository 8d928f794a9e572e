"""Micrograph-level simulation: summed micrographs of particles in ice, in electron counts.

Image formation of one micrograph, all of it at once (pieces from :mod:`cryospa.sim.physics`)::

    phi(r)  = sigma_e [ Vp(r) + V_ice (t(r) - <t>) ] + phi_ice(r)             phase [rad]
    I(r)    = T(r) [ 1 - 2 F^-1[ CTF(k) E(k) F[phi](k) ] ]   (DC of phi left out)
    T(r)    = exp(-(t(r) - <t>) / L_att)                                        transmission
    lam(r)  = dose * a * F^-1[ MTF(k) F[I](k) ] / mean(...)                     expected counts
    c(r)    ~ Poisson(lam(r))                                                    counts

* ``Vp`` is the projected Coulomb potential (V Å) of every particle: each map (potential relative
  to ice, as prepared by :func:`cryospa.sim.particles.prepare_maps`) is projected at the
  particle's orientation (Fourier-slice projection, :mod:`cryospa.core.projection`), moved by
  its sub-pixel position with a Fourier phase ramp and added into the micrograph at its integer
  position. Particles sit at random positions (random sequential addition) at least
  ``min_distance`` apart (default: the particle diameter, so they do not overlap) and at least
  half an extraction box from every edge, so RELION extracts every one whole.
* The CTF (RELION convention, :mod:`cryospa.core.ctf`) and the coherence / B-factor envelope
  ``E`` act on the phase of the whole field, so the delocalised signal of a particle spreads
  onto its neighbours and into the ice as in a real micrograph. The field is simulated with a
  margin of the largest delocalisation (``lambda dz_max k_Nyquist``) on every side and cropped,
  so delocalised signal leaves the micrograph instead of wrapping around. All particles of a
  micrograph share its defocus (no height variation within the ice).
* Ice (:class:`IceModel`): a thickness field ``t(r) = t0 (1 + v g(r))`` with ``g`` Gaussian-
  smoothed white noise of unit standard deviation (smoothing length ``l_t``), clipped at 0. It
  acts three ways: (1) the phase of the ice's mean inner potential ``V_ice`` over the thickness
  variation (low-frequency contrast through the CTF); (2) the transmission ``T``: thicker ice
  loses more electrons (inelastic scattering removed by an energy filter or the objective
  aperture, attenuation length ``L_att``); (3) the structure of amorphous ice, ``phi_ice``, a
  Gaussian random phase whose power spectrum is that of independent water molecules of number
  density ``n_w`` times the structure factor ``S(k)`` of amorphous ice, growing linearly with
  the local thickness::

      P_ice(k) = sigma_e^2 t(r) V_ice^2 / (n_w a) * S(k) * exp(-B_w k^2 / 2)
      S(k)     = s0 + h_ring exp(-(k - 1/d_ring)^2 / (2 w_ring^2))

  (``a`` the pixel area; ``exp(-B_w k^2 / 4)`` the molecule's scattering-factor fall-off). The
  water ring at 3.67 Å and ``S(0)`` of about 0.1 follow the neutron and X-ray structure factors
  of low-density amorphous ice (Bellissent-Funel et al. 1987, J. Chem. Phys. 87:2231); ``V_ice``
  about 4.4 V (Rullgård et al. 2011). Proteins displace ice; the maps are potentials relative to
  ice, and the ice structure is not cut out under the particles (a small error).
* Detector: the counting detector's MTF (``sinc`` of the pixel) acts on the whole intensity;
  counts are Poisson in independent pixels (flat noise spectrum, NTF = 1), at an expected
  ``dose * a`` electrons per pixel on average over the micrograph (``dose`` in e/Å², ``a`` the
  pixel area in Å²): the dose is the exposure counted on average over the micrograph (thicker
  ice counts fewer electrons than thinner ice, the mean is the dose). Negative expectations,
  possible only for phases far beyond the weak-phase range, are set to 0 and counted.

The micrographs are written as float32 MRC files in electron counts per pixel (the sum over the
exposure, as RELION's motion correction writes a dose-unweighted sum), not normalised; particles
are dark (protein lowers the counts at underfocus), so extract them with ``--invert_contrast``.

Ground truth in RELION's conventions: coordinates ``rlnCoordinateX/Y`` are the particle centres
in micrograph pixels (column, row; pixel ``i`` is the centre of the ``i``-th pixel, 0-based as
RELION). RELION's extraction (``relion_preprocess``) truncates a coordinate to its integer part
and puts that pixel at the box centre ``B / 2``, so in the extracted image the particle is at
``B / 2 + (x - floor(x))``; with RELION's convention that a particle sits at the box centre
minus its origin, the true origin is ``rlnOriginXAngst = -(x - floor(x)) * pixel size`` (and the
same for y). ``ground_truth/particles_true.star`` holds these origins, so it can be joined with
the particles RELION extracts at the true coordinates.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryospa.core.ctf import ctf_2d
from cryospa.core.fourier import fast_fft_size, frequency_grid_2d, phase_shift_2d
from cryospa.core.projection import centred_ft_to_images, make_projector, project
from cryospa.core.rotations import euler_to_matrix, matrix_to_euler, random_rotations
from cryospa.errors import ParameterError
from cryospa.io import atomic_folder, check_new_folder
from cryospa.io.coords import write_coordinates_star
from cryospa.io.mrc import write_mrc
from cryospa.io.star import split_optics, write_relion_star, write_star
from cryospa.sim.atomic import AtomicModelOptions
from cryospa.sim.particles import TrueMaps, load_maps_for_simulation, write_maps_and_record
from cryospa.sim.physics import (
    Microscope,
    detector_mtf_2d,
    envelope_2d,
    interaction_constant_rad_per_volt_angstrom,
)

__all__ = [
    "DEFAULT_DOSE_E_PER_A2",
    "DEFAULT_MICROGRAPH_PIXEL_SIZE_ANGSTROM",
    "JUNK_TYPES",
    "IceModel",
    "Junk",
    "MicrographLayout",
    "MicrographSimulation",
    "ParticleFields",
    "atomic_options_for_ice",
    "contrast_spectrum",
    "draw_layout",
    "ice_fields",
    "ice_phase_power_2d",
    "junk_table",
    "layout_parameters",
    "load_field_maps",
    "micrograph_image",
    "optics_columns",
    "place_particles",
    "run_simulate_micrographs",
    "simulate_micrographs",
    "smooth_random_field",
    "truth_tables",
    "write_field_truth",
    "write_micrograph_simulation",
]

PathLike = str | os.PathLike[str]

#: Folder (inside the output folder) of the micrographs.
MICROGRAPHS_DIR = "Micrographs"
#: Folder of the ground truth.
TRUTH_DIR = "ground_truth"
#: Folder of the true coordinates, laid out as RELION looks for them (``--coord_dir``).
COORDS_DIR = f"{TRUTH_DIR}/coords"
#: Suffix of the coordinate files (``--coord_suffix``).
COORD_SUFFIX = "_true.star"
#: Total dose of the RELION / Scipion beta-galactosidase tutorial: 24 frames of 1.277 e/Å².
DEFAULT_DOSE_E_PER_A2 = 30.65
#: Pixel size of the tutorial's movies binned twice (Å).
DEFAULT_MICROGRAPH_PIXEL_SIZE_ANGSTROM = 1.77


# --------------------------------------------------------------------------------------
# Ice
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IceModel:
    """Vitreous ice: thickness field, mean potential, attenuation and amorphous structure.

    Attributes
    ----------
    thickness_angstrom
        Mean thickness ``t0`` (Å); 0 simulates particles in vacuum (no ice at all).
    thickness_variation
        Relative standard deviation ``v`` of the thickness field.
    thickness_length_angstrom
        Smoothing length ``l_t`` (Å) of the thickness field (Gaussian kernel sigma).
    mean_potential_volt
        Mean inner potential ``V_ice`` of vitreous ice (V).
    attenuation_length_angstrom
        ``L_att`` (Å): the counted fraction of electrons falls as ``exp(-t / L_att)``; about
        the inelastic mean free path (roughly 3000 Å at 200-300 kV) with an energy filter, much
        longer without one.
    number_density_per_angstrom3
        ``n_w``: water molecules per Å^3 (0.0308 for 0.92 g/cm^3).
    structure_factor_low
        ``s0``: the structure factor of amorphous ice at low frequency.
    water_ring_height
        ``h_ring``: height of its first peak above ``s0``.
    water_ring_angstrom
        ``d_ring``: position of the peak (Å).
    water_ring_width_per_angstrom
        ``w_ring``: Gaussian standard deviation of the peak (1/Å).
    molecule_bfactor_angstrom2
        ``B_w`` (Å^2): fall-off of a water molecule's electron scattering factor.
    """

    thickness_angstrom: float = 300.0
    thickness_variation: float = 0.1
    thickness_length_angstrom: float = 500.0
    mean_potential_volt: float = 4.4
    attenuation_length_angstrom: float = 3000.0
    number_density_per_angstrom3: float = 0.0308
    structure_factor_low: float = 0.1
    water_ring_height: float = 2.0
    water_ring_angstrom: float = 3.67
    water_ring_width_per_angstrom: float = 0.03
    molecule_bfactor_angstrom2: float = 20.0

    def __post_init__(self) -> None:
        for name in (
            "thickness_angstrom",
            "thickness_variation",
            "mean_potential_volt",
            "structure_factor_low",
            "water_ring_height",
            "molecule_bfactor_angstrom2",
        ):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ParameterError(f"ice {name} must be >= 0, got {value}")
        for name in (
            "thickness_length_angstrom",
            "attenuation_length_angstrom",
            "number_density_per_angstrom3",
            "water_ring_angstrom",
            "water_ring_width_per_angstrom",
        ):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ParameterError(f"ice {name} must be > 0, got {value}")


def ice_phase_power_2d(
    shape: tuple[int, int],
    pixel_size_angstrom: float,
    *,
    ice: IceModel,
    interaction_constant: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Power spectrum of the amorphous-ice phase per Å of thickness (see the module docstring).

    Parameters
    ----------
    shape
        ``(h, w)`` image size (pixels).
    pixel_size_angstrom
        Pixel size (Å).
    ice
        Ice parameters.
    interaction_constant
        ``sigma_e`` in rad / (V Å).

    Returns
    -------
    torch.Tensor
        ``(h, w // 2 + 1)`` rfft-grid power (rad^2 per Å of ice), DC at index 0, in the
        convention of :func:`cryospa.sim.physics.background_power_2d` (white noise of
        variance ``v`` has power ``v``).
    """
    ky, kx = frequency_grid_2d(shape, pixel_size_angstrom, rfft=True, device=device, dtype=dtype)
    k2 = kx * kx + ky * ky
    k = torch.sqrt(k2)
    ring = ice.water_ring_height * torch.exp(
        -0.5 * ((k - 1.0 / ice.water_ring_angstrom) / ice.water_ring_width_per_angstrom) ** 2
    )
    structure = ice.structure_factor_low + ring
    per_molecule = (
        interaction_constant**2
        * ice.mean_potential_volt**2
        / (ice.number_density_per_angstrom3 * pixel_size_angstrom**2)
    )
    return per_molecule * structure * torch.exp(-0.5 * ice.molecule_bfactor_angstrom2 * k2)


def smooth_random_field(
    white: torch.Tensor, pixel_size_angstrom: float, *, length_angstrom: float
) -> torch.Tensor:
    """Gaussian-smoothed white noise, scaled to zero mean and unit standard deviation.

    Parameters
    ----------
    white
        ``(h, w)`` independent standard normal samples.
    pixel_size_angstrom
        Pixel size (Å).
    length_angstrom
        Standard deviation (Å) of the Gaussian smoothing kernel (periodic).

    Returns
    -------
    torch.Tensor
        ``(h, w)`` smooth field.
    """
    ky, kx = frequency_grid_2d(
        tuple(white.shape[-2:]),  # type: ignore[arg-type]
        pixel_size_angstrom,
        device=white.device,
        dtype=white.dtype,
    )
    kernel = torch.exp(-2.0 * math.pi**2 * length_angstrom**2 * (kx * kx + ky * ky))
    field = torch.fft.irfft2(torch.fft.rfft2(white) * kernel, s=white.shape[-2:])
    field = field - field.mean()
    sd = field.std()
    return field / sd if float(sd) > 0 else field


# --------------------------------------------------------------------------------------
# Particle positions
# --------------------------------------------------------------------------------------


def place_particles(
    n_particles: int,
    micrograph_shape_px: tuple[int, int],
    *,
    min_distance_px: float,
    edge_px: float,
    rng: np.random.Generator,
    max_attempts: int | None = None,
) -> np.ndarray:
    """Random non-overlapping positions (random sequential addition).

    Parameters
    ----------
    n_particles
        Number of positions.
    micrograph_shape_px
        ``(h, w)`` micrograph size (pixels).
    min_distance_px
        Smallest allowed distance between two positions (pixels).
    edge_px
        Positions lie in ``[edge, size - edge)`` along each axis.
    rng
        Random generator.
    max_attempts
        Candidates drawn before giving up (default ``max(20000, 200 n)``).

    Returns
    -------
    np.ndarray
        ``(n, 2)`` float64 positions ``(x, y)`` (column, row) in pixels.

    Raises
    ------
    ParameterError
        The positions do not fit.
    """
    h, w = micrograph_shape_px
    if n_particles == 0:
        return np.zeros((0, 2))
    if w - 2 * edge_px <= 0 or h - 2 * edge_px <= 0:
        raise ParameterError(
            f"a {w} x {h} px micrograph has no room for particles {edge_px:g} px from the "
            "edges: enlarge --mic_size or reduce --box"
        )
    attempts = max_attempts or max(20000, 200 * n_particles)
    out = np.empty((n_particles, 2))
    count = 0
    d2 = min_distance_px**2
    drawn = 0
    while count < n_particles and drawn < attempts:
        chunk = rng.uniform(size=(1024, 2)) * [w - 2 * edge_px, h - 2 * edge_px] + edge_px
        drawn += len(chunk)
        for cand in chunk:
            if count:
                diff = out[:count] - cand
                if float(np.min(diff[:, 0] ** 2 + diff[:, 1] ** 2)) < d2:
                    continue
            out[count] = cand
            count += 1
            if count == n_particles:
                break
    if count < n_particles:
        area = (w - 2 * edge_px) * (h - 2 * edge_px)
        jammed = int(0.547 * area / (math.pi * min_distance_px**2 / 4))
        raise ParameterError(
            f"could place only {count} of {n_particles} particles at least "
            f"{min_distance_px:.1f} px apart in a {w} x {h} px micrograph (random packing "
            f"jams near {jammed}): lower --particles_per_micrograph (say <= {int(0.8 * jammed)}) "
            "or --min_distance, or enlarge --mic_size"
        )
    return out


# --------------------------------------------------------------------------------------
# One micrograph
# --------------------------------------------------------------------------------------


def _paste(field: torch.Tensor, images: torch.Tensor, corners_px: torch.Tensor) -> None:
    """Add ``(b, n, n)`` images into an ``(H, W)`` field at ``(b, 2)`` integer corners (x, y)."""
    n = images.shape[-1]
    width = field.shape[-1]
    ax = torch.arange(n, device=field.device)
    rows = corners_px[:, 1, None] + ax  # (b, n)
    cols = corners_px[:, 0, None] + ax  # (b, n)
    flat = rows[:, :, None] * width + cols[:, None, :]  # (b, n, n)
    field.view(-1).index_add_(0, flat.reshape(-1), images.reshape(-1).to(field.dtype))


def contrast_spectrum(
    potential_volt_angstrom: torch.Tensor,
    thickness_angstrom: torch.Tensor,
    ice_white: torch.Tensor,
    *,
    pixel_size_angstrom: float,
    microscope: Microscope,
    ice: IceModel,
    defocus_u_angstrom: float,
    defocus_v_angstrom: float,
    astigmatism_angle_degrees: float,
    bfactor_angstrom2: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fourier transform of the phase contrast of a field of view, and its transmission.

    The image is ``T(r) [1 - 2 F^-1[S](r)]`` with ``S`` and ``T`` returned here (see the
    module docstring); the movie simulator multiplies ``S`` by an exposure filter per frame.

    Parameters
    ----------
    potential_volt_angstrom
        ``(H, W)`` projected potential of the particles relative to ice (V Å).
    thickness_angstrom
        ``(H, W)`` ice thickness (Å).
    ice_white
        ``(H, W)`` standard normal samples for the amorphous-ice structure.
    pixel_size_angstrom
        Pixel size (Å).
    microscope
        Optics.
    ice
        Ice parameters.
    defocus_u_angstrom, defocus_v_angstrom, astigmatism_angle_degrees
        CTF of the field (RELION convention; Å and degrees).
    bfactor_angstrom2
        Damage / blur B-factor (Å^2).

    Returns
    -------
    tuple
        ``S``: ``(H, W // 2 + 1)`` complex spectrum (rfft layout, DC 0) of the CTF- and
        envelope-filtered phase; ``T``: ``(H, W)`` transmission of the ice.
    """
    shape = (int(potential_volt_angstrom.shape[-2]), int(potential_volt_angstrom.shape[-1]))
    dev, dt = potential_volt_angstrom.device, potential_volt_angstrom.dtype
    sigma_e = interaction_constant_rad_per_volt_angstrom(microscope.voltage_kv)
    t = thickness_angstrom
    t_mean = t.mean()
    phase = sigma_e * (potential_volt_angstrom + ice.mean_potential_volt * (t - t_mean))
    if ice.thickness_angstrom > 0:
        power = ice_phase_power_2d(
            shape, pixel_size_angstrom, ice=ice, interaction_constant=sigma_e, device=dev, dtype=dt
        )
        structure = torch.fft.irfft2(torch.fft.rfft2(ice_white) * torch.sqrt(power), s=shape)
        phase = phase + torch.sqrt(t.clamp(min=0)) * structure
    du = torch.tensor([defocus_u_angstrom], device=dev, dtype=dt)
    dv = torch.tensor([defocus_v_angstrom], device=dev, dtype=dt)
    angle = torch.tensor([astigmatism_angle_degrees], device=dev, dtype=dt)
    ky, kx = frequency_grid_2d(shape, pixel_size_angstrom, device=dev, dtype=dt)
    ctf = ctf_2d(
        kx,
        ky,
        defocus_u_angstrom=du,
        defocus_v_angstrom=dv,
        astigmatism_angle_degrees=angle,
        voltage_kv=microscope.voltage_kv,
        spherical_aberration_mm=microscope.cs_mm,
        amplitude_contrast=microscope.amplitude_contrast,
    )
    env = envelope_2d(
        kx,
        ky,
        microscope=microscope,
        defocus_u_angstrom=du,
        defocus_v_angstrom=dv,
        astigmatism_angle_degrees=angle,
        bfactor_angstrom2=bfactor_angstrom2,
    )
    ft = torch.fft.rfft2(phase)
    ft[0, 0] = 0  # a constant phase gives no contrast; the mean is set by the transmission
    transmission = torch.exp(-(t - t_mean) / ice.attenuation_length_angstrom)
    return ft * (ctf * env)[0], transmission


def micrograph_image(
    potential_volt_angstrom: torch.Tensor,
    thickness_angstrom: torch.Tensor,
    ice_white: torch.Tensor,
    *,
    pixel_size_angstrom: float,
    microscope: Microscope,
    ice: IceModel,
    defocus_u_angstrom: float,
    defocus_v_angstrom: float,
    astigmatism_angle_degrees: float,
    bfactor_angstrom2: float = 0.0,
) -> torch.Tensor:
    """Noiseless image (relative intensity, 1 = the incident beam) of a field of view.

    Parameters are those of :func:`contrast_spectrum`.

    Returns
    -------
    torch.Tensor
        ``(H, W)`` intensity after the detector MTF, periodic over the field (crop a margin).
    """
    shape = (int(potential_volt_angstrom.shape[-2]), int(potential_volt_angstrom.shape[-1]))
    spectrum, transmission = contrast_spectrum(
        potential_volt_angstrom,
        thickness_angstrom,
        ice_white,
        pixel_size_angstrom=pixel_size_angstrom,
        microscope=microscope,
        ice=ice,
        defocus_u_angstrom=defocus_u_angstrom,
        defocus_v_angstrom=defocus_v_angstrom,
        astigmatism_angle_degrees=astigmatism_angle_degrees,
        bfactor_angstrom2=bfactor_angstrom2,
    )
    intensity = transmission * (1.0 - 2.0 * torch.fft.irfft2(spectrum, s=shape))
    mtf = detector_mtf_2d(shape, device=spectrum.device, dtype=transmission.dtype)
    return torch.fft.irfft2(torch.fft.rfft2(intensity) * mtf, s=shape)


# --------------------------------------------------------------------------------------
# A data set: layout (what is where), particle fields, ice, truth tables
# --------------------------------------------------------------------------------------

#: Junk types (``rlnClassNumber`` in ``ground_truth/junk_true.star``).
JUNK_TYPES = {-1: "aggregate", -2: "broken particle", -3: "ice contamination"}


@dataclass
class Junk:
    """Junk objects: aggregates, broken particles and crystalline-ice contamination.

    * An aggregate is 2 to 4 whole particles (random classes and orientations) within 0.35 to
      0.6 particle diameters of its centre, so they overlap and clump.
    * A broken particle is one particle's projection cut by a straight soft edge through a
      point within 0.25 radii of its centre (a fragment of 30 to 70 % of it).
    * Ice contamination is a sphere of vitreous-density ice of radius 60 to 200 Å on the film:
      it adds ``2 sqrt(R^2 - r^2)`` to the ice thickness, so it darkens the image through the
      ice's phase, the lost electrons and the amorphous-ice structure.

    Attributes
    ----------
    positions_px, micrograph_index, types
        ``(j, 2)`` centres, ``(j,)`` micrograph and ``(j,)`` type code (see ``JUNK_TYPES``).
    radius_px
        ``(j,)`` sphere radius (pixels) of ice contamination, 0 for the others.
    part_positions_px, part_micrograph_index, part_classes, part_angles_degrees
        The particles aggregates and broken particles are made of.
    part_cuts
        ``(p, 3)`` for each part: direction angle (radians), offset of the cut from the
        particle centre (pixels) and 1 for a cut part (0 for a whole one).
    """

    positions_px: np.ndarray
    micrograph_index: np.ndarray
    types: np.ndarray
    radius_px: np.ndarray
    part_positions_px: np.ndarray
    part_micrograph_index: np.ndarray
    part_classes: np.ndarray
    part_angles_degrees: np.ndarray
    part_cuts: np.ndarray

    @staticmethod
    def empty() -> Junk:
        """No junk."""
        z2, z1 = np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
        return Junk(z2, z1, z1, np.zeros(0), z2, z1, z1, np.zeros((0, 3)), np.zeros((0, 3)))

    def __len__(self) -> int:
        return int(self.types.shape[0])


def _draw_junk(
    rng: np.random.Generator,
    positions: np.ndarray,
    micrograph_index: np.ndarray,
    *,
    n_classes: int,
    fractions: np.ndarray,
    particle_radius_px: float,
    pixel_size_angstrom: float,
    shape: tuple[int, int],
    edge_px: float,
) -> Junk:
    if len(positions) == 0:
        return Junk.empty()
    n = len(positions)
    types = -rng.choice(3, size=n, p=[0.4, 0.4, 0.2]) - 1
    radius = np.where(types == -3, rng.uniform(60.0, 200.0, size=n) / pixel_size_angstrom, 0.0)
    parts_pos, parts_mic, cuts = [], [], []
    h, w = shape
    for j in range(n):
        if types[j] == -1:  # aggregate
            k = int(rng.integers(2, 5))
            dist = rng.uniform(0.7, 1.2, size=k) * particle_radius_px
            ang = rng.uniform(0, 2 * math.pi, size=k)
            pos = positions[j] + np.stack([dist * np.cos(ang), dist * np.sin(ang)], 1)
            pos = np.clip(pos, [edge_px, edge_px], [w - edge_px, h - edge_px])
            parts_pos.append(pos)
            parts_mic += [micrograph_index[j]] * k
            cuts += [(0.0, 0.0, 0.0)] * k
        elif types[j] == -2:  # broken
            parts_pos.append(positions[j][None])
            parts_mic.append(micrograph_index[j])
            offset = rng.uniform(-0.25, 0.25) * particle_radius_px
            cuts.append((rng.uniform(0, 2 * math.pi), offset, 1.0))
    n_parts = len(parts_mic)
    part_classes = rng.choice(n_classes, size=n_parts, p=fractions) + 1
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    part_angles = (
        matrix_to_euler(random_rotations(n_parts, generator=gen)).numpy()
        if n_parts
        else np.zeros((0, 3))
    )
    return Junk(
        positions_px=positions,
        micrograph_index=micrograph_index,
        types=types.astype(np.int64),
        radius_px=radius,
        part_positions_px=np.concatenate(parts_pos) if parts_pos else np.zeros((0, 2)),
        part_micrograph_index=np.asarray(parts_mic, dtype=np.int64),
        part_classes=part_classes,
        part_angles_degrees=part_angles,
        part_cuts=np.asarray(cuts, dtype=np.float64).reshape(-1, 3),
    )


@dataclass
class MicrographLayout:
    """What the micrographs of a data set hold, drawn before any image is formed.

    Attributes
    ----------
    shape_px
        ``(h, w)`` micrograph size (pixels).
    defocus_u_angstrom, defocus_v_angstrom, defocus_angle_degrees
        ``(M,)`` CTF of each micrograph (RELION convention).
    positions_px
        ``(n, 2)`` particle centres ``(x, y)`` in micrograph pixels.
    micrograph_index
        ``(n,)`` 0-based micrograph of each particle.
    classes
        ``(n,)`` 1-based class (map) of each particle.
    angles_degrees
        ``(n, 3)`` RELION Euler angles (rot, tilt, psi).
    subsets
        ``(n,)`` random half-set (1 or 2).
    fractions
        Class fractions used.
    min_distance_px
        Smallest distance between particle centres (pixels).
    junk
        The junk objects (:class:`Junk`; empty without junk).
    """

    shape_px: tuple[int, int]
    defocus_u_angstrom: np.ndarray
    defocus_v_angstrom: np.ndarray
    defocus_angle_degrees: np.ndarray
    positions_px: np.ndarray
    micrograph_index: np.ndarray
    classes: np.ndarray
    angles_degrees: np.ndarray
    subsets: np.ndarray
    fractions: np.ndarray
    min_distance_px: float
    junk: Junk = dataclass_field(default_factory=lambda: Junk.empty())

    @property
    def n_micrographs(self) -> int:
        """Number of micrographs."""
        return int(self.defocus_u_angstrom.shape[0])

    @property
    def n_particles(self) -> int:
        """Number of particles over all micrographs."""
        return int(self.positions_px.shape[0])


def draw_layout(
    maps: TrueMaps,
    fractions: Sequence[float] | None,
    *,
    n_micrographs: int,
    micrograph_shape_px: tuple[int, int],
    particles_per_micrograph: int,
    dose_e_per_a2: float,
    min_distance_angstrom: float | None,
    defocus_range_angstrom: tuple[float, float],
    astigmatism_angstrom: float,
    micrograph_defocus: np.ndarray | None,
    bfactor_angstrom2: float,
    rng: np.random.Generator,
    junk_fraction: float = 0.0,
) -> MicrographLayout:
    """Check the options and draw defocus, positions, classes, orientations and half-sets.

    With ``junk_fraction`` > 0, that fraction of the objects placed on each micrograph are
    junk (:class:`Junk`), placed with the particles (no overlap between centres).

    The draws come from ``rng`` in a fixed order; options are those of
    :func:`simulate_micrographs`.

    Returns
    -------
    MicrographLayout
        The layout.
    """
    apix = maps.pixel_size_angstrom
    b = maps.box_size
    h, w = (int(v) for v in micrograph_shape_px)
    diameter_px = 2.0 * maps.particle_radius_px
    _validate_micrograph_options(
        n_micrographs=n_micrographs,
        micrograph_shape_px=(h, w),
        particles_per_micrograph=particles_per_micrograph,
        dose_e_per_a2=dose_e_per_a2,
        defocus_range_angstrom=defocus_range_angstrom,
        astigmatism_angstrom=astigmatism_angstrom,
        bfactor_angstrom2=bfactor_angstrom2,
        box_size=b,
        particle_diameter_px=diameter_px,
    )
    if min_distance_angstrom is None:
        min_distance_px = diameter_px
    else:
        if not (min_distance_angstrom >= 0 and math.isfinite(min_distance_angstrom)):
            raise ParameterError(
                f"minimum distance (--min_distance, Å) must be >= 0, got {min_distance_angstrom}"
            )
        min_distance_px = min_distance_angstrom / apix
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

    m_count = int(n_micrographs)
    per = int(particles_per_micrograph)
    mean_df = rng.uniform(*defocus_range_angstrom, size=m_count)
    astig = rng.uniform(0.0, astigmatism_angstrom, size=m_count)
    astig_angle = rng.uniform(-90.0, 90.0, size=m_count)
    mic_du, mic_dv = mean_df + astig / 2, mean_df - astig / 2
    if micrograph_defocus is not None:
        given = np.asarray(micrograph_defocus, dtype=np.float64)
        if given.shape != (m_count, 3) or not np.all(np.isfinite(given)):
            raise ParameterError(
                f"micrograph defocus must be {m_count} rows of (dU, dV, angle), got shape "
                f"{given.shape}"
            )
        if np.any(given[:, 1] <= 0) or np.any(given[:, 0] < given[:, 1]):
            raise ParameterError("given defocus must satisfy dU >= dV > 0 (Å, underfocus)")
        mic_du, mic_dv, astig_angle = given[:, 0].copy(), given[:, 1].copy(), given[:, 2].copy()
    if not (0 <= junk_fraction < 1):
        raise ParameterError(f"junk fraction must be in [0, 1), got {junk_fraction}")
    n_junk = round(per * junk_fraction / (1 - junk_fraction))
    placed = [
        place_particles(
            per + n_junk, (h, w), min_distance_px=min_distance_px, edge_px=b / 2, rng=rng
        )
        for _ in range(m_count)
    ]
    positions = np.concatenate([x[:per] for x in placed]).reshape(-1, 2)
    junk_positions = np.concatenate([x[per:] for x in placed]).reshape(-1, 2)
    n = m_count * per
    mic = np.repeat(np.arange(m_count), per)
    classes = rng.choice(n_classes, size=n, p=frac) + 1
    torch_gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    angles = (
        matrix_to_euler(random_rotations(n, generator=torch_gen)).numpy() if n else np.zeros((0, 3))
    )
    subsets = rng.integers(1, 3, size=n)
    junk = _draw_junk(
        rng,
        junk_positions,
        np.repeat(np.arange(m_count), n_junk),
        n_classes=n_classes,
        fractions=frac,
        particle_radius_px=maps.particle_radius_px,
        pixel_size_angstrom=apix,
        shape=(h, w),
        edge_px=b / 2,
    )
    return MicrographLayout(
        shape_px=(h, w),
        defocus_u_angstrom=mic_du,
        defocus_v_angstrom=mic_dv,
        defocus_angle_degrees=astig_angle,
        positions_px=positions,
        micrograph_index=mic,
        classes=classes,
        angles_degrees=angles,
        subsets=subsets,
        fractions=frac,
        min_distance_px=min_distance_px,
        junk=junk,
    )


class ParticleFields:
    """Projected potential of every particle of a micrograph, in a padded field of view.

    The field is the micrograph plus ``margin`` pixels on every side: the largest CTF
    delocalisation (``lambda dz_max k_Nyquist``) plus ``extra_margin_px`` (e.g. the largest
    beam-induced motion of a movie), so nothing wraps around into the micrograph.

    Parameters
    ----------
    maps
        The maps (pixel size, box).
    layout
        Positions, classes and orientations.
    microscope
        Optics (for the delocalisation).
    extra_margin_px
        Pixels added to the margin.
    batch_size
        Particles projected at once.
    device
        Where to compute.
    """

    def __init__(
        self,
        maps: TrueMaps,
        layout: MicrographLayout,
        microscope: Microscope,
        *,
        extra_margin_px: int = 0,
        batch_size: int = 256,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ParameterError(f"batch size must be >= 1, got {batch_size}")
        self.maps = maps
        self.layout = layout
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        apix = maps.pixel_size_angstrom
        k_nyquist = 1.0 / (2.0 * apix)
        dz_max = max(float(layout.defocus_u_angstrom.max()), 1.0)
        reach_angstrom = microscope.wavelength_angstrom * dz_max * k_nyquist
        self.margin = math.ceil(reach_angstrom / apix) + 8 + int(extra_margin_px)
        h, w = layout.shape_px
        self.padded_shape = (
            fast_fft_size(h + 2 * self.margin),
            fast_fft_size(w + 2 * self.margin),
        )
        self._projectors = [make_projector(v.to(self.device)) for v in maps.volumes]
        junk = layout.junk
        # particles first, then the parts of aggregates and broken particles
        self._positions = np.concatenate([layout.positions_px, junk.part_positions_px])
        self._mic = np.concatenate([layout.micrograph_index, junk.part_micrograph_index])
        self._classes = np.concatenate([layout.classes, junk.part_classes])
        angles = np.concatenate([layout.angles_degrees, junk.part_angles_degrees])
        self._rotations = euler_to_matrix(torch.from_numpy(angles))
        self._cuts = np.concatenate([np.zeros((layout.n_particles, 3)), junk.part_cuts])
        self._whole = np.floor(self._positions).astype(np.int64)
        self._frac = self._positions - self._whole

    def potential(self, m: int) -> torch.Tensor:
        """``(H, W)`` float32 projected potential (V Å) of micrograph ``m``'s particles.

        Includes the particles of junk aggregates and broken particles (ice contamination is
        ice: see :meth:`contamination_thickness`).
        """
        b = self.maps.box_size
        apix = self.maps.pixel_size_angstrom
        dev, f32 = self.device, torch.float32
        field = torch.zeros(self.padded_shape, dtype=f32, device=dev)
        idx_m = np.flatnonzero(self._mic == m)
        classes = self._classes
        ax = torch.arange(b, device=dev, dtype=f32) - b // 2
        for lo in range(0, idx_m.size, self.batch_size):
            idx = idx_m[lo : lo + self.batch_size]
            ft = torch.empty((idx.size, b, b // 2 + 1), dtype=torch.complex64, device=dev)
            for c, projector in enumerate(self._projectors):
                sel = np.flatnonzero(classes[idx] == c + 1)
                if sel.size:
                    rots = self._rotations[idx[sel]].to(dev, f32)
                    ft[torch.from_numpy(sel).to(dev)] = project(projector, rots)[0]
            shift = phase_shift_2d((b, b), torch.from_numpy(self._frac[idx]).to(dev, f32))
            images = centred_ft_to_images(ft * shift, b) * apix  # (nb, b, b) V Å
            cuts = self._cuts[idx]
            if np.any(cuts[:, 2] > 0):  # broken particles: keep one side of a soft straight cut
                cut = torch.from_numpy(cuts).to(dev, f32)
                d = (
                    torch.cos(cut[:, 0, None, None]) * ax[None, None, :]
                    + torch.sin(cut[:, 0, None, None]) * ax[None, :, None]
                )
                keep = torch.sigmoid((d - cut[:, 1, None, None]) / 1.5)
                images = images * torch.where(cut[:, 2, None, None] > 0, keep, 1.0)
            corners = torch.from_numpy(self._whole[idx] + self.margin - b // 2).to(dev)
            _paste(field, images, corners)
        return field

    def contamination_thickness(self, m: int) -> torch.Tensor | None:
        """``(H, W)`` extra ice thickness (Å) of micrograph ``m``'s ice contamination, or None."""
        junk = self.layout.junk
        sel = np.flatnonzero((junk.micrograph_index == m) & (junk.types == -3))
        if sel.size == 0:
            return None
        apix = self.maps.pixel_size_angstrom
        hp, wp = self.padded_shape
        yy = torch.arange(hp, device=self.device, dtype=torch.float32)[:, None] - self.margin
        xx = torch.arange(wp, device=self.device, dtype=torch.float32)[None, :] - self.margin
        extra = torch.zeros((hp, wp), device=self.device, dtype=torch.float32)
        for j in sel:
            x, y = junk.positions_px[j]
            r2 = float(junk.radius_px[j]) ** 2 - ((xx - x) ** 2 + (yy - y) ** 2)
            extra += 2.0 * torch.sqrt(r2.clamp(min=0)) * apix
        return extra

    def crop(self, field: torch.Tensor) -> torch.Tensor:
        """The micrograph part of a padded field."""
        h, w = self.layout.shape_px
        g = self.margin
        return field[..., g : g + h, g : g + w]


def ice_fields(
    rng: np.random.Generator,
    shape: tuple[int, int],
    pixel_size_angstrom: float,
    ice: IceModel,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw an ice thickness field (Å) and the white noise of the amorphous-ice structure."""
    dev = torch.device(device)
    white_t = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).to(dev)
    white_ice = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).to(dev)
    g = smooth_random_field(
        white_t, pixel_size_angstrom, length_angstrom=ice.thickness_length_angstrom
    )
    thickness = (ice.thickness_angstrom * (1.0 + ice.thickness_variation * g)).clamp(min=0)
    return thickness, white_ice


def optics_columns(maps: TrueMaps, microscope: Microscope) -> dict[str, Any]:
    """The micrograph optics-group columns of a simulated data set (one group)."""
    apix = maps.pixel_size_angstrom
    return {
        "rlnOpticsGroup": 1,
        "rlnOpticsGroupName": "opticsGroup1",
        "rlnMicrographOriginalPixelSize": apix,
        "rlnVoltage": microscope.voltage_kv,
        "rlnSphericalAberration": microscope.cs_mm,
        "rlnAmplitudeContrast": microscope.amplitude_contrast,
        "rlnMicrographPixelSize": apix,
    }


def truth_tables(
    layout: MicrographLayout,
    maps: TrueMaps,
    microscope: Microscope,
    micrograph_names: Sequence[str],
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``micrographs.star``, the true CTF table and the true particles, joined with optics.

    Returns
    -------
    tuple
        ``(micrographs_table, ctf_table, truth)``; see :class:`MicrographSimulation`.
    """
    apix = maps.pixel_size_angstrom
    names = list(micrograph_names)
    mic = layout.micrograph_index
    du, dv, angle = (
        layout.defocus_u_angstrom,
        layout.defocus_v_angstrom,
        layout.defocus_angle_degrees,
    )
    mic_optics = optics_columns(maps, microscope)
    micrographs_table = pd.DataFrame({"rlnMicrographName": names, **mic_optics})
    ctf_table = pd.DataFrame(
        {
            "rlnMicrographName": names,
            "rlnDefocusU": du,
            "rlnDefocusV": dv,
            "rlnCtfAstigmatism": du - dv,
            "rlnDefocusAngle": angle,
            **mic_optics,
        }
    )
    positions = layout.positions_px
    origins = -(positions - np.floor(positions)) * apix  # extraction at floor(coordinate)
    optics = {k: v for k, v in mic_optics.items() if k != "rlnMicrographPixelSize"}
    truth = pd.DataFrame(
        {
            "rlnMicrographName": [names[m] for m in mic],
            "rlnCoordinateX": positions[:, 0],
            "rlnCoordinateY": positions[:, 1],
            "rlnAngleRot": layout.angles_degrees[:, 0],
            "rlnAngleTilt": layout.angles_degrees[:, 1],
            "rlnAnglePsi": layout.angles_degrees[:, 2],
            "rlnOriginXAngst": origins[:, 0],
            "rlnOriginYAngst": origins[:, 1],
            "rlnDefocusU": du[mic],
            "rlnDefocusV": dv[mic],
            "rlnDefocusAngle": angle[mic],
            "rlnClassNumber": layout.classes,
            "rlnRandomSubset": layout.subsets,
            **optics,
            "rlnImagePixelSize": apix,
            "rlnImageSize": maps.box_size,
            "rlnImageDimensionality": 2,
        }
    )
    return micrographs_table, ctf_table, truth


def junk_table(layout: MicrographLayout, micrograph_names: Sequence[str]) -> pd.DataFrame:
    """Rows of ``ground_truth/junk_true.star``: micrograph, centre and type of each junk object.

    ``rlnClassNumber`` holds the junk type: -1 aggregate, -2 broken particle, -3 ice
    contamination (``JUNK_TYPES``); the contamination's radii are in ``simulation.json``.
    """
    junk = layout.junk
    names = list(micrograph_names)
    return pd.DataFrame(
        {
            "rlnMicrographName": [names[m] for m in junk.micrograph_index],
            "rlnCoordinateX": junk.positions_px[:, 0],
            "rlnCoordinateY": junk.positions_px[:, 1],
            "rlnClassNumber": junk.types,
        }
    )


def layout_parameters(
    layout: MicrographLayout,
    maps: TrueMaps,
    microscope: Microscope,
    ice: IceModel,
    *,
    seed: int,
    dose_e_per_a2: float,
    defocus_range_angstrom: tuple[float, float],
    astigmatism_angstrom: float,
    bfactor_angstrom2: float,
) -> dict[str, Any]:
    """The record (``simulation.json``) of what both image levels share."""
    apix = maps.pixel_size_angstrom
    h, w = layout.shape_px
    return {
        "seed": seed,
        "n_micrographs": layout.n_micrographs,
        "micrograph_size_px": [w, h],
        "particles_per_micrograph": layout.n_particles // max(layout.n_micrographs, 1),
        "n_particles": layout.n_particles,
        "pixel_size_angstrom": apix,
        "box_size_px": maps.box_size,
        "maps": maps.sources,
        "class_fractions": [float(x) for x in layout.fractions],
        "symmetry": maps.symmetry,
        "map_magnification_error": maps.magnification_error,
        "map_volts_per_unit": maps.volts_per_unit,
        "map_potentials": list(maps.descriptions),
        "particle_diameter_angstrom": 2.0 * maps.particle_radius_px * apix,
        "min_distance_angstrom": layout.min_distance_px * apix,
        "dose_e_per_a2": dose_e_per_a2,
        "mean_counts_per_pixel": dose_e_per_a2 * apix * apix,
        "interaction_constant_rad_per_volt_angstrom": interaction_constant_rad_per_volt_angstrom(
            microscope.voltage_kv
        ),
        "microscope": vars(microscope),
        "ice": asdict(ice),
        "defocus_range_angstrom": list(defocus_range_angstrom),
        "astigmatism_angstrom": astigmatism_angstrom,
        "bfactor_angstrom2": bfactor_angstrom2,
        "orientations": "random uniform",
        "origins": "-(coordinate - floor(coordinate)) * pixel size, for RELION's extraction",
        "n_junk": len(layout.junk),
        "junk_types": {str(k): v for k, v in JUNK_TYPES.items()},
        "junk_counts": {
            name: int(np.sum(layout.junk.types == code)) for code, name in JUNK_TYPES.items()
        },
        "ice_contamination_radius_angstrom": [
            float(r) * apix for r in layout.junk.radius_px[layout.junk.types == -3]
        ],
    }


@dataclass
class MicrographSimulation:
    """Simulated micrographs and their ground truth.

    Attributes
    ----------
    micrographs
        ``(M, h, w)`` float32 electron counts per pixel (Poisson).
    expected_counts
        ``(M, h, w)`` float32 noiseless expectation of ``micrographs``.
    thickness_angstrom
        ``(M, h, w)`` float32 true ice thickness (Å).
    micrographs_table
        Rows of ``micrographs.star`` joined with optics (as RELION's motion correction).
    ctf_table
        Rows of ``ground_truth/micrographs_ctf.star`` joined with optics (true defocus).
    truth
        Rows of ``ground_truth/particles_true.star`` joined with optics: micrograph,
        coordinates, angles, origins for extraction at the coordinates, defocus, class, subset.
    maps
        The maps projected (ground truth).
    parameters
        Every setting and the seed, for the record.
    """

    micrographs: np.ndarray
    expected_counts: np.ndarray
    thickness_angstrom: np.ndarray
    micrographs_table: pd.DataFrame
    ctf_table: pd.DataFrame
    truth: pd.DataFrame
    maps: TrueMaps
    parameters: dict[str, Any]
    junk: pd.DataFrame = dataclass_field(default_factory=pd.DataFrame)


def _validate_micrograph_options(
    *,
    n_micrographs: int,
    micrograph_shape_px: tuple[int, int],
    particles_per_micrograph: int,
    dose_e_per_a2: float,
    defocus_range_angstrom: tuple[float, float],
    astigmatism_angstrom: float,
    bfactor_angstrom2: float,
    box_size: int,
    particle_diameter_px: float,
) -> None:
    if n_micrographs < 1:
        raise ParameterError(f"number of micrographs must be >= 1, got {n_micrographs}")
    if particles_per_micrograph < 0:
        raise ParameterError(
            f"particles per micrograph must be >= 0, got {particles_per_micrograph}"
        )
    if not (dose_e_per_a2 > 0 and math.isfinite(dose_e_per_a2)):
        raise ParameterError(
            f"dose must be > 0 e/Å² (the total exposure, e.g. 30 to 60), got {dose_e_per_a2}: "
            "set --dose"
        )
    h, w = micrograph_shape_px
    if h < 16 or w < 16:
        raise ParameterError(f"micrograph size must be >= 16 px, got {w} x {h} (--mic_size)")
    if box_size >= min(h, w):
        raise ParameterError(
            f"the box ({box_size} px) is not smaller than the micrograph ({w} x {h} px): "
            "reduce --box or enlarge --mic_size"
        )
    if particle_diameter_px >= min(h, w):
        raise ParameterError(
            f"the particle ({particle_diameter_px:.0f} px across) does not fit into the "
            f"micrograph ({w} x {h} px): enlarge --mic_size or raise --angpix"
        )
    lo, hi = defocus_range_angstrom
    if not (0 < lo <= hi):
        raise ParameterError(
            f"defocus range must satisfy 0 < min <= max (Å, underfocus positive), got {lo}, {hi}"
        )
    for what, value in (
        ("astigmatism (--astigmatism, Å)", astigmatism_angstrom),
        ("B-factor (--bfactor, Å^2)", bfactor_angstrom2),
    ):
        if not (value >= 0 and math.isfinite(value)):
            raise ParameterError(f"{what} must be >= 0, got {value}")
    if astigmatism_angstrom / 2 >= lo:
        raise ParameterError(
            f"astigmatism {astigmatism_angstrom} Å is too large for the smallest defocus {lo} Å"
        )


def simulate_micrographs(
    maps: TrueMaps,
    fractions: Sequence[float] | None = None,
    *,
    n_micrographs: int = 12,
    micrograph_shape_px: tuple[int, int] = (1024, 1024),
    particles_per_micrograph: int = 40,
    dose_e_per_a2: float = DEFAULT_DOSE_E_PER_A2,
    min_distance_angstrom: float | None = None,
    microscope: Microscope | None = None,
    ice: IceModel | None = None,
    defocus_range_angstrom: tuple[float, float] = (8000.0, 25000.0),
    astigmatism_angstrom: float = 500.0,
    micrograph_defocus: np.ndarray | None = None,
    bfactor_angstrom2: float = 50.0,
    junk_fraction: float = 0.0,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> MicrographSimulation:
    """Simulate summed micrographs of particles in ice, with Poisson counts and ground truth.

    Parameters
    ----------
    maps
        From :func:`cryospa.sim.particles.prepare_maps`: the pixel size of the micrographs, the
        box the maps are projected in and the extraction box of the ground truth, and the
        particle diameter.
    fractions
        Class fractions, one per map, summing to 1 (default: equal).
    n_micrographs
        Number of micrographs.
    micrograph_shape_px
        ``(h, w)`` micrograph size (pixels).
    particles_per_micrograph
        Particles per micrograph (0: ice only).
    dose_e_per_a2
        Total exposure (e/Å²), counted on average over the micrograph.
    min_distance_angstrom
        Smallest distance between particle centres (Å); default the particle diameter.
    microscope
        Optics (default 200 kV, Cs 1.4 mm, amplitude contrast 0.1).
    ice
        Ice model (default :class:`IceModel`).
    defocus_range_angstrom
        Range (Å) of the micrographs' mean defocus ``(dU + dV) / 2``, underfocus positive.
    astigmatism_angstrom
        Largest ``dU - dV`` (Å); each micrograph draws it uniformly from 0, at an angle
        uniform in [-90, 90) degrees.
    micrograph_defocus
        ``(M, 3)`` defocus U, V (Å) and astigmatism angle (degrees) of each micrograph, to use
        instead of random ones (the random draws are still made, so the rest of the data set
        does not change).
    bfactor_angstrom2
        B-factor (Å^2) of the damage / blur envelope.
    junk_fraction
        Fraction of the objects on a micrograph that are junk (:class:`Junk`).
    seed
        Seed of every random draw; the same seed gives the same data set.
    batch_size
        Particles projected at once.
    device
        Where to compute.

    Returns
    -------
    MicrographSimulation
        Micrographs, expected counts, thickness and the tables of the output folder.
    """
    microscope = microscope or Microscope()
    ice = ice or IceModel()
    apix = maps.pixel_size_angstrom
    rng = np.random.default_rng(seed)  # every random draw, in a fixed order
    layout = draw_layout(
        maps,
        fractions,
        n_micrographs=n_micrographs,
        micrograph_shape_px=micrograph_shape_px,
        particles_per_micrograph=particles_per_micrograph,
        dose_e_per_a2=dose_e_per_a2,
        min_distance_angstrom=min_distance_angstrom,
        defocus_range_angstrom=defocus_range_angstrom,
        astigmatism_angstrom=astigmatism_angstrom,
        micrograph_defocus=micrograph_defocus,
        bfactor_angstrom2=bfactor_angstrom2,
        rng=rng,
        junk_fraction=junk_fraction,
    )
    fields = ParticleFields(maps, layout, microscope, batch_size=batch_size, device=device)
    m_count = layout.n_micrographs
    h, w = layout.shape_px
    micrographs = np.empty((m_count, h, w), dtype=np.float32)
    expected = np.empty((m_count, h, w), dtype=np.float32)
    thickness_out = np.empty((m_count, h, w), dtype=np.float32)
    clipped = 0
    for m in range(m_count):
        field = fields.potential(m)
        thickness, white_ice = ice_fields(rng, fields.padded_shape, apix, ice, fields.device)
        contamination = fields.contamination_thickness(m)
        if contamination is not None:
            thickness = thickness + contamination
        intensity = micrograph_image(
            field,
            thickness,
            white_ice,
            pixel_size_angstrom=apix,
            microscope=microscope,
            ice=ice,
            defocus_u_angstrom=float(layout.defocus_u_angstrom[m]),
            defocus_v_angstrom=float(layout.defocus_v_angstrom[m]),
            astigmatism_angle_degrees=float(layout.defocus_angle_degrees[m]),
            bfactor_angstrom2=bfactor_angstrom2,
        )
        crop = fields.crop(intensity).to(torch.float64)
        lam_counts = crop / crop.mean() * (dose_e_per_a2 * apix * apix)
        clipped += int((lam_counts < 0).sum())
        lam_np = lam_counts.clamp(min=0).cpu().numpy()
        expected[m] = lam_np
        micrographs[m] = rng.poisson(lam_np)
        thickness_out[m] = fields.crop(thickness).cpu().numpy()

    names = [f"{MICROGRAPHS_DIR}/mic{m + 1:03d}.mrc" for m in range(m_count)]
    micrographs_table, ctf_table, truth = truth_tables(layout, maps, microscope, names)
    junk = junk_table(layout, names)
    parameters: dict[str, Any] = {
        "level": "micrographs",
        **layout_parameters(
            layout,
            maps,
            microscope,
            ice,
            seed=seed,
            dose_e_per_a2=dose_e_per_a2,
            defocus_range_angstrom=defocus_range_angstrom,
            astigmatism_angstrom=astigmatism_angstrom,
            bfactor_angstrom2=bfactor_angstrom2,
        ),
        "negative_expectations_clipped": clipped,
        "mean_ice_thickness_angstrom": [float(t.mean()) for t in thickness_out],
        "simulation_margin_px": fields.margin,
    }
    return MicrographSimulation(
        micrographs=micrographs,
        expected_counts=expected,
        thickness_angstrom=thickness_out,
        micrographs_table=micrographs_table,
        ctf_table=ctf_table,
        truth=truth,
        maps=maps,
        parameters=parameters,
        junk=junk,
    )


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


_README = """\
Simulated micrographs (cryospa simulate --level micrographs)

micrographs.star            the micrographs as RELION's motion correction lists them (3.1 STAR,
                            optics with pixel size, voltage, Cs, amplitude contrast; no CTF)
Micrographs/micNNN.mrc      float32 micrographs in electron counts per pixel (Poisson, summed
                            over the exposure; not normalised); particles are dark
ground_truth/micrographs_ctf.star
                            the true rlnDefocusU/V/Angle per micrograph, as CtfFind's output
ground_truth/coords/Micrographs/micNNN{suffix}
                            true particle centres (rlnCoordinateX/Y, micrograph pixels, 0-based
                            pixel centres), laid out as RELION looks for coordinates
ground_truth/particles_true.star
                            per particle: micrograph, coordinates, true rlnAngleRot/Tilt/Psi,
                            rlnOriginX/YAngst = -(coordinate - floor(coordinate)) x pixel size
                            (RELION extraction puts pixel floor(coordinate) at the box centre),
                            defocus, rlnClassNumber, rlnRandomSubset; optics for a
                            {box} px box at {apix} Å/px
ground_truth/junk_true.star
                            junk (with --junk_fraction): centres and type (rlnClassNumber -1
                            aggregate, -2 broken particle, -3 ice contamination)
ground_truth/map_classNNN.mrc
                            the maps projected, Coulomb potential relative to ice (V)
ground_truth/ice_thickness.mrcs
                            the true ice thickness (Å) of each micrograph, one image each
ground_truth/simulation.json
                            every parameter, the seed and derived numbers

Extract the particles at the true coordinates with RELION, from this folder:
  relion_preprocess --i ground_truth/micrographs_ctf.star --coord_dir {coord_dir}/ \\
      --coord_suffix {suffix} --part_star particles.star --part_dir Particles/ --extract \\
      --extract_size {box} --invert_contrast --norm --bg_radius {bg}

{summary}
"""


def write_field_truth(
    folder: Path,
    *,
    ctf_table: pd.DataFrame,
    truth: pd.DataFrame,
    junk: pd.DataFrame,
    maps: TrueMaps,
    parameters: dict[str, Any],
) -> None:
    """Write the ground truth of a micrograph or movie simulation into ``folder``.

    True coordinates per micrograph (``ground_truth/coords/<micrograph stem>_true.star``, as
    RELION's ``--coord_dir`` / ``--coord_suffix`` expect), the true CTFs, particles and junk,
    the maps and ``simulation.json``.
    """
    for name in ctf_table["rlnMicrographName"]:
        rows = truth[truth["rlnMicrographName"] == name]
        path = folder / COORDS_DIR / f"{Path(name).with_suffix('').as_posix()}{COORD_SUFFIX}"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_coordinates_star(path, rows[["rlnCoordinateX", "rlnCoordinateY"]])
    write_relion_star(
        folder / TRUTH_DIR / "micrographs_ctf.star", split_optics(ctf_table, "micrographs")
    )
    write_relion_star(folder / TRUTH_DIR / "particles_true.star", split_optics(truth, "particles"))
    if len(junk):
        write_star(folder / TRUTH_DIR / "junk_true.star", {"particles": junk})
    write_maps_and_record(folder, maps, parameters)


def write_micrograph_simulation(sim: MicrographSimulation, output_dir: PathLike) -> Path:
    """Write a micrograph simulation into a new folder, atomically.

    The folder is written under a temporary name next to ``output_dir`` and renamed at the
    end; nothing is left behind on failure.

    Parameters
    ----------
    sim
        From :func:`simulate_micrographs`.
    output_dir
        Folder to create (it may exist if empty).

    Returns
    -------
    Path
        The output folder.
    """
    target = Path(output_dir)
    apix = sim.maps.pixel_size_angstrom
    with atomic_folder(target) as tmp:
        (tmp / MICROGRAPHS_DIR).mkdir(parents=True)
        for m, name in enumerate(sim.micrographs_table["rlnMicrographName"]):
            write_mrc(tmp / name, sim.micrographs[m], voxel_size_angstrom=apix)
        write_relion_star(
            tmp / "micrographs.star", split_optics(sim.micrographs_table, "micrographs")
        )
        write_field_truth(
            tmp,
            ctf_table=sim.ctf_table,
            truth=sim.truth,
            junk=sim.junk,
            maps=sim.maps,
            parameters=sim.parameters,
        )
        write_mrc(
            tmp / TRUTH_DIR / "ice_thickness.mrcs",
            sim.thickness_angstrom,
            voxel_size_angstrom=apix,
            is_stack=True,
        )
        p = sim.parameters
        summary = "\n".join(
            [
                f"seed {p['seed']}; {p['n_micrographs']} micrographs of "
                f"{p['micrograph_size_px'][0]} x {p['micrograph_size_px'][1]} px at "
                f"{apix} Å/px, {p['particles_per_micrograph']} particles each, at least "
                f"{p['min_distance_angstrom']:.1f} Å apart",
                f"maps {p['maps']}, fractions {p['class_fractions']}, symmetry {p['symmetry']}",
                f"{p['microscope']['voltage_kv']} kV, Cs {p['microscope']['cs_mm']} mm, "
                f"amplitude contrast {p['microscope']['amplitude_contrast']}",
                f"mean defocus {p['defocus_range_angstrom']} Å, astigmatism up to "
                f"{p['astigmatism_angstrom']} Å, B {p['bfactor_angstrom2']} Å^2",
                f"dose {p['dose_e_per_a2']} e/Å^2 = {p['mean_counts_per_pixel']:.2f} counts per "
                f"pixel on average; ice {p['ice']['thickness_angstrom']} Å thick "
                f"(relative sd {p['ice']['thickness_variation']})",
            ]
        )
        (tmp / "README.txt").write_text(
            _README.format(
                suffix=COORD_SUFFIX,
                coord_dir=COORDS_DIR,
                box=sim.maps.box_size,
                apix=apix,
                bg=int(0.375 * sim.maps.box_size),
                summary=summary,
            ),
            encoding="utf-8",
        )
    return target


def atomic_options_for_ice(
    options: AtomicModelOptions | None, ice: IceModel | None
) -> AtomicModelOptions:
    """Atomic-model options whose displaced-ice potential agrees with the ice model."""
    ice = ice or IceModel()
    base = options or AtomicModelOptions()
    displaced = ice.mean_potential_volt if ice.thickness_angstrom > 0 else 0.0
    return replace(base, ice_potential_volt=displaced)


def load_field_maps(
    map_paths: Sequence[PathLike],
    *,
    fractions: Sequence[float] | None,
    map_pixel_size_angstrom: float | None,
    pixel_size_angstrom: float | None,
    box_size: int | None,
    symmetry: str,
    contrast_potential_volt: float,
    particle_diameter_angstrom: float | None,
    atomic_options: AtomicModelOptions | None,
    ice: IceModel | None,
    micrograph_shape_px: tuple[int, int],
) -> TrueMaps:
    """Maps of a micrograph or movie simulation, checked against the micrograph size.

    As :func:`cryospa.sim.particles.load_maps_for_simulation`, with the micrograph pixel size
    by default (1.77 Å) and atomic models displacing the ice of ``ice``.
    """
    maps = load_maps_for_simulation(
        map_paths,
        fractions=fractions,
        map_pixel_size_angstrom=map_pixel_size_angstrom,
        pixel_size_angstrom=(
            DEFAULT_MICROGRAPH_PIXEL_SIZE_ANGSTROM
            if pixel_size_angstrom is None
            else pixel_size_angstrom
        ),
        box_size=box_size,
        symmetry=symmetry,
        contrast_potential_volt=contrast_potential_volt,
        particle_diameter_angstrom=particle_diameter_angstrom,
        atomic_options=atomic_options_for_ice(atomic_options, ice),
    )
    h, w = micrograph_shape_px
    if maps.box_size >= min(h, w):
        raise ParameterError(
            f"the box ({maps.box_size} px) is not smaller than the micrograph ({w} x {h} px): "
            "reduce --box or enlarge --mic_size"
        )
    return maps


def run_simulate_micrographs(
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
    atomic_options: AtomicModelOptions | None = None,
    **options: Any,
) -> tuple[MicrographSimulation, Path]:
    """Read maps, simulate micrographs and write the output folder (the ``simulate`` job).

    Parameters
    ----------
    map_paths
        One MRC map per class.
    output_dir
        New (or empty) output folder.
    fractions
        Class fractions (default equal).
    map_pixel_size_angstrom
        Voxel size of the maps (Å) instead of their headers'.
    pixel_size_angstrom
        Micrograph pixel size (Å); default 1.77 (the tutorial's movies binned twice).
    box_size
        Projection and extraction box (pixels, even); default the first map's box after
        resampling, made even.
    symmetry, contrast_potential_volt, particle_diameter_angstrom
        See :func:`cryospa.sim.particles.prepare_maps`; the particle diameter is also the
        default minimum distance between particles.
    atomic_options
        How atomic models among ``map_paths`` become potential maps; the ice they displace
        is that of the ice model (none when there is no ice).
    **options
        Keyword options of :func:`simulate_micrographs`.

    Returns
    -------
    tuple
        The simulation and the output folder.
    """
    check_new_folder(output_dir)
    dose = options.get("dose_e_per_a2", DEFAULT_DOSE_E_PER_A2)
    if not (dose > 0 and math.isfinite(dose)):
        raise ParameterError(f"dose must be > 0 e/Å² (the total exposure), got {dose}: set --dose")
    maps = load_field_maps(
        map_paths,
        fractions=fractions,
        map_pixel_size_angstrom=map_pixel_size_angstrom,
        pixel_size_angstrom=pixel_size_angstrom,
        box_size=box_size,
        symmetry=symmetry,
        contrast_potential_volt=contrast_potential_volt,
        particle_diameter_angstrom=particle_diameter_angstrom,
        atomic_options=atomic_options,
        ice=options.get("ice"),
        micrograph_shape_px=options.get("micrograph_shape_px", (1024, 1024)),
    )
    sim = simulate_micrographs(maps, fractions, **options)
    return sim, write_micrograph_simulation(sim, output_dir)
