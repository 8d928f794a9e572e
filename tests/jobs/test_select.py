"""``cryospa select``: classes by number, automatic ranking, junk rejection, bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryospa.core.class_features import class_image_features
from cryospa.errors import InputFileError, ParameterError
from cryospa.io.coords import read_coordinates
from cryospa.io.mrc import read_mrc, write_mrc
from cryospa.io.star import (
    RelionTable,
    read_relion_star,
    read_star,
    write_relion_star,
    write_star,
)
from cryospa.jobs.select import ClassSet, class_scores, read_classification
from cryospa.project.project import JobRecord, Project
from cryospa.project.runner import submit
from cryospa.project.schema import get_job_type
from tests.conftest import SHARED_DATA, relion_available, run_relion
from tests.jobs.test_class2d import BETAGAL, FAST, SMALL, _import, class_purity

# --------------------------------------------------------------------------------------
# features on synthetic class averages
# --------------------------------------------------------------------------------------


def _blob(n: int, centre: tuple[float, float], radius: float) -> torch.Tensor:
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float64) - n // 2,
                          torch.arange(n, dtype=torch.float64) - n // 2, indexing="ij")
    r = torch.hypot(x - centre[0], y - centre[1])
    return torch.clamp(radius - r, 0, 2) / 2


def test_features_of_centred_off_centre_and_edge_heavy_averages() -> None:
    n, radius = 64, 24.0
    centred = _blob(n, (0, 0), 10)
    off = _blob(n, (12, 5), 8)
    ring = _blob(n, (0, 0), 23) - _blob(n, (0, 0), 16)  # density only near the mask edge
    f = class_image_features(torch.stack([centred, off, ring]), radius)
    assert f["centre_offset_px"][0] < 0.5
    assert abs(float(f["centre_offset_px"][1]) - 13.0) < 1.5  # |(12, 5)| = 13
    assert f["edge_ratio"][0] < 0.05 < 1.5 < f["edge_ratio"][2]
    # contrast: scale-equivariant
    g = class_image_features(torch.stack([3 * centred]), radius)
    assert torch.allclose(g["contrast"][0], 3 * f["contrast"][0])
    with pytest.raises(ValueError):
        class_image_features(centred[None], 1.5)


def _class_set(images: np.ndarray, counts: list[int], res: list[float]) -> ClassSet:
    import pandas as pd

    from cryospa.io.star import RelionTable

    numbers = np.repeat(np.arange(1, len(counts) + 1), counts)
    particles = RelionTable("particles", pd.DataFrame({"rlnClassNumber": numbers,
                                                       "rlnOpticsGroup": 1}),
                            pd.DataFrame({"rlnOpticsGroup": [1]}))
    classes = pd.DataFrame({"rlnReferenceImage": [f"{i + 1:06d}@c.mrcs" for i in range(len(res))],
                            "rlnEstimatedResolution": res})
    return ClassSet(Path("m.star"), particles, classes, images.astype(np.float32), 4.0, 180.0, 1)


def test_scores_reject_each_kind_of_bad_class() -> None:
    n = 64  # radius 22.5 px
    good = [(_blob(n, (0, 0), 11) + 0.3 * _blob(n, (3, 0), 5)).numpy() for _ in range(4)]
    noise = np.random.default_rng(0).normal(0, 0.02, (n, n))
    ice = 2 * _blob(n, (0, 0), 19).numpy()            # flat disc with its edge near the mask
    strong = 5 * good[0]                              # contrast far above the others
    off = _blob(n, (10, 8), 9).numpy()                # not centred
    images = np.stack([*good, ice + noise, strong, off, good[0], good[0]])
    counts = [100, 100, 100, 100, 40, 40, 40, 40, 1]
    res = [10.0, 11.0, 12.0, 29.0, 12.0, 12.0, 12.0, 55.0, 12.0]
    s = class_scores(_class_set(images, counts, res))
    kept = s["rlnClassScore"].to_numpy() >= 0.5
    assert kept.tolist() == [True, True, True, True, False, False, False, False, False]
    assert s["scoreEdge"][4] == 0 and s["scoreContrast"][5] == 0 and s["scoreCentring"][6] == 0
    assert s["scoreResolution"][7] == 0 and s["scoreSize"][8] < 0.5
    assert s["rlnClassScore"].between(0, 1).all()


# --------------------------------------------------------------------------------------
# the job on a small classification
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classified(simulated: Callable[..., Path],
               tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, JobRecord, Path]:
    if not BETAGAL.is_file():
        pytest.skip(f"{BETAGAL} not found (shared data)")
    sim = simulated(*SMALL)
    project = Project.init(tmp_path_factory.mktemp("sel") / "P")
    _import(project, sim)
    record = submit(project, get_job_type("class2d"), FAST, {"particles": ["job001"]})
    assert record.status == "succeeded", record.error
    return project, record, sim


def _select(project: Project, **params: object) -> JobRecord:
    return submit(project, get_job_type("select"), params, {"classes_from": ["job002"]})


def test_select_classes_by_number(classified: tuple[Project, JobRecord, Path]) -> None:
    project, c2d, _ = classified
    record = _select(project, classes="1,3")
    assert record.status == "succeeded", record.error
    out = project.root / record.dir
    data = read_relion_star(project.root / c2d.dir / "run_data.star", "particles").data
    kept = read_relion_star(out / "particles.star", "particles").data
    assert len(kept) == int(data["rlnClassNumber"].isin([1, 3]).sum()) > 0
    assert set(kept["rlnClassNumber"]) <= {1, 3}
    assert {"rlnAnglePsi", "rlnOriginXAngst", "rlnImageName"} <= set(kept.columns)
    averages = read_relion_star(out / "class_averages.star")
    assert averages.data["rlnClassNumber"].tolist() == [1, 3]
    assert float(averages.optics["rlnImagePixelSize"].iloc[0]) == pytest.approx(7.08)
    images, _ = read_mrc(out / "class_averages.mrcs")
    classes, _ = read_mrc(project.root / c2d.dir / "run_it005_classes.mrcs")
    np.testing.assert_array_equal(images, classes[[0, 2]])
    scores = read_star(out / "class_scores.star")["class_scores"]
    assert scores["rlnSelected"].tolist() == [1, 0, 1, 0]
    assert (out / "selected.png").stat().st_size > 0


def test_auto_keeps_the_classes_of_clean_data(
        classified: tuple[Project, JobRecord, Path]) -> None:
    project, _, _ = classified
    record = _select(project, auto=True)
    assert record.status == "succeeded", record.error
    scores = read_star(project.root / record.dir / "class_scores.star")["class_scores"]
    big = scores["rlnClassDistribution"] >= 0.1
    assert big.sum() >= 2
    assert (scores["rlnSelected"][big] == 1).all(), scores
    assert "kept" in record.summary and "auto" in record.summary
    # whole particles: their amplitudes sit around their class's, few are dropped
    out = project.root / record.dir
    particles = read_star(out / "particle_scores.star")["particle_scores"]
    assert np.median(particles["particleAmplitude"]) == pytest.approx(1.0, abs=0.3)
    assert np.median(particles["particleRelativeWeakestHalf"]) == pytest.approx(1.0, abs=0.02)
    assert (particles["particleWeakestHalf"] < particles["particleAmplitude"]).mean() > 0.9
    dropped = int((particles["rlnSelected"] == 0).sum())
    assert dropped <= 0.03 * len(particles)
    kept = read_relion_star(out / "particles.star", "particles").data
    assert len(kept) == len(particles) - dropped
    assert int(scores["particlesDropped"].sum()) == dropped
    assert (out / "particle_amplitudes.png").stat().st_size > 0


def _cut(images: torch.Tensor, offsets_px: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Keep one side of a straight soft cut through each particle's centre (a broken particle)."""
    n = images.shape[-1]
    c = torch.arange(n, dtype=torch.float32) - n // 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    # the particle's centre in the raw image is at -origin
    dx = xx[None] + offsets_px[:, 0, None, None]
    dy = yy[None] + offsets_px[:, 1, None, None]
    side = dx * torch.cos(angle)[:, None, None] + dy * torch.sin(angle)[:, None, None]
    return images * torch.sigmoid(side / 1.5)


