"""Benchmark of 3D auto-refinement against the simulation's truth (not a test).

Simulates particles from the shipped LDH model (``cryospa simulate --level particles``) unless
``--data`` points to such a folder, runs the refine3d engine from the true map (low-passed to
``--ini-high`` by the engine) and prints per iteration: wall time, HEALPix order, resolution of
the half maps (FSC 0.143), <Pmax>, posterior spread, median angular error against the truth
(symmetry mates equal) and offset error; at the end the true-map FSC 0.5 of the joined map and
the peak memory. The RELION side (``mpirun -n 3 relion_refine_mpi --auto_refine``, see
../shared/design/RELION-NOTES.md) is still to be added.

    python bench/bench_refine3d.py --n 2000 --box 64 --angpix 3 --sym D2 --diameter 150
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
import torch
from _rows import add_json_option, row, side, write_rows

from cryospa.core.fsc import fsc, resolution_at_threshold
from cryospa.core.rotations import angular_distance_degrees, euler_to_matrix
from cryospa.core.symmetry import symmetry_operators
from cryospa.engine.em3d import Refine3DOptions, initialise_3d, iterate_3d, update_schedule
from cryospa.io.star import read_relion_star
from cryospa.jobs.class2d import StarParticles
from cryospa.jobs.particles import load_particles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=None, help="simulated particles folder")
    ap.add_argument("--out", type=Path, default=Path("bench_refine3d"))
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--angpix", type=float, default=3.0)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--sym", default="D2")
    ap.add_argument("--diameter", type=float, default=150.0)
    ap.add_argument("--ini-high", type=float, default=40.0)
    ap.add_argument("--max-iterations", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    add_json_option(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data or args.out / "sim"
    if not (data / "particles.star").exists():
        subprocess.run([sys.executable, "-m", "cryospa.cli.main", "simulate", "--level",
                        "particles", "--map", "builtin:ldh", "--n", str(args.n), "--box",
                        str(args.box), "--angpix", str(args.angpix), "--snr", str(args.snr),
                        "--sym", args.sym, "--o", str(data)], check=True)
    particles = load_particles(data / "particles.star")
    source = StarParticles(particles)
    truth = read_relion_star(data / "ground_truth" / "particles_true.star", "particles").data
    apix = source.pixel_size_angstrom
    true_euler = torch.tensor(truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(
        dtype=np.float64))
    true_origin = torch.tensor(truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(
        dtype=np.float64)) / apix
    true_map = torch.from_numpy(mrcfile.read(data / "ground_truth" / "map_class001.mrc")
                                .copy()).float()
    ops = symmetry_operators(args.sym)
    ops = ops[torch.linalg.det(ops) > 0]
    b = euler_to_matrix(true_euler)

    def angle_errors(euler: torch.Tensor) -> torch.Tensor:
        a = euler_to_matrix(euler)
        return torch.stack([angular_distance_degrees(a, b @ o) for o in ops]).min(0).values

    half = torch.tensor(particles.rows["rlnRandomSubset"].to_numpy(dtype=np.int64) - 1)
    options = Refine3DOptions(particle_diameter_angstrom=args.diameter, symmetry=args.sym,
                              ini_high_angstrom=args.ini_high,
                              max_iterations=args.max_iterations)
    device = torch.device("cpu")
    start = time.perf_counter()
    model, state = initialise_3d(source, true_map, particles.origins_px(), half, options,
                                 device=device)
    info: dict = {}
    while not model.finished:
        t = time.perf_counter()
        model, state, info = iterate_3d(model, state, source, options, device=device)
        model = update_schedule(model, options)
        err = angle_errors(state.euler_degrees)
        off = (state.offsets_px - true_origin).norm(dim=1)
        print(f"iteration {model.iteration:2d}: {time.perf_counter() - t:6.1f} s, order "
              f"{info['healpix_order']}{' local' if info['local_search'] else ''}, "
              f"{info['resolution_angstrom'][0]:.2f} Å, <Pmax> {info['average_pmax']:.3f}, "
              f"spread {info['angular_spread_degrees']:.1f}°, median angle error "
              f"{float(err.median()):.2f}°, median offset error {float(off.median()):.2f} px",
              flush=True)
    wall = time.perf_counter() - start
    final = info.get("combined", model.references[0, 0])
    curve = fsc(final, true_map)
    true_res = resolution_at_threshold(curve, box_size=true_map.shape[-1],
                                       pixel_size_angstrom=apix, threshold=0.5)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"cryospa: {wall:.0f} s, {model.iteration} iterations, gold-standard "
          f"{float(model.resolution_angstrom[0]):.2f} Å, true-map FSC 0.5 {true_res:.2f} Å, "
          f"median angle error {float(angle_errors(state.euler_degrees).median()):.2f}°, "
          f"peak RSS {peak:.0f} MB")
    write_rows(args.json, [row(
        "3D auto-refine (from the true map)", f"{len(source)} x {args.box} px, "
        f"{apix:g} Å/px, {args.sym}",
        side(wall, peak, f"{float(model.resolution_angstrom[0]):.2f} Å, true-map FSC 0.5 "
             f"{true_res:.2f} Å"), None, relion_program="relion_refine --auto_refine (not yet "
        "compared)", note="whole run, in-process")])


if __name__ == "__main__":
    main()
