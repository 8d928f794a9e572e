r"""Simulate cryo-EM data with ground truth (levels: particles, micrographs, movies).

--level particles: extracted particle images straight from one or more maps (one per class):
random uniform orientations (or those of --angles), sub-pixel origins, per-micrograph defocus
with astigmatism and a per-particle height jitter, weak-phase image formation through the CTF
(RELION convention) with coherence and B-factor envelopes and a counting detector's MTF,
coloured noise (counting noise, ice, slow background) at the requested particle SNR, contrast
inverted and normalised as RELION's extraction. The map is treated as Coulomb potential relative
to ice; it is Fourier-rescaled to --angpix and padded or cropped to --box.

SNR = mean over particles of the signal variance inside a disc of the particle's diameter
(centred on the particle) / the noise variance in the same disc; 0.01 to 0.1 is realistic.

--level micrographs: summed micrographs in electron counts (float32 MRC, not normalised, dark
particles) of --mic_size px at --angpix (default 1.77 Å/px), --particles_per_micrograph
particles each at random positions at least --min_distance apart (default: the particle
diameter) and half a --box from the edges; the whole field is imaged at once: projected potential
of every particle plus vitreous ice (a smooth random thickness field of --ice_thickness Å with a
relative sd of --ice_variation, modulating the ice's phase, the counted fraction of electrons and
the amorphous-ice structure), per-micrograph defocus, astigmatism and angle, CTF with coherence
and B-factor envelopes, detector MTF, Poisson counts at --dose e/Å² on average.

--level movies: raw movies as a counting detector writes them, of the same fields of view as
the micrographs level: --n_frames frames of --dose_per_frame e/Å² each (Poisson counts),
exposure-dependent radiation damage (Grant & Grigorieff 2015), beam-induced motion (a global
drift of about --drift Å, fast in the first frames, plus a smooth local deformation of up to
--local_motion Å in RELION's polynomial form), a per-pixel gain (gain.mrc, RELION convention:
corrected = raw x gain), hot pixels and dead columns (defects.txt); TIFF (zlib) or MRC.

Output folder (--o, created; must not exist or be empty; nothing is left on error):
  particles level:
    particles.star, Particles/micNNN.mrcs    as freshly extracted particles (no angles)
    ground_truth/particles_true.star         true angles, origins (Å), defocus, class
  micrographs level:
    micrographs.star, Micrographs/micNNN.mrc as RELION's motion correction (no CTF)
    ground_truth/micrographs_ctf.star        true defocus U / V / angle (as CtfFind's output)
    ground_truth/coords/Micrographs/micNNN_true.star
                                             true coordinates (relion_preprocess --coord_dir
                                             ground_truth/coords/ --coord_suffix _true.star)
    ground_truth/particles_true.star         coordinates, true angles, origins for extraction
                                             at the coordinates, defocus, class
  movies level:
    movies.star, Movies/movNNN.tiff          raw movies as RELION's import lists them
    gain.mrc, defects.txt                    gain reference and detector defects
    ground_truth/motion/movNNN.star          true motion in RELION's motion STAR form
    ground_truth/micrographs_ctf.star, ground_truth/coords/Movies/movNNN_true.star,
    ground_truth/particles_true.star         as the micrographs level (Movies/movNNN.mrc)
  all levels:
    ground_truth/map_classNNN.mrc            the maps projected (V), at --angpix and --box
    ground_truth/simulation.json, README.txt every parameter and the seed

Presets (options given on the command line win over the preset's):
  --preset tutorial   the RELION / Scipion beta-galactosidase tutorial's acquisition on a
                      laptop scale: 12 movies of 1024 x 1024 px x 24 frames at 1.77 Å/px
                      (the tutorial's 0.885 Å/px binned twice), 1.277 e/Å² per frame, 200 kV,
                      Cs 1.4 mm, amplitude contrast 0.1, a D2 specimen: the shipped atomic
                      model builtin:ldh (human lactate dehydrogenase, PDB 1I10, D2 like
                      beta-galactosidase; no beta-galactosidase model ships offline), 60
                      particles and 10 %% junk per movie
  --preset tiny       the same at unit-test scale (seconds): 2 movies of 256 x 256 px x 8
                      frames at 3.54 Å/px

For example:
  cryospa simulate --preset tutorial --o tutorial_data
  cryospa simulate --level particles --map map.mrc --n 2000 --box 64 --angpix 2.0 \
      --snr 0.05 --sym D2 --o sim
  cryospa simulate --level micrographs --map map.mrc --sym D2 --n_micrographs 12 \
      --mic_size 1024 --particles_per_micrograph 40 --dose 30.65 --o mics
  cryospa simulate --level movies --map map.mrc --sym D2 --n_micrographs 12 \
      --n_frames 24 --dose_per_frame 1.277 --o movies
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from tqdm import tqdm

from cryospa.cli._common import add_compute_args, compute_from_args, show_progress
from cryospa.errors import ParameterError
from cryospa.sim.atomic import DEFAULT_BUILTIN_MODEL, AtomicModelOptions
from cryospa.sim.micrographs import (
    DEFAULT_DOSE_E_PER_A2,
    DEFAULT_MICROGRAPH_PIXEL_SIZE_ANGSTROM,
    IceModel,
    run_simulate_micrographs,
)
from cryospa.sim.movies import (
    DEFAULT_DOSE_PER_FRAME,
    DEFAULT_N_FRAMES,
    DetectorModel,
    MotionModel,
    run_simulate_movies,
)
from cryospa.sim.particles import run_simulate_particles
from cryospa.sim.physics import Microscope

#: Defaults of the options a preset may set.
BASE_DEFAULTS: dict[str, Any] = {
    "level": "particles",
    "map": [DEFAULT_BUILTIN_MODEL],
    "sym": "C1",
    "mic_size": [1024],
    "particles_per_micrograph": 40,
    "junk_fraction": 0.0,
    "n_frames": DEFAULT_N_FRAMES,
    "dose_per_frame": DEFAULT_DOSE_PER_FRAME,
}
#: The presets (see the module docstring).
PRESETS: dict[str, dict[str, Any]] = {
    "tutorial": {
        "level": "movies",
        "map": [DEFAULT_BUILTIN_MODEL],
        "sym": "D2",
        "angpix": DEFAULT_MICROGRAPH_PIXEL_SIZE_ANGSTROM,
        "mic_size": [1024],
        "n_micrographs": 12,
        "particles_per_micrograph": 60,
        "junk_fraction": 0.1,
        "n_frames": DEFAULT_N_FRAMES,
        "dose_per_frame": DEFAULT_DOSE_PER_FRAME,
    },
    "tiny": {
        "level": "movies",
        "map": [DEFAULT_BUILTIN_MODEL],
        "sym": "D2",
        "angpix": 3.54,
        "mic_size": [256],
        "n_micrographs": 2,
        "particles_per_micrograph": 5,
        "junk_fraction": 0.0,
        "n_frames": 8,
        "dose_per_frame": DEFAULT_DOSE_PER_FRAME,
    },
}


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options."""
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="start from a preset (see above); explicit options override it",
    )
    parser.add_argument(
        "--level",
        choices=["particles", "micrographs", "movies"],
        default=None,
        help="what to simulate: particles = extracted particle stacks, micrographs = summed "
        "micrographs with ground-truth coordinates, movies = raw movies with gain, defects and "
        "true motion (default: particles)",
    )
    parser.add_argument("--o", required=True, metavar="DIR", help="output folder (new or empty)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed gives the same data"
    )
    g = parser.add_argument_group("specimen")
    g.add_argument(
        "--map",
        action="append",
        default=None,
        metavar="MAP",
        help="cubic MRC map (protein positive), atomic model (.pdb/.ent/.cif/.mmcif, "
        f"optionally .gz) or {DEFAULT_BUILTIN_MODEL} (the shipped D2 model); repeat for several "
        f"classes (default: {DEFAULT_BUILTIN_MODEL})",
    )
    g.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=None,
        metavar="F",
        help="class fractions, one per --map, summing to 1 (default: equal)",
    )
    g.add_argument(
        "--map_angpix",
        type=float,
        default=None,
        metavar="Å",
        help="voxel size of the MRC maps in Å (default: their headers'; atomic models need none)",
    )
    g.add_argument(
        "--sym",
        default=None,
        help="impose this point group on the maps (C1, Cn, Dn, T, O, I); an atomic model must "
        "have it (default: C1)",
    )
    g.add_argument(
        "--contrast_potential",
        type=float,
        default=2.0,
        metavar="V",
        help="MRC maps only: mean potential of the protein relative to ice in volts (atomic "
        "models are in volts already) (default: 2.0)",
    )
    g.add_argument(
        "--particle_diameter",
        type=float,
        default=None,
        metavar="Å",
        help="diameter in Å of the disc the SNR is measured in (default: the sphere with 99 %% "
        "of the density on the map's support)",
    )
    g = parser.add_argument_group("particles (both levels unless marked)")
    g.add_argument("--n", type=int, default=None, help="number of particles (particles level)")
    g.add_argument(
        "--angles",
        default=None,
        metavar="STAR",
        help="take orientations (and origins, if present) from this STAR file instead of "
        "random ones; sets --n (particles level)",
    )
    g.add_argument(
        "--box",
        type=int,
        default=None,
        metavar="PX",
        help="box size in pixels, even; larger than the map is allowed; at the micrographs "
        "level the box the maps are projected in and the extraction box of the ground truth "
        "(default: the map's box at --angpix)",
    )
    g.add_argument(
        "--angpix",
        type=float,
        default=None,
        metavar="Å",
        help="pixel size of the particles / micrographs in Å (default: the map's voxel size "
        f"for particles, {DEFAULT_MICROGRAPH_PIXEL_SIZE_ANGSTROM:g} for micrographs)",
    )
    g.add_argument(
        "--snr",
        type=float,
        default=0.05,
        help="particle SNR (see above; particles level; default: 0.05)",
    )
    g.add_argument(
        "--max_origin",
        type=float,
        default=5.0,
        metavar="Å",
        help="origins uniform in [-max, max] Å along x and y (particles level; default: 5)",
    )
    g.add_argument(
        "--n_micrographs",
        type=int,
        default=None,
        help="number of micrographs (default: 12 at the micrographs level; at the particles "
        "level the micrographs the particles come from, one per 200 particles)",
    )
    g.add_argument(
        "--no_invert",
        action="store_true",
        help="keep dark particles (particles level; default: inverted, white, as RELION "
        "extraction with --invert_contrast)",
    )
    g.add_argument(
        "--pad",
        type=float,
        default=2.0,
        help="simulate in a box this many times larger, then crop, so CTF delocalisation "
        "loses signal as in real extraction; 1 = periodic as relion_project (particles "
        "level; default: 2)",
    )
    ice = IceModel()
    g = parser.add_argument_group("micrographs (micrographs level)")
    g.add_argument(
        "--mic_size",
        type=int,
        nargs="+",
        default=None,
        metavar="PX",
        help="micrograph width [and height] in pixels (default: 1024, square)",
    )
    g.add_argument(
        "--particles_per_micrograph",
        type=int,
        default=None,
        help="particles per micrograph; 0 = ice only; random packing of non-overlapping "
        "particles half a box from the edges limits it (default: 40)",
    )
    g.add_argument(
        "--min_distance",
        type=float,
        default=None,
        metavar="Å",
        help="smallest distance between particle centres in Å (default: the particle "
        "diameter, so particles do not overlap)",
    )
    g.add_argument(
        "--junk_fraction",
        type=float,
        default=None,
        metavar="FRACTION",
        help="fraction of the objects on a micrograph that are junk: aggregates, broken "
        "particles and ice contamination, for picking and 2D cleaning (micrographs and movies "
        "levels; default: 0)",
    )
    g.add_argument(
        "--dose",
        type=float,
        default=DEFAULT_DOSE_E_PER_A2,
        metavar="e/Å²",
        help="total exposure in e/Å², counted on average over the micrograph; sets the "
        f"Poisson counting noise (default: {DEFAULT_DOSE_E_PER_A2:g}, the tutorial's 24 "
        "frames of 1.277 e/Å²)",
    )
    g.add_argument(
        "--ice_thickness",
        type=float,
        default=ice.thickness_angstrom,
        metavar="Å",
        help=f"mean ice thickness in Å; 0 = no ice (default: {ice.thickness_angstrom:g})",
    )
    g.add_argument(
        "--ice_variation",
        type=float,
        default=ice.thickness_variation,
        metavar="FRACTION",
        help="relative standard deviation of the ice thickness across a micrograph "
        f"(default: {ice.thickness_variation:g})",
    )
    g.add_argument(
        "--ice_length",
        type=float,
        default=ice.thickness_length_angstrom,
        metavar="Å",
        help="length scale in Å of the thickness variation (Gaussian smoothing sigma; "
        f"default: {ice.thickness_length_angstrom:g})",
    )
    g.add_argument(
        "--ice_attenuation",
        type=float,
        default=ice.attenuation_length_angstrom,
        metavar="Å",
        help="attenuation length in Å: the counted fraction of electrons falls as "
        f"exp(-thickness / length) (default: {ice.attenuation_length_angstrom:g}, energy "
        "filtered)",
    )
    motion, detector = MotionModel(), DetectorModel()
    g = parser.add_argument_group("movies (movies level)")
    g.add_argument(
        "--n_frames",
        type=int,
        default=None,
        help=f"frames per movie (default: {DEFAULT_N_FRAMES})",
    )
    g.add_argument(
        "--dose_per_frame",
        type=float,
        default=None,
        metavar="e/Å²",
        help=f"exposure per frame in e/Å² (default: {DEFAULT_DOSE_PER_FRAME:g}, the tutorial's)",
    )
    g.add_argument(
        "--pre_exposure",
        type=float,
        default=0.0,
        metavar="e/Å²",
        help="exposure before the first frame in e/Å² (default: 0)",
    )
    g.add_argument(
        "--drift",
        type=float,
        default=motion.drift_angstrom,
        metavar="Å",
        help="typical total global drift over a movie in Å; each movie draws 0.5 to 1.5 times "
        f"it, {round(100 * motion.early_fraction)} %% of it in the first frames "
        f"(default: {motion.drift_angstrom:g})",
    )
    g.add_argument(
        "--local_motion",
        type=float,
        default=motion.local_angstrom,
        metavar="Å",
        help="largest local deformation over the field at the last frame in Å; 0 = none "
        f"(default: {motion.local_angstrom:g})",
    )
    g.add_argument(
        "--gain_sd",
        type=float,
        default=detector.gain_sd,
        metavar="FRACTION",
        help=f"pixel-to-pixel gain variation, relative sd (default: {detector.gain_sd:g})",
    )
    g.add_argument(
        "--hot_pixels",
        type=int,
        default=detector.n_hot_pixels,
        help=f"number of hot pixels (default: {detector.n_hot_pixels})",
    )
    g.add_argument(
        "--dead_columns",
        type=int,
        default=detector.n_dead_columns,
        help=f"number of dead detector columns (default: {detector.n_dead_columns})",
    )
    g.add_argument(
        "--movie_format",
        choices=["tiff", "mrc"],
        default="tiff",
        help="tiff = zlib-compressed TIFF as detectors write; mrc = 16-bit MRC stacks "
        "(default: tiff)",
    )
    g = parser.add_argument_group("atomic models (--map file.pdb / .cif)")
    g.add_argument(
        "--assembly",
        default=None,
        metavar="NAME",
        help="build this biological assembly of the model (e.g. 1; default: the deposited "
        "coordinates)",
    )
    g.add_argument("--keep_waters", action="store_true", help="keep the model's waters")
    g.add_argument("--remove_ligands", action="store_true", help="drop every non-polymer residue")
    g.add_argument(
        "--hydrogens",
        choices=["auto", "implicit", "explicit", "none"],
        default="auto",
        help="hydrogens: explicit if the model has them, else implicit per residue (auto); "
        "or as named (default: auto)",
    )
    g.add_argument(
        "--model_bfactor",
        type=float,
        default=0.0,
        metavar="Å²",
        help="extra B-factor in Å² blurring every atom (default: 0)",
    )
    g.add_argument(
        "--no_model_bfactors",
        action="store_true",
        help="ignore the model's own B-factors (default: use them)",
    )
    g.add_argument(
        "--model_centre",
        choices=["mass", "origin", "keep"],
        default=None,
        help="put the centre of mass, the coordinate origin, or the coordinates as they are "
        "at the box centre (default: origin for builtin models, which sit on their symmetry "
        "axes; mass for files)",
    )
    defaults = Microscope()
    g = parser.add_argument_group("microscope and CTF")
    g.add_argument(
        "--voltage",
        type=float,
        default=defaults.voltage_kv,
        metavar="kV",
        help=f"acceleration voltage in kV (default: {defaults.voltage_kv:g})",
    )
    g.add_argument(
        "--cs",
        type=float,
        default=defaults.cs_mm,
        metavar="mm",
        help=f"spherical aberration in mm (default: {defaults.cs_mm:g})",
    )
    g.add_argument(
        "--ac",
        type=float,
        default=defaults.amplitude_contrast,
        help=f"amplitude contrast, fraction (default: {defaults.amplitude_contrast:g})",
    )
    g.add_argument(
        "--defocus",
        type=float,
        nargs=2,
        default=(8000.0, 25000.0),
        metavar=("MIN", "MAX"),
        help="range of the micrographs' mean defocus in Å, underfocus positive "
        "(default: 8000 25000)",
    )
    g.add_argument(
        "--astigmatism",
        type=float,
        default=500.0,
        metavar="Å",
        help="largest defocus U - V in Å, drawn per micrograph (default: 500)",
    )
    g.add_argument(
        "--defocus_jitter",
        type=float,
        default=50.0,
        metavar="Å",
        help="standard deviation in Å of a particle's defocus about its micrograph's "
        "(particles level; default: 50)",
    )
    g.add_argument(
        "--bfactor",
        type=float,
        default=None,
        metavar="Å²",
        help="B-factor envelope in Å² for blur (and, except at the movies level, radiation "
        "damage, which movies model frame by frame) (default: 50; 20 for movies)",
    )
    g.add_argument(
        "--illumination_angle",
        type=float,
        default=defaults.illumination_semiangle_mrad,
        metavar="mrad",
        help="illumination semi-angle in mrad, spatial coherence "
        f"(default: {defaults.illumination_semiangle_mrad:g})",
    )
    g.add_argument(
        "--energy_spread",
        type=float,
        default=defaults.energy_spread_ev,
        metavar="eV",
        help="energy spread FWHM in eV, temporal coherence "
        f"(default: {defaults.energy_spread_ev:g})",
    )
    g.add_argument(
        "--cc",
        type=float,
        default=defaults.cc_mm,
        metavar="mm",
        help=f"chromatic aberration in mm (default: {defaults.cc_mm:g})",
    )
    add_compute_args(parser)


