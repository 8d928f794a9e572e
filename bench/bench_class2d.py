"""Benchmark: 2D classification, ``cryospa class2d`` vs ``relion_refine`` (RELION 3.1) 2D.

Not a test: simulates particles of two distinct molecules (the shipped LDH model and the real
beta-galactosidase map of shared/data, same box and pixel size), classifies them with both
programs with the same settings (classes, iterations, T = 2, mask diameter, in-plane step,
offset range and step, adaptive oversampling 1, CTF, zero mask) and the same threads, and prints
a Markdown table: wall time, time per iteration, peak memory (max RSS), purity (fraction of each
class's particles from its main molecule: the smallest over classes holding >= 1 % of the
particles, and the particle-weighted mean) and the resolution at which each class average
matches the true projections of its members (FRC 0.5; median over classes and the best class).
Usage::

    python bench/bench_class2d.py [--n 2000] [--classes 10] [--iterations 20] [--psi-step 6]
        [--threads 2] [--skip-relion] [--adaptive-check] [--work DIR]

``--vdam N`` adds a row for ``cryospa class2d --vdam --minibatches N`` on the same particles.
``--psi-step`` and ``--offset-step`` are the fine steps (as RELION's GUI); RELION is given
twice them with ``--oversampling 1``. ``--adaptive-check`` also runs one iteration from the
last-but-one checkpoint with and without adaptive oversampling and reports the speed-up and how
many particles get the same class, angle and translation.
"""

from __future__ import annotations

import argparse
import os

# before torch is imported: OpenMP threads that sleep while they wait (see cryospa/__init__.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _rows import add_json_option, row, side, write_rows  # noqa: E402
from _run import timed  # noqa: E402

from cryospa.engine import iterate, load_checkpoint  # noqa: E402
from cryospa.engine.em2d import Class2DOptions  # noqa: E402
from cryospa.io.mrc import read_mrc  # noqa: E402
from cryospa.io.star import read_relion_star  # noqa: E402
from cryospa.jobs.class2d import StarParticles  # noqa: E402
from cryospa.jobs.particles import load_particles  # noqa: E402
from cryospa.project.project import Project  # noqa: E402
from tests.jobs.test_class2d import class_purity, class_vs_truth_resolution  # noqa: E402

BETAGAL = REPO.parent / "shared" / "data" / "maps" / "betagal_relion1x_test" / "ref_model.mrc"
if not BETAGAL.is_file():
    BETAGAL = Path("/work/shared/data/maps/betagal_relion1x_test/ref_model.mrc")




def simulate(work: Path, args: argparse.Namespace) -> Path:
    sim = work / "sim"
    if (sim / "particles.star").is_file():
        return sim
    cmd = [sys.executable, "-m", "cryospa", "simulate", "--level", "particles",
           "--map", "builtin:ldh", "--map", str(BETAGAL), "--n", str(args.n),
           "--box", str(args.box), "--angpix", str(args.angpix), "--snr", str(args.snr),
           "--seed", str(args.seed), "--o", str(sim)]
    subprocess.run(cmd, check=True, capture_output=True)
    return sim


def quality(sim: Path, data: Path, classes: Path) -> dict[str, float]:
    assigned = read_relion_star(data, "particles").data["rlnClassNumber"].to_numpy()
    truth = read_relion_star(sim / "ground_truth" / "particles_true.star", "particles").data
    molecule = truth["rlnClassNumber"].to_numpy()
    purity = class_purity(assigned, molecule)
    big = [p for size, p in purity.values() if size >= 0.01 * assigned.size]
    weighted = sum(size * p for size, p in purity.values()) / assigned.size
    images, _ = read_mrc(classes)
    maps = [read_mrc(sim / "ground_truth" / f"map_class00{i}.mrc")[0] for i in (1, 2)]
    res = class_vs_truth_resolution(images, data, sim / "ground_truth" / "particles_true.star",
                                    maps, float(read_relion_star(data, "particles").optics[
                                        "rlnImagePixelSize"].iloc[0]), max_members=400)
    sizes = {c: s for c, (s, _) in purity.items()}
    top3 = sorted(sizes, key=lambda c: -sizes[c])[:3]
    return {
        "purity_min": min(big),
        "purity_weighted": weighted,
        "frc_median": statistics.median(res.values()),
        "frc_best": min(res.values()),
        "frc_top3": statistics.median(res[c] for c in top3),
        "classes_used": len(purity),
    }


