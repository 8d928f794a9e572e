"""`cryospa simulate --level micrographs`: counts, Thon rings, ice, positions, RELION extraction.

Measured (CPU, 2 cores) with ``relion_set`` (6 micrographs of 768 px at 2 Å/px, 2400 particles
of a 48 px pseudo-atomic map in a 64 px box, D2, 50 Å ice, 2000 e/Å², B 0, defocus 4000-7000 Å,
astigmatism up to 3000 Å): particles extracted by relion_preprocess at the true coordinates and
reconstructed at the true poses reach FSC 0.5 against the true map at about 4.5 Å with both
relion_reconstruct and cryospa (limit 5.0 Å). The same data with the origins left at 0 reach
5.3 Å, with the origins' sign flipped 9.2 Å, with the astigmatism angle negated 7.8 Å: the check
sees every convention. At a realistic dose (40 e/Å²) and 300 Å of ice the same particles reach
about 7 Å: amorphous-ice structure and counting noise are then comparable, as in real data.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import gaussian_filter

from cryospa.cli.main import build_parser
from cryospa.cli.main import main as cli
from cryospa.core.ctf import electron_wavelength_angstrom, first_zero_frequencies_per_angstrom
from cryospa.core.filters import power_spectrum_1d
from cryospa.core.fsc import fsc, resolution_at_threshold
from cryospa.errors import InputFileError, ParameterError
from cryospa.io.coords import read_coordinates
from cryospa.io.mrc import read_mrc, write_mrc
from cryospa.io.star import joined, read_relion_star, read_star, split_optics, write_relion_star
from cryospa.jobs.reconstruct import run_reconstruct
from cryospa.sim import IceModel, MicrographSimulation, prepare_maps, simulate_micrographs
from cryospa.sim.micrographs import run_simulate_micrographs
from cryospa.sim.physics import normalise_background
from tests.conftest import requires_relion, run_relion
from tests.synthetic import pseudo_atomic_map, simulation_maps

APIX = 1.77  # physics tests: the tutorial's binned pixel
MIC = 1024
R_APIX = 2.0  # RELION consistency set
R_BOX = 64
R_BG = 24


def solvated_map(n: int = 48, *, n_atoms: int = 1500, sigma_px: float = 0.6) -> np.ndarray:
    """Pseudo-atomic map relative to ice (see tests/sim/test_particles.py), sharp atoms."""
    vol = pseudo_atomic_map(n, n_atoms=n_atoms, sigma_px=sigma_px, seed=0)
    return (vol - 0.75 * gaussian_filter(vol, 1.5)).astype(np.float32)


@pytest.fixture(scope="module")
def small_maps():  # type: ignore[no-untyped-def]
    return prepare_maps(
        [solvated_map(32, n_atoms=300)], [2.0], pixel_size_angstrom=APIX, box_size=32
    )


# ----------------------------------------------------------------------------- Thon rings


def _local_minimum(profile: np.ndarray, r0: float, spacing: float) -> float:
    """Vertex of a parabola fitted around the smallest value within 0.4 spacing of ``r0``."""
    lo, hi = round(r0 - 0.4 * spacing), round(r0 + 0.4 * spacing) + 1
    smooth = np.convolve(profile, np.ones(3) / 3, mode="same")
    i0 = lo + int(np.argmin(smooth[lo:hi]))
    half = max(2, int(0.25 * spacing))
    x = np.arange(i0 - half, i0 + half + 1)
    a, b, _ = np.polyfit(x - i0, profile[x], 2)
    assert a > 0, "no minimum"
    return float(i0 - b / (2 * a))


def test_thon_ring_minima_at_ctf_zeros(small_maps) -> None:  # type: ignore[no-untyped-def]
    # ice only, round CTF at 2 µm underfocus, high dose so the ice image dominates the counts
    defocus = 20000.0
    sim = simulate_micrographs(
        small_maps,
        n_micrographs=1,
        micrograph_shape_px=(MIC, MIC),
        particles_per_micrograph=0,
        dose_e_per_a2=1000.0,
        micrograph_defocus=np.array([[defocus, defocus, 0.0]]),
        seed=3,
    )
    counts = torch.from_numpy(sim.micrographs[0]).double()
    profile = power_spectrum_1d(counts - counts.mean(), ndim=2).numpy()
    zeros = first_zero_frequencies_per_angstrom(
        9,
        defocus_angstrom=defocus,
        voltage_kv=200.0,
        spherical_aberration_mm=1.4,
        amplitude_contrast=0.1,
    )
    radii = np.array(zeros) * MIC * APIX  # Fourier pixels
    errors = []
    for i in range(8):
        found = _local_minimum(profile, radii[i], radii[i + 1] - radii[i])
        errors.append(abs(found - radii[i]) / radii[i])
    assert radii[7] < 0.5 * MIC  # eight zeros below Nyquist
    assert max(errors) < 0.01, f"relative errors of the zeros {np.round(errors, 4)}"


def test_astigmatic_thon_rings_follow_the_defocus_angle(small_maps) -> None:  # type: ignore[no-untyped-def]
    du, dv, angle = 23000.0, 19000.0, 35.0
    sim = simulate_micrographs(
        small_maps,
        n_micrographs=1,
        micrograph_shape_px=(MIC, MIC),
        particles_per_micrograph=150,
        dose_e_per_a2=1000.0,
        micrograph_defocus=np.array([[du, dv, angle]]),
        seed=4,
    )
    counts = torch.from_numpy(sim.micrographs[0]).double()
    power = (torch.fft.fft2(counts - counts.mean()).abs() ** 2).numpy()
    f = np.fft.fftfreq(MIC) * MIC
    ky, kx = np.meshgrid(f, f, indexing="ij")
    radius = np.hypot(kx, ky)
    azimuth = np.degrees(np.arctan2(ky, kx)) % 180.0  # the spectrum is centro-symmetric
    lam = float(electron_wavelength_angstrom(200.0))
    cs = 1.4e7
    phi0 = math.atan(0.1 / math.sqrt(1 - 0.01))
    mean_df = 0.5 * (du + dv)
    zeros = first_zero_frequencies_per_angstrom(
        4,
        defocus_angstrom=mean_df,
        voltage_kv=200.0,
        spherical_aberration_mm=1.4,
        amplitude_contrast=0.1,
    )
    radii = np.array(zeros) * MIC * APIX
    thetas = np.arange(0.0, 180.0, 10.0)
    local_defocus = []
    for theta in thetas:
        sector = np.abs((azimuth - theta + 90.0) % 180.0 - 90.0) < 5.0
        shells = np.round(radius[sector]).astype(int)
        profile = np.bincount(shells, weights=power[sector]) / np.maximum(np.bincount(shells), 1)
        estimates = []
        for n in range(1, 4):  # the n-th zero: chi(k) = n pi
            r = _local_minimum(profile, radii[n - 1], radii[n] - radii[n - 1])
            k = r / (MIC * APIX)
            estimates.append(
                (n * math.pi - phi0 + 0.5 * math.pi * cs * lam**3 * k**4) / (math.pi * lam * k * k)
            )
        local_defocus.append(np.mean(estimates))
    # dz(theta) = mean + (dU - dV) / 2 cos(2 (theta - angle))
    basis = np.stack(
        [np.ones_like(thetas), np.cos(np.radians(2 * thetas)), np.sin(np.radians(2 * thetas))], 1
    )
    (mean_fit, c, s), *_ = np.linalg.lstsq(basis, np.array(local_defocus), rcond=None)
    angle_fit = 0.5 * math.degrees(math.atan2(s, c))
    astig_fit = 2 * math.hypot(c, s)
    assert float(sim.ctf_table["rlnDefocusAngle"].iloc[0]) == angle
    assert abs(angle_fit - angle) < 3.0
    assert astig_fit == pytest.approx(du - dv, rel=0.15)
    assert mean_fit == pytest.approx(mean_df, rel=0.01)


# ----------------------------------------------------------------------------- counts and ice


@pytest.fixture(scope="module")
def counts_sim(small_maps) -> MicrographSimulation:  # type: ignore[no-untyped-def]
    # the tutorial's dose, default ice
    return simulate_micrographs(
        small_maps,
        n_micrographs=2,
        micrograph_shape_px=(512, 640),
        particles_per_micrograph=60,
        dose_e_per_a2=30.65,
        seed=7,
    )


def test_mean_counts_equal_dose_times_pixel_area(counts_sim: MicrographSimulation) -> None:
    counts = counts_sim.micrographs.astype(np.float64)
    expected_mean = 30.65 * APIX * APIX
    assert counts.shape == (2, 512, 640) and counts_sim.micrographs.dtype == np.float32
    assert np.array_equal(counts, np.round(counts)) and counts.min() >= 0  # counts
    assert counts.mean() == pytest.approx(expected_mean, rel=0.01)
    for m in range(2):
        assert counts[m].mean() == pytest.approx(expected_mean, rel=0.01)
    assert counts_sim.parameters["negative_expectations_clipped"] == 0


def test_counting_noise_is_poisson(counts_sim: MicrographSimulation) -> None:
    counts = torch.from_numpy(counts_sim.micrographs[0]).double()
    lam = torch.from_numpy(counts_sim.expected_counts[0]).double()
    noise = counts - lam
    mean = float(lam.mean())
    # variance = mean, overall and where the expectation is low or high (Poisson, not Gaussian
    # of a fixed variance)
    assert float(noise.var()) == pytest.approx(mean, rel=0.02)
    low = lam < lam.median()
    for part in (low, ~low):
        assert float(noise[part].var()) == pytest.approx(float(lam[part].mean()), rel=0.03)
    # flat (white) noise power: at high frequency the counts' power minus the signal's is the mean
    p_counts = power_spectrum_1d(counts - counts.mean(), ndim=2)
    p_signal = power_spectrum_1d(lam - lam.mean(), ndim=2)
    p_noise = power_spectrum_1d(noise, ndim=2)
    high = slice(int(0.4 * 512), 256)
    assert float((p_counts - p_signal)[high].mean()) == pytest.approx(mean, rel=0.03)
    assert float(p_noise[high].mean()) == pytest.approx(mean, rel=0.02)
    assert float(p_noise[10:50].mean()) == pytest.approx(mean, rel=0.05)


def test_ice_thickness_varies_and_modulates_the_counts(counts_sim: MicrographSimulation) -> None:
    t = counts_sim.thickness_angstrom.astype(np.float64)
    ice = IceModel()
    assert t.mean() == pytest.approx(ice.thickness_angstrom, rel=0.05)
    rel_sd = t.std(axis=(1, 2)) / t.mean(axis=(1, 2))
    assert np.all(
        (rel_sd > 0.4 * ice.thickness_variation) & (rel_sd < 1.6 * ice.thickness_variation)
    )
    # smooth: neighbouring pixels nearly equal
    assert np.abs(np.diff(t, axis=-1)).max() < 0.01 * ice.thickness_angstrom
    # thicker ice counts fewer electrons: the slowly varying expectation follows exp(-t / L)
    for m in range(2):
        slow = gaussian_filter(counts_sim.expected_counts[m].astype(np.float64), 40)
        corr = np.corrcoef(slow.ravel(), t[m].ravel())[0, 1]
        assert corr < -0.8, f"correlation {corr:.2f}"


def test_no_ice_means_a_flat_background_without_particles(small_maps) -> None:  # type: ignore[no-untyped-def]
    sim = simulate_micrographs(
        small_maps,
        n_micrographs=1,
        micrograph_shape_px=(128, 128),
        particles_per_micrograph=0,
        ice=IceModel(thickness_angstrom=0.0),
        seed=1,
    )
    assert np.allclose(sim.expected_counts, 30.65 * APIX * APIX, rtol=1e-5)


# ----------------------------------------------------------------------------- positions


def test_positions_do_not_overlap_and_stay_inside(small_maps) -> None:  # type: ignore[no-untyped-def]
    h, w, b = 400, 600, small_maps.box_size
    for min_distance in (None, 40.0):
        sim = simulate_micrographs(
            small_maps,
            n_micrographs=3,
            micrograph_shape_px=(h, w),
            particles_per_micrograph=80,
            min_distance_angstrom=min_distance,
            seed=2,
        )
        wanted = (
            sim.parameters["particle_diameter_angstrom"] if min_distance is None else min_distance
        ) / APIX
        assert sim.parameters["min_distance_angstrom"] == pytest.approx(wanted * APIX)
        t = sim.truth
        assert len(t) == 240
        for _, rows in t.groupby("rlnMicrographName"):
            xy = rows[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy()
            d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
            d[np.diag_indices(len(xy))] = np.inf
            assert d.min() >= wanted - 1e-9
        x, y = t["rlnCoordinateX"].to_numpy(), t["rlnCoordinateY"].to_numpy()
        assert x.min() >= b / 2 and x.max() < w - b / 2
        assert y.min() >= b / 2 and y.max() < h - b / 2
        # RELION's window [floor(c) - b/2, floor(c) + b/2 - 1] is inside the micrograph
        assert np.floor(x).min() - b / 2 >= 0 and np.floor(x).max() + b / 2 - 1 <= w - 1
        # origins: the remainder of RELION's truncation, in Å
        assert np.allclose(t["rlnOriginXAngst"], -(x - np.floor(x)) * APIX)
        assert np.allclose(t["rlnOriginYAngst"], -(y - np.floor(y)) * APIX)
    # particles dark at underfocus: lower expected counts at the particle centres
    lam = sim.expected_counts[0]
    rows = t[t["rlnMicrographName"] == "Micrographs/mic001.mrc"]
    centre = lam[
        np.floor(rows["rlnCoordinateY"]).astype(int), np.floor(rows["rlnCoordinateX"]).astype(int)
    ]
    assert centre.mean() < lam.mean()


def test_reproducible_with_seed(small_maps) -> None:  # type: ignore[no-untyped-def]
    kw = {"n_micrographs": 2, "micrograph_shape_px": (128, 160), "particles_per_micrograph": 6}
    a = simulate_micrographs(small_maps, seed=4, batch_size=2, **kw)
    b = simulate_micrographs(small_maps, seed=4, batch_size=64, **kw)
    c = simulate_micrographs(small_maps, seed=5, **kw)
    assert np.array_equal(a.micrographs, b.micrographs)
    assert a.truth.equals(b.truth)
    assert not np.array_equal(a.micrographs, c.micrographs)


# ----------------------------------------------------------------------------- RELION set


@pytest.fixture(scope="module")
def relion_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("micrographs")
    write_mrc(root / "map.mrc", solvated_map(), voxel_size_angstrom=R_APIX)
    _, out = run_simulate_micrographs(
        [root / "map.mrc"],
        root / "sim",
        pixel_size_angstrom=R_APIX,
        box_size=R_BOX,
        symmetry="D2",
        n_micrographs=6,
        micrograph_shape_px=(768, 768),
        particles_per_micrograph=400,
        dose_e_per_a2=2000.0,
        ice=IceModel(thickness_angstrom=50.0),
        bfactor_angstrom2=0.0,
        defocus_range_angstrom=(4000.0, 7000.0),
        astigmatism_angstrom=3000.0,
        seed=1,
    )
    return out


def test_output_folder_is_relion_readable(relion_set: Path) -> None:
    out = relion_set
    assert sorted(p.name for p in out.iterdir()) == [
        "Micrographs",
        "README.txt",
        "ground_truth",
        "micrographs.star",
    ]
    assert not list(out.parent.glob(".*tmp"))
    mics = read_relion_star(out / "micrographs.star")
    assert mics.kind == "micrographs" and len(mics.data) == 6
    optics = mics.optics.iloc[0]
    assert optics["rlnMicrographPixelSize"] == R_APIX
    assert optics["rlnMicrographOriginalPixelSize"] == R_APIX
    assert optics["rlnVoltage"] == 200 and optics["rlnSphericalAberration"] == 1.4
    assert optics["rlnAmplitudeContrast"] == 0.1
    assert not {"rlnDefocusU", "rlnDefocusAngle"} & set(mics.data.columns)
    ctf = joined(read_relion_star(out / "ground_truth" / "micrographs_ctf.star"))
    assert list(ctf["rlnMicrographName"]) == list(mics.data["rlnMicrographName"])
    assert bool((ctf["rlnDefocusU"] >= ctf["rlnDefocusV"]).all())
    mean_df = 0.5 * (ctf["rlnDefocusU"] + ctf["rlnDefocusV"])
    assert mean_df.min() >= 4000 and mean_df.max() <= 7000
    assert np.allclose(ctf["rlnCtfAstigmatism"], ctf["rlnDefocusU"] - ctf["rlnDefocusV"])
    img, header = read_mrc(out / "Micrographs" / "mic001.mrc")
    assert img.shape == (768, 768) and img.dtype == np.float32
    assert header.voxel_size_angstrom[0] == pytest.approx(R_APIX)
    truth_table = read_relion_star(out / "ground_truth" / "particles_true.star", kind="particles")
    truth = joined(truth_table)
    assert len(truth) == 2400
    assert truth["rlnImageSize"].iloc[0] == R_BOX and truth["rlnImagePixelSize"].iloc[0] == R_APIX
    for name, rows in truth.groupby("rlnMicrographName"):
        stem = Path(str(name)).stem
        coords = read_coordinates(
            out / "ground_truth" / "coords" / "Micrographs" / f"{stem}_true.star"
        )
        assert np.allclose(
            coords[["rlnCoordinateX", "rlnCoordinateY"]], rows[["rlnCoordinateX", "rlnCoordinateY"]]
        )
    params = json.loads((out / "ground_truth" / "simulation.json").read_text())
    assert params["level"] == "micrographs" and params["n_particles"] == 2400
    vol, _ = read_mrc(out / "ground_truth" / "map_class001.mrc")
    assert vol.shape == (R_BOX,) * 3
    assert "relion_preprocess" in (out / "README.txt").read_text()


def _fsc_resolution(rec_path: Path, truth_path: Path) -> float:
    rec, _ = read_mrc(rec_path)
    truth, _ = read_mrc(truth_path)
    curve = fsc(torch.from_numpy(rec), torch.from_numpy(truth))
    curve[0] = 1.0  # the DC is lost to the per-particle normalisation
    return resolution_at_threshold(curve, box_size=R_BOX, pixel_size_angstrom=R_APIX, threshold=0.5)


def _with_truth(extracted: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Extracted particles (in the order of the coordinate files) with the true poses."""
    assert len(extracted) == len(truth)
    assert list(extracted["rlnMicrographName"]) == list(truth["rlnMicrographName"])
    xy = ["rlnCoordinateX", "rlnCoordinateY"]
    assert np.allclose(extracted[xy].to_numpy(float), truth[xy].to_numpy(float), atol=1e-5)
    out = extracted.copy()
    for col in (
        "rlnAngleRot",
        "rlnAngleTilt",
        "rlnAnglePsi",
        "rlnOriginXAngst",
        "rlnOriginYAngst",
        "rlnClassNumber",
        "rlnRandomSubset",
    ):
        out[col] = truth[col].to_numpy()
    return out


