"""`cryospa simulate --level particles`: statistics, SNR, reconstructions against the truth.

Measured (CPU, 2 cores) with the data set of ``recon_set`` (48 px, 2 Å/px, 3000 particles, D2,
SNR 1.0, defocus 5000-15000 Å, B 50 Å^2, periodic simulation): FSC 0.5 against the true map at
4.74 Å for both cryospa and relion_reconstruct (limit 5.0 Å). With the realistic defaults
(SNR 0.1, defocus 8000-25000 Å, padded simulation) the same 3000 particles reach 7.6 Å (C1) and
7.2 Å (D2): the particle SNR is dominated by low frequencies, as in real data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from cryospa.cli.main import build_parser
from cryospa.cli.main import main as cli
from cryospa.core.fsc import fsc, resolution_at_threshold
from cryospa.core.rotations import euler_to_matrix
from cryospa.errors import InputFileError, ParameterError
from cryospa.io.mrc import read_mrc, write_mrc
from cryospa.io.star import joined, read_relion_star
from cryospa.jobs.particles import load_particles
from cryospa.jobs.reconstruct import run_reconstruct
from cryospa.sim import (
    ParticleSimulation,
    prepare_maps,
    run_simulate_particles,
    simulate_particles,
)
from cryospa.sim.physics import masked_variance
from tests.conftest import requires_relion, run_relion
from tests.synthetic import pseudo_atomic_map

APIX = 2.0
BOX = 48


def solvated_map(n: int = BOX, *, n_atoms: int = 1500, seed: int = 0) -> np.ndarray:
    """Pseudo-atomic map minus the ice it displaces (bulk-solvent model).

    A map reconstructed from real data is the protein's potential relative to ice: its low
    resolution contrast is about a quarter of the protein's own while atomic detail is kept.
    Subtracting 0.75 x the map blurred by 1.5 px models that.
    """
    vol = pseudo_atomic_map(n, n_atoms=n_atoms, seed=seed)
    return (vol - 0.75 * gaussian_filter(vol, 1.5)).astype(np.float32)


def _disc_masks(sim: ParticleSimulation) -> torch.Tensor:
    b = sim.images.shape[-1]
    origins = sim.truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / APIX
    centres = torch.from_numpy(b // 2 - origins)
    ax = torch.arange(b, dtype=torch.float64)
    dx = ax[None, None, :] - centres[:, 0, None, None]
    dy = ax[None, :, None] - centres[:, 1, None, None]
    r = sim.parameters["particle_diameter_angstrom"] / 2 / APIX
    return (dx**2 + dy**2 <= r**2).to(torch.float64)


def _measured_snr(sim: ParticleSimulation) -> float:
    masks = _disc_masks(sim)
    signal = torch.from_numpy(sim.signals).to(torch.float64)
    noise = torch.from_numpy(sim.images - sim.signals).to(torch.float64)
    return float(masked_variance(signal, masks).mean() / masked_variance(noise, masks).mean())


def _fsc_resolution(rec_path: Path, truth_path: Path) -> float:
    rec, _ = read_mrc(rec_path)
    truth, _ = read_mrc(truth_path)
    curve = fsc(torch.from_numpy(rec), torch.from_numpy(truth))
    return resolution_at_threshold(curve, box_size=BOX, pixel_size_angstrom=APIX, threshold=0.5)


@pytest.fixture(scope="module")
def maps_c1():  # type: ignore[no-untyped-def]
    return prepare_maps([solvated_map()], [APIX], pixel_size_angstrom=APIX, box_size=BOX)


@pytest.fixture(scope="module")
def stats_set(maps_c1) -> ParticleSimulation:  # type: ignore[no-untyped-def]
    # realistic defaults (SNR 0.05, defocus 8000-25000 Å, padded simulation), two classes
    two = prepare_maps(
        [solvated_map(), solvated_map(seed=3)], [APIX, APIX], pixel_size_angstrom=APIX, box_size=BOX
    )
    return simulate_particles(two, [0.7, 0.3], n_particles=4000, snr=0.05, seed=11)


@pytest.fixture(scope="module")
def recon_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("recon") / "sim"
    write_mrc(out.parent / "map.mrc", solvated_map(), voxel_size_angstrom=APIX)
    run_simulate_particles(
        [out.parent / "map.mrc"],
        out,
        symmetry="D2",
        box_size=BOX,
        n_particles=3000,
        snr=1.0,
        defocus_range_angstrom=(5000.0, 15000.0),
        padding=1.0,
        seed=5,
    )
    return out


# ----------------------------------------------------------------------------- SNR


@pytest.mark.parametrize("snr", [0.01, 0.05, 0.1])
def test_requested_snr_is_met(maps_c1, snr: float) -> None:  # type: ignore[no-untyped-def]
    sim = simulate_particles(maps_c1, n_particles=1000, snr=snr, seed=1)
    measured = _measured_snr(sim)
    assert measured == pytest.approx(snr, rel=0.10)
    assert sim.snr_realised == pytest.approx(measured, rel=0.02)
    # the counting noise corresponds to a realistic exposure (tens of e/Å² at SNR ~0.05)
    assert 1.0 < sim.equivalent_dose_e_per_a2 < 1000.0


def test_snr_met_for_the_real_d2_map(shared_data: Path, tmp_path: Path) -> None:
    # beta-galactosidase (3.54 Å/px, 100 px) resampled to 6 Å/px in a 64 px box, D2
    ref = shared_data / "maps" / "betagal_relion1x_test" / "ref_model.mrc"
    sim, out = run_simulate_particles(
        [ref],
        tmp_path / "sim",
        pixel_size_angstrom=6.0,
        box_size=64,
        symmetry="D2",
        n_particles=600,
        snr=0.05,
        seed=2,
    )
    maps = sim.maps
    assert maps.box_size == 64 and abs(maps.magnification_error) < 1e-4
    # beta-galactosidase is about 180 Å across
    assert 120 < sim.parameters["particle_diameter_angstrom"] < 260
    masks = _disc_masks_for(sim, 6.0)
    sig = masked_variance(torch.from_numpy(sim.signals).double(), masks).mean()
    noi = masked_variance(torch.from_numpy(sim.images - sim.signals).double(), masks).mean()
    assert float(sig / noi) == pytest.approx(0.05, rel=0.10)
    truth, header = read_mrc(out / "ground_truth" / "map_class001.mrc")
    assert truth.shape == (64, 64, 64) and header.voxel_size_angstrom[0] == pytest.approx(6.0)


def _disc_masks_for(sim: ParticleSimulation, apix: float) -> torch.Tensor:
    b = sim.images.shape[-1]
    origins = sim.truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / apix
    centres = torch.from_numpy(b // 2 - origins)
    ax = torch.arange(b, dtype=torch.float64)
    dx = ax[None, None, :] - centres[:, 0, None, None]
    dy = ax[None, :, None] - centres[:, 1, None, None]
    r = sim.parameters["particle_diameter_angstrom"] / 2 / apix
    return (dx**2 + dy**2 <= r**2).to(torch.float64)


# ----------------------------------------------------------------------------- statistics


def test_orientations_are_uniform(stats_set: ParticleSimulation) -> None:
    t = stats_set.truth
    n = len(t)
    angles = torch.tensor(t[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    views = euler_to_matrix(angles)[:, 2, :].numpy()  # viewing directions
    assert np.abs(views.mean(0)).max() < 4 / math.sqrt(3 * n)
    # tilt density ~ sin(tilt): cos(tilt) uniform on [-1, 1]
    cos_tilt = np.cos(np.radians(t["rlnAngleTilt"].to_numpy()))
    hist, _ = np.histogram(cos_tilt, bins=10, range=(-1, 1))
    chi2 = float(((hist - n / 10) ** 2 / (n / 10)).sum())
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom, p = 0.001
    psi = t["rlnAnglePsi"].to_numpy()
    assert psi.min() >= -180 and psi.max() <= 180 and abs(psi.mean()) < 4 * 104 / math.sqrt(n)


def test_origins_defocus_classes_and_tables(stats_set: ParticleSimulation) -> None:
    t, p = stats_set.truth, stats_set.particles
    n = len(t)
    origins = t[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()
    assert np.abs(origins).max() <= 5.0 and np.abs(origins).max() > 4.5
    # micrograph defocus (particles.star): mean within the range, U >= V, one value per micrograph
    mean_df = (p["rlnDefocusU"] + p["rlnDefocusV"]) / 2
    assert mean_df.min() >= 8000 and mean_df.max() <= 25000
    assert bool((p["rlnDefocusU"] >= p["rlnDefocusV"]).all())
    per_mic = p.groupby("rlnMicrographName")["rlnDefocusU"].nunique()
    assert len(per_mic) == 20 and bool((per_mic == 1).all())
    # true per-particle defocus = micrograph defocus + the same height jitter on U and V
    jitter = (t["rlnDefocusU"] - p["rlnDefocusU"]).to_numpy()
    assert np.allclose(jitter, (t["rlnDefocusV"] - p["rlnDefocusV"]).to_numpy())
    assert np.std(jitter) == pytest.approx(50.0, rel=0.1)
    # class fractions within 4 binomial standard deviations
    f1 = float((t["rlnClassNumber"] == 1).mean())
    assert abs(f1 - 0.7) < 4 * math.sqrt(0.7 * 0.3 / n)
    assert set(t["rlnRandomSubset"]) == {1, 2}
    # particles.star looks freshly extracted: no angles, origins or classes
    assert not {"rlnAngleRot", "rlnOriginXAngst", "rlnClassNumber"} & set(p.columns)
    # images are normalised as RELION: background (outside 75 % of the box) zero mean, unit sd
    ax = np.arange(BOX) - BOX // 2
    bg = (ax[:, None] ** 2 + ax[None, :] ** 2) > (0.375 * BOX) ** 2
    values = stats_set.images[:, bg]
    assert np.allclose(values.mean(1), 0, atol=1e-4) and np.allclose(values.std(1), 1, atol=1e-4)
    # white particles: the noiseless signal correlates positively with the projected density
    centre = stats_set.signals[:, BOX // 2 - 4 : BOX // 2 + 4, BOX // 2 - 4 : BOX // 2 + 4]
    assert float(centre.mean()) > 0


def test_reproducible_with_seed(maps_c1) -> None:  # type: ignore[no-untyped-def]
    a = simulate_particles(maps_c1, n_particles=300, seed=4, batch_size=64)
    b = simulate_particles(maps_c1, n_particles=300, seed=4, batch_size=100)
    c = simulate_particles(maps_c1, n_particles=300, seed=5)
    assert np.array_equal(a.images, b.images)
    assert a.truth.equals(b.truth)
    assert not np.allclose(a.images, c.images)


def test_given_angles_are_used(maps_c1, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    angles = np.array([[10.0, 20.0, 30.0], [40.0, 90.0, -60.0], [0.0, 170.0, 5.0]])
    sim = simulate_particles(
        maps_c1, n_particles=3, angles_degrees=angles, origins_angstrom=np.zeros((3, 2)), seed=0
    )
    got = sim.truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()
    assert np.array_equal(got, angles)
    assert np.array_equal(
        sim.truth[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), 0 * angles[:, :2]
    )


# ----------------------------------------------------------------------------- outputs


def test_output_folder_is_relion_readable(recon_set: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = recon_set
    assert sorted(p.name for p in out.iterdir()) == [
        "Particles",
        "README.txt",
        "ground_truth",
        "particles.star",
    ]
    assert not list(out.parent.glob(".*tmp"))  # no temporary folder left
    table = read_relion_star(out / "particles.star")
    optics = table.optics.iloc[0]
    assert optics["rlnImagePixelSize"] == APIX and optics["rlnImageSize"] == BOX
    assert optics["rlnVoltage"] == 200 and optics["rlnSphericalAberration"] == 1.4
    assert optics["rlnAmplitudeContrast"] == 0.1 and optics["rlnImageDimensionality"] == 2
    assert len(list((out / "Particles").glob("mic*.mrcs"))) == 15
    params = json.loads((out / "ground_truth" / "simulation.json").read_text())
    assert params["seed"] == 5 and params["symmetry"] == "D2"
    # the image names of both STAR files point at the same images, from the output folder
    monkeypatch.chdir(out)
    picked = load_particles("particles.star")
    true = load_particles("ground_truth/particles_true.star")
    idx = np.array([0, 199, 200, 2999])
    assert np.array_equal(picked.images(idx), true.images(idx))
    assert len(joined(read_relion_star("ground_truth/particles_true.star"))) == 3000


def test_cryospa_reconstruct_from_truth_reaches_2_5_pixels(
    recon_set: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(recon_set)
    run_reconstruct(
        "ground_truth/particles_true.star", "rec.mrc", ctf=True, symmetry="D2", progress=False
    )
    res = _fsc_resolution(recon_set / "rec.mrc", recon_set / "ground_truth" / "map_class001.mrc")
    assert res <= 2.5 * APIX, f"FSC 0.5 at {res:.2f} Å"


@requires_relion
@pytest.mark.relion
def test_relion_reconstruct_from_truth_reaches_2_5_pixels(recon_set: Path) -> None:
    run_relion(
        [
            "relion_reconstruct",
            "--i",
            "ground_truth/particles_true.star",
            "--o",
            "relion_rec.mrc",
            "--ctf",
            "--sym",
            "D2",
        ],
        recon_set,
    )
    res = _fsc_resolution(
        recon_set / "relion_rec.mrc", recon_set / "ground_truth" / "map_class001.mrc"
    )
    assert res <= 2.5 * APIX, f"FSC 0.5 at {res:.2f} Å"


def test_padded_simulation_keeps_geometry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # nearly noiseless, padded (delocalised signal leaves the box as in real extraction):
    # the reconstruction from the true poses must still match the truth to 2.5 pixels
    sim, out = run_simulate_particles(
        [_write(tmp_path / "map.mrc", solvated_map())],
        tmp_path / "sim",
        box_size=BOX,
        n_particles=1500,
        snr=100.0,
        defocus_range_angstrom=(5000.0, 12000.0),
        seed=8,
    )
    assert sim.parameters["padding"] == 2.0
    monkeypatch.chdir(out)
    run_reconstruct("ground_truth/particles_true.star", "rec.mrc", ctf=True, progress=False)
    res = _fsc_resolution(out / "rec.mrc", out / "ground_truth" / "map_class001.mrc")
    assert res <= 2.5 * APIX, f"FSC 0.5 at {res:.2f} Å"


def _write(path: Path, vol: np.ndarray, apix: float = APIX) -> Path:
    write_mrc(path, vol, voxel_size_angstrom=apix)
    return path


# ----------------------------------------------------------------------------- bad input


def _no_output(tmp_path: Path, inputs: set[str]) -> None:
    assert {p.name for p in tmp_path.iterdir()} == inputs


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"pixel_size_angstrom": 0.0}, ParameterError, "pixel size"),
        ({"pixel_size_angstrom": -2.0}, ParameterError, "pixel size"),
        ({"snr": 0.0}, ParameterError, "SNR"),
        ({"snr": -0.1}, ParameterError, "SNR"),
        ({"box_size": 16}, ParameterError, "--box >="),
        ({"box_size": 47}, ParameterError, "even"),
        ({"fractions": [0.5, 0.5]}, ParameterError, "fraction"),
        ({"defocus_range_angstrom": (9000.0, 8000.0)}, ParameterError, "defocus range"),
        ({"symmetry": "X7"}, ValueError, "X7"),
    ],
)
def test_bad_input_clear_error_and_no_output(
    tmp_path: Path, kwargs: dict, error: type, message: str
) -> None:
    map_path = _write(tmp_path / "map.mrc", solvated_map(32, n_atoms=300))
    options = {"n_particles": 20, "box_size": 32, **kwargs}
    with pytest.raises(error, match=message):
        run_simulate_particles([map_path], tmp_path / "sim", **options)
    _no_output(tmp_path, {"map.mrc"})


def test_non_cubic_map_is_an_input_file_error(tmp_path: Path) -> None:
    _write(tmp_path / "flat.mrc", np.ones((20, 32, 32), dtype=np.float32))
    with pytest.raises(InputFileError, match=r"flat\.mrc.*cubic"):
        run_simulate_particles([tmp_path / "flat.mrc"], tmp_path / "sim", n_particles=5)
    _no_output(tmp_path, {"flat.mrc"})
    assert (
        cli(
            [
                "simulate",
                "--map",
                str(tmp_path / "flat.mrc"),
                "--n",
                "5",
                "--o",
                str(tmp_path / "sim"),
            ]
        )
        == 2
    )
    _no_output(tmp_path, {"flat.mrc"})


def test_existing_output_folder_is_not_overwritten(tmp_path: Path) -> None:
    map_path = _write(tmp_path / "map.mrc", solvated_map(32, n_atoms=300))
    (tmp_path / "sim").mkdir()
    (tmp_path / "sim" / "keep.txt").write_text("x")
    with pytest.raises(ParameterError, match="not empty"):
        run_simulate_particles([map_path], tmp_path / "sim", n_particles=5)
    assert [p.name for p in (tmp_path / "sim").iterdir()] == ["keep.txt"]


# ----------------------------------------------------------------------------- CLI


def test_cli_simulate_and_help(tmp_path: Path) -> None:
    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    text = sub["simulate"].format_help()
    for unit in ("Å", "kV", "mm", "Å²", "mrad", "eV", "V"):
        assert unit in text
    a = _write(tmp_path / "a.mrc", solvated_map(32, n_atoms=300), 3.0)
    b = _write(tmp_path / "b.mrc", solvated_map(32, n_atoms=300, seed=1), 3.0)
    args = ["simulate", "--level", "particles", "--map", str(a), "--map", str(b)]
    args += ["--fractions", "0.6", "0.4", "--n", "40", "--box", "48", "--angpix", "2.5"]
    args += ["--snr", "0.05", "--sym", "C2", "--o", str(tmp_path / "out"), "--device", "cpu"]
    assert cli(args) == 0
    truth = joined(read_relion_star(tmp_path / "out" / "ground_truth" / "particles_true.star"))
    assert len(truth) == 40 and set(truth["rlnClassNumber"]) <= {1, 2}
    assert (tmp_path / "out" / "ground_truth" / "map_class002.mrc").is_file()
    vol, header = read_mrc(tmp_path / "out" / "ground_truth" / "map_class001.mrc")
    assert vol.shape == (48, 48, 48) and header.voxel_size_angstrom[0] == pytest.approx(2.5)