def test_broken_particles_hold_less_of_their_class(
        classified: tuple[Project, JobRecord, Path]) -> None:
    from cryospa.core.masks import soft_circle
    from cryospa.engine.amplitude import ParticleAmplitudes, signal_amplitudes
    from cryospa.engine.data import TensorParticles
    from cryospa.jobs.class2d import StarParticles
    from cryospa.jobs.particles import load_particles

    project, c2d, _ = classified
    data_star = project.root / c2d.dir / "run_data.star"
    data = read_relion_star(data_star, "particles").data
    source = StarParticles(load_particles(data_star))
    index = torch.arange(len(data))
    images, ctfs = source.load(index, torch.device("cpu"), ctf=True)
    averages, _ = read_mrc(project.root / c2d.dir / "run_it005_classes.mrcs")
    apix = source.pixel_size_angstrom
    classes = torch.from_numpy(data["rlnClassNumber"].to_numpy(dtype=np.int64) - 1)
    psi = torch.from_numpy(data["rlnAnglePsi"].to_numpy(dtype=np.float32))
    offsets = torch.from_numpy(
        data[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=np.float32) / apix)
    mask = soft_circle(images.shape[-1], 100.0 / apix, edge_width_px=5)
    refs = torch.from_numpy(averages)

    def amplitudes(imgs: torch.Tensor, psi_sign: float = 1.0,
                   offset_sign: float = 1.0) -> ParticleAmplitudes:
        return signal_amplitudes(TensorParticles(imgs, apix, ctfs), refs, index, classes,
                                 psi_sign * psi, offset_sign * offsets, mask, ctf=True)

    intact = amplitudes(images)
    whole = intact.amplitude
    assert float(whole.median()) == pytest.approx(1.0, abs=0.3)
    assert float(intact.error.median()) < 0.15
    # the two halves on either side of a line make up the whole (inverse-variance weighted)
    halves, weight = intact.halves, intact.half_errors ** -2
    assert torch.isfinite(halves).all() and halves.shape == (len(data), 8)
    pairs = (halves * weight).reshape(-1, 2, 4).sum(1) / weight.reshape(-1, 2, 4).sum(1)
    torch.testing.assert_close(pairs, whole[:, None].expand(-1, 4), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(weight.reshape(-1, 2, 4).sum(1),
                               (intact.error ** -2)[:, None].expand(-1, 4), rtol=1e-3,
                               atol=0)
    # with the angle or the origin of the other convention the average fits worse: the
    # conventions are the classification's
    for wrong in (amplitudes(images, psi_sign=-1).amplitude,
                  amplitudes(images, offset_sign=-1).amplitude):
        assert float(wrong.median()) < 0.9 * float(whole.median())
        assert float((wrong < whole).float().mean()) > 0.7
    angle = torch.rand(len(data), generator=torch.Generator().manual_seed(0)) * 2 * np.pi
    broken = amplitudes(_cut(images, offsets, angle))
    ratio = broken.amplitude / whole
    # half a particle holds about half of its class's signal, and its missing side none
    assert float(ratio.median()) == pytest.approx(0.5, abs=0.15)
    assert float((ratio < 0.8).float().mean()) >= 0.8
    assert float(broken.weakest_half.median()) < 0.25 * float(intact.weakest_half.median())


def test_particle_outliers_normalise_by_class_and_micrograph() -> None:
    from cryospa.jobs.select import particle_outliers

    rng = np.random.default_rng(1)
    n = 2000
    classes = rng.integers(1, 5, n)
    mics = rng.integers(0, 20, n)
    scale = np.array([0.0, 1.0, 1.5, 0.7, 2.0])[classes] * (0.8 + 0.02 * mics)
    amplitude = scale * rng.normal(1.0, 0.05, n)
    broken = rng.random(n) < 0.05
    amplitude[broken] *= 0.6
    out = particle_outliers(amplitude, classes, mics, 3.0)
    assert np.median(out["relative"]) == pytest.approx(1.0, abs=0.01)
    relative = out["relative"].to_numpy()
    np.testing.assert_array_equal(out["outlier"], relative < out.attrs["threshold"])
    assert out["outlier"][broken].mean() > 0.95
    assert out["outlier"][~broken].mean() < 0.01
    # without the micrograph normalisation the micrograph scales blur the distribution
    plain = particle_outliers(amplitude, classes, None, 3.0)
    assert plain["outlier"][broken].mean() < out["outlier"][broken].mean()
    # unknown amplitudes are never outliers
    amplitude[:5] = np.nan
    assert not particle_outliers(amplitude, classes, mics, 3.0)["outlier"][:5].any()


def test_missing_particle_stack_is_refused_before_running(
        classified: tuple[Project, JobRecord, Path]) -> None:
    import shutil

    project, c2d, _ = classified
    fake = project.root / "Moved2D"
    shutil.copytree(project.root / c2d.dir, fake)
    data = read_relion_star(fake / "run_it005_data.star", "particles")
    names = data.data["rlnImageName"].astype(str).tolist()
    names[0] = names[0].split("@")[0] + "@Gone/stack.mrcs"
    data.data["rlnImageName"] = names
    write_relion_star(fake / "run_it005_data.star", data)
    optimiser = read_star(fake / "run_it005_optimiser.star")
    general = optimiser["optimiser_general"]
    for column in ("rlnModelStarFile", "rlnExperimentalDataStarFile"):
        general[column] = "Moved2D/" + Path(str(general[column].iloc[0])).name
    write_star(fake / "run_it005_optimiser.star", optimiser)
    n_jobs = len(project.jobs())
    with pytest.raises(InputFileError, match=r"Gone/stack\.mrcs.*found neither"):
        submit(project, get_job_type("select"), {"auto": True},
               {"classes_from": ["Moved2D/run_it005_optimiser.star"]})
    assert len(project.jobs()) == n_jobs
    # --particle-sigma 0 does not read the images
    record = submit(project, get_job_type("select"), {"auto": True, "particle_sigma": 0.0},
                    {"classes_from": ["Moved2D/run_it005_optimiser.star"]})
    assert record.status == "succeeded", record.error
    assert not (project.root / record.dir / "particle_scores.star").exists()


def test_bad_choices_are_refused(classified: tuple[Project, JobRecord, Path]) -> None:
    project, _, _ = classified
    for params, words in (({}, "--classes"), ({"classes": "1", "auto": True}, "either"),
                          ({"classes": "2,9"}, "last class")):
        with pytest.raises(ParameterError, match=words):
            _select(project, **params)


def test_classes_space_separated_on_the_command_line(
        classified: tuple[Project, JobRecord, Path]) -> None:
    from cryospa.cli.main import main as cli

    project, _, _ = classified
    n_jobs = len(project.jobs())
    assert cli(["select", "--classes-from", "job002", "--classes", "1", "3-4",
                "--project", str(project.root)]) == 0
    record = project.jobs()[-1]
    assert len(project.jobs()) == n_jobs + 1 and record.params["classes"] == "1,3-4"
    kept = read_relion_star(project.root / record.dir / "class_averages.star").data
    assert kept["rlnClassNumber"].tolist() == [1, 3, 4]
    # the same from Python, as a list or as words in one string
    for classes in ([1, "3-4"], "1 3 - 4"):
        again = _select(project, classes=classes)
        assert again.status == "succeeded", again.error
        assert again.params["classes"] == ("1,3-4" if isinstance(classes, list) else classes)
        assert read_relion_star(project.root / again.dir / "class_averages.star").data[
            "rlnClassNumber"].tolist() == [1, 3, 4]


def test_class_ranges_read_with_commas_or_spaces() -> None:
    from cryospa.jobs.sets import parse_rows

    # "1 3" is classes 1 and 3 (it once read as 13)
    assert parse_rows("1 3", 20).tolist() == parse_rows("1,3", 20).tolist() == [0, 2]
    assert parse_rows(" 2 - 4, 7 19- ", 20).tolist() == [1, 2, 3, 6, 18, 19]
    with pytest.raises(ParameterError, match="past the last row"):
        parse_rows("1 21", 20)


@pytest.mark.relion
@pytest.mark.skipif(not relion_available("relion_autopick"),
                    reason="RELION not installed (apt-get install relion): cross-check skipped")
def test_relion_autopick_reads_the_class_averages(
        classified: tuple[Project, JobRecord, Path]) -> None:
    # relion_autopick --ref reads only the first block of the file: our averages must come
    # first. A micrograph made of the kept averages at known places: RELION must find them all
    from cryospa.jobs.pick_template import read_references

    project, _, _ = classified
    record = _select(project, classes="1,3")
    assert record.status == "succeeded", record.error
    star = Path(record.dir) / "class_averages.star"
    assert next(line for line in (project.root / star).read_text().splitlines()
                if line.startswith("data_")) == "data_particles"
    images, _ = read_mrc(project.root / record.dir / "class_averages.mrcs")
    ours = read_references(project.root / star, project.root)  # our template picker reads it
    np.testing.assert_array_equal(ours.images, images)
    assert ours.class_numbers.tolist() == [1, 3] and ours.pixel_size_angstrom == 7.08

    n, b = 256, images.shape[-1]
    truth = np.array([(48, 48), (48, 160), (160, 64), (176, 180), (100, 110), (210, 120)])
    rng = np.random.default_rng(0)
    mic = rng.normal(0, 0.1 * images.std(), (n, n)).astype(np.float32)
    for i, (x, y) in enumerate(truth):
        mic[y - b // 2:y + b // 2, x - b // 2:x + b // 2] += images[i % len(images)]
    folder = project.root / "RelionMics"
    folder.mkdir()
    write_mrc(folder / "mic001.mrc", mic, voxel_size_angstrom=7.08)
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnVoltage": [200.0], "rlnSphericalAberration": [1.4],
                           "rlnAmplitudeContrast": [0.1], "rlnMicrographPixelSize": [7.08]})
    mics = pd.DataFrame({"rlnMicrographName": ["RelionMics/mic001.mrc"], "rlnOpticsGroup": [1]})
    write_relion_star(folder / "micrographs.star", RelionTable("micrographs", mics, optics))
    run_relion(["relion_autopick", "--i", "RelionMics/micrographs.star", "--odir", "RelionRef/",
                "--pickname", "autopick", "--ref", str(star), "--angpix_ref", "7.08",
                "--ang", "10", "--shrink", "0", "--lowpass", "20", "--threshold", "0.2",
                "--min_distance", "150"], project.root)
    picks = read_coordinates(project.root / "RelionRef" / "RelionMics" / "mic001_autopick.star")
    xy = picks[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
    distance = np.linalg.norm(xy[None, :, :] - truth[:, None, :], axis=-1)  # (truth, picks)
    assert (distance.min(axis=1) <= 3.0).all(), (truth, xy)
    assert len(xy) == len(truth), xy


def test_a_3d_classification_is_refused(tmp_path: Path) -> None:
    optimiser = SHARED_DATA / "maps" / "betagal_relion1x_test" / "out_it005_optimiser.star"
    if not optimiser.is_file():
        pytest.skip(f"{optimiser} not found (shared data)")
    with pytest.raises(InputFileError) as err:
        read_classification(optimiser, tmp_path)
    assert "out_it005" in str(err.value)


# --------------------------------------------------------------------------------------
# the criterion: two molecules + 15 % junk
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_junk_lands_in_rejected_classes(simulated: Callable[..., Path], tmp_path: Path) -> None:
    from tests.jobs.junk_data import extract_with_labels, simulate_args

    if not BETAGAL.is_file():
        pytest.skip(f"{BETAGAL} not found (shared data)")
    sim = simulated(*simulate_args(30, 100, 0.15, 11))
    project = Project.init(tmp_path / "P")
    extract, labels = extract_with_labels(project, sim)
    assert abs((labels < 0).mean() - 0.15) < 0.01
    c2d = submit(project, get_job_type("class2d"),
                 {"classes": 20, "iterations": 25, "particle_diameter": 200.0, "threads": 2,
                  "seed": 0},
                 {"particles": [extract.name]})
    assert c2d.status == "succeeded", c2d.error
    sel = submit(project, get_job_type("select"), {"auto": True},
                 {"classes_from": [c2d.name]})
    assert sel.status == "succeeded", sel.error
    assigned = read_relion_star(project.root / c2d.dir / "run_data.star",
                                "particles").data["rlnClassNumber"].to_numpy()
    kept = read_relion_star(project.root / sel.dir / "class_averages.star").data
    kept_classes = set(kept["rlnClassNumber"].astype(int))
    in_kept = np.isin(assigned, list(kept_classes))
    junk = labels < 0
    # by classes alone 74-83 % by seed: broken particles that keep most of a particle land in
    # good classes; see bench/bench_select.py
    assert (junk & ~in_kept).sum() >= 0.7 * junk.sum()
    aggregates_and_ice = (labels == -1) | (labels == -3)
    assert (aggregates_and_ice & ~in_kept).sum() >= 0.9 * aggregates_and_ice.sum()
    molecules = labels > 0
    purity = class_purity(assigned[molecules & in_kept], labels[molecules & in_kept])
    assert all(p >= 0.95 for _, p in purity.values()), purity
    # --particle-sigma (3 with --auto) then drops most broken particles of the kept classes
    names = read_relion_star(project.root / c2d.dir / "run_data.star",
                             "particles").data["rlnImageName"].to_numpy()
    selected = np.isin(names, read_relion_star(project.root / sel.dir / "particles.star",
                                               "particles").data["rlnImageName"].to_numpy())
    assert not (selected & ~in_kept).any()
    broken = labels == -2
    assert (broken & ~selected).sum() >= (broken & ~in_kept).sum() + 0.5 * (broken & in_kept).sum()
    assert (junk & ~selected).sum() >= 0.85 * junk.sum()  # the issue asks for 80 %
    # most of the good particles are kept, and few of the kept classes' are dropped
    assert (molecules & selected).sum() >= 0.8 * molecules.sum()
    assert (molecules & in_kept & ~selected).sum() <= 0.02 * (molecules & in_kept).sum()


# --------------------------------------------------------------------------------------
# --auto that would keep nothing (issue 6) and 3D classes
# --------------------------------------------------------------------------------------


def _optics(apix: float, box: int) -> pd.DataFrame:
    return pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                         "rlnVoltage": [200.0], "rlnSphericalAberration": [1.4],
                         "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [apix],
                         "rlnImageSize": [box], "rlnImageDimensionality": [2]})


