"""Movie-level simulator: counts, motion, damage, gain, defects, files, RELION (where present).

Physics checks against the recorded truth:

* mean gain-corrected counts per pixel per frame = dose per frame x pixel area (1 %);
* raw counts are Poisson about the expectation divided by the gain;
* shifts measured by cross-correlating noiseless frames equal the true global shifts
  (< 0.05 px), and per-patch shifts the true global + local shifts (< 0.1 px);
* high-frequency contrast fades frame by frame as the Grant & Grigorieff critical exposure says;
* hot pixels and dead columns sit where ``defects.txt`` says.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cryospa.cli.main import main as cli
from cryospa.core.dose import critical_exposure, equivalent_exposure, frame_attenuation
from cryospa.errors import ParameterError
from cryospa.io.movies import open_movie, read_defects, read_gain
from cryospa.io.mrc import write_mrc
from cryospa.io.star import read_relion_star, read_star
from cryospa.sim import prepare_maps
from cryospa.sim.movies import (
    DetectorModel,
    MotionModel,
    MovieSimulator,
    write_movie_simulation,
)
from tests.conftest import requires_relion, run_relion
from tests.sim.test_micrographs import solvated_map
from tests.synthetic import cc_shift, simulation_maps

APIX = 1.77


@pytest.fixture(scope="module")
def maps():  # type: ignore[no-untyped-def]
    return prepare_maps(
        [solvated_map(32, n_atoms=300)], [2.0], pixel_size_angstrom=APIX, box_size=32
    )


def _sim(maps, **kw) -> MovieSimulator:  # type: ignore[no-untyped-def]
    options = dict(
        n_movies=1,
        movie_shape_px=(256, 256),
        n_frames=8,
        particles_per_micrograph=12,
        seed=2,
    )
    options.update(kw)
    return MovieSimulator(maps, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def global_only(maps):  # type: ignore[no-untyped-def]
    sim = _sim(maps, motion=MotionModel(local_angstrom=0.0, drift_angstrom=12.0))
    return sim, sim.movie(0, keep_expected=True)


def _good_pixels(sim: MovieSimulator) -> np.ndarray:
    mask = np.ones(sim.layout.shape_px, dtype=bool)
    mask[:, sim.dead_columns] = False
    mask[sim.hot_pixels[:, 1], sim.hot_pixels[:, 0]] = False
    return mask


def test_mean_counts_per_frame_equal_dose_times_pixel_area(global_only) -> None:  # type: ignore[no-untyped-def]
    sim, movie = global_only
    good = _good_pixels(sim)
    target = sim.dose_per_frame * APIX**2
    for f in range(sim.n_frames):
        corrected = movie.raw[f].astype(np.float64) * sim.gain
        assert corrected[good].mean() == pytest.approx(target, rel=0.01)
        assert movie.expected[f].mean() == pytest.approx(target, rel=0.005)


def test_raw_counts_are_poisson_about_expectation_over_gain(global_only) -> None:  # type: ignore[no-untyped-def]
    sim, movie = global_only
    good = _good_pixels(sim)
    lam = movie.expected / sim.gain
    z2 = (movie.raw - lam) ** 2 / lam
    assert float(z2[:, good].mean()) == pytest.approx(1.0, abs=0.02)
    assert movie.raw.dtype == np.uint16


def test_noiseless_frame_shifts_equal_true_global_shifts(global_only) -> None:  # type: ignore[no-untyped-def]
    sim, movie = global_only
    assert np.all(sim.global_shifts[0, 0] == 0)
    total = np.hypot(*sim.global_shifts[0, -1])
    assert total > 2.0  # pixels: a real drift was simulated
    for f in range(1, sim.n_frames):
        dx, dy = cc_shift(movie.expected[f], movie.expected[0])
        # the frame's content drifted by minus RELION's shift
        assert dx == pytest.approx(-sim.global_shifts[0, f, 0], abs=0.05)
        assert dy == pytest.approx(-sim.global_shifts[0, f, 1], abs=0.05)


def test_early_frames_move_most(maps) -> None:  # type: ignore[no-untyped-def]
    sim = _sim(maps, n_movies=8, n_frames=24, motion=MotionModel(jitter_angstrom=0.0))
    step = np.hypot(*np.diff(sim.global_shifts, axis=1).transpose(2, 0, 1))  # (M, F - 1)
    assert np.all(step[:, :3].mean(axis=1) > 2 * step[:, -10:].mean(axis=1))


def test_local_deformation_matches_patch_shifts(maps) -> None:  # type: ignore[no-untyped-def]
    sim = _sim(
        maps,
        movie_shape_px=(384, 384),
        n_frames=6,
        particles_per_micrograph=30,
        motion=MotionModel(local_angstrom=6.0),
    )
    movie = sim.movie(0, keep_expected=True).expected
    assert movie is not None
    p = 128
    largest_local = 0.0
    f = sim.n_frames - 1
    for y0 in range(0, 384, p):
        for x0 in range(0, 384, p):
            dx, dy = cc_shift(
                movie[f, y0 : y0 + p, x0 : x0 + p], movie[0, y0 : y0 + p, x0 : x0 + p]
            )
            centre = (np.array(x0 + p / 2 - 0.5), np.array(y0 + p / 2 - 0.5))
            lx, ly = sim.local_shift_at(0, f, *centre)
            largest_local = max(largest_local, float(np.hypot(lx, ly)))
            assert dx == pytest.approx(-(sim.global_shifts[0, f, 0] + float(lx)), abs=0.1)
            assert dy == pytest.approx(-(sim.global_shifts[0, f, 1] + float(ly)), abs=0.1)
    assert largest_local > 1.0  # the local part was really there


def test_local_deformation_averages_to_zero_over_the_field(maps) -> None:  # type: ignore[no-untyped-def]
    sim = _sim(maps, movie_shape_px=(200, 300), n_frames=24)
    ys, xs = np.mgrid[0:200, 0:300]
    for f in (1, 10, 23):
        sx, sy = sim.local_shift_at(0, f, xs, ys)
        assert abs(sx.mean()) < 1e-9 and abs(sy.mean()) < 1e-9


def test_radiation_damage_follows_the_critical_exposure(maps) -> None:  # type: ignore[no-untyped-def]
    still = MotionModel(drift_angstrom=0.0, jitter_angstrom=0.0, local_angstrom=0.0)
    sim = _sim(maps, n_frames=12, motion=still, ice=None, particles_per_micrograph=15)
    movie = sim.movie(0, keep_expected=True).expected
    assert movie is not None
    spectra = np.abs(np.fft.rfft2(movie - movie.mean(axis=(1, 2), keepdims=True)))
    ky = np.fft.fftfreq(256, d=APIX)[:, None]
    kx = np.fft.rfftfreq(256, d=APIX)[None, :]
    k = np.hypot(kx, ky)
    volt = sim.microscope.voltage_kv
    ne = critical_exposure(torch.from_numpy(k))
    for lo, hi in ((0.05, 0.08), (0.12, 0.16), (0.2, 0.25)):
        band = (k >= lo) & (k < hi)
        for f in (5, 11):
            n0, n1 = sim.frame_exposures()[f]
            a_f = frame_attenuation(
                ne, equivalent_exposure(n0, volt), equivalent_exposure(n1, volt)
            )
            a_0 = frame_attenuation(ne, 0.0, equivalent_exposure(sim.dose_per_frame, volt))
            predicted = float(np.sum(spectra[0][band] * (a_f / a_0).numpy()[band]))
            measured = float(np.sum(spectra[f][band]))
            assert measured == pytest.approx(predicted, rel=0.02)
    high = (k >= 0.2) & (k < 0.25)
    assert spectra[11][high].sum() < 0.6 * spectra[0][high].sum()  # damage is visible


def test_hot_pixels_and_dead_columns_where_the_defect_file_says(tmp_path: Path, maps) -> None:  # type: ignore[no-untyped-def]
    sim = _sim(maps, detector=DetectorModel(n_hot_pixels=5, n_dead_columns=2))
    out = write_movie_simulation(sim, tmp_path / "sim")
    mask = read_defects(out / "defects.txt", sim.layout.shape_px)
    assert mask.sum() == 2 * 256 + len({tuple(p) for p in sim.hot_pixels} - set()) - sum(
        int(x in sim.dead_columns) for x, _ in sim.hot_pixels
    )
    with open_movie(out / "Movies/mov001.tiff") as movie:
        frames = movie.read_frames()
    assert np.all(frames[:, :, sim.dead_columns] == 0)
    for x, y in sim.hot_pixels:
        if x not in sim.dead_columns:
            assert frames[:, y, x].mean() > 20
    np.testing.assert_array_equal(frames[:, ~mask].max() < 40, True)
    np.testing.assert_allclose(read_gain(out / "gain.mrc"), sim.gain)


def test_output_folder(tmp_path: Path, maps) -> None:  # type: ignore[no-untyped-def]
    sim = _sim(maps, n_movies=2)
    out = write_movie_simulation(sim, tmp_path / "sim", file_format="mrc")
    movies = read_relion_star(out / "movies.star")
    assert list(movies.data["rlnMicrographMovieName"]) == [
        "Movies/mov001.mrcs",
        "Movies/mov002.mrcs",
    ]
    assert float(movies.optics["rlnMicrographOriginalPixelSize"].iloc[0]) == APIX
    with open_movie(out / "Movies/mov002.mrcs") as movie:
        np.testing.assert_array_equal(movie.read_frames(), sim.movie(1).raw)
    motion = read_star(out / "ground_truth/motion/mov002.star")
    np.testing.assert_allclose(
        motion["global_shift"][["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(float),
        sim.global_shifts[1],
    )
    np.testing.assert_allclose(
        motion["local_motion_model"]["rlnMotionModelCoeff"].to_numpy(float),
        sim.local_coeffs[1].ravel(),
    )
    truth = read_relion_star(out / "ground_truth/particles_true.star")
    assert len(truth.data) == 2 * 12
    assert set(truth.data["rlnMicrographName"]) == {"Movies/mov001.mrc", "Movies/mov002.mrc"}
    coords = read_star(out / "ground_truth/coords/Movies/mov001_true.star")
    assert len(next(iter(coords.values()))) == 12
    params = json.loads((out / "ground_truth/simulation.json").read_text())
    assert params["level"] == "movies" and params["n_frames"] == 8


def test_reproducible_in_any_order(maps) -> None:  # type: ignore[no-untyped-def]
    a = _sim(maps, n_movies=2, n_frames=3)
    b = _sim(maps, n_movies=2, n_frames=3)
    second_first = b.movie(1).raw
    np.testing.assert_array_equal(a.movie(0).raw, b.movie(0).raw)
    np.testing.assert_array_equal(a.movie(1).raw, second_first)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dose_per_frame": 0.0}, "dose per frame"),
        ({"n_frames": 0}, "frames"),
        ({"pre_exposure": -1.0}, "pre-exposure"),
    ],
)
def test_bad_options(maps, kwargs: dict, message: str) -> None:  # type: ignore[no-untyped-def, type-arg]
    with pytest.raises(ParameterError, match=message):
        _sim(maps, **kwargs)


def test_bad_motion_and_detector_options() -> None:
    with pytest.raises(ParameterError, match="drift"):
        MotionModel(drift_angstrom=-1)
    with pytest.raises(ParameterError, match="gain"):
        DetectorModel(gain_sd=0.5)


def test_cli_movies_and_zero_dose_error(tmp_path: Path) -> None:
    vol = solvated_map(32, n_atoms=300)
    write_mrc(tmp_path / "map.mrc", vol, voxel_size_angstrom=2.0)
    args = ["simulate", "--level", "movies", "--map", str(tmp_path / "map.mrc"), "--angpix",
            "1.77", "--box", "32", "--n_micrographs", "1", "--mic_size", "128", "--n_frames",
            "4", "--particles_per_micrograph", "3"]  # fmt: skip
    assert cli([*args, "--dose_per_frame", "0", "--o", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    assert cli([*args, "--o", str(tmp_path / "ok")]) == 0
    with open_movie(tmp_path / "ok/Movies/mov001.tiff") as movie:
        assert movie.n_frames == 4 and movie.frame_shape == (128, 128)


@pytest.mark.relion
@requires_relion
def test_relion_motioncorr_recovers_the_true_drift(tmp_path: Path, shared_data: Path) -> None:
    # RELION reads our movies, gain and defects, and its own motion correction finds our
    # drift: same sign and orientation conventions (TIFF flip, gain, shifts). Beta-galactosidase
    # (a real map) at the tutorial's binned pixel size gives RELION enough signal.
    betagal = simulation_maps(
        str(shared_data / "maps/betagal_relion1x_test/ref_model.mrc"), APIX, box=128
    )
    sim = MovieSimulator(
        betagal,
        n_movies=1,
        movie_shape_px=(1024, 1024),
        n_frames=16,
        particles_per_micrograph=40,
        motion=MotionModel(drift_angstrom=25.0),
        seed=3,
    )
    out = write_movie_simulation(sim, tmp_path / "sim")
    run_relion(
        ["relion_run_motioncorr", "--i", "movies.star", "--o", "MC/", "--use_own", "--j", "2",
         "--dose_per_frame", str(sim.dose_per_frame), "--preexposure", "0", "--gainref",
         "gain.mrc", "--defect_file", "defects.txt", "--patch_x", "1", "--patch_y", "1",
         "--bfactor", "150", "--angpix", str(APIX), "--voltage", "200"],
        cwd=out,
    )  # fmt: skip
    theirs = read_star(out / "MC/Movies/mov001.star")["global_shift"]
    relion = theirs[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(float)
    truth = sim.global_shifts[0]

    def rms_error(candidate: np.ndarray) -> float:
        diff = relion - candidate
        diff -= diff.mean(axis=0)  # RELION's reference frame is its own: compare up to an offset
        return float(np.sqrt(np.mean(np.sum(diff**2, axis=1))))

    error = rms_error(truth)
    assert np.hypot(*truth[-1]) > 5.0
    # RELION's estimate is noisy at this dose (about 0.5 to 1 px), but far closer to the truth
    # than to the truth with a flipped axis or sign (another convention)
    assert error < 1.2, f"RELION's drift differs from the truth by {error:.2f} px RMS"
    for other in (truth * [1, -1], truth * [-1, 1], -truth):
        assert rms_error(other) > 2 * error


def test_cli_preset_tiny_and_overrides(tmp_path: Path) -> None:
    assert (
        cli(["simulate", "--preset", "tiny", "--n_micrographs", "1", "--o", str(tmp_path / "t")])
        == 0
    )
    params = json.loads((tmp_path / "t/ground_truth/simulation.json").read_text())
    assert params["level"] == "movies" and params["n_micrographs"] == 1  # override wins
    assert params["symmetry"] == "D2" and params["maps"] == ["builtin:ldh"]
    assert params["n_frames"] == 8 and params["pixel_size_angstrom"] == 3.54
    assert "atomic model" in params["map_potentials"][0]
    movies = read_relion_star(tmp_path / "t/movies.star")
    assert len(movies.data) == 1


def test_cli_unparsable_atomic_model_is_a_clear_error(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "broken.pdb"
    bad.write_text("ATOM      1  CA  ALA A   1    garbage\nnot a pdb file\n")
    code = cli(["simulate", "--preset", "tiny", "--map", str(bad), "--o", str(tmp_path / "x")])
    assert code == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
