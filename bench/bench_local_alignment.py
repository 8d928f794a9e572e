"""Benchmark: patch-based local motion (``cryospa.core.local_alignment``) vs RELION 3.1.

Not a test. Prints, as Markdown tables:

1. **Accuracy against the truth** on ``cryospa simulate --preset tutorial`` movies (1024 x 1024
   px x 24 frames, 1.77 Å/px, 1.277 e/Å² per frame, 200 kV; gain and defects), with the
   simulator's default local deformation (3 Å at the last frame) and a strong one (10 Å): the
   RMS error of the total shift (global + local) at the 5 x 5 patch centres against the true
   global + polynomial motion (``ground_truth/motion/movNNN.star``), after removing a constant
   offset per movie, for the global shifts alone and for global + local; the same for
   ``relion_run_motioncorr --use_own --patch_x 5 --patch_y 5`` (its per-movie STAR) on the same
   movies. Also the wall time and peak memory of cryospa's steps (global alignment, patch
   alignment, dose-weighted local sum) per movie, in one process per step.
2. **The locally aligned sum** against exact warping: frames of an analytic band-limited image
   deformed by a known field (largest local shift 3 px), summed by ``shift_and_sum_local``
   (cubic B-spline) and by bilinear interpolation (RELION's ``realSpaceInterpolation``), and
   the correlation with the true image overall and in the 1/4 - 1/2.5 cycles/px shell.
3. **Speed and memory** of ``shift_and_sum_local`` at 1024 x 1024 x 24 and (``--big``) 4096 x
   4096 x 40, dose-weighted.

Usage::

    python bench/bench_local_alignment.py [--n_movies 2] [--threads 2] [--data DIR DIR]
                                          [--skip-relion] [--big]

Timings on a shared machine are noisy; each step runs in its own process with ``--threads``
torch / OpenMP threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as tnf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _rows import add_json_option, row, side, write_rows  # noqa: E402

from cryospa.core.alignment import (  # noqa: E402
    align_global,
    dose_weights,
    frame_end_exposures,
)
from cryospa.core.local_alignment import (  # noqa: E402
    align_patches,
    local_shifts_at,
    patch_layout,
    shift_and_sum_local,
)
from cryospa.io.mrc import read_mrc  # noqa: E402
from cryospa.io.star import read_star  # noqa: E402
from tests.core.test_local_alignment import (  # noqa: E402
    _analytic_movie,
    _deformation,
    _trajectory,
    _waves,
)

SHIFTS = ["rlnMicrographShiftX", "rlnMicrographShiftY"]


# ---------------------------------------------------------------------------------------------
# helpers


def _child(args: list[str], threads: int) -> dict:
    """Run this script's ``--step`` in a fresh process; its JSON result plus wall and peak RSS."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, *args, "--threads", str(threads)],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"step {args} failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _truth(folder: Path, movie: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """True global shifts ``(F, 2)``, coefficients ``(2, 18)`` and frame shape of a movie."""
    blocks = read_star(folder / "ground_truth" / "motion" / f"mov{movie:03d}.star")
    general = blocks["general"]
    shape = (int(general["rlnImageSizeY"].iloc[0]), int(general["rlnImageSizeX"].iloc[0]))
    shifts = blocks["global_shift"][SHIFTS].to_numpy(dtype=np.float64)
    coeffs = blocks["local_motion_model"]["rlnMotionModelCoeff"].to_numpy(dtype=np.float64)
    return shifts, coeffs.reshape(2, 18), shape


def _errors(
    found: np.ndarray, coeffs: np.ndarray, truth: tuple[np.ndarray, np.ndarray, tuple[int, int]]
) -> tuple[float, float]:
    """RMS error (px) at the 5 x 5 patch centres: global only, global + local."""
    true_global, true_coeffs, shape = truth
    _, _, centres = patch_layout(shape, (5, 5))
    x, y = centres[:, 0], centres[:, 1]
    n = len(true_global)
    target = true_global + local_shifts_at(true_coeffs[0], true_coeffs[1], x, y, n, shape)
    estimate = found + local_shifts_at(coeffs[0], coeffs[1], x, y, n, shape)

    def rms(e: np.ndarray) -> float:
        d = (e - target).reshape(-1, 2)
        d = d - d.mean(axis=0)
        return float(np.sqrt((d**2).sum(axis=1).mean()))

    return rms(np.broadcast_to(found, target.shape)), rms(estimate)


