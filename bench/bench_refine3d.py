"""Benchmark of 3D auto-refinement against the simulation's truth, cryospa vs RELION (not a test).

Simulates particles from the shipped LDH model (``cryospa simulate --level particles``) unless
``--data`` points to such a folder. With ``--projector relion`` the images are instead made by
``relion_project --ctf`` from the simulation's true map, angles, origins and defocus, plus white
Gaussian noise of variance ``var(signal) / --snr`` (RELION's own forward model, as in
../shared/design/RELION-NOTES.md; ``relion_project --add_noise`` is not reproducible).

Runs the refine3d engine from the true map (low-passed to ``--ini-high`` by the engine) and
prints per iteration: wall time, HEALPix order, resolution of the half maps (FSC 0.143),
<Pmax>, posterior spread, median angular error against the truth (symmetry mates equal) and
offset error; at the end the true-map FSC 0.5 of the joined map and the peak memory. Then, when
RELION is installed (``--no-relion`` skips it), ``mpirun -n 3 relion_refine_mpi --auto_refine``
with the same sampling, offsets, mask diameter and initial low-pass, from the same map: its wall
time, peak memory (sum over the three processes), iterations, gold-standard resolution,
true-map FSC 0.5 and median angular error, measured the same way.

    python bench/bench_refine3d.py --n 5000 --box 64 --angpix 3 --snr 0.05 --sym D2 \
        --projector relion --healpix-order 2 --local-order 3
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import torch
from _rows import add_json_option, row, side, write_rows
from _run import relion_env

from cryospa.core.fsc import fsc, resolution_at_threshold
from cryospa.core.rotations import angular_distance_degrees, euler_to_matrix
from cryospa.core.symmetry import symmetry_operators
from cryospa.engine.em3d import Refine3DOptions, initialise_3d, iterate_3d, update_schedule
from cryospa.io.mrc import read_mrc, write_mrc
from cryospa.io.star import read_relion_star, read_star, write_star
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
    ap.add_argument("--healpix-order", type=int, default=2,
                    help="first HEALPix order (2: 15° coarse) for both programs")
    ap.add_argument("--local-order", type=int, default=3,
                    help="order from which both search locally (RELION --auto_local_healpix_order)")
    ap.add_argument("--offset-range", type=float, default=5.0, help="px")
    ap.add_argument("--offset-step", type=float, default=1.0, help="px")
    ap.add_argument("--projector", choices=("cryospa", "relion"), default="cryospa",
                    help="who makes the particle images (see the module docstring)")
    ap.add_argument("--no-relion", action="store_true", help="skip the RELION run")
    ap.add_argument("--no-ours", action="store_true", help="skip the cryospa run")
    add_json_option(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data or args.out / "sim"
    if not (data / "particles.star").exists():
        subprocess.run([sys.executable, "-m", "cryospa.cli.main", "simulate", "--level",
                        "particles", "--map", "builtin:ldh", "--n", str(args.n), "--box",
                        str(args.box), "--angpix", str(args.angpix), "--snr", str(args.snr),
                        "--sym", args.sym, "--o", str(data)], check=True)
    if args.projector == "relion":
        data = relion_projected(data, args.out / "relion_projected", snr=args.snr, seed=1)
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
                              max_iterations=args.max_iterations,
                              healpix_order=args.healpix_order, auto_local_order=args.local_order,
                              offset_range_px=args.offset_range, offset_step_px=args.offset_step)
    data_text = (f"{len(source)} x {args.box} px, {apix:g} Å/px, SNR {args.snr:g}, {args.sym}"
                 f"{', relion_project' if args.projector == 'relion' else ''}")
    relion_side = None
    if not args.no_relion and shutil.which("relion_refine_mpi") and shutil.which("mpirun"):
        relion_side = run_relion(data, args, true_map, apix, angle_errors)
    elif not args.no_relion:
        print("RELION (relion_refine_mpi, mpirun) not found: its side is skipped")
    if args.no_ours:
        write_rows(args.json, [row("3D auto-refine (from the true map)", data_text,
                                   side(0.0, None, "not run"), relion_side,
                                   relion_program="relion_refine_mpi --auto_refine")])
        return
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
    median = float(angle_errors(state.euler_degrees).median())
    gold = float(model.resolution_angstrom[0])
    print(f"cryospa: {wall:.0f} s, {model.iteration} iterations, gold-standard "
          f"{gold:.2f} Å, true-map FSC 0.5 {true_res:.2f} Å, median angle error {median:.2f}°, "
          f"peak RSS {peak:.0f} MB")
    if relion_side is not None:
        print(f"RELION:  {relion_side['wall_s']:.0f} s, {relion_side['accuracy']}, peak RSS "
              f"{relion_side['peak_mb']:.0f} MB (3 processes)")
    write_rows(args.json, [row(
        "3D auto-refine (from the true map)", data_text,
        side(wall, peak, f"{gold:.2f} Å, true-map FSC 0.5 {true_res:.2f} Å, median error "
             f"{median:.2f}°, {model.iteration} it"), relion_side,
        relion_program="relion_refine_mpi --auto_refine", note="whole run; ours in-process")])


def relion_projected(sim: Path, out: Path, *, snr: float, seed: int) -> Path:
    """Particles made by ``relion_project --ctf`` from the simulation's truth, plus white noise.

    Returns a folder laid out as a simulation (``particles.star``, ``ground_truth/``).
    """
    if (out / "particles.star").exists():
        return out
    if shutil.which("relion_project") is None:
        sys.exit("--projector relion needs relion_project (apt-get install relion)")
    (out / "ground_truth").mkdir(parents=True, exist_ok=True)
    shutil.copy(sim / "ground_truth" / "map_class001.mrc", out / "ground_truth")
    shutil.copy(sim / "ground_truth" / "particles_true.star", out / "truth_in.star")
    subprocess.run(["relion_project", "--i", "ground_truth/map_class001.mrc", "--ang",
                    "truth_in.star", "--o", "clean", "--ctf"], cwd=out, check=True,
                   stdout=subprocess.DEVNULL)
    clean, header = read_mrc(out / "clean.mrcs")
    rng = np.random.default_rng(seed)
    sigma = float(np.sqrt(clean.var() / snr))
    noisy = (clean + rng.normal(0.0, sigma, clean.shape)).astype(np.float32)
    write_mrc(out / "particles.mrcs", noisy, voxel_size_angstrom=header.voxel_size_angstrom[0])
    (out / "clean.mrcs").unlink()
    tables = read_star(out / "truth_in.star")
    parts = tables["particles"].copy()
    parts["rlnImageName"] = [f"{i + 1:06d}@particles.mrcs" for i in range(len(parts))]
    write_star(out / "ground_truth" / "particles_true.star",
               {"optics": tables["optics"], "particles": parts})
    hidden = parts.drop(columns=[c for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                                             "rlnOriginXAngst", "rlnOriginYAngst",
                                             "rlnClassNumber") if c in parts])
    write_star(out / "particles.star", {"optics": tables["optics"], "particles": hidden})
    print(f"relion_project: {len(parts)} particles, white noise sigma {sigma:.4g} (SNR {snr:g})")
    return out


def _tree_rss_mb(pid: int) -> float:
    """Summed resident memory (MB) of ``pid`` and its descendants (Linux /proc)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += float(line.split()[1]) / 1024
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return total