def run_cryospa(
    sim: Path, work: Path, args: argparse.Namespace, minibatches: int = 0
) -> dict[str, float]:
    proj = work / ("cryospa" if not minibatches else "cryospa_vdam")
    if proj.exists():
        shutil.rmtree(proj)
    cry = [sys.executable, "-m", "cryospa"]
    subprocess.run([*cry, "init", str(proj)], check=True, capture_output=True)
    subprocess.run([*cry, "import", "particles", "--particles", str(sim / "particles.star")],
                   cwd=proj, check=True, capture_output=True)
    cmd = [*cry, "class2d", "--particles", "job001", "--classes", str(args.classes),
           "--iterations", str(args.iterations), "--particle-diameter", str(args.diameter),
           "--psi-step", str(args.psi_step), "--offset-range", str(args.offset_range),
           "--offset-step", str(args.offset_step), "--threads", str(args.threads),
           "--device", "cpu", "--seed", str(args.seed)]
    if minibatches:
        cmd = [c for i, c in enumerate(cmd) if c != "--iterations"
               and (i == 0 or cmd[i - 1] != "--iterations")]
        cmd += ["--vdam", "--minibatches", str(minibatches)]
    wall, rss = timed(cmd, proj, args.threads)
    job = proj / "Class2D" / "job002"
    last = f"run_it{(minibatches or args.iterations):03d}"
    out = {"wall": wall, "rss": rss, **quality(sim, job / f"{last}_data.star",
                                               job / f"{last}_classes.mrcs")}
    infos = [float(i["seconds_expectation"]) + float(i["seconds_maximisation"])
             for _, _, i in Project(proj).iterations(2)]
    out["per_iteration"] = statistics.median(infos[-5:])
    out["first_iterations"] = sum(infos[:3])
    return out


def run_relion(sim: Path, args: argparse.Namespace) -> dict[str, float]:
    out_dir = sim / "relion"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir()
    cmd = ["relion_refine", "--i", "particles.star", "--o", "relion/run", "--K",
           str(args.classes), "--iter", str(args.iterations), "--tau2_fudge", "2",
           "--particle_diameter", str(args.diameter), "--psi_step", str(2 * args.psi_step),
           "--offset_range", str(args.offset_range), "--offset_step", str(2 * args.offset_step),
           "--oversampling", "1", "--ctf", "--zero_mask", "--flatten_solvent", "--j",
           str(args.threads), "--dont_combine_weights_via_disc", "--pool", "30",
           "--random_seed", str(args.seed)]
    wall, rss = timed(cmd, sim, args.threads)
    last = f"run_it{args.iterations:03d}"
    return {"wall": wall, "rss": rss, "per_iteration": wall / args.iterations,
            **quality(sim, out_dir / f"{last}_data.star", out_dir / f"{last}_classes.mrcs")}


