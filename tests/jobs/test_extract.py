"""The extract job: true coordinates -> particles that reconstruct the true map; RELION parity.

The main data set is ``cryospa simulate --level micrographs`` at the tutorial's dose (30.65
e/Å²): 3 micrographs of 512² px at 3.54 Å/px with 40 D2 particles each; the CTF input is a
micrographs STAR with the true CTF, written into the project as a plain file.
"""

from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryospa.core.fourier import fourier_rescale
from cryospa.core.fsc import fsc, resolution_at_threshold
from cryospa.errors import CryospaError, InputFileError, ParameterError
from cryospa.io.coords import write_coordinates_star
from cryospa.io.mrc import ImageStack, read_mrc, write_mrc
from cryospa.io.star import (
    RelionTable,
    joined,
    read_relion_star,
    read_star,
    write_relion_star,
    write_star,
)
from cryospa.jobs.extract import background_radius_px, output_root
from cryospa.jobs.reconstruct import run_reconstruct
from cryospa.project.project import JobRecord, Project
from cryospa.project.runner import stop_job, submit
from cryospa.project.schema import RunOptions, get_job_type
from tests.conftest import requires_relion, run_relion
from tests.project.test_streaming import _wait_until_ended

SIM_ARGS = ("--level", "micrographs", "--sym", "D2", "--n_micrographs", "3", "--mic_size", "512",
            "--angpix", "3.54", "--particles_per_micrograph", "40", "--seed", "7")
CTF_STAR = "CtfTruth/micrographs_ctf.star"


def _run(project: Project, job: str, params: dict[str, object],
         inputs: dict[str, list[str]] | None = None) -> JobRecord:
    record = submit(project, get_job_type(job), params, inputs or {})
    assert record.status == "succeeded", record.error
    return record


def _stem_table(path: Path) -> pd.DataFrame:
    df = joined(read_relion_star(path))
    df["stem"] = [Path(n).stem for n in df["rlnMicrographName"]]
    return df


def _setup(project: Project, sim: Path) -> tuple[JobRecord, JobRecord]:
    """Import the simulated micrographs and true coordinates; write the true CTF STAR."""
    (project.root / "sim").symlink_to(sim)
    info = json.loads((sim / "ground_truth" / "simulation.json").read_text())
    scope = info["microscope"]
    mics = _run(project, "import micrographs", {
        "micrographs": "sim/Micrographs/*.mrc", "angpix": info["pixel_size_angstrom"],
        "kv": scope["voltage_kv"], "cs": scope["cs_mm"], "q0": scope["amplitude_contrast"]})
    table = read_relion_star(project.root / mics.dir / "micrographs.star")
    truth = _stem_table(sim / "ground_truth" / "micrographs_ctf.star")
    data = table.data.copy()
    data["stem"] = [Path(n).stem for n in data["rlnMicrographName"]]
    data = data.merge(truth[["stem", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]], on="stem")
    (project.root / "CtfTruth").mkdir()
    write_relion_star(project.root / CTF_STAR,
                      RelionTable("micrographs", data.drop(columns="stem"), table.optics))
    coords = _run(project, "import coordinates",
                  {"coords": "sim/ground_truth/coords/Micrographs/*_true.star"},
                  {"mics": [mics.name]})
    return mics, coords


def _with_true_poses(project: Project, particles_star: Path, sim: Path) -> Path:
    """The extracted particles joined with their true angles and origins (by coordinates)."""
    table = read_relion_star(particles_star)
    data = table.data.copy()
    data["stem"] = [Path(n).stem for n in data["rlnMicrographName"]]
    truth = _stem_table(sim / "ground_truth" / "particles_true.star")
    keys = ["stem", "rlnCoordinateX", "rlnCoordinateY"]
    for df in (data, truth):
        df["rlnCoordinateX"] = df["rlnCoordinateX"].round(6)
        df["rlnCoordinateY"] = df["rlnCoordinateY"].round(6)
    cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
    merged = data.merge(truth[keys + cols], on=keys, how="inner", validate="one_to_one")
    assert len(merged) == len(data)
    out = project.root / "with_true_poses.star"
    write_relion_star(out, RelionTable("particles", merged.drop(columns="stem"), table.optics))
    return out


