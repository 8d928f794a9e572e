"""The import jobs: movies (gain, summary), micrographs, particles, coordinates, maps, optics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryospa.errors import CryospaError, InputFileError, ParameterError
from cryospa.io.coords import write_box
from cryospa.io.movies import transform_gain
from cryospa.io.mrc import read_mrc, write_mrc
from cryospa.io.star import (
    RelionTable,
    read_relion_star,
    read_star,
    write_relion_star,
    write_star,
)
from cryospa.project.project import JobRecord, Project
from cryospa.project.runner import submit
from cryospa.project.schema import get_job_type
from tests.project.helpers import make_movies


def _run(project: Project, job: str, params: dict[str, object],
         inputs: dict[str, list[str]] | None = None) -> JobRecord:
    record = submit(project, get_job_type(job), params, inputs or {})
    assert record.status == "succeeded", record.error
    return record


def test_import_movies_star_and_summary(project: Project) -> None:
    make_movies(project.root / "Raw" / "a", 2, frames=24, shape=(40, 36))
    make_movies(project.root / "Raw" / "b", 1, frames=24, shape=(40, 36))
    gain = np.random.default_rng(1).uniform(0.9, 1.1, (36, 40)).astype(np.float32)
    write_mrc(project.root / "gain.mrc", gain, voxel_size_angstrom=1.0)
    (project.root / "defects.txt").write_text("1 2 3 4\n")
    rec = _run(project, "import movies", {
        "movies": "Raw/*/*.tif", "angpix": 0.885, "kv": 200.0, "cs": 1.4, "q0": 0.07,
        "dose_per_frame": 1.277, "pre_exposure": 0.5, "gain": "gain.mrc", "gain_rot": 1,
        "gain_flip": 2, "defects": "defects.txt", "optics_group_name": "og1",
    })
    assert rec.summary == "3 movies, 24 frames, 36 x 40, 0.885 Å/px"
    table = read_relion_star(project.root / rec.dir / "movies.star", "movies")
    optics = table.optics.iloc[0]
    assert optics["rlnOpticsGroupName"] == "og1"
    assert (optics["rlnMicrographOriginalPixelSize"], optics["rlnVoltage"],
            optics["rlnSphericalAberration"], optics["rlnAmplitudeContrast"]) == (
        0.885, 200.0, 1.4, 0.07)
    names = table.data["rlnMicrographMovieName"].tolist()
    assert names == ["Import/job001/Movies/a/mov000.tif", "Import/job001/Movies/a/mov001.tif",
                     "Import/job001/Movies/b/mov000.tif"]  # no clash between a/ and b/
    for name in names:
        assert (project.root / name).resolve().is_file()
    assert (table.data["rlnMicrographGainName"] == "Import/job001/gain.mrc").all()
    assert (table.data["rlnMicrographDefectFile"] == "defects.txt").all()
    assert (table.data["rlnMicrographDoseRate"] == 1.277).all()
    assert (table.data["rlnMicrographPreExposure"] == 0.5).all()
    written, _ = read_mrc(project.root / "Import/job001/gain.mrc")
    np.testing.assert_array_equal(written, transform_gain(gain, rotation=1, flip=2))


def test_import_movies_gain_shape_mismatch(project: Project) -> None:
    make_movies(project.root / "Raw", 2, shape=(40, 36))
    write_mrc(project.root / "gain.mrc", np.ones((40, 36), np.float32), voxel_size_angstrom=1)
    record = submit(project, get_job_type("import movies"),
                    {"movies": "Raw/*.tif", "angpix": 1.0, "gain": "gain.mrc", "gain_rot": 1},
                    {})
    assert record.status == "failed"
    assert "frames are 36 x 40 pixels but the gain reference" in record.error
    assert "--gain-rot" in record.error


def test_import_micrographs(project: Project) -> None:
    (project.root / "Mics").mkdir()
    for i in range(3):
        write_mrc(project.root / "Mics" / f"mic{i:03d}.mrc", np.zeros((20, 30), np.float32),
                  voxel_size_angstrom=1.77)
    rec = _run(project, "import micrographs", {"micrographs": "Mics/*.mrc", "angpix": 1.77})
    assert rec.summary == "3 micrographs, 30 x 20, 1.77 Å/px"
    table = read_relion_star(project.root / rec.dir / "micrographs.star", "micrographs")
    assert table.optics["rlnMicrographPixelSize"].tolist() == [1.77]
    assert len(table.data) == 3


def _particles(project: Project, n: int = 10, stack_n: int = 10) -> Path:
    (project.root / "ext").mkdir()
    write_mrc(project.root / "ext" / "parts.mrcs", np.zeros((stack_n, 16, 16), np.float32),
              voxel_size_angstrom=2.0)
    data = pd.DataFrame({
        "rlnImageName": [f"{i + 1:06d}@parts.mrcs" for i in range(n)],  # relative to the STAR
        "rlnDefocusU": 10000.0, "rlnDefocusV": 10000.0, "rlnDefocusAngle": 0.0,
        "rlnOpticsGroup": 1,
    })
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g"],
                           "rlnImagePixelSize": [2.0], "rlnImageSize": [16],
                           "rlnImageDimensionality": [2], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    star = project.root / "ext" / "particles.star"
    write_relion_star(star, RelionTable("particles", data, optics))
    return star


def test_import_particles(project: Project) -> None:
    _particles(project)
    rec = _run(project, "import particles", {"particles": "ext/particles.star"})
    assert rec.summary == "10 particles in 1 stacks, 16 px, 2 Å/px, 1 optics group"
    table = read_relion_star(project.root / rec.dir / "particles.star", "particles")
    assert table.data["rlnImageName"].iloc[3] == "000004@ext/parts.mrcs"  # project-relative


def test_import_particles_missing_or_short_stack(project: Project) -> None:
    star = _particles(project, n=12, stack_n=10)
    with pytest.raises(InputFileError, match=r"parts\.mrcs: stack has 10 images but "
                                             "particles.star uses image 12"):
        submit(project, get_job_type("import particles"), {"particles": str(star)}, {})
    (project.root / "ext" / "parts.mrcs").unlink()
    with pytest.raises(InputFileError, match=r"parts\.mrcs: particle stack named in "
                                             "particles.star not found"):
        submit(project, get_job_type("import particles"), {"particles": str(star)}, {})
    assert project.jobs() == []


def test_import_coordinates(project: Project) -> None:
    (project.root / "Mics").mkdir()
    for i in range(3):
        write_mrc(project.root / "Mics" / f"mic{i:03d}.mrc", np.zeros((20, 30), np.float32),
                  voxel_size_angstrom=1.0)
    mics = _run(project, "import micrographs", {"micrographs": "Mics/*.mrc", "angpix": 1.0})
    (project.root / "Picks").mkdir()
    for i in range(2):
        df = pd.DataFrame({"rlnCoordinateX": [10.0, 20.0 + i], "rlnCoordinateY": [5.0, 7.0]})
        write_box(project.root / "Picks" / f"mic{i:03d}.box", df, box_size=8)
    rec = _run(project, "import coordinates", {"coords": "Picks/*.box"}, {"mics": [mics.name]})
    assert rec.summary == "4 particles on 2 micrographs"
    listing = read_star(project.root / rec.dir / "coordinates.star")["coordinate_files"]
    assert listing["rlnMicrographName"].tolist() == [
        "Import/job001/Micrographs/mic000.mrc", "Import/job001/Micrographs/mic001.mrc"]
    coords = read_star(project.root / listing["rlnMicrographCoordinates"].iloc[1])
    table = next(iter(coords.values()))
    assert table["rlnCoordinateX"].tolist() == [10.0, 21.0]
    # RELION 3.1 finds them with --coord_dir <job>/ --coord_suffix _coords.star
    assert (project.root / rec.dir / "Micrographs/mic001_coords.star").is_file()  # as RELION
    with pytest.raises(InputFileError, match="matches a micrograph"):
        (project.root / "Other").mkdir()
        write_box(project.root / "Other" / "zzz.box", df, box_size=8)
        submit(project, get_job_type("import coordinates"), {"coords": "Other/*.box"},
               {"mics": [mics.name]})


def test_import_volume_and_mask(project: Project) -> None:
    vol = np.random.default_rng(0).standard_normal((16, 16, 16)).astype(np.float32)
    write_mrc(project.root / "map.mrc", vol, voxel_size_angstrom=0.0)
    with pytest.raises(InputFileError, match=r"no pixel size.*--angpix"):
        submit(project, get_job_type("import volume"), {"map": "map.mrc"}, {})
    rec = _run(project, "import volume", {"map": "map.mrc", "angpix": 3.0})
    assert rec.summary == "volume box 16, 3 Å/px"
    data, header = read_mrc(project.root / rec.dir / "volume.mrc")
    np.testing.assert_array_equal(data, vol)
    assert header.voxel_size_angstrom[0] == pytest.approx(3.0)
    write_mrc(project.root / "flat.mrc", np.zeros((16, 16, 8), np.float32),
              voxel_size_angstrom=1.0)
    with pytest.raises(InputFileError, match="cubic 3D map"):
        submit(project, get_job_type("import volume"), {"map": "flat.mrc"}, {})
    write_mrc(project.root / "mask.mrc", np.clip(vol, 0, 1), voxel_size_angstrom=3.0)
    assert _run(project, "import mask", {"map": "mask.mrc"}).summary == "mask box 16, 3 Å/px"
    # a mask with values outside [0, 1] fails in the job, with the reason
    record = submit(project, get_job_type("import mask"), {"map": "map.mrc", "angpix": 3.0}, {})
    assert record.status == "failed" and "not [0, 1]" in record.error


def test_import_optics_regex_and_file(project: Project) -> None:
    for square in (1, 2):
        make_movies(project.root / "Raw", 2, prefix=f"GridSquare_{square}_mov", seed=square)
    movies = _run(project, "import movies", {"movies": "Raw/*.tif", "angpix": 1.0})
    rec = _run(project, "import optics", {"regex": r"GridSquare_(\d+)"}, {"i": [movies.name]})
    assert rec.summary == "4 movies in 2 optics groups (2, 2)"
    table = read_relion_star(project.root / rec.dir / "movies.star", "movies")
    assert table.optics["rlnOpticsGroupName"].tolist() == ["opticsGroup_1", "opticsGroup_2"]
    assert table.data["rlnOpticsGroup"].tolist() == [1, 1, 2, 2]
    # a mapping file with per-group optics values
    mapping = pd.DataFrame({
        "rlnMicrographMovieName": [f"GridSquare_{s}_mov{i:03d}.tif" for s in (1, 2)
                                   for i in range(2)],
        "rlnOpticsGroupName": ["A", "B", "A", "B"],
    })
    optics = pd.DataFrame({"rlnOpticsGroupName": ["B"], "rlnOpticsGroup": [2],
                           "rlnVoltage": [200.0]})
    write_star(project.root / "groups.star", {"optics": optics, "movies": mapping})
    rec2 = _run(project, "import optics", {"groups": "groups.star"}, {"i": [movies.name]})
    table2 = read_relion_star(project.root / rec2.dir / "movies.star", "movies")
    assert table2.optics["rlnOpticsGroupName"].tolist() == ["A", "B"]
    assert table2.optics["rlnVoltage"].tolist() == [300.0, 200.0]
    with pytest.raises(ParameterError, match="match no optics group"):
        submit(project, get_job_type("import optics"), {"regex": "nothing_(x)"},
               {"i": [movies.name]})
    with pytest.raises(ParameterError, match="exactly one of --groups and --regex"):
        submit(project, get_job_type("import optics"), {}, {"i": [movies.name]})


def test_join_merges_and_renumbers_optics(project: Project) -> None:
    make_movies(project.root / "Raw", 2)
    a = _run(project, "import movies", {"movies": "Raw/*.tif", "angpix": 1.0})
    b = _run(project, "import movies", {"movies": "Raw/*.tif", "angpix": 1.0})
    c = _run(project, "import movies", {"movies": "Raw/*.tif", "angpix": 1.3})
    rec = _run(project, "join", {}, {"i": [a.name, b.name, c.name]})
    table = read_relion_star(project.root / rec.dir / "join_movies.star", "movies")
    assert table.optics["rlnMicrographOriginalPixelSize"].tolist() == [1.0, 1.3]
    assert table.optics["rlnOpticsGroupName"].tolist() == ["opticsGroup1", "opticsGroup2"]
    assert table.data["rlnOpticsGroup"].tolist() == [1, 1, 1, 1, 2, 2]
    with pytest.raises(CryospaError, match="at least two"):
        submit(project, get_job_type("join"), {}, {"i": [a.name]})
    with pytest.raises(ParameterError, match="goes past the last row"):
        submit(project, get_job_type("subset"), {"rows": "1-9"}, {"i": [a.name]})


def test_import_movies_of_the_simulated_tiny_preset(project: Project) -> None:
    from cryospa.cli.main import main as cli

    assert cli(["simulate", "--preset", "tiny", "--o", str(project.root / "Raw")]) == 0
    rec = _run(project, "import movies", {
        "movies": "Raw/Movies/*.tiff", "angpix": 3.54, "kv": 200.0, "cs": 1.4, "q0": 0.1,
        "dose_per_frame": 1.277, "gain": "Raw/gain.mrc", "defects": "Raw/defects.txt",
    })
    assert rec.summary == "2 movies, 8 frames, 256 x 256, 3.54 Å/px"
    table = read_relion_star(project.root / rec.dir / "movies.star", "movies")
    assert table.data["rlnMicrographMovieName"].tolist() == [
        "Import/job001/Movies/mov001.tiff", "Import/job001/Movies/mov002.tiff"]
    gain, _ = read_mrc(project.root / "Import/job001/gain.mrc")
    raw_gain, _ = read_mrc(project.root / "Raw/gain.mrc")
    np.testing.assert_array_equal(gain, raw_gain)
