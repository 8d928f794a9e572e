"""Benchmark: ``cryospa simulate --preset tutorial`` (movies with ground truth).

Not a test: runs the preset in a fresh process and prints wall time, peak memory (max RSS of
the process) and what was written, as a Markdown table. RELION has no equivalent simulator
(``relion_project`` makes particle images only), so there is no RELION column; the check
that RELION reads the output and finds the true drift is in ``tests/sim/test_movies.py``.
Usage::

    python bench/bench_simulate.py [--preset tutorial] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _rows import add_json_option, row, side, write_rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tutorial", choices=["tutorial", "tiny"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", default=None, help="write the data set here and keep it")
    add_json_option(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep) if args.keep else Path(tmp) / "sim"
        cmd = ["cryospa", "simulate", "--preset", args.preset, "--j", str(args.threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        start = time.perf_counter()
        subprocess.run([*cmd, "--o", str(out)], check=True, env=env)
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        params = json.loads((out / "ground_truth/simulation.json").read_text())
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(
        f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} threads; Python {sys.version.split()[0]}\n"
    )
    print("| data set | wall time | peak memory | output |")
    print("|---|---|---|---|")
    w, h = params["micrograph_size_px"]
    print(
        f"| `--preset {args.preset}`: {params['n_micrographs']} movies {w} x {h} x "
        f"{params['n_frames']} frames, {params['n_particles']} particles + "
        f"{params['n_junk']} junk | {wall:.1f} s | {peak_mb:.0f} MB | {size:.0f} MB |"
    )
    write_rows(args.json, [row(
        f"simulate --preset {args.preset}", f"{params['n_micrographs']} movies {w} x {h} x "
        f"{params['n_frames']}, {params['n_particles']} particles", side(
            wall, peak_mb, f"{size:.0f} MB written, ground truth"), None,
        relion_program="no equivalent: relion_project makes particle images only",
        note="whole command")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
