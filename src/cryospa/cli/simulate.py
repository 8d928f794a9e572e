r"""Simulate cryo-EM data with ground truth (level: particles).

--level particles: extracted particle images straight from one or more maps (one per class):
random uniform orientations (or those of --angles), sub-pixel origins, per-micrograph defocus
with astigmatism and a per-particle height jitter, weak-phase image formation through the CTF
(RELION convention) with coherence and B-factor envelopes and a counting detector's MTF,
coloured noise (counting noise, ice, slow background) at the requested particle SNR, contrast
inverted and normalised as RELION's extraction. The map is treated as Coulomb potential relative
to ice; it is Fourier-rescaled to --angpix and padded or cropped to --box.

SNR = mean over particles of the signal variance inside a disc of the particle's diameter
(centred on the particle) / the noise variance in the same disc; 0.01 to 0.1 is realistic.

Output folder (--o, created; must not exist or be empty; nothing is left on error):
  particles.star, Particles/micNNN.mrcs    as freshly extracted particles (no angles)
  ground_truth/particles_true.star         true angles, origins (Å), defocus, class
  ground_truth/map_classNNN.mrc            the maps projected (V), at --angpix and --box
  ground_truth/simulation.json, README.txt every parameter and the seed

Example:
  cryospa simulate --level particles --map map.mrc --n 2000 --box 64 --angpix 2.0 \
      --snr 0.05 --sym D2 --o sim
"""

from __future__ import annotations

import argparse

from cryospa.cli._common import add_compute_args, compute_from_args
from cryospa.sim.particles import run_simulate_particles
from cryospa.sim.physics import Microscope


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options."""
    parser.add_argument(
        "--level",
        choices=["particles"],
        default="particles",
        help="what to simulate: particles = extracted particle stacks (default: particles)",
    )
    parser.add_argument("--o", required=True, metavar="DIR", help="output folder (new or empty)")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed gives the same data"
    )
    g = parser.add_argument_group("specimen")
    g.add_argument(
        "--map",
        action="append",
        required=True,
        metavar="MRC",
        help="cubic map, protein positive; repeat for several classes",
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
        help="voxel size of the maps in Å (default: their headers')",
    )
    g.add_argument(
        "--sym", default="C1", help="impose this point group on the maps (C1, Cn, Dn, T, O, I)"
    )
    g.add_argument(
        "--contrast_potential",
        type=float,
        default=2.0,
        metavar="V",
        help="mean potential of the protein relative to ice in volts (default: 2.0)",
    )
    g.add_argument(
        "--particle_diameter",
        type=float,
        default=None,
        metavar="Å",
        help="diameter in Å of the disc the SNR is measured in (default: the sphere with 99 %% "
        "of the density on the map's support)",
    )
    g = parser.add_argument_group("particles")
    g.add_argument("--n", type=int, default=None, help="number of particles")
    g.add_argument(
        "--angles",
        default=None,
        metavar="STAR",
        help="take orientations (and origins, if present) from this STAR file instead of "
        "random ones; sets --n",
    )
    g.add_argument(
        "--box",
        type=int,
        default=None,
        metavar="PX",
        help="box size in pixels, even; larger than the map is allowed (default: the map's box "
        "at --angpix)",
    )
    g.add_argument(
        "--angpix",
        type=float,
        default=None,
        metavar="Å",
        help="pixel size of the particles in Å (default: the map's voxel size)",
    )
    g.add_argument(
        "--snr", type=float, default=0.05, help="particle SNR (see above; default: 0.05)"
    )
    g.add_argument(
        "--max_origin",
        type=float,
        default=5.0,
        metavar="Å",
        help="origins uniform in [-max, max] Å along x and y (default: 5)",
    )
    g.add_argument(
        "--n_micrographs",
        type=int,
        default=None,
        help="micrographs the particles come from (default: one per 200 particles)",
    )
    g.add_argument(
        "--no_invert",
        action="store_true",
        help="keep dark particles (default: inverted, white, as RELION extraction with "
        "--invert_contrast)",
    )
    g.add_argument(
        "--pad",
        type=float,
        default=2.0,
        help="simulate in a box this many times larger, then crop, so CTF delocalisation "
        "loses signal as in real extraction; 1 = periodic as relion_project (default: 2)",
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
        help="standard deviation in Å of a particle's defocus about its micrograph's (default: 50)",
    )
    g.add_argument(
        "--bfactor",
        type=float,
        default=50.0,
        metavar="Å²",
        help="B-factor envelope in Å² for radiation damage and blur (default: 50)",
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


def main(args: argparse.Namespace) -> int:
    """Run the simulation."""
    device = compute_from_args(args)
    microscope = Microscope(
        voltage_kv=args.voltage,
        cs_mm=args.cs,
        amplitude_contrast=args.ac,
        illumination_semiangle_mrad=args.illumination_angle,
        cc_mm=args.cc,
        energy_spread_ev=args.energy_spread,
    )
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
        angles_star=args.angles,
        n_particles=args.n,
        snr=args.snr,
        microscope=microscope,
        defocus_range_angstrom=tuple(args.defocus),
        astigmatism_angstrom=args.astigmatism,
        defocus_jitter_angstrom=args.defocus_jitter,
        bfactor_angstrom2=args.bfactor,
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