def apply_preset(args: argparse.Namespace) -> None:
    """Fill options left unset from ``--preset``, then from the plain defaults."""
    preset = PRESETS[args.preset] if args.preset else {}
    for key, value in {**BASE_DEFAULTS, **preset}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _atomic_options(args: argparse.Namespace) -> AtomicModelOptions:
    return AtomicModelOptions(
        assembly=args.assembly,
        remove_waters=not args.keep_waters,
        remove_ligands=args.remove_ligands,
        hydrogens=args.hydrogens,
        bfactor_angstrom2=args.model_bfactor,
        model_bfactors=not args.no_model_bfactors,
        centre=args.model_centre,
    )


def main(args: argparse.Namespace) -> int:
    """Run the simulation."""
    apply_preset(args)
    device = compute_from_args(args)
    microscope = Microscope(
        voltage_kv=args.voltage,
        cs_mm=args.cs,
        amplitude_contrast=args.ac,
        illumination_semiangle_mrad=args.illumination_angle,
        cc_mm=args.cc,
        energy_spread_ev=args.energy_spread,
    )
    if args.level == "micrographs":
        return _main_micrographs(args, microscope, device)
    if args.level == "movies":
        return _main_movies(args, microscope, device)
    bfactor = 50.0 if args.bfactor is None else args.bfactor
    sim, out = run_simulate_particles(
        args.map,
        args.o,
        fractions=args.fractions,
        map_pixel_size_angstrom=args.map_angpix,
        pixel_size_angstrom=args.angpix,
        box_size=args.box,
        symmetry=args.sym,
        contrast_potential_volt=args.contrast_potential,
        particle_diameter_angstrom=args.particle_diameter,
        atomic_options=_atomic_options(args),
        angles_star=args.angles,
        n_particles=args.n,
        snr=args.snr,
        microscope=microscope,
        defocus_range_angstrom=tuple(args.defocus),
        astigmatism_angstrom=args.astigmatism,
        defocus_jitter_angstrom=args.defocus_jitter,
        bfactor_angstrom2=bfactor,
        max_origin_angstrom=args.max_origin,
        n_micrographs=args.n_micrographs,
        invert_contrast=not args.no_invert,
        padding=args.pad,
        seed=args.seed,
        batch_size=args.batch,
        device=device,
    )
    print(
        f"wrote {len(sim.images)} particles ({sim.images.shape[-1]} px, "
        f"{sim.maps.pixel_size_angstrom:g} Å/px, SNR {sim.snr:g}, counting noise of "
        f"{sim.equivalent_dose_e_per_a2:.1f} e/Å²) -> {out}"
    )
    return 0


