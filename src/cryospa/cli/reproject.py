"""Project a 3D map at the orientations of a STAR file (like relion_project).

Every row of the STAR file gives the orientation (rlnAngleRot/Tilt/Psi, degrees), the origin
(rlnOriginX/YAngst, Å; the projection is shifted by minus the origin, so that the particle sits
at centre - origin as in RELION) and, with --ctf, the CTF (rlnDefocusU/V, rlnDefocusAngle,
optics voltage, Cs, amplitude contrast, rlnPhaseShift, rlnCtfBfactor, rlnCtfScalefactor).
Writes an image stack and, next to it, a STAR file with the same rows pointing into it.

Example:
  cryospa reproject --map map.mrc --i particles.star --o projections.mrcs --ctf
"""

from __future__ import annotations

import argparse

from cryospa.cli._common import add_compute_args, compute_from_args, show_progress


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options."""
    parser.add_argument("--map", required=True, metavar="MRC", help="input map (cubic box)")
    parser.add_argument(
        "--i",
        required=True,
        metavar="STAR",
        help="STAR file with orientations (and origins / CTF) per image",
    )
    parser.add_argument(
        "--o",
        required=True,
        metavar="MRCS",
        help="output stack (.mrcs); the STAR file is written next to it (.star)",
    )
    parser.add_argument(
        "--ctf", action="store_true", help="multiply by each row's CTF (default: no)"
    )
    parser.add_argument(
        "--angpix",
        type=float,
        default=None,
        metavar="Å",
        help="pixel size in Å (default: the map header's voxel size)",
    )
    parser.add_argument(
        "--maxres",
        type=float,
        default=None,
        metavar="Å",
        help="zero frequencies beyond this resolution in Å (default: Nyquist)",
    )
    parser.add_argument(
        "--pad",
        type=float,
        default=2.0,
        help="Fourier padding factor, >= 1 (default: 2, as RELION)",
    )
    add_compute_args(parser)


def main(args: argparse.Namespace) -> int:
    """Run the projection."""
    from cryospa.jobs.reproject import run_reproject  # torch: only when the command runs

    device = compute_from_args(args)
    result = run_reproject(
        args.map,
        args.i,
        args.o,
        ctf=args.ctf,
        pixel_size_angstrom=args.angpix,
        max_resolution_angstrom=args.maxres,
        padding_factor=args.pad,
        batch_size=args.batch,
        device=device,
        progress=show_progress(),
    )
    print(f"wrote {result.n_images} projections -> {result.stack} and {result.star}")
    return 0