def _extract(relion_set: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Our own extraction as RELION's: window at floor(coordinate), normalise, invert."""
    truth = joined(
        read_relion_star(relion_set / "ground_truth" / "particles_true.star", kind="particles")
    )
    stacks = []
    for name, rows in truth.groupby("rlnMicrographName", sort=False):
        mic, _ = read_mrc(relion_set / str(name))
        x0 = np.floor(rows["rlnCoordinateX"].to_numpy()).astype(int) - R_BOX // 2
        y0 = np.floor(rows["rlnCoordinateY"].to_numpy()).astype(int) - R_BOX // 2
        stacks.append(
            np.stack([mic[y : y + R_BOX, x : x + R_BOX] for x, y in zip(x0, y0, strict=True)])
        )
    images = torch.from_numpy(np.concatenate(stacks)).double()
    normed, _, _ = normalise_background(images, background_radius_px=R_BG)
    return (-normed).float().numpy(), truth


def test_cryospa_reconstruct_from_own_extraction_at_true_coordinates(
    relion_set: Path, tmp_path: Path
) -> None:
    # no RELION needed: extraction as RELION does it, then cryospa reconstruct at the true poses
    images, truth = _extract(relion_set)
    write_mrc(tmp_path / "parts.mrcs", images, voxel_size_angstrom=R_APIX)
    table = truth.copy()
    table.insert(0, "rlnImageName", [f"{i + 1:06d}@parts.mrcs" for i in range(len(table))])
    write_relion_star(tmp_path / "parts.star", split_optics(table, "particles"))
    run_reconstruct(
        tmp_path / "parts.star", tmp_path / "rec.mrc", ctf=True, symmetry="D2", progress=False
    )
    res = _fsc_resolution(tmp_path / "rec.mrc", relion_set / "ground_truth" / "map_class001.mrc")
    assert res <= 2.5 * R_APIX, f"FSC 0.5 at {res:.2f} Å"


@pytest.fixture(scope="module")
def relion_extracted(relion_set: Path) -> Path:
    """relion_preprocess at the true coordinates, joined with the true poses: joined.star."""
    if shutil.which("relion_preprocess") is None:
        pytest.skip("RELION not installed (apt-get install relion): cross-check skipped")
    run_relion(
        [
            "relion_preprocess",
            "--i",
            "ground_truth/micrographs_ctf.star",
            "--coord_dir",
            "ground_truth/coords/",
            "--coord_suffix",
            "_true.star",
            "--part_star",
            "particles.star",
            "--part_dir",
            "Particles/",
            "--extract",
            "--extract_size",
            str(R_BOX),
            "--invert_contrast",
            "--norm",
            "--bg_radius",
            str(R_BG),
        ],
        relion_set,
    )
    extracted = read_relion_star(relion_set / "particles.star")
    ext = joined(extracted)
    truth = joined(
        read_relion_star(relion_set / "ground_truth" / "particles_true.star", kind="particles")
    )
    # RELION took the true CTF of each micrograph
    for col in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"):
        assert np.allclose(ext[col].to_numpy(float), truth[col].to_numpy(float), atol=1e-3)
    assert ext["rlnImageSize"].iloc[0] == R_BOX
    write_relion_star(
        relion_set / "joined.star", split_optics(_with_truth(ext, truth), "particles")
    )
    return relion_set


@requires_relion
@pytest.mark.relion
def test_relion_extracts_where_we_think(relion_extracted: Path) -> None:
    # RELION's particles equal ours (window at floor(coordinate)) up to its background ramp fit
    ours, _ = _extract(relion_extracted)
    table = joined(read_relion_star(relion_extracted / "joined.star"))
    stack, _ = read_mrc(relion_extracted / "Particles" / "Micrographs" / "mic001.mrcs")
    assert table["rlnImageName"].iloc[0].endswith("Particles/Micrographs/mic001.mrcs")
    a = ours[:50].reshape(50, -1)
    b = stack[:50].reshape(50, -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    corr = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    assert corr.min() > 0.98


@requires_relion
@pytest.mark.relion
def test_relion_reconstruct_from_relion_extraction_reaches_2_5_pixels(
    relion_extracted: Path,
) -> None:
    run_relion(
        [
            "relion_reconstruct",
            "--i",
            "joined.star",
            "--o",
            "relion_rec.mrc",
            "--ctf",
            "--sym",
            "D2",
        ],
        relion_extracted,
    )
    res = _fsc_resolution(
        relion_extracted / "relion_rec.mrc", relion_extracted / "ground_truth" / "map_class001.mrc"
    )
    assert res <= 2.5 * R_APIX, f"FSC 0.5 at {res:.2f} Å"


@requires_relion
@pytest.mark.relion
def test_cryospa_reconstruct_from_relion_extraction_reaches_2_5_pixels(
    relion_extracted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(relion_extracted)
    run_reconstruct("joined.star", "cryospa_rec.mrc", ctf=True, symmetry="D2", progress=False)
    res = _fsc_resolution(
        relion_extracted / "cryospa_rec.mrc", relion_extracted / "ground_truth" / "map_class001.mrc"
    )
    assert res <= 2.5 * R_APIX, f"FSC 0.5 at {res:.2f} Å"


# ----------------------------------------------------------------------------- bad input


def _write(path: Path, vol: np.ndarray, apix: float = 2.0) -> Path:
    write_mrc(path, vol, voxel_size_angstrom=apix)
    return path


def _no_output(tmp_path: Path, inputs: set[str]) -> None:
    assert {p.name for p in tmp_path.iterdir()} == inputs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dose_e_per_a2": 0.0}, "dose"),
        ({"dose_e_per_a2": -5.0}, "dose"),
        ({"box_size": 64, "micrograph_shape_px": (48, 48)}, "box"),
        ({"micrograph_shape_px": (128, 32)}, "box"),
        ({"particles_per_micrograph": 500}, "could place only"),
        ({"n_micrographs": 0}, "micrographs"),
        ({"defocus_range_angstrom": (9000.0, 8000.0)}, "defocus range"),
        ({"micrograph_defocus": np.zeros((2, 3))}, "defocus"),
        ({"fractions": [0.5, 0.5]}, "fraction"),
    ],
)
def test_bad_input_clear_error_and_no_output(tmp_path: Path, kwargs: dict, message: str) -> None:
    map_path = _write(tmp_path / "map.mrc", solvated_map(32, n_atoms=300))
    options = {
        "n_micrographs": 1,
        "micrograph_shape_px": (128, 128),
        "particles_per_micrograph": 3,
        "pixel_size_angstrom": 2.0,
        **kwargs,
    }
    with pytest.raises(ParameterError, match=message):
        run_simulate_micrographs([map_path], tmp_path / "sim", **options)
    _no_output(tmp_path, {"map.mrc"})


def test_non_cubic_map_is_an_input_file_error(tmp_path: Path) -> None:
    _write(tmp_path / "flat.mrc", np.ones((20, 32, 32), dtype=np.float32))
    with pytest.raises(InputFileError, match=r"flat\.mrc.*cubic"):
        run_simulate_micrographs([tmp_path / "flat.mrc"], tmp_path / "sim")
    args = ["simulate", "--level", "micrographs", "--map", str(tmp_path / "flat.mrc")]
    assert cli([*args, "--o", str(tmp_path / "sim")]) == 2
    _no_output(tmp_path, {"flat.mrc"})


def test_cli_dose_zero_is_an_error_without_output(tmp_path: Path) -> None:
    map_path = _write(tmp_path / "map.mrc", solvated_map(32, n_atoms=300))
    args = ["simulate", "--level", "micrographs", "--map", str(map_path), "--dose", "0"]
    assert cli([*args, "--o", str(tmp_path / "sim")]) == 2
    _no_output(tmp_path, {"map.mrc"})


# ----------------------------------------------------------------------------- CLI


def test_cli_micrographs_and_help(tmp_path: Path) -> None:
    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    text = sub["simulate"].format_help()
    for words in (
        "micrographs",
        "--mic_size",
        "--dose",
        "e/Å²",
        "--particles_per_micrograph",
        "--ice_thickness",
        "--min_distance",
        "PX",
    ):
        assert words in text
    map_path = _write(tmp_path / "map.mrc", solvated_map(32, n_atoms=300), 3.0)
    args = ["simulate", "--level", "micrographs", "--map", str(map_path), "--angpix", "2.5"]
    args += ["--mic_size", "256", "192", "--n_micrographs", "2", "--particles_per_micrograph", "5"]
    args += ["--dose", "40", "--ice_thickness", "200", "--sym", "C2", "--box", "40"]
    args += ["--o", str(tmp_path / "out"), "--device", "cpu", "--seed", "3"]
    assert cli(args) == 0
    img, header = read_mrc(tmp_path / "out" / "Micrographs" / "mic002.mrc")
    assert img.shape == (192, 256) and header.voxel_size_angstrom[0] == pytest.approx(2.5)
    assert img.mean() == pytest.approx(40 * 2.5**2, rel=0.01)
    truth = joined(
        read_relion_star(
            tmp_path / "out" / "ground_truth" / "particles_true.star", kind="particles"
        )
    )
    assert len(truth) == 10 and truth["rlnImageSize"].iloc[0] == 40
    params = json.loads((tmp_path / "out" / "ground_truth" / "simulation.json").read_text())
    assert params["ice"]["thickness_angstrom"] == 200 and params["symmetry"] == "C2"
    # particle-level options are refused at the micrographs level
    assert cli([*args[:-6], "--n", "5", "--o", str(tmp_path / "x")]) == 2


# ----------------------------------------------------------------------------- SNR


def _particle_snr(
    spec: str, pixel_size: float, size: int, box: int | None = None, n_micrographs: int = 2
) -> float:
    # SNR of a particle in a micrograph at the tutorial's total dose: variance of the particle's
    # noiseless signal (counts) in its disc (the 99 %-mass radius, as `--level particles --snr`)
    # / variance of the noise there (Poisson counts plus the amorphous-ice structure).
    from cryospa.sim.micrographs import ParticleFields, draw_layout, ice_fields, micrograph_image
    from cryospa.sim.physics import Microscope

    maps = simulation_maps(spec, pixel_size, box=box)
    rng = np.random.default_rng(0)
    microscope, ice, dose = Microscope(), IceModel(), 24 * 1.277
    layout = draw_layout(
        maps,
        None,
        n_micrographs=n_micrographs,
        micrograph_shape_px=(size, size),
        particles_per_micrograph=6,
        dose_e_per_a2=dose,
        min_distance_angstrom=None,
        defocus_range_angstrom=(8000.0, 25000.0),
        astigmatism_angstrom=500.0,
        micrograph_defocus=None,
        bfactor_angstrom2=50.0,
        rng=rng,
    )
    fields = ParticleFields(maps, layout, microscope)
    yy, xx = np.mgrid[0:size, 0:size]
    snrs = []
    for m in range(n_micrographs):
        potential = fields.potential(m)
        thickness, white = ice_fields(rng, fields.padded_shape, pixel_size, ice)
        kw = dict(
            pixel_size_angstrom=pixel_size,
            microscope=microscope,
            ice=ice,
            defocus_u_angstrom=float(layout.defocus_u_angstrom[m]),
            defocus_v_angstrom=float(layout.defocus_v_angstrom[m]),
            astigmatism_angle_degrees=float(layout.defocus_angle_degrees[m]),
            bfactor_angstrom2=50.0,
        )
        with_particles = fields.crop(micrograph_image(potential, thickness, white, **kw)).double()
        ice_only = micrograph_image(torch.zeros_like(potential), thickness, white, **kw)
        ice_only = fields.crop(ice_only).double()
        scale = dose * pixel_size**2 / float(ice_only.mean())
        signal = ((with_particles - ice_only) * scale).numpy()
        background = (ice_only * scale).numpy()
        noise = background.mean() + np.var(background - gaussian_filter(background, 20))
        for x, y in layout.positions_px[layout.micrograph_index == m]:
            disc = (xx - x) ** 2 + (yy - y) ** 2 < maps.particle_radius_px**2
            snrs.append(np.var(signal[disc]) / noise)
    return float(np.mean(snrs))


# The SNR per pixel of real particle images is 0.01 to 0.1 at the detector's sampling. The
# tutorial records 0.885 Å/px at 1.277 e/Å² x 24 frames; binning by b (the tutorial preset
# simulates 1.77 Å/px) adds b^2 counts per pixel while the band-limited signal's variance barely
# changes, so the per-pixel SNR there is about 4 x higher (0.19 for LDH) by construction.


def test_particle_snr_of_the_binned_tutorial_preset() -> None:
    # the tutorial preset's 1.77 Å/px (2 x binned): 0.19 measured, i.e. about 0.05 at 0.885 Å/px
    assert 0.04 <= _particle_snr("builtin:ldh", 1.77, 512) <= 0.4


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "size", "box"),
    [("builtin:ldh", 512, None), ("maps/betagal_relion1x_test/ref_model.mrc", 1024, 256)],
)
def test_particle_snr_at_the_tutorial_dose_and_sampling_is_realistic(
    shared_data: Path, spec: str, size: int, box: int | None
) -> None:
    # LDH (146 kDa, the shipped model, Peng potentials): 0.057 measured;
    # beta-galactosidase (465 kDa, an MRC map scaled to 2 V): 0.019 measured
    if not spec.startswith("builtin:"):
        spec = str(shared_data / spec)
    assert 0.01 <= _particle_snr(spec, 0.885, size, box, n_micrographs=1) <= 0.1


