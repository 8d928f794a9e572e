import pytest
import torch

from cryospa.engine import Class2DOptions, initialise, iterate
from cryospa.engine.em2d import PassSetup
from cryospa.engine.minibatch import (
    MinibatchSchedule,
    RunningStatistics,
    minibatch_step,
    replace_inactive_classes,
)
from tests.engine.synthetic2d import particles, purity, templates

CPU = torch.device("cpu")


def test_schedule_phases_sizes_and_weights() -> None:
    s = MinibatchSchedule.default(10_000, 200, 10)
    assert (s.initial_size, s.final_size) == (200, 1000)
    assert [s.size(t) for t in (1, 60, 161, 200)] == [200, 200, 1000, 1000]
    ramp = [s.size(t) for t in range(61, 161)]
    assert ramp == sorted(ramp) and 200 < ramp[50] < 1000
    assert s.weight(1) == 1.0 and s.weight(2) == pytest.approx(0.5)
    # later: a window of N / 2 particles
    assert s.weight(200) == pytest.approx(1000 / 5000)
    picked = s.particles(7, seed=3)
    assert picked.numel() == 200 and torch.equal(picked, torch.unique(picked))
    assert torch.equal(picked, s.particles(7, seed=3)) and not torch.equal(picked,
                                                                           s.particles(8, 3))
    small = MinibatchSchedule.default(150, 20, 4)
    assert small.initial_size == small.final_size == 150


def _data(n: int = 120, k: int = 3, box: int = 24):
    refs = templates(box, k, seed=5)
    source, truth = particles(refs, n, pixel_size=5.0, snr=0.5, seed=6)
    options = Class2DOptions(n_classes=k, particle_diameter_angstrom=0.8 * box * 5.0,
                             psi_step_degrees=15.0, offset_range_px=2.0)
    return source, truth, options


def test_a_full_pass_with_weight_one_is_an_em_iteration() -> None:
    source, _, options = _data()
    model, state = initialise(source, torch.zeros(len(source), 2), options, device=CPU)
    em, em_state, _ = iterate(model, state, source, options, device=CPU)
    mb, mb_state, running, info = minibatch_step(model, state, None, source, options,
                                                 particles=None, eta=1.0, device=CPU)
    torch.testing.assert_close(mb.references, em.references, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mb.sigma2, em.sigma2, rtol=1e-5, atol=0)
    torch.testing.assert_close(mb.class_fractions, em.class_fractions)
    assert torch.equal(mb_state.class_index, em_state.class_index)
    assert info["minibatch_size"] == len(source)
    # the running sums hold exactly that pass; a second pass with weight 1/2 mixes in another
    setup = PassSetup.make(mb, options, CPU)
    on = running.on(setup.subset)
    assert float(on.count.sum()) == pytest.approx(len(source))
    half = torch.arange(0, len(source), 2)
    _, _, running2, info2 = minibatch_step(mb, mb_state, running, source, options,
                                           particles=half, eta=0.5, device=CPU)
    assert info2["minibatch_size"] == half.numel()
    # the counts are scaled to the whole data set: still N after mixing
    assert float(running2.stats.count.sum()) == pytest.approx(len(source))


def test_inactive_classes_are_reseeded_from_the_largest() -> None:
    source, _, options = _data(k=4)
    model, state = initialise(source, torch.zeros(len(source), 2), options, device=CPU)
    model, state, running, _ = minibatch_step(model, state, None, source, options,
                                              particles=None, eta=1.0, device=CPU)
    model.class_fractions[:] = torch.tensor([0.6, 0.35, 0.05, 0.0], dtype=torch.float64)
    running.stats.class_mass[:] = model.class_fractions * len(source)
    donor = model.references[0].clone()
    replaced = replace_inactive_classes(model, running, 0.5, seed=1)  # below 0.5 / 4
    assert replaced == [2, 3]
    for c, d in ((2, 0), (3, 1)):
        corr = torch.corrcoef(torch.stack([model.references[c].flatten(),
                                           model.references[d].flatten()]))[0, 1]
        assert 0.95 < float(corr) < 1.0  # a perturbed copy
    assert float(model.class_fractions[0]) == pytest.approx(0.3)
    assert float(model.class_fractions[2]) == pytest.approx(0.3)
    torch.testing.assert_close(model.references[0], donor)  # the donor keeps its reference


def test_minibatch_classification_separates_the_templates() -> None:
    refs = templates(32, 4, seed=11)
    source, truth = particles(refs, 600, pixel_size=4.0, snr=0.3, seed=2)
    options = Class2DOptions(n_classes=6, particle_diameter_angstrom=0.8 * 32 * 4.0,
                             psi_step_degrees=10.0, offset_range_px=3.0)
    model, state = initialise(source, torch.zeros(600, 2), options, device=CPU)
    schedule = MinibatchSchedule(600, 30, 120, 300)
    running: RunningStatistics | None = None
    for step in range(1, 31):
        last = step == 30
        model, state, running, _ = minibatch_step(
            model, state, running, source, options,
            particles=None if last else schedule.particles(step, 0),
            eta=1.0 if last else schedule.weight(step), device=CPU,
            inactivity_threshold=0.1 if step <= 24 else 0.0, seed=step)
    result = purity(state.class_index, truth.class_index)
    assert all(p >= 0.95 for _, size, p in result if size >= 18), result
    assert sum(size * p for _, size, p in result) / 600 >= 0.98
    found = {int(torch.mode(truth.class_index[state.class_index == c]).values)
             for c, size, _ in result if size >= 18}
    assert found == {0, 1, 2, 3}


def test_running_sums_follow_the_class_centring() -> None:
    """After a step that centres a class, an M-step on the running sums alone gives the centred
    average again (the sums moved with it), not the old off-centre one."""
    from cryospa.core.class_features import density_centres
    from cryospa.core.fourier import shift_images
    from cryospa.engine.em2d import maximise

    refs = templates(24, 2, seed=5)
    refs = shift_images(refs, torch.tensor([[2.5, 1.5], [-2.0, 2.0]]))
    source, _ = particles(refs, 120, pixel_size=5.0, snr=2.0, seed=6)
    options = Class2DOptions(n_classes=2, particle_diameter_angstrom=0.9 * 24 * 5.0,
                             psi_step_degrees=15.0, offset_range_px=2.0, centre_classes=True)
    radius = options.particle_diameter_angstrom / 10.0
    model, state = initialise(source, torch.zeros(120, 2), options, device=CPU)
    moved = []
    for _ in range(3):
        model, state, running, info = minibatch_step(model, state, None, source, options,
                                                     particles=None, eta=1.0, device=CPU)
        moved.append(max(info["class_centring_px"]))
    assert moved[-1] > 0.5, moved  # the last step did move a class
    setup = PassSetup.make(model, options, CPU)
    again = maximise(model, running.on(setup.subset), setup, options)
    centres = density_centres(again.references, radius).norm(dim=1)
    assert float(centres.max()) < 0.6, centres
