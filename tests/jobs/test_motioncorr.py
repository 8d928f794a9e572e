"""``cryospa motioncorr`` on simulated movies, checked against the simulator's ground truth.

* global shifts vs ``ground_truth/motion/movNNN.star`` (RMS after removing a constant offset:
  RELION's and our reference frame may differ by one);
* outputs laid out and labelled as RELION's (file names, STAR blocks and columns, pixel sizes
  after binning, -9999 for frames outside the sum), and read by RELION 3.1 itself;
* bad input: a gain in the wrong orientation or of transposed shape (the message names the
  ``--gain_rot`` / ``--gain_flip`` that fits), a movie with too few frames (a counted skip);
* hot pixels found without a defect file where the simulator put them;
* streaming behind a streaming import: every movie corrected exactly once;
* slow: tutorial-size movies (global < 0.2 px RMS; dose weighting raises the Thon rings'
  signal-to-noise ratio between 8 and 4 Å; with 5 x 5 patches the local shifts at the patch
  centres).
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from cryospa.core.ctf import ctf_2d_on_grid
from cryospa.core.fourier import frequency_grid_2d
from cryospa.core.motion import polynomial_shift
from cryospa.errors import InputFileError, ParameterError
from cryospa.io.movies import (
    GAIN_ORIENTATIONS,
    compose_gain_orientations,
    detect_hot_pixels,
    gain_orientation_scores,
    open_movie,
    read_gain,
    transform_gain,
    write_mrc_movie,
    write_tiff_movie,
)
from cryospa.io.mrc import read_mrc, read_mrc_header, write_mrc
from cryospa.io.star import read_relion_star, read_star, write_star
from cryospa.jobs.motioncorr import output_stem
from cryospa.project.project import JobRecord, Project
from cryospa.project.runner import stop_job, submit
from cryospa.project.schema import RunOptions, get_job_type
from tests.conftest import requires_relion, run_relion
from tests.project.test_streaming import _wait_until_ended as wait_until_ended

Simulated = Callable[..., Path]
TINY = ("--preset", "tiny")
SHIFT_COLUMNS = ["rlnMicrographShiftX", "rlnMicrographShiftY"]
#: fast global-only settings for tests that are not about accuracy
GLOBAL = {"patches_x": 1, "patches_y": 1}


def _truth(sim: Path, name: str) -> dict[str, Any]:
    return read_star(sim / "ground_truth/motion" / f"{name}.star")


def _params(sim: Path) -> dict[str, Any]:
    return json.loads((sim / "ground_truth/simulation.json").read_text())


def _import(project: Project, sim: Path, *, pattern: str = "Raw/Movies/*.tiff",
            link: bool = True, **extra: Any) -> JobRecord:
    """Import the simulated movies (linked, never modified) with the simulation's optics."""
    if link:
        (project.root / "Raw").symlink_to(sim)
    p = _params(sim)
    params: dict[str, Any] = {
        "movies": pattern,
        "angpix": p["pixel_size_angstrom"],
        "kv": p["microscope"]["voltage_kv"],
        "cs": p["microscope"]["cs_mm"],
        "q0": p["microscope"]["amplitude_contrast"],
        "dose_per_frame": p["dose_per_frame_e_per_a2"],
        "gain": "Raw/gain.mrc",
        "defects": "Raw/defects.txt",
    }
    params.update(extra)
    params = {k: v for k, v in params.items() if v is not None}
    record = submit(project, get_job_type("import movies"), params, {})
    assert record.status == "succeeded", record.error
    return record


def _motioncorr(project: Project, movies: str, **params: Any) -> JobRecord:
    return submit(project, get_job_type("motioncorr"), params, {"movies": [movies]})


def _rms_error(ours: np.ndarray, truth: np.ndarray) -> float:
    diff = ours - truth
    diff = diff - diff.mean(axis=0)  # up to a constant offset
    return float(np.sqrt(np.mean(np.sum(diff**2, axis=1))))


def _shifts(star: Path) -> np.ndarray:
    return read_star(star)["global_shift"][SHIFT_COLUMNS].to_numpy(float)


