"""``cryospa ctffind``: accuracy against the simulator's true CTF, RELION's files, saved power
spectra, skipped micrographs, streaming."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryospa.core.ctf_estimation import averaged_amplitude_spectrum
from cryospa.errors import ParameterError
from cryospa.io.coords import write_coordinates_star
from cryospa.io.mrc import read_mrc, write_mrc
from cryospa.io.star import RelionTable, read_relion_star, write_relion_star
from cryospa.jobs._coords import coordinate_file_name
from cryospa.project.project import JobRecord, Project
from cryospa.project.runner import stop_job, submit
from cryospa.project.schema import RunOptions, get_job_type
from tests.conftest import requires_relion, run_relion
from tests.project.test_streaming import _wait_until_ended

#: 8 micrographs of 512^2 at the tutorial's dose and pixel size (1.77 Å/px, 200 kV, Cs 1.4),
#: mean defocus 5,000 to 30,000 Å, astigmatism up to 1,500 Å.
SIM = ("--level", "micrographs", "--n_micrographs", "8", "--mic_size", "512",
       "--particles_per_micrograph", "6", "--defocus", "5000", "30000", "--astigmatism", "1500",
       "--seed", "11")
CTF_COLUMNS = ["rlnCtfImage", "rlnDefocusU", "rlnDefocusV", "rlnCtfAstigmatism",
               "rlnDefocusAngle", "rlnCtfFigureOfMerit", "rlnCtfMaxResolution"]


def _import(project: Project, sim: Path, folder: str = "Sim") -> JobRecord:
    (project.root / folder).symlink_to(sim / "Micrographs")
    record = submit(project, get_job_type("import micrographs"),
                    {"micrographs": f"{folder}/*.mrc", "angpix": 1.77, "kv": 200.0, "cs": 1.4,
                     "q0": 0.1}, {})
    assert record.status == "succeeded", record.error
    return record


def _ctffind(project: Project, micrographs: str, **params: object) -> JobRecord:
    return submit(project, get_job_type("ctffind"), {"plots": 0, **params},
                  {"micrographs": [micrographs]})


def _errors(project: Project, job: JobRecord, sim: Path) -> tuple[np.ndarray, np.ndarray]:
    """Defocus U / V errors (Å) of every micrograph, and angle errors (degrees) where the true
    astigmatism exceeds 500 Å, against the simulation's ground truth."""
    truth = read_relion_star(sim / "ground_truth" / "micrographs_ctf.star", "micrographs").data
    truth = truth.set_index(truth["rlnMicrographName"].map(lambda n: Path(n).name))
    ours = read_relion_star(project.path(job.dir) / "micrographs_ctf.star", "micrographs").data
    assert len(ours) == len(truth)
    t = truth.loc[ours["rlnMicrographName"].map(lambda n: Path(n).name)]
    du = ours["rlnDefocusU"].to_numpy() - t["rlnDefocusU"].to_numpy()
    dv = ours["rlnDefocusV"].to_numpy() - t["rlnDefocusV"].to_numpy()
    astig = (t["rlnDefocusU"] - t["rlnDefocusV"]).to_numpy()
    angle = (ours["rlnDefocusAngle"].to_numpy() - t["rlnDefocusAngle"].to_numpy() + 90) % 180 - 90
    return np.concatenate([du, dv]), np.abs(angle[astig > 500])