def _field_options(args: argparse.Namespace) -> tuple[int, int, IceModel]:
    """Micrograph size and ice of the micrographs and movies levels."""
    if args.n is not None or args.angles is not None:
        raise ParameterError(
            f"--n and --angles are for --level particles; at the {args.level} level give "
            "--n_micrographs and --particles_per_micrograph"
        )
    if len(args.mic_size) not in (1, 2):
        raise ParameterError(f"--mic_size takes WIDTH [HEIGHT] in pixels, got {args.mic_size}")
    ice = IceModel(
        thickness_angstrom=args.ice_thickness,
        thickness_variation=args.ice_variation,
        thickness_length_angstrom=args.ice_length,
        attenuation_length_angstrom=args.ice_attenuation,
    )
    return args.mic_size[0], args.mic_size[-1], ice


def _main_movies(args: argparse.Namespace, microscope: Microscope, device: torch.device) -> int:
    """``--level movies``."""
    width, height, ice = _field_options(args)
    n_movies = 12 if args.n_micrographs is None else args.n_micrographs
    with tqdm(
        total=n_movies, desc="simulate movies", unit="movie", disable=not show_progress()
    ) as bar:
        sim, out = run_simulate_movies(
            args.map,
            args.o,
            fractions=args.fractions,
            map_pixel_size_angstrom=args.map_angpix,
            pixel_size_angstrom=args.angpix,
            box_size=args.box,
            symmetry=args.sym,
            contrast_potential_volt=args.contrast_potential,
            particle_diameter_angstrom=args.particle_diameter,
            atomic_options=_atomic_options(args),
            file_format=args.movie_format,
            progress=bar.update,
            n_movies=n_movies,
            movie_shape_px=(height, width),
            n_frames=args.n_frames,
            dose_per_frame=args.dose_per_frame,
            pre_exposure=args.pre_exposure,
            particles_per_micrograph=args.particles_per_micrograph,
            min_distance_angstrom=args.min_distance,
            defocus_range_angstrom=tuple(args.defocus),
            astigmatism_angstrom=args.astigmatism,
            bfactor_angstrom2=20.0 if args.bfactor is None else args.bfactor,
            junk_fraction=args.junk_fraction,
            microscope=microscope,
            ice=ice,
            motion=MotionModel(drift_angstrom=args.drift, local_angstrom=args.local_motion),
            detector=DetectorModel(
                gain_sd=args.gain_sd,
                n_hot_pixels=args.hot_pixels,
                n_dead_columns=args.dead_columns,
            ),
            seed=args.seed,
            batch_size=args.batch,
            device=device,
        )
    p = sim.parameters()
    print(
        f"wrote {p['n_micrographs']} movies ({width} x {height} px x {p['n_frames']} frames, "
        f"{p['pixel_size_angstrom']:g} Å/px, {p['dose_per_frame_e_per_a2']:g} e/Å² per frame, "
        f"{p['n_particles']} particles) -> {out}"
    )
    return 0


