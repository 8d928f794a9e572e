from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from cryospa.errors import InputFileError
from cryospa.io.movies import (
    apply_gain,
    correct_defects,
    open_movie,
    read_defects,
    read_gain,
    transform_gain,
    write_mrc_movie,
    write_tiff_movie,
)
from cryospa.io.mrc import write_mrc


def _frames(dtype: type, n: int = 5, shape: tuple[int, int] = (24, 32)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.poisson(3.0, size=(n, *shape)).astype(dtype)


@pytest.mark.parametrize("compression", ["zlib", "lzw", None])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_tiff_movie_roundtrip(tmp_path: Path, compression: str | None, dtype: type) -> None:
    frames = _frames(dtype)
    path = tmp_path / "movie.tif"
    write_tiff_movie(path, frames, compression=compression)  # type: ignore[arg-type]
    with tifffile.TiffFile(path) as tif:  # one page per frame, compressed as asked
        assert len(tif.pages) == 5
        expected_tag = {"zlib": "ADOBE_DEFLATE", "lzw": "LZW", None: "NONE"}[compression]
        assert tif.pages.first.compression.name == expected_tag
        assert tif.pages.first.dtype == np.dtype(dtype)
    with open_movie(path) as movie:
        assert movie.n_frames == len(movie) == 5
        assert movie.frame_shape == (24, 32)
        f3 = movie.frame(3)
        assert f3.dtype == np.float32
        np.testing.assert_array_equal(f3, frames[3])
        np.testing.assert_array_equal(movie.frame(-1), frames[4])
        np.testing.assert_array_equal(movie.read_frames(1, 4), frames[1:4])
        np.testing.assert_array_equal(np.stack(list(movie)), frames)
        with pytest.raises(IndexError):
            movie.frame(5)


def test_tiff_movie_read_page_by_page(tmp_path: Path) -> None:
    # A damaged page does not prevent reading the others: frames are decoded one by one.
    frames = _frames(np.uint8)
    path = tmp_path / "movie.tif"
    write_tiff_movie(path, frames, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[2]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = b"\x00" * count
    path.write_bytes(bytes(raw))
    with open_movie(path) as movie:
        np.testing.assert_array_equal(movie.frame(4), frames[4])
        with pytest.raises(InputFileError, match="frame 2"):
            movie.frame(2)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float32, np.float16, np.uint8])
def test_mrc_movie_roundtrip(tmp_path: Path, dtype: type) -> None:
    frames = _frames(dtype)
    path = tmp_path / "movie.mrcs"
    write_mrc_movie(path, frames, voxel_size_angstrom=0.85)
    with open_movie(path) as movie:
        assert movie.n_frames == 5 and movie.frame_shape == (24, 32)
        np.testing.assert_array_equal(movie.frame(2), frames[2].astype(np.float32))
        np.testing.assert_array_equal(movie.read_frames(), frames.astype(np.float32))
        assert repr(movie).startswith("_MrcMovie(")


def test_open_movie_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not found"):
        open_movie(tmp_path / "nope.tif")
    (tmp_path / "a.xyz").write_text("x")
    with pytest.raises(InputFileError, match="unknown movie format"):
        open_movie(tmp_path / "a.xyz")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(InputFileError, match=r"bad\.tif"):
        open_movie(tmp_path / "bad.tif")


# ---- gain ---------------------------------------------------------------------------

HAND = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float32)  # h=2, w=3


@pytest.mark.parametrize(
    ("rotation", "flip", "expected"),
    [
        (0, 0, [[1, 2, 3], [4, 5, 6]]),
        (1, 0, [[4, 1], [5, 2], [6, 3]]),  # 90° clockwise as displayed (row 0 on top)
        (2, 0, [[6, 5, 4], [3, 2, 1]]),
        (3, 0, [[3, 6], [2, 5], [1, 4]]),  # 90° counter-clockwise
        (0, 1, [[4, 5, 6], [1, 2, 3]]),  # upside down
        (0, 2, [[3, 2, 1], [6, 5, 4]]),  # left-right
        (1, 1, [[6, 3], [5, 2], [4, 1]]),  # rotate first, then flip
        (1, 2, [[1, 4], [2, 5], [3, 6]]),
    ],
)
def test_gain_rotation_flip_hand_made(rotation: int, flip: int, expected: list[list[int]]) -> None:
    out = transform_gain(HAND, rotation=rotation, flip=flip)
    np.testing.assert_array_equal(out, np.array(expected, dtype=np.float32))


def test_gain_rotation_matches_relion_formula() -> None:
    # RELION ImageOp::rotate90: dest(x, ydim-1-y) = src(y, x); rotate270: dest(xdim-1-x, y).
    src = np.random.default_rng(0).normal(size=(5, 7))
    h, w = src.shape
    r90 = transform_gain(src, rotation=1)
    r270 = transform_gain(src, rotation=3)
    for y in range(h):
        for x in range(w):
            assert r90[x, h - 1 - y] == src[y, x]
            assert r270[w - 1 - x, y] == src[y, x]


