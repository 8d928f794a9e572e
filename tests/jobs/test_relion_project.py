"""RELION 3.1 reads what the project writes: movies.star and default_pipeline.star."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryospa.io.mrc import write_mrc
from cryospa.io.star import read_relion_star, read_star
from cryospa.project.project import Project
from cryospa.project.runner import submit
from cryospa.project.schema import get_job_type
from tests.conftest import relion_available, requires_relion, run_relion
from tests.project.helpers import make_movies

pytestmark = pytest.mark.relion


@pytest.fixture
def project(tmp_path: Path) -> Project:
    project = Project.init(tmp_path / "P")
    make_movies(project.root / "Raw", 3, frames=6, shape=(64, 48))
    write_mrc(project.root / "gain.mrc", np.ones((64, 48), np.float32), voxel_size_angstrom=1)
    return project


@requires_relion
def test_relion_reads_movies_star(project: Project) -> None:
    record = submit(project, get_job_type("import movies"),
                    {"movies": "Raw/*.tif", "angpix": 0.885, "dose_per_frame": 1.2,
                     "gain": "gain.mrc"}, {}, alias="movies")
    assert record.status == "succeeded"
    star = f"{record.dir}/movies.star"
    run_relion(["relion_star_handler", "--i", star, "--o", "relion_copy.star"], project.root)
    ours = read_relion_star(project.root / star, "movies")
    theirs = read_relion_star(project.root / "relion_copy.star", "movies")
    assert theirs.data["rlnMicrographMovieName"].tolist() == \
        ours.data["rlnMicrographMovieName"].tolist()
    assert theirs.data["rlnMicrographGainName"].tolist() == \
        ours.data["rlnMicrographGainName"].tolist()
    for col in ("rlnMicrographOriginalPixelSize", "rlnVoltage", "rlnSphericalAberration",
                "rlnAmplitudeContrast"):
        assert theirs.optics[col].tolist() == pytest.approx(ours.optics[col].tolist())
    # RELION's own motion correction runs on it (movies found through the links)
    if not relion_available("relion_run_motioncorr"):
        pytest.skip("relion_run_motioncorr not installed")
    run_relion(["relion_run_motioncorr", "--i", star, "--o", "MotionCorr/relion/", "--use_own",
                "--j", "1", "--patch_x", "1", "--patch_y", "1", "--dose_per_frame", "1.2",
                "--gainref", "Import/job001/gain.mrc"], project.root)
    mics = read_relion_star(project.root / "MotionCorr/relion/corrected_micrographs.star",
                            "micrographs")
    assert len(mics.data) == 3


@requires_relion
def test_relion_reads_pipeline(project: Project) -> None:
    movies = get_job_type("import movies")
    submit(project, movies, {"movies": "Raw/*.tif", "angpix": 1.0}, {}, alias="raw")
    submit(project, get_job_type("subset"), {"rows": "1-2"}, {"i": ["raw"]})
    submit(project, get_job_type("join"), {}, {"i": ["job001", "job002"]})
    failed = submit(project, movies, {"movies": "Raw/*.tif", "angpix": 1.0, "gain": "gain.mrc",
                                      "gain_rot": 1}, {})
    assert failed.status == "failed"  # a 48 x 64 gain after rotation does not fit
    ours = read_star(project.root / "default_pipeline.star")
    run_relion(["relion_pipeliner", "--check_job_completion"], project.root)
    theirs = read_star(project.root / "default_pipeline.star")
    assert list(theirs) == list(ours)
    for name, table in ours.items():
        assert theirs[name].astype(str).values.tolist() == table.astype(str).values.tolist(), name
    procs = theirs["pipeline_processes"]
    assert procs["rlnPipeLineProcessType"].tolist() == [0, 7, 13, 0]
    assert procs["rlnPipeLineProcessStatus"].tolist() == [2, 2, 2, 3]
    assert theirs["pipeline_input_edges"].values.tolist() == [
        ["Import/job001/movies.star", "Select/job002/"],
        ["Import/job001/movies.star", "JoinStar/job003/"],
        ["Select/job002/movies.star", "JoinStar/job003/"],
    ]
