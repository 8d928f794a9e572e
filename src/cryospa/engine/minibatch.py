"""Mini-batch (VDAM-like) 2D classification: gradient steps on the references from subsets.

RELION 4's VDAM (Kimanius et al. 2021, Biochem. J. 478:4169; "variable-metric gradient descent
with adaptive moments") updates the references from the E-step of a small random subset of the
particles per step, the subset growing over the run (30 % of the steps at the initial size, a
linear ramp, 20 % at the final size), and ends with full passes. This module implements that
schedule with the update written as stochastic (online) EM of the sufficient statistics
(Cappé & Moulines 2009, J. R. Stat. Soc. B 71:593): after the E-step of mini-batch ``b_t``,

    S_t = (1 - eta_t) S_{t-1} + eta_t (N / |b_t|) S(b_t)

for every sum of :class:`~cryospa.engine.mstep.SufficientStatistics` (data, weights, image
power, counts, class masses, offsets), and the M-step runs on ``S_t``. For the references this
is a gradient step preconditioned by the per-coefficient weight ``W`` (the Fisher information,
RELION's variable metric): with ``V_EM = D / W``, the unregularised update is ``V_t = V_{t-1} +
eta_t (V_EM(b_t) - V_{t-1})`` averaged over the batches, the running sums acting as the first
moment. ``eta_t = |b_t| / min(seen_t, N / 2)``: plain averaging while fewer than ``N / 2``
particles were seen, then a window of about ``N / 2`` particles, so the sums of the first,
poorly aligned mini-batches are forgotten. This is not a line-by-line port of RELION's VDAM
(which updates the references with momentum-averaged, ``max(1, W)``-normalised gradients and an
FSC-like weighting): the step sizes, batch schedule and end with a full EM pass follow it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from typing import Any

import torch

from cryospa.engine.coefficients import FourierSubset
from cryospa.engine.data import ParticleSource
from cryospa.engine.em2d import (
    Class2DOptions,
    PassSetup,
    centre_classes,
    expectation_pass,
    maximise,
    summarise_iteration,
)
from cryospa.engine.model import ClassModel, ParticleState
from cryospa.engine.mstep import SufficientStatistics
from cryospa.engine.sampling import rotations_2d

__all__ = [
    "MinibatchSchedule",
    "RunningStatistics",
    "minibatch_step",
    "replace_inactive_classes",
]


@dataclass(frozen=True)
class MinibatchSchedule:
    """RELION's VDAM schedule of mini-batch sizes.

    Attributes
    ----------
    n_particles
        ``N``.
    n_minibatches
        Steps in all (RELION's ``--iter`` with ``--grad``; the GUI's "number of mini-batches").
    initial_size, final_size
        Mini-batch sizes of the first and last phases.
    initial_fraction, final_fraction
        Fractions of the steps at the initial and at the final size (0.3 and 0.2 as RELION);
        the size grows linearly in between.
    """

    n_particles: int
    n_minibatches: int
    initial_size: int
    final_size: int
    initial_fraction: float = 0.3
    final_fraction: float = 0.2

    @classmethod
    def default(cls, n_particles: int, n_minibatches: int, n_classes: int) -> MinibatchSchedule:
        """Sizes as RELION's defaults (at most ``N``).

        ``clamp(0.005 N, 200, 5000)`` (at least 20 per class) growing to
        ``clamp(0.1 N, 1000, 50000)``.
        """
        ini = min(max(round(0.005 * n_particles), 200, 20 * n_classes), 5000)
        fin = min(max(round(0.1 * n_particles), 1000), 50000)
        ini, fin = min(ini, n_particles), min(fin, n_particles)
        return cls(n_particles, n_minibatches, ini, max(ini, fin))

    def size(self, step: int) -> int:
        """Mini-batch size of step ``step`` (1-based)."""
        n_ini = round(self.initial_fraction * self.n_minibatches)
        n_fin = round(self.final_fraction * self.n_minibatches)
        between = max(self.n_minibatches - n_ini - n_fin, 1)
        if step <= n_ini:
            return self.initial_size
        if step > self.n_minibatches - n_fin:
            return self.final_size
        frac = (step - n_ini) / between
        return round(self.initial_size + frac * (self.final_size - self.initial_size))

    def seen_before(self, step: int) -> int:
        """Particles scored in the steps before ``step``."""
        return sum(self.size(s) for s in range(1, step))

    def weight(self, step: int) -> float:
        """``eta_t``: the share of mini-batch ``step`` in the running sums."""
        window = max(self.n_particles / 2.0, 1.0)
        seen = self.seen_before(step) + self.size(step)
        return min(1.0, self.size(step) / min(seen, window))

    def particles(self, step: int, seed: int) -> torch.Tensor:
        """The particles of mini-batch ``step``: a random subset (seeded by step)."""
        g = torch.Generator().manual_seed(int(seed) * 100_003 + step)
        return torch.sort(torch.randperm(self.n_particles, generator=g)[: self.size(step)]).values


@dataclass
class RunningStatistics:
    """Running sums of the mini-batches on all shells ``1 .. n // 2`` (fixed coefficients)."""

    stats: SufficientStatistics
    coefficients: FourierSubset

    @classmethod
    def zeros(cls, like: PassSetup, model: ClassModel, device: torch.device) -> RunningStatistics:
        """Empty running sums for ``model``'s box and the poses of ``like``."""
        n = model.box_size
        allset = FourierSubset.within(n, n // 2, device=device)
        stats = SufficientStatistics.zeros(
            n_groups=like.sigma2.shape[0],
            n_poses=model.n_classes * like.sampling.fine_psi.numel(),
            n_coefficients=allset.size,
            n_shells=n // 2 + 1,
            n_classes=model.n_classes,
            device=device,
        )
        return cls(stats=stats, coefficients=allset)

    def positions(self, subset: FourierSubset) -> torch.Tensor:
        """Where the coefficients of ``subset`` sit in the running sums."""
        return torch.searchsorted(self.coefficients.index, subset.index.to(
            self.coefficients.index.device))

    def update(self, batch: SufficientStatistics, subset: FourierSubset, *, eta: float,
               scale: float) -> None:
        """``S <- (1 - eta) S + eta * scale * S(batch)`` (batch sums on ``subset``)."""
        pos = self.positions(subset)
        for f in fields(SufficientStatistics):
            mine = getattr(self.stats, f.name)
            mine.mul_(1.0 - eta)
            add = getattr(batch, f.name) * (eta * scale)
            if f.name in ("data", "weight"):
                mine[:, :, pos] += add.to(mine.dtype)
            else:
                mine += add.to(mine.dtype)

    def on(self, subset: FourierSubset) -> SufficientStatistics:
        """The running sums restricted to ``subset`` (for the M-step)."""
        pos = self.positions(subset)
        s = self.stats
        return SufficientStatistics(
            data=s.data[:, :, pos], weight=s.weight[:, :, pos], power=s.power, count=s.count,
            class_mass=s.class_mass, offset_sq_px2=s.offset_sq_px2,
            log_likelihood=s.log_likelihood, pmax_sum=s.pmax_sum)

    def shift_classes(self, shifts_px: torch.Tensor, psi_degrees: torch.Tensor) -> None:
        """Follow :func:`~cryospa.engine.em2d.centre_classes`, in place.

        Class ``k``'s average moved by ``-c_k``; its slice at in-plane angle ``psi_j`` holds
        images matching ``R_j A_k``, which move by ``-R_j c_k`` (a phase ramp on the data sums;
        the weights do not change).
        """
        data = self.stats.data
        k = shifts_px.shape[0]
        n_psi = data.shape[1] // k
        rot = rotations_2d(psi_degrees.to(torch.float64).cpu())  # (J, 2, 2)
        for c in torch.nonzero(shifts_px.norm(dim=1) > 0).flatten().tolist():
            moves = -(rot @ shifts_px[c].to(torch.float64)[:, None])[:, :, 0]  # (J, 2)
            ramps = self.coefficients.phase_ramps(moves)  # (J, M)
            block = torch.view_as_complex(data[:, c * n_psi : (c + 1) * n_psi].contiguous())
            data[:, c * n_psi : (c + 1) * n_psi] = torch.view_as_real(block * ramps)

    def arrays(self) -> dict[str, torch.Tensor]:
        """For a checkpoint."""
        return {f.name: getattr(self.stats, f.name) for f in fields(SufficientStatistics)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, torch.Tensor], box_size: int,
                    device: torch.device) -> RunningStatistics:
        """Inverse of :meth:`arrays`."""
        stats = SufficientStatistics(**{f.name: arrays[f.name].to(device)
                                        for f in fields(SufficientStatistics)})
        return cls(stats=stats,
                   coefficients=FourierSubset.within(box_size, box_size // 2, device=device))


def minibatch_step(
    model: ClassModel,
    state: ParticleState,
    running: RunningStatistics | None,
    source: ParticleSource,
    options: Class2DOptions,
    *,
    particles: torch.Tensor | None,
    eta: float,
    device: torch.device,
    inactivity_threshold: float = 0.0,
    seed: int = 0,
) -> tuple[ClassModel, ParticleState, RunningStatistics, dict[str, Any]]:
    """One mini-batch step: E-step of ``particles`` (None: all), running sums, M-step.

    ``eta`` is the batch's share of the running sums (1 replaces them; a full pass with 1 is an
    EM iteration). Classes holding less than ``inactivity_threshold / K`` of the particles are
    replaced by a perturbed copy of the largest ones (RELION's ``--class_inactivity_threshold``,
    0.1 for 2D VDAM); ``seed`` seeds the perturbation.
    """
    t0 = time.perf_counter()
    setup = PassSetup.make(model, options, device)
    if running is None:
        running = RunningStatistics.zeros(setup, model, device)
    batch = setup.empty_statistics(model, device)
    new_state, fine_poses = expectation_pass(model, state, source, options, setup, batch,
                                             device=device, particles=particles)
    n_batch = float(batch.count.sum())
    running.update(batch, setup.subset, eta=eta, scale=len(source) / max(n_batch, 1.0))
    t_e = time.perf_counter()
    new_model = maximise(model, running.on(setup.subset), setup, options)
    shifts = centre_classes(new_model, new_state, setup, options)
    running.shift_classes(shifts, setup.sampling.fine_psi)
    info = summarise_iteration(model, new_model, state, new_state, setup, options,
                               n_scored=n_batch, fine_poses=fine_poses,
                               seconds=(t_e - t0, time.perf_counter() - t_e),
                               centring_px=shifts)
    info["minibatch_size"] = int(n_batch)
    info["minibatch_weight"] = round(eta, 5)
    info["replaced_classes"] = (
        replace_inactive_classes(new_model, running, inactivity_threshold, seed=seed)
        if inactivity_threshold > 0 else [])
    if not math.isfinite(new_model.log_likelihood):
        raise FloatingPointError("the running log-likelihood is not finite")
    return new_model, new_state, running, info


def replace_inactive_classes(
    model: ClassModel, running: RunningStatistics, threshold: float, *, seed: int
) -> list[int]:
    """Give classes below ``threshold / K`` of the particles half of a large class, in place.

    Each inactive class takes the reference of one of the largest classes plus white noise of a
    tenth of its standard deviation (so the two copies part ways in the next E-steps), and half
    of that class's running sums and fraction. Returns the classes replaced (0-based).
    """
    k = model.n_classes
    fractions = model.class_fractions.clone()
    inactive = torch.nonzero(fractions < threshold / k).flatten().tolist()
    if not inactive:
        return []
    g = torch.Generator().manual_seed(int(seed))
    stats = running.stats
    n_psi = stats.data.shape[1] // k
    donors = [int(c) for c in torch.argsort(fractions, descending=True).tolist()
              if c not in inactive]
    replaced = []
    for i, c in enumerate(inactive):
        if not donors:
            break
        d = donors[i % len(donors)]
        ref = model.references[d]
        noise = torch.randn(ref.shape, generator=g, dtype=ref.dtype) * 0.1 * ref.std()
        model.references[c] = ref + noise * (ref != 0)
        for name in ("data", "weight"):
            a = getattr(stats, name)
            half = a[:, d * n_psi : (d + 1) * n_psi] * 0.5
            a[:, d * n_psi : (d + 1) * n_psi] = half
            a[:, c * n_psi : (c + 1) * n_psi] = half
        stats.class_mass[d] *= 0.5
        stats.class_mass[c] = stats.class_mass[d]
        model.class_fractions[d] *= 0.5
        model.class_fractions[c] = model.class_fractions[d]
        for name in ("tau2", "data_vs_prior", "resolution_angstrom", "accuracy_rotation_degrees",
                     "accuracy_translation_angstrom"):
            getattr(model, name)[c] = getattr(model, name)[d]
        replaced.append(c)
    return replaced