@pytest.mark.parametrize("suffix", [".mrc", ".tif"])
def test_read_gain_files(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"gain{suffix}"
    if suffix == ".mrc":
        write_mrc(path, HAND, voxel_size_angstrom=1.0)
    else:
        tifffile.imwrite(path, HAND[::-1])  # TIFF rows are stored flipped (RELION convention)
    np.testing.assert_array_equal(read_gain(path), HAND)
    np.testing.assert_array_equal(read_gain(path, rotation=1, flip=1), [[6, 3], [5, 2], [4, 1]])
    with pytest.raises(ValueError, match="rotation"):
        read_gain(path, rotation=4)
    with pytest.raises(ValueError, match="flip"):
        read_gain(path, flip=3)


def test_apply_gain_and_shape_mismatch() -> None:
    frame = np.full((2, 3), 2.0, dtype=np.float32)
    np.testing.assert_array_equal(apply_gain(frame, HAND), 2 * HAND)  # multiplicative
    frames = np.stack([frame, 3 * frame])
    np.testing.assert_array_equal(apply_gain(frames, HAND)[1], 6 * HAND)
    with pytest.raises(InputFileError) as err:
        apply_gain(np.zeros((3, 2)), HAND, movie_path="Movies/m.tif", gain_path="gain.mrc")
    msg = str(err.value)
    assert "Movies/m.tif" in msg and "gain.mrc" in msg
    assert "(3, 2)" in msg and "(2, 3)" in msg
    assert "--gain_rot 1 or 3" in msg
    with pytest.raises(InputFileError, match="super-resolution"):
        apply_gain(np.zeros((4, 6)), HAND)


# ---- defects ------------------------------------------------------------------------


def test_defects_rectangles(tmp_path: Path) -> None:
    path = tmp_path / "defects.txt"
    path.write_text("# x y w h\n2 1 3 2\n\n9 0 1 100\n-2 -2 3 3\n")
    mask = read_defects(path, (6, 10))
    expected = np.zeros((6, 10), dtype=bool)
    expected[1:3, 2:5] = True  # rows y..y+h, columns x..x+w
    expected[:, 9] = True  # a bad column, clipped to the frame
    expected[0, 0] = True  # clipped corner
    np.testing.assert_array_equal(mask, expected)


def test_defects_pixel_list(tmp_path: Path) -> None:
    path = tmp_path / "hot.txt"
    path.write_text("0 0\n3 1\n4 5\n")
    mask = read_defects(path, (6, 5))
    assert mask.sum() == 3
    assert mask[0, 0] and mask[1, 3] and mask[5, 4]
    path.write_text("7 1\n")
    with pytest.raises(InputFileError, match="outside"):
        read_defects(path, (6, 5))


@pytest.mark.parametrize("suffix", [".mrc", ".tif"])
def test_defects_image_map(tmp_path: Path, suffix: str) -> None:
    image = np.zeros((6, 5), dtype=np.float32)
    image[2, 3] = 1
    image[4, :] = 1
    path = tmp_path / f"defects{suffix}"
    if suffix == ".mrc":
        write_mrc(path, image, voxel_size_angstrom=1.0)
    else:
        tifffile.imwrite(path, image.astype(np.uint8))
    np.testing.assert_array_equal(read_defects(path, (6, 5)), image != 0)
    with pytest.raises(InputFileError, match="shape"):
        read_defects(path, (5, 6))


def test_defects_bad_text(tmp_path: Path) -> None:
    path = tmp_path / "serialem.txt"
    path.write_text("CameraSizeX 5760\nBadColumns 12 13\n")
    with pytest.raises(InputFileError, match="line 1"):
        read_defects(path, (10, 10))
    path.write_text("1 2 3\n")
    with pytest.raises(InputFileError, match="expected 4"):
        read_defects(path, (10, 10))


def test_correct_defects_uses_good_neighbours() -> None:
    rng = np.random.default_rng(0)
    frame = rng.poisson(5.0, size=(64, 64)).astype(np.float32)
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, 20:23] = True  # a 3-pixel-wide bad band
    mask[5, 5] = True
    corrupted = frame.copy()
    corrupted[mask] = 1e6
    out = correct_defects(corrupted, mask, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(out[~mask], frame[~mask])  # good pixels untouched
    good_values = set(frame[~mask].tolist())
    assert set(out[mask].tolist()) <= good_values  # filled from good pixels
    assert abs(out[mask].mean() - frame[~mask].mean()) < 1.0  # no bias
    stack = correct_defects(np.stack([corrupted, corrupted]), mask, rng=np.random.default_rng(2))
    assert stack.shape == (2, 64, 64) and stack[:, mask].max() < 1e6
    # all-bad neighbourhoods fall back to the mean of the good pixels
    big = np.zeros((8, 8), dtype=bool)
    big[:, :7] = True
    out2 = correct_defects(
        np.arange(64, dtype=np.float32).reshape(8, 8),
        big,
        max_radius=1,
        rng=np.random.default_rng(0),
    )
    assert np.isfinite(out2).all()