def _write_2d_classification(root: Path, images: np.ndarray, counts: list[int],
                             resolution: list[float]) -> str:
    """A 2D classification on disk as class2d writes it; returns the optimiser (relative)."""
    folder = root / "Fake2D"
    folder.mkdir(parents=True)
    k, box, apix = len(images), images.shape[-1], 3.54
    write_mrc(folder / "run_it003_classes.mrcs", images.astype(np.float32),
              voxel_size_angstrom=apix)
    total = sum(counts)
    write_star(folder / "run_it003_model.star", {
        "model_general": {"rlnReferenceDimensionality": 2, "rlnPixelSize": apix},
        "model_classes": pd.DataFrame({
            "rlnReferenceImage": [f"{i + 1:06d}@Fake2D/run_it003_classes.mrcs"
                                  for i in range(k)],
            "rlnClassDistribution": [c / total for c in counts],
            "rlnEstimatedResolution": resolution}),
    })
    classes = np.repeat(np.arange(1, k + 1), counts)
    data = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@Particles/p.mrcs"
                                          for i in range(total)],
                         "rlnClassNumber": classes, "rlnOpticsGroup": 1})
    write_relion_star(folder / "run_it003_data.star",
                      RelionTable("particles", data, _optics(apix, box)))
    write_star(folder / "run_it003_optimiser.star", {"optimiser_general": {
        "rlnModelStarFile": "Fake2D/run_it003_model.star",
        "rlnExperimentalDataStarFile": "Fake2D/run_it003_data.star",
        "rlnParticleDiameter": 150.0, "rlnCurrentIteration": 3}})
    return "Fake2D/run_it003_optimiser.star"


