"""Running workflows on `cryospa simulate --preset tiny` data: a full run, a second run that
skips every step, a changed parameter, a run killed in the middle and resumed, streaming."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cryospa.cli.main import main as cli
from cryospa.io.star import read_relion_star
from cryospa.project.project import Project
from cryospa.workflow.runner import read_state, run_workflow
from cryospa.workflow.spec import load_workflow, parse_workflow
from tests.project.helpers import cli_command, env

Simulated = Callable[..., Path]

TINY = """
name: tiny
vars:
  raw: Raw
  angpix: 3.54
steps:
  - name: movies
    job: import movies
    params:
      movies: ${raw}/Movies/*.tiff
      angpix: ${angpix}
      kv: 200
      cs: 1.4
      dose-per-frame: 1.277
      gain: ${raw}/gain.mrc
      defects: ${raw}/defects.txt
      settle: 0.3
  - name: motion
    job: motioncorr
    inputs: {movies: movies}
    params: {patches-x: 1, patches-y: 1, device: cpu}
  - name: ctf
    job: ctffind
    inputs: {micrographs: motion}
    params: {plots: 0, device: cpu}
  - name: picks
    job: pick log
    inputs: {micrographs: motion}
    params: {diam-min: 80, diam-max: 110, threshold: 1, plots: 0, device: cpu}
  - name: particles
    job: extract
    inputs: {micrographs: ctf, coordinates: picks}
    params: {box: 44, rescale: 22, device: cpu}
  - name: classes
    job: class2d
    inputs: {particles: particles}
    params: {classes: 2, iterations: 3, particle-diameter: 120, device: cpu}
"""
STEPS = ["movies", "motion", "ctf", "picks", "particles", "classes"]


@pytest.fixture
def tiny(tmp_path: Path, simulated: Simulated) -> tuple[Project, Path, Path]:
    """A project with the tiny simulation linked as Raw/, the workflow file, the simulation."""
    sim = simulated("--preset", "tiny")
    project = Project.init(tmp_path / "P")
    (project.root / "Raw").symlink_to(sim)
    wf = tmp_path / "tiny.yaml"
    wf.write_text(TINY)
    return project, wf, sim


def _actions(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {r.step: r.action for r in result.steps}


def _check_against_truth(project: Project, sim: Path) -> None:
    """The chain's outputs: acquisition values carried through, defocus near the truth."""
    state = read_state(project, "tiny")
    ctf = project.job(state["ctf"])
    fitted = read_relion_star(project.path(ctf.dir) / "micrographs_ctf.star", "micrographs").data
    truth = read_relion_star(sim / "ground_truth/micrographs_ctf.star", "micrographs").data
    assert len(fitted) == len(truth) == 2
    for (_, ours), (_, true) in zip(fitted.iterrows(), truth.iterrows(), strict=True):
        assert Path(ours["rlnMicrographName"]).name == Path(true["rlnMicrographName"]).name
        assert ours["rlnDefocusU"] == pytest.approx(true["rlnDefocusU"], rel=0.03)
    particles = read_relion_star(
        project.path(project.job(state["particles"]).dir) / "particles.star", "particles")
    optics = particles.optics.iloc[0]
    assert (optics["rlnVoltage"], optics["rlnSphericalAberration"]) == (200.0, 1.4)
    assert optics["rlnImagePixelSize"] == pytest.approx(3.54 * 44 / 22)
    assert len(particles.data) > 0


def test_run_then_rerun_skips_then_a_change_reruns_what_follows(
    tiny: tuple[Project, Path, Path],
) -> None:
    project, wf_path, sim = tiny
    wf = load_workflow(wf_path)
    lines: list[str] = []
    first = run_workflow(project, wf, echo=lines.append)
    assert first.ok, first.message
    assert _actions(first) == dict.fromkeys(STEPS, "ran")
    jobs = project.jobs()
    assert [j.status for j in jobs] == ["succeeded"] * 6
    assert read_state(project, "tiny") == {s: f"job{i:03d}" for i, s in enumerate(STEPS, 1)}
    assert (project.root / "Workflows/tiny.yaml").read_text() == TINY
    # inputs wired as the file says, parameters as given
    assert project.inputs(2)["movies"][0].source_job == 1
    assert project.inputs(4)["micrographs"][0].source_job == 2
    assert {k: [r.source_job for r in v] for k, v in project.inputs(5).items()} == {
        "coordinates": [4], "micrographs": [3]}
    assert project.job(2).params["patches_x"] == 1
    assert project.job(1).params["angpix"] == 3.54
    assert any(line.startswith("[3/6] ctf: job003 succeeded") and "CtfFind/job003/" in line
               for line in lines)
    _check_against_truth(project, sim)
    outputs = sorted(p for p in project.root.rglob("*.star") if "Workflows" not in p.parts)
    stamps = {p: p.stat().st_mtime_ns for p in outputs}

    second = run_workflow(project, wf, echo=lines.append)
    assert second.ok and _actions(second) == dict.fromkeys(STEPS, "skipped")
    assert [r.job for r in second.steps] == [f"job{i:03d}" for i in range(1, 7)]
    assert [r.folder for r in second.steps][:2] == ["Import/job001/", "MotionCorr/job002/"]
    assert len(project.jobs()) == 6
    assert {p: p.stat().st_mtime_ns for p in outputs} == stamps  # nothing rewritten

    changed = parse_workflow(TINY.replace("threshold: 1,", "threshold: 0.5,"))
    third = run_workflow(project, changed, echo=lines.append)
    assert _actions(third) == {"movies": "skipped", "motion": "skipped", "ctf": "skipped",
                               "picks": "ran", "particles": "ran", "classes": "ran"}
    assert [r.job for r in third.steps][3:] == ["job007", "job008", "job009"]
    assert any("parameters changed (threshold 1.0 -> 0.5) since job004" in line
               for line in lines)
    # back to the first parameters: the first jobs are found again
    fourth = run_workflow(project, wf, echo=lines.append)
    assert _actions(fourth) == dict.fromkeys(STEPS, "skipped")
    assert read_state(project, "tiny")["classes"] == "job006"


def test_until_and_continue_of_an_interrupted_step(tiny: tuple[Project, Path, Path]) -> None:
    project, wf_path, _ = tiny
    wf = load_workflow(wf_path)
    result = run_workflow(project, wf, until="ctf", echo=lambda _: None)
    assert _actions(result) == {"movies": "ran", "motion": "ran", "ctf": "ran"}
    assert len(project.jobs()) == 3
    # the CTF job interrupted (Ctrl-C records it as aborted)
    project.finish(3, "aborted", error="aborted (KeyboardInterrupt)")
    dry = run_workflow(project, wf, until="picks", dry_run=True, echo=lambda _: None)
    assert _actions(dry) == {"movies": "skipped", "motion": "skipped", "ctf": "would continue",
                             "picks": "would run"}
    assert len(project.jobs()) == 3 and project.job(3).status == "aborted"
    resumed = run_workflow(project, wf, until="picks", echo=lambda _: None)
    assert _actions(resumed) == {"movies": "skipped", "motion": "skipped", "ctf": "continued",
                                 "picks": "ran"}
    assert resumed.by_step()["ctf"].job == "job003"
    assert project.job(3).status == "succeeded"
    assert [j.name for j in project.jobs()] == ["job001", "job002", "job003", "job004"]


def test_a_failing_step_stops_the_run_and_names_the_fix(tiny: tuple[Project, Path, Path],
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    project, wf_path, _ = tiny
    # particle diameter larger than the 22 px x 7.08 Å box: class2d refuses it
    wf_path.write_text(TINY.replace("particle-diameter: 120", "particle-diameter: 400"))
    code = cli(["run", str(wf_path), "--project", str(project.root)])
    assert code == 1
    err = capsys.readouterr().err
    assert "step 'classes' (class2d): class2d: --particle-diameter 400 Å is larger" in err
    assert "the steps before it (movies, motion, ctf, picks, particles) will be skipped" in err
    assert [j.status for j in project.jobs()] == ["succeeded"] * 5  # the steps before it ran


def test_killed_run_resumes_where_it_stopped(tiny: tuple[Project, Path, Path]) -> None:
    project, wf_path, _ = tiny
    cmd = cli_command(["run", str(wf_path), "--project", str(project.root),
                       "--until", "particles"])
    proc = subprocess.Popen(cmd, cwd=project.root, env=env(CRYOSPA_DEBUG_ITEM_DELAY="1.0"),
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while True:  # kill once motion correction has committed its first movie
            motion = [j for j in project.jobs() if j.type == "motioncorr"]
            if motion and project.item_results(motion[0].id):
                break
            assert proc.poll() is None, "the workflow ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    job = motion[0]
    done_before = project.db.query("SELECT key, time FROM items WHERE job_id = ?", (job.id,))
    assert len(done_before) == 1
    assert read_state(project, "tiny").get("motion") is None  # killed before it was recorded

    result = run_workflow(project, load_workflow(wf_path), until="particles",
                          echo=lambda _: None)
    assert result.ok, result.message
    assert _actions(result) == {"movies": "skipped", "motion": "continued", "ctf": "ran",
                                "picks": "ran", "particles": "ran"}
    assert result.by_step()["motion"].job == job.name
    assert [j.status for j in project.jobs()] == ["succeeded"] * 5
    after = {r["key"]: r["time"] for r in
             project.db.query("SELECT key, time FROM items WHERE job_id = ?", (job.id,))}
    assert len(after) == 2
    assert after[done_before[0]["key"]] == done_before[0]["time"]  # not done again
    assert read_state(project, "tiny")["motion"] == job.name


def test_streaming_preprocessing_then_the_rest(tiny: tuple[Project, Path, Path]) -> None:
    project, wf_path, sim = tiny
    wf = load_workflow(wf_path)
    lines: list[str] = []
    t0 = time.monotonic()
    result = run_workflow(project, wf, stream=True, poll=0.3, stream_timeout=1.5,
                          echo=lines.append)
    assert result.ok, result.message
    assert time.monotonic() - t0 < 120
    assert _actions(result) == dict.fromkeys(STEPS, "ran")
    jobs = project.jobs()
    assert [j.run.stream for j in jobs] == [True] * 5 + [False]
    assert [j.status for j in jobs] == ["succeeded"] * 6
    assert any("job001 watches for new files" in line for line in lines)
    for job in jobs[:5]:  # each movie / micrograph processed once
        assert len(project.item_results(job.id)) == 2
    _check_against_truth(project, sim)
    # a run without streaming finds the same jobs
    again = run_workflow(project, wf, echo=lambda _: None)
    assert _actions(again) == dict.fromkeys(STEPS, "skipped")
