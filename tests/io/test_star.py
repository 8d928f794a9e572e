from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cryospa.errors import InputFileError
from cryospa.io.star import (
    RelionTable,
    joined,
    pixel_size_angstrom,
    read_relion_star,
    read_star,
    require_columns,
    split_optics,
    write_relion_star,
    write_star,
)

RELION_TABLE_FILES = [
    "particles/relion31_5ptcl/relion31.star",
    "particles/relion31_5ptcl/relion31.v2.star",
    "particles/empiar10076_7ptcl/empiar_10076_7.star",
    "particles/tomo_ribosome_subtilts/sta_testing_bin8.star",
    "maps/betagal_relion1x_test/ap_s_c2d.star",
    "maps/betagal_relion1x_test/out_it005_data.star",
    "star/interop/relion5.star",
    "star/interop/relion31.6opticsgroups.star",
    "star/interop/FinalRefinement-OriginalParticles-PfCRT.star",
    "star/interop/empiar10025_topaz/particles.star",
    "star/interop/empiar10025_topaz/ctf_params.star",
]


def _particles_table(n: int = 6) -> RelionTable:
    rng = np.random.default_rng(0)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1", "opticsGroup2"],
            "rlnOpticsGroup": [1, 2],
            "rlnMicrographOriginalPixelSize": [0.8, 0.8],
            "rlnVoltage": [300.0, 200.0],
            "rlnSphericalAberration": [2.7, 2.7],
            "rlnAmplitudeContrast": [0.1, 0.07],
            "rlnImagePixelSize": [1.6, 1.6],
            "rlnImageSize": [64, 64],
            "rlnImageDimensionality": [2, 2],
        }
    )
    data = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@Extract/job003/a b.mrcs" for i in range(n)],
            "rlnOpticsGroup": [1 + (i % 2) for i in range(n)],
            "rlnDefocusU": rng.uniform(5000, 30000, n),
            "rlnAngleRot": rng.uniform(-180, 180, n),
            "rlnOriginXAngst": rng.normal(size=n) * 1e-7,  # tiny values keep precision
            "rlnClassNumber": np.arange(n, dtype=np.int64),
        }
    )
    return RelionTable("particles", data, optics)


def test_write_read_star_roundtrip_exact(tmp_path: Path) -> None:
    table = _particles_table()
    general = {"rlnFinalResolution": 3.21, "rlnMaskName": "mask.mrc", "rlnNrClasses": 4}
    path = tmp_path / "p.star"
    write_star(path, {"general": general, "optics": table.optics, "particles": table.data})
    text = path.read_text()
    assert text.count("# version 30001") == 3
    assert "loop_" in text and "data_general" in text
    blocks = read_star(path)
    assert list(blocks) == ["general", "optics", "particles"]
    pd.testing.assert_frame_equal(blocks["particles"], table.data)  # exact floats, dtypes
    pd.testing.assert_frame_equal(blocks["optics"], table.optics)
    assert blocks["general"].attrs["star_pairs"]
    assert blocks["general"].iloc[0].to_dict() == general
    # key-value blocks are written back as key-value blocks
    write_star(tmp_path / "again.star", blocks)
    assert "loop_" not in (tmp_path / "again.star").read_text().split("data_optics")[0]
    assert read_star(tmp_path / "again.star")["general"].iloc[0].to_dict() == general


def test_float_columns_stay_float(tmp_path: Path) -> None:
    df = pd.DataFrame({"rlnVoltage": [300.0, 300.0], "rlnCoordinateX": [12.0, 13.0]})
    write_star(tmp_path / "f.star", {"": df})
    back = read_star(tmp_path / "f.star")[""]
    assert back["rlnVoltage"].dtype == np.float64
    pd.testing.assert_frame_equal(back, df)


def test_empty_table_roundtrip(tmp_path: Path) -> None:
    df = pd.DataFrame({"rlnCoordinateX": pd.Series([], dtype=float)})
    write_star(tmp_path / "e.star", {"": df})
    back = read_star(tmp_path / "e.star")[""]
    assert list(back.columns) == ["rlnCoordinateX"] and len(back) == 0


def test_read_star_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not found"):
        read_star(tmp_path / "missing.star")
    empty = tmp_path / "empty.star"
    empty.write_text("# nothing here\n")
    with pytest.raises(InputFileError, match="no data_ block"):
        read_star(empty)


def test_require_columns_message() -> None:
    df = pd.DataFrame({"rlnImageName": ["1@a.mrcs"]})
    with pytest.raises(InputFileError) as err:
        require_columns(
            df,
            ["rlnImageName", "rlnDefocusU", "rlnDefocusV"],
            path="Extract/job003/particles.star",
            table="particles",
        )
    msg = str(err.value)
    assert "Extract/job003/particles.star" in msg
    assert "'particles'" in msg and "rlnDefocusU" in msg and "rlnDefocusV" in msg
    assert err.value.fix
    require_columns(df, ["rlnImageName"], path=None, table="particles")  # no error


