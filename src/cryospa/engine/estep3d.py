"""E-step for 3D: posteriors over (class, orientation, translation) with slices made on demand.

The score of particle ``i`` at class ``k``, orientation ``A`` and translation ``t`` is the one of
:mod:`cryospa.engine.estep` with the class reference's central slice ``A_p = P_A(V_k)`` in place
of the turned 2D reference. There are far too many fine orientations to precompute all their
slices (order 3 fine sampling is ~300,000 orientations), so, with adaptive oversampling
(Scheres 2016, Methods Enzymol. 579:125):

1. coarse pass: all coarse orientations (global search: one table of slices shared by the
   batch, on the coefficients up to the coarse shell; local search: per-particle slices at the
   orientations near the particle's current one) times the coarse translations;
2. fine pass: for each particle, the fine children (8 orientations x 4 translations) of the
   coarse samples holding ``adaptive_fraction`` of its posterior, their slices projected for
   that particle only (:func:`cryospa.core.projection.project_points`), scored on all
   coefficients of the current resolution.

The M-step sums are accumulated here, per batch: for every fine orientation with a non-negligible
posterior, ``z = sum_t w c CTF X_t`` and ``sum_t w c CTF^2`` are inserted as a slice into the
class's 3D Fourier accumulators (:func:`cryospa.core.backprojection.backproject_points`,
scaled to ``sum w CTF X / sigma2`` and ``sum w CTF^2 / sigma2``), and the expected residual
``sum w (c CTF^2 |A|^2 - 2 Re conj(A) z)`` per coefficient is kept for the noise update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cryospa.core.backprojection import BackProjector, backproject_points
from cryospa.core.projection import Projector, project_points
from cryospa.engine.coefficients import FourierSubset
from cryospa.engine.data import PreparedBatch
from cryospa.engine.estep import (
    BatchTerms,
    ReferenceSlices,
    _dense_diff2,
    _dense_posterior,
    _LocalBlocks,
    _log_prior_translations,
    significant_count,
)
from cryospa.engine.sampling3d import POSE_CHILDREN, OrientationSampling

__all__ = ["Statistics3D", "Translations", "coarse_slices", "expectation_3d", "freq_px"]

#: Orientations whose posterior (summed over translations) is below this are not back-projected.
_MIN_BACKPROJECT_WEIGHT = 1e-5


def freq_px(subset: FourierSubset) -> torch.Tensor:
    """``(M, 2)`` frequencies ``(kx, ky)`` of a subset in Fourier pixels."""
    n = subset.box_size
    return torch.stack([subset.kx * n, subset.ky * n], dim=-1)


@dataclass
class Translations:
    """Coarse and fine translation grids of an iteration and their phase ramps."""

    coarse: torch.Tensor  # (T_c, 2) px
    fine: torch.Tensor  # (T_f, 2) px
    children: int
    coarse_ramps: torch.Tensor  # (T_c, M_c)
    fine_ramps: torch.Tensor  # (T_f, M)
    fine_cell_area_px2: float

    @classmethod
    def make(
        cls,
        grids: tuple[torch.Tensor, torch.Tensor, int],
        step_px: float,
        subset: FourierSubset,
        coarse_index: torch.Tensor | None,
    ) -> Translations:
        """From :func:`cryospa.engine.sampling.translation_grid` output, on the subset's device."""
        coarse, fine, children = grids
        dev = subset.kx.device
        coarse, fine = coarse.to(dev), fine.to(dev)
        ramps_c = subset.phase_ramps(coarse)
        if coarse_index is not None:
            ramps_c = ramps_c[:, coarse_index].contiguous()
        return cls(coarse=coarse, fine=fine, children=children, coarse_ramps=ramps_c,
                   fine_ramps=subset.phase_ramps(fine),
                   fine_cell_area_px2=step_px * step_px if children > 1 else 1.0)


@dataclass
class Statistics3D:
    """Sums of one E-step over the particles of one half-set (or all).

    ``backprojectors[k]`` hold class ``k``'s inserted slices; ``residual`` ``(G, M)`` float64 is
    the expected residual per coefficient in ``c`` units (see the module docstring).
    ``split_backprojectors``: a second set of class accumulators that the caller fills from
    every other batch (classification without half-sets estimates each class's spectral SNR
    from the FSC between the two), or ``None``.
    """

    backprojectors: list[BackProjector]
    residual: torch.Tensor
    power: torch.Tensor  # (G, S) float64 summed full-grid image power per shell
    count: torch.Tensor  # (G,) float64
    class_mass: torch.Tensor  # (K,) float64
    offset_sq_px2: torch.Tensor
    log_likelihood: torch.Tensor
    pmax_sum: torch.Tensor
    angular_spread: torch.Tensor  # summed posterior mean angle to the best orientation (deg)
    split_backprojectors: list[BackProjector] | None = None