def test_ctffind_on_simulated_micrographs(
    project: Project, simulated: Callable[..., Path]
) -> None:
    sim = simulated(*SIM)
    mics = _import(project, sim)
    rec = _ctffind(project, mics.name, plots=2)
    assert rec.status == "succeeded", rec.error
    errors, angle_errors = _errors(project, rec, sim)
    assert np.sqrt(np.mean(errors**2)) < 100.0, errors
    assert len(angle_errors) >= 3 and angle_errors.max() < 5.0, angle_errors
    # RELION's table and layout
    job = project.path(rec.dir)
    table = read_relion_star(job / "micrographs_ctf.star", "micrographs")
    assert table.optics.equals(read_relion_star(project.path(mics.dir) / "micrographs.star").optics)
    data = table.data
    assert list(data.columns) == ["rlnMicrographName", "rlnOpticsGroup", *CTF_COLUMNS]
    assert data["rlnMicrographName"].tolist() == [
        f"{mics.dir}/Micrographs/mic{k:03d}.mrc" for k in range(1, 9)]
    assert data["rlnCtfImage"].tolist() == [
        f"{rec.dir}/Micrographs/mic{k:03d}.ctf:mrc" for k in range(1, 9)]
    assert (data["rlnDefocusU"] >= data["rlnDefocusV"]).all()
    np.testing.assert_allclose(data["rlnCtfAstigmatism"], data["rlnDefocusU"] - data["rlnDefocusV"])
    assert data["rlnDefocusAngle"].between(-90, 90).all()
    assert (data["rlnCtfFigureOfMerit"] > 0.1).all()
    assert data["rlnCtfMaxResolution"].between(3.54 - 1e-6, 8.0).all()
    image, info = read_mrc(job / "Micrographs" / "mic001.ctf")
    assert image.shape == (256, 256) and info.voxel_size_angstrom[0] == pytest.approx(1.77)
    for k in (1, 2):  # --plots 2: the first two only
        assert (job / "Micrographs" / f"mic00{k}_ctf.png").is_file()
        assert (job / "Micrographs" / f"mic00{k}_ctf1d.png").is_file()
    assert not (job / "Micrographs" / "mic003_ctf.png").exists()
    assert (job / "defocus.png").is_file()
    mean = 0.5 * (data["rlnDefocusU"] + data["rlnDefocusV"])
    assert rec.summary.startswith(
        f"8 micrographs, defocus {mean.min():.0f} to {mean.max():.0f} Å")
    assert f"median fit resolution {data['rlnCtfMaxResolution'].median():.2f} Å" in rec.summary
    results = project.item_results(rec.id)
    assert {r["source"] for r in results.values()} == {"micrograph"}


@pytest.mark.slow
def test_ctffind_defocus_accuracy_over_24_micrographs(
    project: Project, simulated: Callable[..., Path]
) -> None:
    """The acceptance set: 24 micrographs of 1024^2 (1.77 Å/px) from 5,000 to 30,000 Å."""
    sim = simulated("--level", "micrographs", "--n_micrographs", "24", "--mic_size", "1024",
                    "--particles_per_micrograph", "30", "--defocus", "5000", "30000",
                    "--astigmatism", "1500", "--seed", "12")
    rec = _ctffind(project, _import(project, sim).name)
    assert rec.status == "succeeded", rec.error
    errors, angle_errors = _errors(project, rec, sim)
    assert np.sqrt(np.mean(errors**2)) < 100.0, errors
    assert len(angle_errors) >= 10 and angle_errors.max() < 5.0, angle_errors


