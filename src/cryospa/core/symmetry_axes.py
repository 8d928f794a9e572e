"""Finding the symmetry axes of a map, and superposing two maps (rotation and shift).

A map reconstructed without symmetry (an initial model in C1) sits in an arbitrary frame. To
impose a point group ``G`` (RELION's axes, :func:`cryospa.core.symmetry.symmetry_operators`)
it must first be turned so that its own symmetry axes lie on those of ``G`` and centred on the
box centre, the point every operator keeps fixed:

1. centre: the map is translated so that its centre of mass (of the positive part of the
   low-passed, masked map) sits at voxel ``n // 2`` -- for a symmetric object that is a point
   of every symmetry axis;
2. coarse search: for every rotation ``R`` of a HEALPix x psi grid the score is the mean
   normalised correlation, inside a sphere, between ``W = R V`` and its copies ``g W``
   (``g`` in ``G`` but the identity); since ``corr(R V, g R V) = corr(V, R^T g R V)`` each
   rotation costs ``|G| - 1`` rotations of the (down-sampled) map;
3. local refinement of the best few: a pattern search over small rotations (rotation vectors
   along each axis) and shifts, halving the steps down to a tenth of a degree and of a voxel,
   on the full map.

The fit of the symmetry is the normalised correlation of the aligned map with its symmetrised
version (1 for an exactly symmetric map; about ``1 / sqrt(|G|)`` for a map without any of
that symmetry), both taken without their spherical average (which every group keeps, so it
would only inflate the score of a blob-like low-resolution map). Only the proper rotations of
``G`` are used: mirror-related hands cannot be told apart from projections, and an initial
model may come out with either hand.

:func:`superpose` finds, the same way, the rotation and shift that bring one map onto another
(optionally also trying the mirror image), for comparing a model in an arbitrary frame with a
known map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from cryospa.core.filters import lowpass
from cryospa.core.fourier import fourier_crop
from cryospa.core.interpolate import rotate_volume
from cryospa.core.masks import soft_sphere
from cryospa.core.rotations import euler_to_matrix, rotation_about_axis
from cryospa.core.sampling import orientation_grid
from cryospa.core.symmetry import symmetry_operators

__all__ = [
    "Superposition",
    "SymmetryAlignment",
    "align_to_symmetry_axes",
    "anisotropic_part",
    "centre_of_mass",
    "shift_volume",
    "superpose",
    "symmetry_fit",
    "transform_volume",
]

#: Box of the coarse search (maps are Fourier-cropped to at most this size).
_COARSE_BOX = 16
#: Box of the local refinement (an initial model has no detail finer than this resolves).
_FINE_BOX = 32


@dataclass(frozen=True)
class SymmetryAlignment:
    """Result of :func:`align_to_symmetry_axes`.

    Attributes
    ----------
    rotation
        ``(3, 3)`` float64 ``R``: the aligned map is ``W(p) = V'(R^T p)`` with ``V'`` the input
        translated by ``shift_px`` (:func:`transform_volume`).
    shift_px
        ``(3,)`` float64 translation ``(x, y, z)`` in voxels applied before the rotation.
    aligned
        ``(n, n, n)`` the input map turned onto the group's axes (not symmetrised).
    symmetrised
        ``(n, n, n)`` ``aligned`` averaged over the group's rotations.
    fit
        Normalised correlation of ``aligned`` with ``symmetrised`` inside the mask.
    pair_correlation
        Mean normalised correlation of ``aligned`` with each of its turned copies ``g W``.
    """

    rotation: torch.Tensor
    shift_px: torch.Tensor
    aligned: torch.Tensor
    symmetrised: torch.Tensor
    fit: float
    pair_correlation: float


@dataclass(frozen=True)
class Superposition:
    """Result of :func:`superpose`.

    ``moving`` (mirrored first if ``mirrored``) turned onto ``fixed`` is
    ``moved = transform_volume(m, rotation, shift_px)``; ``correlation`` is reached.
    """

    rotation: torch.Tensor
    shift_px: torch.Tensor
    mirrored: bool
    correlation: float
    moved: torch.Tensor


def shift_volume(volume: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """Translate ``(n, n, n)`` by ``(x, y, z)`` voxels (Fourier phase shift, periodic)."""
    n = volume.shape[-1]
    s = shift_px.to(torch.float64)
    k = torch.fft.fftfreq(n, dtype=torch.float64, device=volume.device)
    kr = torch.fft.rfftfreq(n, dtype=torch.float64, device=volume.device)
    phase = (s[0] * kr[None, None, :] + s[1] * k[None, :, None] + s[2] * k[:, None, None])
    ramp = torch.exp(-2j * math.pi * phase)
    ft = torch.fft.rfftn(volume.to(torch.float64), dim=(-3, -2, -1))
    return torch.fft.irfftn(ft * ramp, s=volume.shape[-3:], dim=(-3, -2, -1)).to(volume.dtype)


def transform_volume(volume: torch.Tensor, rotation: torch.Tensor,
                     shift_px: torch.Tensor) -> torch.Tensor:
    """``W(p) = V(R^T p - t)``: translate by ``shift_px`` then rotate about the centre."""
    return rotate_volume(shift_volume(volume, shift_px), rotation.to(volume.dtype))


def centre_of_mass(volume: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Centre of mass of the positive part of a map.

    ``(3,)`` ``(x, y, z)`` in voxels relative to the centre voxel ``n // 2``.
    """
    n = volume.shape[-1]
    w = volume.to(torch.float64).clamp(min=0)
    if mask is not None:
        w = w * mask.to(w)
    total = w.sum()
    if not float(total) > 0:
        return torch.zeros(3, dtype=torch.float64)
    axis = torch.arange(n, dtype=torch.float64, device=volume.device) - n // 2
    x = (w.sum((0, 1)) * axis).sum() / total
    y = (w.sum((0, 2)) * axis).sum() / total
    z = (w.sum((1, 2)) * axis).sum() / total
    return torch.stack([x, y, z]).cpu()