def coarse_slices(
    projectors: list[Projector],
    sampling: OrientationSampling,
    freq: torch.Tensor,
    *,
    chunk: int = 2048,
) -> ReferenceSlices:
    """Slices of every class at every coarse orientation of a global grid (ortho units)."""
    n = projectors[0].box_size
    parts = []
    mats = sampling.coarse_matrices.to(freq.device)
    for proj in projectors:
        for start in range(0, mats.shape[0], chunk):
            parts.append(project_points(proj, mats[start:start + chunk], freq)[0] / n)
    values = torch.cat(parts, dim=0).contiguous()
    return ReferenceSlices(values=values, power=values.abs() ** 2, n_classes=len(projectors),
                           n_psi=sampling.n_coarse)


def _project_per_particle(
    projectors: list[Projector], rots: torch.Tensor, cls: torch.Tensor, freq: torch.Tensor
) -> torch.Tensor:
    """``(b, S, 3, 3)`` orientations of classes ``(b, S)`` -> ``(b, S, M)`` slices (ortho)."""
    b, s = cls.shape
    n = projectors[0].box_size
    out = torch.zeros((b * s, freq.shape[0]), dtype=torch.complex64, device=freq.device)
    flat_r = rots.reshape(-1, 3, 3)
    flat_c = cls.reshape(-1)
    for k, proj in enumerate(projectors):
        sel = torch.nonzero(flat_c == k).flatten() if len(projectors) > 1 else None
        if sel is None:
            out = project_points(proj, flat_r, freq)[0] / n
        elif sel.numel():
            out[sel] = project_points(proj, flat_r[sel], freq)[0] / n
    return out.reshape(b, s, -1)


