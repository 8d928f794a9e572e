import numpy as np
import pytest
import torch

from cryospa.core.filters import radial_average
from cryospa.core.fourier import phase_shift_2d
from cryospa.engine.coefficients import FourierSubset
from cryospa.engine.data import centred_irfft, centred_rfft


def _full_fft_counts(n: int) -> np.ndarray:
    k = np.fft.fftfreq(n) * n
    ky, kx = np.meshgrid(k, k, indexing="ij")
    shell = np.floor(np.sqrt(kx**2 + ky**2) + 0.5).astype(int)
    return np.bincount(shell[shell <= n // 2], minlength=n // 2 + 1)


@pytest.mark.parametrize("n", [32, 33])
def test_shell_counts_match_the_full_fft(n: int) -> None:
    full = FourierSubset.within(n, n // 2, min_shell=0)
    np.testing.assert_array_equal(full.shell_counts.numpy(), _full_fft_counts(n))
    inner = FourierSubset.within(n, 7)
    assert inner.shell.min() == 1 and inner.shell.max() == 7
    np.testing.assert_array_equal(inner.shell_counts.numpy()[1:8], _full_fft_counts(n)[1:8])
    assert inner.shell_counts[0] == 0 and inner.shell_counts[8:].sum() == 0


@pytest.mark.parametrize("n", [32, 33])
def test_shell_sums_equal_radial_average(n: int, device: str) -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.randn(3, n, n, generator=g).to(device)
    full = FourierSubset.within(n, n // 2, min_shell=0, device=device)
    power = centred_rfft(img).abs() ** 2
    mine = full.shell_sums(full.gather(power).double()) / full.shell_counts
    ref = radial_average(power.double(), ndim=2)
    torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-9)


def test_parseval_with_multiplicities() -> None:
    n = 48
    ax = torch.arange(n, dtype=torch.float64) - n // 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    img = torch.exp(-((xx - 3) ** 2 + (yy + 2) ** 2) / 18.0)  # negligible power in the corners
    full = FourierSubset.within(n, n // 2, min_shell=0)
    coeff = full.gather(centred_rfft(img))
    total = float((full.multiplicity.double() * coeff.abs() ** 2).sum())
    assert total == pytest.approx(float((img * img).sum()), rel=1e-9)


def test_gather_scatter_and_phase_ramps(device: str) -> None:
    n = 24
    sub = FourierSubset.within(n, 9, device=device)
    g = torch.Generator().manual_seed(1)
    img = torch.randn(2, n, n, generator=g).to(device)
    ft = centred_rfft(img)
    back = sub.scatter(sub.gather(ft))
    inside = sub.scatter(torch.ones(sub.size, device=device)) > 0
    torch.testing.assert_close(back[:, inside], ft[:, inside])
    assert bool((back[:, ~inside] == 0).all())
    shifts = torch.tensor([[1.5, -0.25], [0.0, 3.0]], device=device)
    ramps = sub.phase_ramps(shifts)
    expected = sub.gather(phase_shift_2d((n, n), shifts, device=device))
    torch.testing.assert_close(ramps, expected.to(torch.complex64), rtol=1e-5, atol=1e-5)
    # a ramp moves content by +shift, as core.fourier (an integer shift is a roll)
    moved = centred_irfft(sub.scatter(sub.gather(centred_rfft(img)) * ramps[1]), n)
    low = centred_irfft(sub.scatter(sub.gather(centred_rfft(img))), n)
    torch.testing.assert_close(moved, torch.roll(low, shifts=(3, 0), dims=(-2, -1)),
                               rtol=1e-4, atol=1e-4)
    assert ramps.device.type == torch.device(device).type


def test_bad_subsets_are_refused() -> None:
    with pytest.raises(ValueError, match="box size"):
        FourierSubset.within(1, 1)
    with pytest.raises(ValueError, match="below min_shell"):
        FourierSubset.within(32, 0)
