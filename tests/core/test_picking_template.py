"""Template picking: known particles, rotations and classes recovered; simulated micrographs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryospa.core.ctf import ctf_2d
from cryospa.core.fourier import fourier_rescale
from cryospa.core.picking import (
    match_positions,
    otsu_threshold,
    pick_template,
    psi_angles,
    reference_particle_diameter_angstrom,
    rotated_templates,
    template_diameters_angstrom,
)
from cryospa.core.projection import project_images, project_volume
from cryospa.core.rotations import euler_to_matrix
from cryospa.io.mrc import read_mrc
from cryospa.io.star import joined, read_relion_star, read_star

APIX = 2.0
#: Three asymmetric "particles": Gaussian blobs (x, y, sigma in Å, amplitude), ~80 Å across.
SPECS = [
    [(0, 0, 14, 1.0), (18, 6, 8, 0.8), (-6, -20, 7, 0.7)],
    [(0, 0, 15, 1.0), (-16, 12, 8, 1.0)],
    [(0, 0, 12, 1.0), (10, -14, 9, 0.9), (-14, -4, 6, 0.6), (14, 16, 5, 0.5)],
]
CTF = {"defocus_u_angstrom": 15000.0, "defocus_v_angstrom": 14000.0,
       "astigmatism_angle_degrees": 30.0, "voltage_kv": 300.0, "spherical_aberration_mm": 2.7,
       "amplitude_contrast": 0.1}


def _render(shape: tuple[int, int], centres: list[tuple[float, float]], classes: list[int],
            psis: list[float]) -> torch.Tensor:
    """Particles of ``SPECS`` at sub-pixel centres (x, y), rotated by psi (RELION's sense).

    A particle with angle psi is ``ref(R^T r)``, ``R`` the in-plane block of
    ``euler_to_matrix((0, 0, psi))``: ``R^T (x, y) = (c x - s y, s x + c y)``.
    """
    h, w = shape
    yy = torch.arange(h, dtype=torch.float64)[:, None]
    xx = torch.arange(w, dtype=torch.float64)[None, :]
    img = torch.zeros(shape, dtype=torch.float64)
    for (x, y), k, psi in zip(centres, classes, psis, strict=True):
        c, s = math.cos(math.radians(psi)), math.sin(math.radians(psi))
        dx, dy = (xx - x) * APIX, (yy - y) * APIX
        qx, qy = c * dx - s * dy, s * dx + c * dy
        for x0, y0, sigma, a in SPECS[k]:
            img += a * torch.exp(-((qx - x0) ** 2 + (qy - y0) ** 2) / (2 * sigma**2))
    return img


def _references(box: int = 48) -> torch.Tensor:
    """``(3, box, box)``: the three particles at psi 0, centred at ``box // 2``."""
    c = (box // 2, box // 2)
    return torch.stack([_render((box, box), [c], [k], [0.0]) for k in range(3)]).float()


def _micrograph(
    *, seed: int = 0, n: int = 24, shape: tuple[int, int] = (512, 512), noise: float = 0.5,
    ctf: dict[str, float] | None = None,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
    """Dark particles (classes and angles at random, >= 100 Å apart) with white noise.

    Returns the micrograph and the true centres ``(n, 2)`` (x, y), classes and psi.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    centres: list[tuple[float, float]] = []
    while len(centres) < n:
        x, y = rng.uniform(40, w - 40), rng.uniform(40, h - 40)
        if all((x - a) ** 2 + (y - b) ** 2 >= 50**2 for a, b in centres):
            centres.append((x, y))
    classes = rng.integers(0, 3, size=n)
    psis = rng.uniform(0, 360, size=n)
    img = _render(shape, centres, classes.tolist(), psis.tolist())
    if ctf is not None:
        ky = torch.fft.fftfreq(h, d=APIX, dtype=torch.float64)
        kx = torch.fft.rfftfreq(w, d=APIX, dtype=torch.float64)
        gy, gx = torch.meshgrid(ky, kx, indexing="ij")
        img = torch.fft.irfft2(torch.fft.rfft2(img) * ctf_2d(gx, gy, **ctf), s=shape)
    gen = torch.Generator().manual_seed(seed)
    img = 10.0 - img + noise * torch.randn(shape, generator=gen, dtype=torch.float64)
    return img.float(), np.array(centres), classes, psis


def _angle_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a - b + 180.0) % 360.0 - 180.0)


# ---------------------------------------------------------------------------------------------
# building blocks


def test_psi_angles_divide_the_circle_evenly() -> None:
    assert psi_angles(90).tolist() == [0, 90, 180, 270]
    step7 = psi_angles(7.0)
    assert len(step7) == 51 and float(step7[1]) == pytest.approx(360 / 51)
    assert psi_angles(360).tolist() == [0] and psi_angles(500).tolist() == [0]
    with pytest.raises(ValueError, match="psi step"):
        psi_angles(0)


def test_rotated_templates_are_relion_in_plane_rotations() -> None:
    refs = _references()
    psi = torch.tensor([0.0, 37.0, 90.0, 200.0])
    out = rotated_templates(refs, psi, reference_pixel_size_angstrom=APIX,
                            pixel_size_angstrom=APIX, box_px=48)
    assert out.shape == (3, 4, 48, 48) and out.dtype == refs.dtype

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    for k in range(3):
        for j, angle in enumerate(psi.tolist()):
            # RELION's 2D convention (project_images) and the analytic rendering agree
            rot = euler_to_matrix(torch.tensor([[0.0, 0.0, angle]]))[:, :2, :2]
            relion = project_images(refs[k], rot)[0]
            exact = _render((48, 48), [(24, 24)], [k], [angle]).float()
            assert corr(out[k, j], relion) > 0.995
            assert corr(out[k, j], exact) > 0.995
    # to a pixel twice as large: the rotated template of the down-sampled reference
    coarse = rotated_templates(refs, psi, reference_pixel_size_angstrom=APIX,
                               pixel_size_angstrom=2 * APIX, box_px=24)
    for k in range(3):
        for j, angle in enumerate(psi.tolist()):
            exact = fourier_rescale(_render((48, 48), [(24, 24)], [k], [angle]), (24, 24))
            assert corr(coarse[k, j], exact.float()) > 0.99


def test_reference_diameters() -> None:
    # a projected sphere of diameter 60 Å (30 px at 2 Å) in a 64 px box
    b = 64
    y = torch.arange(b, dtype=torch.float64) - b // 2
    r2 = y[:, None] ** 2 + y[None, :] ** 2
    sphere = torch.sqrt(torch.clamp(15.0**2 - r2, min=0))
    assert reference_particle_diameter_angstrom(sphere[None], pixel_size_angstrom=APIX) == (
        pytest.approx(60.0, abs=2 * APIX))
    # a class average: noisy, with a negative halo, zero-masked at 100 Å
    halo = sphere - 2.0 * ((r2 > 15.0**2) & (r2 <= 20.0**2))
    noisy = halo + 0.5 * torch.randn((3, b, b), generator=torch.Generator().manual_seed(0),
                                     dtype=torch.float64)
    average = noisy * (r2 <= 25.0**2)
    particle, mask = template_diameters_angstrom(average, pixel_size_angstrom=APIX)
    assert particle == pytest.approx(60.0, abs=2 * APIX) and mask == pytest.approx(1.5 * particle)
    assert template_diameters_angstrom(sphere[None], pixel_size_angstrom=APIX,
                                       particle_diameter_angstrom=50,
                                       mask_diameter_angstrom=80) == (50.0, 80.0)
    flat = torch.ones((1, b, b))
    assert reference_particle_diameter_angstrom(flat, pixel_size_angstrom=APIX) == b * APIX


# ---------------------------------------------------------------------------------------------
# the picker on synthetic micrographs with known particles


@pytest.mark.parametrize(("ctf", "noise"), [(None, 0.5), (CTF, 0.3)], ids=["no-ctf", "ctf"])
def test_pick_template_finds_positions_classes_and_angles(
    ctf: dict[str, float] | None, noise: float, device: str
) -> None:
    # the CTF takes most of the blobs' low-frequency contrast: less noise for a similar SNR
    mic, centres, classes, psis = _micrograph(ctf=ctf, noise=noise)
    picks = pick_template(
        mic.to(device), _references().to(device), pixel_size_angstrom=APIX,
        reference_pixel_size_angstrom=APIX, ctf=ctf, lowpass_angstrom=12.0, shrink=0.5,
        psi_step_degrees=5.0, particle_diameter_angstrom=80.0, mask_diameter_angstrom=90.0,
        threshold=0.45,
    )
    assert picks.xy.device.type == torch.device(device).type
    assert picks.working_pixel_size_angstrom == (4.0, 4.0)
    # within 12 Å (0.15 particle diameters; the working pixel is 4 Å)
    i, j = match_positions(picks.xy.cpu(), torch.tensor(centres), max_distance=6.0)
    i, j = i.numpy(), j.numpy()
    assert len(i) >= len(centres) - 1 and len(picks) == len(i)  # no false pick, <= 1 missed
    dist = np.linalg.norm(picks.xy.cpu().numpy()[i] - centres[j], axis=1)
    assert np.median(dist) < 1.0  # micrograph pixels
    assert (picks.reference.cpu().numpy()[i] == classes[j]).all()
    err = _angle_error(picks.psi_degrees.cpu().numpy()[i], psis[j])
    assert np.median(err) < 5.0 and err.max() < 20.0, err
    fom = picks.fom.cpu()
    assert bool((fom >= 0.45).all() and (fom <= 1).all())
    assert torch.all(fom[:-1] >= fom[1:])  # best first
    # every pick is a candidate peak; the rest of the candidates are background
    assert len(picks.candidate_fom) > len(picks)
    assert int((picks.candidate_fom >= 0.45).sum()) == len(picks)


def test_otsu_threshold_splits_two_groups_exactly() -> None:
    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(0.17, 0.03, 60), rng.normal(0.55, 0.08, 40)])
    t, separation = otsu_threshold(torch.from_numpy(two))
    assert 0.25 < t < 0.4 and separation > 0.85
    # exact: the best of every split between consecutive sorted values
    v = np.sort(two)
    between = [i / v.size * (1 - i / v.size) * (v[:i].mean() - v[i:].mean()) ** 2
               for i in range(1, v.size)]
    best = int(np.argmax(between))
    assert t == pytest.approx(0.5 * (v[best] + v[best + 1]))
    assert separation == pytest.approx(between[best] / v.var())
    # one Gaussian group: about 2 / pi of the variance, below the 0.8 that makes a split
    one = otsu_threshold(torch.from_numpy(rng.normal(0.2, 0.03, 5000)))[1]
    assert one == pytest.approx(2 / math.pi, abs=0.02)
    assert otsu_threshold(torch.tensor([])) == (-math.inf, 0.0)
    assert otsu_threshold(torch.tensor([0.3, 0.3, 0.3])) == (pytest.approx(0.3), 0.0)


def test_auto_threshold_follows_each_micrographs_contrast() -> None:
    # faint particles: their correlation falls below a fixed 0.5, above the background's
    mic, centres, _, _ = _micrograph(seed=4, n=20, noise=2.0)
    opts = {"pixel_size_angstrom": APIX, "reference_pixel_size_angstrom": APIX,
            "lowpass_angstrom": 12.0, "psi_step_degrees": 10.0, "particle_diameter_angstrom": 80.0,
            "mask_diameter_angstrom": 90.0, "threshold": 0.5}
    fixed = pick_template(mic, _references(), **opts)
    auto = pick_template(mic, _references(), auto_threshold=True, **opts)
    truth = torch.tensor(centres)
    found_fixed = len(match_positions(fixed.xy, truth, max_distance=6.0)[0])
    i, _ = match_positions(auto.xy, truth, max_distance=6.0)
    # measured: 4 of 20 at 0.5; 17 of 20 (20 picks) at the split, 0.34
    assert found_fixed <= len(centres) // 2, fixed.fom  # the fixed threshold misses particles
    assert len(i) >= len(centres) - 4 and len(auto) <= len(i) + 3  # the split finds them
    assert auto.separation is not None and auto.separation >= 0.8
    assert auto.split and auto.threshold < 0.5 and fixed.separation is None and not fixed.split
    # no particles: the candidates do not split, and --threshold holds
    empty = 10.0 + 2.0 * torch.randn(512, 512, generator=torch.Generator().manual_seed(5))
    none = pick_template(empty, _references(), auto_threshold=True, **opts)
    assert none.separation is not None and none.separation < 0.8
    assert not none.split and none.threshold == 0.5 and len(none) == 0


def test_pick_template_fom_is_a_local_correlation() -> None:
    # a strong ramp and a different scale and offset leave the figure of merit nearly unchanged
    mic, centres, _, _ = _micrograph(seed=3, n=16)
    opts = {"pixel_size_angstrom": APIX, "reference_pixel_size_angstrom": APIX,
            "lowpass_angstrom": 12.0, "psi_step_degrees": 10.0, "particle_diameter_angstrom": 80.0,
            "mask_diameter_angstrom": 90.0}
    a = pick_template(mic, _references(), **opts)
    ramp = torch.linspace(0, 6, 512)[None, :] + torch.linspace(0, 3, 512)[:, None]
    b = pick_template(3.0 * mic + 100.0 + ramp, _references(), **opts)
    i, j = match_positions(a.xy, b.xy, max_distance=1.0)
    assert len(i) == len(a) == len(b) >= len(centres) - 1
    assert torch.allclose(a.fom[i], b.fom[j], atol=0.03)
    # batches of any size give the same answer
    c = pick_template(mic, _references(), max_elements=5000, **opts)
    assert torch.equal(a.xy, c.xy) and torch.equal(a.psi_degrees, c.psi_degrees)
    assert torch.allclose(a.fom, c.fom, atol=1e-5)
    # a high threshold keeps the best picks only; min distance: none closer than asked
    d = pick_template(mic, _references(), threshold=float(a.fom[5]), **opts)
    assert torch.equal(d.xy, a.xy[: len(d)]) and 5 <= len(d) < len(a)
    e = pick_template(mic, _references(), min_distance_angstrom=150.0, **opts)
    gaps = torch.cdist(e.xy, e.xy) + 1e9 * torch.eye(len(e))
    assert float(gaps.min()) * APIX >= 150.0 - 2 * 6.0 and len(e) < len(a)


def test_pick_template_rejects_bad_arguments() -> None:
    mic = torch.randn(128, 128)
    refs = _references()
    ok = {"pixel_size_angstrom": APIX, "reference_pixel_size_angstrom": APIX}
    with pytest.raises(ValueError, match="square"):
        pick_template(mic, torch.randn(2, 32, 40), **ok)
    with pytest.raises(ValueError, match="finer than Nyquist"):
        pick_template(mic, refs, lowpass_angstrom=3.0, **ok)
    with pytest.raises(ValueError, match="shrink"):
        pick_template(mic, refs, shrink=1.5, **ok)
    with pytest.raises(ValueError, match="diameters must be > 0"):
        pick_template(mic, refs, particle_diameter_angstrom=-5.0, **ok)
    with pytest.raises(ValueError, match="pixel sizes"):
        pick_template(mic, refs, pixel_size_angstrom=APIX, reference_pixel_size_angstrom=0.0)


# ---------------------------------------------------------------------------------------------
# simulated micrographs (the tutorial's dose, LDH, 10 % junk) and projections of the true map


@pytest.fixture(scope="module")
def simulation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cryospa.cli.main import main as cli

    out = tmp_path_factory.mktemp("sim") / "out"
    assert cli(["simulate", "--level", "micrographs", "--n_micrographs", "2", "--mic_size", "512",
                "--particles_per_micrograph", "20", "--junk_fraction", "0.1", "--o",
                str(out)]) == 0
    return out


def _true_ctf(row: object) -> dict[str, float]:
    get = row.__getitem__  # type: ignore[attr-defined]
    return {"defocus_u_angstrom": get("rlnDefocusU"), "defocus_v_angstrom": get("rlnDefocusV"),
            "astigmatism_angle_degrees": get("rlnDefocusAngle"), "voltage_kv": get("rlnVoltage"),
            "spherical_aberration_mm": get("rlnSphericalAberration"),
            "amplitude_contrast": get("rlnAmplitudeContrast")}


def _projections(sim: Path, angles: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Projections of the true map at ``(n, 3)`` Euler angles, at twice its pixel size."""
    vol, header = read_mrc(sim / "ground_truth" / "map_class001.mrc")
    proj = project_volume(torch.from_numpy(vol.copy()).double(), euler_to_matrix(angles))
    b = proj.shape[-1]
    return fourier_rescale(proj, (b // 2, b // 2)).float(), 2 * header.voxel_size_angstrom[0]


def test_pick_template_on_simulated_micrographs(simulation: Path) -> None:
    info = json.loads((simulation / "ground_truth" / "simulation.json").read_text())
    apix = info["pixel_size_angstrom"]
    diam_px = info["particle_diameter_angstrom"] / apix
    # templates: 12 projections of the true map in random directions, at twice the pixel size
    gen = torch.Generator().manual_seed(1)
    u = torch.rand(12, 2, generator=gen, dtype=torch.float64)
    angles = torch.stack([360 * u[:, 0], torch.rad2deg(torch.arccos(1 - 2 * u[:, 1])),
                          torch.zeros(12, dtype=torch.float64)], dim=-1)
    refs, ref_apix = _projections(simulation, angles)
    ctfs = joined(read_relion_star(simulation / "ground_truth" / "micrographs_ctf.star"))
    truth = read_star(simulation / "ground_truth" / "particles_true.star")["particles"]
    junk = read_star(simulation / "ground_truth" / "junk_true.star")["particles"]
    n_pick = n_true = n_match = n_junk = 0
    for _, row in ctfs.iterrows():
        name = row["rlnMicrographName"]
        mic = torch.from_numpy(read_mrc(simulation / name)[0].copy())
        picks = pick_template(mic, refs, pixel_size_angstrom=apix,
                              reference_pixel_size_angstrom=ref_apix, ctf=_true_ctf(row))
        assert picks.diameter_angstrom == pytest.approx(info["particle_diameter_angstrom"],
                                                        rel=0.1)
        true = torch.tensor(truth.loc[truth["rlnMicrographName"] == name,
                                      ["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float))
        bad = torch.tensor(junk.loc[junk["rlnMicrographName"] == name,
                                    ["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float))
        i, _ = match_positions(picks.xy, true, max_distance=0.2 * diam_px)
        rest = np.setdiff1d(np.arange(len(picks)), i.numpy())
        if len(rest) and len(bad):  # a pick on junk is a wrong pick
            n_junk += int((torch.cdist(picks.xy[rest], bad).min(dim=1).values < diam_px).sum())
        n_pick, n_true, n_match = n_pick + len(picks), n_true + len(true), n_match + len(i)
    precision, recall = n_match / n_pick, n_match / n_true
    f1 = 2 * precision * recall / (precision + recall)
    # measured: 44 picks, recall 1.0, F1 0.952 (4 picks on junk)
    assert recall >= 0.95 and f1 >= 0.9, (precision, recall, f1, n_junk)
    assert n_pick - n_match - n_junk <= 2  # background picks (the rest are on junk)


def test_pick_template_recovers_psi_on_simulated_micrographs(simulation: Path) -> None:
    # templates = the true views (rot, tilt) of the particles of one micrograph, psi 0: a
    # particle picked with its own view has its true psi
    apix = json.loads((simulation / "ground_truth" / "simulation.json").read_text())[
        "pixel_size_angstrom"]
    ctfs = joined(read_relion_star(simulation / "ground_truth" / "micrographs_ctf.star"))
    row = ctfs.iloc[0]
    truth = read_star(simulation / "ground_truth" / "particles_true.star")["particles"]
    mine = truth[truth["rlnMicrographName"] == row["rlnMicrographName"]].reset_index(drop=True)
    angles = torch.tensor(mine[["rlnAngleRot", "rlnAngleTilt"]].to_numpy(float))
    angles = torch.cat([angles, torch.zeros(len(angles), 1, dtype=torch.float64)], dim=1)
    refs, ref_apix = _projections(simulation, angles)
    mic = torch.from_numpy(read_mrc(simulation / row["rlnMicrographName"])[0].copy())
    picks = pick_template(mic, refs, pixel_size_angstrom=apix,
                          reference_pixel_size_angstrom=ref_apix, ctf=_true_ctf(row), shrink=0.5)
    true_xy = torch.tensor(mine[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(float))
    i, j = match_positions(picks.xy, true_xy, max_distance=10.0)
    assert len(j) >= len(mine) - 1
    own = (picks.reference[i] == j).numpy()
    assert own.mean() >= 0.7  # most particles pick their own view (0.9 measured)
    err = _angle_error(picks.psi_degrees[i].numpy()[own], mine["rlnAnglePsi"].to_numpy()[j][own])
    assert np.median(err) < 5.0 and np.percentile(err, 80) < 10.0, err
