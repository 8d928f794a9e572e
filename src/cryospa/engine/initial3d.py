"""De novo 3D initial model by stochastic mini-batch EM (RELION 4's ``--grad --denovo_3dref``).

No reference is given: the run starts in C1 from maps reconstructed from the particles at
random orientations (a different random draw per class: rotationally blurred blobs of the right
size and grey scale, with enough random structure to break the symmetry between classes). Then,
for ``n_minibatches`` steps as RELION 4's VDAM schedule (:class:`~cryospa.engine.minibatch.
MinibatchSchedule`: small mini-batches for the first 30 % of the steps, growing linearly, the
final size for the last 20 %):

1. E-step of a random mini-batch ``b_t`` against the current references (global HEALPix search
   in C1 and translations, adaptive oversampling; :func:`cryospa.engine.estep3d.expectation_3d`)
   on the Fourier shells up to the current resolution limit;
2. stochastic EM of the sufficient statistics (Cappé & Moulines 2009, as the 2D mini-batch
   engine :mod:`cryospa.engine.minibatch`): the 3D Fourier accumulators ``D_k``, ``W_k`` and the
   class masses become ``S_t = (1 - eta_t) S_{t-1} + eta_t (N / |b_t|) S(b_t)``; the noise
   spectra and the offset prior follow the same running average;
3. M-step: each class map is the Wiener-filtered reconstruction of its running sums with the
   prior power ``tau2`` of the previous map and the fudge ``T`` (4 as RELION's initial model),
   masked with a soft sphere of the particle diameter.

The resolution limit of the E-step starts at ``ini_high_angstrom`` and is opened linearly to
Nyquist over the middle of the run, never beyond the shell where the map's spectral SNR
``T tau2 mean(W)`` drops below 1 (plus a few shells). The last step is a full EM pass over all
particles (``eta = 1``), which gives every particle an orientation. RELION's VDAM updates the
maps with momentum-averaged gradients instead; the schedule and the final pass follow it. With
several classes, a class left with almost no particles is re-seeded from the largest one
(:func:`reseed_inactive_classes`) until the last phase.

The result has an arbitrary frame and hand (the hand cannot be told from projections): the job
aligns it to the axes of the requested point group (:mod:`cryospa.core.symmetry_axes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from cryospa.core.backprojection import BackProjector, make_backprojector, reconstruct
from cryospa.core.filters import lowpass
from cryospa.core.projection import make_projector
from cryospa.core.rotations import random_rotations
from cryospa.engine.coefficients import FourierSubset
from cryospa.engine.data import ParticleSource, prepare_batch
from cryospa.engine.em2d import group_batches
from cryospa.engine.em3d import (
    Model3D,
    Particles3D,
    Refine3DOptions,
    batch_size_3d,
    copy_state_3d,
    empty_statistics_3d,
    expectation_pass_3d,
    noise_and_scale,
    particle_mask_2d,
    reference_mask,
    shell_mean_weight,
    volume_tau2,
)
from cryospa.engine.estep import BatchTerms
from cryospa.engine.estep3d import (
    Statistics3D,
    Translations,
    _insert,
    coarse_slices,
    freq_px,
)
from cryospa.engine.minibatch import MinibatchSchedule
from cryospa.engine.sampling import translation_grid
from cryospa.engine.sampling3d import OrientationSampling

__all__ = [
    "InitialModelOptions",
    "RunningSums3D",
    "initialise_denovo",
    "minibatch_step_3d",
    "reseed_inactive_classes",
    "schedule_for",
]

#: Shells beyond the last one with SNR >= 1 that the next E-step may use (RELION's incr_size).
_INCR_SHELLS = 2


@dataclass(frozen=True)
class InitialModelOptions:
    """Settings of a de novo initial model (RELION option names in brackets).

    Attributes
    ----------
    particle_diameter_angstrom
        Soft circular mask on the particles, spherical mask on the maps (``--particle_diameter``).
    n_classes
        ``K`` (``--K``).
    n_minibatches
        Steps of the run, the last a full pass (``--iter`` with ``--grad``; RELION 4: 200).
    initial_size, final_size
        Mini-batch sizes at the start and the end (0: RELION's defaults, see
        :meth:`MinibatchSchedule.default`).
    healpix_order
        Coarse HEALPix order of the global search (1: 15 degrees coarse, 7.5 fine).
    offset_range_px, offset_step_px
        Translation search (fine step; pixels).
    ini_high_angstrom
        Resolution limit of the first steps (``--ini_high``; RELION's initial-model GUI: none,
        VDAM starts near 40 Å).
    tau2_fudge
        ``T`` (4 for an initial model, as RELION).
    ctf, ignore_ctf_until_first_peak
        CTF correction.
    adaptive_fraction
        Posterior mass whose fine children are scored.
    class_inactivity_threshold
        With several classes, a class whose share of the particles falls below this fraction
        of ``1 / K`` is re-seeded from the largest class (:func:`reseed_inactive_classes`;
        RELION 4 ``--class_inactivity_threshold``), except in the last phase of the schedule.
    mask_edge_px, memory_mb, seed
        Soft edge of the masks; memory bound of the E-step's slice tensors; random seed.
    """

    particle_diameter_angstrom: float
    n_classes: int = 1
    n_minibatches: int = 200
    initial_size: int = 0
    final_size: int = 0
    healpix_order: int = 1
    offset_range_px: float = 6.0
    offset_step_px: float = 2.0
    ini_high_angstrom: float = 40.0
    tau2_fudge: float = 4.0
    ctf: bool = True
    ignore_ctf_until_first_peak: bool = False
    adaptive_fraction: float = 0.999
    class_inactivity_threshold: float = 0.1
    mask_edge_px: float = 5.0
    memory_mb: float = 256.0
    seed: int = 0

    def engine(self) -> Refine3DOptions:
        """The 3D engine's options of the C1 run (masks, noise, E-step settings)."""
        return Refine3DOptions(
            particle_diameter_angstrom=self.particle_diameter_angstrom,
            n_classes=self.n_classes, symmetry="C1", gold_standard=False,
            auto_sampling=False, tau2_fudge=self.tau2_fudge, healpix_order=self.healpix_order,
            offset_range_px=self.offset_range_px, offset_step_px=self.offset_step_px,
            ctf=self.ctf, ignore_ctf_until_first_peak=self.ignore_ctf_until_first_peak,
            zero_mask=True, adaptive_fraction=self.adaptive_fraction,
            ini_high_angstrom=self.ini_high_angstrom, max_iterations=self.n_minibatches,
            mask_edge_px=self.mask_edge_px, memory_mb=self.memory_mb, seed=self.seed)


