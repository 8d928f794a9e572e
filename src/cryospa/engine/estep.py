"""E-step: posteriors over (class, in-plane angle, translation), batched as matrix products.

For particle ``i`` (optics group ``g``), pose ``p = (k, j)`` (class ``k``, angle ``psi_j``) and
translation ``t`` the log-posterior is, up to a per-particle constant,

    log w_ipt = log pi_k + log N(origin_i + t; 0, sigma_offset^2)
                - sum_kappa c(kappa) |X_it(kappa) - CTF_i(kappa) A_p(kappa)|^2

with ``c = m / (2 sigma2_g)`` (``m`` the multiplicity of a half-grid coefficient; the sum over
the rfft half grid weighted so is the Gaussian log-likelihood over the full FFT), ``X_it = X_i
ramp_t`` the centred image shifted by ``t`` and ``A_p`` the class reference turned by psi_j.
Expanding the square, with ``U_i = c CTF_i X_i`` and ``Y_it = U_i ramp_t``::

    diff2_ipt = sum c |X_i|^2 - 2 Re sum conj(A_p) Y_it + sum c CTF_i^2 |A_p|^2

the cross term is one real matrix product ``[(B T) x 2M] @ [2M x P]`` (real and imaginary
parts side by side) and the norm term ``[B x M] @ [M x P]``; the sufficient statistics of the
M-step are again products, ``w^T Y`` and ``(sum_t w)^T (c CTF^2)``.

Adaptive oversampling (Scheres 2016, Methods Enzymol. 579:125): a coarse pass at twice the psi
and translation steps, then the fine poses (2 angles x 4 translations per coarse pose, see
:mod:`cryospa.engine.sampling`) only below the coarse poses that together hold
``adaptive_fraction`` (0.999) of the particle's coarse posterior. For each particle the fine
pass scores a small dense block, the children of its significant translations times those of its
significant poses (pairs whose coarse parent was not significant are masked out), as one batched
matrix product over the batch; when the blocks are large (early iterations) the dense fine
products over all poses, with the same mask, are cheaper and give the same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryospa.core.projection import make_projector, project
from cryospa.engine.coefficients import FourierSubset
from cryospa.engine.data import PreparedBatch
from cryospa.engine.mstep import SufficientStatistics
from cryospa.engine.sampling import InPlaneSampling, rotations_2d

__all__ = [
    "BatchResult",
    "BatchTerms",
    "EStepSettings",
    "PoseGrid",
    "ReferenceSlices",
    "expectation",
    "project_references",
    "significant_count",
]


@dataclass
class ReferenceSlices:
    """Class references turned by a list of in-plane angles, on a coefficient subset.

    Attributes
    ----------
    values
        ``(K J, M)`` complex64 (pose ``k J + j``), ortho units.
    power
        ``(K J, M)`` float32 ``|values|^2``.
    n_classes, n_psi
        ``K`` and ``J``.
    """

    values: torch.Tensor
    power: torch.Tensor
    n_classes: int
    n_psi: int

    @property
    def real_view(self) -> torch.Tensor:
        """``(K J, 2 M)`` real and imaginary parts side by side."""
        return torch.view_as_real(self.values).reshape(self.values.shape[0], -1)


def project_references(
    references: torch.Tensor,
    psi_degrees: torch.Tensor,
    subset: FourierSubset,
    *,
    padding_factor: float = 2.0,
    chunk: int = 32,
) -> ReferenceSlices:
    """Turn ``(K, n, n)`` references by ``(J,)`` angles in Fourier space (padding 2, gridding).

    ``ref(R^T r)`` with RELION's 2D matrices (:func:`cryospa.engine.sampling.rotations_2d`).
    """
    n = subset.box_size
    k = references.shape[0]
    proj = make_projector(references.to(torch.float32), ndim=2, padding_factor=padding_factor)
    rots = rotations_2d(psi_degrees.to(torch.float64)).to(references.device, torch.float32)
    parts = []
    for start in range(0, rots.shape[0], chunk):
        ft = project(proj, rots[start : start + chunk])  # (K, b, n, n//2+1), unnormalised
        parts.append(subset.gather(ft) / n)
    values = torch.cat(parts, dim=1).reshape(k * rots.shape[0], subset.size).contiguous()
    return ReferenceSlices(values=values, power=values.abs() ** 2, n_classes=k,
                           n_psi=int(rots.shape[0]))


@dataclass
class PoseGrid:
    """Everything pose-related of one iteration: sampling, turned references, phase ramps.

    ``coarse`` / ``coarse_ramps`` are None for the exhaustive search. The coarse pass uses only
    the coefficients ``coarse_index`` (into the subset), those up to ``coarse_shell``.
    """

    sampling: InPlaneSampling
    fine: ReferenceSlices
    fine_ramps: torch.Tensor
    fine_shifts: torch.Tensor
    coarse: ReferenceSlices | None
    coarse_ramps: torch.Tensor | None
    coarse_shifts: torch.Tensor | None
    coarse_index: torch.Tensor | None = None

    @classmethod
    def make(
        cls,
        references: torch.Tensor,
        sampling: InPlaneSampling,
        subset: FourierSubset,
        *,
        adaptive: bool,
        coarse_shell: int | None = None,
    ) -> PoseGrid:
        """Project the references and build the ramps on ``references``' device.

        ``coarse_shell``: the largest shell of the coarse pass (None: all of the subset).
        """
        device = references.device
        fine_shifts = sampling.fine_translations.to(device)
        coarse = coarse_ramps = coarse_shifts = coarse_index = None
        if adaptive:
            coarse_shifts = sampling.coarse_translations.to(device)
            coarse = project_references(references, sampling.coarse_psi, subset)
            coarse_ramps = subset.phase_ramps(coarse_shifts)
            if coarse_shell is not None and coarse_shell < subset.max_shell:
                coarse_index = torch.nonzero(subset.shell <= coarse_shell).flatten()
                values = coarse.values[:, coarse_index].contiguous()
                coarse = ReferenceSlices(values=values, power=values.abs() ** 2,
                                         n_classes=coarse.n_classes, n_psi=coarse.n_psi)
                coarse_ramps = coarse_ramps[:, coarse_index].contiguous()
        return cls(
            sampling=sampling,
            fine=project_references(references, sampling.fine_psi, subset),
            fine_ramps=subset.phase_ramps(fine_shifts),
            fine_shifts=fine_shifts,
            coarse=coarse,
            coarse_ramps=coarse_ramps,
            coarse_shifts=coarse_shifts,
            coarse_index=coarse_index,
        )


@dataclass
class BatchTerms:
    """Per-particle factors of the scores.

    ``u = c CTF X`` ``(B, M)``, ``cc2 = c CTF^2`` ``(B, M)``, ``xw = c |X|^2`` ``(B, M)`` and
    its sum ``xx`` ``(B,)``.
    """

    u: torch.Tensor
    cc2: torch.Tensor
    xw: torch.Tensor
    xx: torch.Tensor

    @classmethod
    def make(cls, batch: PreparedBatch, c: torch.Tensor) -> BatchTerms:
        """From a prepared batch and the group's ``(M,)`` weights ``c = m / (2 sigma2)``."""
        cc = c.to(batch.x.device, torch.float32)[None, :]
        u = (batch.x * (cc * batch.ctf)).contiguous()
        cc2 = (cc * batch.ctf * batch.ctf).contiguous()
        xw = cc * (batch.x.abs() ** 2)
        return cls(u=u, cc2=cc2, xw=xw, xx=xw.sum(-1))

    def take(self, rows: torch.Tensor) -> BatchTerms:
        """The terms of the particles ``rows`` (``(b,)`` long)."""
        return BatchTerms(u=self.u[rows], cc2=self.cc2[rows], xw=self.xw[rows], xx=self.xx[rows])

    def restrict(self, index: torch.Tensor | None) -> BatchTerms:
        """The terms on the coefficients ``index`` only (None: unchanged)."""
        if index is None:
            return self
        xw = self.xw[:, index].contiguous()
        return BatchTerms(u=self.u[:, index].contiguous(), cc2=self.cc2[:, index].contiguous(),
                          xw=xw, xx=xw.sum(-1))