def _corr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked normalised correlation of ``(..., n, n, n)`` maps (means removed)."""
    w = mask / mask.sum()
    am = a - (a * w).sum((-3, -2, -1), keepdim=True)
    bm = b - (b * w).sum((-3, -2, -1), keepdim=True)
    num = (am * bm * w).sum((-3, -2, -1))
    den = torch.sqrt((am * am * w).sum((-3, -2, -1)) * (bm * bm * w).sum((-3, -2, -1)))
    return num / den.clamp(min=1e-30)


def anisotropic_part(volume: torch.Tensor) -> torch.Tensor:
    """The map minus its spherical average about the centre voxel (linear in the radius).

    Every point group leaves the spherical average unchanged, so it only inflates symmetry
    correlations; the fit is measured on what remains.
    """
    n = volume.shape[-1]
    axis = torch.arange(n, dtype=torch.float64, device=volume.device) - n // 2
    r = torch.sqrt(axis[:, None, None] ** 2 + axis[None, :, None] ** 2
                   + axis[None, None, :] ** 2).reshape(-1)
    lo = torch.floor(r).long()
    frac = r - lo
    bins = int(lo.max()) + 2
    v = volume.reshape(*volume.shape[:-3], -1).to(torch.float64)
    sums = torch.zeros((*v.shape[:-1], bins), dtype=torch.float64, device=volume.device)
    wts = torch.zeros(bins, dtype=torch.float64, device=volume.device)
    sums.index_add_(-1, lo, v * (1 - frac))
    sums.index_add_(-1, lo + 1, v * frac)
    wts.index_add_(0, lo, 1 - frac)
    wts.index_add_(0, lo + 1, frac)
    profile = sums / wts.clamp(min=1e-12)
    radial = profile[..., lo] * (1 - frac) + profile[..., lo + 1] * frac
    return (v - radial).reshape(volume.shape).to(volume.dtype)


def _proper(symmetry: str, dtype: torch.dtype) -> torch.Tensor:
    ops = symmetry_operators(symmetry, dtype=torch.float64)
    return ops[torch.linalg.det(ops) > 0].to(dtype)


def _small_rotations(step_degrees: float) -> torch.Tensor:
    """Identity and rotations of ``+-step`` about x, y and z: ``(7, 3, 3)`` float64."""
    eye = torch.eye(3, dtype=torch.float64)[None]
    axes = torch.eye(3, dtype=torch.float64).repeat_interleave(2, 0)
    signs = torch.tensor([1.0, -1.0] * 3, dtype=torch.float64)
    return torch.cat([eye, rotation_about_axis(axes, signs * step_degrees)])


def _coarse(volume: torch.Tensor, box: int) -> torch.Tensor:
    n = volume.shape[-1]
    if n <= box:
        return volume
    m = box - box % 2
    return fourier_crop(volume, (m, m, m))


def _symmetry_scores(volume: torch.Tensor, rotations: torch.Tensor, ops: torch.Tensor,
                     mask: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """``(R,)`` mean correlation of ``R V`` with ``g R V`` over ``ops`` (identity excluded)."""
    others = ops[1:]
    volume = anisotropic_part(volume)
    out = []
    for start in range(0, rotations.shape[0], chunk):
        r = rotations[start:start + chunk].to(volume.dtype)
        conj = r.transpose(-1, -2)[:, None] @ others[None].to(volume.dtype) @ r[:, None]
        turned = rotate_volume(volume, conj.reshape(-1, 3, 3))
        c = _corr(volume[None], turned, mask).reshape(r.shape[0], -1)
        out.append(c.mean(1))
    return torch.cat(out)


def _mask_for(n: int, radius_px: float | None, device: torch.device) -> torch.Tensor:
    r = (n / 2 - 2) if radius_px is None else min(radius_px, n / 2 - 1)
    return soft_sphere(n, max(r - 2, 1.0), edge_width_px=3.0, device=device,
                       dtype=torch.float64)


def _refine(
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    rotation: torch.Tensor,
    shift: torch.Tensor,
    *,
    start_degrees: float,
    start_px: float,
    min_degrees: float = 0.1,
    min_px: float = 0.1,
    shifts: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Pattern search of a ``score(rotations (R, 3, 3), shift (3,)) -> (R,)`` maximum."""
    fn = score
    best_r, best_t = rotation.clone(), shift.clone()
    best = float(fn(best_r[None], best_t)[0])
    step_a, step_t = start_degrees, start_px
    while step_a >= min_degrees or (shifts and step_t >= min_px):
        improved = False
        if step_a >= min_degrees:
            cands = _small_rotations(step_a)[1:] @ best_r[None]
            vals = fn(cands, best_t)
            i = int(torch.argmax(vals))
            if float(vals[i]) > best + 1e-7:
                best, best_r, improved = float(vals[i]), cands[i], True
        if shifts and step_t >= min_px:
            for d in torch.eye(3, dtype=torch.float64).repeat_interleave(2, 0) * torch.tensor(
                    [1.0, -1.0] * 3, dtype=torch.float64)[:, None]:
                t = best_t + d * step_t
                v = float(fn(best_r[None], t)[0])
                if v > best + 1e-7:
                    best, best_t, improved = v, t, True
        if not improved:
            step_a /= 2.0
            step_t /= 2.0
    return best_r, best_t, best


