"""Reference-free 2D classification by expectation-maximisation (RELION's ``relion_refine`` 2D).

:func:`initialise` makes the starting model from the particles, :func:`iterate` runs one
E-step over all particles (in batches, per optics group) and the M-step. See the package
docstring of :mod:`cryospa.engine` for the model and its references.

Initialisation (RELION's, ``MlOptimiser::calculateSumOfPowerSpectraAndAverageImage`` and
``MlModel::initialiseDataVersusPrior``): particles centred at their input origins and masked;
the noise spectrum of each optics group is the mean power spectrum of its images minus the power
spectrum of their average; the starting resolution is where ``T tau2_avg N / (K sigma2)`` (the
spectral SNR of the average image shared by ``K`` classes) drops below 1, plus ``incr_size``
shells; the references are the averages of ``K`` random subsets of the particles, low-pass
filtered at that resolution and masked; the offset prior starts with ``sigma = offset_range``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from cryospa.core.class_features import density_centres
from cryospa.core.filters import lowpass
from cryospa.core.fourier import shift_images
from cryospa.core.masks import soft_circle
from cryospa.engine.coefficients import FourierSubset
from cryospa.engine.data import ParticleSource, centre_and_mask, centred_rfft, prepare_batch
from cryospa.engine.estep import BatchTerms, EStepSettings, PoseGrid, expectation
from cryospa.engine.model import ClassModel, ParticleState
from cryospa.engine.mstep import (
    SufficientStatistics,
    class_resolution_shells,
    expected_pose_errors,
    power_spectrum,
    reconstruct_references,
    update_noise,
)
from cryospa.engine.sampling import InPlaneSampling, rotations_2d

__all__ = [
    "Class2DOptions",
    "PassSetup",
    "coarse_shell",
    "expectation_pass",
    "group_batches",
    "initial_noise",
    "initialise",
    "iterate",
    "maximise",
    "particle_mask",
    "summarise_iteration",
]

#: Fallback for a non-positive initial noise estimate, relative to the mean image power.
_MIN_SIGMA2_FRACTION = 1e-3


@dataclass(frozen=True)
class Class2DOptions:
    """Settings of a 2D classification (RELION's option names in brackets).

    Attributes
    ----------
    n_classes
        ``K`` (``--K``).
    particle_diameter_angstrom
        Diameter of the soft circular mask on particles and references (``--particle_diameter``).
    tau2_fudge
        Regularisation ``T`` (``--tau2_fudge``; 2 for 2D as RELION's GUI).
    psi_step_degrees
        Fine in-plane step; the coarse pass uses twice it (GUI "in-plane angular sampling").
    offset_range_px, offset_step_px
        Translation search radius and fine step in pixels (``--offset_range``, GUI step).
    ctf
        CTF correction (``--ctf``).
    ignore_ctf_until_first_peak
        ``|CTF| = 1`` below the first peak (``--ctf_intact_first_peak``); used by the source.
    zero_mask
        Zeros outside the particle mask (``--zero_mask``), else noise.
    adaptive
        Adaptive oversampling (``--oversampling 1``), else exhaustive on the fine grid.
    adaptive_fraction
        ``--adaptive_fraction``.
    incr_size
        Shells beyond the current resolution used in the E-step (``--incr_size``).
    strict_highres_angstrom
        Never use frequencies beyond this resolution in the E-step (``--strict_highres_exp``;
        0: no limit).
    ini_high_angstrom
        Starting resolution (0: from the data, as RELION).
    mask_edge_px
        Soft edge of the mask in pixels (``--maskedge``, 5).
    batch_size
        Particles per E-step batch (0: from a memory budget of ``memory_mb`` (MB)).
    memory_mb
        Budget for the batch tensors when ``batch_size`` is 0.
    seed
        Random seed (subsets of the initial references, noise outside the mask).
    centre_classes
        Move each class average's centre of mass to the box centre after every M-step
        (RELION's ``--center_classes``); the particles' offsets follow.
    """

    n_classes: int
    particle_diameter_angstrom: float
    tau2_fudge: float = 2.0
    psi_step_degrees: float = 6.0
    offset_range_px: float = 5.0
    offset_step_px: float = 1.0
    ctf: bool = True
    ignore_ctf_until_first_peak: bool = False
    zero_mask: bool = True
    adaptive: bool = True
    adaptive_fraction: float = 0.999
    incr_size: int = 10
    strict_highres_angstrom: float = 0.0
    ini_high_angstrom: float = 0.0
    mask_edge_px: float = 5.0
    batch_size: int = 0
    memory_mb: float = 256.0
    seed: int = 0
    centre_classes: bool = False

    def sampling(self) -> InPlaneSampling:
        """The in-plane pose grids."""
        return InPlaneSampling.make(
            psi_step_degrees=self.psi_step_degrees,
            offset_range_px=self.offset_range_px,
            offset_step_px=self.offset_step_px,
        )

    def settings(self) -> EStepSettings:
        """E-step settings."""
        return EStepSettings(adaptive=self.adaptive, adaptive_fraction=self.adaptive_fraction)

    def to_json(self) -> dict[str, Any]:
        """As a JSON-able dict."""
        return asdict(self)


def particle_mask(
    box_size: int, options: Class2DOptions, pixel_size_angstrom: float, device: torch.device
) -> torch.Tensor:
    """``(n, n)`` soft circle of the particle diameter (RELION's raised-cosine edge outside)."""
    radius = options.particle_diameter_angstrom / (2.0 * pixel_size_angstrom)
    return soft_circle(box_size, radius, edge_width_px=options.mask_edge_px, device=device)


def group_batches(
    groups: torch.Tensor, batch_size: int, order: torch.Tensor | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(group, indices)`` batches of the particles ``order`` (all by default).

    One optics group at a time, in order.
    """
    members_all = torch.arange(groups.numel()) if order is None else order
    sub = groups[members_all]
    for g in torch.unique(sub).tolist():
        members = members_all[sub == g]
        for start in range(0, members.numel(), batch_size):
            yield int(g), members[start : start + batch_size]


def _batch_size(options: Class2DOptions, sampling: InPlaneSampling, n_coeff: int) -> int:
    if options.batch_size > 0:
        return options.batch_size
    k = options.n_classes
    t_f = sampling.fine_translations.shape[0]
    p_f = k * sampling.fine_psi.numel()
    # worst case per particle: the dense fine pass (Y, scores, weights, mask)
    per_particle = t_f * (n_coeff * 8 + p_f * 13)
    return int(min(1024, max(8, options.memory_mb * 2**20 // max(per_particle, 1))))


def coarse_shell(
    box_size: int, pixel_size: float, sampling: InPlaneSampling, options: Class2DOptions
) -> int:
    """Largest shell of the coarse pass (RELION's ``coarse_size``).

    Beyond the resolution ``pi d step_c / 360 / 1.5`` (``d`` the particle diameter, ``step_c``
    the coarse psi step) neighbouring coarse angles differ by more than the sampling can
    follow, so the coarse pass ignores those frequencies.
    """
    step = 360.0 / sampling.coarse_psi.numel()
    resolution = step / 360.0 * math.pi * options.particle_diameter_angstrom / 1.5
    return max(1, math.ceil(box_size * pixel_size / resolution))


def _limit_shell(shell: int, box_size: int, pixel_size: float, options: Class2DOptions) -> int:
    top = box_size // 2
    if options.strict_highres_angstrom > 0:
        top = min(top, int(box_size * pixel_size / options.strict_highres_angstrom))
    return max(1, min(shell, top))


def initialise(
    source: ParticleSource,
    offsets_px: torch.Tensor,
    options: Class2DOptions,
    *,
    device: torch.device,
) -> tuple[ClassModel, ParticleState]:
    """The starting model (see the module docstring) and the particles' starting state."""
    n = source.box_size
    apix = source.pixel_size_angstrom
    n_part = len(source)
    k = options.n_classes
    if n_part < k:
        raise ValueError(f"{k} classes need at least {k} particles, got {n_part}")
    full = FourierSubset.within(n, n // 2, min_shell=0, device=device)
    mask = particle_mask(n, options, apix, device)
    groups = source.optics_groups()
    n_groups = int(groups.max()) + 1 if groups.numel() else 1
    gen = torch.Generator().manual_seed(int(options.seed))
    assign = torch.empty(n_part, dtype=torch.long)
    assign[torch.randperm(n_part, generator=gen)] = torch.arange(n_part) % k
    assign_dev = assign.to(device)
    shells = n // 2 + 1
    power = torch.zeros((n_groups, shells), dtype=torch.float64, device=device)
    count = torch.zeros(n_groups, dtype=torch.float64, device=device)
    group_sum = torch.zeros((n_groups, n, n), dtype=torch.float64, device=device)
    class_sum = torch.zeros((k, n, n), dtype=torch.float64, device=device)
    class_count = torch.zeros(k, dtype=torch.float64, device=device)
    offsets = offsets_px.to(torch.float64)
    for g, idx in group_batches(groups, 256):
        images, _ = source.load(idx, device, ctf=False)
        masked = centre_and_mask(images, offsets[idx].to(device), mask, full=full)
        ft = full.gather(centred_rfft(masked))
        power[g] += full.shell_sums((ft.abs() ** 2).to(torch.float64)).sum(0)
        count[g] += idx.numel()
        group_sum[g] += masked.sum(0).to(torch.float64)
        members = assign_dev[idx.to(device)]
        class_sum.index_add_(0, members, masked.to(torch.float64))
        class_count.index_add_(0, members, torch.ones_like(members, dtype=torch.float64))
    sigma2 = initial_noise(power, count, group_sum, full)
    mean_sigma2 = (sigma2 * count[:, None]).sum(0) / count.sum()
    average = group_sum.sum(0) / count.sum()
    tau2_avg = power_spectrum(average[None], full)[0]
    if options.ini_high_angstrom > 0:
        start = round(n * apix / options.ini_high_angstrom)
    else:
        ssnr = options.tau2_fudge * tau2_avg * (n_part / k) / mean_sigma2
        start = int(class_resolution_shells(ssnr[None], n // 2)[0])
    shell = _limit_shell(start + options.incr_size, n, apix, options)
    refs = (class_sum / class_count.clamp(min=1)[:, None, None]).to(torch.float32)
    refs = lowpass(refs, n * apix / shell, pixel_size_angstrom=apix, ndim=2) * mask
    model = ClassModel(
        references=refs.cpu(),
        class_fractions=torch.full((k,), 1.0 / k, dtype=torch.float64),
        sigma2=sigma2.cpu(),
        tau2=power_spectrum(refs, full).cpu(),
        data_vs_prior=torch.zeros((k, shells), dtype=torch.float64),
        resolution_angstrom=torch.full((k,), 999.0, dtype=torch.float64),
        accuracy_rotation_degrees=torch.full((k,), 999.0, dtype=torch.float64),
        accuracy_translation_angstrom=torch.full((k,), 999.0, dtype=torch.float64),
        sigma_offset_angstrom=float(max(options.offset_range_px, 1.0) * apix),
        current_shell=shell,
        pixel_size_angstrom=float(apix),
        iteration=0,
    )
    return model, ParticleState.start(offsets_px)


def initial_noise(
    power: torch.Tensor, count: torch.Tensor, group_sum: torch.Tensor, full: FourierSubset
) -> torch.Tensor:
    """RELION's first noise spectra: mean image power minus the power of the average image.

    ``power`` ``(G, S)`` summed full-grid image power per shell, ``count`` ``(G,)`` images and
    ``group_sum`` ``(G, n, n)`` summed (centred, masked) images per optics group; returns
    ``(G, S)`` float64 (a floor of 1e-3 of the mean power; empty groups get the mean of the
    others).
    """
    counts = full.shell_counts.to(power.device).clamp(min=1)
    sigma2 = torch.zeros_like(power, dtype=torch.float64)
    for g in range(power.shape[0]):
        if count[g] <= 0:
            continue
        mean_power = power[g] / (count[g] * counts)
        avg_power = power_spectrum((group_sum[g] / count[g])[None], full)[0]
        value = mean_power - avg_power
        floor = _MIN_SIGMA2_FRACTION * mean_power.mean()
        sigma2[g] = torch.where(value > floor, value, floor)
    used = count > 0
    sigma2[~used] = sigma2[used].mean(0)
    return sigma2


@dataclass
class PassSetup:
    """Everything an E-step pass of one iteration shares: coefficients, poses, mask, noise."""

    subset: FourierSubset
    full: FourierSubset
    sampling: InPlaneSampling
    grid: PoseGrid
    mask: torch.Tensor
    sigma2: torch.Tensor
    c: torch.Tensor
    log_norm: list[float]

    @classmethod
    def make(cls, model: ClassModel, options: Class2DOptions, device: torch.device) -> PassSetup:
        """Project the model's references at the sampling of ``options``."""
        n = model.box_size
        apix = model.pixel_size_angstrom
        subset = FourierSubset.within(n, model.current_shell, device=device)
        sampling = options.sampling()
        grid = PoseGrid.make(model.references.to(device), sampling, subset,
                             adaptive=options.adaptive,
                             coarse_shell=coarse_shell(n, apix, sampling, options))
        sigma2 = model.sigma2.to(device=device, dtype=torch.float64)
        mult = subset.multiplicity.to(torch.float64)
        sig_m = sigma2[:, subset.shell]  # (G, M)
        return cls(
            subset=subset,
            full=FourierSubset.within(n, n // 2, min_shell=0, device=device),
            sampling=sampling,
            grid=grid,
            mask=particle_mask(n, options, apix, device),
            sigma2=sigma2,
            c=(mult / (2.0 * sig_m)).to(torch.float32),
            log_norm=(-(mult / 2.0) * torch.log(math.pi * sig_m)).sum(1).tolist(),
        )

    def empty_statistics(self, model: ClassModel, device: torch.device) -> SufficientStatistics:
        """Zero sums for this pass."""
        return SufficientStatistics.zeros(
            n_groups=self.sigma2.shape[0],
            n_poses=model.n_classes * self.sampling.fine_psi.numel(),
            n_coefficients=self.subset.size,
            n_shells=model.box_size // 2 + 1,
            n_classes=model.n_classes,
            device=device,
        )


def expectation_pass(
    model: ClassModel,
    state: ParticleState,
    source: ParticleSource,
    options: Class2DOptions,
    setup: PassSetup,
    stats: SufficientStatistics,
    *,
    device: torch.device,
    particles: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[ParticleState, int]:
    """The E-step over ``particles`` (all by default), summed into ``stats``.

    Returns the particles' new state (only those rows change) and the number of fine poses
    scored.
    """
    apix = model.pixel_size_angstrom
    groups = source.optics_groups()
    n_groups = setup.sigma2.shape[0]
    if int(groups.max()) >= n_groups:
        raise ValueError(f"particles use optics group {int(groups.max()) + 1} but the model "
                         f"has {n_groups} noise spectra")
    log_pi = torch.log(model.class_fractions.to(device=device, dtype=torch.float32))
    sigma_px = model.sigma_offset_angstrom / apix
    settings = options.settings()
    new = ParticleState(
        offsets_px=state.offsets_px.clone(),
        class_index=state.class_index.clone(),
        psi_degrees=state.psi_degrees.clone(),
        max_probability=state.max_probability.clone(),
        significant_samples=state.significant_samples.clone(),
        log_likelihood=state.log_likelihood.clone()
        if state.log_likelihood.numel() == len(source)
        else torch.zeros(len(source), dtype=torch.float64),
    )
    fine_poses = 0
    batch_size = _batch_size(options, setup.sampling, setup.subset.size)
    fine_psi = setup.sampling.fine_psi.to(device)
    grid = setup.grid
    order = torch.arange(len(source)) if particles is None else particles.cpu()
    for number, (g, idx) in enumerate(group_batches(groups, batch_size, order)):
        images, ctf = source.load(idx, device, ctf=options.ctf)
        generator = None
        if not options.zero_mask:
            generator = torch.Generator(device=device)
            generator.manual_seed(int(options.seed) * 1_000_003 + model.iteration * 7919 + number)
        batch = prepare_batch(
            idx.to(device), g, images, ctf, state.offsets_px[idx].to(device),
            subset=setup.subset, full=setup.full, mask=setup.mask,
            noise_sigma2=None if options.zero_mask else setup.sigma2[g], generator=generator,
        )
        terms = BatchTerms.make(batch, setup.c[g])
        result = expectation(
            batch, terms, grid, log_pi=log_pi, sigma_offset_px=sigma_px,
            log_norm=float(setup.log_norm[g]), settings=settings, stats=stats,
        )
        shift = grid.fine_shifts[result.translation_index].to(torch.float64)
        new.offsets_px[idx] = (state.offsets_px[idx].to(device) + shift).cpu()
        new.class_index[idx] = result.class_index.cpu()
        psi = fine_psi[result.psi_index].to(torch.float64)
        new.psi_degrees[idx] = (torch.remainder(psi + 180.0, 360.0) - 180.0).cpu()
        new.max_probability[idx] = result.max_probability.cpu()
        new.significant_samples[idx] = result.significant.cpu()
        new.log_likelihood[idx] = result.log_likelihood.cpu()
        fine_poses += int(result.fine_poses.sum())
        if progress is not None:
            progress(int(idx.numel()))
    return new, fine_poses


def summarise_iteration(
    model: ClassModel,
    new_model: ClassModel,
    state: ParticleState,
    new_state: ParticleState,
    setup: PassSetup,
    options: Class2DOptions,
    *,
    n_scored: float,
    fine_poses: int,
    seconds: tuple[float, float],
    centring_px: torch.Tensor | None = None,
) -> dict[str, Any]:
    """A JSON-able summary of an iteration (log-likelihood, classes, resolution, timing).

    ``centring_px``: the ``(K, 2)`` shifts of :func:`centre_classes`, if any.
    """
    n = model.box_size
    apix = model.pixel_size_angstrom
    sampling = setup.sampling
    seen = (state.class_index >= 0) & (new_state.class_index >= 0)
    changed = (
        float((new_state.class_index[seen] != state.class_index[seen]).to(torch.float64).mean())
        if bool(seen.any()) else 1.0
    )
    info: dict[str, Any] = {} if centring_px is None else {
        "class_centring_px": [round(float(v), 3) for v in centring_px.norm(dim=1)]}
    return info | {
        "iteration": new_model.iteration,
        "log_likelihood": new_model.log_likelihood,
        "average_pmax": new_model.average_pmax,
        "class_fractions": [round(float(v), 6) for v in new_model.class_fractions],
        "class_resolution_angstrom": [round(float(v), 3) for v in new_model.resolution_angstrom],
        "shell_used": setup.subset.max_shell,
        "resolution_used_angstrom": round(n * apix / setup.subset.max_shell, 3),
        "next_resolution_angstrom": round(new_model.current_resolution_angstrom, 3),
        "sigma_offset_angstrom": round(new_model.sigma_offset_angstrom, 4),
        "changed_class_fraction": round(changed, 6),
        "fine_poses_per_particle": round(fine_poses / max(n_scored, 1.0), 2),
        "fine_poses_exhaustive": int(sampling.fine_translations.shape[0] * model.n_classes
                                     * sampling.fine_psi.numel()),
        "coarse_shell": min(coarse_shell(n, apix, sampling, options), setup.subset.max_shell),
        "batch_size": _batch_size(options, sampling, setup.subset.size),
        "seconds_expectation": round(seconds[0], 3),
        "seconds_maximisation": round(seconds[1], 3),
    }


def iterate(
    model: ClassModel,
    state: ParticleState,
    source: ParticleSource,
    options: Class2DOptions,
    *,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> tuple[ClassModel, ParticleState, dict[str, Any]]:
    """One EM iteration: E-step over all particles, then the M-step.

    Returns the new model, the particles' new state (best poses, offsets updated) and a
    JSON-able summary (log-likelihood, class fractions, resolutions, timing).
    """
    t0 = time.perf_counter()
    setup = PassSetup.make(model, options, device)
    stats = setup.empty_statistics(model, device)
    new_state, fine_poses = expectation_pass(model, state, source, options, setup, stats,
                                             device=device, progress=progress)
    t_e = time.perf_counter()
    new_model = maximise(model, stats, setup, options)
    shifts = centre_classes(new_model, new_state, setup, options)
    info = summarise_iteration(model, new_model, state, new_state, setup, options,
                    n_scored=float(stats.count.sum()), fine_poses=fine_poses,
                    seconds=(t_e - t0, time.perf_counter() - t_e), centring_px=shifts)
    return new_model, new_state, info


#: Classes whose centre of mass is closer than this to the box centre are not moved (pixels).
MIN_CENTRING_PX = 0.5


def centre_classes(
    model: ClassModel, state: ParticleState, setup: PassSetup, options: Class2DOptions
) -> torch.Tensor:
    """Move every class average's density to the box centre, in place (``--center_classes``).

    The centre of mass ``c_k`` of the density above the median inside the particle mask (the
    feature ``select --auto`` scores) is moved to the box centre: ``A_k(r) <- A_k(r + c_k)``,
    masked again. A particle of class ``k`` at in-plane angle psi matched ``R_psi A_k``, so its
    offset becomes ``origin - R_psi c_k`` and it still matches the moved average. Without this
    a class can drift off centre (nothing in the likelihood pins where in the box a class sits;
    only the offset prior pulls weakly), and off-centre averages make poor picking templates.

    Returns the ``(K, 2)`` shifts ``c_k`` (pixels, (x, y); zero for classes left alone).
    """
    k = model.n_classes
    shifts = torch.zeros((k, 2), dtype=torch.float64)
    if not options.centre_classes:
        return shifts
    radius = options.particle_diameter_angstrom / (2.0 * model.pixel_size_angstrom)
    centres = density_centres(model.references, radius)
    move = (centres.norm(dim=1) > MIN_CENTRING_PX) & (model.class_fractions.cpu() > 0)
    if not bool(move.any()):
        return shifts
    shifts[move] = centres[move]
    mask = setup.mask.to(model.references.device, model.references.dtype)
    moved = shift_images(model.references[move], (-shifts[move]).to(torch.float32)) * mask
    model.references[move] = moved.to(model.references.dtype)
    seen = state.class_index >= 0
    cls = state.class_index.clamp(min=0)
    rot = rotations_2d(state.psi_degrees.to(torch.float64))  # (N, 2, 2)
    delta = (rot @ shifts[cls][:, :, None])[:, :, 0]
    state.offsets_px -= torch.where(seen[:, None], delta, torch.zeros_like(delta)).to(
        state.offsets_px.dtype)
    return shifts


def maximise(
    model: ClassModel,
    stats: SufficientStatistics,
    setup: PassSetup,
    options: Class2DOptions,
) -> ClassModel:
    """The M-step (see :mod:`cryospa.engine.mstep`): the next model from the E-step's sums."""
    grid, subset, full, sampling, mask = (
        setup.grid, setup.subset, setup.full, setup.sampling, setup.mask)
    n = model.box_size
    apix = model.pixel_size_angstrom
    k = model.n_classes
    device = stats.data.device
    n_part = float(stats.count.sum())
    d, w = stats.backprojection_sums(subset)
    refs, mean_w = reconstruct_references(
        d, w, subset=subset, psi_degrees=sampling.fine_psi, tau2=model.tau2.to(device),
        tau2_fudge=options.tau2_fudge, mask=mask,
    )
    inside = torch.arange(n // 2 + 1, device=device) <= subset.max_shell
    data_vs_prior = options.tau2_fudge * model.tau2.to(device) * mean_w * inside
    fractions = stats.class_mass / max(n_part, 1e-30)
    res_shell = class_resolution_shells(data_vs_prior, subset.max_shell)
    res_shell = torch.where(fractions > 0, res_shell, torch.zeros_like(res_shell))
    resolution = torch.where(
        res_shell > 0, n * apix / res_shell.clamp(min=1).to(torch.float64),
        torch.full_like(res_shell, 999, dtype=torch.float64),
    )
    best = int(res_shell.max()) if res_shell.numel() else 0
    next_shell = _limit_shell(best + options.incr_size, n, apix, options)
    sigma2 = update_noise(stats, grid.fine.values, subset=subset, full=full,
                          sigma2=model.sigma2.to(device))
    sigma_offset = math.sqrt(float(stats.offset_sq_px2) / (2.0 * max(n_part, 1e-30))) * apix
    mass = stats.class_mass.clamp(min=1e-30)
    mean_cc2 = stats.weight.sum(0).reshape(k, -1, subset.size).sum(1) / mass[:, None].to(
        torch.float32)
    acc_rot, acc_trans = expected_pose_errors(refs, mean_cc2, subset=subset,
                                              pixel_size_angstrom=apix)
    empty = (fractions <= 0).cpu()
    acc_rot[empty] = 999.0
    acc_trans[empty] = 999.0
    return ClassModel(
        references=refs.cpu(),
        class_fractions=fractions.cpu(),
        sigma2=sigma2.cpu(),
        tau2=power_spectrum(refs, full).cpu(),
        data_vs_prior=data_vs_prior.cpu(),
        resolution_angstrom=resolution.cpu(),
        accuracy_rotation_degrees=acc_rot,
        accuracy_translation_angstrom=acc_trans,
        sigma_offset_angstrom=float(max(sigma_offset, 1e-3 * apix)),
        current_shell=next_shell,
        pixel_size_angstrom=apix,
        iteration=model.iteration + 1,
        log_likelihood=float(stats.log_likelihood),
        average_pmax=float(stats.pmax_sum) / max(n_part, 1.0),
    )