def _load_movie(folder: Path, movie: int) -> tuple[torch.Tensor, float, float, float]:
    """Gain-corrected frames with defects filled by the mean; pixel size, dose, voltage."""
    frames, _ = read_mrc(folder / "Movies" / f"mov{movie:03d}.mrcs")
    gain, _ = read_mrc(folder / "gain.mrc")
    data = frames.astype(np.float32) * gain.astype(np.float32)
    fill = float(data.mean())
    for line in (folder / "defects.txt").read_text().split("\n"):
        if line.strip():
            x, y, w, h = (int(v) for v in line.split())
            data[:, y : y + h, x : x + w] = fill
    params = json.loads((folder / "ground_truth" / "simulation.json").read_text())
    return (
        torch.from_numpy(data),
        float(params["pixel_size_angstrom"]),
        float(params["dose_per_frame_e_per_a2"]),
        float(params["microscope"]["voltage_kv"]),
    )


# ---------------------------------------------------------------------------------------------
# steps (each run in its own process)


def step_cryospa(folder: Path, movie: int, what: str) -> dict:
    frames, apix, dose, kv = _load_movie(folder, movie)
    result: dict = {}
    start = time.perf_counter()
    found = align_global(frames, apix).shifts
    result["global_s"] = time.perf_counter() - start
    if what in ("patches", "sum"):
        start = time.perf_counter()
        local = align_patches(frames, found, apix, patches=(5, 5))
        result["patches_s"] = time.perf_counter() - start
        coeffs = np.stack([local.coeffs_x, local.coeffs_y])
        result["fit_rms_px"] = local.rms_residual_px
    else:
        coeffs = np.zeros((2, 18))
    if what == "sum":
        n, h, w = frames.shape
        start = time.perf_counter()
        weights = dose_weights((h, w), apix, frame_end_exposures(n, dose), kv)
        shift_and_sum_local(frames, found, coeffs[0], coeffs[1], weights=weights)
        result["sum_s"] = time.perf_counter() - start
    result["global_rms"], result["local_rms"] = _errors(found, coeffs, _truth(folder, movie))
    result["peak_mb"] = _peak_mb()
    return result


def _rss_mb() -> float:
    """Current resident memory of this process (MB), from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024
    return float("nan")


def step_speed(size: int, n_frames: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    frames = torch.poisson(torch.full((n_frames, size, size), 4.0), generator=gen)
    coeffs = _deformation(1, n_frames, 3.0 * size / 1024, (size, size))
    shifts = _trajectory(n_frames)
    weights = dose_weights((size, size), 1.77, frame_end_exposures(n_frames, 1.277), 300.0)
    # sample the resident memory while the sum runs (the inputs' own creation peaks higher)
    before, peak, done = _rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    shift_and_sum_local(frames, shifts, coeffs[0], coeffs[1], weights=weights)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    return {
        "sum_s": wall,
        "peak_mb": peak[0],
        "inputs_mb": before,
        "movie_mb": frames.numel() * 4 / 2**20,
    }


def _bilinear_sum(frames: torch.Tensor, shifts: np.ndarray, coeffs: np.ndarray) -> torch.Tensor:
    """RELION's interpolation for comparison: bilinear at ``q - s(q)`` (global + local)."""
    n, h, w = frames.shape
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    total = torch.zeros((h, w), dtype=torch.float32)
    for z in range(n):
        s = local_shifts_at(coeffs[0], coeffs[1], xx.numpy(), yy.numpy(), n, (h, w))[..., z, :]
        u = xx - shifts[z, 0] - torch.from_numpy(s[..., 0])
        v = yy - shifts[z, 1] - torch.from_numpy(s[..., 1])
        grid = torch.stack([2 * u / (w - 1) - 1, 2 * v / (h - 1) - 1], dim=-1)[None].float()
        total += tnf.grid_sample(
            frames[z][None, None], grid, mode="bilinear", padding_mode="border", align_corners=True
        )[0, 0]
    return total