def adaptive_check(sim: Path, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """One iteration from the last-but-one checkpoint, adaptive vs exhaustive."""
    job = work / "cryospa" / "Class2D" / "job002"
    model, state, extra = load_checkpoint(job / f"run_it{args.iterations - 1:03d}_engine")
    opts = extra["options"]
    source = StarParticles(load_particles(sim / "particles.star"))
    torch.set_num_threads(args.threads)
    results = {}
    for adaptive in (True, False):
        options = Class2DOptions(**dict(opts, adaptive=adaptive))
        t = time.perf_counter()
        _, new, info = iterate(model, state, source, options, device=torch.device("cpu"))
        results[adaptive] = (time.perf_counter() - t, new, info)
    (t_a, a, info_a), (t_e, e, _) = results[True], results[False]
    same_class = (a.class_index == e.class_index).double().mean()
    same_pose = ((a.class_index == e.class_index) & (a.psi_degrees == e.psi_degrees)
                 & (a.offsets_px == e.offsets_px).all(1)).double().mean()
    return {"adaptive_s": t_a, "exhaustive_s": t_e, "speedup": t_e / t_a,
            "same_class": float(same_class), "same_pose": float(same_pose),
            "fine_poses": info_a["fine_poses_per_particle"],
            "fine_poses_all": info_a["fine_poses_exhaustive"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--box", type=int, default=64)
    parser.add_argument("--angpix", type=float, default=3.54)
    parser.add_argument("--snr", type=float, default=0.05)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--diameter", type=float, default=200.0)
    parser.add_argument("--psi-step", type=float, default=6.0)
    parser.add_argument("--offset-range", type=float, default=5.0)
    parser.add_argument("--offset-step", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-relion", action="store_true")
    parser.add_argument("--adaptive-check", action="store_true")
    parser.add_argument("--adaptive-check-only", action="store_true",
                        help="only the adaptive check, on the cryospa run of --work")
    parser.add_argument("--vdam", type=int, default=0, metavar="MINIBATCHES",
                        help="also run cryospa with --vdam --minibatches MINIBATCHES")
    parser.add_argument("--work", type=Path, default=None, help="work folder (kept)")
    add_json_option(parser)
    args = parser.parse_args()
    if not args.skip_relion and shutil.which("relion_refine") is None:
        sys.exit("RELION is not installed (apt-get install relion): use --skip-relion")
    work = args.work or Path(tempfile.mkdtemp(prefix="cryospa-bench-class2d-"))
    work.mkdir(parents=True, exist_ok=True)
    sim = simulate(work, args)
    if args.adaptive_check_only:
        _print_adaptive(adaptive_check(sim, work, args))
        return
    rows = {"cryospa": run_cryospa(sim, work, args)}
    if args.vdam:
        rows[f"cryospa --vdam ({args.vdam} mini-batches)"] = run_cryospa(sim, work, args,
                                                                       args.vdam)
    if not args.skip_relion:
        rows["RELION 3.1"] = run_relion(sim, args)
    data = (f"{args.n} x {args.box} px, {args.angpix} Å/px, SNR {args.snr}, K={args.classes}, "
            f"{args.iterations} it, psi {args.psi_step}°, {args.threads} threads")
    print(f"\n2D classification, {data} (two molecules: LDH + beta-gal)\n")
    print("| program | wall s | s / iteration (last 5) | peak RSS MB | purity min / weighted "
          "| class vs truth FRC0.5 Å: median / top-3 / best |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['wall']:.0f} | {r['per_iteration']:.1f} | {r['rss']:.0f} | "
              f"{r['purity_min']:.3f} / {r['purity_weighted']:.3f} | {r['frc_median']:.1f} / "
              f"{r['frc_top3']:.1f} / {r['frc_best']:.1f} |")

    def figures(r: dict[str, float] | None) -> dict[str, object] | None:
        if r is None:
            return None
        return side(r["wall"], r["rss"], f"purity {r['purity_min']:.3f}, class vs truth FRC "
                    f"{r['frc_median']:.1f} Å (median)")

    write_rows(args.json, [
        row("2D classification" + (" (VDAM)" if "vdam" in name else ""), data,
            figures(r), figures(rows.get("RELION 3.1")) if "vdam" not in name else None,
            relion_program="relion_refine 2D", note="whole run")
        for name, r in rows.items() if name.startswith("cryospa")])
    if args.adaptive_check:
        _print_adaptive(adaptive_check(sim, work, args))
    print(f"\nwork folder: {work}")


def _print_adaptive(a: dict[str, float]) -> None:
    print(f"\nadaptive vs exhaustive, one iteration: {a['adaptive_s']:.1f} s vs "
          f"{a['exhaustive_s']:.1f} s (x{a['speedup']:.1f}); fine poses per particle "
          f"{a['fine_poses']:.0f} of {a['fine_poses_all']}; same class "
          f"{100 * a['same_class']:.1f} %, same class, psi and offset "
          f"{100 * a['same_pose']:.1f} %")


if __name__ == "__main__":
    main()
