"""Benchmark: mask creation and post-processing, cryospa vs RELION 3.1 on the same half maps.

Not a test. Simulates particles from the shipped LDH model (``cryospa simulate --level
particles``, true angles and random half-sets in ``ground_truth/particles_true.star``),
reconstructs the two halves with ``relion_reconstruct`` and with ``cryospa reconstruct`` (CTF
corrected), makes a mask from the true map with ``relion_mask_create`` and ``cryospa mask``
(voxel agreement), then post-processes both pairs of half maps with ``relion_postprocess`` and
``cryospa postprocess`` (same mask, RELION's K2 MTF). Prints Markdown tables: wall time, peak
memory (max RSS of the command), resolution (FSC 0.143 of the mask-corrected FSC) and the
sharpening B-factor at RELION's default fit range (a single run, and the mean and range over
random seeds: the default fit reaches into the noise, so single runs scatter) and from 10 Å to
RELION's resolution (both fits end there, which compares the B-factors alone).
``--big 256`` also times both post-processors on the half maps padded to a 256 px box (the
size of real maps). Usage::

    python bench/bench_postprocess.py [--n 3000] [--box 96] [--angpix 1.5] [--snr 0.02]
        [--seeds 5] [--big 256] [--work DIR]
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
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _rows import add_json_option, row, side, write_rows  # noqa: E402
from _run import timed  # noqa: E402

from cryospa.io.mrc import read_mrc, write_mrc  # noqa: E402
from cryospa.io.mtf import read_mtf  # noqa: E402
from cryospa.io.star import read_star  # noqa: E402
from cryospa.jobs.postprocess import postprocess_half_maps  # noqa: E402
from cryospa.jobs.resize import window  # noqa: E402

MTF = REPO.parent / "shared" / "data" / "star" / "mtf" / "mtf_k2_300kV.star"
if not MTF.is_file():
    MTF = Path("/work/shared/data/star/mtf/mtf_k2_300kV.star")




def general(path: Path) -> dict[str, float]:
    g = read_star(path)["general"].iloc[0]
    return {"resolution": float(g["rlnFinalResolution"]),
            "bfactor": float(g["rlnBfactorUsedForSharpening"])}


def last_job_dir(project: Path, folder: str) -> Path:
    return sorted((project / folder).glob("job*"))[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--box", type=int, default=96)
    parser.add_argument("--angpix", type=float, default=1.5)
    parser.add_argument("--snr", type=float, default=0.02)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--big", type=int, default=256, help="also time at this box (0: no)")
    parser.add_argument("--mtf-angpix", type=float, default=0.75)
    parser.add_argument("--work", type=Path, default=None)
    add_json_option(parser)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_postprocess_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", flush=True)
    apix = args.angpix

    sim = work / "sim"
    if not (sim / "ground_truth" / "particles_true.star").is_file():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cryospa.cli.main", "simulate", "--level",
                        "particles", "--map", "builtin:ldh", "--n", str(args.n), "--box",
                        str(args.box), "--angpix", str(apix), "--snr", str(args.snr), "--seed",
                        "1", "--o", str(sim)], check=True, capture_output=True)
        print(f"simulated {args.n} particles in {time.perf_counter() - t:.0f} s", flush=True)
    # the project holds everything (RELION runs in it too: relative paths)
    proj = work / "P"
    if not (proj / "project.sqlite").is_file():
        subprocess.run([sys.executable, "-m", "cryospa.cli.main", "init", str(proj)], check=True,
                       capture_output=True)
        shutil.copytree(sim / "Particles", proj / "Particles")
        shutil.copy(sim / "ground_truth" / "particles_true.star", proj / "particles_true.star")
        shutil.copy(sim / "ground_truth" / "map_class001.mrc", proj / "truth.mrc")
        shutil.copy(MTF, proj / "mtf.star")
    rows_rec = []
    for folder in ("R", "C"):
        (proj / folder).mkdir(exist_ok=True)
    for k in (1, 2):
        out = f"R/run_half{k}_class001_unfil.mrc"
        if not (proj / out).is_file():
            w, m = timed(["relion_reconstruct", "--i", "particles_true.star", "--o", out,
                             "--ctf", "--subset", str(k)], proj)
            rows_rec.append(("relion_reconstruct", k, w, m))
        out = f"C/run_half{k}_class001_unfil.mrc"
        if not (proj / out).is_file():
            w, m = timed([sys.executable, "-m", "cryospa.cli.main", "reconstruct", "--i",
                             "particles_true.star", "--o", out, "--ctf", "--subset", str(k),
                             "--device", "cpu"], proj)
            rows_rec.append(("cryospa reconstruct", k, w, m))
    for name, k, w, m in rows_rec:
        print(f"{name} half {k}: {w:.1f} s, {m:.0f} MB", flush=True)

    # ---- masks -------------------------------------------------------------------------
    mask_args = {"lowpass": "15", "threshold": "0.5", "extend": "3", "soft": "6"}
    w_rm, m_rm = timed(["relion_mask_create", "--i", "truth.mrc", "--o", "mask.mrc",
                           "--lowpass", mask_args["lowpass"], "--ini_threshold",
                           mask_args["threshold"], "--extend_inimask", mask_args["extend"],
                           "--width_soft_edge", mask_args["soft"]], proj)
    cry = [sys.executable, "-m", "cryospa.cli.main"]
    if not any((proj / "Import").glob("job*")):
        subprocess.run([*cry, "import", "volume", "--map", "truth.mrc", "--alias", "truth"],
                       cwd=proj, check=True, capture_output=True)
    w_cm, m_cm = timed([*cry, "mask", "--volume", "truth", "--lowpass", mask_args["lowpass"],
                           "--threshold", mask_args["threshold"], "--extend",
                           mask_args["extend"], "--soft-edge", mask_args["soft"], "--device",
                           "cpu"], proj)
    ours_mask, _ = read_mrc(last_job_dir(proj, "MaskCreate") / "mask.mrc")
    relion_mask, _ = read_mrc(proj / "mask.mrc")
    diff = np.abs(ours_mask - relion_mask)
    flips = int(((ours_mask > 0.5) != (relion_mask > 0.5)).sum())
    print("\n| mask (96 px, low-pass 15 Å, extend 3, soft edge 6) | wall | peak RSS | agreement |")
    print("|---|---|---|---|")
    print(f"| relion_mask_create | {w_rm:.2f} s | {m_rm:.0f} MB | reference |")
    print(f"| cryospa mask (CLI, project job) | {w_cm:.2f} s | {m_cm:.0f} MB | max |diff| "
          f"{diff.max():.1e}, {flips} voxels on the other side of 0.5 |", flush=True)

    # ---- post-processing ---------------------------------------------------------------
    curve = read_mtf(proj / "mtf.star")
    mtf = (torch.from_numpy(curve.frequency_per_angstrom(args.mtf_angpix)),
           torch.from_numpy(curve.value))
    table = []
    for folder, label in (("R", "RELION's half maps"), ("C", "cryospa's half maps")):
        half1 = f"{folder}/run_half1_class001_unfil.mrc"
        res: dict[str, dict[str, Any]] = {}
        # RELION's default fit ends at its own resolution, ours at ours; one shell apart (the
        # phase randomisation is random) changes a short fit a lot. The second fit ends at
        # RELION's resolution for both, so it compares the B-factors alone.
        for key in ("0", "R"):  # default fit, then the fit to RELION's resolution
            highres = "0" if key == "0" else f"{res['relion0']['resolution']:.3f}"
            tag = f"PP{folder}{key}"
            (proj / tag).mkdir(exist_ok=True)
            w_r, m_r = timed(["relion_postprocess", "--i", half1, "--mask", "mask.mrc",
                                 "--auto_bfac", "--autob_lowres", "10", "--autob_highres",
                                 highres, "--mtf", "mtf.star", "--mtf_angpix",
                                 str(args.mtf_angpix), "--o", f"{tag}/postprocess"], proj)
            w_c, m_c = timed([*cry, "postprocess", "--half-maps", half1, "--mask",
                                 "mask.mrc", "--mtf", "mtf.star", "--original-angpix",
                                 str(args.mtf_angpix), "--autob-highres", highres,
                                 "--device", "cpu"], proj)
            res[f"relion{key}"] = {**general(proj / tag / "postprocess.star"),
                                   "wall": w_r, "rss": m_r}
            res[f"ours{key}"] = {
                **general(last_job_dir(proj, "PostProcess") / "postprocess.star"),
                "wall": w_c, "rss": m_c}
        # B at the default range over seeds (RELION --random_seed / our generator)
        h1, _ = read_mrc(proj / half1)
        h2, _ = read_mrc(proj / half1.replace("half1", "half2"))
        mk, _ = read_mrc(proj / "mask.mrc")
        b_r, b_c, t_c = [], [], []
        fixed_r, fixed_c = [], []  # fit from 10 Å to RELION's (single-run) resolution
        res_r: list[float] = []  # resolution per seed (the phase randomisation is random)
        res_c: list[float] = []
        fit_end = res["relion0"]["resolution"]
        (proj / "seeds").mkdir(exist_ok=True)
        for seed in range(1, args.seeds + 1):
            for highres, into in ((0.0, b_r), (fit_end, fixed_r)):
                subprocess.run(["relion_postprocess", "--i", half1, "--mask", "mask.mrc",
                                "--auto_bfac", "--autob_lowres", "10", "--autob_highres",
                                f"{highres:.3f}", "--mtf", "mtf.star", "--mtf_angpix",
                                str(args.mtf_angpix), "--random_seed", str(seed), "--o",
                                "seeds/postprocess"], cwd=proj, check=True, capture_output=True)
                into.append(general(proj / "seeds" / "postprocess.star")["bfactor"])
                if highres == 0.0:
                    res_r.append(general(proj / "seeds" / "postprocess.star")["resolution"])
            for highres, into in ((0.0, b_c), (round(fit_end, 3), fixed_c)):
                t = time.perf_counter()
                out = postprocess_half_maps(
                    torch.from_numpy(h1), torch.from_numpy(h2), torch.from_numpy(mk),
                    pixel_size_angstrom=apix, mtf=mtf, fit_max_resolution_angstrom=highres,
                    generator=torch.Generator().manual_seed(seed))
                if highres == 0.0:
                    t_c.append(time.perf_counter() - t)
                    res_c.append(out.resolution_angstrom)
                into.append(out.sharpened.bfactor_angstrom2)
        res["relionR"]["seeds"], res["oursR"]["seeds"] = fixed_r, fixed_c
        res["relion0"]["seeds"], res["ours0"]["seeds"] = res_r, res_c
        table.append((label, res, b_r, b_c, statistics.median(t_c)))
        print(f"{label}: done", flush=True)

    print(f"\n| post-processing ({args.box} px, {apix} Å/px, K2 MTF) | program | wall | "
          "peak RSS | resolution: one run; most frequent over seeds [range] | "
          "B (default fit) | B mean over seeds [range] | "
          "B (fit 10 Å to RELION's resolution): one run; mean over seeds [range] |")
    print("|---|---|---|---|---|---|---|---|")
    for label, res, b_r, b_c, t_c in table:
        for who, bs, name in (("relion", b_r, "relion_postprocess"),
                              ("ours", b_c, "cryospa postprocess")):
            r0, r6 = res[f"{who}0"], res[f"{who}R"]
            extra = f" (in-process {t_c:.2f} s)" if who == "ours" else ""
            print(f"| {label} | {name} | {r0['wall']:.2f} s{extra} | {r0['rss']:.0f} MB | "
                  f"{r0['resolution']:.2f} Å; {statistics.mode(round(v, 2) for v in r0['seeds'])}"
                  f" [{min(r0['seeds']):.2f}, {max(r0['seeds']):.2f}] Å | {r0['bfactor']:.1f} Å² | "
                  f"{statistics.mean(bs):.1f} [{min(bs):.0f}, {max(bs):.0f}] Å² | "
                  f"{r6['bfactor']:.1f} Å²; {statistics.mean(r6['seeds']):.1f} "
                  f"[{min(r6['seeds']):.0f}, {max(r6['seeds']):.0f}] Å² |")
    sys.stdout.flush()
    json_rows = [row("mask creation", f"{args.box} px map", side(
        w_cm, m_cm, f"{flips} voxels differ from RELION's at 0.5"), side(w_rm, m_rm, "reference"),
        relion_program="relion_mask_create", note="whole command")]
    for label, res, _, _, _ in table:
        fit_end = res["relion0"]["resolution"]

        def pp(r: dict[str, float], fit_end: float = fit_end) -> dict[str, object]:
            return side(r["wall"], r["rss"], f"{r['resolution']:.2f} Å, B {r['bfactor']:.0f} Å²"
                        f" (fit to {fit_end:.2f} Å, mean of seeds: {r['bfactor_fixed']:.0f} Å²)")

        for who in ("ours", "relion"):
            res[f"{who}0"]["bfactor_fixed"] = statistics.mean(res[f"{who}R"]["seeds"])
        json_rows.append(row(f"post-processing ({label})", f"{args.box} px, {apix} Å/px",
                             pp(res["ours0"]), pp(res["relion0"]),
                             relion_program="relion_postprocess", note="whole command"))
    write_rows(args.json, json_rows)

    # ---- a real-size box ---------------------------------------------------------------
    if args.big:
        big = args.big
        (proj / "B").mkdir(exist_ok=True)
        for name in ("R/run_half1_class001_unfil.mrc", "R/run_half2_class001_unfil.mrc",
                     "mask.mrc"):
            data, _ = read_mrc(proj / name)
            padded = window(torch.from_numpy(data), big).numpy()
            write_mrc(proj / "B" / Path(name).name, padded, voxel_size_angstrom=apix)
        (proj / "PPB").mkdir(exist_ok=True)
        w_r, m_r = timed(["relion_postprocess", "--i", "B/run_half1_class001_unfil.mrc",
                             "--mask", "B/mask.mrc", "--auto_bfac", "--mtf", "mtf.star",
                             "--mtf_angpix", str(args.mtf_angpix), "--o", "PPB/postprocess"],
                            proj)
        w_c, m_c = timed([*cry, "postprocess", "--half-maps",
                             "B/run_half1_class001_unfil.mrc", "--mask", "B/mask.mrc", "--mtf",
                             "mtf.star", "--original-angpix", str(args.mtf_angpix),
                             "--device", "cpu"], proj)
        gr = general(proj / "PPB" / "postprocess.star")
        gc = general(last_job_dir(proj, "PostProcess") / "postprocess.star")
        print(f"\n| post-processing, {big} px box (the half maps padded) | wall | peak RSS | "
              "resolution | B |")
        print("|---|---|---|---|---|")
        print(f"| relion_postprocess | {w_r:.1f} s | {m_r:.0f} MB | {gr['resolution']:.2f} Å | "
              f"{gr['bfactor']:.1f} Å² |")
        print(f"| cryospa postprocess | {w_c:.1f} s | {m_c:.0f} MB | {gc['resolution']:.2f} Å | "
              f"{gc['bfactor']:.1f} Å² |")
    print(f"\n(cryospa CLI walls include ~3-4 s of start-up: Python, torch and the job "
          f"registry; torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
