"""Simulate a small tutorial-like data set and run the whole tutorial chain on it.

With no arguments: makes a new project cryospa_demo/, simulates 12 movies of lactate
dehydrogenase (D2) into cryospa_demo/Simulated/ (`cryospa simulate --preset tutorial`, about a
minute) and runs the tutorial's steps through the workflow runner: import, motion correction,
CTF estimation, LoG picking, extraction (down-scaled), 2D classification, automatic class
selection, template picking, re-extraction, 2D classification, selection, initial model (D2),
3D classification, the best 3D class, re-extraction at a finer pixel size, resize, 3D
auto-refine (D2), mask and post-processing. The steps are those of
`cryospa workflow template demo`; each is a job of the project (`cryospa jobs`).

At the end it prints a summary: movies, micrographs, particles picked and kept, classes, the
resolution and B-factor, the FSC of the post-processed map to the simulation's true map, the
wall time of every step, and where the map and the plots are.

Stopping it (Ctrl-C, a kill) and running the same command again resumes: finished steps are
skipped, the interrupted one continues. Steps whose job types are not installed yet are
left out with a note.

  cryospa demo
  cryospa demo --project MyDemo --threads 2
  cryospa demo --until good_particles        # stop after the 2D classification / selection
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cryospa.errors import CryospaError

if TYPE_CHECKING:
    from cryospa.project.project import Project

DEFAULT_PROJECT = "cryospa_demo"


def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``cryospa demo``."""
    parser.add_argument("--project", default=DEFAULT_PROJECT, metavar="DIR",
                        help=f"the demo's project folder, made if new, resumed if it exists "
                        f"(default: {DEFAULT_PROJECT})")
    parser.add_argument("--until", default=None, metavar="STEP",
                        help="stop after this step of `cryospa workflow template demo` (e.g. "
                        "good_particles, refine)")
    parser.add_argument("--threads", type=int, default=2, metavar="N",
                        help="CPU threads / worker processes of every step (default: 2)")
    parser.add_argument("--preset", default="tutorial", choices=("tutorial", "tiny"),
                        help="the simulated data set: tutorial (the demo) or tiny (2 small "
                        "movies at 3.54 Å/px, seconds: to try the plumbing; no usable map)")


def _project(folder: Path) -> Project:
    from cryospa.project.project import Project

    if (folder / "project.sqlite").is_file():
        print(f"resuming the demo in {folder.resolve()}", flush=True)
        return Project.open(folder)
    if folder.exists() and any(folder.iterdir()):
        raise CryospaError(f"--project {folder}: the folder exists and is not a cryospa "
                           "project: give a new folder (or a demo project to resume)")
    project = Project.init(folder)
    print(f"new cryospa project in {project.root}", flush=True)
    return project


def _simulate(root: Path, threads: int, preset: str) -> Path:
    """``Simulated/`` of the project: made once (in a temporary folder, renamed when done)."""
    from cryospa.cli.main import main as cli_main
    from cryospa.workflow.demo import DATA_FOLDER

    data = root / DATA_FOLDER
    if (data / "ground_truth" / "simulation.json").is_file():
        print(f"simulated data set: {data} (made earlier)", flush=True)
        return data
    partial = root / f"{DATA_FOLDER}.partial"
    if partial.exists():
        shutil.rmtree(partial)  # left by an interrupted simulation
    what = ("12 movies of lactate dehydrogenase, D2, 1024 x 1024 px x 24 frames at 1.77 Å/px"
            if preset == "tutorial" else "2 movies of 256 x 256 px x 8 frames at 3.54 Å/px")
    print(f"simulating the data set: cryospa simulate --preset {preset} ({what}) ...",
          flush=True)
    t = time.monotonic()
    code = cli_main(["simulate", "--preset", preset, "--o", str(partial), "--j", str(threads)])
    if code != 0:
        raise CryospaError("the simulation failed (see above)")
    partial.rename(data)
    print(f"simulated in {time.monotonic() - t:.0f} s: {data}", flush=True)
    return data


def main(args: argparse.Namespace) -> int:
    """Run the demo."""
    from cryospa.workflow.demo import demo_workflow, run_demo, summarise

    if args.threads < 1:
        raise CryospaError(f"--threads {args.threads}: need at least 1")
    demo_workflow().until(args.until)  # an unknown --until fails before anything is made
    start = time.monotonic()
    project = _project(Path(args.project))
    try:
        data = _simulate(project.root, args.threads, args.preset)
        result, workflow, last = run_demo(project, until=args.until, threads=args.threads,
                                          data_dir=data)
    except KeyboardInterrupt:
        print(f"\ncryospa demo: interrupted; `cryospa demo --project {args.project}` resumes "
              "(finished steps are skipped, the interrupted one continues)")
        return 130
    summary = summarise(project, workflow, data)
    for line in summary.lines():
        print(line)
    elapsed = time.monotonic() - start
    print(f"  this run: {int(elapsed // 60)}:{int(elapsed % 60):02d} (project {project.root})")
    if not result.ok:
        print(f"cryospa demo: {result.message}\n  run `cryospa demo --project {args.project}` "
              "again to resume")
        return 1
    if last is not None and last != workflow.steps[-1].name:
        print(f"  stopped after step {last!r}; `cryospa demo --project {args.project}` "
              "goes on from there")
    return 0