@dataclass(frozen=True)
class EStepSettings:
    """How the E-step searches.

    Attributes
    ----------
    adaptive
        Coarse pass, then fine poses below the significant coarse ones (else exhaustive).
    adaptive_fraction
        Posterior mass the significant coarse poses must hold (RELION 0.999).
    dense_switch
        Use the dense fine products (masked) when the per-particle local blocks exceed this
        fraction of all fine (translation, pose) pairs.
    local_chunk
        Particles whose fine blocks are scored together (sorted by block size, padded to the
        largest of the chunk).
    """

    adaptive: bool = True
    adaptive_fraction: float = 0.999
    dense_switch: float = 0.3
    local_chunk: int = 32


@dataclass
class BatchResult:
    """Per-particle outcome of the E-step (all ``(B,)``, on the batch's device).

    Attributes
    ----------
    class_index, psi_index, translation_index
        Best pose (fine grids).
    max_probability
        Largest posterior probability.
    significant
        Poses holding ``adaptive_fraction`` of the posterior (coarse ones when adaptive).
    log_likelihood
        ``log sum_poses prior x likelihood``, including the Gaussian normalisation.
    fine_poses
        Fine (pose, translation) pairs scored per particle.
    """

    class_index: torch.Tensor
    psi_index: torch.Tensor
    translation_index: torch.Tensor
    max_probability: torch.Tensor
    significant: torch.Tensor
    log_likelihood: torch.Tensor
    fine_poses: torch.Tensor


