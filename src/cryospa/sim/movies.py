"""Movie-level simulation: raw movies as a counting detector writes them, with ground truth.

Each movie images one field of view of a micrograph-level data set (same particles, ice, CTF
and image formation as :mod:`cryospa.sim.micrographs`), split into frames. Frame ``f``
(``f = 0 .. F-1``) of a movie, exposed from ``N_f = N_pre + f d`` to ``N_f + d`` e/Å² (``d`` the
dose per frame, ``N_pre`` the pre-exposure)::

    S_f(k)  = S(k) A_f(k)                                           damaged contrast spectrum
    I_f(r)  = T(r) [1 - 2 F^-1[S_f](r)]                             intensity at the specimen
    J_f(p)  = (MTF * I_f)(p + s_f(p))                               the detector's view
    raw_f   ~ Poisson(d a J_f(p) / <J_0> / g(p)) + hot pixels,  0 on dead columns

* ``S`` and ``T``: the CTF- and envelope-filtered phase contrast of the particles and ice, and
  the ice transmission (:func:`cryospa.sim.micrographs.contrast_spectrum`).
* Radiation damage ``A_f(k)``: the mean amplitude attenuation over the frame's exposure window
  with the critical exposure of Grant & Grigorieff (2015) (:mod:`cryospa.core.dose`; 200 kV
  exposures count 1/0.8 as in RELION). It acts on the specimen's (particles' and ice's)
  structure, not on the mean transmission.
* Beam-induced motion ``s_f(p)`` in RELION's convention (:mod:`cryospa.core.motion`): the shift
  that re-aligns frame ``f`` at micrograph pixel ``p`` (the frame's content drifted by ``-s``).
  It is a global trajectory plus a local deformation, both zero for the first frame, so the
  aligned sum is in the coordinates of the first frame, where the ground-truth particle
  coordinates are given.

  - Global: ``-s_f = D_e (1 - exp(-f / tau)) u_e + D_l f / (F - 1) u_l + w_f`` (Å, then
    pixels): a fast early phase (``D_e``, time constant ``tau`` frames) as the ice relaxes at
    the start of the exposure (Brilot et al. 2012, J. Struct. Biol. 177:630; Li et al. 2013,
    Nat. Methods 10:584), a slower steady drift (``D_l``) in a direction ``u_l`` within 60
    degrees of ``u_e``, and a small smooth jitter ``w_f``; ``D_e + D_l`` is the total drift.
  - Local: RELION's third-order polynomial model (Zheng et al. 2017, Nat. Methods 14:331 use
    the same form), with spatial terms ``x, x^2, y, y^2, xy`` whose amplitudes are random and
    whose time course follows the early-phase curve (a least-squares cubic in ``f``), scaled
    so that the largest local shift over the field at the last frame is ``local`` Å; the
    constant (``z``, ``z^2``, ``z^3``) terms are set so that the local shifts average to zero
    over the field, so the global trajectory is the field's mean motion.

  The global shift is applied exactly (Fourier phase ramp); the local one on overlapping
  tiles of ``2 x 64`` px, each shifted exactly by the deformation at its centre and blended
  with linear (B-spline) weights that sum to one. Motion within a frame is not modelled.
* Detector: the counting detector's MTF (:func:`cryospa.sim.physics.detector_mtf_2d`); per-pixel
  sensitivity ``1 / g(p)`` with ``g`` the gain reference written to ``gain.mrc`` (RELION
  convention: multiply raw frames by it), ``g = (1 + s_g n(p)) (1 + s_s q(p))`` with ``n``
  white and ``q`` a smooth field of unit sd; a few hot pixels (extra Poisson counts each
  frame) and dead columns (no counts), listed in ``defects.txt`` (MotionCor2's ``x y w h``
  rectangles, which RELION's ``--defect_file`` reads). The expected counts are normalised so
  that, averaged over the first frame, a pixel receives ``d a`` electrons (``a`` the pixel
  area) before the gain: ``mean(raw_f * g) = d a`` apart from hot pixels and dead columns.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from cryospa.core.dose import critical_exposure, equivalent_exposure, frame_attenuation
from cryospa.core.fourier import frequency_grid_2d, phase_shift_2d
from cryospa.core.motion import N_POLYNOMIAL_COEFFS, polynomial_shift
from cryospa.errors import ParameterError
from cryospa.io import atomic_folder, check_new_folder
from cryospa.io.movies import write_mrc_movie, write_tiff_movie
from cryospa.io.mrc import write_mrc
from cryospa.io.star import split_optics, write_relion_star, write_star
from cryospa.sim.atomic import AtomicModelOptions
from cryospa.sim.micrographs import (
    COORD_SUFFIX,
    TRUTH_DIR,
    IceModel,
    MicrographLayout,
    ParticleFields,
    contrast_spectrum,
    draw_layout,
    ice_fields,
    junk_table,
    layout_parameters,
    load_field_maps,
    smooth_random_field,
    truth_tables,
    write_field_truth,
)
from cryospa.sim.particles import TrueMaps
from cryospa.sim.physics import Microscope, detector_mtf_2d

__all__ = [
    "DEFAULT_DOSE_PER_FRAME",
    "DEFAULT_N_FRAMES",
    "DetectorModel",
    "MotionModel",
    "MovieFrames",
    "MovieSimulator",
    "run_simulate_movies",
    "warp_locally",
    "write_movie_simulation",
]

PathLike = str | os.PathLike[str]

#: Folder of the movies.
MOVIES_DIR = "Movies"
#: Folder of the true motion STAR files.
MOTION_DIR = f"{TRUTH_DIR}/motion"
#: The tutorial's dose per frame (e/Å²) and number of frames.
DEFAULT_DOSE_PER_FRAME = 1.277
DEFAULT_N_FRAMES = 24
#: Half the side of the local-deformation tiles, and their extra border (pixels).
_TILE = 64
_TILE_PAD = 16


@dataclass(frozen=True)
class MotionModel:
    """Beam-induced motion of a movie (see the module docstring).

    Attributes
    ----------
    drift_angstrom
        Total global drift over the movie (Å), ``D_e + D_l``; each movie draws it uniformly
        from half to 1.5 times this value.
    early_fraction
        Share ``D_e / (D_e + D_l)`` of the fast early phase.
    early_frames
        Time constant ``tau`` of the early phase (frames).
    jitter_angstrom
        Standard deviation of the smooth per-frame jitter (Å).
    local_angstrom
        Largest local deformation over the field at the last frame (Å); 0 turns it off.
    """

    drift_angstrom: float = 15.0
    early_fraction: float = 0.6
    early_frames: float = 3.0
    jitter_angstrom: float = 0.2
    local_angstrom: float = 3.0

    def __post_init__(self) -> None:
        for name in ("drift_angstrom", "jitter_angstrom", "local_angstrom"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ParameterError(f"motion {name} must be >= 0 Å, got {value}")
        if not (0 <= self.early_fraction <= 1):
            raise ParameterError(
                f"motion early_fraction must be in [0, 1], got {self.early_fraction}"
            )
        if not (self.early_frames > 0 and math.isfinite(self.early_frames)):
            raise ParameterError(f"motion early_frames must be > 0, got {self.early_frames}")


@dataclass(frozen=True)
class DetectorModel:
    """Gain and defects of the counting detector (see the module docstring).

    Attributes
    ----------
    gain_sd
        Relative standard deviation ``s_g`` of the pixel-to-pixel gain.
    gain_smooth_sd
        Relative standard deviation ``s_s`` of a smooth gain variation across the detector.
    n_hot_pixels
        Hot pixels.
    hot_pixel_counts
        Extra counts per frame (Poisson mean) in a hot pixel.
    n_dead_columns
        Dead columns (no counts).
    """

    gain_sd: float = 0.05
    gain_smooth_sd: float = 0.03
    n_hot_pixels: int = 8
    hot_pixel_counts: float = 40.0
    n_dead_columns: int = 1

    def __post_init__(self) -> None:
        for name in ("gain_sd", "gain_smooth_sd", "hot_pixel_counts"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ParameterError(f"detector {name} must be >= 0, got {value}")
        if self.gain_sd > 0.3 or self.gain_smooth_sd > 0.3:
            raise ParameterError("detector gain variations above 30 % are not realistic")
        if self.n_hot_pixels < 0 or self.n_dead_columns < 0:
            raise ParameterError("numbers of hot pixels and dead columns must be >= 0")


@dataclass
class MovieFrames:
    """One simulated movie.

    Attributes
    ----------
    raw
        ``(F, h, w)`` uint16 raw counts as written (before gain correction).
    expected
        ``(F, h, w)`` float32 expected counts after gain correction (noiseless, no defects),
        or None when not asked for.
    """

    raw: np.ndarray
    expected: np.ndarray | None


def _early_curve(n_frames: int, tau: float) -> np.ndarray:
    z = np.arange(n_frames, dtype=np.float64)
    return 1.0 - np.exp(-z / tau)


def _draw_global(
    rng: np.random.Generator, n_frames: int, motion: MotionModel, pixel_size: float
) -> np.ndarray:
    """``(F, 2)`` RELION global shifts (pixels), zero for the first frame."""
    total = motion.drift_angstrom * rng.uniform(0.5, 1.5)
    a_early = total * motion.early_fraction
    a_late = total - a_early
    theta = rng.uniform(0, 2 * math.pi)
    phi = theta + rng.uniform(-math.pi / 3, math.pi / 3)
    u_e = np.array([math.cos(theta), math.sin(theta)])
    u_l = np.array([math.cos(phi), math.sin(phi)])
    z = np.arange(n_frames, dtype=np.float64)
    late = z / max(n_frames - 1, 1)
    drift = a_early * _early_curve(n_frames, motion.early_frames)[:, None] * u_e
    drift += a_late * late[:, None] * u_l
    steps = rng.normal(0.0, motion.jitter_angstrom, size=(n_frames, 2))
    kernel = np.array([0.25, 0.5, 0.25])
    smooth = np.stack([np.convolve(steps[:, i], kernel, mode="same") for i in range(2)], 1)
    drift += smooth - smooth[0]
    drift -= drift[0]
    return -drift / pixel_size


def _draw_local(
    rng: np.random.Generator,
    n_frames: int,
    shape: tuple[int, int],
    motion: MotionModel,
    pixel_size: float,
) -> np.ndarray:
    """``(2, 18)`` coefficients of RELION's polynomial local model (pixels)."""
    coeffs = np.zeros((2, N_POLYNOMIAL_COEFFS))
    if motion.local_angstrom == 0 or n_frames < 2:
        return coeffs
    z = np.arange(n_frames, dtype=np.float64)
    design = np.stack([z, z * z, z**3], axis=1)
    temporal, *_ = np.linalg.lstsq(design, _early_curve(n_frames, motion.early_frames), rcond=None)
    spatial = rng.normal(size=(2, 5))  # x, x^2, y, y^2, xy for each axis
    for axis in range(2):
        for k in range(5):
            coeffs[axis, 3 * (k + 1) : 3 * (k + 2)] = spatial[axis, k] * temporal
    h, w = shape
    # constant terms so the local shifts average to zero over the pixels of the field
    xn, yn = np.arange(w) / w - 0.5, np.arange(h) / h - 0.5
    spatial_means = [np.mean(xn), np.mean(xn**2), np.mean(yn), np.mean(yn**2)]
    spatial_means.append(spatial_means[0] * spatial_means[2])  # x y
    for axis in range(2):
        for power in range(3):
            terms = coeffs[axis, np.arange(1, 6) * 3 + power]
            coeffs[axis, power] = -float(np.dot(terms, spatial_means))
    # scale: largest |local shift| over a grid of the field at the last frame
    gy, gx = np.meshgrid(np.linspace(0, h - 1, 9), np.linspace(0, w - 1, 9), indexing="ij")
    sx, sy = polynomial_shift(coeffs[0], coeffs[1], n_frames - 1, gx, gy, shape)
    largest = float(np.max(np.hypot(sx, sy)))
    if largest > 0:
        coeffs *= motion.local_angstrom / pixel_size / largest
    return coeffs


