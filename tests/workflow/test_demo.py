"""``cryospa demo``: its workflow, the true-map FSC, the mask threshold, and runs of it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cryospa.cli.main import main as cli
from cryospa.io.star import read_relion_star
from cryospa.project.project import Project
from cryospa.workflow.demo import (
    DEMO_SPECIMEN_VOLUME_A3,
    TwoPassEcho,
    _apply,
    demo_workflow,
    fsc_to_truth,
    runnable_until,
    summarise,
    volume_threshold,
)
from cryospa.workflow.runner import read_state
from cryospa.workflow.spec import find_job_type

# --------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------


def _blobs(n: int, seed: int = 0) -> np.ndarray:
    """An asymmetric volume: a few Gaussian blobs of different sizes around the centre."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n].astype(np.float64) - n // 2
    out = np.zeros((n, n, n))
    for _ in range(12):
        c = rng.uniform(-n / 5, n / 5, 3)
        s = rng.uniform(1.0, 2.5)
        out += rng.uniform(0.5, 1.5) * np.exp(-((z - c[0])**2 + (y - c[1])**2
                                                + (x - c[2])**2) / (2 * s**2))
    return out.astype(np.float32)


def test_fsc_to_truth_undoes_axes_hand_shift_and_pixel_size() -> None:
    from cryospa.jobs.resize import resize_volume

    truth = _blobs(40)  # 2 Å/px
    resampled, apix = resize_volume(torch.from_numpy(truth).double(), pixel_size_angstrom=2.0,
                                    new_pixel_size_angstrom=2.5, new_box=32)
    assert apix == pytest.approx(2.5)
    # a map as a de novo refinement may return it: axes swapped, mirrored, shifted
    moved = _apply(resampled, (2, 0, 1), (True, False, False))
    moved = torch.roll(moved, (2, -1, 3), dims=(0, 1, 2)).float().numpy()
    result = fsc_to_truth(moved, 2.5, truth, 2.0)
    assert result["hand_flipped"] is True
    assert result["fsc"][: 32 // 2 - 1].min() > 0.99
    assert result["resolution_0.5"] == pytest.approx(5.0, rel=0.05)  # Nyquist of 2.5 Å/px
    # noise limits it where it should: noise added above ~10 Å
    rng = np.random.default_rng(1)
    noisy = moved + rng.normal(0, 3 * moved.std(), moved.shape).astype(np.float32)
    worse = fsc_to_truth(noisy, 2.5, truth, 2.0)
    assert worse["resolution_0.5"] > 7.0
    with pytest.raises(ValueError, match="cubic"):
        fsc_to_truth(moved[:, :, :30], 2.5, truth, 2.0)


def test_volume_threshold_encloses_the_volume() -> None:
    n, apix = 48, 2.0
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    radial = -np.sqrt(z**2 + y**2 + x**2).astype(np.float64)  # higher inside
    volume_a3 = 4 / 3 * np.pi * (10 * apix) ** 3  # a ball of radius 10 px
    level = volume_threshold(radial, pixel_size_angstrom=apix, specimen_volume_a3=volume_a3,
                             lowpass_angstrom=0)
    assert -level == pytest.approx(10.0, abs=0.3)
    # voxels at equal distances make the count step in whole shells
    assert (radial >= level).sum() * apix**3 == pytest.approx(volume_a3, rel=0.05)
    with pytest.raises(ValueError, match="cubic"):
        volume_threshold(radial[0], pixel_size_angstrom=apix, specimen_volume_a3=volume_a3)


def test_demo_workflow_sizes_follow_the_pixel_size() -> None:
    wf = demo_workflow(threads=3)
    steps = {s.name: s for s in wf.steps}
    assert wf.name == "demo" and wf.variables["angpix"] == 1.77
    assert (steps["log_particles"].params["box"], steps["log_particles"].params["rescale"]) == (
        84, 42)
    assert steps["log_classes"].params["particle_diameter"] == 120
    assert steps["log_classes"].params["threads"] == 3
    assert steps["refine"].params["symmetry"] == "D2"
    assert steps["best_class"].inputs["class3d"][0].step == "class3d"
    assert steps["reference"].params["angpix_out"] == pytest.approx(1.77 * 84 / 64)
    # the mask's threshold and the pixel size are set from outside, comments kept
    wf = demo_workflow(angpix=3.54, mask_threshold=0.0123)
    steps = {s.name: s for s in wf.steps}
    assert steps["mask"].params["threshold"] == pytest.approx(0.0123)
    assert steps["log_particles"].params["box"] == 42
    assert "# the simulated data set" in wf.text
    # LDH's volume (PDB 1I10: 4 x 332 residues) is about 178 nm³
    assert 150e3 < DEMO_SPECIMEN_VOLUME_A3 < 200e3


def test_the_demo_stops_before_job_types_not_installed() -> None:
    wf = demo_workflow()
    last, missing = runnable_until(wf, "good_particles")
    assert (last, missing) == ("good_particles", [])
    last, missing = runnable_until(wf, None)
    absent = [s for s in wf.steps if find_job_type(s.job) is None]
    if absent:
        first = absent[0]
        assert last == wf.steps[first.index - 2].name
        assert first.job in missing
    else:
        assert (last, missing) == ("postprocess", [])


def test_second_pass_does_not_list_the_first_pass_steps_as_skipped() -> None:
    lines: list[str] = []
    echo = TwoPassEcho(lines.append)
    echo("[1/3] movies: running import")
    echo("[1/3] movies: job001 succeeded in 1.0 s (Import/job001/)")
    echo.first_pass.update({"movies"})
    echo("[1/3] movies: skipped: job001 finished with the same parameters (Import/job001/)")
    echo("[1/3] movies: job001 succeeded in 1.0 s (Import/job001/)")
    echo("[3/3] mask: skipped: job003 finished with the same parameters (MaskCreate/job003/)")
    assert lines == ["[1/3] movies: running import",
                     "[1/3] movies: job001 succeeded in 1.0 s (Import/job001/)",
                     "[3/3] mask: skipped: job003 finished with the same parameters "
                     "(MaskCreate/job003/)"]


# --------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------


def test_demo_plumbing_on_tiny_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "demo"
    args = ["demo", "--preset", "tiny", "--project", str(folder), "--until", "log_particles",
            "--threads", "1"]
    # a project whose simulation was killed half-way: the partial data set is made anew
    Project.init(folder)
    (folder / "Simulated.partial" / "Movies").mkdir(parents=True)
    (folder / "Simulated.partial" / "Movies" / "mov001.tiff").write_bytes(b"half a movie")
    assert cli(args) == 0
    assert not (folder / "Simulated.partial").exists()
    out = capsys.readouterr().out
    project = Project.open(folder)
    truth = json.loads((folder / "Simulated/ground_truth/simulation.json").read_text())
    state = read_state(project, "demo")
    assert list(state) == ["movies", "motion", "ctf", "log_picks", "log_particles"]
    assert all(project.job(j).status == "succeeded" for j in state.values())
    # acquisition values came from the simulation, and the summary counts what was made
    particles = read_relion_star(
        project.path(project.job(state["log_particles"]).dir) / "particles.star", "particles")
    assert particles.optics["rlnImagePixelSize"].iloc[0] == pytest.approx(3.54)
    assert particles.optics["rlnVoltage"].iloc[0] == truth["microscope"]["voltage_kv"]
    summary = summarise(project, demo_workflow(angpix=3.54), folder / "Simulated")
    assert summary.counts["movies"] == str(truth["n_micrographs"])
    assert summary.counts["micrographs"] == str(truth["n_micrographs"])
    assert summary.counts["particles, LoG picks"] == str(len(particles.data))
    assert [s[0] for s in summary.steps] == list(state)
    assert "stopped after step 'log_particles'" in out and "wall time per step" in out
    # again: every step is skipped, nothing new is made
    n_jobs = len(project.jobs())
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert out.count("skipped") == 5 and "made earlier" in out
    assert len(Project.open(folder).jobs()) == n_jobs
    # a folder that is not a project is refused; so is an unknown step
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_text("x")
    assert cli(["demo", "--project", str(other), "--preset", "tiny"]) == 2
    assert cli(["demo", "--project", str(tmp_path / "new"), "--until", "nope"]) == 2
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_demo_on_the_tutorial_data(tmp_path: Path) -> None:
    """The demo as a user runs it: about 20 min on 2 cores (23 min measured on a loaded machine)."""
    folder = tmp_path / "demo"
    assert cli(["demo", "--project", str(folder), "--threads", "2"]) == 0
    project = Project.open(folder)
    truth = json.loads((folder / "Simulated/ground_truth/simulation.json").read_text())
    wf = demo_workflow()
    summary = summarise(project, wf, folder / "Simulated")
    n_true = truth["n_particles"]
    assert int(summary.counts["movies"]) == truth["n_micrographs"] == 12
    # template picking finds about the true particles; 2D selection keeps most of them
    assert 0.8 * n_true <= int(summary.counts["particles, template"]) <= 1.3 * n_true
    assert int(summary.counts["particles kept (2D)"]) >= 0.6 * n_true
    last, _ = runnable_until(wf, None)
    if last == "postprocess":  # the 3D steps are installed: the map must match the truth
        assert summary.resolution_angstrom is not None and summary.truth is not None
        assert summary.resolution_angstrom < 10.0
        ratio = summary.resolution_angstrom / summary.truth["resolution_0.5"]
        assert abs(ratio - 1) <= 0.15, (summary.resolution_angstrom, summary.truth)
