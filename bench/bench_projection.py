"""Benchmark: Fourier-slice projection and CTF-corrected reconstruction, cryospa vs RELION 3.1.

Not a test: prints wall time, peak memory (max RSS of the process) and accuracy for both
programs on the same inputs, as a Markdown table. Usage::

    python bench/bench_projection.py [--sizes 64:2000 128:4000] [--threads 2] [--out bench/results]

Data: a pseudo-atomic map (Gaussian atoms; signal up to Nyquist), uniform random orientations,
origins up to 10 Å, astigmatic CTFs (300 kV). Projection: `cryospa reproject --ctf` vs
`relion_project --ctf`, accuracy = lowest per-image correlation between the two programs'
images. Reconstruction: RELION's projections plus Gaussian noise (SNR 0.1 over the box), then
`cryospa reconstruct --ctf` vs `relion_reconstruct --ctf`; accuracy = resolution where the FSC
against the true map drops below 0.5, and the FSC between the two reconstructions at 0.8 Nyquist.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _rows import add_json_option, row, side, write_rows  # noqa: E402
from _run import timed  # noqa: E402

from cryospa.core.fsc import fsc, resolution_at_threshold  # noqa: E402
from cryospa.io.mrc import read_mrc, write_mrc  # noqa: E402
from tests.synthetic import write_map_and_angles  # noqa: E402


def fsc05(a: np.ndarray, b: np.ndarray, apix: float) -> float:
    curve = fsc(torch.from_numpy(a).double(), torch.from_numpy(b).double())
    return resolution_at_threshold(
        curve, box_size=a.shape[0], pixel_size_angstrom=apix, threshold=0.5
    )


def run_size(n: int, n_particles: int, threads: int, work: Path) -> list[dict[str, str]]:
    apix = 2.0
    work.mkdir(parents=True, exist_ok=True)
    _, _, truth = write_map_and_angles(work, n=n, pixel_size=apix, n_particles=n_particles)
    cry = [sys.executable, "-m", "cryospa"]
    rows = []
    # --- projection
    t_rel, m_rel = timed(
        ["relion_project", "--i", "map.mrc", "--o", "relion_proj", "--ang", "angles.star", "--ctf"],
        work,
        threads,
    )
    t_us, m_us = timed(
        [
            *cry,
            "reproject",
            "--map",
            "map.mrc",
            "--i",
            "angles.star",
            "--o",
            "ours_proj.mrcs",
            "--ctf",
            "--device",
            "cpu",
            "--j",
            str(threads),
        ],
        work,
        threads,
    )
    ours, _ = read_mrc(work / "ours_proj.mrcs")
    theirs, _ = read_mrc(work / "relion_proj.mrcs")
    corr = min(
        float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(ours, theirs, strict=True)
    )
    rows.append(
        dict(
            step="project (CTF)",
            data=f"{n_particles} x {n}^2 from {n}^3",
            ours=f"{t_us:.1f}",
            relion=f"{t_rel:.1f}",
            ratio=f"{t_us / t_rel:.2f}",
            mem_ours=f"{m_us:.0f}",
            mem_relion=f"{m_rel:.0f}",
            acc_ours=f"min corr to RELION {corr:.5f}",
            acc_relion="(reference)",
        )
    )
    # --- reconstruction from RELION's projections + noise
    rng = np.random.default_rng(1)
    noisy = theirs + rng.normal(0, np.sqrt(10.0) * theirs.std(), theirs.shape).astype(np.float32)
    write_mrc(work / "relion_proj.mrcs", noisy, voxel_size_angstrom=apix, is_stack=True)
    t_rel, m_rel = timed(
        ["relion_reconstruct", "--i", "relion_proj.star", "--o", "relion_rec.mrc", "--ctf"],
        work,
        threads,
    )
    t_us, m_us = timed(
        [
            *cry,
            "reconstruct",
            "--i",
            "relion_proj.star",
            "--o",
            "ours_rec.mrc",
            "--ctf",
            "--device",
            "cpu",
            "--j",
            str(threads),
        ],
        work,
        threads,
    )
    rec_us, _ = read_mrc(work / "ours_rec.mrc")
    rec_rel, _ = read_mrc(work / "relion_rec.mrc")
    agree = fsc(torch.from_numpy(rec_us).double(), torch.from_numpy(rec_rel).double())[
        int(0.8 * n // 2)
    ]
    rows.append(
        dict(
            step="reconstruct (CTF)",
            data=f"{n_particles} x {n}^2 -> {n}^3",
            ours=f"{t_us:.1f}",
            relion=f"{t_rel:.1f}",
            ratio=f"{t_us / t_rel:.2f}",
            mem_ours=f"{m_us:.0f}",
            mem_relion=f"{m_rel:.0f}",
            acc_ours=f"FSC0.5 vs truth {fsc05(rec_us, truth, apix):.2f} Å; "
            f"FSC to RELION at 0.8 Nyq {agree:.3f}",
            acc_relion=f"FSC0.5 vs truth {fsc05(rec_rel, truth, apix):.2f} Å",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", nargs="+", default=["64:2000", "128:4000"], help="box:particles pairs"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    add_json_option(parser)
    args = parser.parse_args()
    if shutil.which("relion_project") is None:
        sys.exit("RELION is not installed (apt-get install relion): nothing to compare against")
    work = Path(tempfile.mkdtemp(prefix="cryospa-bench-"))
    rows = []
    start = time.time()
    for spec in args.sizes:
        n, count = (int(v) for v in spec.split(":"))
        rows.extend(run_size(n, count, args.threads, work / f"n{n}"))
    header = [
        "step",
        "data",
        "cryospa s",
        "RELION s",
        "ratio",
        "cryospa MB",
        "RELION MB",
        "cryospa accuracy",
        "RELION accuracy",
    ]
    keys = [
        "step",
        "data",
        "ours",
        "relion",
        "ratio",
        "mem_ours",
        "mem_relion",
        "acc_ours",
        "acc_relion",
    ]
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, "
        f"torch {torch.__version__}, RELION 3.1 (Debian, CPU, double precision); "
        f"total {time.time() - start:.0f} s\n"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r[k] for k in keys) + " |")
    write_rows(args.json, [
        row(r["step"], r["data"], side(float(r["ours"]), float(r["mem_ours"]), r["acc_ours"]),
            side(float(r["relion"]), float(r["mem_relion"]), r["acc_relion"]),
            relion_program="relion_project" if r["step"].startswith("project")
            else "relion_reconstruct", note="whole command")
        for r in rows])
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
