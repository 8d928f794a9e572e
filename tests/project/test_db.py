"""The project database: schema, WAL, and several processes writing at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryospa.io.star import read_star
from cryospa.project.db import SCHEMA_VERSION, ProjectDB
from cryospa.project.project import Project
from tests.project.helpers import env, make_movies

_WORKER = """
import sys
from cryospa.project.project import Project
from cryospa.project.runner import submit
from cryospa.project.schema import get_job_type
project = Project.open(sys.argv[1])
jt = get_job_type("import movies")
for i in range(int(sys.argv[2])):
    record = submit(project, jt, {"movies": "Raw/*.tif", "angpix": 1.0}, {})
    assert record.status == "succeeded", record.error
    project.refresh()
    project.jobs()
print("ok")
"""


def test_schema_and_wal(tmp_path: Path) -> None:
    project = Project.init(tmp_path / "P")
    db = project.db
    assert db.query("PRAGMA journal_mode")[0][0] == "wal"
    assert db.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    tables = {r[0] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"jobs", "job_inputs", "outputs", "items", "iterations", "meta"} <= tables
    assert db.integrity_check() == "ok"
    # a newer schema is refused with a clear message
    with db.transaction() as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    try:
        Project.open(project.root)
    except Exception as err:
        assert "newer" in str(err)
    else:
        raise AssertionError("a newer schema must be refused")


def test_rollback_on_error(tmp_path: Path) -> None:
    db = ProjectDB(tmp_path / "x.sqlite")
    db.create()
    try:
        with db.transaction() as conn:
            conn.execute("UPDATE meta SET value = '99' WHERE key = 'job_counter'")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert db.query("SELECT value FROM meta WHERE key = 'job_counter'")[0][0] == "1"


def test_two_processes_run_jobs_at_once(tmp_path: Path) -> None:
    project = Project.init(tmp_path / "P")
    make_movies(project.root / "Raw", 6)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(project.root), "5"], env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "locked" not in err.lower()
        assert out.strip().endswith("ok")
    jobs = project.jobs()
    assert [j.id for j in jobs] == list(range(1, 16))
    assert all(j.status == "succeeded" for j in jobs)
    assert all(len(project.item_results(j.id)) == 6 for j in jobs)
    assert project.db.integrity_check() == "ok"
    # the pipeline lists every job exactly once
    blocks = read_star(project.root / "default_pipeline.star")
    names = blocks["pipeline_processes"]["rlnPipeLineProcessName"].tolist()
    assert names == [f"Import/job{i:03d}/" for i in range(1, 16)]
    assert (blocks["pipeline_processes"]["rlnPipeLineProcessStatus"] == 2).all()
    assert int(blocks["pipeline_general"]["rlnPipeLineJobCounter"].iloc[0]) == 16
