"""Benchmark of the de novo initial model against the simulation's truth (not a test).

Simulates LDH particles (``cryospa simulate --level particles``, D2) unless ``--data`` points to
such a folder, runs ``cryospa initial-model`` (no reference) in a fresh project and prints the
wall time, peak memory (RSS of the job's process), the symmetry fit and the FSC 0.5 resolution
of ``initial_model.mrc`` against the true map after superposing it (rotation, shift and the
better hand: the model's frame and hand are arbitrary). With ``--relion`` it also runs RELION
3.1's stochastic-gradient initial model on the same particles
(``relion_refine --denovo_3dref --sgd --K 1 --sym C1``, same mask, sampling and
resolution limits) and scores its map the same way (RELION 3.1 has no ``--grad``/VDAM).

    python bench/bench_initial_model.py --n 1500 --box 64 --angpix 3.5 --snr 0.1 --relion
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import torch
from _rows import add_json_option, row, side, write_rows

from cryospa.core.fsc import fsc, resolution_at_threshold
from cryospa.core.symmetry_axes import align_to_symmetry_axes, superpose


def true_fsc(model: torch.Tensor, truth: torch.Tensor, apix: float, symmetry: str) -> float:
    """FSC 0.5 resolution (Å) of a model superposed on the truth (better hand)."""
    fit = superpose(model.double(), truth.double(), mirror=True, symmetry=symmetry)
    curve = fsc(fit.moved.float(), truth.float())
    return resolution_at_threshold(curve, box_size=truth.shape[-1], pixel_size_angstrom=apix,
                                   threshold=0.5)


def run_cryospa(args: argparse.Namespace, data: Path) -> tuple[Path, float, float]:
    project = args.out / "cryospa"
    if project.exists():
        shutil.rmtree(project)
    base = [sys.executable, "-m", "cryospa.cli.main"]
    subprocess.run([*base, "init", str(project)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*base, "import", "particles", "--particles", str(data / "particles.star")],
                   cwd=project, check=True, stdout=subprocess.DEVNULL)
    start = time.perf_counter()
    cmd = [*base, "initial-model", "--particles", "job001", "--particle-diameter",
           str(args.diameter), "--symmetry", args.sym, "--minibatches",
           str(args.minibatches), "--healpix-order", "1", "--offset-range",
           str(args.offset_range), "--offset-step", str(args.offset_step),
           "--ini-high", str(args.ini_high), "--threads", str(args.threads),
           "--device", "cpu"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(cmd, cwd=project, check=True)
    wall = time.perf_counter() - start
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
    return project / "InitialModel" / "job002", wall, peak


def run_relion(args: argparse.Namespace, data: Path) -> tuple[Path, float, float] | None:
    if shutil.which("relion_refine") is None:
        print("RELION absent: RELION side skipped (apt-get install relion)")
        return None
    out = args.out / "relion"
    out.mkdir(parents=True, exist_ok=True)
    n_iter = args.relion_epochs  # RELION 3.1's SGD iterations are passes over all particles
    ini = max(1, round(0.3 * n_iter))
    fin = max(1, round(0.2 * n_iter))
    cmd = ["relion_refine", "--o", str((out / "run").resolve()), "--i", "particles.star",
           "--denovo_3dref", "--sgd", "--K", "1", "--sym", "C1",
           "--particle_diameter", str(args.diameter), "--ctf", "--zero_mask",
           "--healpix_order", "1", "--offset_range", str(args.offset_range), "--offset_step",
           str(args.offset_step), "--sgd_ini_iter", str(ini), "--sgd_fin_iter", str(fin),
           "--sgd_inbetween_iter", str(max(1, n_iter - ini - fin)), "--sgd_ini_resol",
           str(args.ini_high), "--sgd_fin_resol", str(2.5 * args.angpix), "--tau2_fudge", "4",
           "--flatten_solvent", "--j", str(args.threads), "--pad", "2", "--oversampling", "1",
           "--dont_combine_weights_via_disc", "--random_seed", "0"]
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(cmd, cwd=data, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        print("relion_refine failed:", result.stderr[-2000:])
        return None
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
    maps = sorted(out.glob("run_it*_class001.mrc"))
    return maps[-1], wall, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=None, help="simulated particles folder")
    ap.add_argument("--out", type=Path, default=Path("bench_initial_model"))
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--angpix", type=float, default=3.5)
    ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--sym", default="D2")
    ap.add_argument("--diameter", type=float, default=180.0)
    ap.add_argument("--minibatches", type=int, default=50)
    ap.add_argument("--ini-high", type=float, default=30.0)
    ap.add_argument("--offset-range", type=float, default=3.0)
    ap.add_argument("--offset-step", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--relion", action="store_true", help="also run relion_refine --sgd")
    ap.add_argument("--relion-epochs", type=int, default=6,
                    help="RELION 3.1 SGD iterations (each a pass over all particles in "
                    "mini-batches of 100 to 500; about 5 min each for 1,500 x 64 px here)")
    ap.add_argument("--relion-only", action="store_true", help="skip the cryospa run")
    add_json_option(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out = args.out.resolve()
    data = (args.data or args.out / "sim").resolve()
    if not (data / "particles.star").exists():
        subprocess.run([sys.executable, "-m", "cryospa.cli.main", "simulate", "--level",
                        "particles", "--map", "builtin:ldh", "--n", str(args.n), "--box",
                        str(args.box), "--angpix", str(args.angpix), "--snr", str(args.snr),
                        "--sym", args.sym, "--o", str(data)], check=True)
    truth = torch.from_numpy(mrcfile.read(data / "ground_truth" / "map_class001.mrc").copy())
    ours = None
    if not args.relion_only:
        job, wall, peak = run_cryospa(args, data)
        model = torch.from_numpy(mrcfile.read(job / "initial_model.mrc").copy())
        res = true_fsc(model, truth, args.angpix, args.sym)
        fit = align_to_symmetry_axes(torch.from_numpy(mrcfile.read(job / "run_class001.mrc")
                                                      .copy()).double(), args.sym).fit
        print(f"cryospa initial-model: {wall:.0f} s, peak RSS {peak:.0f} MB, {args.sym} fit "
              f"{fit:.3f}, true-map FSC 0.5 {res:.1f} Å")
        ours = side(wall, peak, f"true-map FSC 0.5 {res:.1f} Å, {args.sym} fit {fit:.2f}")
    relion = None
    if args.relion:
        got = run_relion(args, data)
        if got is not None:
            path, r_wall, r_peak = got
            r_map = torch.from_numpy(mrcfile.read(path).copy())
            aligned = align_to_symmetry_axes(r_map.double(), args.sym)
            r_res = true_fsc(aligned.symmetrised.float(), truth, args.angpix, args.sym)
            print(f"relion_refine --sgd: {r_wall:.0f} s, peak RSS {r_peak:.0f} MB, {args.sym} "
                  f"fit {aligned.fit:.3f}, true-map FSC 0.5 {r_res:.1f} Å (after the same "
                  "symmetry alignment)")
            relion = side(r_wall, r_peak, f"true-map FSC 0.5 {r_res:.1f} Å, {args.sym} fit "
                          f"{aligned.fit:.2f}")
    if ours is None:
        return
    write_rows(args.json, [row(
        "de novo initial model", f"{args.n if args.data is None else 'given'} particles, "
        f"{args.box} px, {args.angpix:g} Å/px, {args.sym}, {args.minibatches} mini-batches",
        ours, relion,
        relion_program=f"relion_refine --denovo_3dref --sgd, {args.relion_epochs} SGD iterations",
        note="whole run incl. symmetry alignment; FSC after superposing, better hand")])


if __name__ == "__main__":
    main()