def test_ctffind_skips_unreadable_and_ringless_micrographs(
    project: Project, simulated: Callable[..., Path]
) -> None:
    sim = simulated(*SIM)
    raw = project.root / "Raw"
    raw.mkdir()
    for k in (1, 2, 3):
        shutil.copy(sim / "Micrographs" / f"mic00{k}.mrc", raw / f"mic00{k}.mrc")
    noise = np.random.default_rng(0).poisson(96.0, (512, 512)).astype(np.float32)
    write_mrc(raw / "mic004.mrc", noise, voxel_size_angstrom=1.77)  # counts, no rings
    mics = submit(project, get_job_type("import micrographs"),
                  {"micrographs": "Raw/*.mrc", "angpix": 1.77, "kv": 200.0, "cs": 1.4}, {})
    data = (raw / "mic003.mrc").read_bytes()  # cut short after the import checked it
    (raw / "mic003.mrc").write_bytes(data[: len(data) // 2])
    rec = _ctffind(project, mics.name)
    assert rec.status == "succeeded", rec.error
    done = project.item_results(rec.id)
    assert "truncated" in done[f"{mics.dir}/Micrographs/mic003.mrc"]["skipped"]
    assert "no Thon rings" in done[f"{mics.dir}/Micrographs/mic004.mrc"]["skipped"]
    table = read_relion_star(project.path(rec.dir) / "micrographs_ctf.star").data
    assert table["rlnMicrographName"].tolist() == [
        f"{mics.dir}/Micrographs/mic001.mrc", f"{mics.dir}/Micrographs/mic002.mrc"]
    assert rec.summary.startswith("2 micrographs")
    assert "; 2 skipped (first: " in rec.summary
    assert "skipped" in (project.path(rec.dir) / "run.out").read_text()


def _with_power_spectra(project: Project, sim: Path, *, spoil: bool) -> str:
    """A micrographs STAR as motioncorr writes it with --save_ps: each micrograph has a
    ``<stem>_PS.mrc`` (centred amplitude spectrum of 256 px, pixel size in the header). With
    ``spoil`` the micrographs themselves are replaced by white noise."""
    folder = project.root / "MC"
    folder.mkdir()
    names, spectra = [], []
    for k in (1, 2):
        image, _ = read_mrc(sim / "Micrographs" / f"mic00{k}.mrc")
        ps = averaged_amplitude_spectrum(torch.from_numpy(image), 256).numpy()
        write_mrc(folder / f"mic00{k}_PS.mrc", ps.astype(np.float32), voxel_size_angstrom=1.77)
        if spoil:
            image = np.random.default_rng(k).normal(100, 10, image.shape).astype(np.float32)
        write_mrc(folder / f"mic00{k}.mrc", image, voxel_size_angstrom=1.77)
        names.append(f"MC/mic00{k}.mrc")
        spectra.append(f"MC/mic00{k}_PS.mrc")
    data = pd.DataFrame({"rlnMicrographName": names, "rlnOpticsGroup": [1, 1],
                         "rlnCtfPowerSpectrum": spectra})
    optics = pd.DataFrame([{"rlnOpticsGroupName": "opticsGroup1", "rlnOpticsGroup": 1,
                            "rlnMicrographOriginalPixelSize": 1.77, "rlnVoltage": 200.0,
                            "rlnSphericalAberration": 1.4, "rlnAmplitudeContrast": 0.1,
                            "rlnMicrographPixelSize": 1.77}])
    write_relion_star(folder / "corrected_micrographs.star",
                      RelionTable("micrographs", data, optics))
    return "MC/corrected_micrographs.star"


def test_ctffind_uses_the_power_spectra_of_motion_correction(
    project: Project, simulated: Callable[..., Path]
) -> None:
    sim = simulated(*SIM)
    star = _with_power_spectra(project, sim, spoil=True)
    rec = _ctffind(project, star)
    assert rec.status == "succeeded", rec.error
    results = project.item_results(rec.id)
    assert {r["source"] for r in results.values()} == {"power spectrum"}
    truth = read_relion_star(sim / "ground_truth" / "micrographs_ctf.star").data.iloc[:2]
    ours = read_relion_star(project.path(rec.dir) / "micrographs_ctf.star").data
    np.testing.assert_allclose(ours["rlnDefocusU"], truth["rlnDefocusU"], atol=150)
    np.testing.assert_allclose(ours["rlnDefocusV"], truth["rlnDefocusV"], atol=150)
    assert ours["rlnCtfPowerSpectrum"].tolist() == ["MC/mic001_PS.mrc", "MC/mic002_PS.mrc"]
    # from the (spoilt) micrographs instead: nothing to fit
    plain = _ctffind(project, star, use_power_spectra=False)
    assert plain.status == "succeeded"
    assert all("no Thon rings" in r["skipped"] for r in project.item_results(plain.id).values())
    assert plain.summary.startswith("no micrograph fitted; 2 skipped")


def test_ctffind_parameter_errors(project: Project, simulated: Callable[..., Path]) -> None:
    mics = _import(project, simulated(*SIM))
    with pytest.raises(ParameterError, match="--res-min 5 Å must be coarser"):
        _ctffind(project, mics.name, res_min=5.0, res_max=30.0)
    with pytest.raises(ParameterError, match="--defocus-min"):
        _ctffind(project, mics.name, defocus_min=30000.0, defocus_max=5000.0)
    with pytest.raises(ParameterError, match="only applies with --phase-shift"):
        _ctffind(project, mics.name, phase_max=90.0)
    with pytest.raises(ParameterError, match="--phase-min"):
        _ctffind(project, mics.name, phase_shift=True, phase_min=120.0, phase_max=60.0)
    assert [j.type for j in project.jobs()] == ["import micrographs"]


def test_ctffind_streams_behind_a_streaming_import(
    project: Project, simulated: Callable[..., Path]
) -> None:
    sim = simulated(*SIM)
    sources = sorted((sim / "Micrographs").glob("*.mrc"))[:4]
    watched = project.root / "Detector"
    watched.mkdir()
    upstream = submit(project, get_job_type("import micrographs"),
                      {"micrographs": "Detector/*.mrc", "angpix": 1.77, "kv": 200.0, "cs": 1.4,
                       "settle": 0.3}, {},
                      run=RunOptions(stream=True, poll=0.1), background=True)
    ctf = submit(project, get_job_type("ctffind"), {"plots": 0},
                 {"micrographs": [upstream.name]},
                 run=RunOptions(stream=True, poll=0.2), background=True)
    assert ctf.status == "running"

    def arrive() -> None:
        for src in sources:
            (watched / src.name).write_bytes(src.read_bytes())
            time.sleep(0.5)

    writer = threading.Thread(target=arrive)
    writer.start()
    writer.join(timeout=60)
    stop_job(project, upstream.id)  # the acquisition ended; ctffind follows its input
    assert _wait_until_ended(project, upstream.id, 60) == "succeeded"
    assert _wait_until_ended(project, ctf.id, 180) == "succeeded"
    names = [f"{upstream.dir}/Micrographs/{p.name}" for p in sources]
    assert sorted(project.item_results(ctf.id)) == names  # every micrograph, once
    table = read_relion_star(project.path(ctf.dir) / "micrographs_ctf.star").data
    assert table["rlnMicrographName"].tolist() == names
    truth = read_relion_star(sim / "ground_truth" / "micrographs_ctf.star").data.iloc[:4]
    np.testing.assert_allclose(table["rlnDefocusU"], truth["rlnDefocusU"], atol=150)


@requires_relion
@pytest.mark.relion
def test_relion_reads_micrographs_ctf_star(
    project: Project, simulated: Callable[..., Path]
) -> None:
    sim = simulated(*SIM)
    mics = _import(project, sim)
    rec = _ctffind(project, mics.name)
    star = f"{rec.dir}/micrographs_ctf.star"
    ours = read_relion_star(project.root / star).data
    # one particle in the middle of every micrograph; RELION joins our CTF into particles.star
    for name in ours["rlnMicrographName"]:
        path = project.root / "Coords" / coordinate_file_name(name, "_pick.star")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_coordinates_star(path, pd.DataFrame({"rlnCoordinateX": [256.0],
                                                   "rlnCoordinateY": [256.0]}))
    run_relion(["relion_preprocess", "--i", star, "--coord_dir", "Coords/", "--coord_suffix",
                "_pick.star", "--part_star", "Extract/particles.star", "--part_dir", "Extract/",
                "--extract", "--extract_size", "64"], project.root)
    particles = read_relion_star(project.root / "Extract" / "particles.star").data
    assert len(particles) == len(ours)
    for column in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnCtfMaxResolution"):
        np.testing.assert_allclose(particles[column], ours[column], rtol=1e-5)
    # and the diagnostic image, by its rlnCtfImage name (``.ctf:mrc``: RELION reads it as MRC)
    proc = run_relion(["relion_image_handler", "--i", ours["rlnCtfImage"].iloc[0], "--stats"],
                      project.root)
    assert "(x,y,z,n)= 256 x 256 x 1 x 1" in proc.stdout and "angpix = 1.77" in proc.stdout
