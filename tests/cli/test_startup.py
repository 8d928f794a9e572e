"""A quick command line: ``--help`` and job starts import only what the command needs."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cryospa.cli.main import build_parser
from cryospa.cli.main import main as cli
from cryospa.io.mrc import write_mrc
from cryospa.project.job_index import (
    _job_from_json,
    _job_json,
    index_path,
    job_declarations,
    source_key,
)
from cryospa.project.schema import (
    JOB_TYPES,
    add_job_arguments,
    builtin_job_modules,
    describe_job_type,
    load_builtin_jobs,
)

#: libraries that take most of a second (or several) to import
HEAVY = ("torch", "scipy", "matplotlib")


def _run_python(code: str, cache: Path) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter; return the modules it left imported (JSON)."""
    env = {**os.environ, "CRYOSPA_CACHE_DIR": str(cache)}
    script = code + (
        "\nimport json, sys\n"
        "print('MODULES=' + json.dumps({'heavy': sorted(m for m in sys.modules if m in "
        f"{HEAVY!r}), 'jobs': sorted(m for m in sys.modules if m.startswith('cryospa.jobs.'))}}))"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MODULES="))
    return dict(json.loads(line.removeprefix("MODULES=")))


def _stored_key(cache: Path) -> str | None:
    try:
        return str(json.loads((cache / index_path().name).read_text())["key"])
    except (OSError, ValueError, KeyError):
        return None


def _run_with_current_index(code: str, cache: Path) -> dict[str, list[str]]:
    """``_run_python`` with the index up to date for the whole run.

    In a development tree other edits may land at any moment, and each one rightly makes the
    next command rebuild the index (importing every job module): retry until a run used an
    index that was current from start to end.
    """
    for _ in range(10):
        _run_python(_help(["--help"]), cache)  # (re)builds the index when it is stale
        key = source_key()
        if _stored_key(cache) != key:
            continue
        loaded = _run_python(code, cache)
        if source_key() == key and _stored_key(cache) == key:
            return loaded
    pytest.fail("the cryospa sources kept changing while the test ran")


def _help(argv: list[str]) -> str:
    return (
        "import contextlib, io\nfrom cryospa.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    try:\n        main({argv!r})\n    except SystemExit:\n        pass\n"
    )


def test_help_imports_no_job_module_and_no_heavy_library(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _run_python(_help(["mask", "--help"]), cache)  # builds the index: imports them all
    assert "torch" in first["heavy"] and "cryospa.jobs.mask" in first["jobs"]
    assert index_path().name in os.listdir(cache)
    for argv in (["--help"], ["mask", "--help"], ["pick", "template", "--help"],
                 ["import", "movies", "--help"], ["fsc", "--help"], ["simulate", "--help"],
                 ["jobs", "--help"], ["import"]):
        loaded = _run_with_current_index(_help(argv), cache)
        if argv[0] == "simulate":  # its options show the simulator's defaults (sim imports torch)
            assert loaded["jobs"] == [], argv
            continue
        assert loaded == {"heavy": [], "jobs": []}, argv


def test_a_job_run_imports_only_its_own_module(tmp_path: Path) -> None:
    vol = np.zeros((16, 16, 16), np.float32)
    vol[4:12, 4:12, 4:12] = 1
    write_mrc(tmp_path / "map.mrc", vol, voxel_size_angstrom=2.0)
    assert cli(["init", str(tmp_path / "P")]) == 0
    code = ("from cryospa.cli.main import main\n"
            f"assert main(['import', 'volume', '--map', {str(tmp_path / 'map.mrc')!r}, "
            f"'--project', {str(tmp_path / 'P')!r}]) == 0\n")
    loaded = _run_with_current_index(code, tmp_path / "cache")
    assert "cryospa.jobs.import_volume" in loaded["jobs"]
    for other in ("cryospa.jobs.class2d", "cryospa.jobs.motioncorr", "cryospa.jobs.postprocess",
                  "cryospa.jobs.pick_template"):
        assert other not in loaded["jobs"]
    assert "scipy" not in loaded["heavy"] and "matplotlib" not in loaded["heavy"]


def test_declarations_from_the_index_give_the_same_command_line() -> None:
    # every built-in job type, written to the index and read back: same options, help, defaults
    load_builtin_jobs()
    modules = set(builtin_job_modules())
    real = {n: c for n, c in JOB_TYPES.items() if c.__module__ in modules}
    assert len(real) >= 15
    for name, cls in real.items():
        stub = _job_from_json(json.loads(json.dumps(_job_json(cls))))
        assert stub.__module__ == cls.__module__ and stub.name == name
        assert stub.one_line() == cls.one_line()
        assert describe_job_type(stub()) == describe_job_type(cls())
        texts = []
        for c in (cls, stub):
            p = argparse.ArgumentParser(prog=f"cryospa {name}")
            add_job_arguments(p, c())
            texts.append(p.format_help())
        assert texts[0] == texts[1], name
    # the listing of `cryospa --help` equals the one of the full parser
    assert build_parser(listing=True).format_help() == build_parser().format_help()


def test_index_is_rebuilt_when_a_file_changes_or_is_damaged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    key = source_key(pkg)
    assert source_key(pkg) == key
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    key2 = source_key(pkg)
    assert key2 != key
    os.utime(pkg / "a.py", ns=(1, 1))
    assert source_key(pkg) != key2
    (pkg / "notes.txt").write_text("not code")
    assert source_key(pkg) == source_key(pkg)
    # a damaged or foreign index file is replaced by a good one
    monkeypatch.setenv("CRYOSPA_CACHE_DIR", str(tmp_path / "cache"))
    path = index_path()
    assert path.parent == tmp_path / "cache"
    path.parent.mkdir()
    path.write_text("{not json")
    names = set(job_declarations())
    assert {"mask", "postprocess", "pick template", "import movies"} <= names
    data = json.loads(path.read_text())
    assert data["key"] == source_key() and {j["name"] for j in data["jobs"]} <= names
    path.write_text(json.dumps({**data, "key": "old"}))
    job_declarations()
    assert json.loads(path.read_text())["key"] == source_key()


def test_a_tool_reached_through_the_listing_is_parsed_by_the_full_parser() -> None:
    # argparse only reaches a subcommand from the listing parser in odd cases (``cryospa --
    # fsc``); the full parser then decides, as it did before the listing existed
    with pytest.raises(SystemExit) as ours:
        cli(["--", "fsc"])
    with pytest.raises(SystemExit) as full:
        build_parser().parse_args(["--", "fsc"])
    assert ours.value.code == full.value.code == 2
