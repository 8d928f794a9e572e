"""The resize job: Fourier rescaling and crop / pad against an analytic map and RELION."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryospa.errors import ParameterError
from cryospa.io.mrc import read_mrc, write_mrc
from cryospa.jobs.resize import rescaled_box, resize_volume, window
from cryospa.project.nodes import NodeType
from cryospa.project.project import JobRecord, Project
from cryospa.project.runner import submit
from cryospa.project.schema import get_job_type
from tests.conftest import requires_relion, run_relion


def _gaussian(n: int, pixel: float, sigma_angstrom: float, shift_angstrom: float = 0.0
              ) -> np.ndarray:
    """A Gaussian blob (z, y, x) centred at voxel n // 2 (+ a shift along x), amplitude 1."""
    ax = (np.arange(n) - n // 2) * pixel
    z, y, x = np.meshgrid(ax, ax, ax - shift_angstrom, indexing="ij")
    return np.exp(-(x**2 + y**2 + z**2) / (2 * sigma_angstrom**2)).astype(np.float32)


def _resize(project: Project, volume: str, **params: object) -> JobRecord:
    record = submit(project, get_job_type("resize"), {"device": "cpu", **params},
                    {"volume": [volume]})
    assert record.status == "succeeded", record.error
    return record


def test_resize_rescales_a_gaussian_exactly(project: Project) -> None:
    # 64 px at 1.5 Å/px -> 2 Å/px (48 px), then padded to 56 px: the same physical blob
    # (sigma 6 Å, off-centre by 4.5 Å) sampled at the new pixels
    write_mrc(project.root / "blob.mrc", _gaussian(64, 1.5, 6.0, 4.5), voxel_size_angstrom=1.5)
    rec = _resize(project, "blob.mrc", angpix_out=2.0, box_out=56)
    out, header = read_mrc(project.root / rec.dir / "resized.mrc")
    assert out.shape == (56, 56, 56)
    assert header.voxel_size_angstrom[0] == pytest.approx(2.0)
    expected = _gaussian(48, 2.0, 6.0, 4.5)
    padded = np.zeros((56, 56, 56), np.float32)
    padded[4:52, 4:52, 4:52] = expected
    np.testing.assert_allclose(out, padded, atol=2e-4)
    assert rec.summary == "map 64 px at 1.5 Å/px -> 56 px at 2 Å/px"
    records = project.outputs(rec.id)
    assert [(o.name, o.node_type) for o in records] == [("volume", NodeType.VOLUME)]
    # crop only (no rescaling): the central 32^3
    rec2 = _resize(project, "blob.mrc", box_out=32)
    cropped, h2 = read_mrc(project.root / rec2.dir / "resized.mrc")
    np.testing.assert_array_equal(cropped, _gaussian(64, 1.5, 6.0, 4.5)[16:48, 16:48, 16:48])
    assert h2.voxel_size_angstrom[0] == pytest.approx(1.5)


def test_resize_to_a_pixel_size_that_needs_rounding(project: Project) -> None:
    # 64 x 1.5 / 1.9 = 50.5 -> 50 px (even, as RELION): 1.92 Å/px, written to the header
    assert rescaled_box(64, 1.5, 1.9) == 50
    assert rescaled_box(64, 1.5, 1.87) == 50  # 51.3 -> 51 -> 50
    write_mrc(project.root / "blob.mrc", _gaussian(64, 1.5, 6.0), voxel_size_angstrom=1.5)
    rec = _resize(project, "blob.mrc", angpix_out=1.9)
    out, header = read_mrc(project.root / rec.dir / "resized.mrc")
    assert out.shape == (50, 50, 50)
    assert header.voxel_size_angstrom[0] == pytest.approx(1.92, rel=1e-6)
    np.testing.assert_allclose(out, _gaussian(50, 1.92, 6.0), atol=2e-4)
    log = (project.root / rec.dir / "run.out").read_text()
    assert "1.9 Å/px asked, 1.92 Å/px reached" in log


def test_resize_a_mask_keeps_it_a_mask(project: Project) -> None:
    ball = np.zeros((40, 40, 40), np.float32)
    ax = np.arange(40) - 20
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    ball[np.sqrt(x**2 + y**2 + z**2) <= 10] = 1.0  # a hard mask: Fourier rescaling rings
    write_mrc(project.root / "mask.mrc", ball, voxel_size_angstrom=1.0)
    assert submit(project, get_job_type("import mask"), {"map": "mask.mrc"}, {}).status == (
        "succeeded")
    rec = _resize(project, "job001", angpix_out=1.25)
    out, _ = read_mrc(project.root / rec.dir / "resized.mrc")
    assert out.shape == (32, 32, 32)
    assert out.min() == 0.0 and out.max() == 1.0  # clipped to [0, 1]
    assert [o.node_type for o in project.outputs(rec.id)] == [NodeType.MASK]
    assert rec.summary.startswith("mask 40 px")


def test_resize_volume_and_window_functions() -> None:
    v = torch.arange(5**3, dtype=torch.float64).reshape(5, 5, 5)
    padded = window(v, 8)
    assert padded[4, 4, 4] == v[2, 2, 2]  # voxel n // 2 -> box // 2
    assert float(padded[0].abs().sum()) == 0.0
    np.testing.assert_array_equal(window(padded, 5).numpy(), v.numpy())
    out, pixel = resize_volume(v, pixel_size_angstrom=1.0)
    assert out is v and pixel == 1.0
    with pytest.raises(ValueError, match="box must be"):
        window(v, 0)


def test_resize_errors(project: Project) -> None:
    write_mrc(project.root / "blob.mrc", _gaussian(32, 1.5, 6.0), voxel_size_angstrom=1.5)
    with pytest.raises(ParameterError, match=r"--angpix-out .* and / or --box-out"):
        submit(project, get_job_type("resize"), {"device": "cpu"}, {"volume": ["blob.mrc"]})
    with pytest.raises(ParameterError, match="would leave 0 px"):
        submit(project, get_job_type("resize"), {"angpix_out": 100.0, "device": "cpu"},
               {"volume": ["blob.mrc"]})
    assert project.jobs() == []


@pytest.mark.relion
@requires_relion
def test_resize_matches_relion_image_handler(project: Project) -> None:
    # the tutorial's Scipion protocol runs relion_image_handler --rescale_angpix --new_box; a
    # map with detail to 4.5 Å (the new Nyquist is 4 Å): RELION and we differ only in the
    # new Nyquist plane (see test_downsampling_keeps_a_nyquist_cosine)
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.standard_normal((64, 64, 64)))
    from cryospa.core.filters import lowpass

    detail = lowpass(noise, 4.5, pixel_size_angstrom=1.5, edge_width_px=0.0, ndim=3).numpy()
    vol = _gaussian(64, 1.5, 5.0) + 0.3 * detail.astype(np.float32)
    write_mrc(project.root / "map.mrc", vol, voxel_size_angstrom=1.5)
    run_relion(["relion_image_handler", "--i", "map.mrc", "--o", "relion.mrc", "--angpix", "1.5",
                "--rescale_angpix", "2.0", "--new_box", "40"], project.root)
    rec = _resize(project, "map.mrc", angpix_out=2.0, box_out=40)
    ours, h_ours = read_mrc(project.root / rec.dir / "resized.mrc")
    theirs, h_theirs = read_mrc(project.root / "relion.mrc")
    assert ours.shape == theirs.shape == (40, 40, 40)
    assert h_ours.voxel_size_angstrom[0] == pytest.approx(h_theirs.voxel_size_angstrom[0])
    # measured (RELION 3.1.3): the same map to 1e-6
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * float(np.abs(theirs).max()))


def test_downsampling_keeps_a_nyquist_cosine() -> None:
    # cos(pi x / 2 Å) sampled at 1.5 Å/px, rescaled to 2 Å/px: exactly (-1)^j on the new grid
    # (both +-Nyquist components go into the new Nyquist bin; relion_image_handler keeps one,
    # so its version has half the amplitude)
    n = 64
    x = (np.arange(n) - n // 2) * 1.5
    wave = np.cos(np.pi * x / 2.0)
    vol = torch.from_numpy(np.broadcast_to(wave, (n, n, n)).copy())
    out, pixel = resize_volume(vol, pixel_size_angstrom=1.5, new_pixel_size_angstrom=2.0)
    assert pixel == 2.0 and out.shape == (48, 48, 48)
    j = np.arange(48) - 24
    np.testing.assert_allclose(out[0, 0].numpy(), (-1.0) ** j, atol=1e-9)
