"""Reconstruct a 3D map from particles with known orientations (like relion_reconstruct).

Reads a particles STAR file (RELION 3.0 or 3.1+; image paths relative to the working
directory or to the STAR file's folder), back-projects every image at its orientation
(rlnAngleRot/Tilt/Psi) after centring it by its origin (rlnOriginX/YAngst), optionally
correcting for the CTF, imposes the point-group symmetry and writes an MRC map.

Example:
  cryospa reconstruct --i Refine3D/job010/run_data.star --o map.mrc --ctf --sym D2
"""

from __future__ import annotations

import argparse

from cryospa.cli._common import add_compute_args, compute_from_args, show_progress


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options."""
    parser.add_argument("--i", required=True, metavar="STAR", help="input particles STAR file")
    parser.add_argument("--o", required=True, metavar="MRC", help="output map (.mrc)")
    parser.add_argument("--ctf", action="store_true", help="correct for the CTF (default: no)")
    parser.add_argument(
        "--sym", default="C1", help="point-group symmetry: C1, Cn, Dn, T, O, I1-I4 (default: C1)"
    )
    parser.add_argument(
        "--angpix",
        type=float,
        default=None,
        metavar="Å",
        help="pixel size in Å (default: rlnImagePixelSize of the optics table)",
    )
    parser.add_argument(
        "--maxres",
        type=float,
        default=None,
        metavar="Å",
        help="ignore data beyond this resolution in Å (default: Nyquist)",
    )
    parser.add_argument(
        "--subset",
        type=int,
        choices=(1, 2),
        default=None,
        help="only half-set 1 or 2 (rlnRandomSubset) (default: all particles)",
    )
    parser.add_argument(
        "--class",
        dest="class_number",
        type=int,
        default=None,
        metavar="K",
        help="only particles of class K (rlnClassNumber) (default: all)",
    )
    parser.add_argument(
        "--pad",
        type=float,
        default=2.0,
        help="Fourier padding factor, >= 1 (default: 2, as RELION)",
    )
    add_compute_args(parser)


def main(args: argparse.Namespace) -> int:
    """Run the reconstruction."""
    from cryospa.jobs.reconstruct import run_reconstruct  # torch: only when the command runs

    device = compute_from_args(args)
    result = run_reconstruct(
        args.i,
        args.o,
        ctf=args.ctf,
        symmetry=args.sym,
        pixel_size_angstrom=args.angpix,
        max_resolution_angstrom=args.maxres,
        subset=args.subset,
        class_number=args.class_number,
        padding_factor=args.pad,
        batch_size=args.batch,
        device=device,
        progress=show_progress(),
    )
    print(
        f"reconstructed {result.n_particles} particles ({result.box_size} px, "
        f"{result.pixel_size_angstrom:.4g} Å/px, {result.symmetry}) -> {result.output}"
    )
    return 0
