"""Benchmark: ``cryospa pick log`` against ``relion_autopick --LoG`` on simulated micrographs.

Not a test. Simulates the tutorial's data set at the micrograph level (``cryospa simulate
--preset tutorial --level micrographs``: 12 micrographs of 1024 x 1024 px at 1.77 Å/px, 30.65
e/Å², 720 LDH particles of ~92 Å and 84 junk objects) or takes ``--sim DIR``, imports it into a
fresh project, and picks it with both programs with the same diameters, at RELION's default
thresholds (0, upper 999) and at the tutorial's (0, upper 5). Prints, as a Markdown table, the
wall time of each whole command per micrograph (cryospa's includes ~2-3 s of Python / torch
start-up), the time of cryospa's picking alone per micrograph (in-process, warm), the peak
memory (max RSS) of each command, and precision / recall / F1 against the true particles: a
pick matches a particle within 0.2 particle diameters (one to one); picks on junk (within one
diameter of a junk centre) count as false positives ("junk counts") or are left out ("junk
ignored"). Usage::

    python bench/bench_pick_log.py [--sim DIR] [--diam 80 110] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _rows import add_json_option, row, side, write_rows

from cryospa.core.picking import match_positions, pick_log
from cryospa.io.coords import read_coordinates
from cryospa.io.mrc import read_mrc
from cryospa.io.star import read_star

#: Runs a command and prints its own children's peak RSS (KiB) last, so that each measured
#: command gets a fresh maximum.
_MEASURE = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:]).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def measured(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd`` in ``cwd``; return (wall time in s, peak RSS in MB); fail loudly."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], cwd=cwd, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, int(proc.stderr.strip().splitlines()[-1]) / 1024


def accuracy(sim: Path, picks: dict[str, Path]) -> dict[str, float]:
    """Precision / recall / F1 (junk counted, junk left out) of picks per true micrograph name."""
    info = json.loads((sim / "ground_truth" / "simulation.json").read_text())
    diam_px = info["particle_diameter_angstrom"] / info["pixel_size_angstrom"]
    truth = read_star(sim / "ground_truth" / "particles_true.star")["particles"]
    junk = read_star(sim / "ground_truth" / "junk_true.star")["particles"]
    totals = np.zeros(4)  # picks, true particles, matches, picks on junk
    for name, path in picks.items():
        xy = torch.tensor(read_coordinates(path)[["rlnCoordinateX", "rlnCoordinateY"]]
                          .to_numpy(float)).reshape(-1, 2)
        sel = truth["rlnMicrographName"] == name
        true = torch.tensor(truth.loc[sel, ["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float))
        sel = junk["rlnMicrographName"] == name
        bad = torch.tensor(junk.loc[sel, ["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float))
        hit, _ = match_positions(xy, true, max_distance=0.2 * diam_px)
        missed = torch.ones(len(xy), dtype=torch.bool)
        missed[hit] = False
        on_junk = 0
        if bool(missed.any()) and len(bad):
            on_junk = int((torch.cdist(xy[missed], bad).min(dim=1).values < diam_px).sum())
        totals += (len(xy), len(true), len(hit), on_junk)
    n, m, k, j = totals
    p, r = k / max(n, 1), k / m
    pj = k / max(n - j, 1)
    return {"P": p, "R": r, "F1": 2 * p * r / max(p + r, 1e-12),
            "Pj": pj, "F1j": 2 * pj * r / max(pj + r, 1e-12), "n": n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim", default=None, help="a `cryospa simulate --level micrographs` "
                        "folder (default: simulate the tutorial's set)")
    parser.add_argument("--diam", nargs=2, type=float, default=(80.0, 110.0),
                        metavar=("MIN", "MAX"), help="LoG diameters in Å (default: 80 110, LDH)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default: 1; relion_autopick --LoG uses one)")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it")
    add_json_option(parser)
    args = parser.parse_args()
    if shutil.which("relion_autopick") is None:
        print("relion_autopick not found (apt-get install relion): RELION columns left empty")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    torch.set_num_threads(args.threads)
    lo, hi = args.diam
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        sim = Path(args.sim).resolve() if args.sim else work / "sim"
        if not args.sim:
            subprocess.run(["cryospa", "simulate", "--preset", "tutorial", "--level",
                            "micrographs", "--o", str(sim)], check=True, env=env,
                           stdout=subprocess.DEVNULL)
        info = json.loads((sim / "ground_truth" / "simulation.json").read_text())
        names = read_star(sim / "micrographs.star")["micrographs"]["rlnMicrographName"].tolist()
        apix = float(info["pixel_size_angstrom"])

        # in-process: the picking alone, warm (first micrograph once before timing)
        images = [torch.from_numpy(read_mrc(sim / n)[0]) for n in names]
        opts = {"pixel_size_angstrom": apix, "min_diameter_angstrom": lo,
                "max_diameter_angstrom": hi}
        pick_log(images[0], **opts)
        start = time.perf_counter()
        for image in images:
            pick_log(image, **opts)
        core_per_mic = (time.perf_counter() - start) / len(images)

        proj = work / "project"
        subprocess.run(["cryospa", "init", str(proj)], check=True, stdout=subprocess.DEVNULL)
        (proj / "Sim").symlink_to(sim / "Micrographs")
        subprocess.run(["cryospa", "import", "micrographs", "--micrographs", "Sim/*.mrc",
                        "--angpix", str(apix), "--kv", "200", "--cs", "1.4"], cwd=proj,
                       check=True, env=env, stdout=subprocess.DEVNULL)
        mic_star = "Import/job001/micrographs.star"
        rows = []
        for label, upper in (("RELION defaults (upper 999)", 999.0), ("tutorial (upper 5)", 5.0)):
            cmd = ["cryospa", "pick", "log", "--micrographs", "job001", "--diam-min", f"{lo:g}",
                   "--diam-max", f"{hi:g}", "--upper-threshold", f"{upper:g}", "--plots", "0",
                   "--device", "cpu"]
            wall, mem = measured(cmd, proj, env)
            job = sorted((proj / "AutoPick").glob("job*"))[-1]
            ours = accuracy(sim, {n: job / "Micrographs" / (Path(n).stem + "_autopick.star")
                                  for n in names})
            rows.append(("cryospa", label, wall, mem, ours))
            if shutil.which("relion_autopick"):
                odir = f"RelionLoG_{int(upper)}/"
                cmd = ["relion_autopick", "--i", mic_star, "--odir", odir, "--pickname",
                       "autopick", "--LoG", "--LoG_diam_min", f"{lo:g}", "--LoG_diam_max",
                       f"{hi:g}", "--shrink", "0", "--lowpass", "20",
                       "--LoG_upper_threshold", f"{upper:g}"]
                wall, mem = measured(cmd, proj, env)
                theirs = accuracy(sim, {n: proj / odir / "Micrographs" /
                                        (Path(n).stem + "_autopick.star") for n in names})
                rows.append(("RELION 3.1", label, wall, mem, theirs))
    n_mic = len(names)
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads; torch {torch.__version__}; Python {sys.version.split()[0]}")
    w, h = info["micrograph_size_px"]
    print(f"Data: {n_mic} micrographs {w} x {h} px at {apix} Å/px, {info['dose_e_per_a2']} "
          f"e/Å², {info['n_particles']} particles of {info['particle_diameter_angstrom']:.0f} Å "
          f"+ {info['n_junk']} junk; LoG {lo:g}-{hi:g} Å, max. resolution 20 Å, threshold 0")
    print(f"cryospa picking alone (in-process, warm): {core_per_mic * 1000:.0f} ms per "
          "micrograph\n")
    print("| program | thresholds | wall per micrograph | peak memory | picks | precision "
          "| recall | F1 (junk counts) | precision, F1 (junk ignored) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for prog, label, wall, mem, s in rows:
        print(f"| {prog} | {label} | {wall / n_mic:.2f} s | {mem:.0f} MB | {s['n']:.0f} | "
              f"{s['P']:.3f} | {s['R']:.3f} | {s['F1']:.3f} | {s['Pj']:.3f}, {s['F1j']:.3f} |")

    def figures(r: tuple) -> dict[str, object]:  # type: ignore[type-arg]
        s = r[4]
        return side(r[2] / n_mic, r[3], f"F1 {s['F1']:.3f} (P {s['P']:.2f}, R {s['R']:.2f})")

    write_rows(args.json, [
        row(f"LoG picking, {r[1]}", f"{n_mic} micrographs {w} x {h}", figures(r),
            next((figures(x) for x in rows if x[0] != "cryospa" and x[1] == r[1]), None),
            relion_program="relion_autopick --LoG", note="per micrograph")
        for r in rows if r[0] == "cryospa"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
