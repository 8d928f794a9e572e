from __future__ import annotations

import tracemalloc
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from cryospa.errors import InputFileError
from cryospa.io.mrc import (
    ImageStack,
    format_image_name,
    parse_image_name,
    read_images,
    read_mrc,
    read_mrc_header,
    write_mrc,
)

MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("shape", [(6, 7), (3, 6, 7)])
def test_read_all_modes_as_float32(tmp_path: Path, mode: int, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(mode)
    data = rng.integers(0, 100, size=shape).astype(MODES[mode])
    path = tmp_path / "m.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = 1.5
    out, info = read_mrc(path)
    assert info.mode == mode
    assert out.dtype == np.float32
    assert out.shape == shape == info.shape
    np.testing.assert_array_equal(out, data.astype(np.float32))
    assert info.voxel_size_angstrom[:2] == pytest.approx((1.5, 1.5))


@pytest.mark.parametrize("float16", [False, True])
def test_write_read_volume_roundtrip_keeps_header(tmp_path: Path, float16: bool) -> None:
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(8, 9, 10)).astype(np.float32)
    path = tmp_path / "vol.mrc"
    write_mrc(
        path,
        vol,
        voxel_size_angstrom=(1.1, 1.2, 1.3),
        origin_angstrom=(-5, 6, 7.5),
        float16=float16,
    )
    out, info = read_mrc(path)
    assert info.mode == (12 if float16 else 2)
    assert info.shape == (8, 9, 10) and not info.is_stack
    assert info.voxel_size_angstrom == pytest.approx((1.1, 1.2, 1.3), abs=1e-5)
    assert info.origin_angstrom == pytest.approx((-5, 6, 7.5))
    expected = vol.astype(np.float16).astype(np.float32) if float16 else vol
    np.testing.assert_array_equal(out, expected)
    assert read_mrc_header(path) == info
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_write_stack_header_convention(tmp_path: Path) -> None:
    stack = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = tmp_path / "s.mrcs"
    write_mrc(path, stack, voxel_size_angstrom=2.0)
    with mrcfile.open(path) as mrc:  # strict mrcfile accepts it
        assert int(mrc.header.ispg) == 0
        assert int(mrc.header.mz) == 1
        assert mrc.is_image_stack()
    out, info = read_mrc(path)
    assert info.is_stack and info.shape == (4, 5, 6)
    assert info.voxel_size_angstrom[:2] == (2.0, 2.0)
    np.testing.assert_array_equal(out, stack)
    # is_stack=True on a .mrc name is recognised from the header (ispg 0, mz 1)
    write_mrc(tmp_path / "s2.mrc", stack, voxel_size_angstrom=1.0, is_stack=True)
    assert read_mrc_header(tmp_path / "s2.mrc").is_stack
    write_mrc(tmp_path / "v.mrc", stack, voxel_size_angstrom=1.0)
    assert not read_mrc_header(tmp_path / "v.mrc").is_stack
    # a 2D image written as .mrcs is a stack of one
    write_mrc(tmp_path / "one.mrcs", stack[0], voxel_size_angstrom=1.0)
    assert read_mrc_header(tmp_path / "one.mrcs").shape == (1, 5, 6)
    assert read_mrc(tmp_path / "one.mrcs")[0].shape == (1, 5, 6)


def test_write_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "a.mrc"
    write_mrc(path, np.zeros((4, 4)), voxel_size_angstrom=1.0)
    write_mrc(path, np.ones((4, 4)), voxel_size_angstrom=1.0)
    out, info = read_mrc(path)
    assert info.shape == (4, 4)
    assert out.sum() == 16
    with pytest.raises(InputFileError, match="output folder does not exist"):
        write_mrc(tmp_path / "nope" / "a.mrc", np.zeros((4, 4)), voxel_size_angstrom=1.0)


def test_truncated_file_names_expected_and_actual_size(tmp_path: Path) -> None:
    path = tmp_path / "t.mrcs"
    write_mrc(path, np.zeros((3, 16, 16)), voxel_size_angstrom=1.0)
    full = path.stat().st_size
    assert full == 1024 + 3 * 16 * 16 * 4
    with open(path, "r+b") as fh:
        fh.truncate(full - 100)
    for reader in (read_mrc, read_mrc_header, ImageStack):
        with pytest.raises(InputFileError) as err:
            reader(path)
        assert str(full) in str(err.value)
        assert str(full - 100) in str(err.value)
        assert "truncated" in str(err.value)


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not found"):
        read_mrc(tmp_path / "missing.mrc")
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(b"x" * 100)
    with pytest.raises(InputFileError, match=r"bad\.mrc"):
        read_mrc(bad, permissive=True)