def schedule_for(n_particles: int, options: InitialModelOptions) -> MinibatchSchedule:
    """The mini-batch sizes of the run (RELION's defaults unless given)."""
    default = MinibatchSchedule.default(n_particles, options.n_minibatches, options.n_classes)
    ini = options.initial_size or default.initial_size
    fin = options.final_size or default.final_size
    ini, fin = min(ini, n_particles), min(fin, n_particles)
    return MinibatchSchedule(n_particles, options.n_minibatches, ini, max(ini, fin))


@dataclass
class RunningSums3D:
    """Running sums of the mini-batches: per-class Fourier accumulators and class masses."""

    data: torch.Tensor  # (K, *padded half grid) complex
    weight: torch.Tensor  # (K, *padded half grid) real
    class_mass: torch.Tensor  # (K,) float64
    box_size: int
    padded_size: int

    def backprojector(self, k: int) -> BackProjector:
        """Class ``k``'s running accumulator (shares the tensors)."""
        return BackProjector(data=self.data[k], weight=self.weight[k], box_size=self.box_size,
                             padded_size=self.padded_size, ndim=3)

    def update(self, stats: Statistics3D, *, eta: float, scale: float) -> None:
        """``S <- (1 - eta) S + eta * scale * S(batch)``."""
        for k, bp in enumerate(stats.backprojectors):
            self.data[k].mul_(1.0 - eta).add_(bp.data.to(self.data.dtype), alpha=eta * scale)
            self.weight[k].mul_(1.0 - eta).add_(bp.weight.to(self.weight.dtype),
                                                alpha=eta * scale)
        self.class_mass.mul_(1.0 - eta).add_(stats.class_mass.cpu().to(torch.float64),
                                             alpha=eta * scale)

    def arrays(self) -> dict[str, torch.Tensor]:
        """For a checkpoint."""
        return {"running_data": self.data, "running_weight": self.weight,
                "running_class_mass": self.class_mass}

    @classmethod
    def from_arrays(cls, arrays: dict[str, torch.Tensor], box_size: int,
                    device: torch.device) -> RunningSums3D:
        """Inverse of :meth:`arrays`."""
        data = arrays["running_data"].to(device)
        padded = make_backprojector(box_size, device=torch.device("cpu")).padded_size
        return cls(data=data, weight=arrays["running_weight"].to(device),
                   class_mass=arrays["running_class_mass"].cpu(), box_size=box_size,
                   padded_size=padded)

    @classmethod
    def zeros(cls, n_classes: int, box_size: int, device: torch.device) -> RunningSums3D:
        """Empty sums of the shape of :func:`make_backprojector`'s accumulators."""
        bp = make_backprojector(box_size, device=device)
        return cls(data=bp.data[None].repeat(n_classes, *([1] * bp.data.ndim)),
                   weight=bp.weight[None].repeat(n_classes, *([1] * bp.weight.ndim)),
                   class_mass=torch.zeros(n_classes, dtype=torch.float64),
                   box_size=box_size, padded_size=bp.padded_size)


