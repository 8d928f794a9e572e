import math
from pathlib import Path

import pytest
import torch

from cryospa.core.fourier import phase_shift_2d
from cryospa.core.fsc import fsc, resolution_at_threshold
from cryospa.core.projection import centred_ft_to_images, images_to_centred_ft, project_images
from cryospa.engine import (
    Class2DOptions,
    TensorParticles,
    initialise,
    iterate,
    load_checkpoint,
    save_checkpoint,
)
from cryospa.engine.sampling import rotations_2d
from tests.engine.synthetic2d import particles, purity, templates

N, PIXEL = 32, 4.0


def _best_match_resolution(avg: torch.Tensor, template: torch.Tensor) -> float:
    """FRC-0.5 resolution (Å) of ``avg`` against ``template`` turned and shifted to fit best."""
    psi = torch.arange(0, 360, 2, dtype=torch.float64)
    turned = project_images(template, rotations_2d(psi).to(torch.float32))  # (R, n, n)
    fa = images_to_centred_ft(avg)
    ft = images_to_centred_ft(turned)
    cc = torch.fft.irfft2(fa[None] * ft.conj(), s=(N, N))  # (R, n, n)
    r, peak = divmod(int(torch.argmax(cc)), N * N)
    dy, dx = divmod(peak, N)
    shift = torch.tensor([[(dx + N // 2) % N - N // 2, (dy + N // 2) % N - N // 2]],
                         dtype=torch.float32)
    moved = centred_ft_to_images(ft[r] * phase_shift_2d((N, N), shift)[0], N)
    curve = fsc(avg.double(), moved.double(), ndim=2)
    return resolution_at_threshold(curve, box_size=N, pixel_size_angstrom=PIXEL, threshold=0.5)


def test_two_dimensional_classification_recovers_the_templates() -> None:
    refs = templates(N, 4, seed=11)
    source, truth = particles(refs, 300, pixel_size=PIXEL, snr=0.3, seed=2)
    # more classes than molecules, as in practice (with exactly 4 a class can die early)
    options = Class2DOptions(n_classes=6, particle_diameter_angstrom=0.8 * N * PIXEL,
                             psi_step_degrees=10.0, offset_range_px=3.0, seed=0)
    device = torch.device("cpu")
    model, state = initialise(source, torch.zeros(300, 2), options, device=device)
    changed = []
    for _ in range(6):
        model, state, info = iterate(model, state, source, options, device=device)
        changed.append(info["changed_class_fraction"])
    result = purity(state.class_index, truth.class_index)
    # classes of 3 % of the particles or more are pure; tiny leftover classes may mix
    assert all(p >= 0.95 for _, size, p in result if size >= 9), result
    assert sum(size * p for _, size, p in result) / 300 >= 0.98
    assert changed[-1] < 0.05
    # every template is matched by the class holding it, to better than 4 Nyquist pixels
    for c in range(4):
        k = int(torch.mode(state.class_index[truth.class_index == c]).values)
        res = _best_match_resolution(model.references[k], refs[c])
        assert res < 4 * PIXEL * 2, (c, res)
    # the offsets found centre the particles: origin_found - origin_true = R(psi) s_k, where
    # s_k is where class k's average sits in its box (one shift per class)
    rot = rotations_2d(state.psi_degrees)  # (N, 2, 2)
    d = (state.offsets_px - truth.origins_px)[:, :, None]
    residuals = []
    for k in torch.unique(state.class_index).tolist():
        sel = state.class_index == k
        s_k = (rot[sel].transpose(1, 2) @ d[sel]).mean(0)
        residuals.append((d[sel] - rot[sel] @ s_k).norm(dim=1).flatten())
    assert float(torch.cat(residuals).median()) < 0.5
    assert model.sigma_offset_angstrom < 3.0 * PIXEL
    assert float(model.class_fractions.sum()) == pytest.approx(1.0, abs=1e-5)


def test_noise_outside_the_mask_and_checkpoints(tmp_path: Path, device: str) -> None:
    refs = templates(24, 2, seed=3)
    source, _ = particles(refs, 40, pixel_size=PIXEL, snr=0.5, seed=4)
    options = Class2DOptions(n_classes=2, particle_diameter_angstrom=80.0, psi_step_degrees=20.0,
                             offset_range_px=2.0, zero_mask=False, seed=7)
    dev = torch.device(device)
    model, state = initialise(source, torch.zeros(40, 2), options, device=dev)
    a, sa, _ = iterate(model, state, source, options, device=dev)
    b, sb, _ = iterate(model, state, source, options, device=dev)
    torch.testing.assert_close(a.references, b.references)  # the noise is seeded
    assert torch.equal(sa.class_index, sb.class_index)
    assert a.references.device.type == "cpu" and a.iteration == 1
    save_checkpoint(tmp_path / "it001", a, sa, extra={"note": "x"})
    c, sc, extra = load_checkpoint(tmp_path / "it001")
    assert extra == {"note": "x"}
    torch.testing.assert_close(c.references, a.references)
    torch.testing.assert_close(c.sigma2, a.sigma2)
    assert (c.current_shell, c.sigma_offset_angstrom, c.iteration) == (
        a.current_shell, a.sigma_offset_angstrom, 1)
    assert torch.equal(sc.significant_samples, sa.significant_samples)
    assert math.isfinite(c.log_likelihood)


def test_too_few_particles_for_the_classes() -> None:
    refs = templates(16, 1)
    source, _ = particles(refs, 3, pixel_size=PIXEL)
    options = Class2DOptions(n_classes=5, particle_diameter_angstrom=40.0)
    with pytest.raises(ValueError, match="5 classes need at least 5 particles"):
        initialise(source, torch.zeros(3, 2), options, device=torch.device("cpu"))


def test_noise_spectra_per_optics_group() -> None:
    """Two optics groups, the second with four times the noise power: two noise spectra."""
    refs = templates(24, 2, seed=8)
    quiet, _ = particles(refs, 80, pixel_size=PIXEL, snr=0.5, seed=1)
    loud, _ = particles(refs, 80, pixel_size=PIXEL, snr=0.125, seed=2)
    assert quiet.ctfs is not None and loud.ctfs is not None
    source = TensorParticles(
        images=torch.cat([quiet.images, loud.images]), pixel_size_angstrom=PIXEL,
        ctfs=torch.cat([quiet.ctfs, loud.ctfs]),
        groups=torch.cat([torch.zeros(80, dtype=torch.long), torch.ones(80, dtype=torch.long)]))
    options = Class2DOptions(n_classes=2, particle_diameter_angstrom=80.0, psi_step_degrees=15.0,
                             offset_range_px=2.0)
    device = torch.device("cpu")
    model, state = initialise(source, torch.zeros(160, 2), options, device=device)
    assert model.sigma2.shape == (2, 13)
    for _ in range(2):
        model, state, _ = iterate(model, state, source, options, device=device)
    ratio = model.sigma2[1, 6:12] / model.sigma2[0, 6:12]
    assert bool(((ratio > 3.2) & (ratio < 4.8)).all()), ratio


def test_class_centring_moves_averages_and_offsets_together() -> None:
    """An off-centre class average is moved to the centre; the offsets follow, so the noiseless
    particles still match their class at offset range 0 as well as before."""
    from cryospa.core.class_features import density_centres
    from cryospa.core.fourier import shift_images
    from cryospa.engine.em2d import PassSetup, centre_classes, expectation_pass

    refs = templates(N, 2, seed=11)
    radius = 0.45 * N
    for _ in range(3):  # centre the templates, then move class 0 off centre
        refs = shift_images(refs, -density_centres(refs, radius).to(torch.float32))
    refs = shift_images(refs, torch.tensor([[3.0, -2.0], [0.0, 0.0]]))
    source, truth = particles(refs, 60, pixel_size=PIXEL, snr=0.0, seed=5)  # no noise
    options = Class2DOptions(n_classes=2, particle_diameter_angstrom=0.9 * N * PIXEL,
                             psi_step_degrees=10.0, offset_range_px=0.0, adaptive=False,
                             centre_classes=True)
    device = torch.device("cpu")
    model, state = initialise(source, truth.origins_px, options, device=device)
    model.references = refs.clone()
    state.class_index = truth.class_index.clone()
    state.psi_degrees = truth.psi_degrees.clone()

    def score(m, s):
        setup = PassSetup.make(m, options, device)
        return expectation_pass(m, s, source, options, setup, setup.empty_statistics(m, device),
                                device=device)[0]

    before = score(model, state)
    start = density_centres(model.references, radius)
    shifts = centre_classes(model, state, PassSetup.make(model, options, device), options)
    torch.testing.assert_close(shifts[0], start[0])  # class 0 moved by its centre of mass
    assert float(shifts[1].norm()) == 0.0  # within 0.5 px: left alone
    assert float(density_centres(model.references, radius)[0].norm()) < 0.3
    rot = rotations_2d(state.psi_degrees)
    moved = truth.class_index == 0
    expected = truth.origins_px[moved] - (rot[moved] @ start[0][:, None])[:, :, 0]
    torch.testing.assert_close(state.offsets_px[moved], expected)
    # a search around the new offsets finds the particles where the offsets say they are
    search = Class2DOptions(**{**options.__dict__, "offset_range_px": 2.0,
                               "offset_step_px": 0.5})
    setup = PassSetup.make(model, search, device)
    after = expectation_pass(model, state, source, search, setup,
                             setup.empty_statistics(model, device), device=device)[0]
    assert torch.equal(after.class_index, truth.class_index)
    found = (after.offsets_px - state.offsets_px)[moved].norm(dim=1)
    assert float(found.max()) < 0.8, found  # the fine grid sits at quarter steps
    assert float(before.log_likelihood.mean()) < float(after.log_likelihood.mean()) + 50.0
    off_options = Class2DOptions(**{**options.__dict__, "centre_classes": False})
    assert float(centre_classes(model, state, PassSetup.make(model, options, device),
                                off_options).abs().sum()) == 0.0