def test_joined_split_roundtrip() -> None:
    table = _particles_table()
    j = joined(table)
    assert len(j) == len(table.data)
    assert list(j["rlnImageName"]) == list(table.data["rlnImageName"])  # order kept
    assert list(j["rlnVoltage"]) == [300.0, 200.0] * 3
    back = split_optics(j, "particles")
    pd.testing.assert_frame_equal(back.data, table.data)
    pd.testing.assert_frame_equal(back.optics, table.optics, check_like=True)


def test_split_optics_builds_groups_and_rejects_conflicts() -> None:
    df = pd.DataFrame(
        {
            "rlnMicrographName": ["a.mrc", "b.mrc", "c.mrc"],
            "rlnVoltage": [300.0, 200.0, 300.0],
            "rlnMicrographPixelSize": [1.0, 1.0, 1.0],
        }
    )
    t = split_optics(df, "micrographs")
    assert list(t.data["rlnOpticsGroup"]) == [1, 2, 1]
    assert list(t.optics["rlnOpticsGroupName"]) == ["opticsGroup1", "opticsGroup2"]
    assert list(t.optics["rlnVoltage"]) == [300.0, 200.0]
    df["rlnOpticsGroup"] = 1
    with pytest.raises(ValueError, match="optics group"):
        split_optics(df, "micrographs")


def test_relion_table_roundtrip_and_pixel_size(tmp_path: Path) -> None:
    table = _particles_table()
    path = tmp_path / "particles.star"
    write_relion_star(path, table)
    back = read_relion_star(path)
    assert back.kind == "particles" and back.path == path
    pd.testing.assert_frame_equal(back.data, table.data)
    pd.testing.assert_frame_equal(back.optics, table.optics)
    assert pixel_size_angstrom(back, 2) == 1.6
    with pytest.raises(InputFileError, match="optics group 7"):
        pixel_size_angstrom(back, 7)
    back.optics.loc[0, "rlnImagePixelSize"] = 0.0
    with pytest.raises(InputFileError, match=r"pixel size 0\.0"):
        pixel_size_angstrom(back, 1)
    micrographs = RelionTable("micrographs", table.data, table.optics)
    with pytest.raises(InputFileError, match="rlnMicrographPixelSize"):
        pixel_size_angstrom(micrographs)


def test_undefined_optics_group_is_an_error(tmp_path: Path) -> None:
    table = _particles_table()
    table.data.loc[0, "rlnOpticsGroup"] = 9
    with pytest.raises(InputFileError, match=r"optics groups \[9\]"):
        write_relion_star(tmp_path / "x.star", table)


def test_upgrade_relion30_empiar10076(shared_data: Path) -> None:
    t = read_relion_star(shared_data / "particles/empiar10076_7ptcl/empiar_10076_7.star")
    assert t.kind == "particles"
    assert len(t.data) == 7 and len(t.optics) == 1
    assert pixel_size_angstrom(t) == pytest.approx(1.31, abs=1e-4)
    row = t.optics.iloc[0]
    assert row["rlnVoltage"] == 300 and row["rlnSphericalAberration"] == 2.7
    assert row["rlnAmplitudeContrast"] == 0.07
    assert row["rlnImageSize"] == 320  # read from the stack header next to the STAR file
    assert row["rlnImageDimensionality"] == 2
    assert set(t.data["rlnOpticsGroup"]) == {1}
    for old in ("rlnMagnification", "rlnDetectorPixelSize", "rlnVoltage"):
        assert old not in t.data.columns
    assert list(t.data["rlnDefocusU"])[:2] == [15301.1, 15303.0]
    assert t.data["rlnImageName"].iloc[0] == "1@empiar_10076_7.mrc"


def test_upgrade_relion30_pfcrt_origins(shared_data: Path) -> None:
    path = shared_data / "star/interop/FinalRefinement-OriginalParticles-PfCRT.star"
    raw = read_star(path)["images"]
    t = read_relion_star(path)
    assert t.kind == "particles"
    assert pixel_size_angstrom(t) == pytest.approx(1.035)
    assert "rlnOriginX" not in t.data.columns
    np.testing.assert_allclose(t.data["rlnOriginXAngst"], raw["rlnOriginX"] * 1.035)
    np.testing.assert_allclose(t.data["rlnOriginYAngst"], raw["rlnOriginY"] * 1.035)
    # unknown / untouched columns kept, in order
    assert "rlnImageOriginalName" in t.data.columns
    assert list(t.data["rlnAnglePsi"]) == list(raw["rlnAnglePsi"])
    # the upgraded table is a valid RELION 3.1 table
    j = joined(t)
    assert (j["rlnVoltage"] == 300).all()


