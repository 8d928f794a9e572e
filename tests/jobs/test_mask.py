"""The mask job: RELION's relion_mask_create voxel for voxel, a known geometry, outputs, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cryospa.core.masks import soft_sphere
from cryospa.errors import InputFileError
from cryospa.io.mrc import read_mrc, write_mrc
from cryospa.project.project import JobRecord, Project
from cryospa.project.runner import submit
from cryospa.project.schema import get_job_type
from tests.conftest import requires_relion, run_relion
from tests.synthetic import pseudo_atomic_map


def _mask(project: Project, volume: str, **params: object) -> JobRecord:
    record = submit(project, get_job_type("mask"), {"device": "cpu", **params},
                    {"volume": [volume]})
    assert record.status == "succeeded", record.error
    return record


def test_mask_of_a_ball_is_a_soft_sphere(project: Project) -> None:
    # a ball of radius 10 px, threshold 0.5, extend 3, soft edge 4: along an axis the ball ends
    # at voxel 10, the extension (distance < 3) at voxel 12, then the raised cosine of the
    # distance to voxel 12: 0.854 at 13, 0.5 at 14, 0.146 at 15, 0 from 16 on
    n, r0 = 48, 10.0
    ball = soft_sphere(n, r0, edge_width_px=0.0, dtype=torch.float64)
    write_mrc(project.root / "ball.mrc", ball.numpy().astype(np.float32), voxel_size_angstrom=2.0)
    rec = _mask(project, "ball.mrc", threshold=0.5, lowpass=0.0, extend=3.0, soft_edge=4.0)
    mask, header = read_mrc(project.root / rec.dir / "mask.mrc")
    assert header.voxel_size_angstrom[0] == pytest.approx(2.0)
    c = n // 2
    axis = mask[c, c, c + 10 : c + 18]
    expected_axis = [1, 1, 1] + [0.5 + 0.5 * np.cos(np.pi * d / 4) for d in (1, 2, 3)] + [0, 0]
    np.testing.assert_allclose(axis, expected_axis, atol=1e-6)
    np.testing.assert_allclose(mask[c + 10 : c + 18, c, c], axis, atol=1e-7)  # isotropic
    # overall: a soft sphere of radius ~12.3 (voxel centres of the extended lattice ball)
    expected = soft_sphere(n, r0 + 2.3, edge_width_px=4.0, dtype=torch.float64).numpy()
    assert np.abs(mask - expected).mean() < 0.01
    assert mask.sum() == pytest.approx(expected.sum(), rel=0.05)
    fraction = float((mask > 0.5).mean())
    assert rec.summary == f"mask > 0.5 on {100 * fraction:.1f} % of a 48 px box at 2 Å/px"
    assert (project.root / rec.dir / "mask.png").stat().st_size > 10_000
    # --invert
    inv = _mask(project, "ball.mrc", threshold=0.5, lowpass=0.0, extend=3.0, soft_edge=4.0,
                invert=True)
    inverted, _ = read_mrc(project.root / inv.dir / "mask.mrc")
    np.testing.assert_allclose(inverted, 1 - mask, atol=1e-7)


def test_mask_errors(project: Project) -> None:
    vol = pseudo_atomic_map(32, n_atoms=300)
    write_mrc(project.root / "map.mrc", vol, voxel_size_angstrom=2.0)
    n_jobs = len(project.jobs())
    with pytest.raises(InputFileError, match=r"above every value of the map.*percentiles"):
        submit(project, get_job_type("mask"), {"threshold": 1e6, "device": "cpu"},
               {"volume": ["map.mrc"]})
    write_mrc(project.root / "flat.mrc", vol[:, :, :30], voxel_size_angstrom=2.0)
    with pytest.raises(InputFileError, match="a cubic 3D map is needed"):
        submit(project, get_job_type("mask"), {"threshold": 0.1, "device": "cpu"},
               {"volume": ["flat.mrc"]})
    assert len(project.jobs()) == n_jobs
    # a threshold below every value fills the box: the job fails and says why
    rec = submit(project, get_job_type("mask"),
                 {"threshold": float(vol.min()) - 1, "lowpass": 0.0, "device": "cpu"},
                 {"volume": ["map.mrc"]})
    assert rec.status == "failed" and "fill the box" in (rec.error or "")
    # after the low-pass nothing reaches a threshold just under the raw maximum: empty
    rec = submit(project, get_job_type("mask"),
                 {"threshold": float(vol.max()) * 0.999, "lowpass": 30.0, "device": "cpu"},
                 {"volume": ["map.mrc"]})
    assert rec.status == "failed" and "the mask would be empty" in (rec.error or "")


@pytest.mark.relion
@requires_relion
@pytest.mark.parametrize(
    ("source", "threshold", "lowpass", "extend", "width"),
    [
        ("betagal", 0.0003, 15.0, 3.0, 6.0),  # 100 px, 3.54 Å/px: the cut at 23.6 -> 24 shells
        ("betagal", 0.0002, 0.0, 2.0, 3.0),
        ("atoms", 0.05, 12.0, 3.0, 6.0),  # 64 px, 1.5 Å/px
    ],
)
def test_mask_matches_relion_mask_create(project: Project, shared_data: Path, source: str,
                                         threshold: float, lowpass: float, extend: float,
                                         width: float) -> None:
    if source == "betagal":
        src = shared_data / "maps" / "betagal_relion1x_test" / "ref_model.mrc"
        if not src.is_file():
            pytest.skip(f"{src} not found")
        shutil.copy(src, project.root / "map.mrc")
    else:
        write_mrc(project.root / "map.mrc", pseudo_atomic_map(64, n_atoms=2000, sigma_px=1.0),
                  voxel_size_angstrom=1.5)
    args = ["relion_mask_create", "--i", "map.mrc", "--o", "relion_mask.mrc", "--ini_threshold",
            str(threshold), "--extend_inimask", str(extend), "--width_soft_edge", str(width)]
    if lowpass:
        args += ["--lowpass", str(lowpass)]
    run_relion(args, project.root)
    rec = _mask(project, "map.mrc", threshold=threshold, lowpass=lowpass, extend=extend,
                soft_edge=width)
    ours, _ = read_mrc(project.root / rec.dir / "mask.mrc")
    theirs, _ = read_mrc(project.root / "relion_mask.mrc")
    # measured (RELION 3.1.3): identical in every voxel but a handful at float rounding
    diff = np.abs(ours - theirs)
    assert diff.max() < 1e-5, diff.max()
    assert int(((ours > 0.5) != (theirs > 0.5)).sum()) == 0