def run_relion(data: Path, args: argparse.Namespace, true_map: torch.Tensor, apix: float,
               angle_errors) -> dict:
    """``relion_refine_mpi --auto_refine`` on the same particles; its side of the row."""
    work = data / "relion_refine"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    write_mrc(data / "reference.mrc", true_map.numpy(), voxel_size_angstrom=apix)
    env = dict(relion_env(), OMPI_MCA_rmaps_base_oversubscribe="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none")
    cmd = ["mpirun", "-n", "3", "relion_refine_mpi", "--i", "particles.star", "--ref",
           "reference.mrc", "--ini_high", str(args.ini_high), "--sym", args.sym,
           "--healpix_order", str(args.healpix_order), "--auto_local_healpix_order",
           str(args.local_order), "--offset_range", str(args.offset_range), "--offset_step",
           str(args.offset_step), "--auto_refine", "--split_random_halves", "--ctf",
           "--particle_diameter", str(args.diameter), "--zero_mask", "--flatten_solvent",
           "--pad", "2", "--j", "1", "--low_resol_join_halves", "40", "--norm", "--scale",
           "--firstiter_cc", "--o", "relion_refine/run"]
    print("RELION:", " ".join(cmd), flush=True)
    peak = [0.0]
    start = time.perf_counter()
    with open(work / "stdout.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=data, env=env, stdout=log, stderr=subprocess.STDOUT)

        def poll() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
                time.sleep(1.0)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        proc.wait()
        watcher.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"relion_refine_mpi failed (exit {proc.returncode}); see {work / 'stdout.txt'}")
    iterations = len(list(work.glob("run_it*_data.star"))) - 1  # it000 is the start
    final = read_relion_star(work / "run_data.star", "particles").data
    euler = torch.tensor(final[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(
        dtype=np.float64))
    model = read_star(work / "run_model.star")["model_general"]
    gold = float(model["rlnCurrentResolution"].iloc[0])
    refined = torch.from_numpy(read_mrc(work / "run_class001.mrc")[0].copy()).float()
    true_res = resolution_at_threshold(fsc(refined, true_map), box_size=true_map.shape[-1],
                                       pixel_size_angstrom=apix, threshold=0.5)
    median = float(angle_errors(euler).median())
    print(f"RELION: {wall:.0f} s, {iterations} iterations, gold-standard {gold:.2f} Å, "
          f"true-map FSC 0.5 {true_res:.2f} Å, median angle error {median:.2f}°", flush=True)
    return side(wall, peak[0], f"{gold:.2f} Å, true-map FSC 0.5 {true_res:.2f} Å, median error "
                f"{median:.2f}°, {iterations} it")


if __name__ == "__main__":
    main()
