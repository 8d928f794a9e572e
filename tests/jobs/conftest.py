"""Fixtures of the job tests: a fresh project, and simulated data made once per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cryospa.project.project import Project

#: ``cryospa simulate`` outputs already made in this session, by their argument list.
_SIMULATED: dict[tuple[str, ...], Path] = {}


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A new, empty project."""
    return Project.init(tmp_path / "P")


@pytest.fixture(scope="session")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``simulated("--preset", "tiny", ...)`` -> folder of that simulation, made once per session.

    Tests must not modify the folder (copy or link from it into their project).
    """
    from cryospa.cli.main import main as cli

    def make(*args: str) -> Path:
        key = tuple(args)
        if key not in _SIMULATED:
            out = tmp_path_factory.mktemp("sim") / "out"
            assert cli(["simulate", *args, "--o", str(out)]) == 0
            _SIMULATED[key] = out
        return _SIMULATED[key]

    return make
