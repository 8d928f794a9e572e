"""``cryospa pick log``: accuracy on simulated micrographs, RELION's files, streaming, bad input."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cryospa.core.picking import match_positions
from cryospa.errors import ParameterError
from cryospa.io.coords import read_coordinates
from cryospa.io.mrc import write_mrc
from cryospa.io.star import read_relion_star, read_star
from cryospa.jobs._coords import coordinate_file_name
from cryospa.project.project import JobRecord, Project
from cryospa.project.runner import stop_job, submit
from cryospa.project.schema import RunOptions, get_job_type
from tests.conftest import requires_relion, run_relion
from tests.project.test_streaming import _wait_until_ended

#: A small set at the tutorial's dose (30.65 e/Å², 1.77 Å/px, LDH of ~92 Å) with 10 % junk.
SMALL = ("--level", "micrographs", "--n_micrographs", "2", "--mic_size", "512",
         "--particles_per_micrograph", "20", "--junk_fraction", "0.1")
#: LoG diameters bracketing LDH (the tutorial's 150-180 Å are for beta-galactosidase).
LDH = {"diam_min": 80.0, "diam_max": 110.0}


def _import(project: Project, sim: Path, folder: str = "Sim") -> JobRecord:
    (project.root / folder).symlink_to(sim / "Micrographs")
    record = submit(project, get_job_type("import micrographs"),
                    {"micrographs": f"{folder}/*.mrc", "angpix": 1.77, "kv": 200.0, "cs": 1.4},
                    {})
    assert record.status == "succeeded", record.error
    return record


def _pick(project: Project, mics: JobRecord, **params: object) -> JobRecord:
    return submit(project, get_job_type("pick log"), {**LDH, **params},
                  {"micrographs": [mics.name]})


def scores(project: Project, job: JobRecord, sim: Path) -> dict[str, float]:
    """Precision, recall and F1 of a pick job against the simulation's true particles.

    A pick matches a particle within 0.2 particle diameters (one to one). Picks on junk
    (within one diameter of an aggregate, broken particle or contamination centre) count as
    false positives (``f1``: a user wants particles) or are left out (``f1_no_junk``).
    """
    info = json.loads((sim / "ground_truth" / "simulation.json").read_text())
    diam_px = info["particle_diameter_angstrom"] / info["pixel_size_angstrom"]
    truth = read_star(sim / "ground_truth" / "particles_true.star")["particles"]
    junk = read_star(sim / "ground_truth" / "junk_true.star")["particles"]
    listing = read_star(project.path(job.dir) / "coordinates.star")["coordinate_files"]
    n_pick = n_true = n_match = n_junk = 0
    for mic, coords in zip(listing["rlnMicrographName"], listing["rlnMicrographCoordinates"],
                           strict=True):
        name = "Micrographs/" + Path(mic).name
        picks = read_coordinates(project.root / coords)[["rlnCoordinateX", "rlnCoordinateY"]]
        found = torch.tensor(picks.to_numpy(float)).reshape(-1, 2)
        true = torch.tensor(truth.loc[truth["rlnMicrographName"] == name,
                                      ["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float))
        junk_xy = torch.tensor(junk.loc[junk["rlnMicrographName"] == name,
                                        ["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float))
        i_found, _ = match_positions(found, true, max_distance=0.2 * diam_px)
        rest = np.setdiff1d(np.arange(len(found)), i_found.numpy())
        if len(rest) and len(junk_xy):
            n_junk += int((torch.cdist(found[rest], junk_xy).min(dim=1).values < diam_px).sum())
        n_pick, n_true, n_match = n_pick + len(found), n_true + len(true), n_match + len(i_found)
    recall = n_match / n_true
    precision = n_match / max(n_pick, 1)
    precision_nj = n_match / max(n_pick - n_junk, 1)
    return {
        "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
        "precision_no_junk": precision_nj,
        "f1_no_junk": 2 * precision_nj * recall / (precision_nj + recall),
        "picks": n_pick, "junk_picks": n_junk,
    }


def test_coordinate_file_name_as_relion() -> None:
    s = "_autopick.star"
    assert coordinate_file_name("MotionCorr/job002/Movies/m1.mrc", s) == "Movies/m1_autopick.star"
    assert coordinate_file_name("Import/job001/Mics/a/b.mrc", s) == "Mics/a/b_autopick.star"
    assert coordinate_file_name("Mics/mic1.mrc", s) == "Mics/mic1_autopick.star"
    assert coordinate_file_name("/data/job12/x.mrc", "_s.star") == "data/job12/x_s.star"


def test_pick_log_f1_on_simulated_micrographs(
    project: Project, simulated: Callable[..., Path]
) -> None:
    sim = simulated(*SMALL)
    mics = _import(project, sim)
    rec = _pick(project, mics, plots=1)
    assert rec.status == "succeeded", rec.error
    s = scores(project, rec, sim)
    assert s["f1"] >= 0.8, s  # junk picked counts as wrong
    assert s["f1_no_junk"] >= s["f1"]
    assert s["recall"] >= 0.9, s
    # RELION's layout and the summary
    job = project.path(rec.dir)
    listing = read_star(job / "coordinates.star")["coordinate_files"]
    assert listing["rlnMicrographName"].tolist() == [
        "Import/job001/Micrographs/mic001.mrc", "Import/job001/Micrographs/mic002.mrc"]
    assert listing["rlnMicrographCoordinates"].tolist() == [
        f"{rec.dir}/Micrographs/mic00{k}_autopick.star" for k in (1, 2)]
    table = read_coordinates(job / "Micrographs" / "mic001_autopick.star")
    assert list(table.columns) == ["rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit",
                                   "rlnClassNumber", "rlnAnglePsi"]
    assert (table["rlnAutopickFigureOfMerit"] >= 0).all()  # default threshold: 0 sd
    assert (table["rlnAutopickFigureOfMerit"] < 5).all()  # default upper threshold: 5 sd
    assert (job / "Micrographs" / "mic001_autopick.png").is_file()  # --plots 1: the first only
    assert not (job / "Micrographs" / "mic002_autopick.png").exists()
    assert (job / "picks_per_micrograph.png").is_file()
    suffix_file = (job / "coords_suffix_autopick.star").read_text()
    assert suffix_file.strip() == f"{mics.dir}/micrographs.star"
    summary = read_star(job / "summary.star")[""]
    assert summary["rlnGroupNrParticles"].sum() == s["picks"]
    assert rec.summary.startswith(f"{s['picks']} picks on 2 micrographs")
    # a higher threshold: fewer picks, all of them among the previous ones' best
    strict = _pick(project, mics, threshold=1.0)
    s2 = scores(project, strict, sim)
    assert s2["picks"] < s["picks"] and s2["precision"] >= s["precision"]


@pytest.mark.slow
def test_pick_log_f1_on_the_tutorial_set(
    project: Project, simulated: Callable[..., Path]
) -> None:
    # the tutorial's data set at full size: 12 micrographs of 1024^2, 720 particles, 84 junk
    sim = simulated("--preset", "tutorial", "--level", "micrographs")
    rec = _pick(project, _import(project, sim))
    s = scores(project, rec, sim)
    assert s["f1"] >= 0.8 and s["recall"] >= 0.95, s


def test_pick_log_bad_and_empty_micrographs(
    project: Project, simulated: Callable[..., Path]
) -> None:
    sim = simulated(*SMALL)
    raw = project.root / "Raw"
    raw.mkdir()
    shutil.copy(sim / "Micrographs" / "mic001.mrc", raw / "mic001.mrc")
    write_mrc(raw / "mic002.mrc", np.full((512, 512), 96.0, np.float32), voxel_size_angstrom=1.77)
    shutil.copy(sim / "Micrographs" / "mic002.mrc", raw / "mic003.mrc")
    mics = submit(project, get_job_type("import micrographs"),
                  {"micrographs": "Raw/*.mrc", "angpix": 1.77}, {})
    # mic003 is cut short after the import checked it
    data = (raw / "mic003.mrc").read_bytes()
    (raw / "mic003.mrc").write_bytes(data[: len(data) // 2])
    rec = _pick(project, mics)
    assert rec.status == "failed"
    assert "1 of 3 items failed" in (rec.error or "") and "mic003.mrc" in (rec.error or "")
    failed = project.item_results(rec.id, "failed")
    assert list(failed) == ["Import/job001/Micrographs/mic003.mrc"]
    assert "truncated" in str(failed["Import/job001/Micrographs/mic003.mrc"]) or "size" in str(
        failed["Import/job001/Micrographs/mic003.mrc"])
    # the others finished: a flat micrograph has no picks (an empty table), mic001 has some
    done = project.item_results(rec.id)
    assert done["Import/job001/Micrographs/mic002.mrc"]["n"] == 0
    assert done["Import/job001/Micrographs/mic001.mrc"]["n"] > 10
    empty = read_coordinates(project.path(rec.dir) / "Micrographs" / "mic002_autopick.star")
    assert len(empty) == 0 and "rlnAutopickFigureOfMerit" in empty.columns
    listing = read_star(project.path(rec.dir) / "coordinates.star")["coordinate_files"]
    assert len(listing) == 2


def test_pick_log_parameter_errors(project: Project, simulated: Callable[..., Path]) -> None:
    mics = _import(project, simulated(*SMALL))
    with pytest.raises(ParameterError, match="smaller than --diam-min"):
        _pick(project, mics, diam_min=120.0, diam_max=100.0)
    with pytest.raises(ParameterError, match="--max-res"):
        _pick(project, mics, max_res=0.0)
    assert [j.type for j in project.jobs()] == ["import micrographs"]


def test_pick_log_streams_behind_a_streaming_import(
    project: Project, simulated: Callable[..., Path]
) -> None:
    sim = simulated(*SMALL)
    sources = sorted((sim / "Micrographs").glob("*.mrc")) * 2
    watched = project.root / "Detector"
    watched.mkdir()
    upstream = submit(project, get_job_type("import micrographs"),
                      {"micrographs": "Detector/*.mrc", "angpix": 1.77, "settle": 0.3}, {},
                      run=RunOptions(stream=True, poll=0.1), background=True)
    picker = submit(project, get_job_type("pick log"), {**LDH, "plots": 0},
                    {"micrographs": [upstream.name]},
                    run=RunOptions(stream=True, poll=0.2), background=True)
    assert picker.status == "running"

    def arrive() -> None:
        for k, src in enumerate(sources):
            (watched / f"m{k:02d}.mrc").write_bytes(src.read_bytes())
            time.sleep(0.4)

    writer = threading.Thread(target=arrive)
    writer.start()
    writer.join(timeout=60)
    stop_job(project, upstream.id)  # the acquisition ended; the picker follows its input
    assert _wait_until_ended(project, upstream.id, 60) == "succeeded"
    assert _wait_until_ended(project, picker.id, 120) == "succeeded"
    names = [f"{upstream.dir}/Micrographs/m{k:02d}.mrc" for k in range(len(sources))]
    assert sorted(project.item_results(picker.id)) == names  # every micrograph, once
    listing = read_star(project.path(picker.dir) / "coordinates.star")["coordinate_files"]
    assert listing["rlnMicrographName"].tolist() == names
    # the same micrograph gives the same picks whenever it arrives
    a = read_coordinates(project.path(picker.dir) / "Micrographs" / "m00_autopick.star")
    b = read_coordinates(project.path(picker.dir) / "Micrographs" / "m02_autopick.star")
    np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float))


@requires_relion
@pytest.mark.relion
def test_relion_extracts_our_picks(project: Project, simulated: Callable[..., Path]) -> None:
    mics = _import(project, simulated(*SMALL))
    rec = _pick(project, mics)
    box = 64
    run_relion(["relion_preprocess", "--i", f"{mics.dir}/micrographs.star",
                "--coord_dir", f"{rec.dir}/", "--coord_suffix", "_autopick.star",
                "--part_star", "Extract/particles.star", "--part_dir", "Extract/", "--extract",
                "--extract_size", str(box), "--invert_contrast", "--norm", "--bg_radius", "25"],
               project.root)
    extracted = read_relion_star(project.root / "Extract" / "particles.star").data
    ours = []
    for k in (1, 2):
        t = read_coordinates(project.path(rec.dir) / "Micrographs" / f"mic00{k}_autopick.star")
        inside = ((t["rlnCoordinateX"] >= box / 2) & (t["rlnCoordinateX"] < 512 - box / 2)
                  & (t["rlnCoordinateY"] >= box / 2) & (t["rlnCoordinateY"] < 512 - box / 2))
        ours.append(t[inside])
    expected = np.concatenate([o[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
                               for o in ours])
    got = extracted[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float)
    assert len(got) >= len(expected) > 20  # RELION read every pick whose box fits
    for xy in expected:
        assert np.abs(got - xy).max(axis=1).min() < 1e-3