# ----------------------------------------------------------------------------- junk


def test_junk_objects_are_placed_recorded_and_visible(tmp_path: Path, small_maps) -> None:  # type: ignore[no-untyped-def]
    sim = simulate_micrographs(
        small_maps,
        n_micrographs=4,
        micrograph_shape_px=(384, 384),
        particles_per_micrograph=14,
        junk_fraction=0.3,
        seed=7,
    )
    n_junk = round(14 * 0.3 / 0.7)
    assert len(sim.junk) == 4 * n_junk and len(sim.truth) == 4 * 14
    assert set(sim.junk["rlnClassNumber"]) <= {-1, -2, -3}
    counts = sim.parameters["junk_counts"]
    assert sum(counts.values()) == len(sim.junk)
    # junk centres keep the particles' minimum distance from every particle
    for name, rows in sim.truth.groupby("rlnMicrographName"):
        junk = sim.junk[sim.junk["rlnMicrographName"] == name]
        d = np.hypot(
            rows["rlnCoordinateX"].to_numpy()[:, None] - junk["rlnCoordinateX"].to_numpy(),
            rows["rlnCoordinateY"].to_numpy()[:, None] - junk["rlnCoordinateY"].to_numpy(),
        )
        assert d.min() >= sim.parameters["min_distance_angstrom"] / APIX - 1e-6
    # ice contamination is thicker ice: fewer electrons inside its disc than around it
    radii = sim.parameters["ice_contamination_radius_angstrom"]
    balls = sim.junk[sim.junk["rlnClassNumber"] == -3]
    assert len(balls) == len(radii)
    yy, xx = np.mgrid[0:384, 0:384]
    for (_, row), radius in zip(balls.iterrows(), radii, strict=True):
        m = int(row["rlnMicrographName"][-7:-4]) - 1
        r = np.hypot(xx - row["rlnCoordinateX"], yy - row["rlnCoordinateY"])
        inside = sim.expected_counts[m][r < 0.5 * radius / APIX].mean()
        assert inside < 0.97 * sim.expected_counts[m].mean()
    out = tmp_path / "sim"
    from cryospa.sim.micrographs import write_micrograph_simulation

    write_micrograph_simulation(sim, out)
    written = read_star(out / "ground_truth/junk_true.star")["particles"]
    assert len(written) == len(sim.junk)


def test_no_junk_by_default_leaves_data_unchanged(small_maps) -> None:  # type: ignore[no-untyped-def]
    kw = dict(n_micrographs=1, micrograph_shape_px=(128, 128), particles_per_micrograph=3)
    a = simulate_micrographs(small_maps, seed=3, **kw)  # type: ignore[arg-type]
    b = simulate_micrographs(small_maps, seed=3, junk_fraction=0.0, **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.micrographs, b.micrographs)
    assert len(a.junk) == 0
    with pytest.raises(ParameterError, match="junk"):
        simulate_micrographs(small_maps, junk_fraction=1.0, **kw)  # type: ignore[arg-type]