def _fsc_pixels(rec_path: Path, sim: Path, pixel_size: float) -> float:
    """Resolution at FSC 0.5 against the true map, in pixel sizes of the reconstruction.

    The true map is Fourier re-scaled to the reconstruction's pixel size, and a larger
    reconstruction is cut to the true map's box (the comparison is inside that box).
    """
    rec, _ = read_mrc(rec_path)
    true, header = read_mrc(sim / "ground_truth" / "map_class001.mrc")
    n = round(true.shape[0] * header.voxel_size_angstrom[0] / pixel_size)
    if n != true.shape[0]:
        true = fourier_rescale(torch.from_numpy(true), (n, n, n)).numpy()
    s = rec.shape[0] // 2 - n // 2
    rec = rec[s : s + n, s : s + n, s : s + n]
    curve = fsc(torch.from_numpy(rec), torch.from_numpy(true))
    res = resolution_at_threshold(curve, box_size=n, pixel_size_angstrom=pixel_size,
                                  threshold=0.5)
    return res / pixel_size


@pytest.fixture
def sim(simulated: Callable[..., Path]) -> Path:
    return simulated(*SIM_ARGS)


def test_true_coordinates_reconstruct_the_true_map(project: Project, sim: Path) -> None:
    _, coords = _setup(project, sim)
    box = 44  # the ground truth's box (simulation.json box_size_px)
    rec = _run(project, "extract", {"box": box},
               {"micrographs": [CTF_STAR], "coordinates": [coords.name]})
    assert rec.summary == "120 particles from 3 micrographs, 44 px, 3.54 Å/px"
    star = project.root / rec.dir / "particles.star"
    table = read_relion_star(star)
    optics = table.optics.iloc[0]
    assert (optics["rlnImagePixelSize"], optics["rlnImageSize"],
            optics["rlnImageDimensionality"], optics["rlnVoltage"]) == (3.54, 44, 2, 200.0)
    assert "rlnMicrographPixelSize" not in table.optics.columns
    data = table.data
    assert data["rlnImageName"].iloc[0] == "000001@Extract/job003/Micrographs/mic001.mrcs"
    assert data["rlnMicrographName"].iloc[0] == "Import/job001/Micrographs/mic001.mrc"
    assert {"rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift"} <= set(data.columns)
    truth = _stem_table(sim / "ground_truth" / "micrographs_ctf.star").set_index("stem")
    stems = [Path(n).stem for n in data["rlnMicrographName"]]
    np.testing.assert_allclose(data["rlnDefocusU"], truth.loc[stems, "rlnDefocusU"])
    with ImageStack(project.root / "Extract/job003/Micrographs/mic002.mrcs") as stack:
        assert stack.shape == (40, 44, 44) and stack.pixel_size_angstrom == pytest.approx(3.54)
        images = stack[:]
    r = background_radius_px(44, 44, -1)  # 16 px
    d = np.arange(44) - 22
    bg = images[:, (d[:, None] ** 2 + d[None, :] ** 2) > r * r]
    np.testing.assert_allclose(bg.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(bg.std(axis=1), 1, atol=1e-4)
    # particles are white after --invert_contrast: the centre is brighter than the background
    assert images[:, 17:27, 17:27].mean() > 0.2

    posed = _with_true_poses(project, star, sim)
    out = project.root / "rec.mrc"
    run_reconstruct(posed, out, ctf=True, symmetry="D2", progress=False)
    pixels = _fsc_pixels(out, sim, 3.54)
    assert pixels <= 2.5, f"FSC 0.5 with the true map at {pixels:.2f} pixels (want <= 2.5)"


@pytest.mark.slow
def test_tutorial_pixel_size_reconstructs_the_true_map(
    project: Project, simulated: Callable[..., Path]
) -> None:
    """The tutorial's acquisition (1.77 Å/px, 12 x 1024² px, 720 particles), box 128 -> 96."""
    sim = simulated("--level", "micrographs", "--sym", "D2", "--n_micrographs", "12",
                    "--mic_size", "1024", "--angpix", "1.77", "--particles_per_micrograph", "60")
    _, coords = _setup(project, sim)
    rec = _run(project, "extract", {"box": 128, "rescale": 96},
               {"micrographs": [CTF_STAR], "coordinates": [coords.name]})
    assert rec.summary.endswith("128 -> 96 px, 2.36 Å/px")
    posed = _with_true_poses(project, project.root / rec.dir / "particles.star", sim)
    out = project.root / "rec.mrc"
    run_reconstruct(posed, out, ctf=True, symmetry="D2", progress=False)
    pixels = _fsc_pixels(out, sim, 1.77 * 128 / 96)
    assert pixels <= 2.5, f"FSC 0.5 with the true map at {pixels:.2f} pixels (want <= 2.5)"


@requires_relion
def test_relion_extracts_the_same_boxes_and_reads_ours(project: Project, sim: Path) -> None:
    _, coords = _setup(project, sim)
    inputs = {"micrographs": [CTF_STAR], "coordinates": [coords.name]}
    plain = _run(project, "extract", {"box": 44}, inputs)
    scaled = _run(project, "extract", {"box": 64, "rescale": 32, "edge": "pad"}, inputs)
    assert scaled.summary == ("120 particles from 3 micrographs (8 padded at edges), 64 -> 32 px, "
                              "7.08 Å/px")
    common = ["relion_preprocess", "--i", CTF_STAR, "--coord_dir", "sim/ground_truth/coords/",
              "--coord_suffix", "_true.star", "--extract", "--invert_contrast", "--norm"]
    run_relion([*common, "--part_star", "Rel1/particles.star", "--part_dir", "Rel1/",
                "--extract_size", "44", "--bg_radius", "16"], project.root)
    run_relion([*common, "--part_star", "Rel2/particles.star", "--part_dir", "Rel2/",
                "--extract_size", "64", "--scale", "32",
                "--bg_radius", str(background_radius_px(64, 32, -1))], project.root)
    for mic in ("mic001", "mic003"):
        ours, _ = read_mrc(project.root / plain.dir / "Micrographs" / f"{mic}.mrcs")
        theirs, _ = read_mrc(project.root / "Rel1" / "Micrographs" / f"{mic}.mrcs")
        np.testing.assert_allclose(ours, theirs, atol=2e-4)  # same pixels, same normalisation
        # re-scaled: RELION keeps only the +N/2 Nyquist row and column, we fold +-N/2 (scipy's
        # rule); all other Fourier terms agree
        ours, _ = read_mrc(project.root / scaled.dir / "Micrographs" / f"{mic}.mrcs")
        theirs, _ = read_mrc(project.root / "Rel2" / "Micrographs" / f"{mic}.mrcs")
        a, b = (np.fft.rfft2(x) for x in (ours, theirs))
        for f in (a, b):
            f[:, 16, :] = 0
            f[:, :, 16] = 0
        a, b = (np.fft.irfft2(f, s=(32, 32)).reshape(len(f), -1) for f in (a, b))
        corr = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)]
        assert min(corr) > 0.9999
    # RELION reads our stacks and STAR: its reconstruction matches the truth too
    posed = _with_true_poses(project, project.root / plain.dir / "particles.star", sim)
    run_relion(["relion_reconstruct", "--i", posed.name, "--o", "relion_rec.mrc", "--ctf",
                "--sym", "D2"], project.root)
    pixels = _fsc_pixels(project.root / "relion_rec.mrc", sim, 3.54)
    assert pixels <= 2.5, f"RELION's reconstruction: FSC 0.5 at {pixels:.2f} pixels"