def _log_prior_translations(
    offsets_px: torch.Tensor, shifts_px: torch.Tensor, sigma_px: float, cell_area_px2: float
) -> torch.Tensor:
    """``(B, T)`` log of the Gaussian offset prior at ``origin + t`` times the cell area."""
    d = offsets_px[:, None, :].to(torch.float32) + shifts_px[None, :, :].to(torch.float32)
    var = sigma_px * sigma_px
    return -(d * d).sum(-1) / (2.0 * var) - math.log(2.0 * math.pi * var) + math.log(
        cell_area_px2
    )


def _dense_diff2(
    terms: BatchTerms, refs: ReferenceSlices, ramps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T, P)`` squared differences and the ``(B, T, M)`` shifted ``Y = U ramp``."""
    b, m = terms.u.shape
    t = ramps.shape[0]
    y = terms.u[:, None, :] * ramps[None, :, :]  # (B, T, M)
    cross = torch.view_as_real(y).reshape(b * t, 2 * m) @ refs.real_view.T  # (B T, P)
    norm = terms.cc2 @ refs.power.T  # (B, P)
    diff2 = terms.xx[:, None, None] - 2.0 * cross.reshape(b, t, -1) + norm[:, None, :]
    return diff2, y


def significant_count(
    weights: torch.Tensor, fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest weights of each particle that hold ``fraction`` of its posterior mass.

    Parameters
    ----------
    weights
        ``(B, Q)`` normalised posterior weights.
    fraction
        Mass to hold (RELION's ``adaptive_fraction``, 0.999).

    Returns
    -------
    count, threshold
        ``(B,)`` long number of those weights (RELION's rlnNrOfSignificantSamples) and
        ``(B,)`` the smallest of them (weights ``>= threshold`` are significant).
    """
    q = weights.shape[1]
    k = min(q, 512)
    top = torch.topk(weights, k, dim=1).values
    count = ((torch.cumsum(top, dim=1) < fraction).sum(1) + 1).clamp(max=q)
    short = count > k
    threshold = top.gather(1, (count.clamp(max=k) - 1)[:, None])[:, 0]
    if bool(short.any()):
        full = torch.sort(weights[short], dim=1, descending=True).values
        n_full = ((torch.cumsum(full, dim=1) < fraction).sum(1) + 1).clamp(max=q)
        count[short] = n_full
        threshold[short] = full.gather(1, (n_full - 1)[:, None])[:, 0]
    return count, threshold


def _log_pose_prior(log_pi: torch.Tensor, n_psi: int) -> torch.Tensor:
    """``(K,)`` log class fractions -> ``(K J,)`` log prior of each pose (uniform in psi)."""
    return log_pi.repeat_interleave(n_psi) - math.log(n_psi)