# ---------------------------------------------------------------------------------------------
# helpers of io.movies and the job module


def test_output_stem_as_relion_names_it() -> None:
    assert output_stem("Import/job001/Movies/mov001.tiff") == "Movies/mov001"
    assert output_stem("Import/job012/Raw/a/b.mrcs") == "Raw/a/b"
    assert output_stem("Movies/mov002.tif") == "Movies/mov002"
    assert output_stem("/data/session/mov3.tiff") == "data/session/mov3"


def test_gain_orientations_compose_like_relion_options() -> None:
    probe = np.random.default_rng(0).normal(size=(3, 5))
    for first in GAIN_ORIENTATIONS:
        for then in GAIN_ORIENTATIONS:
            r, f = compose_gain_orientations(first, then)
            expected = transform_gain(transform_gain(probe, rotation=first[0], flip=first[1]),
                                      rotation=then[0], flip=then[1])
            np.testing.assert_array_equal(transform_gain(probe, rotation=r, flip=f), expected)
    assert compose_gain_orientations((1, 0), (3, 0)) == (0, 0)
    assert len({transform_gain(probe, rotation=r, flip=f).tobytes()
                for r, f in GAIN_ORIENTATIONS}) == 8


def test_gain_orientation_scores_single_out_the_true_orientation() -> None:
    rng = np.random.default_rng(1)
    h, w = 96, 128
    gain = rng.uniform(0.85, 1.15, size=(h, w))
    smooth = 1.0 + 0.2 * np.sin(np.arange(w) / 20.0)[None, :]  # uneven illumination
    raw = rng.poisson(40.0 * smooth / gain, size=(6, h, w)).mean(axis=0)
    scores = gain_orientation_scores(raw, gain)
    assert set(scores) == {(0, 0), (2, 0), (0, 1), (0, 2)}  # the ones keeping a 96 x 128 shape
    assert scores[(0, 0)] > 0.4
    assert max(v for k, v in scores.items() if k != (0, 0)) < 0.05
    # the gain stored turned: only the turned orientations fit its shape, and one fits best
    turned = transform_gain(gain, rotation=3)
    scores = gain_orientation_scores(raw, turned)
    assert max(scores, key=lambda k: scores[k]) == (1, 0)


def test_hot_pixels_found_above_their_local_mean() -> None:
    rng = np.random.default_rng(2)
    h, w = 80, 90
    ramp = np.linspace(50, 150, w)[None, :] * np.ones((h, 1))  # strong illumination gradient
    total = rng.poisson(ramp).astype(float)
    hot = [(5, 7), (60, 40), (33, 88)]
    for y, x in hot:
        total[y, x] += 8 * np.sqrt(ramp[y, x]) + 10
    found = detect_hot_pixels(total)
    assert sorted(map(tuple, np.argwhere(found))) == sorted(hot)
    mask = np.zeros((h, w), bool)
    mask[5, 7] = True
    assert not detect_hot_pixels(total, mask=mask)[5, 7]  # known defects are not reported


# ---------------------------------------------------------------------------------------------
# the job on the tiny preset


