"""Synthetic half maps with a known resolution and B-factor (post-processing tests)."""

from __future__ import annotations

import numpy as np
import torch

from cryospa.core.bfactor import apply_bfactor
from cryospa.core.filters import lowpass
from cryospa.core.masks import mask_from_map
from tests.synthetic import pseudo_atomic_map


def white_map(n: int, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A ``(n, n, n)`` map with a flat amplitude spectrum (white noise)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, n, n), generator=g, dtype=dtype)


def half_maps_with_known_resolution(
    n: int = 64,
    *,
    pixel_size: float = 2.0,
    signal_shell: int = 16,
    noise: float = 0.02,
    bfactor: float = 0.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Half maps whose shared signal stops at ``signal_shell`` (a hard low-pass there).

    The signal is a pseudo-atomic map (signal to Nyquist) blurred by ``bfactor`` (Å^2) and cut at
    the resolution of ``signal_shell``; each half adds independent white noise of standard
    deviation ``noise`` times the signal's. The FSC is near 1 up to ``signal_shell`` and near 0
    beyond it, so the true resolution is that shell.

    Returns
    -------
    half1, half2, mask, truth
        ``(n, n, n)`` float64: the two halves, a soft mask (threshold of the 10 Å-filtered truth,
        extended 2 px, 3 px soft edge) and the noise-free signal.

    """
    vol = torch.from_numpy(pseudo_atomic_map(n, seed=seed)).double()
    if bfactor:
        vol = apply_bfactor(vol, bfactor, pixel_size_angstrom=pixel_size)
    truth = lowpass(vol, n * pixel_size / signal_shell, pixel_size_angstrom=pixel_size,
                    edge_width_px=0.0, ndim=3)
    g = torch.Generator().manual_seed(seed + 1)
    sd = noise * float(truth.std())
    h1 = truth + sd * torch.randn(truth.shape, generator=g, dtype=truth.dtype)
    h2 = truth + sd * torch.randn(truth.shape, generator=g, dtype=truth.dtype)
    smooth = lowpass(vol, 10.0, pixel_size_angstrom=pixel_size, ndim=3)
    threshold = float(np.percentile(smooth.numpy(), 85))
    mask = mask_from_map(smooth, threshold=threshold, extend_px=2, soft_edge_px=3)
    return h1, h2, mask, truth