def _dense_posterior(logw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, T, P)`` log weights -> normalised weights and ``(B,)`` log evidence."""
    b = logw.shape[0]
    lse = torch.logsumexp(logw.reshape(b, -1), dim=1)
    return torch.exp(logw - lse[:, None, None]), lse


def _accumulate_dense(
    stats: SufficientStatistics,
    group: int,
    post: torch.Tensor,
    y: torch.Tensor,
    terms: BatchTerms,
    n_psi: int,
) -> None:
    b, t, p = post.shape
    m = y.shape[-1]
    flat = post.reshape(b * t, p)
    stats.data[group] += (flat.T @ torch.view_as_real(y).reshape(b * t, 2 * m)).reshape(p, m, 2)
    stats.weight[group] += post.sum(1).T @ terms.cc2
    stats.class_mass += post.sum((0, 1)).reshape(-1, n_psi).sum(1).to(torch.float64)


def _selected(flags: torch.Tensor, children: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per particle, the coarse indices flagged in ``(B, Q)`` first, padded to the largest count.

    Returns ``(B, S)`` coarse indices (significant ones first) and ``(B, S * children)`` their
    fine children ``children * q + c``.
    """
    width = max(int(flags.sum(1).max()), 1)
    order = torch.argsort((~flags).to(torch.int8), dim=1, stable=True)[:, :width]
    kids = torch.arange(children, device=flags.device)
    fine = (children * order[:, :, None] + kids).reshape(order.shape[0], -1)
    return order, fine


@dataclass
class _LocalBlocks:
    """Per-particle fine search blocks: ``(B, T_l)`` translations x ``(B, P_l)`` poses."""

    trans: torch.Tensor  # (B, T_l) fine translation indices
    pose: torch.Tensor  # (B, P_l) fine pose indices
    valid: torch.Tensor  # (B, T_l, P_l) the pair's coarse parent was significant

    @classmethod
    def from_significant(
        cls, keep: torch.Tensor, translation_children: int, pose_children: int = 2
    ) -> _LocalBlocks:
        """From the ``(B, T_c, P_c)`` significant coarse triples (fine pose ``c q + child``)."""
        order_t, trans = _selected(keep.any(2), translation_children)
        order_p, pose = _selected(keep.any(1), pose_children)
        rows = torch.arange(keep.shape[0], device=keep.device)[:, None, None]
        parent = keep[rows, order_t[:, :, None], order_p[:, None, :]]  # (B, T_l/c, P_l/c)
        valid = parent.repeat_interleave(translation_children, 1).repeat_interleave(
            pose_children, 2)
        return cls(trans=trans, pose=pose, valid=valid)

    @property
    def size(self) -> int:
        """``T_l * P_l`` scored pairs per particle."""
        return int(self.trans.shape[1] * self.pose.shape[1])


