"""``cryospa pick template``: accuracy on simulated micrographs, RELION's files, bad input.

The data set is the pick log tests' one (2 micrographs of 512² at the tutorial's dose, 1.77
Å/px, 20 LDH particles each plus 10 % junk); the CTF input is a micrographs STAR with the true
CTF written into the project as a plain file (as the extract tests do); the references are
projections of the true map at twice the pixel size, as a ClassAverages STAR set and as a stack.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryospa.core.fourier import fourier_rescale
from cryospa.core.projection import project_volume
from cryospa.core.rotations import euler_to_matrix
from cryospa.errors import InputFileError, ParameterError
from cryospa.io.coords import read_coordinates
from cryospa.io.mrc import format_image_name, read_mrc, write_mrc
from cryospa.io.star import RelionTable, read_relion_star, read_star, write_relion_star
from cryospa.project.project import JobRecord, Project
from cryospa.project.runner import stop_job, submit
from cryospa.project.schema import RunOptions, get_job_type
from tests.jobs.test_pick_log import LDH, SMALL, scores
from tests.project.test_streaming import _wait_until_ended

CTF_STAR = "CtfTruth/micrographs_ctf.star"
REFS_STAR = "Refs/class_averages.star"
REFS_STACK = "Refs/refs.mrcs"
N_REFS = 12


def _run(project: Project, job: str, params: dict[str, object],
         inputs: dict[str, list[str]]) -> JobRecord:
    return submit(project, get_job_type(job), params, inputs)


def _setup(project: Project, sim: Path) -> JobRecord:
    """Import the micrographs; write the true-CTF STAR and the references into the project."""
    (project.root / "Sim").symlink_to(sim / "Micrographs")
    mics = _run(project, "import micrographs",
                {"micrographs": "Sim/*.mrc", "angpix": 1.77, "kv": 200.0, "cs": 1.4, "q0": 0.1},
                {})
    assert mics.status == "succeeded", mics.error
    table = read_relion_star(project.root / mics.dir / "micrographs.star")
    truth = read_relion_star(sim / "ground_truth" / "micrographs_ctf.star").data
    data = table.data.copy()
    data["stem"] = [Path(n).stem for n in data["rlnMicrographName"]]
    truth = truth.assign(stem=[Path(n).stem for n in truth["rlnMicrographName"]])
    data = data.merge(truth[["stem", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]],
                      on="stem").drop(columns="stem")
    (project.root / "CtfTruth").mkdir()
    write_relion_star(project.root / CTF_STAR, RelionTable("micrographs", data, table.optics))
    # references: projections of the true map in 12 random directions, at 3.54 Å/px
    vol, _ = read_mrc(sim / "ground_truth" / "map_class001.mrc")
    u = torch.rand(N_REFS, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    angles = torch.stack([360 * u[:, 0], torch.rad2deg(torch.arccos(1 - 2 * u[:, 1])),
                          torch.zeros(N_REFS, dtype=torch.float64)], dim=-1)
    proj = project_volume(torch.from_numpy(vol.copy()).double(), euler_to_matrix(angles))
    b = proj.shape[-1]
    refs = fourier_rescale(proj, (b // 2, b // 2)).float().numpy()
    (project.root / "Refs").mkdir()
    write_mrc(project.root / REFS_STACK, refs, voxel_size_angstrom=3.54)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnImagePixelSize": [3.54], "rlnImageSize": [b // 2],
                           "rlnImageDimensionality": [2]})
    rows = pd.DataFrame({
        "rlnImageName": [format_image_name(i, REFS_STACK) for i in range(N_REFS)],
        "rlnClassNumber": np.arange(1, N_REFS + 1),
        "rlnClassDistribution": np.full(N_REFS, 1 / N_REFS),
        "rlnOpticsGroup": np.ones(N_REFS, dtype=np.int64),
    })
    write_relion_star(project.root / REFS_STAR, RelionTable("particles", rows, optics))
    return mics


def _pick(project: Project, refs: str = REFS_STAR, mics: str = CTF_STAR,
          **params: object) -> JobRecord:
    return _run(project, "pick template", {"plots": 1, **params},
                {"micrographs": [mics], "references": [refs]})


def test_pick_template_f1_and_relion_form(
    project: Project, simulated: Callable[..., Path]
) -> None:
    sim = simulated(*SMALL)
    mics = _setup(project, sim)
    rec = _pick(project)
    assert rec.status == "succeeded", rec.error
    s = scores(project, rec, sim)
    assert s["f1"] >= 0.9 and s["recall"] >= 0.95, s  # junk picked counts as wrong
    # the same files, in the same form, as LoG picking (which relion_preprocess reads)
    log = _run(project, "pick log", {**LDH, "plots": 0}, {"micrographs": [CTF_STAR]})
    assert log.status == "succeeded", log.error
    s_log = scores(project, log, sim)
    assert s["precision"] > s_log["precision"]
    job, job_log = project.path(rec.dir), project.path(log.dir)
    # each micrograph's threshold splits its candidates (measured 0.45 and 0.53)
    found = re.search(r"auto threshold ([0-9.]+) to ([0-9.]+)", rec.summary)
    assert found is not None, rec.summary
    lowest = float(found.group(1))
    assert 0.35 < lowest <= float(found.group(2)) < 0.65
    listing = read_star(job / "coordinates.star")["coordinate_files"]
    listing_log = read_star(job_log / "coordinates.star")["coordinate_files"]
    assert listing["rlnMicrographName"].tolist() == listing_log["rlnMicrographName"].tolist()
    assert [p.replace(rec.dir, "") for p in listing["rlnMicrographCoordinates"]] == [
        p.replace(log.dir, "") for p in listing_log["rlnMicrographCoordinates"]]
    assert ((job / "coords_suffix_autopick.star").read_text()
            == (job_log / "coords_suffix_autopick.star").read_text())
    for k in (1, 2):
        table = read_coordinates(job / "Micrographs" / f"mic00{k}_autopick.star")
        table_log = read_coordinates(job_log / "Micrographs" / f"mic00{k}_autopick.star")
        assert list(table.columns) == list(table_log.columns) == [
            "rlnCoordinateX", "rlnCoordinateY", "rlnAutopickFigureOfMerit", "rlnClassNumber",
            "rlnAnglePsi"]
        assert table["rlnClassNumber"].between(1, N_REFS).all()
        assert table["rlnAnglePsi"].between(0, 360, inclusive="left").all()
        assert (table["rlnAutopickFigureOfMerit"] >= lowest).all()  # the micrograph's own
        assert (table["rlnAutopickFigureOfMerit"] <= 1).all()
        assert table["rlnAutopickFigureOfMerit"].is_monotonic_decreasing
    summary = read_star(job / "summary.star")[""]
    assert summary["rlnGroupNrParticles"].sum() == s["picks"]
    assert rec.summary.startswith(f"{s['picks']} picks on 2 micrographs")
    for name in ("picks_per_micrograph.png", "references.png", "fom_histogram.png",
                 "Micrographs/mic001_autopick.png"):
        assert (job / name).is_file(), name
    assert not (job / "Micrographs" / "mic002_autopick.png").exists()  # --plots 1
    options = read_star(job / "job.star")["joboptions_values"]
    value = dict(zip(options["rlnJobOptionVariable"], options["rlnJobOptionValue"], strict=True))
    assert value["do_refs"] == "Yes" and value["fn_refs_autopick"] == REFS_STAR
    # cryspa extract reads the picks and keeps their class and angle
    ext = _run(project, "extract", {"box": 64}, {"micrographs": [CTF_STAR],
                                                   "coordinates": [rec.name]})
    assert ext.status == "succeeded", ext.error
    parts = read_relion_star(project.path(ext.dir) / "particles.star").data
    assert len(parts) > 0.8 * s["picks"]
    assert parts["rlnClassNumber"].between(1, N_REFS).all()
    assert {"rlnAnglePsi", "rlnAutopickFigureOfMerit"} <= set(parts.columns)
    assert mics.status == "succeeded"


def test_pick_template_with_a_stack_and_chosen_classes(
    project: Project, simulated: Callable[..., Path]
) -> None:
    sim = simulated(*SMALL)
    _setup(project, sim)
    # a plain .mrcs is a set of references; its pixel size from --references-angpix
    rec = _pick(project, refs=REFS_STACK, references_angpix=3.54, classes="2, 5-7", plots=0)
    assert rec.status == "succeeded", rec.error
    info = json.loads((sim / "ground_truth" / "simulation.json").read_text())
    used = set()
    for k in (1, 2):
        table = read_coordinates(project.path(rec.dir) / "Micrographs" / f"mic00{k}_autopick.star")
        used |= set(table["rlnClassNumber"].tolist())
    assert used and used <= {2, 5, 6, 7}
    assert scores(project, rec, sim)["recall"] >= 0.8
    # the diameters: from the references (the particle's) and 1.5 times it (the mask)
    done = project.item_results(rec.id)
    first = next(iter(done.values()))
    assert first["diameter"] == pytest.approx(info["particle_diameter_angstrom"], rel=0.1)
    assert first["mask_diameter"] == pytest.approx(1.5 * first["diameter"])
    # the header's pixel size is used when --references-angpix is not given
    rec2 = _pick(project, refs=REFS_STACK, classes="2,5-7", plots=0)
    assert rec2.status == "succeeded", rec2.error
    a = read_coordinates(project.path(rec.dir) / "Micrographs" / "mic001_autopick.star")
    b = read_coordinates(project.path(rec2.dir) / "Micrographs" / "mic001_autopick.star")
    np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float))


def test_classes_as_words_or_commas(project: Project) -> None:
    # --classes 1 3 5 (separate words) reads as --classes 1,3,5, on the command line and from
    # Python (a list); a range may have spaces around its dash
    from cryospa.cli.main import build_parser
    from cryospa.jobs.pick_template import parse_class_numbers
    from cryospa.project.schema import params_from_namespace, validate_params

    jt = get_job_type("pick template")
    for words, stored in ((["1", "3", "5"], "1,3,5"), (["1,3,5"], "1,3,5"),
                          (["2-4", "7"], "2-4,7"), (["2-4,", "7"], "2-4,7")):
        args = build_parser("pick").parse_args(["pick", "template", "--micrographs", "job002",
                                                "--references", "job006", "--classes", *words])
        raw, _, _ = params_from_namespace(jt, args)
        assert raw["classes"] == stored
        assert validate_params(jt, raw, project_dir=project.root)["classes"] == stored
    assert validate_params(jt, {"classes": [1, 3, 5]},
                           project_dir=project.root)["classes"] == "1,3,5"
    assert parse_class_numbers("1 3 5") == parse_class_numbers("1,3,5") == [1, 3, 5]
    assert parse_class_numbers("2 - 4, 7") == [2, 3, 4, 7]
    with pytest.raises(ParameterError, match="cannot read"):
        parse_class_numbers("1 three")


def test_pick_template_bad_input(project: Project, simulated: Callable[..., Path]) -> None:
    sim = simulated(*SMALL)
    mics = _setup(project, sim)
    n_jobs = len(project.jobs())
    # micrographs without CTF values
    mic_star = f"{mics.dir}/micrographs.star"
    with pytest.raises(InputFileError, match=r"no CTF values.*--no-ctf"):
        _pick(project, mics=mic_star)
    # references without a pixel size
    vol, _ = read_mrc(project.root / REFS_STACK)
    write_mrc(project.root / "Refs/no_size.mrcs", vol, voxel_size_angstrom=0.0)
    with pytest.raises(InputFileError, match=r"pixel size is unknown.*--references-angpix"):
        _pick(project, refs="Refs/no_size.mrcs")
    # classes that are not there, a selection of nothing, an empty set, flat references
    with pytest.raises(ParameterError, match=r"--classes: 13, 14 not in class_averages.star"):
        _pick(project, classes="1,13-14")
    with pytest.raises(ParameterError, match="--classes: cannot read"):
        _pick(project, classes="two")
    star = read_relion_star(project.root / REFS_STAR)
    write_relion_star(project.root / "Refs/empty.star",
                      RelionTable("particles", star.data.iloc[:0], star.optics))
    with pytest.raises(InputFileError, match="no references"):
        _pick(project, refs="Refs/empty.star")
    write_mrc(project.root / "Refs/flat.mrcs", np.zeros((2, 44, 44), np.float32),
              voxel_size_angstrom=3.54)
    with pytest.raises(InputFileError, match="flat"):
        _pick(project, refs="Refs/flat.mrcs")
    # a particle larger than the references' box; a low-pass finer than Nyquist
    with pytest.raises(ParameterError, match="larger than the references' box"):
        _pick(project, particle_diameter=200.0)
    with pytest.raises(ParameterError, match="finer than the micrographs' Nyquist"):
        _pick(project, lowpass=3.0)
    assert len(project.jobs()) == n_jobs  # nothing ran
    # --no-ctf picks micrographs without CTF values
    rec = _pick(project, mics=mic_star, ctf=False, plots=0)
    assert rec.status == "succeeded", rec.error
    assert scores(project, rec, sim)["recall"] >= 0.8
    # a micrograph whose CTF fit failed is a failed item; the other one is picked
    table = read_relion_star(project.root / CTF_STAR)
    data = table.data.copy()
    data.loc[1, ["rlnDefocusU", "rlnDefocusV"]] = 0.0
    write_relion_star(project.root / "CtfTruth/one_bad.star",
                      RelionTable("micrographs", data, table.optics))
    rec = _pick(project, mics="CtfTruth/one_bad.star", plots=0)
    assert rec.status == "failed"
    assert "1 of 2 items failed" in (rec.error or "")
    failed = project.item_results(rec.id, "failed")
    assert list(failed) == [data["rlnMicrographName"][1]]
    assert "no CTF fit" in str(failed[data["rlnMicrographName"][1]])
    assert len(project.item_results(rec.id)) == 1


def test_pick_template_streams_behind_a_streaming_import(
    project: Project, simulated: Callable[..., Path]
) -> None:
    sim = simulated(*SMALL)
    _setup(project, sim)
    sources = sorted((sim / "Micrographs").glob("*.mrc")) * 2
    watched = project.root / "Detector"
    watched.mkdir()
    upstream = submit(project, get_job_type("import micrographs"),
                      {"micrographs": "Detector/*.mrc", "angpix": 1.77, "settle": 0.3}, {},
                      run=RunOptions(stream=True, poll=0.1), background=True)
    picker = submit(project, get_job_type("pick template"), {"ctf": False, "plots": 0},
                    {"micrographs": [upstream.name], "references": [REFS_STAR]},
                    run=RunOptions(stream=True, poll=0.2), background=True)
    assert picker.status == "running"

    def arrive() -> None:
        for k, src in enumerate(sources):
            (watched / f"m{k:02d}.mrc").write_bytes(src.read_bytes())
            time.sleep(0.4)

    writer = threading.Thread(target=arrive)
    writer.start()
    writer.join(timeout=60)
    stop_job(project, upstream.id)
    assert _wait_until_ended(project, upstream.id, 60) == "succeeded"
    assert _wait_until_ended(project, picker.id, 120) == "succeeded"
    names = [f"{upstream.dir}/Micrographs/m{k:02d}.mrc" for k in range(len(sources))]
    assert sorted(project.item_results(picker.id)) == names  # every micrograph, once
    listing = read_star(project.path(picker.dir) / "coordinates.star")["coordinate_files"]
    assert listing["rlnMicrographName"].tolist() == names
    a = read_coordinates(project.path(picker.dir) / "Micrographs" / "m00_autopick.star")
    b = read_coordinates(project.path(picker.dir) / "Micrographs" / "m02_autopick.star")
    assert len(a) > 10
    np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float))