def test_auto_that_keeps_no_class_fails_and_says_why(project: Project) -> None:
    # issue 6: --auto once "succeeded" with an empty class_averages.star
    n = 48
    good = _blob(n, (n / 2, n / 2), 8.0).numpy()
    images = np.stack([good, good, good])
    # no class has a resolution: every score is 0, whatever --min-score
    optimiser = _write_2d_classification(project.root, images, [40, 30, 30], [999.0] * 3)
    n_jobs = len(project.jobs())
    with pytest.raises(ParameterError) as err:
        submit(project, get_job_type("select"), {"auto": True},
               {"classes_from": [optimiser]})
    text = str(err.value)
    assert "--min-score 0.5" in text and "score 0.00" in text and "resolution 0.00" in text
    assert "--classes" in text
    assert len(project.jobs()) == n_jobs  # refused before a job was made
    assert not (project.root / "Select").exists() or not any(
        (project.root / "Select").iterdir())


def test_auto_keep_names_threshold_and_best_score() -> None:
    from cryospa.jobs.select import FEATURES, auto_keep

    scores = pd.DataFrame({
        "rlnClassNumber": [1, 2, 3], "rlnGroupNrParticles": [10, 80, 10],
        "rlnClassDistribution": [0.1, 0.8, 0.1],
        **{f"score{f.capitalize()}": [1.0, 1.0, 1.0] for f in FEATURES},
        "rlnClassScore": [0.2, 0.42, 0.1]})
    scores.loc[1, "scoreEdge"] = 0.42
    np.testing.assert_array_equal(auto_keep(scores, 0.4), [False, True, False])
    with pytest.raises(ParameterError) as err:
        auto_keep(scores, 0.6)
    text = str(err.value)
    assert "--min-score 0.6" in text and "class 2 (80 particles) with score 0.42" in text
    assert "edge 0.42" in text and "lower --min-score to 0.42" in text