def step_interpolation() -> dict:
    shape, n_frames = (256, 256), 8
    coeffs = _deformation(4, n_frames, 3.0, shape)
    shifts = _trajectory(n_frames)
    frames, reference = _analytic_movie(shape, shifts, coeffs, _waves(150, 5, k_max=0.45))
    inner = (slice(16, -16), slice(16, -16))
    ref_ft = torch.fft.rfft2(reference[inner].double())
    k = torch.sqrt(
        torch.fft.fftfreq(224)[:, None] ** 2 + torch.fft.rfftfreq(224)[None, :] ** 2
    ).double()
    shell = (k >= 0.25) & (k <= 0.4)

    def scores(image: torch.Tensor) -> list[float]:
        a = image[inner].double() / n_frames
        b = reference[inner].double()
        cc = float(((a - a.mean()) * (b - b.mean())).sum() / (a.std() * b.std() * (a.numel() - 1)))
        fa = torch.fft.rfft2(a)[shell]
        fb = ref_ft[shell]
        pa, pb = (fa.abs() ** 2).sum(), (fb.abs() ** 2).sum()
        frc = float((fa * fb.conj()).real.sum() / torch.sqrt(pa * pb))
        gain = float(torch.sqrt(pa / pb))
        return [cc, frc, gain]

    return {
        "bspline": scores(shift_and_sum_local(frames, shifts, coeffs[0], coeffs[1])),
        "bilinear": scores(_bilinear_sum(frames, shifts, coeffs)),
    }


# ---------------------------------------------------------------------------------------------
# RELION


def _relion_errors(out: Path, folder: Path, n_movies: int) -> list[tuple[float, float]]:
    rows = []
    for m in range(1, n_movies + 1):
        blocks = read_star(out / "Movies" / f"mov{m:03d}.star")
        found = blocks["global_shift"][SHIFTS].to_numpy(dtype=np.float64)
        coeffs = np.zeros((2, 18))
        if "local_motion_model" in blocks:
            values = blocks["local_motion_model"]
            index = values["rlnMotionModelCoeffsIdx"].to_numpy(dtype=int)
            coeffs.reshape(-1)[index] = values["rlnMotionModelCoeff"].to_numpy(dtype=np.float64)
        rows.append(_errors(found, coeffs, _truth(folder, m)))
    return rows


