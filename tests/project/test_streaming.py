"""Streaming import: movies arriving one by one (written slowly) are each registered once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cryospa.io.star import read_relion_star
from cryospa.project.project import Project
from cryospa.project.runner import stop_job, submit
from cryospa.project.schema import RunOptions, get_job_type
from tests.project.helpers import make_movies

N = 10


def _copy_slowly(sources: list[Path], target: Path, seen_rows: list[int], star: Path) -> None:
    """Copy each movie in three chunks with pauses, as a detector PC writes them."""
    for src in sources:
        data = src.read_bytes()
        third = len(data) // 3
        with open(target / src.name, "wb") as f:
            for start in (0, third, 2 * third):
                f.write(data[start : start + third] if start < 2 * third else data[start:])
                f.flush()
                time.sleep(0.12)
        time.sleep(0.15)
        if star.is_file():
            seen_rows.append(len(read_relion_star(star, "movies").data))


def _wait_until_ended(project: Project, job_id: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        project.refresh()
        status = project.job_by_id(job_id).status
        if status not in ("running", "scheduled"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still running after {timeout} s")


def test_streaming_import_registers_each_movie_once(tmp_path: Path) -> None:
    sources = make_movies(tmp_path / "detector", N, frames=5, shape=(64, 48))
    project = Project.init(tmp_path / "P")
    watched = project.root / "Raw"
    watched.mkdir()
    record = submit(
        project,
        get_job_type("import movies"),
        {"movies": "Raw/*.tif", "angpix": 1.0, "settle": 0.6},
        {},
        run=RunOptions(stream=True, poll=0.1, batch_size=2),
        background=True,
    )
    assert record.status == "running"
    star = project.path(record.dir) / "movies.star"
    seen_rows: list[int] = []
    copier = threading.Thread(target=_copy_slowly, args=(sources, watched, seen_rows, star))
    copier.start()
    copier.join(timeout=120)
    assert project.job_by_id(record.id).status == "running"  # still waiting for more
    stop_job(project, record.id)
    assert _wait_until_ended(project, record.id, 60) == "succeeded"

    table = read_relion_star(star, "movies")
    names = table.data["rlnMicrographMovieName"].tolist()
    assert names == [f"{record.dir}/Movies/{p.name}" for p in sources]  # each once, in order
    items = project.item_results(record.id)
    assert sorted(items) == [f"Raw/{p.name}" for p in sources]
    assert all(r["frames"] == 5 for r in items.values())  # never registered half-written
    assert project.item_results(record.id, "failed") == {}
    # downstream jobs saw the set grow while the acquisition went on
    assert seen_rows and seen_rows[0] < N and seen_rows == sorted(seen_rows)
    assert project.job_by_id(record.id).summary == f"{N} movies, 5 frames, 48 x 64, 1 Å/px"


def test_stream_timeout_ends_import(tmp_path: Path) -> None:
    project = Project.init(tmp_path / "P")
    make_movies(project.root / "Raw", 3)
    record = submit(
        project,
        get_job_type("import movies"),
        {"movies": "Raw/*.tif", "angpix": 1.0, "settle": 0.2},
        {},
        run=RunOptions(stream=True, poll=0.1, stream_timeout=0.5),
    )
    assert record.status == "succeeded"
    assert len(project.item_results(record.id)) == 3


def test_downstream_stream_ends_with_upstream(tmp_path: Path) -> None:
    import tests.project.echo_job  # noqa: F401  (registers "test echo")

    sources = make_movies(tmp_path / "detector", 6, frames=3, shape=(16, 16))
    project = Project.init(tmp_path / "P")
    watched = project.root / "Raw"
    watched.mkdir()
    upstream = submit(project, get_job_type("import movies"),
                      {"movies": "Raw/*.tif", "angpix": 1.0, "settle": 0.3}, {},
                      run=RunOptions(stream=True, poll=0.1), background=True)
    downstream = submit(project, get_job_type("test echo"), {}, {"movies": [upstream.name]},
                        run=RunOptions(stream=True, poll=0.1), background=True)
    assert downstream.status == "running"
    for src in sources:
        (watched / src.name).write_bytes(src.read_bytes())
        time.sleep(0.2)
    stop_job(project, upstream.id)  # only the import is told; the echo job follows it
    assert _wait_until_ended(project, upstream.id, 60) == "succeeded"
    assert _wait_until_ended(project, downstream.id, 60) == "succeeded"
    assert len(project.item_results(downstream.id)) == 6
    assert sorted(p.name for p in project.path(downstream.dir).glob("mov*.txt")) == [
        f"mov{i:03d}.txt" for i in range(6)]
