"""Projects: init / open, job records and folders, inputs, errors, trash, graph, abort."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cryospa.cli.main import build_parser
from cryospa.cli.main import main as cli
from cryospa.errors import CryospaError, InputFileError, ParameterError
from cryospa.io.star import read_star
from cryospa.project.graph import graph_picture, graph_text
from cryospa.project.project import Project
from cryospa.project.runner import abort_job, continue_job, submit
from cryospa.project.schema import RunOptions, get_job_type
from tests.project.helpers import make_movies


@pytest.fixture
def project(tmp_path: Path) -> Project:
    p = Project.init(tmp_path / "P")
    make_movies(p.root / "Raw", 4)
    return p


def _import(project: Project, alias: str | None = None, **params: object) -> int:
    record = submit(project, get_job_type("import movies"),
                    {"movies": "Raw/*.tif", "angpix": 1.0, **params}, {}, alias=alias)
    assert record.status == "succeeded", record.error
    return record.id


def test_init_and_open_upwards(tmp_path: Path) -> None:
    project = Project.init(tmp_path / "P")
    deep = project.root / "a" / "b"
    deep.mkdir(parents=True)
    assert Project.open(deep).root == project.root
    with pytest.raises(CryospaError, match=r"not a cryospa project.*cryospa init"):
        Project.open(tmp_path)
    with pytest.raises(CryospaError, match="already a cryospa project"):
        Project.init(project.root)
    (tmp_path / "R").mkdir()
    (tmp_path / "R" / "default_pipeline.star").write_text("data_pipeline_general\n")
    with pytest.raises(CryospaError, match="RELION project"):
        Project.init(tmp_path / "R")


def test_job_folders_alias_and_pipeline(project: Project) -> None:
    first = _import(project, alias="movies")
    second = _import(project)
    assert (first, second) == (1, 2)
    root = project.root
    assert (root / "Import/job001/movies.star").is_file()
    assert (root / "Import/job001/RELION_JOB_EXIT_SUCCESS").is_file()
    assert (root / "Import/job001/job.star").is_file()
    assert "++++ Executing new job on" in (root / "Import/job001/note.txt").read_text()
    link = root / "Import/movies"
    assert link.is_symlink() and os.readlink(link) == "../Import/job001/"
    assert (link / "movies.star").is_file()
    for ref in ("job001", "1", "001", "movies", "Import/job001/", "Import/job001",
                "Import/movies/"):
        assert project.job(ref).id == 1, ref
    blocks = read_star(root / "default_pipeline.star")
    procs = blocks["pipeline_processes"]
    assert procs["rlnPipeLineProcessName"].tolist() == ["Import/job001/", "Import/job002/"]
    assert procs["rlnPipeLineProcessAlias"].tolist() == ["Import/movies/", "None"]
    assert procs["rlnPipeLineProcessType"].tolist() == [0, 0]
    assert procs["rlnPipeLineProcessStatus"].tolist() == [2, 2]
    assert blocks["pipeline_nodes"]["rlnPipeLineNodeType"].tolist() == [0, 0]
    job_star = read_star(root / "Import/job001/job.star")
    assert int(job_star["job"]["rlnJobType"].iloc[0]) == 0
    options = dict(zip(job_star["joboptions_values"]["rlnJobOptionVariable"],
                       job_star["joboptions_values"]["rlnJobOptionValue"], strict=True))
    assert options["fn_in_raw"] == "Raw/*.tif" and float(options["angpix"]) == 1.0
    with pytest.raises(ParameterError, match="taken"):
        _import(project, alias="movies")


def test_inputs_resolve_every_way(project: Project) -> None:
    _import(project, alias="movies")
    jt = get_job_type("subset")
    inp = jt.inputs[0]
    for spec in ("job001", "job001:movies", "movies", "Import/job001/",
                 "Import/job001/movies.star"):
        r = project.resolve_input(inp, spec)
        assert (r.source_job, r.source_output, r.path) == (1, "movies",
                                                           "Import/job001/movies.star"), spec
    # a file made outside the project: recorded as a file input
    outside = project.root.parent / "elsewhere.star"
    outside.write_bytes((project.root / "Import/job001/movies.star").read_bytes())
    r = project.resolve_input(inp, str(outside))
    assert r.source_job is None and r.node_type.value == "MovieSet"


def test_bad_inputs_fail_before_anything_runs(project: Project) -> None:
    _import(project)
    coords = get_job_type("import coordinates")
    particles = get_job_type("import particles")
    movies = get_job_type("import movies")
    before = sorted(p.name for p in (project.root / "Import").iterdir())

    with pytest.raises(CryospaError, match=r"--mics job009: no such job .*jobs: job001"):
        submit(project, coords, {"coords": "Raw/*.tif"}, {"mics": ["job009"]})
    with pytest.raises(CryospaError) as err:  # movies given where micrographs are needed
        submit(project, coords, {"coords": "Raw/*.tif"}, {"mics": ["job001"]})
    text = str(err.value)
    assert "job001" in text and "MicrographSet" in text and "movies (MovieSet)" in text
    with pytest.raises(CryospaError, match="job001:nope"):
        submit(project, coords, {"coords": "Raw/*.tif"}, {"mics": ["job001:nope"]})
    with pytest.raises(InputFileError, match=r"missing\.star: file for --particles not found"):
        submit(project, particles, {"particles": "missing.star"}, {})
    with pytest.raises(ParameterError, match=r"--angpix -1 Å is out of range \(> 0\)"):
        submit(project, movies, {"movies": "Raw/*.tif", "angpix": -1.0}, {})
    with pytest.raises(ParameterError, match="--gain-rot 5 is not one of 0, 1, 2, 3"):
        submit(project, movies, {"movies": "Raw/*.tif", "angpix": 1.0, "gain": "Raw/mov000.tif",
                                 "gain_rot": 5}, {})
    with pytest.raises(ParameterError, match="--gain-rot 1 only applies with --gain"):
        submit(project, movies, {"movies": "Raw/*.tif", "angpix": 1.0, "gain_rot": 1}, {})
    with pytest.raises(ParameterError, match="--angpix is required"):
        submit(project, movies, {"movies": "Raw/*.tif"}, {})
    with pytest.raises(InputFileError, match=r"Nothing/\*\.tif: --movies: the pattern matches "
                                             "no file"):
        submit(project, movies, {"movies": "Nothing/*.tif", "angpix": 1.0}, {})
    with pytest.raises(CryospaError, match="unknown job type"):
        get_job_type("import everything")
    assert sorted(p.name for p in (project.root / "Import").iterdir()) == before
    assert [j.id for j in project.jobs()] == [1]


def test_cli_errors_and_help(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(project.root)
    assert cli(["import", "movies", "--movies", "Raw/*.tif", "--angpix", "0",
                "--project", root]) == 2
    assert "--angpix 0 Å is out of range" in capsys.readouterr().err
    assert cli(["show", "job004", "--project", root]) == 2
    assert not (project.root / "Import").exists()
    sub = build_parser("import")._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    group = sub["import"]._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    text = " ".join(group["movies"].format_help().split())
    for piece in ("--angpix Å", "in Å", "--kv kV", "(default: 300)", "--dose-per-frame e/Å²",
                  "--gain-rot", "one of 0, 1, 2, 3", "only with --gain", "--stream",
                  "--batch-size", "--poll", "--background", "--alias", "--j"):
        assert piece in text, piece
    for name in ("init", "jobs", "show", "continue", "abort", "stop", "delete", "graph",
                 "subset", "join", "reconstruct", "fsc"):
        parser = build_parser(name)
        assert name in parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]


def test_cli_commands_run(project: Project, capsys: pytest.CaptureFixture[str],
                          tmp_path: Path) -> None:
    root = str(project.root)
    assert cli(["import", "movies", "--movies", "Raw/*.tif", "--angpix", "1.5", "--alias",
                "raw", "--project", root]) == 0
    assert cli(["subset", "--i", "raw", "--rows", "1-2", "--project", root]) == 0
    assert cli(["subset", "--i", "job001", "--query", "rlnMicrographMovieName.str.contains"
                "('mov003')", "--project", root]) == 0
    assert cli(["join", "--i", "job002", "job003", "--project", root]) == 0
    capsys.readouterr()
    assert cli(["jobs", "--project", root]) == 0
    out = capsys.readouterr().out
    assert "4 movies, 4 frames, 24 x 32, 1.5 Å/px" in out
    assert "kept 2 of 4 movies" in out and "kept 1 of 4 movies" in out
    assert "3 movies from 2 sets, 1 optics group" in out
    assert cli(["show", "job004", "--project", root]) == 0
    out = capsys.readouterr().out
    assert "job002:subset (MovieSet)" in out and "JoinStar/job004/join_movies.star" in out
    assert cli(["graph", "--o", str(tmp_path / "g.png"), "--project", root]) == 0
    out = capsys.readouterr().out
    assert "job001 import movies [raw]" in out and "job004" in out
    assert (tmp_path / "g.png").stat().st_size > 1000
    assert cli(["continue", "job002", "--project", root]) == 0
    assert cli(["delete", "job002", "--project", root]) == 0
    captured = capsys.readouterr()
    assert "job004 (join" in captured.err
    assert (project.root / "Trash/Select/job002/movies.star").is_file()
    assert not (project.root / "Select/job002").exists()
    procs = read_star(project.root / "default_pipeline.star")["pipeline_processes"]
    assert "Select/job002/" not in procs["rlnPipeLineProcessName"].tolist()


def test_graph_text(project: Project) -> None:
    _import(project, alias="m")
    submit(project, get_job_type("subset"), {"rows": "1"}, {"i": ["m"]})
    submit(project, get_job_type("subset"), {"rows": "2"}, {"i": ["job001"]})
    submit(project, get_job_type("join"), {}, {"i": ["job002", "job003"]})
    text = graph_text(project)
    lines = text.splitlines()
    assert lines[0].startswith("job001 import movies [m] (succeeded)")
    assert any("job004 ^" in line for line in lines)  # second parent of the join
    graph_picture(project, project.root / "graph.png")
    assert (project.root / "graph.png").stat().st_size > 1000


def test_dead_process_shows_failed(project: Project) -> None:
    job_id = _import(project)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    project.mark_running(job_id, pid=proc.pid)  # as if that process had been running it
    died = project.refresh()
    assert [j.id for j in died] == [job_id]
    job = project.job_by_id(job_id)
    assert job.status == "failed" and "process died" in job.error
    assert (project.root / "Import/job001/RELION_JOB_EXIT_FAILURE").is_file()
    record = continue_job(project, job_id)
    assert record.status == "succeeded"
    assert not (project.root / "Import/job001/RELION_JOB_EXIT_FAILURE").exists()


def test_background_and_abort(project: Project, tmp_path: Path) -> None:
    make_movies(project.root / "Many", 40, frames=2, shape=(8, 8))
    os.environ["CRYOSPA_DEBUG_ITEM_DELAY"] = "0.2"
    try:
        record = submit(project, get_job_type("import movies"),
                        {"movies": "Many/*.tif", "angpix": 1.0}, {}, background=True)
    finally:
        del os.environ["CRYOSPA_DEBUG_ITEM_DELAY"]
    assert record.status == "running" and record.pid and record.host
    time.sleep(0.5)
    aborted = abort_job(project, record.id)
    assert aborted.status == "aborted"
    deadline = time.monotonic() + 20
    from cryospa.project.project import pid_alive

    while pid_alive(record.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(record.pid)
    project.refresh()
    assert project.job_by_id(record.id).status == "aborted"
    assert (project.root / "Import/job001/RELION_JOB_EXIT_ABORTED").is_file()
    n_done = len(project.item_results(record.id))
    assert 0 < n_done < 40
    final = continue_job(project, record.id, j=2)
    assert final.status == "succeeded"
    assert len(project.item_results(record.id)) == 40
    assert final.summary.startswith("40 movies")


def test_failed_item_recorded_and_retried(project: Project) -> None:
    (project.root / "Raw" / "broken.tif").write_bytes(b"not a tiff")
    record = submit(project, get_job_type("import movies"),
                    {"movies": "Raw/*.tif", "angpix": 1.0}, {}, run=RunOptions(j=2))
    assert record.status == "failed"
    assert "1 of 5 items failed" in record.error and "broken.tif" in record.error
    assert len(project.item_results(record.id)) == 4
    (project.root / "Raw" / "broken.tif").unlink()
    make_movies(project.root / "Raw", 1, prefix="broken", seed=3)
    (project.root / "Raw" / "broken000.tif").rename(project.root / "Raw" / "broken.tif")
    assert continue_job(project, record.id).status == "succeeded"
    assert len(project.item_results(record.id)) == 5


def test_outputs_do_not_depend_on_worker_count(tmp_path: Path) -> None:
    outputs = []
    for j in (1, 3):
        project = Project.init(tmp_path / f"P{j}")
        make_movies(project.root / "Raw", 7)
        record = submit(project, get_job_type("import movies"),
                        {"movies": "Raw/*.tif", "angpix": 1.0}, {}, run=RunOptions(j=j))
        assert record.status == "succeeded"
        outputs.append((project.root / record.dir / "movies.star").read_bytes())
    assert outputs[0] == outputs[1]