def test_reextraction_recentres_on_refined_origins(project: Project, sim: Path) -> None:
    _, coords = _setup(project, sim)
    first = _run(project, "extract", {"box": 40},
                 {"micrographs": [CTF_STAR], "coordinates": [coords.name]})
    table = read_relion_star(project.root / first.dir / "particles.star")
    data = table.data.copy()
    rng = np.random.default_rng(1)
    apix = 3.54
    origins_px = rng.uniform(-4.5, 4.5, (len(data), 2))
    data["rlnOriginXAngst"] = origins_px[:, 0] * apix
    data["rlnOriginYAngst"] = origins_px[:, 1] * apix
    data["rlnAngleRot"] = rng.uniform(-180, 180, len(data))
    data["rlnClassNumber"] = 3
    refined = project.root / "Refine" / "run_data.star"
    refined.parent.mkdir()
    write_relion_star(refined, RelionTable("particles", data, table.optics))

    again = _run(project, "extract", {"box": 40},
                 {"micrographs": [CTF_STAR], "particles": ["Refine/run_data.star"]})
    out = read_relion_star(project.root / again.dir / "particles.star").data
    shift = np.sign(origins_px) * np.floor(np.abs(origins_px) + 0.5)  # RELION's ROUND
    moved = data[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy() - shift
    remainder = (origins_px - shift) * apix
    # the same boxes as extracting at the moved coordinates
    (project.root / "Moved").mkdir()
    files = {}
    for mic, rows in data.groupby("rlnMicrographName"):
        files[mic] = f"Moved/{Path(mic).stem}_moved.star"
        xy = moved[rows.index.to_numpy()]
        write_coordinates_star(project.root / files[mic], pd.DataFrame(
            {"rlnCoordinateX": xy[:, 0], "rlnCoordinateY": xy[:, 1]}))
    write_star(project.root / "Moved" / "coordinates.star", {"coordinate_files": pd.DataFrame(
        {"rlnMicrographName": list(files), "rlnMicrographCoordinates": list(files.values())})})
    direct = _run(project, "extract", {"box": 40},
                  {"micrographs": [CTF_STAR], "coordinates": ["Moved/coordinates.star"]})
    dropped = int(again.summary.split("(")[1].split()[0]) if "dropped" in again.summary else 0
    assert direct.summary == again.summary
    kept = read_relion_star(project.root / direct.dir / "particles.star").data
    assert len(out) == len(kept) == len(data) - dropped
    key = ["rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY"]
    np.testing.assert_allclose(out[key[1:]].to_numpy(), kept[key[1:]].to_numpy(), atol=1e-9)
    index = pd.MultiIndex.from_frame(pd.DataFrame(moved.round(6), columns=key[1:]))
    where = index.get_indexer(pd.MultiIndex.from_frame(out[key[1:]].round(6)))
    assert (where >= 0).all()
    np.testing.assert_allclose(out[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(),
                               remainder[where], atol=1e-9)
    assert np.abs(out[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()).max() <= apix / 2
    np.testing.assert_allclose(out["rlnAngleRot"], data["rlnAngleRot"].to_numpy()[where])
    assert (out["rlnClassNumber"] == 3).all()
    for mic in ("mic001", "mic002"):
        a, _ = read_mrc(project.root / again.dir / "Micrographs" / f"{mic}.mrcs")
        b, _ = read_mrc(project.root / direct.dir / "Micrographs" / f"{mic}.mrcs")
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# Bad input and streaming, on small synthetic micrographs
# --------------------------------------------------------------------------------------


def _small_micrographs(project: Project, n: int, shape: tuple[int, int] = (96, 128),
                       folder: str = "Raw") -> list[Path]:
    rng = np.random.default_rng(0)
    (project.root / folder).mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        path = project.root / folder / f"m{i:02d}.mrc"
        write_mrc(path, rng.normal(100, 10, shape).astype(np.float32), voxel_size_angstrom=2.0)
        paths.append(path)
    return paths


def _picks(project: Project, name: str, xy: list[tuple[float, float]],
           folder: str = "Picks") -> None:
    (project.root / folder).mkdir(exist_ok=True)
    df = pd.DataFrame(xy, columns=["rlnCoordinateX", "rlnCoordinateY"], dtype=float)
    write_coordinates_star(project.root / folder / f"{name}_pick.star", df)


def test_bad_input_is_skipped_counted_or_refused(project: Project) -> None:
    _small_micrographs(project, 4)
    _small_micrographs(project, 1, shape=(20, 20), folder="Tiny")
    shutil.copy(project.root / "Tiny" / "m00.mrc", project.root / "Raw" / "m04.mrc")
    mics = _run(project, "import micrographs", {"micrographs": "Raw/*.mrc", "angpix": 2.0})
    _picks(project, "m00", [(40, 40), (70.5, 50.2), (5, 50), (120, 90)])  # 2 cross the edge
    _picks(project, "m01", [(60, 48)])
    _picks(project, "m02", [])  # empty coordinate file
    _picks(project, "m03", [(30, 30)])
    _picks(project, "m04", [(10, 10)])  # micrograph smaller than the box
    coords = _run(project, "import coordinates", {"coords": "Picks/*.star"}, {"mics": [mics.name]})
    table = read_relion_star(project.root / mics.dir / "micrographs.star")
    data = table.data.copy()
    data["rlnDefocusU"] = [15000.0, 12000.0, 13000.0, math.nan, 14000.0]  # m03: no CTF
    data["rlnDefocusV"] = data["rlnDefocusU"] - 100
    data["rlnDefocusAngle"] = 10.0
    data["rlnCtfMaxResolution"] = 4.5
    write_relion_star(project.root / "ctf.star", RelionTable("micrographs", data, table.optics))

    rec = _run(project, "extract", {"box": 32, "rescale": 16, "bg_diameter": 24},
               {"micrographs": ["ctf.star"], "coordinates": [coords.name]})
    assert rec.summary == ("3 particles from 2 micrographs (2 dropped at edges, 3 micrographs "
                           "skipped), 32 -> 16 px, 4 Å/px")
    log = (project.root / rec.dir / "run.out").read_text()
    assert "m02.mrc: skipped: no particles in its coordinate file" in log
    assert "m03.mrc: skipped: no CTF" in log
    assert "m04.mrc: skipped: the 32 px box is larger than the 20 x 20 micrograph" in log
    assert "m00.mrc: 2 of 4 boxes cross the edge, dropped" in log
    out = read_relion_star(project.root / rec.dir / "particles.star")
    assert out.data["rlnCtfMaxResolution"].tolist() == [4.5] * 3
    assert out.optics["rlnImagePixelSize"].tolist() == [4.0]
    assert len(ImageStack(project.root / rec.dir / "Micrographs" / "m00.mrcs")) == 2

    # no CTF columns at all: extracted without them, with a warning
    rec = _run(project, "extract", {"box": 32},
               {"micrographs": [mics.name], "coordinates": [coords.name]})
    assert "rlnDefocusU" not in read_relion_star(project.root / rec.dir / "particles.star").data
    assert "has no CTF columns" in (project.root / rec.dir / "run.out").read_text()

    # nothing extractable: the job fails and says why
    failed = submit(project, get_job_type("extract"), {"box": 128},
                    {"micrographs": [mics.name], "coordinates": [coords.name]})
    assert failed.status == "failed"
    assert "no particles extracted" in failed.error
    assert "box is larger than" in failed.error

    extract = get_job_type("extract")
    both = {"micrographs": [mics.name], "coordinates": [coords.name], "particles": ["x"]}
    for params, inputs, message in [
        ({"box": 33}, {"micrographs": [mics.name], "coordinates": [coords.name]}, "even"),
        ({"box": 32, "rescale": 15}, {"micrographs": [mics.name], "coordinates": [coords.name]},
         "even"),
        ({"box": 32, "bg_diameter": 40}, {"micrographs": [mics.name],
                                          "coordinates": [coords.name]}, "half the box"),
        ({"box": 32}, {"micrographs": [mics.name]}, "got neither"),
    ]:
        with pytest.raises(ParameterError, match=message):
            submit(project, extract, params, inputs)
    with pytest.raises(CryospaError):
        submit(project, extract, {"box": 32}, both)
    # re-extraction needs refined origins to re-centre on
    picked = project.root / rec.dir / "particles.star"
    with pytest.raises(InputFileError, match=r"rlnOriginXAngst.*--no-recenter"):
        submit(project, extract, {"box": 32}, {"micrographs": [mics.name],
                                               "particles": [str(picked)]})


def test_output_names_follow_relion() -> None:
    assert str(output_root("MotionCorr/job002/Movies/mic001.mrc")) == "Movies/mic001"
    assert str(output_root("Import/job001/Micrographs/a/b.mrc")) == "Micrographs/a/b"
    assert str(output_root("/data/set1/mic.mrc")) == "data/set1/mic"
    assert str(output_root("../raw/mic.tiff")) == "raw/mic"
    assert background_radius_px(256, 64, 200) == 25  # the tutorial: 200 px of 256, at 64
    assert background_radius_px(256, 256, -1) == 96


def test_streaming_extracts_each_micrograph_once(project: Project, tmp_path: Path) -> None:
    n = 5
    sources = _small_micrographs(project, n, folder="Detector")
    for i in range(n):
        _picks(project, f"m{i:02d}", [(40, 40), (80, 50)], folder="PicksLater")
    (project.root / "Raw").mkdir()
    (project.root / "Picks").mkdir()
    fast = RunOptions(stream=True, poll=0.1)

    def deliver(src: Path) -> None:
        shutil.copy(src, project.root / "Raw" / src.name)
        shutil.copy(project.root / "PicksLater" / f"{src.stem}_pick.star",
                    project.root / "Picks" / f"{src.stem}_pick.star")

    mics = submit(project, get_job_type("import micrographs"),
                  {"micrographs": "Raw/*.mrc", "angpix": 2.0, "settle": 0.2}, {},
                  run=fast, background=True)
    # started before the import has written any micrograph: waits for them
    coords = submit(project, get_job_type("import coordinates"),
                    {"coords": "Picks/*.star", "settle": 0.2}, {"mics": [mics.name]},
                    run=fast, background=True)
    deliver(sources[0])
    deadline = time.monotonic() + 60
    while not (project.path(mics.dir) / "micrographs.star").is_file():  # the first batch
        assert time.monotonic() < deadline
        time.sleep(0.1)
    extract = submit(project, get_job_type("extract"), {"box": 32},
                     {"micrographs": [mics.name], "coordinates": [coords.name]},
                     run=fast, background=True)
    star = project.path(extract.dir) / "particles.star"
    seen: list[int] = []

    def deliver_rest() -> None:
        for src in sources[1:]:
            time.sleep(0.4)
            if star.is_file():
                seen.append(len(read_star(star)["particles"]))
            deliver(src)

    worker = threading.Thread(target=deliver_rest)
    worker.start()
    worker.join(timeout=120)
    stop_job(project, mics.id)  # the acquisition ended; the others follow their upstream
    for job in (mics, coords, extract):
        status = _wait_until_ended(project, job.id, 90)
        assert status == "succeeded", project.job_by_id(job.id).error
    items = project.item_results(extract.id)
    assert sorted(items) == [f"{mics.dir}/Micrographs/m{i:02d}.mrc" for i in range(n)]
    data = read_relion_star(star).data
    assert len(data) == 2 * n
    assert data["rlnImageName"].is_unique
    assert seen and seen[0] < 2 * n and seen == sorted(seen)  # grew while streaming