def test_six_optics_groups(shared_data: Path) -> None:
    t = read_relion_star(shared_data / "star/interop/relion31.6opticsgroups.star")
    assert len(t.optics) == 6
    assert t.optics["rlnOddZernike"].iloc[0].startswith("[")
    j = joined(t)
    assert len(j) == 139
    for g in t.optics["rlnOpticsGroup"]:
        rows = j[j["rlnOpticsGroup"] == g]
        expected = t.optics.loc[t.optics["rlnOpticsGroup"] == g, "rlnImagePixelSize"].iloc[0]
        assert (rows["rlnImagePixelSize"] == expected).all()
    back = split_optics(j, "particles")
    pd.testing.assert_frame_equal(back.data, t.data)
    used = t.optics[t.optics["rlnOpticsGroup"].isin(t.data["rlnOpticsGroup"])]
    pd.testing.assert_frame_equal(
        back.optics.reset_index(drop=True),
        used.sort_values("rlnOpticsGroup").reset_index(drop=True),
        check_like=True,
    )


def test_blocks_in_other_order(shared_data: Path) -> None:
    a = read_relion_star(shared_data / "particles/relion31_5ptcl/relion31.star")
    b = read_relion_star(shared_data / "particles/relion31_5ptcl/relion31.v2.star")
    pd.testing.assert_frame_equal(a.data, b.data)
    pd.testing.assert_frame_equal(a.optics, b.optics)
    assert pixel_size_angstrom(a) == 2.806


def test_read_all_shared_star_files(shared_data: Path, tmp_path: Path) -> None:
    files = sorted(shared_data.rglob("*.star"))
    assert len(files) >= 25
    for path in files:
        blocks = read_star(path)
        assert blocks, path
        out = tmp_path / path.name
        write_star(out, blocks)
        again = read_star(out)
        assert list(again) == list(blocks), path
        for name in blocks:
            pd.testing.assert_frame_equal(
                again[name], blocks[name], check_dtype=False, obj=f"{path.name}:{name}"
            )
    pipeline = read_star(shared_data / "star/relion_outputs/default_pipeline.star")
    assert len(pipeline["pipeline_processes"]) == 31
    mtf = read_star(shared_data / "star/mtf/mtf_k2_300kV.star")["mtf_k2_300kv"]
    assert list(mtf.columns) == ["rlnResolutionInversePixel", "rlnMtfValue"]
    post = read_star(shared_data / "star/relion_outputs/postprocess.star")
    assert post["general"]["rlnFinalResolution"].iloc[0] == pytest.approx(16.363636)


@pytest.mark.parametrize("name", RELION_TABLE_FILES)
def test_read_all_shared_relion_tables(shared_data: Path, tmp_path: Path, name: str) -> None:
    t = read_relion_star(shared_data / name)
    assert len(t.data) > 0 and len(t.optics) >= 1
    assert "rlnOpticsGroup" in t.data.columns
    j = joined(t)
    assert len(j) == len(t.data)
    write_relion_star(tmp_path / "t.star", t)
    back = read_relion_star(tmp_path / "t.star")
    pd.testing.assert_frame_equal(back.data, t.data, check_dtype=False)
    pd.testing.assert_frame_equal(back.optics, t.optics, check_dtype=False)


def test_relion14_betagal_pixel_size(shared_data: Path) -> None:
    t = read_relion_star(shared_data / "maps/betagal_relion1x_test/ap_s_c2d.star")
    assert len(t.data) == 8915
    assert pixel_size_angstrom(t) == pytest.approx(3.54, abs=1e-3)
    assert "rlnOriginXAngst" in t.data.columns


def test_not_a_relion_table(shared_data: Path) -> None:
    with pytest.raises(InputFileError, match="no particles, micrographs or movies table"):
        read_relion_star(shared_data / "star/mtf/mtf_k2_300kV.star")
    with pytest.raises(InputFileError, match="no movies table"):
        read_relion_star(shared_data / "particles/relion31_5ptcl/relion31.star", kind="movies")


def test_old_origins_without_pixel_size(tmp_path: Path) -> None:
    df = pd.DataFrame({"rlnImageName": ["1@a.mrcs"], "rlnOriginX": [1.0], "rlnVoltage": [300.0]})
    write_star(tmp_path / "old.star", {"": df})
    with pytest.raises(InputFileError, match="rlnOriginX"):
        read_relion_star(tmp_path / "old.star")