def test_motioncorr_recovers_the_true_drift_and_writes_relion_outputs(
    project: Project, simulated: Simulated
) -> None:
    sim = simulated(*TINY)
    movies = _import(project, sim)
    record = _motioncorr(project, movies.name, save_noDW=True, **GLOBAL)
    assert record.status == "succeeded", record.error
    job = project.path(record.dir)
    apix = _params(sim)["pixel_size_angstrom"]

    table = read_relion_star(job / "corrected_micrographs.star", "micrographs")
    assert table.data["rlnMicrographName"].tolist() == [
        f"{record.dir}/Movies/mov001.mrc", f"{record.dir}/Movies/mov002.mrc"]
    for column in ("rlnMicrographMetadata", "rlnOpticsGroup", "rlnAccumMotionTotal",
                   "rlnAccumMotionEarly", "rlnAccumMotionLate", "rlnMicrographNameNoDW",
                   "rlnCtfPowerSpectrum"):
        assert column in table.data.columns
    optics = table.optics.iloc[0]
    assert optics["rlnMicrographPixelSize"] == pytest.approx(apix)
    assert optics["rlnMicrographOriginalPixelSize"] == pytest.approx(apix)
    assert optics["rlnVoltage"] == 200.0

    for i, row in table.data.iterrows():
        name = f"mov{i + 1:03d}"
        truth = _truth(sim, name)["global_shift"][SHIFT_COLUMNS].to_numpy(float)
        motion = read_star(project.root / row["rlnMicrographMetadata"])
        ours = motion["global_shift"][SHIFT_COLUMNS].to_numpy(float)
        assert np.all(ours[0] == 0)
        error = _rms_error(ours, truth)
        assert np.hypot(*truth[-1]) > 2.0  # a drift worth measuring
        # 8 frames of 256 px at 16 counts per pixel: a little harder than the tutorial's movies
        assert error < 0.3, f"{name}: {error:.3f} px RMS from the true drift"
        assert _rms_error(ours, -truth) > 3 * error  # the sign convention is RELION's
        general = motion["general"].iloc[0]
        assert general["rlnMicrographMovieName"] == f"{movies.dir}/Movies/{name}.tiff"
        assert general["rlnMicrographGainName"] == f"{movies.dir}/gain.mrc"
        assert (general["rlnImageSizeX"], general["rlnImageSizeY"], general["rlnImageSizeZ"]) \
            == (256, 256, 8)
        assert general["rlnMicrographStartFrame"] == 1 and general["rlnMotionModelVersion"] == 0
        assert general["rlnMicrographDoseRate"] == pytest.approx(1.277)
        # RELION's accumulated motion: the path length in movie pixels
        steps = np.hypot(*np.diff(ours, axis=0).T)
        assert row["rlnAccumMotionTotal"] == pytest.approx(steps.sum())
        assert row["rlnAccumMotionEarly"] + row["rlnAccumMotionLate"] == pytest.approx(
            steps.sum())
        dw, header = read_mrc(project.root / row["rlnMicrographName"])
        plain, _ = read_mrc(project.root / row["rlnMicrographNameNoDW"])
        assert dw.shape == plain.shape == (256, 256)
        assert header.voxel_size_angstrom[0] == pytest.approx(apix, rel=1e-6)
        # dose weighting normalises sum_f w_f^2 = 1: the mean is the plain sum's / sqrt(F)
        assert dw.mean() == pytest.approx(plain.mean() / np.sqrt(8), rel=1e-3)
        assert plain.mean() == pytest.approx(8 * 1.277 * apix**2, rel=0.03)
        ps, ps_header = read_mrc(project.root / row["rlnCtfPowerSpectrum"])
        assert ps.shape == (128, 128)  # box 512 shrinks for a 256 px micrograph
        assert ps_header.voxel_size_angstrom[0] == pytest.approx(apix, rel=1e-6)
        assert (job / "Movies" / f"{name}_shifts.png").stat().st_size > 10_000
    assert record.summary.startswith("2 movies corrected; mean accumulated motion")


def test_frame_range_grouping_binning_float16(project: Project, simulated: Simulated) -> None:
    sim = simulated(*TINY)
    movies = _import(project, sim)
    record = _motioncorr(project, movies.name, first_frame_sum=2, last_frame_sum=7,
                         group_frames=2, bin_factor=1.5, float16=True, dose_weighting=False,
                         save_ps=False, **GLOBAL)
    assert record.status == "succeeded", record.error
    job = project.path(record.dir)
    table = read_relion_star(job / "corrected_micrographs.star", "micrographs")
    assert "rlnMicrographNameNoDW" not in table.data.columns
    assert "rlnCtfPowerSpectrum" not in table.data.columns
    apix = _params(sim)["pixel_size_angstrom"]
    # 256 / 1.5 = 170.7 -> 170 px (even, as RELION), pixel size 256 / 170 times the movie's
    assert table.optics["rlnMicrographPixelSize"].iloc[0] == pytest.approx(apix * 256 / 170)
    header = read_mrc_header(job / "Movies/mov001.mrc")
    assert header.shape == (170, 170) and header.mode == 12  # float16
    motion = read_star(job / "Movies/mov001.star")
    assert motion["general"]["rlnMicrographStartFrame"].iloc[0] == 2
    assert motion["general"]["rlnMicrographBinning"].iloc[0] == 1.5
    shifts = motion["global_shift"][SHIFT_COLUMNS].to_numpy(float)
    assert np.all(shifts[[0, 7]] == -9999.0)  # frames 1 and 8 are not summed
    assert np.all(shifts[1] == 0.0)
    truth = _truth(sim, "mov001")["global_shift"][SHIFT_COLUMNS].to_numpy(float)[1:7]
    # pairs of frames aligned, shifts interpolated between their centres
    assert _rms_error(shifts[1:7], truth) < 0.5
    # without dose weighting the sum is the plain aligned sum: 6 frames of counts (binning
    # keeps the mean)
    image, _ = read_mrc(job / "Movies/mov001.mrc")
    assert float(image.astype(np.float64).mean()) == pytest.approx(6 * 1.277 * apix**2, rel=0.03)