def align_to_symmetry_axes(
    volume: torch.Tensor,
    symmetry: str,
    *,
    mask_radius_px: float | None = None,
    lowpass_px: float = 3.0,
    coarse_order: int | None = None,
    candidates: int = 4,
    refine_shift: bool = True,
) -> SymmetryAlignment:
    """Turn and centre ``(n, n, n)`` so that its symmetry axes are those of ``symmetry``.

    Parameters
    ----------
    volume
        Real map, centre voxel ``n // 2``.
    symmetry
        Point group name (RELION's axes); C1 returns the centred map unchanged.
    mask_radius_px
        Radius of the spherical mask of the correlations (default: the box).
    lowpass_px
        The search uses the map low-passed to a resolution of this many voxels (3: a little
        below Nyquist's 2); the centre of mass is taken at four times that.
    coarse_order
        HEALPix order of the coarse rotation grid (1: 15 degrees, 1,152 rotations; 0: 30
        degrees, 144). Default: 1, or 0 for groups of more than 8 rotations (every alignment
        then appears that many times in the grid, which samples it finely enough).
    candidates
        Coarse maxima refined locally.
    refine_shift
        Also refine the centre (the centre of mass is only a start).

    Returns
    -------
    SymmetryAlignment
        Rotation, shift, aligned and symmetrised maps, fit (module docstring).
    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"a cubic (n, n, n) map is needed, got {tuple(volume.shape)}")
    vol = volume.to(torch.float64)
    n = vol.shape[-1]
    ops = _proper(symmetry, torch.float64).to(vol.device)
    if coarse_order is None:
        coarse_order = 1 if ops.shape[0] <= 8 else 0
    mask = _mask_for(n, mask_radius_px, vol.device)
    smooth = lowpass(vol, lowpass_px, pixel_size_angstrom=1.0, ndim=3)
    shift0 = -centre_of_mass(lowpass(vol, 4.0 * lowpass_px, pixel_size_angstrom=1.0, ndim=3),
                             mask=mask)
    eye = torch.eye(3, dtype=torch.float64)
    if ops.shape[0] <= 1:
        best_r, best_t = eye, shift0
    else:
        # coarse search on a down-sampled, centred map
        small = _coarse(shift_volume(smooth, shift0), _COARSE_BOX)
        m = small.shape[-1]
        mask_s = _mask_for(m, None if mask_radius_px is None else mask_radius_px * m / n,
                           vol.device)
        grid = euler_to_matrix(orientation_grid(coarse_order)).to(vol.device)
        scores = _symmetry_scores(small, grid, ops, mask_s)
        order = torch.argsort(scores, descending=True)
        picked: list[torch.Tensor] = []
        for i in order.tolist():
            r = grid[i]
            # skip rotations equivalent (up to the group) to one already picked
            if any(_group_distance(r, p, ops) < 2.0 * _step(coarse_order) for p in picked):
                continue
            picked.append(r)
            if len(picked) >= candidates:
                break

        fine = _coarse(smooth, _FINE_BOX)
        f = fine.shape[-1] / n  # voxel scale of the refinement box
        mask_f = _mask_for(fine.shape[-1], None if mask_radius_px is None
                           else mask_radius_px * f, vol.device)

        def score(rots: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return _symmetry_scores(shift_volume(fine, t), rots, ops, mask_f)

        def score_small(rots: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return _symmetry_scores(small, rots, ops, mask_s)

        # refine each candidate on the small map, then the best one (and the centre) on the
        # full map
        results = [_refine(score_small, r, shift0, start_degrees=_step(coarse_order) / 2,
                           start_px=1.0, min_degrees=1.0, shifts=False) for r in picked]
        best_r = max(results, key=lambda x: x[2])[0]
        best_r, best_t, _ = _refine(score, best_r, shift0 * f, start_degrees=1.0,
                                    start_px=1.0, min_degrees=0.2, min_px=0.1,
                                    shifts=refine_shift)
        best_t = best_t / f
    aligned = transform_volume(vol, best_r, best_t)
    symmetrised = torch.stack([rotate_volume(aligned, g) for g in ops]).mean(0)
    fit = symmetry_fit(aligned, symmetry, mask_radius_px=mask_radius_px)
    pair = (float(_symmetry_scores(aligned, eye[None], ops, mask)[0]) if ops.shape[0] > 1
            else 1.0)
    return SymmetryAlignment(rotation=best_r.cpu(), shift_px=best_t.cpu(),
                             aligned=aligned.to(volume.dtype),
                             symmetrised=symmetrised.to(volume.dtype), fit=fit,
                             pair_correlation=pair)


def symmetry_fit(volume: torch.Tensor, symmetry: str, *,
                 mask_radius_px: float | None = None) -> float:
    """Normalised correlation of a map (already on the group's axes) with its symmetrised self.

    Both without their spherical average (:func:`anisotropic_part`), inside a soft sphere of
    ``mask_radius_px`` (default: the box).
    """
    vol = volume.to(torch.float64)
    ops = _proper(symmetry, torch.float64).to(vol.device)
    mask = _mask_for(vol.shape[-1], mask_radius_px, vol.device)
    aniso = anisotropic_part(vol)
    sym = torch.stack([rotate_volume(aniso, g) for g in ops]).mean(0)
    return float(_corr(aniso, sym, mask))


def _step(order: int) -> float:
    return 60.0 / 2**order


def _group_distance(a: torch.Tensor, b: torch.Tensor, ops: torch.Tensor) -> float:
    """Smallest angle (degrees) between ``a`` and ``g b`` over the group (same axes result)."""
    rel = (ops @ b[None]) @ a.T[None]
    tr = rel.diagonal(dim1=-2, dim2=-1).sum(-1)
    return float(torch.rad2deg(torch.arccos(((tr - 1) / 2).clamp(-1, 1))).min())


def superpose(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    *,
    mirror: bool = False,
    mask_radius_px: float | None = None,
    lowpass_px: float = 3.0,
    coarse_order: int = 1,
    candidates: int = 4,
    symmetry: str = "C1",
) -> Superposition:
    """Rotation and shift bringing ``moving`` onto ``fixed`` (both ``(n, n, n)``).

    Both are first centred on their centres of mass; a coarse rotation grid (down-sampled maps)
    is searched, the best ``candidates`` refined locally with the shift. ``mirror``: also try
    the mirror image of ``moving`` (hand flip, ``z -> -z`` about the centre) and keep the
    better. ``symmetry``: the point group of ``fixed`` (rotations equivalent under it are not
    refined twice).
    """
    fix = fixed.to(torch.float64)
    n = fix.shape[-1]
    mask = _mask_for(n, mask_radius_px, fix.device)
    ops = _proper(symmetry, torch.float64).to(fix.device)
    fix_s = lowpass(fix, lowpass_px, pixel_size_angstrom=1.0, ndim=3)
    c_fix = centre_of_mass(lowpass(fix, 4 * lowpass_px, pixel_size_angstrom=1.0, ndim=3),
                           mask=mask)
    fix_c = shift_volume(fix_s, -c_fix)
    small_fix = _coarse(fix_c, _COARSE_BOX)
    fix_f = _coarse(fix_s, _FINE_BOX)
    mask_f = _mask_for(fix_f.shape[-1], None if mask_radius_px is None
                       else mask_radius_px * fix_f.shape[-1] / n, fix.device)
    m = small_fix.shape[-1]
    mask_s = _mask_for(m, None if mask_radius_px is None else mask_radius_px * m / n, fix.device)
    grid = euler_to_matrix(orientation_grid(coarse_order)).to(fix.device)
    tries = [False, True] if mirror else [False]
    best: Superposition | None = None
    for flip in tries:
        mov = moving.to(torch.float64)
        if flip:
            mov = torch.flip(mov, dims=(-3,))
            if n % 2 == 0:  # keep the centre voxel n // 2 in place
                mov = torch.roll(mov, 1, dims=-3)
        mov_s = lowpass(mov, lowpass_px, pixel_size_angstrom=1.0, ndim=3)
        c_mov = centre_of_mass(lowpass(mov, 4 * lowpass_px, pixel_size_angstrom=1.0, ndim=3),
                               mask=mask)
        small = _coarse(shift_volume(mov_s, -c_mov), _COARSE_BOX)
        scores = torch.cat([_corr(small_fix[None], rotate_volume(small, grid[s:s + 128]),
                                  mask_s) for s in range(0, grid.shape[0], 128)])
        picked: list[torch.Tensor] = []
        for i in torch.argsort(scores, descending=True).tolist():
            r = grid[i]
            if any(_group_distance(r, p, ops) < 2.0 * _step(coarse_order) for p in picked):
                continue
            picked.append(r)
            if len(picked) >= candidates:
                break

        def score_small(rots: torch.Tensor, t: torch.Tensor, small: torch.Tensor = small
                        ) -> torch.Tensor:
            return _corr(small_fix[None], rotate_volume(small, rots), mask_s)

        mov_f = _coarse(mov_s, _FINE_BOX)
        f = mov_f.shape[-1] / n

        def score(rots: torch.Tensor, t: torch.Tensor, mov_f: torch.Tensor = mov_f
                  ) -> torch.Tensor:
            moved = rotate_volume(shift_volume(mov_f, t), rots)
            return _corr(fix_f[None], moved, mask_f)

        # rotations refined on the centred small maps, then the best with the shift on the
        # full maps: W = shift(R shift(V, -c_mov), c_fix) = R shift(V, R^T c_fix - c_mov)
        results = [_refine(score_small, r, torch.zeros(3, dtype=torch.float64),
                           start_degrees=_step(coarse_order) / 2, start_px=1.0,
                           min_degrees=1.0, shifts=False) for r in picked]
        r0 = max(results, key=lambda x: x[2])[0]
        r_best, t_best, _ = _refine(score, r0, (r0.T @ c_fix - c_mov) * f, start_degrees=1.0,
                                    start_px=1.0, min_degrees=0.2, min_px=0.1)
        t_best = t_best / f
        moved_full = transform_volume(mov, r_best, t_best)
        value = float(_corr(fix_s, lowpass(moved_full, lowpass_px, pixel_size_angstrom=1.0,
                                           ndim=3), mask))
        if best is None or value > best.correlation:
            best = Superposition(rotation=r_best.cpu(), shift_px=t_best.cpu(), mirrored=flip,
                                 correlation=value, moved=moved_full.to(moving.dtype))
    assert best is not None
    return best