def run_relion(folder: Path, n_movies: int, threads: int, work: Path) -> tuple[float, float, list]:
    work.mkdir(parents=True)
    for name in ("movies.star", "Movies", "gain.mrc", "defects.txt"):
        (work / name).symlink_to(folder / name)
    params = json.loads((folder / "ground_truth" / "simulation.json").read_text())
    cmd = [
        "relion_run_motioncorr", "--i", "movies.star", "--o", "L/", "--use_own",
        "--j", str(threads), "--dose_weighting",
        "--dose_per_frame", str(params["dose_per_frame_e_per_a2"]), "--preexposure", "0",
        "--gainref", "gain.mrc", "--defect_file", "defects.txt", "--bfactor", "150",
        "--angpix", str(params["pixel_size_angstrom"]),
        "--voltage", str(params["microscope"]["voltage_kv"]),
        "--patch_x", "5", "--patch_y", "5",
    ]  # fmt: skip
    wrapper = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss "
        "/ 1024); sys.stderr.write(r.stderr if r.returncode else ''); sys.exit(r.returncode)"
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *cmd], cwd=work, env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"RELION failed:\n{out.stderr}")
    wall, peak = (float(v) for v in out.stdout.split())
    return wall / n_movies, peak, _relion_errors(work / "L", folder, n_movies)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n_movies", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--data",
        nargs=2,
        type=Path,
        metavar="DIR",
        help="existing simulations (3 Å and 10 Å local motion, MRC movies)",
    )
    parser.add_argument("--skip-relion", action="store_true")
    parser.add_argument("--big", action="store_true", help="also 4096 x 4096 x 40 (about 6 GB)")
    parser.add_argument("--step", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--accuracy-only", action="store_true",
                        help="only the accuracy table (no interpolation and speed tables)")
    add_json_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.step:
        kind, *rest = args.step
        if kind == "cryospa":
            result = step_cryospa(Path(rest[0]), int(rest[1]), rest[2])
        elif kind == "speed":
            result = step_speed(int(rest[0]), int(rest[1]))
        else:
            result = step_interpolation()
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.data:
            folders = list(args.data)
        else:
            folders = []
            for local in (3, 10):
                out = tmp / f"sim_local{local}"
                subprocess.run(
                    ["cryospa", "simulate", "--preset", "tutorial", "--n_micrographs",
                     str(args.n_movies), "--local_motion", str(local), "--movie_format", "mrc",
                     "--o", str(out)],
                    check=True, capture_output=True,
                )  # fmt: skip
                folders.append(out)
        print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{args.threads} threads; Python {sys.version.split()[0]}, torch "
              f"{torch.__version__}\n")  # fmt: skip
        print("Accuracy at the 5 x 5 patch centres (RMS px, constant offset removed), 1024 x "
              "1024 x 24 frames, 1.77 Å/px, 1.277 e/Å² per frame:\n")  # fmt: skip
        print("| local motion | program | global only | global + local | global step | "
              "patch step | dose-weighted local sum | peak memory |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        json_rows = []
        for local, folder in zip(("3 Å", "10 Å"), folders, strict=True):
            runs = [
                _child(["--step", "cryospa", str(folder), str(m), "sum"], args.threads)
                for m in range(1, args.n_movies + 1)
            ]

            def mean(key: str, rows: list[dict] = runs) -> float:
                return float(np.mean([r[key] for r in rows]))

            print(f"| {local} | cryospa | {mean('global_rms'):.3f} | {mean('local_rms'):.3f} | "
                  f"{mean('global_s'):.1f} s | {mean('patches_s'):.1f} s | {mean('sum_s'):.1f} s"
                  f" | {max(r['peak_mb'] for r in runs):.0f} MB |")  # fmt: skip
            ours = side(mean("global_s") + mean("patches_s") + mean("sum_s"),
                        max(r["peak_mb"] for r in runs),
                        f"patch-centre RMS {mean('local_rms'):.3f} px (global only "
                        f"{mean('global_rms'):.3f})")
            theirs = None
            if not args.skip_relion and shutil.which("relion_run_motioncorr"):
                wall, peak, errors = run_relion(folder, args.n_movies, args.threads,
                                                tmp / f"relion_{local[:-2]}")  # fmt: skip
                g, loc = np.mean(errors, axis=0)
                print(f"| {local} | RELION 3.1 --use_own | {g:.3f} | {loc:.3f} | "
                      f"{wall:.1f} s per movie, all steps | | | {peak:.0f} MB |")  # fmt: skip
                theirs = side(wall, peak, f"patch-centre RMS {loc:.3f} px (global only "
                              f"{g:.3f})")
            json_rows.append(row(f"local motion, 5 x 5 patches ({local} true)",
                                 f"{args.n_movies} movie(s) 1024 x 1024 x 24", ours, theirs,
                                 relion_program="relion_run_motioncorr --use_own",
                                 note="per movie; ours: the steps in-process"))
        write_rows(args.json, json_rows)
    if args.accuracy_only:
        return

    interp = _child(["--step", "interpolation"], args.threads)
    print("\nLocally aligned sum vs exact warping (analytic image, 256 x 256 x 8, local shifts up "
          "to 3 px): correlation with the true image; FRC and amplitude ratio at 0.25-0.4 "
          "cycles/px\n")  # fmt: skip
    print("| interpolation | correlation | FRC 0.25-0.4 | amplitude 0.25-0.4 |")
    print("|---|---|---|---|")
    for name in ("bspline", "bilinear"):
        cc, frc, gain = interp[name]
        label = "cubic B-spline (cryospa)" if name == "bspline" else "bilinear (RELION)"
        print(f"| {label} | {cc:.5f} | {frc:.4f} | {gain:.3f} |")

    print("\nshift_and_sum_local, dose-weighted, Poisson frames:\n")
    print("| frames | wall time | per frame | memory during the sum (before it: movie, filters) "
          "| movie |")  # fmt: skip
    print("|---|---|---|---|---|")
    sizes = [(1024, 24)] + ([(4096, 40)] if args.big else [])
    for size, n_frames in sizes:
        r = _child(["--step", "speed", str(size), str(n_frames)], args.threads)
        print(f"| {size} x {size} x {n_frames} | {r['sum_s']:.1f} s | "
              f"{r['sum_s'] / n_frames:.2f} s | {r['peak_mb']:.0f} MB ({r['inputs_mb']:.0f} MB)"
              f" | {r['movie_mb']:.0f} MB |")  # fmt: skip


if __name__ == "__main__":
    main()
