"""Benchmark: template picking on the realistic path, against LoG and ``relion_autopick --ref``.

Not a test. Simulates the tutorial's data set at the micrograph level (``cryospa simulate
--preset tutorial --level micrographs``: 12 micrographs of 1024 x 1024 px at 1.77 Å/px, 720 LDH
particles of ~92 Å and 84 junk objects: aggregates, broken particles, ice) or takes ``--sim
DIR``, and runs in a fresh project what a user runs::

    import micrographs -> ctffind -> pick log (80-110 Å, upper threshold 5)
      -> extract (box 128 -> 64, 3.54 Å/px) -> class2d (10 classes, 15 iterations, mask 130 Å)
      -> select --auto -> pick template (the kept class averages, default settings)

and ``relion_autopick --ref`` (RELION 3.1) with the same class averages, CTFs, angular step
(5°), low-pass (20 Å), shrink 0 and minimum distance. Prints, as Markdown tables, the wall
time and peak memory (max RSS) of each picking command, and precision / recall / F1 against the
true particles (a pick matches a particle within 0.2 particle diameters, one to one; picks on
junk count as false positives, "junk ignored" leaves them out), for LoG picking, our template
picking at its default threshold and a few others, and RELION at its default threshold (0.25),
0.8 and the best of a scan from 0.1 to 5 (RELION's figure-of-merit maps are written once and
re-read for each threshold). Usage::

    python bench/bench_pick_template.py [--sim DIR] [--threads 2] [--keep DIR]
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
from pathlib import Path

import pandas as pd
import torch
from _rows import add_json_option, row, side, write_rows  # type: ignore[import-not-found]

# bench/ is on sys.path when this file runs as a script
from bench_pick_log import accuracy, measured  # type: ignore[import-not-found]

from cryospa.io.coords import write_coordinates_star
from cryospa.io.star import read_star

#: RELION thresholds (fraction of the expected probability ratio) scanned on its FOM maps.
RELION_THRESHOLDS = (0.1, 0.25, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)
#: Our fixed thresholds (normalised cross-correlation, --no-auto-threshold) besides the default.
OUR_THRESHOLDS = (0.4, 0.45, 0.5, 0.55, 0.6)


def newest(proj: Path, folder: str) -> Path:
    """The last job folder of a type (``AutoPick/job007``)."""
    return sorted((proj / folder).glob("job*"))[-1]


def picks_of(job: Path, names: list[str]) -> dict[str, Path]:
    """True micrograph name -> the job's coordinate file."""
    return {n: job / "Micrographs" / (Path(n).stem + "_autopick.star") for n in names}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sim", default=None, help="a `cryospa simulate --level micrographs` "
                        "folder (default: simulate the tutorial's set)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it")
    parser.add_argument("--iterations", type=int, default=15, help="class2d iterations")
    parser.add_argument("--no-scan", action="store_true",
                        help="no threshold scans (only each program's default threshold)")
    add_json_option(parser)
    args = parser.parse_args()
    have_relion = shutil.which("relion_autopick") is not None
    if not have_relion:
        print("relion_autopick not found (apt-get install relion): RELION rows left out")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    torch.set_num_threads(args.threads)
    rows: list[tuple[str, str, float | None, float | None, dict[str, float]]] = []
    steps: list[tuple[str, float, float]] = []
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
        proj = work / "project"
        subprocess.run(["cryospa", "init", str(proj)], check=True, stdout=subprocess.DEVNULL)
        (proj / "Sim").symlink_to(sim / "Micrographs")

        def step(label: str, cmd: list[str]) -> tuple[float, float]:
            wall, mem = measured(cmd, proj, env)
            steps.append((label, wall, mem))
            print(f"{label}: {wall:.1f} s, {mem:.0f} MB", flush=True)
            return wall, mem

        step("import", ["cryospa", "import", "micrographs", "--micrographs", "Sim/*.mrc",
                        "--angpix", str(apix), "--kv", "200", "--cs", "1.4", "--q0", "0.1"])
        step("ctffind", ["cryospa", "ctffind", "--micrographs", "job001"])
        wall, mem = step("pick log", ["cryospa", "pick", "log", "--micrographs", "job002",
                                      "--diam-min", "80", "--diam-max", "110", "--plots", "0",
                                      "--device", "cpu"])
        rows.append(("cryospa pick log", "threshold 0, upper 5", wall, mem,
                     accuracy(sim, picks_of(newest(proj, "AutoPick"), names))))
        step("extract", ["cryospa", "extract", "--micrographs", "job002", "--coordinates",
                         "job003", "--box", "128", "--rescale", "64"])
        step("class2d", ["cryospa", "class2d", "--particles", "job004", "--classes", "10",
                         "--iterations", str(args.iterations), "--particle-diameter", "130",
                         "--threads",
                         str(args.threads), "--device", "cpu"])
        step("select --auto", ["cryospa", "select", "--classes-from", "job005", "--auto"])
        select = newest(proj, "Select")
        blocks = read_star(select / "class_averages.star")
        kept = blocks["particles"]
        ref_apix = float(blocks["optics"]["rlnImagePixelSize"].iloc[0])
        print(f"select kept classes {kept['rlnClassNumber'].tolist()}")
        wall, mem = step("pick template", ["cryospa", "pick", "template", "--micrographs",
                                           "job002", "--references", "job006", "--plots", "0",
                                           "--device", "cpu"])
        ours = newest(proj, "AutoPick")
        rows.append(("cryospa pick template", "default (each micrograph's split)", wall, mem,
                     accuracy(sim, picks_of(ours, names))))
        done = _item_results(proj, ours)
        min_dist = float(next(iter(done.values()))["diameter"])
        for t in () if args.no_scan else OUR_THRESHOLDS:
            cmd = ["cryospa", "pick", "template", "--micrographs", "job002", "--references",
                   "job006", "--plots", "0", "--device", "cpu", "--threshold", f"{t:g}",
                   "--no-auto-threshold"]
            measured(cmd, proj, env)
            rows.append(("cryospa pick template", f"fixed NCC {t:g}", None, None,
                         accuracy(sim, picks_of(newest(proj, "AutoPick"), names))))
        if have_relion:
            mics = "CtfFind/job002/micrographs_ctf.star"
            base = ["relion_autopick", "--i", mics, "--odir", "RelionRef/", "--pickname",
                    "autopick", "--ref", str((select / "class_averages.mrcs").relative_to(proj)),
                    "--angpix_ref", f"{ref_apix:g}",
                    "--invert", "--ctf", "--ang", "5", "--lowpass", "20", "--shrink", "0",
                    "--min_distance", f"{min_dist:.1f}"]
            wall, mem = measured([*base, "--threshold", "0.25", "--write_fom_maps"], proj, env)
            print(f"relion_autopick --ref: {wall:.1f} s, {mem:.0f} MB", flush=True)
            theirs = {n: proj / "RelionRef" / "Micrographs" / (Path(n).stem + "_autopick.star")
                      for n in names}
            scan = {}
            for t in (0.25,) if args.no_scan else RELION_THRESHOLDS:
                measured([*base, "--threshold", f"{t:g}", "--read_fom_maps"], proj, env)
                for path in theirs.values():  # RELION writes no data block when nothing is found
                    if "data_" not in path.read_text():
                        write_coordinates_star(path, pd.DataFrame(
                            {"rlnCoordinateX": [], "rlnCoordinateY": []}))
                scan[t] = accuracy(sim, theirs)
            rows.append(("RELION 3.1 autopick --ref", "default 0.25", wall, mem, scan[0.25]))
            if 0.8 in scan:
                rows.append(("RELION 3.1 autopick --ref", "0.8", None, None, scan[0.8]))
            best = max(scan, key=lambda t: scan[t]["F1"])
            rows.append(("RELION 3.1 autopick --ref", f"best of scan: {best:g}", None, None,
                         scan[best]))
            print("RELION threshold scan (F1): " + ", ".join(
                f"{t:g}: {s['F1']:.3f}" for t, s in scan.items()))
    n_mic = len(names)
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads; torch {torch.__version__}; Python {sys.version.split()[0]}")
    w, h = info["micrograph_size_px"]
    print(f"Data: {n_mic} micrographs {w} x {h} px at {apix} Å/px, {info['dose_e_per_a2']} "
          f"e/Å², {info['n_particles']} particles of {info['particle_diameter_angstrom']:.0f} Å "
          f"+ {info['n_junk']} junk; {len(kept)} class averages kept by select --auto; "
          f"minimum distance {min_dist:.0f} Å for both template pickers\n")
    print("| step | wall | peak memory |\n|---|---|---|")
    for label, wall, mem in steps:
        print(f"| {label} | {wall:.1f} s | {mem:.0f} MB |")
    print("\n| program | threshold | wall per micrograph | peak memory | picks | precision "
          "| recall | F1 (junk counts) | precision, F1 (junk ignored) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for prog, label, wall, mem, s in rows:
        wall_s = f"{wall / n_mic:.2f} s" if wall is not None else ""
        mem_s = f"{mem:.0f} MB" if mem is not None else ""
        print(f"| {prog} | {label} | {wall_s} | {mem_s} | {s['n']:.0f} | {s['P']:.3f} | "
              f"{s['R']:.3f} | {s['F1']:.3f} | {s['Pj']:.3f}, {s['F1j']:.3f} |")

    def figures(prog: str) -> dict[str, object] | None:
        mine = [r for r in rows if r[0] == prog]
        if not mine or mine[0][2] is None:
            return None
        _, label, wall, mem, acc = mine[0]  # the program's default threshold, timed
        best = max(mine, key=lambda r: r[4]["F1"])
        extra = f"; best {best[4]['F1']:.3f} at {best[1]}" if best is not mine[0] else ""
        return side(wall / n_mic, mem, f"F1 {acc['F1']:.3f} at {label}{extra}")

    ours = figures("cryospa pick template")
    if ours is not None:
        write_rows(args.json, [row(
            "template picking (averages of select --auto)", f"{n_mic} micrographs {w} x {h}",
            ours, figures("RELION 3.1 autopick --ref"), relion_program="relion_autopick --ref",
            note="per micrograph")])
    return 0


def _item_results(proj: Path, job: Path) -> dict[str, dict[str, object]]:
    """The per-micrograph results a job stored (for the diameters it used)."""
    from cryospa.project.project import Project

    project = Project.open(proj)
    record = next(j for j in project.jobs() if project.path(j.dir).resolve() == job.resolve())
    return project.item_results(record.id)


if __name__ == "__main__":
    raise SystemExit(main())
