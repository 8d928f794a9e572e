"""cryospa against RELION 3.1 on the same inputs (skipped visibly when RELION is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cryospa.cli.main import main as cli
from cryospa.core.fsc import fsc
from cryospa.core.symmetry import symmetrise_volume
from cryospa.io.mrc import read_mrc, write_mrc
from tests.conftest import requires_relion, run_relion
from tests.synthetic import write_map_and_angles

pytestmark = [requires_relion, pytest.mark.relion]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_reproject_matches_relion_project(tmp_path: Path) -> None:
    # 150 random orientations, origins up to 10 Å, astigmatic CTFs; a map with signal to Nyquist
    map_path, star_path, _ = write_map_and_angles(tmp_path, n=64, pixel_size=2.0, n_particles=150)
    run_relion(
        ["relion_project", "--i", "map.mrc", "--o", "relion", "--ang", "angles.star", "--ctf"],
        tmp_path,
    )
    assert (
        cli(
            [
                "reproject",
                "--map",
                str(map_path),
                "--i",
                str(star_path),
                "--o",
                str(tmp_path / "ours.mrcs"),
                "--ctf",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    ours, _ = read_mrc(tmp_path / "ours.mrcs")
    theirs, _ = read_mrc(tmp_path / "relion.mrcs")
    assert ours.shape == theirs.shape == (150, 64, 64)
    corr = np.array([_corr(a, b) for a, b in zip(ours, theirs, strict=True)])
    assert corr.min() > 0.99, f"worst correlation {corr.min():.5f}"
    # same scale (line integrals in voxel units) too
    assert ours.std() / theirs.std() == pytest.approx(1.0, abs=0.01)


def test_reconstruct_matches_relion_reconstruct(tmp_path: Path) -> None:
    # RELION projects 1500 particles with CTF; we add noise (SNR ~ 0.1); both programs
    # reconstruct the same noisy stack with CTF correction
    n = 64
    _, _, _ = write_map_and_angles(tmp_path, n=n, pixel_size=2.0, n_particles=1500)
    run_relion(
        ["relion_project", "--i", "map.mrc", "--o", "noisy", "--ang", "angles.star", "--ctf"],
        tmp_path,
    )
    clean, _ = read_mrc(tmp_path / "noisy.mrcs")
    rng = np.random.default_rng(7)
    noisy = clean + rng.normal(0, 3 * clean.std(), clean.shape).astype(np.float32)
    write_mrc(tmp_path / "noisy.mrcs", noisy, voxel_size_angstrom=2.0, is_stack=True)
    run_relion(
        ["relion_reconstruct", "--i", "noisy.star", "--o", "relion_rec.mrc", "--ctf"], tmp_path
    )
    assert (
        cli(
            [
                "reconstruct",
                "--i",
                str(tmp_path / "noisy.star"),
                "--o",
                str(tmp_path / "ours_rec.mrc"),
                "--ctf",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    ours, header = read_mrc(tmp_path / "ours_rec.mrc")
    theirs, _ = read_mrc(tmp_path / "relion_rec.mrc")
    assert header.voxel_size_angstrom[0] == pytest.approx(2.0)
    curve = fsc(torch.from_numpy(ours).double(), torch.from_numpy(theirs).double())
    upto = int(0.8 * n // 2)
    assert curve[: upto + 1].min() > 0.95, (
        f"FSC(ours, RELION) {curve[: upto + 1].min():.3f} below 0.8 Nyquist"
    )
    # and both are equally close to the truth
    truth, _ = read_mrc(tmp_path / "map.mrc")
    t = torch.from_numpy(truth).double()
    ours_true = fsc(torch.from_numpy(ours).double(), t)[: upto + 1]
    theirs_true = fsc(torch.from_numpy(theirs).double(), t)[: upto + 1]
    assert (ours_true - theirs_true).min() > -0.02


def test_relion_reads_our_projections(tmp_path: Path) -> None:
    # the STAR + MRCS written by `cryospa reproject` are read by relion_reconstruct
    map_path, star_path, vol = write_map_and_angles(tmp_path, n=48, pixel_size=3.0, n_particles=600)
    assert (
        cli(
            [
                "reproject",
                "--map",
                str(map_path),
                "--i",
                str(star_path),
                "--o",
                str(tmp_path / "ours.mrcs"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    run_relion(["relion_reconstruct", "--i", "ours.star", "--o", "relion_from_ours.mrc"], tmp_path)
    rec, _ = read_mrc(tmp_path / "relion_from_ours.mrc")
    curve = fsc(torch.from_numpy(rec).double(), torch.from_numpy(vol).double())
    assert curve[: int(0.8 * 24) + 1].min() > 0.9


def test_symmetric_reconstruction_matches_relion(tmp_path: Path) -> None:
    # D2: RELION and cryospa reconstruct the same particles with the same symmetry
    n = 48
    _, _, vol = write_map_and_angles(tmp_path, n=n, pixel_size=3.0, n_particles=400)
    sym = symmetrise_volume(torch.from_numpy(vol).double(), "D2").float().numpy()
    write_mrc(tmp_path / "map.mrc", sym, voxel_size_angstrom=3.0)
    run_relion(
        ["relion_project", "--i", "map.mrc", "--o", "proj", "--ang", "angles.star", "--ctf"],
        tmp_path,
    )
    run_relion(
        ["relion_reconstruct", "--i", "proj.star", "--o", "relion_d2.mrc", "--ctf", "--sym", "D2"],
        tmp_path,
    )
    assert (
        cli(
            [
                "reconstruct",
                "--i",
                str(tmp_path / "proj.star"),
                "--o",
                str(tmp_path / "ours_d2.mrc"),
                "--ctf",
                "--sym",
                "D2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    ours, _ = read_mrc(tmp_path / "ours_d2.mrc")
    theirs, _ = read_mrc(tmp_path / "relion_d2.mrc")
    curve = fsc(torch.from_numpy(ours).double(), torch.from_numpy(theirs).double())
    assert curve[: int(0.8 * n // 2) + 1].min() > 0.95
