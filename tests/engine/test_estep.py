import math

import pytest
import torch

from cryospa.engine.coefficients import FourierSubset
from cryospa.engine.data import PreparedBatch, prepare_batch
from cryospa.engine.estep import (
    BatchTerms,
    EStepSettings,
    PoseGrid,
    _dense_diff2,
    expectation,
    project_references,
    significant_count,
)
from cryospa.engine.mstep import SufficientStatistics
from cryospa.engine.sampling import InPlaneSampling
from tests.engine.synthetic2d import particles, templates


def _c(sub: FourierSubset, sigma2: torch.Tensor) -> torch.Tensor:
    return sub.multiplicity / (2.0 * sigma2[sub.shell])


def test_dense_scores_equal_the_direct_sum(device: str) -> None:
    n = 16
    sub = FourierSubset.within(n, 6, device=device)
    g = torch.Generator().manual_seed(3)
    refs = torch.randn(2, n, n, generator=g).to(device)
    psi = torch.tensor([0.0, 40.0, 95.0, 200.0], dtype=torch.float64)
    slices = project_references(refs, psi, sub)
    b, m = 3, sub.size
    x = torch.complex(torch.randn(b, m, generator=g), torch.randn(b, m, generator=g)).to(device)
    ctf = (torch.rand(b, m, generator=g) * 2 - 1).to(device)
    sigma2 = (0.5 + torch.rand(n // 2 + 1, generator=g)).to(device)
    batch = PreparedBatch(index=torch.arange(b), group=0, x=x, ctf=ctf,
                          offsets_px=torch.zeros(b, 2, device=device), power=torch.zeros(b, 9))
    c = _c(sub, sigma2)
    terms = BatchTerms.make(batch, c)
    ramps = sub.phase_ramps(torch.tensor([[0.0, 0.0], [1.5, -0.5], [-2.0, 1.0]]))
    diff2, _ = _dense_diff2(terms, slices, ramps)
    xt = x[:, None, None, :] * ramps[None, :, None, :]
    model = ctf[:, None, None, :] * slices.values[None, None, :, :]
    direct = (c * (xt - model).abs() ** 2).sum(-1)
    torch.testing.assert_close(diff2, direct, rtol=2e-5, atol=2e-3)
    assert diff2.device.type == torch.device(device).type


def _setup(n_particles: int, *, snr: float, psi_on_grid: bool, seed: int = 5):
    n = 32
    refs = templates(n, 3, seed=2)
    sampling = InPlaneSampling.make(psi_step_degrees=15.0, offset_range_px=3.0,
                                    offset_step_px=1.0)
    g = torch.Generator().manual_seed(seed)
    psi = origins = None
    if psi_on_grid:
        psi = sampling.fine_psi[torch.randint(0, sampling.fine_psi.numel(), (n_particles,),
                                              generator=g)]
        origins = sampling.fine_translations[
            torch.randint(0, sampling.fine_translations.shape[0], (n_particles,), generator=g)]
    source, truth = particles(refs, n_particles, snr=snr, psi_degrees=psi, origins_px=origins,
                              seed=seed)
    sub = FourierSubset.within(n, 12)
    full = FourierSubset.within(n, n // 2, min_shell=0)
    mask = torch.ones(n, n)
    images, ctf = source.load(torch.arange(n_particles), torch.device("cpu"), ctf=True)
    batch = prepare_batch(torch.arange(n_particles), 0, images, ctf,
                          torch.zeros(n_particles, 2), subset=sub, full=full, mask=mask)
    sigma2 = torch.full((n // 2 + 1,), 1e-2 if snr == 0 else float(images.var()) / 2)
    terms = BatchTerms.make(batch, _c(sub, sigma2))
    return refs, sampling, sub, batch, terms, truth


def _run(refs, sampling, sub, batch, terms, settings) -> tuple[object, SufficientStatistics]:
    grid = PoseGrid.make(refs, sampling, sub, adaptive=settings.adaptive)
    stats = SufficientStatistics.zeros(
        n_groups=1, n_poses=refs.shape[0] * sampling.fine_psi.numel(),
        n_coefficients=sub.size, n_shells=sub.n_shells, n_classes=refs.shape[0],
        device=torch.device("cpu"))
    result = expectation(batch, terms, grid, log_pi=torch.log(torch.full((3,), 1 / 3)),
                         sigma_offset_px=3.0, log_norm=0.0, settings=settings, stats=stats)
    return result, stats


@pytest.mark.parametrize("adaptive", [False, True])
def test_noiseless_poses_are_recovered(adaptive: bool) -> None:
    refs, sampling, sub, batch, terms, truth = _setup(40, snr=0.0, psi_on_grid=True)
    result, stats = _run(refs, sampling, sub, batch, terms,
                         EStepSettings(adaptive=adaptive))
    assert torch.equal(result.class_index, truth.class_index)
    psi = sampling.fine_psi[result.psi_index]
    diff = torch.remainder(psi - truth.psi_degrees + 180, 360) - 180
    assert diff.abs().max() < 1e-6
    error = (sampling.fine_translations[result.translation_index] - truth.origins_px).abs()
    assert float(stats.class_mass.sum()) == pytest.approx(40.0, rel=1e-5)
    if not adaptive:
        assert float(error.max()) < 1e-9
        assert bool((result.max_probability > 0.999).all())
    else:
        # at this (infinite) SNR the coarse posterior keeps a single coarse pose, which a
        # psi / translation trade-off can put next to the true one's parent: 1 px off at most
        assert float(error.max()) <= 1.0 + 1e-9
        assert float((error.amax(1) < 1e-9).double().mean()) >= 0.85


def test_local_blocks_and_dense_masked_fine_pass_agree() -> None:
    refs, sampling, sub, batch, terms, _ = _setup(30, snr=0.3, psi_on_grid=False)
    local, s_local = _run(refs, sampling, sub, batch, terms,
                          EStepSettings(adaptive=True, dense_switch=10.0))
    dense, s_dense = _run(refs, sampling, sub, batch, terms,
                          EStepSettings(adaptive=True, dense_switch=0.0))
    for name in ("class_index", "psi_index", "translation_index", "significant", "fine_poses"):
        assert torch.equal(getattr(local, name), getattr(dense, name)), name
    torch.testing.assert_close(local.max_probability, dense.max_probability, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(local.log_likelihood, dense.log_likelihood, rtol=1e-6, atol=1e-3)
    for name in ("data", "weight", "class_mass", "offset_sq_px2"):
        a, b = getattr(s_local, name), getattr(s_dense, name)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def test_adaptive_agrees_with_exhaustive_on_noisy_data() -> None:
    refs, sampling, sub, batch, terms, truth = _setup(60, snr=0.2, psi_on_grid=False)
    full, _ = _run(refs, sampling, sub, batch, terms, EStepSettings(adaptive=False))
    fast, _ = _run(refs, sampling, sub, batch, terms, EStepSettings(adaptive=True))
    same = (full.class_index == fast.class_index) & (full.psi_index == fast.psi_index)
    assert float(same.double().mean()) >= 0.95
    assert float(fast.fine_poses.double().mean()) < 0.5 * float(full.fine_poses[0])
    # and both find the true class of almost every particle
    assert float((full.class_index == truth.class_index).double().mean()) >= 0.95


def test_significant_count() -> None:
    w = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    count, threshold = significant_count(w, 0.9)
    assert count.tolist() == [3, 1]
    assert threshold.tolist() == pytest.approx([0.15, 1.0])
    big = torch.softmax(torch.randn(2, 5000, generator=torch.Generator().manual_seed(0)) * 0.01,
                        dim=1)
    count, threshold = significant_count(big, 0.999)
    s = torch.sort(big, dim=1, descending=True).values
    expected = (torch.cumsum(s, 1) < 0.999).sum(1) + 1
    assert torch.equal(count, expected)
    assert math.isclose(float(threshold[0]), float(s[0, expected[0] - 1]))
