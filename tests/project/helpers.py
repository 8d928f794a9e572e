"""Shared helpers for project / job tests: small movies, CLI subprocesses, crash checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from cryospa.io.movies import write_tiff_movie
from cryospa.io.star import read_relion_star, read_star
from cryospa.project.db import ProjectDB

REPO = Path(__file__).resolve().parents[2]


def make_movies(folder: Path, n: int, *, frames: int = 4, shape: tuple[int, int] = (32, 24),
                seed: int = 0, prefix: str = "mov") -> list[Path]:
    """``n`` small Poisson TIFF movies ``<prefix>NNN.tif`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        path = folder / f"{prefix}{i:03d}.tif"
        write_tiff_movie(path, rng.poisson(1.0, (frames, *shape)).astype(np.uint8))
        out.append(path)
    return out


def env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: the repo importable (test job types), extras added."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(extra)
    return e


def cli_command(args: list[str], *, preload: str | None = None) -> list[str]:
    """A command running ``cryospa ARGS`` (after importing ``preload``) in a new interpreter."""
    code = "import sys; from cryospa.cli.main import main; sys.exit(main(sys.argv[1:]))"
    if preload:
        code = f"import {preload}; " + code
    return [sys.executable, "-c", code, *args]


def run_cli(args: list[str], cwd: Path, *, preload: str | None = None,
            **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run ``cryospa ARGS`` in a subprocess and return the completed process."""
    return subprocess.run(cli_command(args, preload=preload), cwd=cwd, env=env(**extra_env),
                          capture_output=True, text=True, timeout=300)


def check_no_partial_files(project_dir: Path) -> None:
    """Every file under its final name is complete: STAR files parse, links resolve, DB sound.

    Temporary files (``.name.<pid>.<hex>.tmp``) may be left by a killed writer; nothing else
    may be half written.
    """
    db = ProjectDB(project_dir / "project.sqlite")
    assert db.integrity_check() == "ok"
    db.close()
    for path in project_dir.rglob("*"):
        name = path.name
        if name.startswith(".") and name.endswith(".tmp"):
            continue
        if path.is_symlink():
            assert path.exists(), f"dangling link {path}"
            continue
        if name == "movies.star":
            read_relion_star(path, "movies")
        elif name.endswith(".star"):
            read_star(path)
        elif name.endswith(".npy"):
            np.load(path)
