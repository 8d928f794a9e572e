"""Particle images for the engine: where they come from and how a batch is prepared.

A :class:`ParticleSource` hands out images and CTFs by index (the jobs wrap a STAR file, the
tests a tensor). :func:`prepare_batch` turns a batch into what the E-step needs: each image is
translated by its current origin (Fourier shift, so the particle sits at the box centre), masked
with the soft particle mask (zeros outside, or noise with the current noise spectrum as RELION's
default without ``--zero_mask``), Fourier transformed (``rfft2`` of the centred image with
``norm="ortho"``) and cut down to the coefficients of the current :class:`FourierSubset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from cryospa.core.fourier import centre_to_origin, origin_to_centre, phase_shift_2d
from cryospa.engine.coefficients import FourierSubset

__all__ = [
    "ParticleSource",
    "PreparedBatch",
    "TensorParticles",
    "centre_and_mask",
    "centred_irfft",
    "centred_rfft",
    "prepare_batch",
]


class ParticleSource(Protocol):
    """Images, CTFs and optics groups of ``N`` particles, by index."""

    box_size: int
    pixel_size_angstrom: float
    has_ctf: bool

    def __len__(self) -> int:
        """``N``."""
        ...

    def optics_groups(self) -> torch.Tensor:
        """``(N,)`` long optics group of each particle, 0-based and contiguous."""
        ...

    def load(
        self, index: torch.Tensor, device: torch.device, *, ctf: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(b, n, n)`` float32 images and, if ``ctf``, ``(b, n, n // 2 + 1)`` CTFs."""
        ...


@dataclass
class TensorParticles:
    """A :class:`ParticleSource` held in memory (tests, small data sets).

    Attributes
    ----------
    images
        ``(N, n, n)`` float32.
    pixel_size_angstrom
        Pixel size (Å).
    ctfs
        ``(N, n, n // 2 + 1)`` CTF values on the rfft grid, or None.
    groups
        ``(N,)`` long optics groups (0-based), or None for one group.
    """

    images: torch.Tensor
    pixel_size_angstrom: float
    ctfs: torch.Tensor | None = None
    groups: torch.Tensor | None = None

    @property
    def box_size(self) -> int:
        """``n``."""
        return int(self.images.shape[-1])

    @property
    def has_ctf(self) -> bool:
        """Whether CTFs were given."""
        return self.ctfs is not None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def optics_groups(self) -> torch.Tensor:
        """Optics group per particle (all 0 if none were given)."""
        if self.groups is None:
            return torch.zeros(len(self), dtype=torch.long)
        return self.groups.to(torch.long).cpu()

    def load(
        self, index: torch.Tensor, device: torch.device, *, ctf: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (and CTFs) of ``index``, on ``device``."""
        idx = index.cpu()
        images = self.images[idx].to(device=device, dtype=torch.float32)
        if not ctf:
            return images, None
        if self.ctfs is None:
            raise ValueError("CTF correction requested but the particles have no CTFs")
        return images, self.ctfs[idx].to(device=device, dtype=torch.float32)


def centred_rfft(images: torch.Tensor) -> torch.Tensor:
    """``(..., n, n)`` real images, centre ``n // 2`` -> ``norm="ortho"`` rfft, DC at 0."""
    return torch.fft.rfft2(centre_to_origin(images, 2), norm="ortho")


def centred_irfft(ft: torch.Tensor, box_size: int) -> torch.Tensor:
    """Inverse of :func:`centred_rfft`."""
    return origin_to_centre(torch.fft.irfft2(ft, s=(box_size, box_size), norm="ortho"), 2)


def centre_and_mask(
    images: torch.Tensor,
    offsets_px: torch.Tensor,
    mask: torch.Tensor,
    *,
    full: FourierSubset,
    noise_sigma2: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Translate ``(B, n, n)`` images by their ``(B, 2)`` origins and apply the soft mask.

    Outside the mask: zeros, or (``noise_sigma2`` given, ``(n // 2 + 1,)``) Gaussian noise with
    that power spectrum drawn from ``generator``.
    """
    n = images.shape[-1]
    ramp = phase_shift_2d((n, n), offsets_px.to(torch.float32), device=images.device)
    centred = centred_irfft(centred_rfft(images) * ramp, n)
    if noise_sigma2 is None:
        return centred * mask
    white = torch.randn(images.shape, generator=generator, device=images.device)
    spectrum = noise_sigma2.to(device=images.device, dtype=torch.float32)
    amplitude = torch.sqrt(full.scatter(full.per_coefficient(spectrum)).clamp(min=0))
    noise = centred_irfft(centred_rfft(white) * amplitude, n)
    return centred * mask + noise * (1.0 - mask)


@dataclass
class PreparedBatch:
    """A batch of particles ready for the E-step.

    Attributes
    ----------
    index
        ``(B,)`` long particle numbers (0-based, into the source).
    group
        Optics group (0-based) shared by the batch.
    x
        ``(B, M)`` complex64 coefficients of the centred, masked images.
    ctf
        ``(B, M)`` float32 CTF values (ones without CTF correction).
    offsets_px
        ``(B, 2)`` float32 current origins (pixels).
    power
        ``(B, n // 2 + 1)`` float64 image power per shell over the whole grid (full-FFT sums
        of ``|X|^2``), for the noise estimate beyond the current resolution.
    """

    index: torch.Tensor
    group: int
    x: torch.Tensor
    ctf: torch.Tensor
    offsets_px: torch.Tensor
    power: torch.Tensor

    def __len__(self) -> int:
        return int(self.index.numel())


def prepare_batch(
    index: torch.Tensor,
    group: int,
    images: torch.Tensor,
    ctf: torch.Tensor | None,
    offsets_px: torch.Tensor,
    *,
    subset: FourierSubset,
    full: FourierSubset,
    mask: torch.Tensor,
    noise_sigma2: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> PreparedBatch:
    """Centre, mask and transform a batch (see the module docstring).

    Parameters
    ----------
    index, group
        Particle numbers ``(B,)`` and their (common) optics group.
    images
        ``(B, n, n)`` float32 images.
    ctf
        ``(B, n, n // 2 + 1)`` CTFs or None (no CTF correction: ones).
    offsets_px
        ``(B, 2)`` current origins in pixels.
    subset
        Coefficients of the E-step.
    full
        All shells ``0 .. n // 2`` (:meth:`FourierSubset.within` with ``min_shell=0``), for
        the per-shell image power.
    mask
        ``(n, n)`` soft particle mask in [0, 1].
    noise_sigma2
        ``(n // 2 + 1,)`` noise power per shell: fill the outside of the mask with noise of
        this spectrum instead of zeros.
    generator
        Random generator for that noise (on the images' device).
    """
    masked = centre_and_mask(
        images, offsets_px, mask, full=full, noise_sigma2=noise_sigma2, generator=generator
    )
    ft = centred_rfft(masked)
    x = subset.gather(ft).to(torch.complex64)
    power = full.shell_sums((full.gather(ft).abs() ** 2).to(torch.float64))
    c = (
        torch.ones(x.shape, dtype=torch.float32, device=x.device)
        if ctf is None
        else subset.gather(ctf).to(torch.float32)
    )
    return PreparedBatch(
        index=index,
        group=int(group),
        x=x,
        ctf=c,
        offsets_px=offsets_px.to(device=images.device, dtype=torch.float32),
        power=power,
    )
