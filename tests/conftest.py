"""Shared fixtures: devices, RELION availability, the shared real-data folder."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# before torch loads OpenMP: waiting threads sleep instead of spinning (see cryospa/__init__.py;
# on a busy machine spinning threads made 2D classification tests 30x slower)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_CANDIDATES = [REPO.parent / "shared" / "data", Path("/work/shared/data")]
SHARED_DATA = Path(
    os.environ.get("CRYOSPA_SHARED_DATA")
    or next((str(p) for p in _CANDIDATES if p.is_dir()), str(_CANDIDATES[0]))
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real cryo-EM files of shared/data (see its PROVENANCE.md); skip visibly if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} not found (set CRYOSPA_SHARED_DATA)")
    return SHARED_DATA


def relion_available(program: str = "relion_project") -> bool:
    return shutil.which(program) is not None


requires_relion = pytest.mark.skipif(
    not relion_available(),
    reason="RELION not installed (apt-get install relion): cross-check skipped",
)


def run_relion(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a RELION program in ``cwd``; fail the test with RELION's output if it fails."""
    env = dict(os.environ)
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        OMPI_MCA_rmaps_base_oversubscribe="1",
        OMPI_MCA_btl_vader_single_copy_mechanism="none",
    )
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
