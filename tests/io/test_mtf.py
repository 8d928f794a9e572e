"""RELION MTF STAR files: the shipped tables, a round trip, and files that must be refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryospa.errors import InputFileError
from cryospa.io.mtf import MtfCurve, read_mtf, write_mtf

MTF_FILES = ["mtf_k2_300kV.star", "mtf_falcon2_300kV.star", "mtf_de20_300kV.star",
             "mtf_falcon3EC_300kV.star", "mtf_falcon4EC_300kV.star", "mtf_falcon4EC_200kV.star",
             "mtf_falcon3EC_200kV.star"]


@pytest.mark.parametrize("name", MTF_FILES)
def test_read_relion_mtf_files(shared_data: Path, name: str) -> None:
    path = shared_data / "star" / "mtf" / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    curve = read_mtf(path)
    f, v = curve.frequency_per_pixel, curve.value
    assert f.shape == v.shape and f.size >= 10
    assert f[0] == 0.0 and v[0] == pytest.approx(1.0, abs=0.02)  # MTF(0) = 1
    assert 0.49 <= f[-1] <= 1.01  # to the detector's Nyquist (or beyond, super-resolution)
    assert np.all(np.diff(f) > 0) and np.all(v > 0)
    # an MTF falls: well below 1 at Nyquist
    assert v[np.searchsorted(f, 0.5) - 1] < 0.8
    np.testing.assert_allclose(curve.frequency_per_angstrom(0.885), f / 0.885)


def test_mtf_round_trip_and_sorting(tmp_path: Path) -> None:
    curve = MtfCurve(np.array([0.0, 0.1, 0.3, 0.5]), np.array([1.0, 0.9, 0.6, 0.3]))
    write_mtf(tmp_path / "m.star", curve)
    back = read_mtf(tmp_path / "m.star")
    np.testing.assert_array_equal(back.frequency_per_pixel, curve.frequency_per_pixel)
    np.testing.assert_array_equal(back.value, curve.value)
    # rows in any order are sorted by frequency
    (tmp_path / "u.star").write_text(
        "data_mtf\nloop_\n_rlnResolutionInversePixel\n_rlnMtfValue\n0.5 0.3\n0 1\n0.25 0.7\n"
    )
    u = read_mtf(tmp_path / "u.star")
    np.testing.assert_array_equal(u.frequency_per_pixel, [0.0, 0.25, 0.5])
    np.testing.assert_array_equal(u.value, [1.0, 0.7, 0.3])
    with pytest.raises(ValueError, match="> 0"):
        u.frequency_per_angstrom(0.0)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("data_mtf\nloop_\n_rlnResolution\n_rlnMtfValue\n0 1\n0.5 0.3\n", "no table with"),
        ("data_mtf\nloop_\n_rlnResolutionInversePixel\n_rlnMtfValue\n0 1\n", "at least 2"),
        ("data_mtf\nloop_\n_rlnResolutionInversePixel\n_rlnMtfValue\n0 1\n0.5 abc\n",
         "row 2 .* not a pair of numbers"),
        ("data_mtf\nloop_\n_rlnResolutionInversePixel\n_rlnMtfValue\n0 1\n0.5 0\n",
         "not > 0"),
        ("data_mtf\nloop_\n_rlnResolutionInversePixel\n_rlnMtfValue\n0 1\n0 0.5\n",
         "appears twice"),
        ("data_mtf\nloop_\n_rlnResolutionInversePixel\n_rlnMtfValue\n-0.1 1\n0.5 0.5\n",
         "negative frequency"),
        ("this is not a STAR file\n", "."),
    ],
)
def test_bad_mtf_files_are_refused(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.star"
    path.write_text(text)
    with pytest.raises(InputFileError, match=match) as info:
        read_mtf(path)
    assert str(path) in str(info.value)


def test_mtf_must_be_a_star_file(tmp_path: Path) -> None:
    path = tmp_path / "mtf.txt"
    path.write_text("0 1\n0.5 0.3\n")
    with pytest.raises(InputFileError, match="must be a STAR file"):
        read_mtf(path)
    with pytest.raises(InputFileError, match="not found"):
        read_mtf(tmp_path / "missing.star")
