r"""Fourier shell correlation between two maps, and the resolution at FSC 0.143 and 0.5.

Prints the FSC per shell (shell index, 1/Å, Å, FSC) and the resolutions where the curve
first drops below 0.143 (gold-standard half maps) and 0.5 (map against a model), linearly
interpolated between shells. Both maps must have the same cubic box and pixel size.

Example:
  cryospa fsc run_half1_class001_unfil.mrc run_half2_class001_unfil.mrc --mask mask.mrc \\
      --o fsc.star --plot fsc.png
"""

from __future__ import annotations

import argparse


def add_args(parser: argparse.ArgumentParser) -> None:
    """Register the options."""
    parser.add_argument("map1", help="first map (.mrc)")
    parser.add_argument("map2", help="second map (.mrc)")
    parser.add_argument(
        "--mask",
        default=None,
        metavar="MRC",
        help="multiply both maps by this mask first (default: no mask)",
    )
    parser.add_argument(
        "--angpix",
        type=float,
        default=None,
        metavar="Å",
        help="pixel size in Å (default: from the map headers)",
    )
    parser.add_argument(
        "--o",
        default=None,
        metavar="STAR",
        help="write the curve as a RELION-style STAR file (data_fsc)",
    )
    parser.add_argument("--plot", default=None, metavar="PNG", help="write a picture of the curve")
    parser.add_argument("--quiet", action="store_true", help="print only the two resolutions")


def main(args: argparse.Namespace) -> int:
    """Compute, print and optionally save the FSC."""
    from cryospa.jobs.fsc import run_fsc  # torch: only when the command runs, not for --help

    r = run_fsc(
        args.map1,
        args.map2,
        mask=args.mask,
        pixel_size_angstrom=args.angpix,
        star_out=args.o,
        png_out=args.plot,
    )
    if not args.quiet:
        print(f"{'shell':>5} {'1/Å':>9} {'Å':>9} {'FSC':>8}")
        for row in r.table().itertuples(index=False):
            print(
                f"{row.rlnSpectralIndex:5d} {row.rlnResolution:9.5f} "
                f"{row.rlnAngstromResolution:9.2f} {row.rlnFourierShellCorrelation:8.4f}"
            )
    print(f"resolution at FSC 0.143: {r.resolution_0143:.2f} Å")
    print(f"resolution at FSC 0.5:   {r.resolution_05:.2f} Å")
    return 0
