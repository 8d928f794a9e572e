"""Pieces of the de novo initial-model engine: resolution schedule, running sums."""

from __future__ import annotations

import itertools

import torch

from cryospa.core.backprojection import make_backprojector
from cryospa.engine.estep3d import Statistics3D
from cryospa.engine.initial3d import (
    InitialModelOptions,
    RunningSums3D,
    reseed_inactive_classes,
    resolution_cap_shell,
    schedule_for,
)


def test_resolution_cap_opens_from_ini_high_to_nyquist() -> None:
    options = InitialModelOptions(particle_diameter_angstrom=150.0, n_minibatches=100)
    schedule = schedule_for(5000, options)
    n, apix = 64, 3.5  # ini_high 40 Å -> shell round(224 / 40) = 6
    caps = [resolution_cap_shell(s, schedule, n, apix, 40.0) for s in range(1, 101)]
    assert caps[:30] == [6] * 30  # initial phase
    assert caps[80:] == [32] * 20  # final phase: Nyquist
    assert all(b >= a for a, b in itertools.pairwise(caps))
    assert schedule.initial_size == 200 and schedule.final_size == 1000


def test_schedule_sizes_given_and_capped_by_the_data() -> None:
    options = InitialModelOptions(particle_diameter_angstrom=150.0, n_minibatches=20,
                                  initial_size=100, final_size=5000)
    schedule = schedule_for(400, options)
    assert (schedule.initial_size, schedule.final_size) == (100, 400)
    assert schedule.size(1) == 100 and schedule.size(20) == 400


def _stats(value: float, k: int, n: int) -> Statistics3D:
    bps = [make_backprojector(n) for _ in range(k)]
    for bp in bps:
        bp.data += value
        bp.weight += 2 * value
    z = torch.zeros(1, dtype=torch.float64)
    return Statistics3D(backprojectors=bps, residual=z, power=z, count=z,
                        class_mass=torch.full((k,), value, dtype=torch.float64),
                        offset_sq_px2=z[0], log_likelihood=z[0], pmax_sum=z[0],
                        angular_spread=z[0])


def test_running_sums_average_and_round_trip() -> None:
    n, k = 12, 2
    running = RunningSums3D.zeros(k, n, torch.device("cpu"))
    running.update(_stats(1.0, k, n), eta=1.0, scale=3.0)  # first batch replaces: 3
    running.update(_stats(2.0, k, n), eta=0.25, scale=3.0)  # 0.75 * 3 + 0.25 * 6 = 3.75
    torch.testing.assert_close(running.class_mass, torch.full((k,), 3.75, dtype=torch.float64))
    assert torch.allclose(running.weight, torch.full_like(running.weight, 7.5))
    back = RunningSums3D.from_arrays(running.arrays(), n, torch.device("cpu"))
    assert back.padded_size == make_backprojector(n).padded_size == running.padded_size
    torch.testing.assert_close(back.data, running.data)
    assert back.backprojector(1).data.shape == make_backprojector(n).data.shape


def test_an_inactive_class_is_reseeded_from_the_largest() -> None:
    n, k = 12, 3
    running = RunningSums3D.zeros(k, n, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    running.data += torch.randn(running.data.shape, generator=g, dtype=running.data.dtype)
    running.weight += 1.0
    running.class_mass = torch.tensor([500.0, 2.0, 300.0], dtype=torch.float64)
    big_data = running.data[0].clone()
    other = running.data[2].clone()
    # class 2 has 2 / 802 of the particles, below 0.1 / 3: it takes half of class 1
    assert reseed_inactive_classes(running, threshold=0.1, generator=g) == [1]
    torch.testing.assert_close(running.class_mass,
                               torch.tensor([250.0, 250.0, 300.0], dtype=torch.float64))
    assert torch.equal(running.weight[0], running.weight[1])
    assert torch.allclose(running.weight[0], torch.full_like(running.weight[0], 0.5))
    # class 1's sums are shared between the pair (class 2's own are dropped); class 3 untouched
    torch.testing.assert_close(running.data[0] + running.data[1], big_data)
    assert torch.equal(running.data[2], other)
    diff = (running.data[0] - running.data[1]).abs().mean() / running.data[0].abs().mean()
    assert 0.1 < float(diff) < 0.4  # perturbed by about 2 x 10 %: the maps differ
    # nothing to do when every class has its share
    assert reseed_inactive_classes(running, threshold=0.1, generator=g) == []
