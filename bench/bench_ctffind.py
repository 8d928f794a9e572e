"""Benchmark: CTF estimation, ``cryospa ctffind`` vs ASPIRE's CTF estimator (an independent one).

Not a test: prints wall time per micrograph, peak memory (max RSS of the process) and accuracy
for both estimators on the same micrographs, as a Markdown table. RELION has no CTF estimator
of its own (its CtfFind job runs CTFFIND4 or Gctf, neither installable here), so ASPIRE
(``aspire.ctf.estimate_ctf``: multitaper spectrum, linear-programming background, PCA
astigmatism, gradient refinement) is the second estimator. It is installed only for this
benchmark, in its own virtual environment (it must not pull a torch into ours)::

    python -m venv /tmp/aspire_venv && /tmp/aspire_venv/bin/pip install aspire
    python bench/bench_ctffind.py [--n 20] [--size 1024] [--threads 2] [--work DIR]
        (--aspire-python PATH: default /tmp/aspire_venv/bin/python)

Data: ``cryospa simulate --level micrographs`` (LDH, 1.77 Å/px, 200 kV, Cs 1.4 mm, the tutorial's
30.65 e/Å², mean defocus 5,000-30,000 Å, astigmatism up to 1,500 Å), accuracy = RMS error of
defocus U and V against the ground truth and the largest astigmatism-angle error where the true
astigmatism exceeds 500 Å; and the real micrograph ``fei-extended.mrc`` (300 kV, 0.854 Å/px,
Cs 2.7 mm assumed, AC 0.1), accuracy = the difference between the two estimators. Both use a
512 px spectrum box and the 30-5 Å range. ASPIRE's angle is turned into RELION's convention by
whichever of a few simple mappings fits the truth best (it is printed).
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _rows import add_json_option, row, side, write_rows  # noqa: E402
from _run import timed  # noqa: E402

from cryospa.io.star import read_relion_star  # noqa: E402

REAL = Path(os.environ.get("CRYOSPA_SHARED_DATA", "/work/shared/data")) / "micrographs"

ASPIRE_SCRIPT = """
import json, sys
from aspire.ctf import estimate_ctf
folder, apix, cs, ac, kv, out = sys.argv[1:7]
res = estimate_ctf(folder, pixel_size=float(apix), cs=float(cs), amplitude_contrast=float(ac),
                   voltage=float(kv), psd_size=512, g_min=30, g_max=5,
                   output_dir=out + ".d")
json.dump({k: {"u": float(v["defocus_u"]), "v": float(v["defocus_v"]),
               "angle": float(v["defocus_ang"])} for k, v in res.items()}, open(out, "w"))