def reseed_inactive_classes(
    running: RunningSums3D, *, threshold: float, generator: torch.Generator,
    perturbation: float = 0.1,
) -> list[int]:
    """Give each inactive class half of the largest class's running sums, perturbed.

    A class is inactive when its running mass is below ``threshold / K`` of the total. It and
    the largest class each get half of the largest class's sums (masses, weights and data, so
    the totals are kept); the data of the pair are multiplied by ``1 + e`` and ``1 - e`` with
    ``e`` Gaussian of standard deviation ``perturbation`` per Fourier voxel, so their maps
    differ and the next E-steps pull them apart instead of leaving a class empty for good.
    Returns the re-seeded classes (modifies ``running`` in place).
    """
    k_classes = int(running.class_mass.numel())
    total = float(running.class_mass.sum())
    if k_classes < 2 or total <= 0.0:
        return []
    reseeded = []
    for c in range(k_classes):
        if float(running.class_mass[c]) >= threshold * total / k_classes:
            continue
        big = int(running.class_mass.argmax())
        if big == c:
            continue
        e = perturbation * torch.randn(running.weight[big].shape, generator=generator,
                                       dtype=running.weight.dtype).to(running.weight.device)
        half = 0.5 * running.data[big]
        running.data[c] = half * (1.0 + e)
        running.data[big] = half * (1.0 - e)
        running.weight[big] *= 0.5
        running.weight[c] = running.weight[big]
        running.class_mass[big] *= 0.5
        running.class_mass[c] = running.class_mass[big]
        reseeded.append(c)
    return reseeded