def _scores(
    terms: BatchTerms, a: torch.Tensor, ramps: torch.Tensor, trans: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(b, T, S)`` squared differences of per-particle slices ``a`` ``(b, S, M)``.

    ``trans`` ``(b, T)`` picks each particle's translations (None: all of ``ramps``). Returns
    them and the shifted ``Y`` ``(b, T, M)``.
    """
    b, m = terms.u.shape
    y = terms.u[:, None, :] * (ramps[None] if trans is None else ramps[trans])
    cross = torch.bmm(torch.view_as_real(y).reshape(b, -1, 2 * m),
                      torch.view_as_real(a).reshape(b, -1, 2 * m).transpose(1, 2))
    norm = torch.bmm(terms.cc2[:, None, :], (a.abs() ** 2).transpose(1, 2))
    return terms.xx[:, None, None] - 2.0 * cross + norm, y


@dataclass
class Result3D:
    """Per-particle outcome of the 3D E-step (``(B,)`` tensors, ``rotation`` ``(B, 3, 3)``)."""

    class_index: torch.Tensor
    rotation: torch.Tensor
    shift_px: torch.Tensor
    max_probability: torch.Tensor
    significant: torch.Tensor
    log_likelihood: torch.Tensor
    angular_spread: torch.Tensor


def expectation_3d(
    batch: PreparedBatch,
    terms: BatchTerms,
    *,
    projectors: list[Projector],
    sampling: OrientationSampling,
    coarse: ReferenceSlices | None,
    coarse_index: torch.Tensor | None,
    translations: Translations,
    subset: FourierSubset,
    base_rotations: torch.Tensor | None,
    log_pi: torch.Tensor,
    sigma_offset_px: float,
    log_norm: float,
    adaptive_fraction: float,
    stats: Statistics3D,
    slice_budget: int = 2**22,
    dense_switch: float = 0.3,
    symmetry_ops: torch.Tensor | None = None,
) -> Result3D:
    """Score one batch, accumulate its M-step sums into ``stats``, return the best poses.

    Parameters
    ----------
    batch, terms
        Prepared particles and their score factors.
    projectors
        One per class (the references of this half-set, masked).
    sampling
        Orientations of this iteration.
    coarse
        Shared coarse slices (global search, :func:`coarse_slices` on the coarse
        coefficients), or None for a local search.
    coarse_index
        Coefficients (into ``subset``) of the coarse pass; None: all.
    translations
        Translation grids and ramps.
    subset
        Coefficients of the fine pass.
    base_rotations
        ``(B, 3, 3)`` current orientations (local search).
    log_pi
        ``(K,)`` log class fractions.
    sigma_offset_px, log_norm, adaptive_fraction
        Offset prior, Gaussian normalisation of the group, significance mass.
    stats
        Sums to add to.
    slice_budget
        Largest number of complex slice coefficients held at once (memory bound).
    symmetry_ops
        ``(S, 3, 3)`` proper rotations of the point group: the posterior spread measures
        angles between orientations up to symmetry (``A ~ A g``).
    dense_switch
        Global search: score every particle against the whole table of significant fine
        slices (dense products) when the per-particle blocks exceed this fraction of it.
    """
    device = batch.x.device
    b = len(batch)
    k_classes = len(projectors)
    p_c = sampling.n_coarse
    freq = freq_px(subset)
    freq_c = freq if coarse_index is None else freq[coarse_index]
    terms_c = terms.restrict(coarse_index)
    offsets = batch.offsets_px
    prior_c = _log_prior_translations(
        offsets, translations.coarse, sigma_offset_px,
        translations.fine_cell_area_px2 * (4.0 if translations.children > 1 else 1.0))
    prior_f = _log_prior_translations(offsets, translations.fine, sigma_offset_px,
                                      translations.fine_cell_area_px2)
    offsets_sq = ((offsets[:, None, :] + translations.fine[None].to(torch.float32)) ** 2).sum(-1)
    pose_prior_c = (log_pi[:, None] + sampling.coarse_log_prior.to(device)[None]).reshape(-1)
    pose_prior_f = (log_pi[:, None] + sampling.fine_log_prior.to(device)[None]).reshape(-1)
    stats.count[batch.group] += b
    stats.power[batch.group] += batch.power.sum(0)
    base = None if base_rotations is None else base_rotations.to(device, torch.float32)

    # ---- coarse pass -> significant coarse samples (B, T_c, K P_c)
    keep = torch.empty((b, translations.coarse.shape[0], k_classes * p_c), dtype=torch.bool,
                       device=device)
    significant = torch.empty(b, dtype=torch.long, device=device)
    if coarse is not None:
        step = max(1, slice_budget // max(1, translations.coarse.shape[0] * k_classes * p_c))
    else:
        step = max(1, slice_budget // max(1, k_classes * p_c * freq_c.shape[0]))
    for start in range(0, b, step):
        rows = slice(start, min(b, start + step))
        t_c = terms_c.take(torch.arange(rows.start, rows.stop, device=device))
        if coarse is not None:
            diff2, _ = _dense_diff2(t_c, coarse, translations.coarse_ramps)
        else:
            assert base is not None
            nb = rows.stop - rows.start
            idx = torch.arange(p_c, device=device).expand(nb, -1)
            rots = sampling.absolute(idx, base[rows], fine=False)  # (nb, P, 3, 3)
            cls = torch.arange(k_classes, device=device).repeat_interleave(p_c)
            a = _project_per_particle(
                projectors, rots.repeat(1, k_classes, 1, 1), cls.expand(nb, -1), freq_c)
            diff2, _ = _scores(t_c, a, translations.coarse_ramps, None)
            del a
        logw = prior_c[rows, :, None] + pose_prior_c[None, None, :] - diff2
        del diff2
        post, _ = _dense_posterior(logw)
        del logw
        count, threshold = significant_count(post.reshape(post.shape[0], -1), adaptive_fraction)
        keep[rows] = post >= threshold[:, None, None]
        significant[rows] = count
        del post

    # ---- fine pass, particles with similar block sizes together
    nt = translations.children
    m = subset.size
    t_l = keep.any(2).sum(1) * nt
    p_l_all = keep.any(1).sum(1) * POSE_CHILDREN
    cost = ((t_l + p_l_all) * m + t_l * p_l_all).tolist()
    order = torch.argsort(t_l * p_l_all, stable=True).tolist()
    lse = torch.empty(b, dtype=torch.float32, device=device)
    pmax = torch.empty_like(lse)
    spread = torch.empty_like(lse)
    k_best = torch.empty(b, dtype=torch.long, device=device)
    rot_best = torch.empty((b, 3, 3), dtype=torch.float32, device=device)
    shift_best = torch.empty((b, 2), dtype=translations.fine.dtype, device=device)
    table: _UnionTable | None = None
    start = 0
    if not sampling.local:
        table = _UnionTable.make(keep, projectors, sampling, freq)
        n_tf, n_u = translations.fine.shape[0], table.slices.shape[0]
        if float((t_l * p_l_all).sum()) > dense_switch * b * n_tf * n_u:
            # broad posteriors (early iterations): all particles against the whole table
            step = max(1, slice_budget // (4 * n_tf * n_u))
            for first in range(0, b, step):
                rows_t = torch.arange(first, min(b, first + step), device=device)
                best = _dense_fine(terms.take(rows_t), keep[rows_t], table, translations,
                                   prior_f[rows_t], offsets_sq[rows_t], pose_prior_f, stats,
                                   symmetry_ops)
                lse[rows_t], pmax[rows_t], spread[rows_t] = best[0], best[1], best[2]
                k_best[rows_t], rot_best[rows_t], shift_best[rows_t] = best[3], best[4], best[5]
            start = b
    while start < b:
        stop, worst = start + 1, cost[order[start]]
        while stop < b and (stop + 1 - start) * max(worst, cost[order[stop]]) <= slice_budget:
            worst = max(worst, cost[order[stop]])
            stop += 1
        rows_t = torch.tensor(order[start:stop], device=device)
        start = stop
        blocks = _LocalBlocks.from_significant(keep[rows_t], nt, POSE_CHILDREN)
        t_f = terms.take(rows_t)
        nb = rows_t.numel()
        cls = blocks.pose // (POSE_CHILDREN * p_c)
        if table is not None:
            slot = table.lookup[blocks.pose].clamp(min=0)  # (nb, P_l); -1: masked padding
            a = table.slices[slot]
            rots = table.rotations[slot]
        else:
            rots = sampling.absolute(blocks.pose % (POSE_CHILDREN * p_c),
                                     None if base is None else base[rows_t], fine=True)
            a = _project_per_particle(projectors, rots, cls, freq)  # (nb, P_l, M)
        diff2, y = _scores(t_f, a, translations.fine_ramps, blocks.trans)
        logw = (prior_f[rows_t].gather(1, blocks.trans)[:, :, None]
                + pose_prior_f[blocks.pose][:, None, :] - diff2).masked_fill(
                    ~blocks.valid, -math.inf)
        del diff2
        post, lse_r = _dense_posterior(logw)
        del logw
        p_l = post.shape[2]
        z = torch.view_as_complex(torch.bmm(
            post.transpose(1, 2), torch.view_as_real(y).reshape(nb, -1, 2 * m)
        ).reshape(nb, p_l, m, 2).contiguous())  # (nb, P_l, M) sum_t w c CTF X_t
        del y
        w_pose = post.sum(1)  # (nb, P_l)
        if table is None:  # global searches: from the table's sums at the end
            resid = (w_pose[:, :, None] * t_f.cc2[:, None, :] * (a.abs() ** 2)
                     - 2.0 * (a.conj() * z).real).sum((0, 1))
            stats.residual[batch.group] += resid.to(torch.float64)
        stats.offset_sq_px2 += (post.sum(2) * offsets_sq[rows_t].gather(1, blocks.trans)).sum(
        ).to(torch.float64)
        mass = torch.zeros(k_classes, dtype=torch.float64, device=device)
        mass.index_add_(0, cls.reshape(-1), w_pose.reshape(-1).to(torch.float64))
        stats.class_mass += mass
        if table is not None:
            table.add(slot, z, w_pose, t_f.cc2)
        else:
            # as RELION: only the orientations holding adaptive_fraction of each particle's
            # posterior go in (local searches spread it over ~100 fine orientations)
            _, smallest = significant_count(w_pose, adaptive_fraction)
            used = (w_pose >= smallest[:, None]) & (w_pose > _MIN_BACKPROJECT_WEIGHT)
            sel = torch.nonzero(used.reshape(-1)).flatten()
            _insert(stats.backprojectors, z.reshape(nb * p_l, m)[sel],
                    w_pose.reshape(-1)[sel][:, None] * t_f.cc2[sel // p_l],
                    rots.reshape(-1, 3, 3)[sel], cls.reshape(-1)[sel], subset, freq)
        # best pose and posterior spread of the orientation around it
        pm, flat = post.reshape(nb, -1).max(dim=1)
        best_p = flat % p_l
        best_rot = rots[torch.arange(nb, device=device), best_p]  # (nb, 3, 3)
        spread[rows_t] = (w_pose * angles_to(best_rot, rots, symmetry_ops)).sum(1)
        lse[rows_t], pmax[rows_t] = lse_r, pm
        k_best[rows_t] = cls.gather(1, best_p[:, None])[:, 0]
        rot_best[rows_t] = best_rot
        shift_best[rows_t] = translations.fine[blocks.trans.gather(1, (flat // p_l)[:, None])[:, 0]]
        del post, z, a
    if table is not None:
        resid = (table.weight * (table.slices.abs() ** 2)
                 - 2.0 * (table.slices.conj() * table.data).real).sum(0)
        stats.residual[batch.group] += resid.to(torch.float64)
        used = torch.nonzero(table.mass > _MIN_BACKPROJECT_WEIGHT).flatten()
        _insert(stats.backprojectors, table.data[used], table.weight[used],
                table.rotations[used], table.classes[used], subset, freq)
    log_lik = lse.to(torch.float64) + log_norm
    stats.log_likelihood += log_lik.sum()
    stats.pmax_sum += pmax.sum().to(torch.float64)
    stats.angular_spread += spread.sum().to(torch.float64)
    return Result3D(class_index=k_best, rotation=rot_best, shift_px=shift_best,
                    max_probability=pmax.to(torch.float64), significant=significant,
                    log_likelihood=log_lik, angular_spread=spread.to(torch.float64))


def _dense_fine(
    terms: BatchTerms,
    keep: torch.Tensor,
    table: _UnionTable,
    translations: Translations,
    prior_f: torch.Tensor,
    offsets_sq: torch.Tensor,
    pose_prior_f: torch.Tensor,
    stats: Statistics3D,
    symmetry_ops: torch.Tensor | None,
) -> tuple[torch.Tensor, ...]:
    """Fine pass of a few particles against all slices of the table.

    Masked to the children of each particle's significant coarse samples; sums into the table
    and ``stats``.

    Returns log evidence, pmax, angular spread, class, rotation and shift of the best pose.
    """
    nb, m = terms.u.shape
    nt = translations.children
    n_u = table.slices.shape[0]
    y = terms.u[:, None, :] * translations.fine_ramps[None]  # (nb, T_f, M)
    y_real = torch.view_as_real(y).reshape(-1, 2 * m)
    del y
    # log w = 2 cross - (norm - pose prior) + (translation prior - xx), in place
    logw = (y_real @ torch.view_as_real(table.slices).reshape(n_u, 2 * m).T).reshape(nb, -1, n_u)
    norm = terms.cc2 @ (table.slices.abs() ** 2).T - pose_prior_f[table.fine][None, :]
    logw.mul_(2.0).sub_(norm[:, None, :]).add_((prior_f - terms.xx[:, None])[:, :, None])
    sub = keep[:, :, table.coarse]  # (nb, T_c, U)
    if not bool(sub.all()):
        logw.masked_fill_(~sub.repeat_interleave(nt, dim=1), -math.inf)
    del sub
    lse = torch.logsumexp(logw.reshape(nb, -1), dim=1)
    post = logw.sub_(lse[:, None, None]).exp_()
    flat = post.reshape(-1, n_u)
    table.data += torch.view_as_complex((flat.T @ y_real).reshape(n_u, m, 2).contiguous())
    w_pose = post.sum(1)  # (nb, U)
    table.weight += w_pose.T @ terms.cc2
    table.mass += w_pose.sum(0)
    stats.offset_sq_px2 += (post.sum(2) * offsets_sq).sum().to(torch.float64)
    mass = torch.zeros_like(stats.class_mass)
    mass.index_add_(0, table.classes, w_pose.sum(0).to(torch.float64))
    stats.class_mass += mass
    pmax, best = post.reshape(nb, -1).max(dim=1)
    u_best = best % n_u
    rot = table.rotations[u_best]
    spread = (w_pose * angles_to(rot, table.rotations[None].expand(nb, -1, -1, -1),
                                  symmetry_ops)).sum(1)
    return (lse, pmax, spread, table.classes[u_best], rot,
            translations.fine[best // n_u])


def angles_to(
    best: torch.Tensor, rots: torch.Tensor, ops: torch.Tensor | None
) -> torch.Tensor:
    """Angles (degrees) from ``(b, 3, 3)`` orientations to ``(b, P, 3, 3)`` ones: ``(b, P)``.

    The smallest over the symmetry mates ``R g`` of each orientation.
    """
    if ops is None or ops.shape[0] <= 1:
        tr = torch.einsum("bij,bpij->bp", best, rots)
    else:
        bg = torch.einsum("bij,gkj->bgik", best, ops.to(best))  # best g^T
        tr = torch.einsum("bpik,bgik->bpg", rots, bg).amax(-1)
    return torch.rad2deg(torch.arccos(((tr - 1.0) / 2.0).clamp(-1.0, 1.0)))


def _insert(
    backprojectors: list[BackProjector],
    data: torch.Tensor,
    weight: torch.Tensor,
    rots: torch.Tensor,
    cls: torch.Tensor,
    subset: FourierSubset,
    freq: torch.Tensor,
) -> None:
    """Back-project ``(R, M)`` sums ``sum w c CTF X`` / ``sum w c CTF^2`` into their classes."""
    if data.shape[0] == 0:
        return
    scale = 2.0 / subset.multiplicity.to(data.device)  # 1 / (c sigma2)
    values = data * (scale * subset.box_size)
    weights = weight * scale
    for k, bp in enumerate(backprojectors):
        pick = torch.nonzero(cls == k).flatten() if len(backprojectors) > 1 else None
        if pick is None:
            backproject_points(bp, values, weights, rots, freq)
        elif pick.numel():
            backproject_points(bp, values[pick], weights[pick], rots[pick], freq)


@dataclass
class _UnionTable:
    """Global search: the fine slices of the batch's significant coarse samples.

    Every coarse sample significant for any particle of the batch has its fine children
    projected once; their M-step sums are kept per slice and inserted once per batch.
    """

    lookup: torch.Tensor  # (K 8 P,) long slot of each fine pose (-1: not in the table)
    fine: torch.Tensor  # (U,) fine pose of each slot
    coarse: torch.Tensor  # (U,) its coarse parent
    slices: torch.Tensor  # (U, M) complex64
    rotations: torch.Tensor  # (U, 3, 3)
    classes: torch.Tensor  # (U,)
    data: torch.Tensor  # (U, M) complex64 sum w c CTF X
    weight: torch.Tensor  # (U, M) float32 sum w c CTF^2
    mass: torch.Tensor  # (U,) summed posterior

    @classmethod
    def make(
        cls,
        keep: torch.Tensor,
        projectors: list[Projector],
        sampling: OrientationSampling,
        freq: torch.Tensor,
    ) -> _UnionTable:
        """From the ``(B, T_c, K P)`` significant coarse samples."""
        device = keep.device
        p_c = sampling.n_coarse
        coarse = torch.nonzero(keep.any(1).any(0)).flatten()  # (U_c,) class-major
        fine = (POSE_CHILDREN * coarse[:, None]
                + torch.arange(POSE_CHILDREN, device=device)).reshape(-1)
        lookup = torch.full((POSE_CHILDREN * keep.shape[2],), -1, dtype=torch.long,
                            device=device)
        lookup[fine] = torch.arange(fine.numel(), device=device)
        classes = fine // (POSE_CHILDREN * p_c)
        rots = sampling.fine_matrices.to(device)[fine % (POSE_CHILDREN * p_c)]
        slices = _project_per_particle(projectors, rots[None], classes[None], freq)[0]
        u, m = slices.shape
        return cls(lookup=lookup, fine=fine, coarse=fine // POSE_CHILDREN, slices=slices,
                   rotations=rots, classes=classes,
                   data=torch.zeros((u, m), dtype=torch.complex64, device=device),
                   weight=torch.zeros((u, m), dtype=torch.float32, device=device),
                   mass=torch.zeros(u, dtype=torch.float32, device=device))

    def add(self, slot: torch.Tensor, z: torch.Tensor, w_pose: torch.Tensor,
            cc2: torch.Tensor) -> None:
        """Sum a chunk's ``(b, P_l, M)`` ``z`` and ``(b, P_l)`` posteriors into the slots."""
        flat = slot.reshape(-1)
        m = z.shape[-1]
        self.data.index_add_(0, flat, z.reshape(-1, m))
        self.weight.index_add_(0, flat, (w_pose[:, :, None] * cc2[:, None, :]).reshape(-1, m))
        self.mass.index_add_(0, flat, w_pose.reshape(-1))