"""

#: Candidate mappings of ASPIRE's astigmatism angle (radians) to RELION's (degrees).
ANGLE_MAPS = {
    "deg(a)": lambda a: np.degrees(a),
    "-deg(a)": lambda a: -np.degrees(a),
    "90 - deg(a)": lambda a: 90.0 - np.degrees(a),
    "deg(a) - 90": lambda a: np.degrees(a) - 90.0,
}


def angle_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a - b + 90.0) % 180.0 - 90.0)


def cryospa(args: list[str], cwd: Path, threads: int) -> tuple[float, float]:
    return timed([sys.executable, "-m", "cryospa", *args], cwd, threads)


def run_ours(folder: Path, pattern: str, optics: list[str], threads: int
             ) -> tuple[float, float, dict[str, tuple[float, float, float, float]]]:
    """Import + ctffind in a fresh project; (wall s, peak MB, name -> (dU, dV, angle, res))."""
    shutil.rmtree(folder, ignore_errors=True)  # a fresh project each run
    folder.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "cryospa", "init", str(folder)], check=True,
                   capture_output=True)
    cryospa(["import", "micrographs", "--micrographs", pattern, *optics], folder, threads)
    wall, rss = cryospa(["ctffind", "--micrographs", "job001", "--plots", "0"], folder, threads)
    table = read_relion_star(folder / "CtfFind" / "job002" / "micrographs_ctf.star").data
    out = {Path(n).name: (u, v, a, r) for n, u, v, a, r in zip(
        table["rlnMicrographName"], table["rlnDefocusU"], table["rlnDefocusV"],
        table["rlnDefocusAngle"], table["rlnCtfMaxResolution"], strict=True)}
    return wall, rss, out


def run_aspire(python: str, folder: Path, optics: tuple[float, float, float, float],
               work: Path, threads: int) -> tuple[float, float, dict[str, dict[str, float]]]:
    script = work / "aspire_ctf.py"
    script.write_text(ASPIRE_SCRIPT)
    out = work / f"aspire_{folder.name}.json"
    apix, cs, ac, kv = optics
    wall, rss = timed([python, str(script), str(folder), str(apix), str(cs), str(ac), str(kv),
                       str(out)], work, threads)
    return wall, rss, json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="simulated micrographs")
    parser.add_argument("--size", type=int, default=1024, help="micrograph size (px)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--aspire-python", default="/tmp/aspire_venv/bin/python")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--skip-real", action="store_true", help="only the simulated micrographs")
    add_json_option(parser)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_ctffind_"))
    work.mkdir(parents=True, exist_ok=True)
    have_aspire = Path(args.aspire_python).is_file()

    sim = work / "sim"
    if not (sim / "ground_truth").is_dir():
        subprocess.run([sys.executable, "-m", "cryospa", "simulate", "--level", "micrographs",
                        "--n_micrographs", str(args.n), "--mic_size", str(args.size),
                        "--particles_per_micrograph", "40", "--defocus", "5000", "30000",
                        "--astigmatism", "1500", "--seed", "1", "--o", str(sim)], check=True,
                       capture_output=True)
    truth = read_relion_star(sim / "ground_truth" / "micrographs_ctf.star").data
    truth.index = [Path(n).name for n in truth["rlnMicrographName"]]
    names = list(truth.index)
    t_u, t_v = truth["rlnDefocusU"].to_numpy(), truth["rlnDefocusV"].to_numpy()
    t_a = truth["rlnDefocusAngle"].to_numpy()
    astig = t_u - t_v > 500

    rows = []
    sim_optics = ["--angpix", "1.77", "--kv", "200", "--cs", "1.4", "--q0", "0.1"]
    wall, rss, ours = run_ours(work / "P_sim", str(sim / "Micrographs" / "*.mrc"), sim_optics,
                               args.threads)
    u = np.array([ours[n][0] for n in names])
    v = np.array([ours[n][1] for n in names])
    a = np.array([ours[n][2] for n in names])
    res = np.array([ours[n][3] for n in names])
    rms = float(np.sqrt(np.mean(np.concatenate([u - t_u, v - t_v]) ** 2)))
    rows.append(("cryospa ctffind", f"{args.n} x {args.size}^2 simulated", wall / args.n, rss,
                 f"defocus RMS error {rms:.0f} Å, max angle error "
                 f"{angle_error(a, t_a)[astig].max():.1f}° ({astig.sum()} with astig. > 500 Å), "
                 f"median fit resolution {np.median(res):.2f} Å"))
    if have_aspire:
        wall, rss, asp = run_aspire(args.aspire_python, sim / "Micrographs",
                                    (1.77, 1.4, 0.1, 200.0), work, args.threads)
        au = np.array([asp[n]["u"] for n in names])
        av = np.array([asp[n]["v"] for n in names])
        ang = np.array([asp[n]["angle"] for n in names])
        rms_a = float(np.sqrt(np.mean(np.concatenate([au - t_u, av - t_v]) ** 2)))
        best = min(ANGLE_MAPS, key=lambda k: float(np.median(
            angle_error(ANGLE_MAPS[k](ang), t_a)[astig])))
        err = angle_error(ANGLE_MAPS[best](ang), t_a)[astig]
        rows.append(("ASPIRE 0.14 estimate_ctf", f"{args.n} x {args.size}^2 simulated",
                     wall / args.n, rss,
                     f"defocus RMS error {rms_a:.0f} Å, max angle error {err.max():.1f}° "
                     f"(median {np.median(err):.1f}°; angle = {best})"))

    # --- the real micrograph
    real = work / "real"
    if args.skip_real or not (REAL / "fei-extended.mrc").is_file():
        _report(rows, args, have_aspire, work)
        return
    real.mkdir(exist_ok=True)
    link = real / "fei-extended.mrc"
    if not link.exists():
        link.symlink_to(REAL / "fei-extended.mrc")
    real_optics = ["--angpix", "0.8538", "--kv", "300", "--cs", "2.7", "--q0", "0.1"]
    wall, rss, ours_r = run_ours(work / "P_real", str(link), real_optics, args.threads)
    ru, rv, ra, rr = ours_r["fei-extended.mrc"]
    text = f"dU {ru:.0f}, dV {rv:.0f} Å, angle {ra:.1f}°, fit to {rr:.2f} Å"
    rows.append(("cryospa ctffind", "fei-extended.mrc (3710 x 3838)", wall, rss, text))
    if have_aspire:
        wall, rss, asp_r = run_aspire(args.aspire_python, real, (0.8538, 2.7, 0.1, 300.0), work,
                                      args.threads)
        e = asp_r["fei-extended.mrc"]
        diff = 0.5 * (ru + rv) - 0.5 * (e["u"] + e["v"])
        rows.append(("ASPIRE 0.14 estimate_ctf", "fei-extended.mrc (3710 x 3838)", wall, rss,
                     f"dU {e['u']:.0f}, dV {e['v']:.0f} Å; mean defocus cryospa - ASPIRE = "
                     f"{diff:+.0f} Å (dU {ru - e['u']:+.0f}, dV {rv - e['v']:+.0f})"))

    _report(rows, args, have_aspire, work)


def _report(rows: list[tuple[str, str, float, float, str]], args: argparse.Namespace,
            have_aspire: bool, work: Path) -> None:
    print(f"\nCTF estimation benchmark ({platform.node()}, {os.cpu_count()} cores, "
          f"{args.threads} threads; timings include start-up and reading)\n")
    print("| program | data | wall per micrograph (s) | peak RSS (MB) | accuracy |")
    print("|---|---|---|---|---|")
    for prog, data, w, m, acc in rows:
        print(f"| {prog} | {data} | {w:.2f} | {m:.0f} | {acc} |")
    if not have_aspire:
        print(f"\nASPIRE not found at {args.aspire_python}: see the module docstring.")
    print(f"\nwork folder: {work}")
    out = []
    for data in dict.fromkeys(r[1] for r in rows):
        by = {r[0]: r for r in rows if r[1] == data}
        ours, ref = by.get("cryospa ctffind"), by.get("ASPIRE 0.14 estimate_ctf")
        if ours is None:
            continue
        out.append(row("CTF estimation", data, side(ours[2], ours[3], ours[4]),
                       side(ref[2], ref[3], ref[4]) if ref else None,
                       relion_program="ASPIRE estimate_ctf (RELION runs CTFFIND4 / Gctf)",
                       note="per micrograph"))
    write_rows(args.json, out)


if __name__ == "__main__":
    main()