def test_hot_pixels_found_without_a_defect_file(project: Project, simulated: Simulated) -> None:
    sim = simulated(*TINY)
    movies = _import(project, sim, defects=None)
    record = _motioncorr(project, movies.name, save_ps=False, align_resolution=15.0, **GLOBAL)
    assert record.status == "succeeded", record.error
    params = _params(sim)
    dead = set(params["dead_columns_x"])
    true_hot = {(x, y) for x, y in params["hot_pixels_xy"] if x not in dead}
    motion = read_star(project.path(record.dir) / "Movies/mov001.star")
    found = {(int(x), int(y)) for x, y in motion["hot_pixels"][
        ["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()}
    assert found == true_hot
    assert "rlnMicrographDefectFile" not in motion["general"].columns
    assert project.item_results(record.id)["Import/job001/Movies/mov001.tiff"][
        "hot_pixels"] == len(true_hot)


def test_short_movie_is_a_counted_skip(project: Project, simulated: Simulated) -> None:
    sim = simulated(*TINY)
    raw = project.root / "Raw"
    (raw / "Movies").mkdir(parents=True)
    for name in ("mov001.tiff", "mov002.tiff"):
        (raw / "Movies" / name).symlink_to(sim / "Movies" / name)
    for name in ("gain.mrc", "defects.txt"):
        (raw / name).symlink_to(sim / name)
    with open_movie(sim / "Movies/mov002.tiff") as movie:
        frames = movie.read_frames(0, 5)
    write_tiff_movie(raw / "Movies/mov003.tiff", frames.astype(np.uint16))  # 5 of 8 frames
    movies = _import(project, sim, link=False)
    record = _motioncorr(project, movies.name, last_frame_sum=8, save_ps=False,
                         align_resolution=15.0, **GLOBAL)
    assert record.status == "succeeded", record.error
    assert record.summary.startswith("2 movies corrected, 1 skipped")
    results = project.item_results(record.id)
    skipped = results["Import/job001/Movies/mov003.tiff"]["skipped"]
    assert "has 5 frames" in skipped and "--last_frame_sum 8" in skipped
    table = read_relion_star(project.path(record.dir) / "corrected_micrographs.star")
    assert [Path(n).name for n in table.data["rlnMicrographName"]] == ["mov001.mrc",
                                                                      "mov002.mrc"]
    log = (project.path(record.dir) / "run.out").read_text()
    assert "Import/job001/Movies/mov003.tiff: the movie has 5 frames but" in log


# ---------------------------------------------------------------------------------------------
# bad gain references


@pytest.mark.parametrize(
    ("stored", "import_options", "expected"),
    [
        ((3, 0), {}, "--gain_rot 1 --gain_flip 0"),  # the file needs a quarter turn
        ((3, 0), {"gain_rot": 2}, "--gain_rot 1 --gain_flip 0"),  # whatever the import did
        ((0, 2), {}, "--gain_rot 0 --gain_flip 2"),  # mirrored left-right
    ],
)
def test_gain_in_the_wrong_orientation_is_refused(
    project: Project, simulated: Simulated, stored: tuple[int, int],
    import_options: dict[str, int], expected: str,
) -> None:
    sim = simulated(*TINY)
    raw = project.root / "Raw"
    raw.mkdir()
    (raw / "Movies").symlink_to(sim / "Movies")
    # a gain file that fits the movies only after `expected` (the inverse of `stored`)
    true_gain = read_gain(sim / "gain.mrc")
    write_mrc(raw / "gain.mrc", transform_gain(true_gain, rotation=stored[0], flip=stored[1]),
              voxel_size_angstrom=3.54)
    movies = _import(project, sim, link=False, defects=None, **import_options)
    with pytest.raises(InputFileError, match=expected) as info:
        _motioncorr(project, movies.name, **GLOBAL)
    message = str(info.value)
    assert "does not fit the frames of Import/job001/Movies/mov001.tiff" in message
    assert "import the movies again with" in message
    assert len(project.jobs()) == 1  # nothing was created


def test_gain_of_transposed_shape_says_which_turn_fits(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    h, w = 64, 96
    gain = rng.uniform(0.85, 1.15, size=(h, w)).astype(np.float32)
    frames = rng.poisson(30.0 / gain, size=(4, h, w)).astype(np.uint16)
    project = Project.init(tmp_path / "P")
    write_mrc_movie(project.root / "mov.mrcs", frames, voxel_size_angstrom=1.0)
    write_mrc(project.root / "gain_t.mrc", transform_gain(gain, rotation=1),
              voxel_size_angstrom=1.0)  # stored turned: the movies need --gain_rot 3
    optics = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"],
              "rlnMicrographOriginalPixelSize": [1.0], "rlnVoltage": [300.0],
              "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]}
    write_star(project.root / "movies.star", {
        "optics": pd.DataFrame(optics),
        "movies": pd.DataFrame({"rlnMicrographMovieName": ["mov.mrcs"], "rlnOpticsGroup": [1],
                                "rlnMicrographGainName": ["gain_t.mrc"],
                                "rlnMicrographDoseRate": [1.0]}),
    })
    with pytest.raises(InputFileError, match="--gain_rot 3 --gain_flip 0") as info:
        _motioncorr(project, "movies.star", **GLOBAL)
    assert "gain_t.mrc: the gain reference does not fit the frames of mov.mrcs (64 x 96 " \
        "pixels vs 96 x 64)" in str(info.value)


def test_dose_weighting_without_a_dose_is_refused(project: Project,
                                                  simulated: Simulated) -> None:
    sim = simulated(*TINY)
    movies = _import(project, sim, dose_per_frame=None)
    with pytest.raises(ParameterError, match="--dose_per_frame"):
        _motioncorr(project, movies.name, **GLOBAL)
    record = _motioncorr(project, movies.name, dose_per_frame=1.277, save_ps=False,
                         align_resolution=15.0, **GLOBAL)
    assert record.status == "succeeded", record.error


# ---------------------------------------------------------------------------------------------
# streaming


def test_streaming_behind_a_streaming_import_corrects_each_movie_once(
    tmp_path: Path, simulated: Simulated
) -> None:
    sim = simulated(*TINY)
    project = Project.init(tmp_path / "P")
    watched = project.root / "Raw"
    watched.mkdir()
    shutil.copy(sim / "gain.mrc", project.root / "gain.mrc")
    names = [f"mov{i:03d}.tiff" for i in range(1, 4)]
    upstream = submit(project, get_job_type("import movies"),
                      {"movies": "Raw/*.tiff", "angpix": 3.54, "kv": 200.0,
                       "dose_per_frame": 1.277, "gain": "gain.mrc", "settle": 0.3}, {},
                      run=RunOptions(stream=True, poll=0.1), background=True)
    downstream = submit(project, get_job_type("motioncorr"),
                        {"save_ps": False, "align_resolution": 15.0, **GLOBAL},
                        {"movies": [upstream.name]}, run=RunOptions(stream=True, poll=0.2),
                        background=True)
    assert downstream.status == "running"
    star = project.path(downstream.dir) / "corrected_micrographs.star"
    seen: list[int] = []
    for i, name in enumerate(names):
        source = sim / "Movies" / f"mov{i % 2 + 1:03d}.tiff"
        (watched / name).write_bytes(source.read_bytes())
        time.sleep(0.8)
        if star.is_file():
            seen.append(len(read_relion_star(star, "micrographs").data))
    stop_job(project, upstream.id)
    assert wait_until_ended(project, upstream.id, 60) == "succeeded"
    assert wait_until_ended(project, downstream.id, 120) == "succeeded"
    table = read_relion_star(star, "micrographs")
    assert [Path(n).name for n in table.data["rlnMicrographName"]] == [
        n.replace(".tiff", ".mrc") for n in names]
    assert sorted(project.item_results(downstream.id)) == [
        f"{upstream.dir}/Movies/{n}" for n in names]
    log = (project.path(downstream.dir) / "run.out").read_text()
    for name in names:  # each movie corrected exactly once
        assert log.count(f"Movies/{name}: 8 frames") == 1
    assert seen == sorted(seen)  # the set grew while movies arrived


# ---------------------------------------------------------------------------------------------
# RELION reads what we write


@pytest.mark.relion
@requires_relion
def test_relion_reads_the_outputs(project: Project, simulated: Simulated) -> None:
    sim = simulated(*TINY)
    movies = _import(project, sim)
    record = _motioncorr(project, movies.name, save_noDW=True, align_resolution=15.0, **GLOBAL)
    assert record.status == "succeeded", record.error
    star = f"{record.dir}/corrected_micrographs.star"
    run_relion(["relion_star_handler", "--i", star, "--o", "selected.star", "--select",
                "rlnAccumMotionTotal", "--minval", "0", "--maxval", "1000"], project.root)
    ours = read_relion_star(project.root / star, "micrographs")
    theirs = read_relion_star(project.root / "selected.star", "micrographs")
    assert theirs.data["rlnMicrographName"].tolist() == ours.data["rlnMicrographName"].tolist()
    assert theirs.optics["rlnMicrographPixelSize"].tolist() == pytest.approx(
        ours.optics["rlnMicrographPixelSize"].tolist())
    assert theirs.data["rlnAccumMotionTotal"].tolist() == pytest.approx(
        ours.data["rlnAccumMotionTotal"].tolist(), rel=1e-5)
    mic = ours.data["rlnMicrographName"].iloc[0]
    proc = run_relion(["relion_image_handler", "--i", mic, "--stats"], project.root)
    # "<file> : (x,y,z,n)= 256 x 256 x 1 x 1 ; avg= 45.26 stddev= 4.23 ...; angpix = 3.54"
    image, _ = read_mrc(project.root / mic)
    assert "(x,y,z,n)= 256 x 256 x 1 x 1" in proc.stdout
    stats = proc.stdout.split(";")[1].split()
    assert float(stats[1]) == pytest.approx(float(image.mean()), rel=1e-4)
    assert float(stats[3]) == pytest.approx(float(image.std()), rel=1e-3)
    assert float(proc.stdout.split("angpix =")[1]) == pytest.approx(3.54, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# tutorial-size movies (slow)


def _thon_ring_snr(image: np.ndarray, pixel_size: float, ctf: dict[str, float],
                   band_angstrom: tuple[float, float]) -> np.ndarray:
    """Signal-to-noise ratio of the Thon rings in 4 shells of a band: ``b / a`` of the fit
    ``|F(k)|^2 = a + b CTF(k)^2`` with the true CTF (the rings' power over the flat noise)."""
    x = torch.from_numpy(image.astype(np.float64))
    power = torch.fft.rfft2(x - x.mean()).abs() ** 2
    ky, kx = frequency_grid_2d(tuple(x.shape), pixel_size, dtype=torch.float64)
    k = torch.sqrt(kx**2 + ky**2)
    ctf2 = ctf_2d_on_grid(tuple(x.shape), pixel_size, dtype=torch.float64, **ctf) ** 2
    edges = np.linspace(1 / band_angstrom[0], 1 / band_angstrom[1], 5)
    out = []
    for lo, hi in itertools.pairwise(edges):
        shell = (k >= lo) & (k < hi)
        design = torch.stack([torch.ones_like(ctf2[shell]), ctf2[shell]], dim=1)
        coef = torch.linalg.lstsq(design, power[shell][:, None]).solution[:, 0]
        out.append(float(coef[1] / coef[0]))
    return np.array(out)


@pytest.mark.slow
def test_tutorial_movies_global_and_local_against_truth(project: Project,
                                                         simulated: Simulated) -> None:
    sim = simulated("--preset", "tutorial", "--n_micrographs", "2")
    movies = _import(project, sim)
    record = _motioncorr(project, movies.name, save_noDW=True, **GLOBAL)
    assert record.status == "succeeded", record.error
    job = project.path(record.dir)
    truth_ctf = read_star(sim / "ground_truth/micrographs_ctf.star")
    optics = truth_ctf["optics"].iloc[0]
    for _, row in truth_ctf["micrographs"].iterrows():
        name = Path(row["rlnMicrographName"]).stem
        truth = _truth(sim, name)["global_shift"][SHIFT_COLUMNS].to_numpy(float)
        error = _rms_error(_shifts(job / "Movies" / f"{name}.star"), truth)
        assert error < 0.2, f"{name}: {error:.3f} px RMS from the true drift"
        ctf = {"defocus_u_angstrom": float(row["rlnDefocusU"]),
               "defocus_v_angstrom": float(row["rlnDefocusV"]),
               "astigmatism_angle_degrees": float(row["rlnDefocusAngle"]),
               "voltage_kv": float(optics["rlnVoltage"]),
               "spherical_aberration_mm": float(optics["rlnSphericalAberration"]),
               "amplitude_contrast": float(optics["rlnAmplitudeContrast"])}
        weighted, _ = read_mrc(job / "Movies" / f"{name}.mrc")
        plain, _ = read_mrc(job / "Movies" / f"{name}_noDW.mrc")
        snr_dw = _thon_ring_snr(weighted, 1.77, ctf, (8.0, 4.0))
        snr_plain = _thon_ring_snr(plain, 1.77, ctf, (8.0, 4.0))
        assert np.all(snr_plain > 0)  # the rings are there
        # damaged late frames down-weighted: stronger rings over the noise at high resolution
        assert snr_dw.mean() > 1.2 * snr_plain.mean(), (snr_dw, snr_plain)

    # 5 x 5 patches: the local shifts at the patch centres against the true polynomial
    local = _motioncorr(project, movies.name, save_ps=False)
    assert local.status == "succeeded", local.error
    for name in ("mov001", "mov002"):
        ours = read_star(project.path(local.dir) / "Movies" / f"{name}.star")
        true = _truth(sim, name)
        assert ours["general"]["rlnMotionModelVersion"].iloc[0] == 1
        ours_c = ours["local_motion_model"]["rlnMotionModelCoeff"].to_numpy(float)
        true_c = true["local_motion_model"]["rlnMotionModelCoeff"].to_numpy(float)
        g_ours = ours["global_shift"][SHIFT_COLUMNS].to_numpy(float)
        g_true = true["global_shift"][SHIFT_COLUMNS].to_numpy(float)
        centres = (np.arange(5) + 0.5) * 1024 / 5
        xs, ys = np.meshgrid(centres, centres)
        z = np.arange(24)[:, None, None]
        ox, oy = polynomial_shift(ours_c[:18], ours_c[18:], z, xs, ys, (1024, 1024))
        tx, ty = polynomial_shift(true_c[:18], true_c[18:], z, xs, ys, (1024, 1024))
        total_ours = np.stack([ox + g_ours[:, 0, None, None], oy + g_ours[:, 1, None, None]], -1)
        total_true = np.stack([tx + g_true[:, 0, None, None], ty + g_true[:, 1, None, None]], -1)
        diff = (total_ours - total_true).reshape(24, -1, 2)
        diff -= diff.mean(axis=0, keepdims=True)  # a constant offset per patch
        rms = float(np.sqrt(np.mean(np.sum(diff**2, axis=-1))))
        assert rms < 0.5, f"{name}: local shifts {rms:.2f} px RMS from the truth"
