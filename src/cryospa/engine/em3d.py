"""3D classification and gold-standard auto-refinement (RELION's ``relion_refine`` in 3D).

One iteration (:func:`iterate_3d`): the E-step (:mod:`cryospa.engine.estep3d`) over every
particle against the references of its half-set (refinement) or all classes (classification),
back-projecting into 3D accumulators as it goes, then the M-step (:func:`maximise_3d`):

* class fractions, the offset prior and the noise spectra per optics group as in 2D
  (:mod:`cryospa.engine.mstep`);
* symmetry imposed on the accumulators
  (:func:`cryospa.core.backprojection.symmetrise_backprojector`);
* gold-standard refinement (Scheres & Chen 2012, Nat. Methods 9:853): each half-set is
  reconstructed from its own particles; the FSC between the two unregularised half maps gives
  the spectral SNR of a half map ``FSC / (1 - FSC)`` and hence ``tau2 = SNR / mean(W)`` per
  shell, the Wiener regulariser of each half's reconstruction; the resolution (FSC 0.143) is
  reported, and the next E-step uses the coefficients up to where ``FSC >= 0.5`` plus
  ``incr_size`` shells (RELION: where the half map's SNR ``data_vs_prior`` drops below 1);
* classification: each class is also reconstructed from every other batch of particles on
  its own; the FSC ``F_k`` between the two parts gives the class's spectral SNR
  ``2 F_k / (1 - F_k)`` and hence ``tau2_k``; its resolution is where ``T`` times that SNR
  drops below 1 (RELION's ``data_vs_prior``). Estimating ``tau2`` from the data rather than
  from the reference's power lets a reference low-passed to ``ini_high`` gain resolution.

Auto-sampling (RELION's ``updateAngularSampling`` / ``checkConvergence``, simplified): when an
iteration brings no resolution gain and the mean change of the particles' orientations stops
shrinking (or is below 40 % of the angular step), the HEALPix order goes up by one (offset range
and step halve) as long as the posterior is narrower than the current fine step (a finer grid
can still help); from ``auto_local_order`` on, searches are local around each particle's
orientation (Gaussian prior of one coarse step). When the sampling cannot usefully get finer and
neither resolution nor orientations change any more, a final iteration runs at full Nyquist and
both halves are joined (``tau2`` from the FSC of the whole data, ``sqrt(2 FSC / (1 + FSC))``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from cryospa.core import _padded_fourier as pf
from cryospa.core.backprojection import (
    BackProjector,
    make_backprojector,
    reconstruct,
    symmetrise_backprojector,
)
from cryospa.core.filters import lowpass
from cryospa.core.fourier import centre_to_origin
from cryospa.core.fsc import ShellGrid, fsc
from cryospa.core.masks import soft_circle, soft_sphere
from cryospa.core.projection import make_projector, project_points
from cryospa.core.rotations import (
    euler_to_matrix,
    matrix_to_euler,
    random_rotations,
)
from cryospa.core.sampling import angular_step_degrees
from cryospa.core.symmetry import symmetry_operators
from cryospa.engine.coefficients import FourierSubset
from cryospa.engine.data import ParticleSource, centre_and_mask, centred_rfft, prepare_batch
from cryospa.engine.em2d import group_batches, initial_noise
from cryospa.engine.estep import BatchTerms, ReferenceSlices
from cryospa.engine.estep3d import (
    Statistics3D,
    Translations,
    angles_to,
    coarse_slices,
    expectation_3d,
    freq_px,
)
from cryospa.engine.sampling import translation_grid
from cryospa.engine.sampling3d import OrientationSampling

__all__ = [
    "Model3D",
    "Particles3D",
    "Refine3DOptions",
    "batch_size_3d",
    "copy_state_3d",
    "empty_statistics_3d",
    "expectation_pass_3d",
    "initialise_3d",
    "iterate_3d",
    "noise_and_scale",
    "update_schedule",
]


@dataclass(frozen=True)
class Refine3DOptions:
    """Settings of a 3D refinement or classification (RELION option names in brackets).

    Attributes
    ----------
    n_classes
        ``K`` (``--K``; 1 for refinement).
    particle_diameter_angstrom
        Soft circular mask on the particles and spherical mask on the references.
    symmetry
        Point group (``--sym``).
    gold_standard
        Two independent half-sets (``--split_random_halves``; refinement).
    auto_sampling
        Auto-refine schedule and convergence (``--auto_refine``); else ``max_iterations``
        iterations at fixed sampling.
    tau2_fudge
        ``T`` (1 for refinement, 4 for 3D classification as RELION's GUI).
    healpix_order
        Coarse HEALPix order (2: 15 degrees coarse, 7.5 degrees fine; ``--healpix_order``).
    auto_local_order
        Order from which auto-refine searches locally (``--auto_local_healpix_order``).
    max_order
        Finest coarse order auto-refine goes to.
    local_sigma_degrees
        Local searches from the start with this prior width (``--sigma_ang``; 0: global).
    offset_range_px, offset_step_px
        Translation search (fine step; pixels).
    ctf, ignore_ctf_until_first_peak, zero_mask
        As in 2D.
    adaptive_fraction, incr_size
        As RELION.
    ini_high_angstrom
        Low-pass of the initial reference and resolution of the first E-step (``--ini_high``).
    absolute_greyscale
        The reference is on the particles' scale (``--firstiter_cc`` off); else it is scaled to
        them first.
    max_iterations
        Iterations of a classification, or the cap of an auto-refinement.
    mask_edge_px, memory_mb, seed
        Soft edge of the masks; memory bound of the slice tensors (MB); random seed.
    """

    particle_diameter_angstrom: float
    n_classes: int = 1
    symmetry: str = "C1"
    gold_standard: bool = True
    auto_sampling: bool = True
    tau2_fudge: float = 1.0
    healpix_order: int = 2
    auto_local_order: int = 3
    max_order: int = 5
    local_sigma_degrees: float = 0.0
    offset_range_px: float = 5.0
    offset_step_px: float = 1.0
    ctf: bool = True
    ignore_ctf_until_first_peak: bool = False
    zero_mask: bool = True
    adaptive_fraction: float = 0.999
    incr_size: int = 10
    ini_high_angstrom: float = 40.0
    absolute_greyscale: bool = False
    max_iterations: int = 40
    mask_edge_px: float = 5.0
    memory_mb: float = 256.0
    seed: int = 0


@dataclass
class Model3D:
    """State of a 3D refinement / classification (checkpointed every iteration).

    Tensors: ``references`` ``(H, K, n, n, n)`` float32 (``H`` = 2 half-sets or 1);
    ``class_fractions`` ``(K,)``; ``sigma2`` ``(G, S)``; ``tau2`` and ``data_vs_prior``
    ``(H, K, S)``; ``fsc`` ``(S,)`` between the half maps (zeros without halves);
    ``resolution_angstrom`` ``(K,)``. Spectra in the engine's ortho units.
    """

    references: torch.Tensor
    class_fractions: torch.Tensor
    sigma2: torch.Tensor
    tau2: torch.Tensor
    data_vs_prior: torch.Tensor
    fsc: torch.Tensor
    resolution_angstrom: torch.Tensor
    pixel_size_angstrom: float
    current_shell: int
    healpix_order: int
    local_search: bool
    sigma_angle_degrees: float
    offset_range_px: float
    offset_step_px: float
    sigma_offset_angstrom: float
    iteration: int = 0
    log_likelihood: float = 0.0
    average_pmax: float = 0.0
    angular_spread_degrees: float = 999.0
    angle_change_degrees: float = 999.0
    offset_change_px: float = 999.0
    best_resolution_angstrom: float = 999.0
    iterations_without_gain: int = 0
    iterations_without_change: int = 0
    smallest_angle_change: float = 999.0
    final: bool = False
    finished: bool = False

    @property
    def box_size(self) -> int:
        """``n``."""
        return int(self.references.shape[-1])

    @property
    def n_classes(self) -> int:
        """``K``."""
        return int(self.references.shape[1])

    @property
    def n_halves(self) -> int:
        """2 for a gold-standard refinement, else 1."""
        return int(self.references.shape[0])


@dataclass
class Particles3D:
    """Per-particle state of a 3D refinement / classification.

    ``euler_degrees`` ``(N, 3)``, ``offsets_px`` ``(N, 2)`` (particle at ``centre - origin``),
    ``class_index``, ``half`` (0/1), ``max_probability``, ``significant_samples``,
    ``log_likelihood``, ``angular_spread`` (posterior mean angle to the best orientation, deg).
    """

    euler_degrees: torch.Tensor
    offsets_px: torch.Tensor
    class_index: torch.Tensor
    half: torch.Tensor
    max_probability: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    significant_samples: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    log_likelihood: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    angular_spread: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @classmethod
    def start(
        cls, offsets_px: torch.Tensor, half: torch.Tensor, euler_degrees: torch.Tensor | None
    ) -> Particles3D:
        """Before the first E-step."""
        n = offsets_px.shape[0]
        f64 = torch.float64
        return cls(
            euler_degrees=(torch.zeros((n, 3), dtype=f64) if euler_degrees is None
                           else euler_degrees.to(f64).clone()),
            offsets_px=offsets_px.to(f64).clone(),
            class_index=torch.zeros(n, dtype=torch.long),
            half=half.to(torch.long).clone(),
            max_probability=torch.zeros(n, dtype=f64),
            significant_samples=torch.zeros(n, dtype=torch.long),
            log_likelihood=torch.zeros(n, dtype=f64),
            angular_spread=torch.zeros(n, dtype=f64),
        )


def particle_mask_2d(n: int, options: Refine3DOptions, apix: float,
                     device: torch.device) -> torch.Tensor:
    """Soft circle of the particle diameter."""
    return soft_circle(n, options.particle_diameter_angstrom / (2 * apix),
                       edge_width_px=options.mask_edge_px, device=device)


def reference_mask(n: int, options: Refine3DOptions, apix: float,
                   device: torch.device) -> torch.Tensor:
    """Soft sphere of the particle diameter (RELION's ``--flatten_solvent``)."""
    return soft_sphere(n, options.particle_diameter_angstrom / (2 * apix),
                       edge_width_px=options.mask_edge_px, device=device)


def volume_tau2(volumes: torch.Tensor) -> torch.Tensor:
    """Mean power per shell of the central slices of ``(..., n, n, n)`` maps.

    ``(..., n // 2 + 1)`` float64 in the engine's ortho units (``|F_3D|^2 / n^2``).
    """
    n = volumes.shape[-1]
    ft = torch.fft.rfftn(centre_to_origin(volumes.to(torch.float64), 3), dim=(-3, -2, -1))
    grid = ShellGrid((n, n, n), device=volumes.device)
    return grid.mean(ft.abs() ** 2) / (n * n)


def shell_mean_weight(bp: BackProjector) -> torch.Tensor:
    """Mean reconstruction weight per shell of the unpadded box (``(n // 2 + 1,)`` float64)."""
    weight = bp.weight.clone()
    pf.symmetrise_half_plane(weight, 3, conj=False)
    w = pf.from_centred(weight, 3).real.to(torch.float64)
    npad = bp.padded_size
    grid = pf.output_frequencies(npad, 3, device=w.device, dtype=torch.float64)
    shell = torch.round(torch.linalg.vector_norm(grid, dim=-1) / bp.padding_factor).long()
    s = bp.box_size // 2 + 1
    keep = shell < s
    mult = torch.full_like(w, 2.0)
    mult[..., 0] = 1.0
    sums = torch.zeros(s, dtype=torch.float64, device=w.device)
    counts = torch.zeros_like(sums)
    sums.index_add_(0, shell[keep], (w * mult)[keep])
    counts.index_add_(0, shell[keep], mult[keep])
    return torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums)) * (
        bp.padding_factor ** 3)