def warp_locally(
    image: torch.Tensor,
    origin_px: tuple[int, int],
    shape_px: tuple[int, int],
    shift_at: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
) -> torch.Tensor:
    """Resample a region of ``image`` with a smooth shift field: ``out(p) = image(p + s(p))``.

    Parameters
    ----------
    image
        ``(H, W)`` field; the region plus ``2 * 64 + 16`` pixels on every side must lie inside.
    origin_px
        ``(row, column)`` of the region's first pixel in ``image``.
    shape_px
        ``(h, w)`` of the region (the output).
    shift_at
        ``(x, y)`` region pixel coordinates (arrays) -> ``(sx, sy)`` shifts in pixels.

    Returns
    -------
    torch.Tensor
        ``(h, w)`` warped region. Tiles of ``128 x 128`` px centred every 64 px are shifted
        exactly (Fourier) by the shift at their centre and blended with linear weights.
    """
    r0, c0 = origin_px
    h, w = shape_px
    big_h, big_w = image.shape
    if r0 < 2 * _TILE + _TILE_PAD or c0 < 2 * _TILE + _TILE_PAD:
        raise ValueError("the region needs a border of 2 * 64 + 16 px inside the image")
    if r0 + h + 2 * _TILE + _TILE_PAD > big_h or c0 + w + 2 * _TILE + _TILE_PAD > big_w:
        raise ValueError("the region needs a border of 2 * 64 + 16 px inside the image")
    dev = image.device
    cy = np.arange(0, h + _TILE - 1, _TILE)  # centres, region coordinates, cover [0, h - 1]
    cx = np.arange(0, w + _TILE - 1, _TILE)
    ny, nx = len(cy), len(cx)
    gy, gx = np.meshgrid(cy, cx, indexing="ij")
    sx, sy = shift_at(gx.astype(np.float64), gy.astype(np.float64))
    n = 2 * (_TILE + _TILE_PAD)
    top, left = r0 - _TILE - _TILE_PAD, c0 - _TILE - _TILE_PAD
    sub = image[top : top + (ny - 1) * _TILE + n, left : left + (nx - 1) * _TILE + n]
    tiles = sub.unfold(0, n, _TILE).unfold(1, n, _TILE)  # (ny, nx, n, n) view
    # out(p) = image(p + s): content moves by -s
    content = -torch.from_numpy(np.stack([sx, sy], axis=-1)).to(dev, image.dtype)
    moved = torch.fft.irfft2(torch.fft.rfft2(tiles) * phase_shift_2d((n, n), content), s=(n, n))[
        ..., _TILE_PAD : _TILE_PAD + 2 * _TILE, _TILE_PAD : _TILE_PAD + 2 * _TILE
    ]
    u = torch.arange(2 * _TILE, device=dev, dtype=image.dtype)
    weight = 1.0 - (u - _TILE).abs() / _TILE
    moved = moved * (weight[:, None] * weight[None, :])
    # overlap-add: tile (j, i) covers canvas blocks (j, i) to (j + 1, i + 1) of T x T pixels
    # (canvas = region shifted by T); each tile adds its four quadrants to four blocks
    quads = moved.reshape(ny, nx, 2, _TILE, 2, _TILE)
    blocks = torch.zeros((ny + 1, nx + 1, _TILE, _TILE), device=dev, dtype=image.dtype)
    for a in (0, 1):
        for b in (0, 1):
            blocks[a : a + ny, b : b + nx] += quads[:, :, a, :, b, :]
    canvas = blocks.permute(0, 2, 1, 3).reshape((ny + 1) * _TILE, (nx + 1) * _TILE)
    return canvas[_TILE : _TILE + h, _TILE : _TILE + w]