def _shell_of(resolution_angstrom: float, n: int, apix: float) -> int:
    return int(min(n // 2, max(2, round(n * apix / resolution_angstrom))))


def initialise_denovo(
    source: ParticleSource,
    offsets_px: torch.Tensor,
    options: InitialModelOptions,
    *,
    device: torch.device,
) -> tuple[Model3D, Particles3D, RunningSums3D]:
    """Random starting maps, noise spectra and empty running sums (module docstring).

    Class ``k``'s map is the reconstruction of up to 500 particles (CTF-weighted, whitened by
    the first noise estimate) inserted at random orientations, low-passed to
    ``ini_high_angstrom`` and masked.
    """
    n, apix = source.box_size, source.pixel_size_angstrom
    eng = options.engine()
    shell = _shell_of(options.ini_high_angstrom, n, apix)
    blob = reference_mask(n, eng, apix, device).cpu()
    sigma2, _ = noise_and_scale(source, offsets_px, blob, eng, device, shell)
    k_classes = options.n_classes
    subset = FourierSubset.within(n, shell, device=device)
    full = FourierSubset.within(n, n // 2, min_shell=0, device=device)
    mask2 = particle_mask_2d(n, eng, apix, device)
    mask3 = reference_mask(n, eng, apix, device)
    groups = source.optics_groups()
    gen = torch.Generator().manual_seed(int(options.seed) * 7_919 + 11)
    mult = subset.multiplicity.to(device, torch.float64)
    refs = torch.zeros((1, k_classes, n, n, n), dtype=torch.float32)
    freq = freq_px(subset)
    for k in range(k_classes):
        pick = torch.sort(torch.randperm(len(source), generator=gen)[:500]).values
        bp = make_backprojector(n, device=device)
        for g, idx in group_batches(groups, 128, pick):
            images, ctf = source.load(idx, device, ctf=options.ctf)
            prepared = prepare_batch(idx.to(device), g, images, ctf, offsets_px[idx].to(device),
                                     subset=subset, full=full, mask=mask2)
            c = (mult / (2.0 * sigma2[g].to(device)[subset.shell])).to(torch.float32)
            terms = BatchTerms.make(prepared, c)
            rots = random_rotations(idx.numel(), generator=gen).to(device, torch.float32)
            _insert([bp], terms.u, terms.cc2, rots,
                    torch.zeros(idx.numel(), dtype=torch.long, device=device), subset, freq)
        vol = reconstruct(bp, tau2=None)
        vol = lowpass(vol, n * apix / shell, pixel_size_angstrom=apix, ndim=3) * mask3
        refs[0, k] = vol.cpu()
    s = n // 2 + 1
    model = Model3D(
        references=refs,
        class_fractions=torch.full((k_classes,), 1.0 / k_classes, dtype=torch.float64),
        sigma2=sigma2,
        tau2=volume_tau2(refs).cpu(),
        data_vs_prior=torch.zeros((1, k_classes, s), dtype=torch.float64),
        fsc=torch.zeros(s, dtype=torch.float64),
        resolution_angstrom=torch.full((k_classes,), float(n * apix / shell),
                                       dtype=torch.float64),
        pixel_size_angstrom=float(apix),
        current_shell=shell,
        healpix_order=int(options.healpix_order),
        local_search=False,
        sigma_angle_degrees=0.0,
        offset_range_px=float(options.offset_range_px),
        offset_step_px=float(options.offset_step_px),
        sigma_offset_angstrom=float(max(options.offset_range_px, 1.0) * apix),
    )
    state = Particles3D.start(offsets_px, torch.zeros(len(source), dtype=torch.long), None)
    state.class_index[:] = -1  # not yet scored (class 0 in the data STAR files until then)
    return model, state, RunningSums3D.zeros(k_classes, n, device)


def resolution_cap_shell(step: int, schedule: MinibatchSchedule, n: int, apix: float,
                         ini_high_angstrom: float) -> int:
    """Largest E-step shell allowed at ``step``: ``ini_high`` first, opened to Nyquist.

    Held at the ``ini_high`` shell for the initial phase of the schedule, then opened linearly
    (in spatial frequency) to Nyquist by the start of the final phase.
    """
    ini = _shell_of(ini_high_angstrom, n, apix)
    t = schedule.n_minibatches
    n_ini = round(schedule.initial_fraction * t)
    n_open = max(t - n_ini - round(schedule.final_fraction * t), 1)
    frac = min(1.0, max(0.0, (step - n_ini) / n_open))
    return round(ini + frac * (n // 2 - ini))


def minibatch_step_3d(
    model: Model3D,
    state: Particles3D,
    running: RunningSums3D,
    source: ParticleSource,
    options: InitialModelOptions,
    *,
    step: int,
    schedule: MinibatchSchedule,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> tuple[Model3D, Particles3D, dict[str, Any]]:
    """One step: E-step of the step's mini-batch (all particles at the last step), M-step.

    Updates ``running`` in place; returns the new model and particle state and the step's
    figures (resolution, <Pmax>, mini-batch size, weight).
    """
    n, apix = model.box_size, model.pixel_size_angstrom
    k_classes = model.n_classes
    eng = options.engine()
    last = step >= schedule.n_minibatches
    particles = (torch.arange(len(source)) if last
                 else schedule.particles(step, options.seed))
    eta = 1.0 if last else schedule.weight(step)
    cap = resolution_cap_shell(step, schedule, n, apix, options.ini_high_angstrom)
    shell = max(2, min(model.current_shell, cap))
    subset = FourierSubset.within(n, shell, device=device)
    full = FourierSubset.within(n, n // 2, min_shell=0, device=device)
    mask3 = reference_mask(n, eng, apix, device)
    sampling = OrientationSampling.global_grid(model.healpix_order, "C1")
    translations = Translations.make(
        translation_grid(model.offset_range_px, model.offset_step_px), model.offset_step_px,
        subset, None)
    log_pi = torch.log(model.class_fractions.to(device, torch.float32).clamp(min=1e-30))
    batch = batch_size_3d(translations, sampling, k_classes, eng)
    refs = model.references[0].to(device) * mask3
    projectors = [make_projector(refs[k]) for k in range(k_classes)]
    coarse = coarse_slices(projectors, sampling, freq_px(subset))
    stats = empty_statistics_3d(k_classes, n, model.sigma2.shape[0], subset, device)
    new = copy_state_3d(state)
    expectation_pass_3d(
        model, state, new, source, eng, members=particles, projectors=projectors,
        coarse=coarse, stats=stats, sampling=sampling, translations=translations,
        subset=subset, full=full, coarse_index=None, log_pi=log_pi, batch=batch,
        device=device, progress=progress)
    n_batch = float(stats.count.sum())
    running.update(stats, eta=eta, scale=len(source) / max(n_batch, 1.0))
    reseeded: list[int] = []
    if k_classes > 1 and step <= schedule.n_minibatches * (1.0 - schedule.final_fraction):
        reseeded = reseed_inactive_classes(
            running, threshold=options.class_inactivity_threshold,
            generator=torch.Generator().manual_seed(int(options.seed) * 7919 + step))
    new_model = _maximise(model, stats, running, subset, full, options, eta=eta, device=device)
    info: dict[str, Any] = {
        "step": step,
        "minibatch_size": int(n_batch),
        "minibatch_weight": round(eta, 5),
        "resolution_used_angstrom": round(n * apix / shell, 3),
        "resolution_angstrom": new_model.resolution_angstrom.tolist(),
        "class_fractions": new_model.class_fractions.tolist(),
        "reseeded_classes": [c + 1 for c in reseeded],
        "average_pmax": float(stats.pmax_sum) / max(n_batch, 1.0),
        "angular_spread_degrees": float(stats.angular_spread) / max(n_batch, 1.0),
        "log_likelihood": float(stats.log_likelihood),
    }
    new_model.average_pmax = info["average_pmax"]
    new_model.angular_spread_degrees = info["angular_spread_degrees"]
    new_model.log_likelihood = info["log_likelihood"]
    new_model.finished = last
    if not bool(torch.isfinite(new_model.references).all()):
        raise FloatingPointError(f"mini-batch {step}: the maps are not finite")
    return new_model, new, info


def _maximise(
    model: Model3D,
    stats: Statistics3D,
    running: RunningSums3D,
    subset: FourierSubset,
    full: FourierSubset,
    options: InitialModelOptions,
    *,
    eta: float,
    device: torch.device,
) -> Model3D:
    """M-step from the running sums; noise and offset prior as running averages."""
    n, apix = model.box_size, model.pixel_size_angstrom
    s = n // 2 + 1
    eng = options.engine()
    total = float(running.class_mass.sum())
    fractions = (running.class_mass / total if total > 0 else model.class_fractions.clone())
    n_part = float(stats.count.sum())
    sigma_offset_b = math.sqrt(max(float(stats.offset_sq_px2) / (2.0 * max(n_part, 1.0)),
                                   1e-6)) * apix
    sigma_offset = (1.0 - eta) * model.sigma_offset_angstrom + eta * sigma_offset_b
    sigma2 = model.sigma2.to(device).clone()
    full_counts = full.shell_counts.to(device)
    for g in range(sigma2.shape[0]):
        n_g = float(stats.count[g])
        if n_g <= 0:
            continue
        inv_c = 2.0 * subset.per_coefficient(sigma2[g]) / subset.multiplicity.to(device)
        residual = stats.power[g] + subset.shell_sums(stats.residual[g] * inv_c)
        value = residual / (n_g * full_counts.clamp(min=1))
        batch_sigma2 = torch.where((full_counts > 0) & (value > 0), value, sigma2[g])
        sigma2[g] = (1.0 - eta) * sigma2[g] + eta * batch_sigma2
    mask3 = reference_mask(n, eng, apix, device)
    old_tau2 = volume_tau2(model.references[0] * mask3.cpu())  # (K, S)
    k_classes = model.n_classes
    refs = torch.zeros_like(model.references)
    tau2 = torch.zeros((1, k_classes, s), dtype=torch.float64)
    dvp = torch.zeros_like(tau2)
    resolution = torch.full((k_classes,), 999.0, dtype=torch.float64)
    shells = torch.arange(s)
    next_shell = 2
    for k in range(k_classes):
        bp = running.backprojector(k)
        if not bool((bp.weight > 0).any()):
            refs[0, k] = model.references[0, k]
            tau2[0, k] = model.tau2[0, k]
            continue
        w = shell_mean_weight(bp).cpu()
        t2 = torch.where(shells < 2, torch.full_like(old_tau2[k], 1e30), old_tau2[k])
        tau2[0, k] = t2
        snr = options.tau2_fudge * old_tau2[k] * w
        dvp[0, k] = snr
        vol = reconstruct(bp, tau2=t2.to(device), tau2_fudge=options.tau2_fudge)
        refs[0, k] = (vol * mask3).cpu()
        below = snr[1:] < 1.0
        last = int(below.to(torch.int64).argmax()) if bool(below.any()) else s - 1
        resolution[k] = n * apix / max(last, 1)
        if float(fractions[k]) > 0.5 / k_classes:
            next_shell = max(next_shell, last)
    return replace(
        model,
        references=refs,
        class_fractions=fractions.to(torch.float64),
        sigma2=sigma2.cpu(),
        tau2=tau2,
        data_vs_prior=dvp,
        resolution_angstrom=resolution,
        current_shell=int(min(n // 2, next_shell + _INCR_SHELLS)),
        sigma_offset_angstrom=float(sigma_offset),
        iteration=model.iteration + 1,
    )