def noise_and_scale(
    source: ParticleSource,
    offsets_px: torch.Tensor,
    reference: torch.Tensor,
    options: Refine3DOptions,
    device: torch.device,
    shell: int,
) -> tuple[torch.Tensor, float]:
    """Initial noise spectra per group (as 2D) and the reference's scale to the particles.

    The scale compares the average particle image with the average of CTF-multiplied
    projections of the reference at random orientations (both rotationally blurred blobs)
    over the shells up to ``shell``.
    """
    n, apix = source.box_size, source.pixel_size_angstrom
    full = FourierSubset.within(n, n // 2, min_shell=0, device=device)
    mask = particle_mask_2d(n, options, apix, device)
    groups = source.optics_groups()
    n_groups = int(groups.max()) + 1
    shells = n // 2 + 1
    power = torch.zeros((n_groups, shells), dtype=torch.float64, device=device)
    count = torch.zeros(n_groups, dtype=torch.float64, device=device)
    group_sum = torch.zeros((n_groups, n, n), dtype=torch.float64, device=device)
    low = FourierSubset.within(n, max(1, shell), device=device)
    proj = make_projector(reference.to(device, torch.float32))
    gen = torch.Generator().manual_seed(int(options.seed) + 17)
    x_sum = torch.zeros(low.size, dtype=torch.complex128, device=device)
    a_sum = torch.zeros_like(x_sum)
    used = 0
    for g, idx in group_batches(groups, 256):
        images, ctf = source.load(idx, device, ctf=options.ctf)
        masked = centre_and_mask(images, offsets_px[idx].to(device), mask, full=full)
        ft = centred_rfft(masked)
        power[g] += full.shell_sums((full.gather(ft).abs() ** 2).to(torch.float64)).sum(0)
        count[g] += idx.numel()
        group_sum[g] += masked.sum(0).to(torch.float64)
        if used < 2000:
            rots = random_rotations(idx.numel(), generator=gen).to(device, torch.float32)
            a = project_points(proj, rots, freq_px(low))[0] / n
            if ctf is not None:
                a = a * low.gather(ctf)
            x_sum += low.gather(ft).sum(0).to(torch.complex128)
            a_sum += a.sum(0).to(torch.complex128)
            used += idx.numel()
    sigma2 = initial_noise(power, count, group_sum, full)
    mult = low.multiplicity.to(device, torch.float64)
    num = (mult * (x_sum * a_sum.conj()).real).sum()
    den = (mult * a_sum.abs() ** 2).sum()
    scale = float(num / den) if float(den) > 0 and float(num) > 0 else 1.0
    return sigma2.cpu(), scale


def initialise_3d(
    source: ParticleSource,
    references: torch.Tensor,
    offsets_px: torch.Tensor,
    half: torch.Tensor,
    options: Refine3DOptions,
    *,
    device: torch.device,
    euler_degrees: torch.Tensor | None = None,
) -> tuple[Model3D, Particles3D]:
    """Starting model from ``(K, n, n, n)`` (or ``(n, n, n)``) references, low-passed.

    ``half`` ``(N,)`` 0/1: the particles' half-sets (ignored without ``gold_standard``).
    ``euler_degrees``: prior orientations (local searches from the start).
    """
    n, apix = source.box_size, source.pixel_size_angstrom
    refs = references.to(torch.float32)
    if refs.ndim == 3:
        refs = refs[None]
    if refs.shape[0] == 1 and options.n_classes > 1:
        refs = refs.expand(options.n_classes, -1, -1, -1).clone()
    if refs.shape[0] != options.n_classes:
        raise ValueError(f"{options.n_classes} classes but {refs.shape[0]} references")
    if tuple(refs.shape[-3:]) != (n, n, n):
        raise ValueError(f"references are {tuple(refs.shape[-3:])} voxels, particles {n} px")
    shell = max(1, round(n * apix / options.ini_high_angstrom)) if options.ini_high_angstrom > 0 \
        else n // 4
    shell = min(shell, n // 2)
    refs = lowpass(refs, n * apix / shell, pixel_size_angstrom=apix, ndim=3)
    sigma2, scale = noise_and_scale(source, offsets_px, refs[0], options, device, shell)
    if not options.absolute_greyscale:
        refs = refs * scale
    halves = 2 if options.gold_standard else 1
    refs_h = refs[None].expand(halves, -1, -1, -1, -1).clone()
    k = options.n_classes
    s = n // 2 + 1
    tau2 = volume_tau2(refs_h).cpu()
    local = options.local_sigma_degrees > 0
    model = Model3D(
        references=refs_h.cpu(),
        class_fractions=torch.full((k,), 1.0 / k, dtype=torch.float64),
        sigma2=sigma2,
        tau2=tau2,
        data_vs_prior=torch.zeros((halves, k, s), dtype=torch.float64),
        fsc=torch.zeros(s, dtype=torch.float64),
        resolution_angstrom=torch.full((k,), 999.0, dtype=torch.float64),
        pixel_size_angstrom=float(apix),
        current_shell=int(shell),
        healpix_order=int(options.healpix_order),
        local_search=local,
        sigma_angle_degrees=float(options.local_sigma_degrees),
        offset_range_px=float(options.offset_range_px),
        offset_step_px=float(options.offset_step_px),
        sigma_offset_angstrom=float(max(options.offset_range_px, 1.0) * apix),
    )
    h = half.to(torch.long) if options.gold_standard else torch.zeros_like(half, dtype=torch.long)
    return model, Particles3D.start(offsets_px, h, euler_degrees)


def _coarse_shell(model: Model3D, options: Refine3DOptions) -> int:
    """RELION's coarse size: the resolution neighbouring coarse samples can follow."""
    step = angular_step_degrees(model.healpix_order)
    res = step / 360.0 * math.pi * options.particle_diameter_angstrom / 1.5
    return max(1, min(model.current_shell, math.ceil(model.box_size * model.pixel_size_angstrom
                                                        / res)))



def empty_statistics_3d(k_classes: int, n: int, n_groups: int, subset: FourierSubset,
                        device: torch.device, *, split: bool = False) -> Statistics3D:
    """Zeroed E-step sums for ``k_classes`` classes (``split``: a second accumulator set)."""
    f64 = torch.float64
    return Statistics3D(
        backprojectors=[make_backprojector(n, device=device) for _ in range(k_classes)],
        residual=torch.zeros((n_groups, subset.size), dtype=f64, device=device),
        power=torch.zeros((n_groups, n // 2 + 1), dtype=f64, device=device),
        count=torch.zeros(n_groups, dtype=f64, device=device),
        class_mass=torch.zeros(k_classes, dtype=f64, device=device),
        offset_sq_px2=torch.zeros((), dtype=f64, device=device),
        log_likelihood=torch.zeros((), dtype=f64, device=device),
        pmax_sum=torch.zeros((), dtype=f64, device=device),
        angular_spread=torch.zeros((), dtype=f64, device=device),
        split_backprojectors=[make_backprojector(n, device=device)
                              for _ in range(k_classes)] if split else None,
    )


def copy_state_3d(state: Particles3D) -> Particles3D:
    """A copy whose per-particle tensors can be written without touching ``state``."""
    return replace(state, euler_degrees=state.euler_degrees.clone(),
                   offsets_px=state.offsets_px.clone(), class_index=state.class_index.clone(),
                   max_probability=state.max_probability.clone(),
                   significant_samples=state.significant_samples.clone(),
                   log_likelihood=state.log_likelihood.clone(),
                   angular_spread=state.angular_spread.clone())


#: Slice-sized tensors alive at once in the 3D E-step (measured: a 256 MB chunk budget per
#: tensor peaked at about 1.5 GB above the baseline in local searches).
_LIVE_SLICE_TENSORS = 6


def batch_size_3d(translations: Translations, sampling: OrientationSampling, k_classes: int,
                  options: Refine3DOptions) -> int:
    """Particles per E-step batch within ``options.memory_mb`` for the coarse scores."""
    budget = int(options.memory_mb * 2**20 / 8)
    per_particle = translations.coarse.shape[0] * sampling.n_coarse * k_classes * 3
    return int(max(8, min(512, budget // max(1, per_particle))))


def expectation_pass_3d(
    model: Model3D,
    state: Particles3D,
    new: Particles3D,
    source: ParticleSource,
    options: Refine3DOptions,
    *,
    members: torch.Tensor,
    projectors: list[Any],
    coarse: ReferenceSlices | None,
    stats: Statistics3D,
    sampling: OrientationSampling,
    translations: Translations,
    subset: FourierSubset,
    full: FourierSubset,
    coarse_index: torch.Tensor | None,
    log_pi: torch.Tensor,
    batch: int,
    device: torch.device,
    symmetry_ops: torch.Tensor | None = None,
    half: int = 0,
    k0: int = 0,
    progress: Callable[[int], None] | None = None,
) -> None:
    """E-step of the particles ``members`` against ``projectors`` (classes ``k0``, ...).

    Sums go into ``stats`` (every other batch into its ``split_backprojectors`` when set);
    each particle's best pose, class and posterior figures into ``new`` (from ``state``).
    """
    n, apix = model.box_size, model.pixel_size_angstrom
    mask2 = particle_mask_2d(n, options, apix, device)
    sigma2 = model.sigma2.to(device)
    mult = subset.multiplicity.to(device, torch.float64)
    sig_m = sigma2[:, subset.shell]
    c = (mult / (2.0 * sig_m)).to(torch.float32)
    log_norm = (-(mult / 2.0) * torch.log(math.pi * sig_m)).sum(1).tolist()
    sigma_px = model.sigma_offset_angstrom / apix
    # complex coefficients per slice tensor of the E-step: about this many of them (slices, their
    # powers, shifted images, weighted sums and projection buffers) are alive at once
    budget = int(options.memory_mb * 2**20 / 8 / _LIVE_SLICE_TENSORS)
    size = batch
    if stats.split_backprojectors is not None:  # about 8 batches: two balanced parts
        size = max(8, min(batch, math.ceil(members.numel() / 8)))
    for number, (g, idx) in enumerate(group_batches(source.optics_groups(), size, members)):
        target = stats
        if stats.split_backprojectors is not None and number % 2 == 1:
            target = replace(stats, backprojectors=stats.split_backprojectors)
        images, ctf = source.load(idx, device, ctf=options.ctf)
        generator = None
        if not options.zero_mask:
            generator = torch.Generator(device=device)
            generator.manual_seed(int(options.seed) * 1_000_003 + model.iteration * 7919
                                  + 104_729 * half + 7 * k0 + number)
        prepared = prepare_batch(
            idx.to(device), g, images, ctf, state.offsets_px[idx].to(device),
            subset=subset, full=full, mask=mask2,
            noise_sigma2=None if options.zero_mask else sigma2[g], generator=generator)
        terms = BatchTerms.make(prepared, c[g])
        base = euler_to_matrix(state.euler_degrees[idx]).to(device, torch.float32) \
            if sampling.local else None
        result = expectation_3d(
            prepared, terms, projectors=projectors, sampling=sampling, coarse=coarse,
            coarse_index=coarse_index, translations=translations, subset=subset,
            base_rotations=base, log_pi=log_pi, sigma_offset_px=sigma_px,
            log_norm=float(log_norm[g]), adaptive_fraction=options.adaptive_fraction,
            stats=target, slice_budget=budget, symmetry_ops=symmetry_ops)
        new.euler_degrees[idx] = matrix_to_euler(result.rotation.to(torch.float64)).cpu()
        new.offsets_px[idx] = (state.offsets_px[idx].to(device)
                               + result.shift_px.to(torch.float64)).cpu()
        new.class_index[idx] = result.class_index.cpu() + k0
        new.max_probability[idx] = result.max_probability.cpu()
        new.significant_samples[idx] = result.significant.cpu()
        new.log_likelihood[idx] = result.log_likelihood.cpu()
        new.angular_spread[idx] = result.angular_spread.cpu()
        if progress is not None:
            progress(int(idx.numel()))


def iterate_3d(
    model: Model3D,
    state: Particles3D,
    source: ParticleSource,
    options: Refine3DOptions,
    *,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
    seed_classes: bool = False,
) -> tuple[Model3D, Particles3D, dict[str, Any]]:
    """One E-step over all particles and the M-step; returns the new model, state and figures.

    ``seed_classes``: each particle is aligned only against the class in
    ``state.class_index`` (RELION's random class assignment in the first iteration of a 3D
    classification whose classes start from one reference).
    """
    n, apix = model.box_size, model.pixel_size_angstrom
    k_classes, halves = model.n_classes, model.n_halves
    shell = n // 2 if model.final else model.current_shell
    subset = FourierSubset.within(n, shell, device=device)
    full = FourierSubset.within(n, n // 2, min_shell=0, device=device)
    mask3 = reference_mask(n, options, apix, device)
    c_shell = n // 2 if model.final else _coarse_shell(model, options)
    coarse_index = (torch.nonzero(subset.shell <= c_shell).flatten()
                    if c_shell < subset.max_shell else None)
    if model.local_search:
        sampling = OrientationSampling.local_grid(model.healpix_order,
                                                  sigma_degrees=model.sigma_angle_degrees)
    else:
        sampling = OrientationSampling.global_grid(model.healpix_order, options.symmetry)
    translations = Translations.make(
        translation_grid(model.offset_range_px, model.offset_step_px), model.offset_step_px,
        subset, coarse_index)
    log_pi = torch.log(model.class_fractions.to(device, torch.float32).clamp(min=1e-30))
    n_groups = model.sigma2.shape[0]
    sym_ops = symmetry_operators(options.symmetry)
    sym_ops = sym_ops[torch.linalg.det(sym_ops) > 0].to(device, torch.float32)
    new = copy_state_3d(state)
    all_stats: list[Statistics3D] = []
    batch = batch_size_3d(translations, sampling, k_classes, options)

    for h in range(halves):
        members = torch.nonzero(state.half == h).flatten()
        refs = model.references[h].to(device) * mask3
        projectors = [make_projector(refs[k]) for k in range(k_classes)]
        coarse = None
        if not sampling.local:
            freq = freq_px(subset)
            coarse = coarse_slices(projectors, sampling,
                                   freq if coarse_index is None else freq[coarse_index])
        stats = empty_statistics_3d(k_classes, n, n_groups, subset, device,
                                    split=not options.gold_standard)
        if seed_classes:
            runs = [(torch.nonzero(state.class_index[members] == k).flatten(), k)
                    for k in range(k_classes)]
            jobs = [(members[sel], [projectors[k]], _class_view(stats, k), k)
                    for sel, k in runs]
        else:
            jobs = [(members, projectors, stats, 0)]
        for members_j, projectors_j, stats_j, k0 in jobs:
            coarse_j: ReferenceSlices | None = coarse
            if coarse is not None and seed_classes:
                p_c = sampling.n_coarse
                coarse_j = ReferenceSlices(
                    values=coarse.values[k0 * p_c:(k0 + 1) * p_c],
                    power=coarse.power[k0 * p_c:(k0 + 1) * p_c], n_classes=1, n_psi=p_c)
            log_pi_j = log_pi[k0:k0 + 1] if seed_classes else log_pi
            expectation_pass_3d(
                model, state, new, source, options, members=members_j, projectors=projectors_j,
                coarse=coarse_j, stats=stats_j, sampling=sampling, translations=translations,
                subset=subset, full=full, coarse_index=coarse_index, log_pi=log_pi_j,
                batch=batch, device=device, symmetry_ops=sym_ops, half=h, k0=k0,
                progress=progress)
        all_stats.append(stats)
        del coarse, projectors
    new_model, info = maximise_3d(model, all_stats, subset, full, options, device=device)
    # changes of the hidden variables (for the schedule)
    if model.iteration > 0:
        # up to symmetry: a jump to a symmetry mate is no change of the particle's view
        change = angles_to(euler_to_matrix(state.euler_degrees).to(torch.float32),
                            euler_to_matrix(new.euler_degrees).to(torch.float32)[:, None],
                            sym_ops.cpu())[:, 0]
        new_model.angle_change_degrees = float(change.mean())
        new_model.offset_change_px = float(
            (new.offsets_px - state.offsets_px).norm(dim=1).mean())
    new_model.angular_spread_degrees = float(new.angular_spread.mean())
    info["angle_change_degrees"] = new_model.angle_change_degrees
    info["offset_change_px"] = new_model.offset_change_px
    info["angular_spread_degrees"] = new_model.angular_spread_degrees
    info["healpix_order"] = model.healpix_order
    info["local_search"] = model.local_search
    info["current_shell"] = shell
    return new_model, new, info


def _class_view(stats: Statistics3D, k: int) -> Statistics3D:
    """The sums of one class: shared tensors, class ``k``'s accumulator and mass (views)."""
    split = stats.split_backprojectors
    return replace(stats, backprojectors=[stats.backprojectors[k]],
                   split_backprojectors=None if split is None else [split[k]],
                   class_mass=stats.class_mass[k:k + 1])


def maximise_3d(
    model: Model3D,
    stats: list[Statistics3D],
    subset: FourierSubset,
    full: FourierSubset,
    options: Refine3DOptions,
    *,
    device: torch.device,
) -> tuple[Model3D, dict[str, Any]]:
    """The M-step (module docstring) from the sums of each half-set (one list entry each)."""
    n, apix = model.box_size, model.pixel_size_angstrom
    k_classes, halves = model.n_classes, model.n_halves
    s = n // 2 + 1
    ops = symmetry_operators(options.symmetry)
    ops = ops[torch.linalg.det(ops) > 0].to(device, torch.float32)
    def _sym(bp: BackProjector) -> BackProjector:
        return symmetrise_backprojector(bp, ops) if ops.shape[0] > 1 else bp

    bps = [[_sym(bp) for bp in st.backprojectors] for st in stats]
    # class fractions, offsets, noise
    mass = torch.stack([st.class_mass for st in stats]).sum(0)
    total = float(mass.sum())
    fractions = (mass / total).cpu() if total > 0 else model.class_fractions.clone()
    n_part = float(sum(float(st.count.sum()) for st in stats))
    offset_sq = float(sum(float(st.offset_sq_px2) for st in stats))
    sigma_offset = math.sqrt(max(offset_sq / (2.0 * max(n_part, 1.0)), 1e-6)) * apix
    sigma2 = model.sigma2.to(device).clone()
    full_counts = full.shell_counts.to(device)
    for g in range(sigma2.shape[0]):
        n_g = float(sum(float(st.count[g]) for st in stats))
        if n_g <= 0:
            continue
        inv_c = (2.0 * subset.per_coefficient(sigma2[g]) / subset.multiplicity.to(device))
        resid = sum(st.residual[g] for st in stats) * inv_c
        residual = sum(st.power[g] for st in stats) + subset.shell_sums(resid)
        value = residual / (n_g * full_counts.clamp(min=1))
        sigma2[g] = torch.where((full_counts > 0) & (value > 0), value, sigma2[g])
    mask3 = reference_mask(n, options, apix, device)
    refs = torch.zeros_like(model.references)
    tau2 = torch.zeros((halves, k_classes, s), dtype=torch.float64)
    dvp = torch.zeros_like(tau2)
    fsc_curve = torch.zeros(s, dtype=torch.float64)
    resolution = torch.full((k_classes,), 999.0, dtype=torch.float64)
    info: dict[str, Any] = {}
    if options.gold_standard:
        raw = [reconstruct(bps[h][0], tau2=None) for h in range(halves)]
        fsc_curve = torch.nan_to_num(
            fsc(raw[0] * mask3, raw[1] * mask3).to(torch.float64).cpu(), nan=0.0)
        fsc_curve[subset.max_shell + 1:] = 0.0  # nothing was inserted there
        fsc_curve[0] = 1.0
        res = _resolution(fsc_curve, 0.143, n, apix)
        resolution[0] = res
        fsc_c = fsc_curve.clamp(min=1e-3, max=0.999)
        for h in range(halves):
            ssnr = fsc_c / (1.0 - fsc_c)
            t2 = _tau2_from_ssnr(ssnr, bps[h][0])
            tau2[h, 0] = t2
            dvp[h, 0] = ssnr * options.tau2_fudge
            refs[h, 0] = reconstruct(bps[h][0], tau2=t2.to(device),
                                     tau2_fudge=options.tau2_fudge).cpu()
        half_shell = _last_shell_above(fsc_curve, 0.5)
        next_shell = min(n // 2, half_shell + options.incr_size)
        info["fsc"] = fsc_curve
        if model.final:
            joined = BackProjector(data=bps[0][0].data + bps[1][0].data,
                                   weight=bps[0][0].weight + bps[1][0].weight,
                                   box_size=n, padded_size=bps[0][0].padded_size, ndim=3)
            whole = torch.sqrt(2 * fsc_c / (1 + fsc_c))
            t2 = _tau2_from_ssnr(whole / (1.0 - whole).clamp(min=1e-3), joined)
            info["combined"] = reconstruct(joined, tau2=t2.to(device),
                                           tau2_fudge=options.tau2_fudge).cpu()
    else:
        # Each class's spectral SNR from the FSC between the reconstructions of alternate
        # batches (the data, not the reference's power: a reference low-passed to
        # ini_high would otherwise keep every later map below that resolution)
        next_shell = 1
        split = stats[0].split_backprojectors
        for k in range(k_classes):
            even = bps[0][k]
            odd = _sym(split[k]) if split is not None else None
            if odd is None or not (bool((even.weight > 0).any()) and bool((odd.weight > 0).any())):
                refs[0, k] = model.references[0, k]
                tau2[0, k] = model.tau2[0, k]
                continue
            joined = BackProjector(data=even.data + odd.data, weight=even.weight + odd.weight,
                                   box_size=n, padded_size=even.padded_size, ndim=3)
            parts = [reconstruct(bp, tau2=None) for bp in (even, odd)]
            curve = torch.nan_to_num(
                fsc(parts[0] * mask3, parts[1] * mask3).to(torch.float64).cpu(), nan=0.0)
            curve[subset.max_shell + 1:] = 0.0
            curve[0] = 1.0
            curve = curve.clamp(min=1e-3, max=0.999)
            ssnr = 2.0 * curve / (1.0 - curve)  # both parts together: twice a part's SNR
            t2 = _tau2_from_ssnr(ssnr, joined)
            tau2[0, k] = t2
            snr = options.tau2_fudge * ssnr
            dvp[0, k] = snr
            refs[0, k] = reconstruct(joined, tau2=t2.to(device),
                                     tau2_fudge=options.tau2_fudge).cpu()
            below = snr[1:] < 1.0
            last = int(below.to(torch.int64).argmax()) if bool(below.any()) else s - 1
            resolution[k] = n * apix / max(last, 1)
            next_shell = max(next_shell, last)
        next_shell = min(n // 2, next_shell + options.incr_size)
    new = replace(
        model,
        references=refs,
        class_fractions=fractions.to(torch.float64),
        sigma2=sigma2.cpu(),
        tau2=tau2,
        data_vs_prior=dvp,
        fsc=fsc_curve,
        resolution_angstrom=resolution,
        current_shell=int(max(next_shell, 1)),
        sigma_offset_angstrom=float(sigma_offset),
        iteration=model.iteration + 1,
        log_likelihood=float(sum(float(st.log_likelihood) for st in stats)),
        average_pmax=float(sum(float(st.pmax_sum) for st in stats)) / max(n_part, 1.0),
    )
    info["resolution_angstrom"] = resolution.tolist()
    info["class_fractions"] = fractions.tolist()
    info["average_pmax"] = new.average_pmax
    return new, info


def _tau2_from_ssnr(ssnr: torch.Tensor, bp: BackProjector) -> torch.Tensor:
    """``tau2 = SSNR / mean weight`` per shell of a reconstruction (no prior on shells 0, 1)."""
    w = shell_mean_weight(bp).cpu()
    t2 = torch.where(w > 0, ssnr / w.clamp(min=1e-30), torch.zeros_like(w))
    return torch.where(torch.arange(t2.numel()) < 2, torch.full_like(t2, 1e30), t2)


def _last_shell_above(curve: torch.Tensor, threshold: float) -> int:
    below = curve[1:] < threshold
    return int(below.to(torch.int64).argmax()) if bool(below.any()) else curve.numel() - 1


def _resolution(curve: torch.Tensor, threshold: float, n: int, apix: float) -> float:
    shell = _last_shell_above(curve, threshold)
    return n * apix / shell if shell > 0 else 999.0


def update_schedule(model: Model3D, options: Refine3DOptions) -> Model3D:
    """Auto-refine: sampling and convergence after an iteration (module docstring)."""
    if model.final:
        return replace(model, finished=True)
    if not options.auto_sampling:
        return replace(model, finished=model.iteration >= options.max_iterations)
    res = float(model.resolution_angstrom[0])
    m = replace(model)
    if res < m.best_resolution_angstrom - 1e-6:
        m.best_resolution_angstrom = res
        m.iterations_without_gain = 0
    else:
        m.iterations_without_gain += 1
    change = m.angle_change_degrees
    # RELION: changes are no longer "large" when they stop shrinking, or when they are below
    # 40 % of the angular step (particles hopping between neighbouring samples)
    if change >= 0.97 * m.smallest_angle_change or \
            change < 0.4 * angular_step_degrees(m.healpix_order):
        m.iterations_without_change += 1
    else:
        m.iterations_without_change = 0
    m.smallest_angle_change = min(m.smallest_angle_change, change)
    fine_step = 0.5 * angular_step_degrees(m.healpix_order)
    can_refine = m.healpix_order < options.max_order and m.angular_spread_degrees < fine_step
    stalled = m.iterations_without_gain >= 1 and m.iterations_without_change >= 1
    if stalled and can_refine:
        m.healpix_order += 1
        m.offset_range_px = max(m.offset_range_px / 2.0, 1.0)
        m.offset_step_px = m.offset_step_px / 2.0
        if m.healpix_order >= options.auto_local_order or m.local_search:
            m.local_search = True
            m.sigma_angle_degrees = angular_step_degrees(m.healpix_order)
        m.smallest_angle_change = 999.0
        m.iterations_without_change = 0
        m.iterations_without_gain = 0
    elif (stalled and m.iterations_without_gain >= 2) or m.iteration >= options.max_iterations:
        m.final = True
    return m
