"""RELION reads what we write, and we read what RELION writes (skipped without RELION)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryospa.io.movies import read_gain, write_mrc_movie
from cryospa.io.mrc import ImageStack, format_image_name, read_images, read_mrc, write_mrc
from cryospa.io.star import (
    RelionTable,
    pixel_size_angstrom,
    read_relion_star,
    write_relion_star,
    write_star,
)
from tests.conftest import requires_relion, run_relion

pytestmark = [pytest.mark.relion, requires_relion]

N, BOX, ANGPIX = 10, 32, 1.5


def _write_particles(folder: Path) -> tuple[np.ndarray, RelionTable]:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(N, BOX, BOX)).astype(np.float32)
    (folder / "Extract").mkdir()
    write_mrc(folder / "Extract/parts.mrcs", images, voxel_size_angstrom=ANGPIX)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnImagePixelSize": [ANGPIX],
            "rlnImageSize": [BOX],
            "rlnImageDimensionality": [2],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
        }
    )
    data = pd.DataFrame(
        {
            "rlnImageName": [format_image_name(i, "Extract/parts.mrcs") for i in range(N)],
            "rlnOpticsGroup": np.ones(N, dtype=np.int64),
            "rlnAngleRot": rng.uniform(-180, 180, N).round(6),
            "rlnAngleTilt": rng.uniform(0, 180, N).round(6),
            "rlnAnglePsi": rng.uniform(-180, 180, N).round(6),
            "rlnOriginXAngst": rng.normal(size=N).round(6),
            "rlnOriginYAngst": rng.normal(size=N).round(6),
            "rlnDefocusU": rng.uniform(10000, 20000, N).round(6),
            "rlnDefocusV": rng.uniform(10000, 20000, N).round(6),
            "rlnDefocusAngle": rng.uniform(-90, 90, N).round(6),
            "rlnClassNumber": np.arange(1, N + 1, dtype=np.int64),
        }
    )
    table = RelionTable("particles", data, optics)
    write_relion_star(folder / "particles.star", table)
    return images, table


def test_relion_image_handler_reads_our_star_and_stack(tmp_path: Path) -> None:
    images, table = _write_particles(tmp_path)
    run_relion(
        ["relion_image_handler", "--i", "particles.star", "--o", "x2", "--multiply_constant", "2"],
        cwd=tmp_path,
    )
    # We read RELION's STAR and stack.
    out = read_relion_star(tmp_path / "particles_x2.star")
    assert out.kind == "particles"
    assert pixel_size_angstrom(out) == ANGPIX
    assert list(out.data["rlnImageName"]) == [
        format_image_name(i, "Extract/parts_x2.mrcs") for i in range(N)
    ]
    doubled = read_images(out.data["rlnImageName"], root=tmp_path)
    np.testing.assert_allclose(doubled, 2 * images, rtol=1e-6, atol=1e-6)
    data, info = read_mrc(tmp_path / "Extract/parts_x2.mrcs")  # strictly valid MRC
    assert info.is_stack and data.shape == (N, BOX, BOX)
    assert info.voxel_size_angstrom[0] == pytest.approx(ANGPIX)
    pd.testing.assert_frame_equal(
        out.data.drop(columns="rlnImageName"), table.data.drop(columns="rlnImageName")
    )


def test_relion_stack_create_reads_our_star_and_stack(tmp_path: Path) -> None:
    images, table = _write_particles(tmp_path)
    run_relion(["relion_stack_create", "--i", "particles.star", "--o", "out"], cwd=tmp_path)
    with ImageStack(tmp_path / "out.mrcs") as stack:
        assert stack.shape == (N, BOX, BOX)
        np.testing.assert_array_equal(stack[:], images)
        np.testing.assert_array_equal(stack[7], images[7])
    out = read_relion_star(tmp_path / "out.star")
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnDefocusU", "rlnOriginXAngst"):
        # RELION writes %12.6f-style numbers (about 6 significant digits)
        np.testing.assert_allclose(out.data[col], table.data[col], atol=1e-4)
    np.testing.assert_array_equal(read_images(out.data["rlnImageName"], root=tmp_path), images)


def test_relion_star_handler_roundtrips_our_star(tmp_path: Path) -> None:
    _, table = _write_particles(tmp_path)
    run_relion(["relion_star_handler", "--i", "particles.star", "--o", "copy.star"], cwd=tmp_path)
    copy = read_relion_star(tmp_path / "copy.star")
    pd.testing.assert_frame_equal(copy.data, table.data, check_dtype=False)
    pd.testing.assert_frame_equal(copy.optics, table.optics, check_dtype=False, check_like=True)


@pytest.mark.parametrize(
    ("rotation", "flip"), [(1, 0), (2, 0), (3, 0), (0, 1), (0, 2), (1, 1), (3, 2)]
)
def test_gain_rotation_flip_matches_relion_motioncorr(
    tmp_path: Path, rotation: int, flip: int
) -> None:
    # relion_run_motioncorr writes the rotated / flipped gain it uses to <out>/gain.mrc.
    rng = np.random.default_rng(rotation * 3 + flip)
    h, w = 48, 64
    gain = rng.uniform(0.5, 1.5, size=(h, w)).astype(np.float32)
    write_mrc(tmp_path / "gain.mrc", gain, voxel_size_angstrom=1.0)
    movie_shape = (w, h) if rotation in (1, 3) else (h, w)
    frames = rng.poisson(2.0, size=(3, *movie_shape)).astype(np.float32)
    write_mrc_movie(tmp_path / "mov.mrcs", frames, voxel_size_angstrom=1.0)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnMicrographOriginalPixelSize": [1.0],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
        }
    )
    movies = pd.DataFrame({"rlnMicrographMovieName": ["mov.mrcs"], "rlnOpticsGroup": [1]})
    write_star(tmp_path / "movies.star", {"optics": optics, "movies": movies})
    (tmp_path / "MC").mkdir()
    run_relion(
        [
            "relion_run_motioncorr",
            "--i",
            "movies.star",
            "--o",
            "MC/",
            "--use_own",
            "--gainref",
            "gain.mrc",
            "--gain_rot",
            str(rotation),
            "--gain_flip",
            str(flip),
            "--j",
            "1",
            "--patch_x",
            "1",
            "--patch_y",
            "1",
        ],
        cwd=tmp_path,
    )
    relion_gain, _ = read_mrc(tmp_path / "MC/gain.mrc", permissive=True)
    ours = read_gain(tmp_path / "gain.mrc", rotation=rotation, flip=flip)
    assert ours.shape == movie_shape
    np.testing.assert_array_equal(ours, relion_gain)


@pytest.mark.parametrize(
    "name",
    [
        "particles/empiar10076_7ptcl/empiar_10076_7.star",
        "star/interop/FinalRefinement-OriginalParticles-PfCRT.star",
        "maps/betagal_relion1x_test/out_it005_data.star",
    ],
)
def test_relion30_upgrade_matches_relion_conversion(
    shared_data: Path, tmp_path: Path, name: str
) -> None:
    # RELION 3.1 converts 3.0 tables on reading; relion_star_handler writes the 3.1 form.
    old = tmp_path / "old.star"
    old.write_bytes((shared_data / name).read_bytes())
    run_relion(["relion_star_handler", "--i", "old.star", "--o", "conv.star"], cwd=tmp_path)
    theirs = read_relion_star(tmp_path / "conv.star")
    ours = read_relion_star(old)
    assert pixel_size_angstrom(ours) == pytest.approx(pixel_size_angstrom(theirs), abs=1e-6)
    for col in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        if col in theirs.optics.columns:
            assert ours.optics[col].iloc[0] == pytest.approx(theirs.optics[col].iloc[0])
    assert set(theirs.data.columns) <= set(ours.data.columns)
    for col in theirs.data.columns:
        if pd.api.types.is_numeric_dtype(theirs.data[col]):
            np.testing.assert_allclose(ours.data[col], theirs.data[col], atol=1e-5, err_msg=col)
        else:
            assert list(ours.data[col]) == list(theirs.data[col]), col


def test_tiff_movie_orientation_matches_relion(tmp_path: Path) -> None:
    # RELION flips TIFF along the slow axis on reading; our reader and writer do the same, so
    # a frame written by us reads back identically here and in RELION.
    from cryospa.io.movies import open_movie, write_tiff_movie

    frames = np.zeros((2, 48, 40), dtype=np.uint8)
    frames[0, 5, 10] = 7
    frames[1, 30, 3] = 9
    write_tiff_movie(tmp_path / "m.tif", frames)
    with open_movie(tmp_path / "m.tif") as movie:
        ours = movie.read_frames(0, 2)
    np.testing.assert_array_equal(ours, frames)
    run_relion(["relion_image_handler", "--i", "m.tif", "--o", "m_rel.mrcs"], cwd=tmp_path)
    theirs, _ = read_mrc(tmp_path / "m_rel.mrcs")
    np.testing.assert_array_equal(theirs, frames)