def _main_micrographs(
    args: argparse.Namespace, microscope: Microscope, device: torch.device
) -> int:
    """``--level micrographs``."""
    width, height, ice = _field_options(args)
    sim, out = run_simulate_micrographs(
        args.map,
        args.o,
        fractions=args.fractions,
        map_pixel_size_angstrom=args.map_angpix,
        pixel_size_angstrom=args.angpix,
        box_size=args.box,
        symmetry=args.sym,
        contrast_potential_volt=args.contrast_potential,
        particle_diameter_angstrom=args.particle_diameter,
        atomic_options=_atomic_options(args),
        n_micrographs=12 if args.n_micrographs is None else args.n_micrographs,
        micrograph_shape_px=(height, width),
        particles_per_micrograph=args.particles_per_micrograph,
        dose_e_per_a2=args.dose,
        min_distance_angstrom=args.min_distance,
        microscope=microscope,
        ice=ice,
        defocus_range_angstrom=tuple(args.defocus),
        astigmatism_angstrom=args.astigmatism,
        bfactor_angstrom2=50.0 if args.bfactor is None else args.bfactor,
        junk_fraction=args.junk_fraction,
        seed=args.seed,
        batch_size=args.batch,
        device=device,
    )
    p = sim.parameters
    print(
        f"wrote {p['n_micrographs']} micrographs ({width} x {height} px, "
        f"{p['pixel_size_angstrom']:g} Å/px, {p['n_particles']} particles, dose "
        f"{p['dose_e_per_a2']:g} e/Å²) -> {out}"
    )
    return 0
