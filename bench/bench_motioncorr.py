"""Benchmark: ``cryospa motioncorr`` against ``relion_run_motioncorr --use_own`` (RELION 3.1).

Not a test. Simulates tutorial-like movies (``cryospa simulate --preset tutorial``: 1024 x
1024 px x 24 frames, 1.77 Å/px, 1.277 e/Å² per frame, 200 kV, true motion recorded), then
corrects them four ways, each in its own process:

* cryospa, global alignment only (``--patches_x 1 --patches_y 1``);
* cryospa, 5 x 5 patches (the default);
* RELION's own CPU implementation, global (``--patch_x 1 --patch_y 1``);
* RELION, 5 x 5 patches (``--patch_x 5 --patch_y 5``);

all with gain, defect file, dose weighting (and the non-dose-weighted sum), B-factor 150, on
``--threads`` threads, and prints wall time per movie, peak memory (max RSS of the process, and
as a multiple of the float32 movie), the RMS error of the per-frame global shifts against the
truth (after removing a constant offset per movie, in movie pixels) and, for patch runs, the
RMS error of the total (global + local) shift at the 5 x 5 patch centres against the true
polynomial motion. ``--big`` does the same on a detector-sized movie (4096 x 4096 px x 40
frames, as K2 / K3 counting movies; simulated, or ``--data``). Usage::

    python bench/bench_motioncorr.py [--n_movies 2] [--threads 2] [--data SIM_FOLDER]
                                     [--big] [--skip-relion] [--skip-patches]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _rows import add_json_option, row, side, write_rows
from _run import relion_env

from cryospa.core.motion import polynomial_shift
from cryospa.io.star import read_star

SHIFTS = ["rlnMicrographShiftX", "rlnMicrographShiftY"]
#: ``--big``: a K2 / K3-sized movie (4096 x 4096 px, 40 frames; 2.7 GB as float32)
BIG_SIZE, BIG_FRAMES = 4096, 40


@dataclass
class Run:
    program: str
    mode: str
    wall_s: float
    peak_mb: float
    n_movies: int
    global_rms: float
    local_rms: float | None


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd``; its wall time (s) and peak RSS (MB), from the child's own rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def _errors(motion_dir: Path, truth_dir: Path, names: list[str]) -> tuple[float, float | None]:
    """Mean over movies of the global RMS error and (with a local model) the patch-centre one."""
    global_errors, local_errors = [], []
    for name in names:
        ours = read_star(motion_dir / f"{name}.star")
        true = read_star(truth_dir / f"{name}.star")
        g_ours = ours["global_shift"][SHIFTS].to_numpy(float)
        g_true = true["global_shift"][SHIFTS].to_numpy(float)
        diff = g_ours - g_true
        diff -= diff.mean(axis=0)
        global_errors.append(float(np.sqrt(np.mean(np.sum(diff**2, axis=1)))))
        if "local_motion_model" not in ours:
            continue
        general = ours["general"].iloc[0]
        w, h = int(general["rlnImageSizeX"]), int(general["rlnImageSizeY"])
        n_frames = len(g_true)
        c_ours = ours["local_motion_model"]["rlnMotionModelCoeff"].to_numpy(float)
        c_true = true["local_motion_model"]["rlnMotionModelCoeff"].to_numpy(float)
        xs, ys = np.meshgrid((np.arange(5) + 0.5) * w / 5, (np.arange(5) + 0.5) * h / 5)
        z = np.arange(n_frames)[:, None, None]
        totals = []
        for c, g in ((c_ours, g_ours), (c_true, g_true)):
            lx, ly = polynomial_shift(c[:18], c[18:], z, xs, ys, (h, w))
            totals.append(np.stack([lx + g[:, 0, None, None], ly + g[:, 1, None, None]], -1))
        d = (totals[0] - totals[1]).reshape(n_frames, -1, 2)
        d -= d.mean(axis=0, keepdims=True)
        local_errors.append(float(np.sqrt(np.mean(np.sum(d**2, axis=-1)))))
    return float(np.mean(global_errors)), (float(np.mean(local_errors)) if local_errors else None)


def _simulate(out: Path, args: argparse.Namespace, env: dict[str, str]) -> None:
    cmd = ["cryospa", "simulate", "--preset", "tutorial", "--n_micrographs", str(args.n_movies),
           "--o", str(out), "--j", str(args.threads)]
    if args.big:
        cmd += ["--mic_size", str(BIG_SIZE), "--n_frames", str(BIG_FRAMES)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)


def _bench(sim: Path, tmp: Path, args: argparse.Namespace, env: dict[str, str]) -> list[Run]:
    """Correct the movies of ``sim`` with cryospa (and RELION); one :class:`Run` per mode."""
    import json

    runs: list[Run] = []
    truth = sim / "ground_truth/motion"
    names = sorted(p.stem for p in truth.glob("*.star"))
    n = len(names)
    params = json.loads((sim / "ground_truth/simulation.json").read_text())
    apix = params["pixel_size_angstrom"]
    kv = params["microscope"]["voltage_kv"]
    dose = params["dose_per_frame_e_per_a2"]

    # cryospa: one project, import once, then each mode as its own job (own process)
    project = tmp / "P"
    subprocess.run(["cryospa", "init", str(project)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    (project / "Raw").symlink_to(sim)
    subprocess.run(["cryospa", "import", "movies", "--movies", "Raw/Movies/*.tiff",
                    "--angpix", str(apix), "--kv", str(kv), "--cs",
                    str(params["microscope"]["cs_mm"]), "--q0",
                    str(params["microscope"]["amplitude_contrast"]), "--dose-per-frame",
                    str(dose), "--gain", "Raw/gain.mrc", "--defects", "Raw/defects.txt"],
                   check=True, cwd=project, env=env, stdout=subprocess.DEVNULL)
    modes = [("global", ["--patches_x", "1", "--patches_y", "1"])]
    if not args.skip_patches:
        modes.append(("5 x 5 patches", ["--patches_x", "5", "--patches_y", "5"]))
    for job, (mode, options) in enumerate(modes, start=2):
        wall, peak = _run(["cryospa", "motioncorr", "--movies", "job001", *options,
                           "--save_noDW", "--device", "cpu"], project, env)
        g, loc = _errors(project / f"MotionCorr/job{job:03d}/Movies", truth, names)
        runs.append(Run("cryospa", mode, wall, peak, n, g, loc))
        print(f"cryospa {mode}: {wall:.1f} s, {peak:.0f} MB", file=sys.stderr, flush=True)

    if not args.skip_relion and shutil.which("relion_run_motioncorr"):
        work = tmp / "relion"
        work.mkdir()
        for name in ("movies.star", "Movies", "gain.mrc", "defects.txt"):
            (work / name).symlink_to(sim / name)
        common = ["relion_run_motioncorr", "--i", "movies.star", "--use_own", "--j",
                  str(args.threads), "--dose_weighting", "--save_noDW", "--dose_per_frame",
                  str(dose), "--preexposure", "0", "--gainref", "gain.mrc", "--defect_file",
                  "defects.txt", "--bfactor", "150", "--angpix", str(apix), "--voltage",
                  str(kv)]
        relion_modes = [("global", "G", "1")]
        if not args.skip_patches:
            relion_modes.append(("5 x 5 patches", "L", "5"))
        for mode, out, p in relion_modes:
            wall, peak = _run([*common, "--o", f"{out}/", "--patch_x", p, "--patch_y", p],
                              work, env)
            g, loc = _errors(work / out / "Movies", truth, names)
            runs.append(Run("RELION 3.1 --use_own", mode, wall, peak, n, g, loc))
            print(f"RELION {mode}: {wall:.1f} s, {peak:.0f} MB", file=sys.stderr, flush=True)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_movies", type=int, default=None,
                        help="movies to simulate (default 2; 1 with --big)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", default=None,
                        help="an existing `cryospa simulate --preset tutorial` folder (with "
                        "--big: one of 4096 x 4096 px x 40 frames)")
    parser.add_argument("--big", action="store_true",
                        help=f"detector-size movies: {BIG_SIZE} x {BIG_SIZE} px x {BIG_FRAMES} "
                        "frames (simulating one takes about 6 min and 4.5 GB)")
    parser.add_argument("--skip-relion", action="store_true")
    parser.add_argument("--skip-patches", action="store_true")
    add_json_option(parser)
    args = parser.parse_args()
    if args.n_movies is None:
        args.n_movies = 1 if args.big else 2
    env = relion_env(args.threads)
    import json

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.data:
            sim = Path(args.data).resolve()
        else:
            sim = tmp / "sim"
            _simulate(sim, args, env)
        params = json.loads((sim / "ground_truth/simulation.json").read_text())
        runs = _bench(sim, tmp, args, env)

    w, h = params["micrograph_size_px"][:2]
    n_frames = params["n_frames"]
    movie_mb = w * h * n_frames * 4 / 2**20
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads; Python {sys.version.split()[0]}")
    print(f"Data: {runs[0].n_movies} simulated movie(s), {w} x {h} px x {n_frames} frames "
          f"(float32: {movie_mb:.0f} MB), {params['pixel_size_angstrom']} Å/px, "
          f"{params['dose_per_frame_e_per_a2']} e/Å² per frame, gain + defects; dose-weighted "
          "and non-dose-weighted sums, power spectra\n")
    print("| program | alignment | wall time per movie | peak memory (x float32 movie) | global "
          "shift error (RMS, px) | shift error at 5 x 5 patch centres (RMS, px) |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        local = f"{r.local_rms:.3f}" if r.local_rms is not None else "—"
        print(f"| {r.program} | {r.mode} | {r.wall_s / r.n_movies:.1f} s | {r.peak_mb:.0f} MB "
              f"({r.peak_mb / movie_mb:.2f}x) | {r.global_rms:.3f} | {local} |")

    def figures(r: Run) -> dict[str, object]:
        acc = f"shift RMS {r.global_rms:.3f} px" + (
            f", at patches {r.local_rms:.3f} px" if r.local_rms is not None else "")
        return side(r.wall_s / r.n_movies, r.peak_mb, acc)

    data = f"{runs[0].n_movies} movie(s) {w} x {h} x {n_frames}"
    write_rows(args.json, [
        row(f"motion correction, {r.mode}", data, figures(r),
            next((figures(x) for x in runs if x.program != "cryospa" and x.mode == r.mode),
                 None), relion_program="relion_run_motioncorr --use_own", note="per movie")
        for r in runs if r.program == "cryospa"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
