"""The first CLI commands on files: fsc, reconstruct, reproject; and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cryospa.cli.main import build_parser
from cryospa.cli.main import main as cli
from cryospa.core.fsc import fsc
from cryospa.errors import InputFileError
from cryospa.io.mrc import read_mrc, write_mrc
from cryospa.io.star import read_star, split_optics, write_relion_star
from cryospa.jobs.fsc import run_fsc
from cryospa.jobs.reconstruct import run_reconstruct
from cryospa.jobs.reproject import run_reproject
from tests.synthetic import pseudo_atomic_map, random_particles_table, write_map_and_angles


def test_every_subcommand_has_help_with_units() -> None:
    parser = build_parser()
    text = parser.format_help()
    for name in ("reconstruct", "reproject", "fsc"):
        assert name in text
    sub = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert "Å" in sub["reconstruct"].format_help()
    assert "Å" in sub["reproject"].format_help()


def test_fsc_of_map_with_itself_and_outputs(tmp_path: Path) -> None:
    vol = pseudo_atomic_map(32, n_atoms=300)
    write_mrc(tmp_path / "a.mrc", vol, voxel_size_angstrom=2.5)
    result = run_fsc(
        tmp_path / "a.mrc",
        tmp_path / "a.mrc",
        star_out=tmp_path / "fsc.star",
        png_out=tmp_path / "fsc.png",
    )
    assert np.allclose(result.fsc, 1.0, atol=1e-9)
    assert result.resolution_0143 == pytest.approx(5.0)  # Nyquist of 2.5 Å/px
    blocks = read_star(tmp_path / "fsc.star")
    assert len(blocks["fsc"]) == 17
    assert blocks["fsc"]["rlnFourierShellCorrelation"].min() > 0.999
    assert (tmp_path / "fsc.png").stat().st_size > 1000
    assert cli(["fsc", str(tmp_path / "a.mrc"), str(tmp_path / "a.mrc"), "--quiet"]) == 0


def test_fsc_resolution_of_noisy_copies(tmp_path: Path) -> None:
    # two half maps = truth + independent noise: the 0.143 resolution must fall where the
    # truth's per-shell SNR predicts (FSC = SNR / (1 + SNR))
    vol = pseudo_atomic_map(48, n_atoms=800)
    rng = np.random.default_rng(0)
    sigma = 0.8 * vol.std()
    h1 = vol + rng.normal(0, sigma, vol.shape).astype(np.float32)
    h2 = vol + rng.normal(0, sigma, vol.shape).astype(np.float32)
    for name, v in (("h1", h1), ("h2", h2), ("mask", np.ones_like(vol))):
        write_mrc(tmp_path / f"{name}.mrc", v, voxel_size_angstrom=2.0)
    r = run_fsc(tmp_path / "h1.mrc", tmp_path / "h2.mrc", mask=tmp_path / "mask.mrc")
    expected = fsc(torch.from_numpy(vol).double() + 0, torch.from_numpy(vol).double())
    assert expected.min() > 0.999  # sanity
    signal = torch.fft.rfftn(torch.from_numpy(vol).double())
    from cryospa.core.filters import radial_average

    snr = radial_average(signal.abs() ** 2, ndim=3, shape=vol.shape) / (sigma**2 * vol.size)
    predicted = (snr / (1 + snr)).numpy()
    assert np.abs(r.fsc[1:20] - predicted[1:20]).max() < 0.08
    assert 4.0 <= r.resolution_0143 < 48 * 2.0


def test_reconstruct_then_reproject_round_trip(tmp_path: Path) -> None:
    map_path, star_path, vol = write_map_and_angles(
        tmp_path, n=40, pixel_size=3.0, n_particles=1200
    )
    proj = run_reproject(map_path, star_path, tmp_path / "proj.mrcs", ctf=False, progress=False)
    rec = run_reconstruct(proj.star, tmp_path / "rec.mrc", progress=False)
    assert rec.n_particles == 1200 and rec.box_size == 40
    out, header = read_mrc(tmp_path / "rec.mrc")
    assert header.voxel_size_angstrom[0] == pytest.approx(3.0)
    curve = fsc(torch.from_numpy(out).double(), torch.from_numpy(vol).double())
    assert curve[: int(0.9 * 20) + 1].min() > 0.99
    # half-set selection uses rlnRandomSubset
    half = run_reconstruct(proj.star, tmp_path / "half1.mrc", subset=1, progress=False)
    assert 500 < half.n_particles < 700


def test_reconstruct_missing_angle_column_names_it(tmp_path: Path) -> None:
    rows = random_particles_table(5, box_size=16, pixel_size=2.0).drop(columns=["rlnAngleTilt"])
    write_mrc(
        tmp_path / "particles.mrcs",
        np.zeros((5, 16, 16), np.float32),
        voxel_size_angstrom=2.0,
        is_stack=True,
    )
    write_relion_star(tmp_path / "p.star", split_optics(rows, "particles"))
    with pytest.raises(InputFileError, match="rlnAngleTilt") as err:
        run_reconstruct(tmp_path / "p.star", tmp_path / "o.mrc", progress=False)
    assert "p.star" in str(err.value)
    # the CLI turns it into one line and exit status 2
    assert (
        cli(["reconstruct", "--i", str(tmp_path / "p.star"), "--o", str(tmp_path / "o.mrc")]) == 2
    )


def test_reconstruct_rejects_non_square_images(tmp_path: Path) -> None:
    rows = random_particles_table(3, box_size=16, pixel_size=2.0).drop(columns=["rlnImageSize"])
    write_mrc(
        tmp_path / "particles.mrcs",
        np.zeros((3, 16, 20), np.float32),
        voxel_size_angstrom=2.0,
        is_stack=True,
    )
    write_relion_star(tmp_path / "p.star", split_optics(rows, "particles"))
    with pytest.raises(InputFileError, match="square box"):
        run_reconstruct(tmp_path / "p.star", tmp_path / "o.mrc", progress=False)


def test_reconstruct_missing_pixel_size_says_angpix(tmp_path: Path) -> None:
    rows = random_particles_table(3, box_size=16, pixel_size=2.0).drop(
        columns=["rlnImagePixelSize"]
    )
    write_mrc(
        tmp_path / "particles.mrcs",
        np.zeros((3, 16, 16), np.float32),
        voxel_size_angstrom=2.0,
        is_stack=True,
    )
    write_relion_star(tmp_path / "p.star", split_optics(rows, "particles"))
    with pytest.raises(InputFileError, match="--angpix"):
        run_reconstruct(tmp_path / "p.star", tmp_path / "o.mrc", progress=False)
    # and --angpix fixes it
    assert (
        run_reconstruct(
            tmp_path / "p.star", tmp_path / "o.mrc", pixel_size_angstrom=2.0, progress=False
        ).n_particles
        == 3
    )


def test_fsc_rejects_different_boxes(tmp_path: Path) -> None:
    write_mrc(tmp_path / "a.mrc", np.zeros((16, 16, 16), np.float32), voxel_size_angstrom=1.0)
    write_mrc(tmp_path / "b.mrc", np.zeros((20, 20, 20), np.float32), voxel_size_angstrom=1.0)
    with pytest.raises(InputFileError, match="differs"):
        run_fsc(tmp_path / "a.mrc", tmp_path / "b.mrc")


def test_reproject_rejects_truncated_map(tmp_path: Path) -> None:
    write_mrc(tmp_path / "a.mrc", np.zeros((16, 16, 16), np.float32), voxel_size_angstrom=1.0)
    data = (tmp_path / "a.mrc").read_bytes()
    (tmp_path / "a.mrc").write_bytes(data[: len(data) - 1000])
    _, star_path, _ = write_map_and_angles(tmp_path, n=16, pixel_size=1.0, n_particles=2)
    with pytest.raises(InputFileError, match=r"a\.mrc"):
        run_reproject(tmp_path / "a.mrc", star_path, tmp_path / "o.mrcs", progress=False)
