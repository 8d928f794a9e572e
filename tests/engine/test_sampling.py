import pytest
import torch

from cryospa.core.rotations import euler_to_matrix
from cryospa.engine.sampling import InPlaneSampling, rotations_2d


def test_fine_psi_grid_is_uniform_and_children_straddle_the_coarse_angle() -> None:
    s = InPlaneSampling.make(psi_step_degrees=6.0, offset_range_px=5.0, offset_step_px=1.0)
    assert s.coarse_psi.numel() == 30 and s.fine_psi.numel() == 60
    assert s.fine_psi_step_degrees == pytest.approx(6.0)
    diffs = torch.diff(s.fine_psi)
    torch.testing.assert_close(diffs, torch.full_like(diffs, 6.0))
    pairs = s.fine_psi.reshape(-1, 2)
    torch.testing.assert_close(pairs.mean(1), s.coarse_psi)


def test_translations_inside_the_range_and_children_around_parents() -> None:
    s = InPlaneSampling.make(psi_step_degrees=10.0, offset_range_px=5.0, offset_step_px=1.0)
    c = s.coarse_translations
    assert bool(((c * c).sum(1) <= 25 + 1e-9).all())
    assert c.shape[0] == 21  # the 5 x 5 grid of step 2 inside radius 5, minus 4 corners
    assert bool((c == 0).all(1).any())  # the origin is a coarse sample
    kids = s.fine_translations.reshape(-1, 4, 2)
    torch.testing.assert_close(kids.mean(1), c)
    torch.testing.assert_close((kids - c[:, None]).abs(), torch.full_like(kids, 0.5))
    assert s.fine_cell_area_px2 == 1.0


def test_no_translation_search() -> None:
    s = InPlaneSampling.make(psi_step_degrees=10.0, offset_range_px=0.0, offset_step_px=0.0)
    assert s.translation_children == 1
    assert s.fine_translations.tolist() == [[0.0, 0.0]]


def test_rotations_2d_is_relions_block() -> None:
    psi = torch.tensor([0.0, 33.0, -120.0], dtype=torch.float64)
    full = euler_to_matrix(torch.stack([torch.zeros(3), torch.zeros(3), psi], -1).double())
    torch.testing.assert_close(rotations_2d(psi), full[:, :2, :2])


def test_bad_sampling_is_refused() -> None:
    with pytest.raises(ValueError, match="psi step"):
        InPlaneSampling.make(psi_step_degrees=0.0, offset_range_px=1, offset_step_px=1)
    with pytest.raises(ValueError, match="offset step"):
        InPlaneSampling.make(psi_step_degrees=5.0, offset_range_px=3, offset_step_px=0)
    with pytest.raises(ValueError, match="offset range"):
        InPlaneSampling.make(psi_step_degrees=5.0, offset_range_px=-1, offset_step_px=1)