def test_best_3d_class_is_the_largest_near_the_best_resolution() -> None:
    from cryospa.jobs.select import best_3d_class

    # class 3 is best resolved but tiny (a few particles reach a spurious resolution)
    assert best_3d_class(np.array([300, 500, 5, 195]), np.array([8.0, 8.5, 5.0, 14.0])) == 1
    # within 10 % of the best: the larger wins; beyond: the better resolved wins
    assert best_3d_class(np.array([400, 600]), np.array([8.0, 8.7])) == 1
    assert best_3d_class(np.array([400, 600]), np.array([8.0, 9.0])) == 0
    with pytest.raises(ValueError, match="need"):
        best_3d_class(np.array([1, 2]), np.array([3.0]))


def _write_3d_classification(root: Path, counts: list[int], resolution: list[float]) -> str:
    folder = root / "Fake3D"
    folder.mkdir(parents=True)
    k, box, apix = len(counts), 24, 5.0
    rng = np.random.default_rng(3)
    for i in range(k):
        write_mrc(folder / f"run_class{i + 1:03d}.mrc",
                  (rng.normal(size=(box, box, box)) + i).astype(np.float32),
                  voxel_size_angstrom=apix)
    write_star(folder / "run_model.star", {
        "model_general": {"rlnReferenceDimensionality": 3, "rlnPixelSize": apix},
        "model_classes": pd.DataFrame({
            "rlnReferenceImage": [f"{i + 1:06d}" for i in range(k)],
            "rlnClassDistribution": [c / sum(counts) for c in counts],
            "rlnEstimatedResolution": resolution}),
    })
    total = sum(counts)
    data = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@Particles/p.mrcs"
                                          for i in range(total)],
                         "rlnClassNumber": np.repeat(np.arange(1, k + 1), counts),
                         "rlnAngleRot": rng.uniform(-180, 180, total),
                         "rlnOpticsGroup": 1})
    write_relion_star(folder / "run_data.star",
                      RelionTable("particles", data, _optics(apix, box)))
    return "Fake3D/run_data.star"