def test_strict_vs_permissive_map_id(tmp_path: Path, shared_data: Path) -> None:
    # relion31.mrcs (cryoDRGN test data) has no 'MAP ' id: strict fails, permissive reads.
    path = shared_data / "particles/relion31_5ptcl/relion31.mrcs"
    with pytest.raises(InputFileError, match="permissive=True"):
        read_mrc(path)
    data, info = read_mrc(path, permissive=True)
    assert data.shape == (5, 256, 256) and info.is_stack
    with ImageStack(path) as stack:  # stacks are read permissively, as RELION does
        np.testing.assert_array_equal(stack[3], data[3])


def test_unsupported_mode(tmp_path: Path) -> None:
    path = tmp_path / "c.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.zeros((4, 4), dtype=np.complex64))
    with pytest.raises(InputFileError, match="unsupported MRC mode 4"):
        read_mrc(path)


def test_image_stack_indexing(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(size=(10, 8, 6)).astype(np.float32)
    path = tmp_path / "p.mrcs"
    write_mrc(path, data, voxel_size_angstrom=1.7)
    with ImageStack(path) as stack:
        assert len(stack) == 10
        assert stack.shape == (10, 8, 6)
        assert stack.image_size == 6
        assert stack.pixel_size_angstrom == pytest.approx(1.7)
        assert isinstance(stack._data, np.memmap)
        np.testing.assert_array_equal(stack[3], data[3])
        np.testing.assert_array_equal(stack[-1], data[9])
        np.testing.assert_array_equal(stack[2:5], data[2:5])
        np.testing.assert_array_equal(stack[[7, 1, 7]], data[[7, 1, 7]])
        np.testing.assert_array_equal(stack[np.array([0, 9])], data[[0, 9]])
        assert stack[[]].shape == (0, 8, 6)
        assert stack[3].dtype == np.float32 and stack[3].shape == (8, 6)
        with pytest.raises(IndexError):
            stack[10]
        with pytest.raises(IndexError):
            stack[[0, 11]]
    with pytest.raises(ValueError, match="closed"):
        stack[0]


def test_image_stack_reads_only_requested_images(tmp_path: Path) -> None:
    # Image 5 is valid; every other image is NaN garbage: reading image 5 must not touch them.
    data = np.full((12, 16, 16), np.nan, dtype=np.float32)
    good = np.random.default_rng(2).normal(size=(16, 16)).astype(np.float32)
    data[5] = good
    path = tmp_path / "garbage.mrcs"
    write_mrc(path, data, voxel_size_angstrom=1.0)
    with ImageStack(path) as stack:
        np.testing.assert_array_equal(stack[5], good)


def test_image_stack_large_sparse_file_is_memory_mapped(tmp_path: Path) -> None:
    # A ~1 GB stack (sparse file): reading a few images must allocate only those images.
    n, box = 4096, 256
    path = tmp_path / "big.mrcs"
    write_mrc(path, np.zeros((1, box, box)), voxel_size_angstrom=1.0)
    with open(path, "r+b") as fh:
        fh.seek(8)
        fh.write(np.int32(n).tobytes())
        fh.truncate(1024 + n * box * box * 4)
    tracemalloc.start()
    try:
        with ImageStack(path) as stack:
            assert stack.shape == (n, box, box)
            imgs = stack[[4000, 17]]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert imgs.shape == (2, box, box)
    assert not imgs.any()
    assert peak < 20 * box * box * 4, f"peak allocation {peak} bytes: the file was read whole"


def test_3d_mrc_read_as_stack(shared_data: Path) -> None:
    path = shared_data / "particles/empiar10076_7ptcl/empiar_10076_7.mrc"
    info = read_mrc_header(path)
    assert info.shape == (7, 320, 320) and not info.is_stack  # header says volume
    with ImageStack(path) as stack:
        assert stack.shape == (7, 320, 320)
        img = stack[6]
    vol, _ = read_mrc(path, permissive=True)
    np.testing.assert_array_equal(img, vol[6])


def test_single_image_is_stack_of_one(tmp_path: Path) -> None:
    path = tmp_path / "mic.mrc"
    img = np.arange(20, dtype=np.float32).reshape(4, 5)
    write_mrc(path, img, voxel_size_angstrom=1.0)
    assert read_mrc_header(path).shape == (4, 5)
    with ImageStack(path) as stack:
        assert stack.shape == (1, 4, 5)
        np.testing.assert_array_equal(stack[0], img)


def test_shared_maps_headers(shared_data: Path) -> None:
    info = read_mrc_header(shared_data / "maps/emdb/EMD-3001.map")
    assert info.shape == (25, 43, 73)
    assert info.voxel_size_angstrom == pytest.approx((0.448, 0.393, 0.459), abs=1e-3)
    mic = read_mrc_header(shared_data / "micrographs/fei-extended.mrc")  # FEI extended header
    assert mic.mode == 6 and mic.shape == (3838, 3710)
    assert mic.voxel_size_angstrom[0] == pytest.approx(0.8538, abs=1e-4)
    with ImageStack(shared_data / "micrographs/fei-extended.mrc") as stack:
        assert stack[0].shape == (3838, 3710)
    ref = read_mrc_header(shared_data / "maps/betagal_relion1x_test/ref_model.mrc")
    assert not ref.is_stack and ref.voxel_size_angstrom[0] == pytest.approx(3.54)


def test_image_names() -> None:
    assert parse_image_name("000012@Extract/job003/a.mrcs") == (11, "Extract/job003/a.mrcs")
    assert parse_image_name("1@a.mrcs") == (0, "a.mrcs")
    assert parse_image_name("Movies/a.mrc") == (None, "Movies/a.mrc")
    assert format_image_name(11, "Extract/job003/a.mrcs") == "000012@Extract/job003/a.mrcs"
    assert format_image_name(1234567, "a.mrcs") == "1234568@a.mrcs"
    for i in (0, 5, 999999):
        assert parse_image_name(format_image_name(i, "x/y.mrcs")) == (i, "x/y.mrcs")
    with pytest.raises(ValueError):
        parse_image_name("abc@a.mrcs")
    with pytest.raises(ValueError):
        parse_image_name("0@a.mrcs")


def test_read_images_groups_by_stack(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(5, 8, 8)).astype(np.float32)
    b = rng.normal(size=(3, 8, 8)).astype(np.float32)
    (tmp_path / "Extract").mkdir()
    write_mrc(tmp_path / "Extract/a.mrcs", a, voxel_size_angstrom=1.0)
    write_mrc(tmp_path / "b.mrcs", b, voxel_size_angstrom=1.0)
    write_mrc(tmp_path / "single.mrc", a[0], voxel_size_angstrom=1.0)
    names = [
        "000003@Extract/a.mrcs",
        "000001@b.mrcs",
        "000001@Extract/a.mrcs",
        "000003@b.mrcs",
        "single.mrc",
        f"2@{tmp_path / 'b.mrcs'}",
    ]
    out = read_images(names, root=tmp_path)
    expected = np.stack([a[2], b[0], a[0], b[2], a[0], b[1]])
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32


def test_read_images_errors_name_stack_and_row(tmp_path: Path) -> None:
    write_mrc(tmp_path / "a.mrcs", np.zeros((2, 4, 4)), voxel_size_angstrom=1.0)
    with pytest.raises(InputFileError) as err:
        read_images(["1@a.mrcs", "3@missing.mrcs"], root=tmp_path, star_path="particles.star")
    msg = str(err.value)
    assert "missing.mrcs" in msg and "row 2" in msg and "particles.star" in msg
    with pytest.raises(InputFileError, match="only 2 images"):
        read_images(["000003@a.mrcs"], root=tmp_path)
    with pytest.raises(InputFileError, match="holds 2 images"):
        read_images(["a.mrcs"], root=tmp_path)


def test_stack_writer_streams_and_is_atomic(tmp_path):
    from cryospa.io.mrc import StackWriter

    rng = np.random.default_rng(0)
    images = rng.normal(size=(10, 12, 16)).astype(np.float32)
    target = tmp_path / "s.mrcs"
    with StackWriter(target, 10, (12, 16), voxel_size_angstrom=1.5) as w:
        w.write(0, images[:4])
        w.write(4, images[4:9])
        w.write(9, images[9])
        assert not target.exists()  # only the temporary file exists while writing
    data, header = read_mrc(target)
    np.testing.assert_array_equal(data, images)
    assert header.is_stack and header.voxel_size_angstrom[0] == pytest.approx(1.5)
    # a failure inside the block leaves nothing behind
    bad = tmp_path / "bad.mrcs"
    with pytest.raises(ValueError, match="cannot write"):
        with StackWriter(bad, 3, (4, 4), voxel_size_angstrom=1.0) as w:
            w.write(2, np.zeros((2, 4, 4), np.float32))
    assert not bad.exists()
    assert list(tmp_path.glob(".*tmp")) == []
