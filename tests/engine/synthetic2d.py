"""2D test particles: distinct 2D templates, turned, shifted, CTF-modulated, with noise.

Each "molecule" is a 2D template of Gaussian blobs (asymmetric, so its in-plane angle is
defined). Particle ``i`` is ``CTF_i * template_c(R_psi^T r)`` moved to ``centre - origin``
(RELION's convention), plus white Gaussian noise; the ground truth is returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryospa.core.ctf import ctf_2d_on_grid
from cryospa.core.fourier import phase_shift_2d
from cryospa.core.projection import centred_ft_to_images, images_to_centred_ft, project_images
from cryospa.engine.data import TensorParticles
from cryospa.engine.sampling import rotations_2d


def templates(n: int, k: int, *, seed: int = 0, blobs: int = 5) -> torch.Tensor:
    """``(k, n, n)`` float32 templates of ``blobs`` Gaussians each (unit max), inside n/3."""
    g = torch.Generator().manual_seed(seed)
    ax = torch.arange(n, dtype=torch.float64) - n // 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    out = torch.zeros((k, n, n), dtype=torch.float64)
    for c in range(k):
        for _ in range(blobs):
            r = n / 3.5 * torch.sqrt(torch.rand((), generator=g, dtype=torch.float64))
            a = 2 * torch.pi * torch.rand((), generator=g, dtype=torch.float64)
            x0, y0 = r * torch.cos(a), r * torch.sin(a)
            s = n / 16 * (0.6 + torch.rand((), generator=g, dtype=torch.float64))
            out[c] += torch.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))
        out[c] /= out[c].max()
    return out.to(torch.float32)


@dataclass
class Truth:
    """Ground truth of :func:`particles`."""

    class_index: torch.Tensor  # (N,) long
    psi_degrees: torch.Tensor  # (N,) float64
    origins_px: torch.Tensor  # (N, 2) float64
    templates: torch.Tensor  # (K, n, n)


def particles(
    refs: torch.Tensor,
    n_particles: int,
    *,
    pixel_size: float = 4.0,
    snr: float = 0.5,
    max_origin_px: float = 2.0,
    ctf: bool = True,
    psi_degrees: torch.Tensor | None = None,
    origins_px: torch.Tensor | None = None,
    seed: int = 1,
) -> tuple[TensorParticles, Truth]:
    """Noisy particles of the templates ``refs`` (SNR = signal variance / noise variance)."""
    g = torch.Generator().manual_seed(seed)
    k, n, _ = refs.shape
    cls = torch.randint(0, k, (n_particles,), generator=g)
    psi = (torch.rand(n_particles, generator=g, dtype=torch.float64) * 360 - 180
           if psi_degrees is None else psi_degrees.to(torch.float64))
    org = ((torch.rand(n_particles, 2, generator=g, dtype=torch.float64) * 2 - 1) * max_origin_px
           if origins_px is None else origins_px.to(torch.float64))
    rot = rotations_2d(psi)
    clean = torch.empty((n_particles, n, n), dtype=torch.float32)
    for c in range(k):
        sel = torch.nonzero(cls == c).flatten()
        if sel.numel():
            clean[sel] = project_images(refs[c], rot[sel].to(torch.float32), padding_factor=2)
    ft = images_to_centred_ft(clean) * phase_shift_2d((n, n), -org.to(torch.float32))
    ctfs = None
    if ctf:
        du = 10000 + 15000 * torch.rand(n_particles, generator=g, dtype=torch.float64)
        ctfs = ctf_2d_on_grid((n, n), pixel_size, defocus_u_angstrom=du.to(torch.float32),
                              defocus_v_angstrom=(du - 300).to(torch.float32),
                              astigmatism_angle_degrees=30.0, voltage_kv=300.0,
                              spherical_aberration_mm=2.7, amplitude_contrast=0.1)
        ft = ft * ctfs
    signal = centred_ft_to_images(ft, n)
    var = float(signal.var(dim=(-2, -1)).mean())
    noise = torch.randn(signal.shape, generator=g) * (var / snr) ** 0.5 if snr > 0 else 0.0
    images = (signal + noise).to(torch.float32)
    return (
        TensorParticles(images=images, pixel_size_angstrom=pixel_size, ctfs=ctfs),
        Truth(class_index=cls, psi_degrees=psi, origins_px=org, templates=refs),
    )


def purity(assigned: torch.Tensor, truth: torch.Tensor) -> list[tuple[int, int, float]]:
    """Per non-empty class: (class, size, fraction of its particles from its main molecule)."""
    out = []
    for c in torch.unique(assigned).tolist():
        members = truth[assigned == c]
        counts = torch.bincount(members)
        out.append((int(c), int(members.numel()), float(counts.max()) / members.numel()))
    return out