def test_select_best_3d_class(project: Project) -> None:
    data_star = _write_3d_classification(project.root, [30, 50, 4, 16], [9.0, 9.5, 6.0, 15.0])
    record = submit(project, get_job_type("select"), {"auto": True}, {"class3d": [data_star]})
    assert record.status == "succeeded", record.error
    out = project.root / record.dir
    kept = read_relion_star(out / "particles.star", "particles").data
    assert len(kept) == 50 and set(kept["rlnClassNumber"]) == {2}
    volume, _ = read_mrc(out / "best_class.mrc")
    truth, _ = read_mrc(project.root / "Fake3D" / "run_class002.mrc")
    np.testing.assert_array_equal(volume, truth)
    assert {o.name for o in project.outputs(record.id)} == {"particles", "map"}
    assert "map of 3D class 2" in record.summary
    # the map is a Volume a later job takes
    resolved = project.resolve_input(get_job_type("resize").inputs[0], record.name)
    assert resolved.path.endswith("best_class.mrc")
    # by number, and refusals
    record = submit(project, get_job_type("select"), {"classes": "1,4"},
                    {"class3d": [data_star]})
    kept = read_relion_star(project.root / record.dir / "particles.star", "particles").data
    assert len(kept) == 46
    with pytest.raises(ParameterError, match="one classification"):
        submit(project, get_job_type("select"), {"auto": True}, {})
    with pytest.raises(ParameterError, match="last class"):
        submit(project, get_job_type("select"), {"classes": "5"}, {"class3d": [data_star]})
