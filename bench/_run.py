"""Running a program for a benchmark: its wall time and peak memory, RELION's MPI environment.

``timed`` runs a command in a fresh process under a small Python wrapper that measures the
command alone (not this script): wall seconds and the peak resident memory of its process tree
(``RUSAGE_CHILDREN``). ``relion_env`` is the environment RELION's programs need in these
containers (Open MPI refuses to run as root without the two ``OMPI_ALLOW_*`` variables).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["relion_env", "timed"]

_WRAPPER = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, "
    "text=True); w = time.perf_counter() - t; "
    "sys.stderr.write(r.stderr if r.returncode else ''); "
    "sys.stdout.write(r.stdout[-4000:] if r.returncode else ''); "
    "print('@@', w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); "
    "sys.exit(r.returncode)"
)


def relion_env(threads: int | None = None) -> dict[str, str]:
    """This process's environment plus Open MPI's run-as-root switches and passive OpenMP.

    ``threads``: also set ``OMP_NUM_THREADS``.
    """
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def timed(cmd: list[str], cwd: Path, threads: int | None = None) -> tuple[float, float]:
    """Run ``cmd`` in ``cwd``; return (wall seconds, peak RSS in MB) of the command.

    Raises RuntimeError with the tail of the command's output when it fails.
    """
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], cwd=cwd,
                         env=relion_env(threads), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    last = [line for line in out.stdout.splitlines() if line.startswith("@@")][-1]
    _, wall, rss = last.split()
    return float(wall), float(rss)
