from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryospa.errors import InputFileError
from cryospa.io.coords import read_coordinates, write_box, write_coordinates_star
from cryospa.io.star import read_star, write_star


def _coords() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnCoordinateX": [100.0, 250.5, 3000.0],
            "rlnCoordinateY": [80.0, 1024.0, 17.25],
            "rlnClassNumber": [0, 0, 1],
            "rlnAnglePsi": [-999.0, 12.5, 30.0],
            "rlnAutopickFigureOfMerit": [0.5, 1.25, -0.125],
        }
    )


def test_star_roundtrip_keeps_extra_columns(tmp_path: Path) -> None:
    df = _coords()
    path = tmp_path / "mic001_autopick.star"
    write_coordinates_star(path, df)
    assert "data_\n" in path.read_text()
    back = read_coordinates(path)
    pd.testing.assert_frame_equal(back, df)


def test_box_roundtrip(tmp_path: Path) -> None:
    df = _coords()
    path = tmp_path / "mic001.box"
    write_box(path, df, box_size=64)
    first = path.read_text().splitlines()[0].split("\t")
    assert first == ["68", "48", "64", "64"]  # corner = centre - box/2
    back = read_coordinates(path)
    np.testing.assert_array_equal(back["rlnCoordinateX"], df["rlnCoordinateX"])
    np.testing.assert_array_equal(back["rlnCoordinateY"], df["rlnCoordinateY"])
    assert (back["box_size"] == 64).all()
    # box -> star -> box
    write_coordinates_star(tmp_path / "c.star", back)
    assert "box_size" not in read_star(tmp_path / "c.star")[""].columns
    write_box(tmp_path / "again.box", read_coordinates(tmp_path / "c.star"), box_size=64)
    assert (tmp_path / "again.box").read_text() == path.read_text()


def test_box_centre_from_corner(tmp_path: Path) -> None:
    path = tmp_path / "eman.box"
    path.write_text("10\t20\t100\t100\n0 0 50 50 -3\n")
    df = read_coordinates(path)
    assert list(df["rlnCoordinateX"]) == [60.0, 25.0]
    assert list(df["rlnCoordinateY"]) == [70.0, 25.0]


def test_relion_coordinate_file_from_other_block(tmp_path: Path) -> None:
    # RELION >= 4 style: coordinates may sit in a named block after other blocks
    write_star(tmp_path / "c.star", {"general": {"rlnVersion": 4}, "coordinates": _coords()})
    assert len(read_coordinates(tmp_path / "c.star")) == 3


def test_coordinate_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.box"
    bad.write_text("1 2 3\n")
    with pytest.raises(InputFileError, match="line 1"):
        read_coordinates(bad)
    write_star(tmp_path / "x.star", {"": pd.DataFrame({"rlnDefocusU": [1.0]})})
    with pytest.raises(InputFileError, match="rlnCoordinateX"):
        read_coordinates(tmp_path / "x.star")
    with pytest.raises(InputFileError, match="rlnCoordinateY"):
        write_box(tmp_path / "y.box", pd.DataFrame({"rlnCoordinateX": [1.0]}), box_size=10)


def test_shared_particles_coordinates(shared_data: Path) -> None:
    df = read_coordinates(shared_data / "particles/relion31_5ptcl/relion31.star")
    assert list(df["rlnCoordinateX"])[:2] == [3277.0, 3277.0]
