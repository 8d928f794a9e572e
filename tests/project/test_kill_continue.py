"""Jobs killed with SIGKILL at random moments, then continued: same outputs as an unbroken run.

After every kill: ``PRAGMA integrity_check`` is ok, no file under its final name is partial,
and the job is not shown as running. ``cryospa continue`` then finishes it, and its outputs are
byte-identical to those of a run that was never interrupted.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cryospa.project.project import Project
from tests.project.helpers import check_no_partial_files, cli_command, env, make_movies, run_cli

N_MOVIES = 30
ITEM_DELAY = "0.03"  # seconds between an item's output and its commit (crash window)


@pytest.fixture(scope="module")
def raw_movies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    make_movies(folder, N_MOVIES, frames=3, shape=(16, 12))
    return folder


def _movie_outputs(job_dir: Path) -> dict[str, object]:
    links = {p.name: os.readlink(p) for p in sorted((job_dir / "Movies").iterdir())
             if not p.name.startswith(".")}
    return {"movies.star": (job_dir / "movies.star").read_bytes(), "links": links}


def _import_args(raw: Path) -> list[str]:
    return ["import", "movies", "--movies", str(raw / "*.tif"), "--angpix", "0.885",
            "--dose-per-frame", "1.5"]


def _kill_after(cmd: list[str], cwd: Path, seconds: float, **extra: str) -> None:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env(**extra), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _after_kill(project_dir: Path) -> Project:
    check_no_partial_files(project_dir)
    project = Project.open(project_dir)
    project.refresh()
    for job in project.jobs():
        assert job.status != "running", "a killed job must not be shown as running"
    return project


def _movie_trials(tmp_path: Path, raw: Path, n_trials: int, seed: int) -> None:
    ref_dir = tmp_path / "reference"
    Project.init(ref_dir)
    t0 = time.monotonic()
    done = run_cli(_import_args(raw), ref_dir, CRYOSPA_DEBUG_ITEM_DELAY=ITEM_DELAY)
    duration = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    reference = _movie_outputs(ref_dir / "Import" / "job001")
    rng = random.Random(seed)
    for trial in range(n_trials):
        project_dir = tmp_path / f"trial{trial:02d}"
        Project.init(project_dir)
        _kill_after(cli_command(_import_args(raw)), project_dir,
                    rng.uniform(0.1, duration), CRYOSPA_DEBUG_ITEM_DELAY=ITEM_DELAY)
        project = _after_kill(project_dir)
        jobs = project.jobs()
        if not jobs:  # killed before the job was recorded: start it again
            result = run_cli(_import_args(raw), project_dir)
        else:
            assert [j.name for j in jobs] == ["job001"]
            result = run_cli(["continue", "job001"], project_dir)
        assert result.returncode == 0, result.stderr
        job = Project.open(project_dir).job("job001")
        assert job.status == "succeeded"
        assert job.summary == f"{N_MOVIES} movies, 3 frames, 12 x 16, 0.885 Å/px"
        assert _movie_outputs(project_dir / "Import" / "job001") == reference, f"trial {trial}"
        check_no_partial_files(project_dir)


def _power_args() -> list[str]:
    return ["test", "power", "--iterations", "25", "--n", "40", "--sleep", "0.03"]


POWER = "tests.project.power_job"


def _power_trials(tmp_path: Path, n_trials: int, seed: int) -> None:
    ref_dir = tmp_path / "reference"
    Project.init(ref_dir)
    t0 = time.monotonic()
    done = run_cli(_power_args(), ref_dir, preload=POWER)
    duration = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    ref_job = ref_dir / "PowerIteration" / "job001"
    reference = (ref_job / "eigenvector.txt").read_bytes()
    ref_checkpoints = {p.name: p.read_bytes() for p in ref_job.glob("run_it*_vector.npy")}
    assert len(ref_checkpoints) == 25
    rng = random.Random(seed)
    for trial in range(n_trials):
        project_dir = tmp_path / f"trial{trial:02d}"
        Project.init(project_dir)
        _kill_after(cli_command(_power_args(), preload=POWER), project_dir,
                    rng.uniform(0.1, duration))
        project = _after_kill(project_dir)
        if not project.jobs():
            result = run_cli(_power_args(), project_dir, preload=POWER)
        else:
            # a plain `cryospa continue` finds the job type through its recorded module
            result = run_cli(["continue", "job001"], project_dir)
        assert result.returncode == 0, result.stderr
        job_dir = project_dir / "PowerIteration" / "job001"
        assert (job_dir / "eigenvector.txt").read_bytes() == reference, f"trial {trial}"
        checkpoints = {p.name: p.read_bytes() for p in job_dir.glob("run_it*_vector.npy")}
        assert checkpoints == ref_checkpoints
        assert len(Project.open(project_dir).iterations(1)) == 25
        check_no_partial_files(project_dir)


def test_kill_continue_per_item_fast(tmp_path: Path, raw_movies: Path) -> None:
    _movie_trials(tmp_path, raw_movies, n_trials=3, seed=1)


def test_kill_continue_iterative_fast(tmp_path: Path) -> None:
    _power_trials(tmp_path, n_trials=3, seed=2)


@pytest.mark.slow
def test_kill_continue_per_item_many(tmp_path: Path, raw_movies: Path) -> None:
    _movie_trials(tmp_path, raw_movies, n_trials=24, seed=11)


@pytest.mark.slow
def test_kill_continue_iterative_many(tmp_path: Path) -> None:
    _power_trials(tmp_path, n_trials=24, seed=12)