def _local_scores(
    terms: BatchTerms, refs: ReferenceSlices, ramps: torch.Tensor, blocks: _LocalBlocks
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared differences of the local blocks.

    Returns ``(b, T_l, P_l)`` differences and the shifted ``(b, T_l, M)`` ``Y``.
    """
    b, m = terms.u.shape
    y = terms.u[:, None, :] * ramps[blocks.trans]  # (b, T_l, M)
    a = refs.values[blocks.pose]  # (b, P_l, M)
    cross = torch.bmm(torch.view_as_real(y).reshape(b, -1, 2 * m),
                      torch.view_as_real(a).reshape(b, -1, 2 * m).transpose(1, 2))
    norm = torch.bmm(terms.cc2[:, None, :], refs.power[blocks.pose].transpose(1, 2))
    return terms.xx[:, None, None] - 2.0 * cross + norm, y


def _accumulate_local(
    stats: SufficientStatistics,
    group: int,
    post: torch.Tensor,
    y: torch.Tensor,
    terms: BatchTerms,
    blocks: _LocalBlocks,
    n_psi: int,
) -> None:
    b, _, p_l = post.shape
    m = y.shape[-1]
    pose = blocks.pose.reshape(-1)
    # per (particle, pose): sum_t w Y and sum_t w, then into the pose's accumulators
    z = torch.bmm(post.transpose(1, 2), torch.view_as_real(y).reshape(b, -1, 2 * m))
    stats.data[group].index_add_(0, pose, z.reshape(b * p_l, m, 2))
    w_pose = post.sum(1)  # (b, P_l)
    stats.weight[group].index_add_(
        0, pose, (w_pose[:, :, None] * terms.cc2[:, None, :]).reshape(b * p_l, m))
    mass = torch.zeros_like(stats.class_mass)
    mass.index_add_(0, pose // n_psi, w_pose.reshape(-1).to(torch.float64))
    stats.class_mass += mass


@dataclass
class _Best:
    """Best pose of a set of particles: log evidence, pmax, class, psi and translation."""

    lse: torch.Tensor
    pmax: torch.Tensor
    k: torch.Tensor
    j: torch.Tensor
    t: torch.Tensor
    significant: torch.Tensor | None = None


def _fine_pass(
    terms: BatchTerms,
    prior: torch.Tensor,
    offsets_sq: torch.Tensor,
    keep: torch.Tensor | None,
    grid: PoseGrid,
    pose_prior: torch.Tensor,
    settings: EStepSettings,
    stats: SufficientStatistics,
    group: int,
) -> _Best:
    """Fine posteriors of a few particles, their sums into ``stats`` and their best poses.

    ``keep`` ``(b, T_c, P_c)``: significant coarse poses (None: exhaustive). ``prior`` and
    ``offsets_sq`` are the particles' ``(b, T_f)`` translation log-priors and squared origins.
    """
    fine = grid.fine
    n_psi = fine.n_psi
    nt = grid.sampling.translation_children
    b = terms.u.shape[0]
    blocks: _LocalBlocks | None = None
    mask: torch.Tensor | None = None
    if keep is not None:
        blocks = _LocalBlocks.from_significant(keep, nt)
        if blocks.size > settings.dense_switch * prior.shape[1] * fine.values.shape[0]:
            p_c = keep.shape[2]
            mask = keep.repeat_interleave(nt, 1).reshape(b, -1, p_c, 1).expand(
                -1, -1, -1, 2).reshape(b, -1, 2 * p_c)
            blocks = None
    if blocks is None:
        diff2, y = _dense_diff2(terms, fine, grid.fine_ramps)
        logw = prior[:, :, None] + pose_prior[None, None, :] - diff2
        del diff2
        if mask is not None:
            logw = logw.masked_fill(~mask, -math.inf)
        post, lse = _dense_posterior(logw)
        del logw
        _accumulate_dense(stats, group, post, y, terms, n_psi)
        del y
        stats.offset_sq_px2 += (post.sum(2) * offsets_sq).sum().to(torch.float64)
        k, j, t, pmax = _best_dense(post, n_psi)
        significant = (
            significant_count(post.reshape(b, -1), settings.adaptive_fraction)[0]
            if keep is None else None
        )
        return _Best(lse=lse, pmax=pmax, k=k, j=j, t=t, significant=significant)
    diff2, y = _local_scores(terms, fine, grid.fine_ramps, blocks)
    logw = (
        prior.gather(1, blocks.trans)[:, :, None] + pose_prior[blocks.pose][:, None, :] - diff2
    ).masked_fill(~blocks.valid, -math.inf)
    del diff2
    post, lse = _dense_posterior(logw)
    del logw
    _accumulate_local(stats, group, post, y, terms, blocks, n_psi)
    del y
    stats.offset_sq_px2 += (
        post.sum(2) * offsets_sq.gather(1, blocks.trans)).sum().to(torch.float64)
    p_l = post.shape[2]
    pmax, flat = post.reshape(b, -1).max(dim=1)
    pose = blocks.pose.gather(1, (flat % p_l)[:, None])[:, 0]
    t = blocks.trans.gather(1, (flat // p_l)[:, None])[:, 0]
    return _Best(lse=lse, pmax=pmax, k=pose // n_psi, j=pose % n_psi, t=t)


def _best_dense(post: torch.Tensor, n_psi: int) -> tuple[torch.Tensor, ...]:
    b, _, p = post.shape
    pmax, flat = post.reshape(b, -1).max(dim=1)
    tr, pose = flat // p, flat % p
    return pose // n_psi, pose % n_psi, tr, pmax


def expectation(
    batch: PreparedBatch,
    terms: BatchTerms,
    grid: PoseGrid,
    *,
    log_pi: torch.Tensor,
    sigma_offset_px: float,
    log_norm: float,
    settings: EStepSettings,
    stats: SufficientStatistics,
) -> BatchResult:
    """Score one batch over all poses, accumulate its M-step sums, return the best poses.

    Parameters
    ----------
    batch, terms
        The prepared particles and their score factors (:meth:`BatchTerms.make`).
    grid
        Poses of this iteration.
    log_pi
        ``(K,)`` log class fractions (``-inf`` for empty classes).
    sigma_offset_px
        Standard deviation of the offset prior in pixels.
    log_norm
        The Gaussian normalisation ``-sum m / 2 log(pi sigma2)`` of the batch's group, added
        to the log-likelihoods.
    settings
        Search settings.
    stats
        Sums to add to.
    """
    fine = grid.fine
    n_psi = fine.n_psi
    b = len(batch)
    samp = grid.sampling
    cell_f = samp.fine_cell_area_px2
    prior_f = _log_prior_translations(batch.offsets_px, grid.fine_shifts, sigma_offset_px, cell_f)
    pose_prior_f = _log_pose_prior(log_pi, n_psi)
    n_fine_all = prior_f.shape[1] * fine.values.shape[0]
    offsets_sq = (
        (batch.offsets_px[:, None, :] + grid.fine_shifts[None].to(torch.float32)) ** 2
    ).sum(-1)  # (B, Tf)
    stats.count[batch.group] += b
    stats.power[batch.group] += batch.power.sum(0)

    device = batch.x.device
    keep: torch.Tensor | None = None
    if settings.adaptive:
        coarse, ramps_c, shifts_c = grid.coarse, grid.coarse_ramps, grid.coarse_shifts
        if coarse is None or ramps_c is None or shifts_c is None:
            raise ValueError("adaptive search needs a PoseGrid made with adaptive=True")
        cell_c = cell_f * (4.0 if samp.translation_children > 1 else 1.0)
        diff2_c, _ = _dense_diff2(terms.restrict(grid.coarse_index), coarse, ramps_c)
        logw_c = (
            _log_prior_translations(batch.offsets_px, shifts_c, sigma_offset_px, cell_c)[:, :, None]
            + _log_pose_prior(log_pi, coarse.n_psi)[None, None, :]
            - diff2_c
        )
        del diff2_c
        post_c, _ = _dense_posterior(logw_c)
        del logw_c
        significant, threshold = significant_count(post_c.reshape(b, -1),
                                                   settings.adaptive_fraction)
        keep = post_c >= threshold[:, None, None]  # (B, Tc, Pc)
        del post_c
        fine_poses = keep.reshape(b, -1).sum(1) * (2 * samp.translation_children)
        # particles with similar block sizes together: little padding in the local blocks
        block = keep.any(2).sum(1) * keep.any(1).sum(1)
        order = torch.argsort(block, stable=True)
        chunk = settings.local_chunk
    else:
        fine_poses = torch.full((b,), n_fine_all, dtype=torch.long, device=device)
        order = torch.arange(b, device=device)
        chunk = b
        significant = None
    lse = torch.empty(b, dtype=torch.float32, device=device)
    pmax = torch.empty_like(lse)
    k_best = torch.empty(b, dtype=torch.long, device=device)
    j_best = torch.empty_like(k_best)
    t_best = torch.empty_like(k_best)
    for start in range(0, b, chunk):
        rows = order[start : start + chunk]
        best = _fine_pass(
            terms.take(rows), prior_f[rows], offsets_sq[rows],
            None if keep is None else keep[rows], grid, pose_prior_f,
            settings, stats, batch.group,
        )
        lse[rows], pmax[rows] = best.lse, best.pmax
        k_best[rows], j_best[rows], t_best[rows] = best.k, best.j, best.t
        if keep is None:
            significant = best.significant  # exhaustive: one chunk, the whole batch
    if significant is None:  # pragma: no cover - both branches above set it
        raise RuntimeError("significant samples were not counted")
    log_lik = lse.to(torch.float64) + log_norm
    stats.log_likelihood += log_lik.sum()
    stats.pmax_sum += pmax.sum().to(torch.float64)
    return BatchResult(
        class_index=k_best,
        psi_index=j_best,
        translation_index=t_best,
        max_probability=pmax.to(torch.float64),
        significant=significant,
        log_likelihood=log_lik,
        fine_poses=fine_poses,
    )