class MovieSimulator:
    """Draws a movie data set (layout, motion, detector) and simulates its movies on demand.

    Parameters
    ----------
    maps
        Maps at the movie pixel size (see :func:`cryospa.sim.particles.prepare_maps`).
    fractions
        Class fractions (default equal).
    n_movies
        Number of movies.
    movie_shape_px
        ``(h, w)`` frame size (pixels).
    n_frames
        Frames per movie.
    dose_per_frame
        Exposure per frame (e/Å²).
    pre_exposure
        Exposure before the first frame (e/Å²).
    particles_per_micrograph, min_distance_angstrom, defocus_range_angstrom,
    astigmatism_angstrom, micrograph_defocus
        As :func:`cryospa.sim.micrographs.simulate_micrographs`.
    bfactor_angstrom2
        B-factor of the residual blur (Å^2): specimen imperfection, motion within frames;
        radiation damage is modelled per frame on top.
    junk_fraction
        Fraction of the objects on a micrograph that are junk
        (:class:`cryospa.sim.micrographs.Junk`).
    microscope, ice
        Optics and ice.
    motion
        Beam-induced motion.
    detector
        Gain and defects.
    seed
        Seed of every random draw.
    batch_size, device
        Particles projected at once; where to compute.
    """

    def __init__(
        self,
        maps: TrueMaps,
        fractions: Sequence[float] | None = None,
        *,
        n_movies: int = 12,
        movie_shape_px: tuple[int, int] = (1024, 1024),
        n_frames: int = DEFAULT_N_FRAMES,
        dose_per_frame: float = DEFAULT_DOSE_PER_FRAME,
        pre_exposure: float = 0.0,
        particles_per_micrograph: int = 40,
        min_distance_angstrom: float | None = None,
        defocus_range_angstrom: tuple[float, float] = (8000.0, 25000.0),
        astigmatism_angstrom: float = 500.0,
        micrograph_defocus: np.ndarray | None = None,
        bfactor_angstrom2: float = 20.0,
        junk_fraction: float = 0.0,
        microscope: Microscope | None = None,
        ice: IceModel | None = None,
        motion: MotionModel | None = None,
        detector: DetectorModel | None = None,
        seed: int = 0,
        batch_size: int = 256,
        device: torch.device | str = "cpu",
    ) -> None:
        if n_frames < 1:
            raise ParameterError(f"number of frames must be >= 1, got {n_frames}")
        if not (dose_per_frame > 0 and math.isfinite(dose_per_frame)):
            raise ParameterError(
                f"dose per frame must be > 0 e/Å² (e.g. 1.277 as the tutorial), got "
                f"{dose_per_frame}: set --dose_per_frame"
            )
        if not (pre_exposure >= 0 and math.isfinite(pre_exposure)):
            raise ParameterError(f"pre-exposure must be >= 0 e/Å², got {pre_exposure}")
        self.maps = maps
        self.microscope = microscope or Microscope()
        self.ice = ice or IceModel()
        self.motion = motion or MotionModel()
        self.detector = detector or DetectorModel()
        equivalent_exposure(1.0, self.microscope.voltage_kv)  # damage model known at this kV?
        self.n_frames = int(n_frames)
        self.dose_per_frame = float(dose_per_frame)
        self.pre_exposure = float(pre_exposure)
        self.bfactor_angstrom2 = float(bfactor_angstrom2)
        self.seed = int(seed)
        self.defocus_range_angstrom = defocus_range_angstrom
        self.astigmatism_angstrom = astigmatism_angstrom
        apix = maps.pixel_size_angstrom
        rng = np.random.default_rng([self.seed, 0])
        self.layout: MicrographLayout = draw_layout(
            maps,
            fractions,
            n_micrographs=n_movies,
            micrograph_shape_px=movie_shape_px,
            particles_per_micrograph=particles_per_micrograph,
            dose_e_per_a2=self.dose_per_frame * self.n_frames,
            min_distance_angstrom=min_distance_angstrom,
            defocus_range_angstrom=defocus_range_angstrom,
            astigmatism_angstrom=astigmatism_angstrom,
            micrograph_defocus=micrograph_defocus,
            bfactor_angstrom2=bfactor_angstrom2,
            rng=rng,
            junk_fraction=junk_fraction,
        )
        shape = self.layout.shape_px
        self.global_shifts = np.stack(
            [_draw_global(rng, self.n_frames, self.motion, apix) for _ in range(n_movies)]
        )  # (M, F, 2) pixels
        self.local_coeffs = np.stack(
            [_draw_local(rng, self.n_frames, shape, self.motion, apix) for _ in range(n_movies)]
        )  # (M, 2, 18) pixels
        self.gain, self.hot_pixels, self.dead_columns = self._draw_detector(rng, shape)
        largest = float(np.abs(self.global_shifts).max()) if self.global_shifts.size else 0.0
        largest += self.motion.local_angstrom / apix
        extra = math.ceil(largest) + 2 * _TILE + _TILE_PAD
        self.fields = ParticleFields(
            maps,
            self.layout,
            self.microscope,
            extra_margin_px=extra,
            batch_size=batch_size,
            device=device,
        )
        names = [self.micrograph_name(m) for m in range(n_movies)]
        self.micrographs_table, self.ctf_table, self.truth = truth_tables(
            self.layout, maps, self.microscope, names
        )
        self.junk = junk_table(self.layout, names)

    # ---- naming
    def movie_name(self, m: int, suffix: str = ".tiff") -> str:
        """Path of movie ``m`` relative to the output folder."""
        return f"{MOVIES_DIR}/mov{m + 1:03d}{suffix}"

    def micrograph_name(self, m: int) -> str:
        """Name of movie ``m``'s motion-corrected micrograph in the truth tables.

        RELION's motion correction writes ``<job>/Movies/movNNN.mrc``; the truth tables use
        ``Movies/movNNN.mrc`` (join on it after removing the job folder).
        """
        return f"{MOVIES_DIR}/mov{m + 1:03d}.mrc"

    # ---- detector
    def _draw_detector(
        self, rng: np.random.Generator, shape: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        det = self.detector
        h, w = shape
        white = rng.standard_normal((h, w))
        smooth_white = torch.from_numpy(rng.standard_normal((h, w)).astype(np.float32))
        smooth = smooth_random_field(smooth_white, 1.0, length_angstrom=max(h, w) / 6).numpy()
        gain = (1.0 + det.gain_sd * white) * (1.0 + det.gain_smooth_sd * smooth)
        gain = np.clip(gain, 0.5, 2.0).astype(np.float32)
        hot = np.stack(
            [rng.integers(0, w, det.n_hot_pixels), rng.integers(0, h, det.n_hot_pixels)], 1
        )
        dead = rng.choice(w, size=min(det.n_dead_columns, w), replace=False)
        return gain, hot.astype(np.int64), np.sort(dead).astype(np.int64)

    def defect_rectangles(self) -> list[tuple[int, int, int, int]]:
        """Hot pixels and dead columns as MotionCor2 ``(x, y, w, h)`` rectangles."""
        h = self.layout.shape_px[0]
        rects = [(int(x), int(y), 1, 1) for x, y in self.hot_pixels]
        rects += [(int(x), 0, 1, h) for x in self.dead_columns]
        return rects

    # ---- frames
    def frame_exposures(self) -> np.ndarray:
        """``(F, 2)`` start and end exposure (e/Å²) of every frame."""
        start = self.pre_exposure + self.dose_per_frame * np.arange(self.n_frames)
        return np.stack([start, start + self.dose_per_frame], axis=1)

    def local_shift_at(self, m: int, frame: int, x_px: np.ndarray, y_px: np.ndarray) -> Any:
        """True local shifts (pixels) of movie ``m`` at micrograph positions."""
        c = self.local_coeffs[m]
        return polynomial_shift(c[0], c[1], frame, x_px, y_px, self.layout.shape_px)

    def movie(self, m: int, *, keep_expected: bool = False) -> MovieFrames:
        """Simulate movie ``m`` (the same for a given seed, whatever the order)."""
        apix = self.maps.pixel_size_angstrom
        fields = self.fields
        dev = fields.device
        rng = np.random.default_rng([self.seed, 1, m])
        potential = fields.potential(m)
        thickness, white_ice = ice_fields(rng, fields.padded_shape, apix, self.ice, dev)
        contamination = fields.contamination_thickness(m)
        if contamination is not None:
            thickness = thickness + contamination
        spectrum, transmission = contrast_spectrum(
            potential,
            thickness,
            white_ice,
            pixel_size_angstrom=apix,
            microscope=self.microscope,
            ice=self.ice,
            defocus_u_angstrom=float(self.layout.defocus_u_angstrom[m]),
            defocus_v_angstrom=float(self.layout.defocus_v_angstrom[m]),
            astigmatism_angle_degrees=float(self.layout.defocus_angle_degrees[m]),
            bfactor_angstrom2=self.bfactor_angstrom2,
        )
        del potential, thickness, white_ice
        shape = fields.padded_shape
        ky, kx = frequency_grid_2d(shape, apix, device=dev, dtype=torch.float32)
        ne = critical_exposure(torch.sqrt(kx * kx + ky * ky))
        del kx, ky
        h, w = self.layout.shape_px
        g = fields.margin
        counts_per_frame = self.dose_per_frame * apix * apix
        sensitivity = (1.0 / self.gain).astype(np.float64)
        raw = np.empty((self.n_frames, h, w), dtype=np.uint16)
        expected = np.empty((self.n_frames, h, w), dtype=np.float32) if keep_expected else None
        voltage = self.microscope.voltage_kv
        normaliser: float | None = None
        exposures = [equivalent_exposure(float(x), voltage) for x in self.frame_exposures()[0]]
        att = frame_attenuation(ne, exposures[0], exposures[1])  # frame 0
        # the next frame's attenuation is this one times exp(-dose / (2 Ne))
        decay = torch.exp(-(exposures[1] - exposures[0]) / (2.0 * ne))
        del ne
        # The detector MTF and the motion act on the contrast term exactly; on the smooth
        # transmission (ice thickness varies over hundreds of Å) the MTF is 1 and the shift is
        # rounded to whole pixels, both to within 1e-4 of its 1 % variation.
        spectrum = spectrum * detector_mtf_2d(shape, device=dev, dtype=torch.float32)
        for f in range(self.n_frames):
            if f > 0:
                att = att * decay
            drift = -torch.from_numpy(self.global_shifts[m, f]).to(dev, torch.float32)
            contrast = torch.fft.irfft2(spectrum * att * phase_shift_2d(shape, drift), s=shape)
            whole = [round(float(v)) for v in drift]
            trans = fields.crop(torch.roll(transmission, shifts=(whole[1], whole[0]), dims=(0, 1)))
            if f > 0 and np.any(self.local_coeffs[m]):

                def shift_at(x: np.ndarray, y: np.ndarray, f: int = f) -> Any:
                    return self.local_shift_at(m, f, x, y)

                contrast = warp_locally(contrast, (g, g), (h, w), shift_at)
            else:
                contrast = fields.crop(contrast)
            region = trans * (1.0 - 2.0 * contrast)
            if normaliser is None:
                normaliser = float(region.to(torch.float64).mean())
            lam = (region * (counts_per_frame / normaliser)).clamp(min=0).cpu().numpy()
            if expected is not None:
                expected[f] = lam
            frame = rng.poisson(lam * sensitivity)
            if len(self.hot_pixels):
                hx, hy = self.hot_pixels[:, 0], self.hot_pixels[:, 1]
                frame[hy, hx] += rng.poisson(self.detector.hot_pixel_counts, size=len(hx))
            frame[:, self.dead_columns] = 0
            np.minimum(frame, np.iinfo(np.uint16).max, out=frame)
            raw[f] = frame
        return MovieFrames(raw=raw, expected=expected)

    # ---- tables
    def motion_star_blocks(self, m: int, movie_name: str, gain_name: str | None) -> dict[str, Any]:
        """The blocks of movie ``m``'s true motion STAR file, in RELION's form."""
        h, w = self.layout.shape_px
        general: dict[str, Any] = {
            "rlnImageSizeX": w,
            "rlnImageSizeY": h,
            "rlnImageSizeZ": self.n_frames,
            "rlnMicrographMovieName": movie_name,
        }
        if gain_name:
            general["rlnMicrographGainName"] = gain_name
        general.update(
            {
                "rlnMicrographBinning": 1.0,
                "rlnMicrographOriginalPixelSize": self.maps.pixel_size_angstrom,
                "rlnMicrographDoseRate": self.dose_per_frame,
                "rlnMicrographPreExposure": self.pre_exposure,
                "rlnVoltage": self.microscope.voltage_kv,
                "rlnMicrographStartFrame": 1,
                "rlnMotionModelVersion": 1,
            }
        )
        shifts = pd.DataFrame(
            {
                "rlnMicrographFrameNumber": np.arange(1, self.n_frames + 1),
                "rlnMicrographShiftX": self.global_shifts[m, :, 0] + 0.0,
                "rlnMicrographShiftY": self.global_shifts[m, :, 1] + 0.0,
            }
        )
        coeffs = pd.DataFrame(
            {
                "rlnMotionModelCoeffsIdx": np.arange(2 * N_POLYNOMIAL_COEFFS),
                "rlnMotionModelCoeff": self.local_coeffs[m].reshape(-1),
            }
        )
        return {"general": general, "global_shift": shifts, "local_motion_model": coeffs}

    def movies_table(self, suffix: str, gain_name: str | None) -> pd.DataFrame:
        """Rows of ``movies.star`` joined with optics, as RELION's import writes them."""
        optics = {
            "rlnOpticsGroup": 1,
            "rlnOpticsGroupName": "opticsGroup1",
            "rlnMicrographOriginalPixelSize": self.maps.pixel_size_angstrom,
            "rlnVoltage": self.microscope.voltage_kv,
            "rlnSphericalAberration": self.microscope.cs_mm,
            "rlnAmplitudeContrast": self.microscope.amplitude_contrast,
        }
        return pd.DataFrame(
            {
                "rlnMicrographMovieName": [
                    self.movie_name(m, suffix) for m in range(self.layout.n_micrographs)
                ],
                **optics,
            }
        )

    def parameters(self) -> dict[str, Any]:
        """Every setting and derived number, for ``simulation.json``."""
        apix = self.maps.pixel_size_angstrom
        total_drift = np.array(
            [float(np.sum(np.hypot(*np.diff(s, axis=0).T))) * apix for s in self.global_shifts]
        )
        return {
            "level": "movies",
            **layout_parameters(
                self.layout,
                self.maps,
                self.microscope,
                self.ice,
                seed=self.seed,
                dose_e_per_a2=self.dose_per_frame * self.n_frames,
                defocus_range_angstrom=self.defocus_range_angstrom,
                astigmatism_angstrom=self.astigmatism_angstrom,
                bfactor_angstrom2=self.bfactor_angstrom2,
            ),
            "n_frames": self.n_frames,
            "dose_per_frame_e_per_a2": self.dose_per_frame,
            "pre_exposure_e_per_a2": self.pre_exposure,
            "counts_per_pixel_per_frame": self.dose_per_frame * apix * apix,
            "motion": asdict(self.motion),
            "accumulated_global_motion_angstrom": [float(x) for x in total_drift],
            "detector": asdict(self.detector),
            "hot_pixels_xy": self.hot_pixels.tolist(),
            "dead_columns_x": self.dead_columns.tolist(),
            "simulation_margin_px": self.fields.margin,
        }


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------

_README = """\
Simulated movies (cryospa simulate --level movies)

movies.star                 the movies as RELION's import writes them (3.1 STAR, optics with
                            pixel size, voltage, Cs, amplitude contrast)
Movies/movNNN{suffix}       raw frames, {n_frames} per movie, counts before gain correction
                            ({fmt})
gain.mrc                    gain reference, RELION convention: corrected = raw x gain (no
                            rotation or flip needed)
defects.txt                 hot pixels and dead columns as MotionCor2 "x y w h" rectangles
                            (RELION --defect_file)
ground_truth/motion/movNNN.star
                            true motion in RELION's motion STAR form: global shifts per frame
                            (rlnMicrographShiftX/Y, pixels; the shift that re-aligns the frame;
                            0 for frame 1) and the local third-order polynomial model
ground_truth/micrographs_ctf.star
                            true rlnDefocusU/V/Angle per micrograph (Movies/movNNN.mrc, as
                            RELION's motion correction names them inside its job folder)
ground_truth/coords/Movies/movNNN{coord_suffix}
                            true particle centres on the aligned sum (frame 1's coordinates)
ground_truth/particles_true.star
                            coordinates, true angles, origins for extraction at the
                            coordinates, defocus, class, half-set ({box} px box at {apix} Å/px)
ground_truth/junk_true.star  junk (with --junk_fraction): centres and type (rlnClassNumber
                            -1 aggregate, -2 broken particle, -3 ice contamination)
ground_truth/map_classNNN.mrc, ground_truth/simulation.json
                            the maps projected (V) and every parameter and the seed

Acquisition: {apix} Å/px, {kv} kV, Cs {cs} mm, amplitude contrast {ac}, {dose} e/Å² per frame,
pre-exposure {pre} e/Å².

Motion correction with RELION, from this folder:
  relion_run_motioncorr --i movies.star --o MotionCorr/ --use_own --j 2 \\
      --dose_per_frame {dose} --preexposure {pre} --gainref gain.mrc \\
      --defect_file defects.txt --patch_x 5 --patch_y 5 --bin_factor 1 \\
      --bfactor 150 --dose_weighting --angpix {apix} --voltage {kv}

{summary}
"""


def write_movie_simulation(
    sim: MovieSimulator,
    output_dir: PathLike,
    *,
    file_format: Literal["tiff", "mrc"] = "tiff",
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Simulate every movie and write the output folder, atomically.

    Movies are simulated and written one at a time (memory holds one movie).

    Parameters
    ----------
    sim
        The data set.
    output_dir
        Folder to create (it may exist if empty).
    file_format
        ``"tiff"`` (zlib-compressed, 8- or 16-bit as the counts need) or ``"mrc"`` (``.mrcs``,
        16-bit unsigned).
    progress
        Called with 1 after each movie.

    Returns
    -------
    Path
        The output folder.
    """
    if file_format not in ("tiff", "mrc"):
        raise ParameterError(f"movie format must be 'tiff' or 'mrc', got {file_format!r}")
    suffix = ".tiff" if file_format == "tiff" else ".mrcs"
    target = Path(output_dir)
    apix = sim.maps.pixel_size_angstrom
    with atomic_folder(target) as tmp:
        (tmp / MOVIES_DIR).mkdir(parents=True)
        (tmp / MOTION_DIR).mkdir(parents=True)
        write_mrc(tmp / "gain.mrc", sim.gain, voxel_size_angstrom=apix)
        (tmp / "defects.txt").write_text(
            "".join(f"{x} {y} {w} {h}\n" for x, y, w, h in sim.defect_rectangles()),
            encoding="utf-8",
        )
        for m in range(sim.layout.n_micrographs):
            frames = sim.movie(m).raw
            name = sim.movie_name(m, suffix)
            if file_format == "tiff":
                data = frames.astype(np.uint8) if frames.max() <= 255 else frames
                write_tiff_movie(tmp / name, data, compression="zlib")
            else:
                write_mrc_movie(tmp / name, frames, voxel_size_angstrom=apix)
            write_star(
                tmp / MOTION_DIR / f"mov{m + 1:03d}.star",
                sim.motion_star_blocks(m, name, "gain.mrc"),
            )
            if progress is not None:
                progress(1)
        write_relion_star(
            tmp / "movies.star", split_optics(sim.movies_table(suffix, "gain.mrc"), "movies")
        )
        parameters = {**sim.parameters(), "movie_format": file_format}
        write_field_truth(
            tmp,
            ctf_table=sim.ctf_table,
            truth=sim.truth,
            junk=sim.junk,
            maps=sim.maps,
            parameters=parameters,
        )
        p = parameters
        mic = sim.microscope
        summary = "\n".join(
            [
                f"seed {p['seed']}; {p['n_micrographs']} movies of {p['micrograph_size_px'][0]}"
                f" x {p['micrograph_size_px'][1]} px x {p['n_frames']} frames, "
                f"{p['particles_per_micrograph']} particles each",
                f"maps {p['maps']}, fractions {p['class_fractions']}, symmetry {p['symmetry']}",
                f"total drift {min(p['accumulated_global_motion_angstrom']):.1f} to "
                f"{max(p['accumulated_global_motion_angstrom']):.1f} Å; local deformation up "
                f"to {p['motion']['local_angstrom']} Å",
                f"{len(sim.hot_pixels)} hot pixels, {len(sim.dead_columns)} dead columns",
            ]
        )
        (tmp / "README.txt").write_text(
            _README.format(
                suffix=suffix,
                n_frames=sim.n_frames,
                fmt="zlib-compressed TIFF" if file_format == "tiff" else "MRC, 16-bit unsigned",
                coord_suffix=COORD_SUFFIX,
                box=sim.maps.box_size,
                apix=apix,
                kv=mic.voltage_kv,
                cs=mic.cs_mm,
                ac=mic.amplitude_contrast,
                dose=sim.dose_per_frame,
                pre=sim.pre_exposure,
                summary=summary,
            ),
            encoding="utf-8",
        )
    return target


def run_simulate_movies(
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
    file_format: Literal["tiff", "mrc"] = "tiff",
    progress: Callable[[int], None] | None = None,
    **options: Any,
) -> tuple[MovieSimulator, Path]:
    """Read maps, simulate movies and write the output folder (the ``simulate`` job).

    Parameters
    ----------
    map_paths
        One map per class.
    output_dir
        New (or empty) output folder.
    fractions, map_pixel_size_angstrom, box_size, symmetry, contrast_potential_volt,
    particle_diameter_angstrom, atomic_options
        As :func:`cryospa.sim.micrographs.run_simulate_micrographs`.
    pixel_size_angstrom
        Movie pixel size (Å); default 1.77.
    file_format
        ``"tiff"`` or ``"mrc"``.
    progress
        Called with 1 after each movie.
    **options
        Keyword options of :class:`MovieSimulator`.

    Returns
    -------
    tuple
        The simulator and the output folder.
    """
    check_new_folder(output_dir)
    dose = options.get("dose_per_frame", DEFAULT_DOSE_PER_FRAME)
    if not (dose > 0 and math.isfinite(dose)):
        raise ParameterError(f"dose per frame must be > 0 e/Å², got {dose}: set --dose_per_frame")
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
        micrograph_shape_px=options.get("movie_shape_px", (1024, 1024)),
    )
    sim = MovieSimulator(maps, fractions, **options)
    return sim, write_movie_simulation(sim, output_dir, file_format=file_format, progress=progress)
