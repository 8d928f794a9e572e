"""3D orientation sampling, slices at chosen frequencies, symmetrised back-projection."""

from __future__ import annotations

import torch

from cryospa.core.backprojection import (
    backproject,
    backproject_points,
    make_backprojector,
    reconstruct,
    symmetrise_backprojector,
)
from cryospa.core.projection import make_projector, project, project_points
from cryospa.core.rotations import angular_distance_degrees, random_rotations
from cryospa.core.symmetry import symmetrise_volume, symmetry_operators
from cryospa.engine.coefficients import FourierSubset
from cryospa.engine.estep3d import angles_to, freq_px
from cryospa.engine.sampling3d import OrientationSampling


def test_global_grid_counts_and_children_near_their_parent() -> None:
    c1 = OrientationSampling.global_grid(2)
    assert c1.n_coarse == 192 * 24  # HEALPix order 2 x 24 psi
    assert c1.fine_matrices.shape[0] == 8 * c1.n_coarse
    d2 = OrientationSampling.global_grid(2, "D2")
    assert d2.n_coarse == c1.n_coarse // 4
    parent = c1.coarse_matrices.double().repeat_interleave(8, 0)
    dist = angular_distance_degrees(parent, c1.fine_matrices.double())
    # children sit about half a coarse step (15°) away; poles stretch a few
    assert 5.0 < float(dist.median()) < 10.0
    assert float((dist < 12.0).double().mean()) > 0.9
    assert torch.allclose(c1.fine_log_prior.exp().sum(), torch.tensor(1.0))


def test_local_grid_is_a_truncated_gaussian_around_the_current_orientation() -> None:
    local = OrientationSampling.local_grid(3, sigma_degrees=7.5)
    assert 0.9 < float(local.coarse_log_prior.exp().sum()) < 1.01
    assert 0.9 < float(local.fine_log_prior.exp().sum()) < 1.01
    base = random_rotations(2, generator=torch.Generator().manual_seed(0)).float()
    idx = torch.arange(local.n_coarse).expand(2, -1)
    rots = local.absolute(idx, base, fine=False)
    dist = angular_distance_degrees(rots.double(),
                                    base.double()[:, None].expand_as(rots))
    assert float(dist.max()) <= 3 * 7.5 + 1e-3
    assert float(dist.min()) < 1e-3  # the current orientation itself is sampled


def test_slices_at_chosen_frequencies_equal_whole_slices() -> None:
    n = 24
    vol = torch.randn(n, n, n)
    proj = make_projector(vol)
    rots = random_rotations(4, generator=torch.Generator().manual_seed(1)).float()
    subset = FourierSubset.within(n, 9)
    whole = subset.gather(project(proj, rots))
    got = project_points(proj, rots, freq_px(subset))
    assert float((got - whole).abs().max()) < 1e-5 * float(whole.abs().max())
    bp1, bp2 = make_backprojector(n), make_backprojector(n)
    ft = torch.randn(4, n, n // 2 + 1, dtype=torch.complex64)
    backproject(bp1, subset.scatter(subset.gather(ft)), rots,
                ctf=subset.scatter(torch.ones(4, subset.size)))
    backproject_points(bp2, subset.gather(ft), torch.ones(4, subset.size), rots,
                       freq_px(subset))
    assert float((bp1.data - bp2.data).abs().max()) < 1e-5 * float(bp1.data.abs().max())
    assert torch.allclose(bp1.weight, bp2.weight, atol=1e-5)


def test_symmetrised_accumulators_equal_inserting_every_mate() -> None:
    n = 24
    vol = torch.zeros(n, n, n)
    vol[6:15, 8:14, 5:17] = 1.0
    vol = symmetrise_volume(vol, "D2")
    rots = random_rotations(500, generator=torch.Generator().manual_seed(2)).float()
    ops = symmetry_operators("D2").float()
    ft = project(make_projector(vol), rots)[0]
    once, every = make_backprojector(n), make_backprojector(n)
    backproject(once, ft, rots)
    for op in ops:
        backproject(every, ft, rots @ op)
    a = reconstruct(symmetrise_backprojector(once, ops))
    b = reconstruct(every)
    assert float((a - b).norm() / b.norm()) < 1e-4


def test_angles_between_orientations_count_symmetry_mates_as_equal() -> None:
    ops = symmetry_operators("D2").float()
    r = random_rotations(3, generator=torch.Generator().manual_seed(3)).float()
    mates = torch.stack([r @ o for o in ops], dim=1)
    assert float(angles_to(r, mates, ops).max()) < 0.1
    assert float(angles_to(r, mates, None)[:, 1:].min()) > 170.0
