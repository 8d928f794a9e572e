"""How much of its class average a particle holds: the signal amplitude at its assigned pose.

For particle ``i`` with class ``k``, in-plane angle ``psi_i`` and origin ``o_i`` (as a 2D
classification assigned them), the model of the centred, masked image is ``X_i = beta_i CTF_i
A_k(psi_i) + noise`` with the class average ``A_k`` turned by ``psi_i``. The least-squares
amplitude, weighted by the noise spectrum ``sigma2`` (the maximum-likelihood estimate under the
Gaussian noise model of the classification), is::

    beta_i = Re sum w conj(CTF_i A) X_i / sum w CTF_i^2 |A|^2,    w = m / (2 sigma2)

with standard error ``1 / sqrt(2 sum w CTF_i^2 |A|^2)`` (``m``: multiplicity of the rfft
half-grid coefficient). A whole particle of its class has ``beta`` near the class's median; a
broken particle or a fragment holds only part of the average's signal and has a smaller one
(about the fraction of the projected density it kept). The noise spectrum is estimated from the
same particles, per optics group, as the mean power of the residuals ``X_i - CTF_i A`` per shell.

A broken particle that keeps most of a particle is told better by where its signal is missing
than by how much: the same estimate restricted to each half of the box on either side of a few
lines through the centre (on the whitened images, image and model divided by ``sqrt(sigma2)``
in Fourier space, where the noise is white and the sums are local) is about 1 in every half
for a whole particle, and well below 1 in the half facing the missing part of a broken one
(:attr:`ParticleAmplitudes.weakest_half`). The two halves on either side of a line make up the
whole: their inverse-variance weighted mean is the whole particle's amplitude. All sums are
taken on the whitened images in real space (by Parseval equal to the Fourier sums above), the
whole particle's as the sum of two opposite halves'.

RELION estimates a related per-group quantity (``rlnGroupScaleCorrection``, the intensity scale
of a micrograph's particles relative to the reference) for its refinements; here it is per
particle, for ``cryospa select --auto`` to find particles that do not hold their whole class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from cryospa.engine.coefficients import FourierSubset
from cryospa.engine.data import ParticleSource, centred_irfft, prepare_batch
from cryospa.engine.estep import project_references

__all__ = ["ParticleAmplitudes", "half_planes", "signal_amplitudes"]


@dataclass
class ParticleAmplitudes:
    """Per-particle amplitudes (see the module docstring), float64 on the CPU.

    Attributes
    ----------
    amplitude, error
        ``(P,)`` the whole particle's amplitude and its standard error.
    halves, half_errors
        ``(P, 2 D)`` the amplitude in each half of the box on either side of ``D`` lines
        through its centre (:func:`half_planes`), and its standard error.
    """

    amplitude: torch.Tensor
    error: torch.Tensor
    halves: torch.Tensor
    half_errors: torch.Tensor

    @property
    def weakest_half(self) -> torch.Tensor:
        """``(P,)`` the smallest half amplitude: low when one side of the particle is missing."""
        return self.halves.min(dim=1).values


def half_planes(box_size: int, lines: int, *, edge_px: float = 1.0,
                device: torch.device | str | None = None) -> torch.Tensor:
    """``(2 lines, n, n)`` soft half-planes through the box centre, ``lines`` directions.

    Half ``d`` is the side ``cos(a) x + sin(a) y > 0`` of the line at angle ``a = d pi / lines``
    (``d < lines``) and half ``lines + d`` the other side; each pair sums to 1.
    """
    n = box_size
    c = torch.arange(n, dtype=torch.float32, device=device) - n // 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    angles = torch.arange(lines, dtype=torch.float32, device=device) * (math.pi / lines)
    side = (torch.cos(angles)[:, None, None] * xx + torch.sin(angles)[:, None, None] * yy)
    one = torch.sigmoid(side / edge_px)
    return torch.cat([one, 1.0 - one])


def _predicted(
    references: torch.Tensor, classes: torch.Tensor, psi_degrees: torch.Tensor,
    subset: FourierSubset,
) -> torch.Tensor:
    """``(b, M)`` each particle's class average turned by its angle (no CTF)."""
    out = torch.zeros((classes.numel(), subset.size), dtype=torch.complex64,
                      device=references.device)
    for k in torch.unique(classes).tolist():
        rows = torch.nonzero(classes == k).squeeze(1)
        out[rows] = project_references(references[k : k + 1], psi_degrees[rows], subset).values
    return out


def _estimate(cross: torch.Tensor, norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares amplitude ``cross / norm`` and its standard error ``1 / sqrt(norm)``.

    ``cross = sum x p`` and ``norm = sum p^2`` over whitened images ``x`` and model ``p``; nan
    where the model is zero. On the CPU.
    """
    ok = norm > 0
    safe = norm.clamp_min(1e-300)
    return (torch.where(ok, cross / safe, torch.nan).cpu(),
            torch.where(ok, 1.0 / torch.sqrt(safe), torch.nan).cpu())


def signal_amplitudes(
    source: ParticleSource,
    references: torch.Tensor,
    index: torch.Tensor,
    classes: torch.Tensor,
    psi_degrees: torch.Tensor,
    offsets_px: torch.Tensor,
    mask: torch.Tensor,
    *,
    ctf: bool,
    batch_size: int = 256,
    lines: int = 4,
    progress: Callable[[int], None] | None = None,
) -> ParticleAmplitudes:
    """Amplitude of each particle's signal relative to its class average (module docstring).

    Parameters
    ----------
    source
        The particles' images and CTFs.
    references
        ``(K, n, n)`` class averages (real space, box centre ``n // 2``; CTF-corrected when
        ``ctf``), on the device to work on.
    index
        ``(P,)`` long particle numbers (into ``source``) to measure.
    classes, psi_degrees, offsets_px
        ``(P,)`` 0-based class, ``(P,)`` in-plane angle (degrees) and ``(P, 2)`` origin
        (pixels) of each of them, as the classification assigned (RELION's convention).
    mask
        ``(n, n)`` soft particle mask applied to the centred images.
    ctf
        Multiply the average by each particle's CTF (a classification with CTF correction).
    batch_size
        Particles per batch.
    lines
        Directions of the lines through the centre that split the box into halves.
    progress
        Called with the number of particles done in each batch of the second pass.

    Returns
    -------
    ParticleAmplitudes
        ``nan`` for a particle whose class average is zero. The half amplitudes are the same
        estimate restricted to a half-plane, on the whitened images (image and model divided
        by ``sqrt(sigma2)`` in Fourier space), where the noise is white.

    """
    device = references.device
    n = source.box_size
    if references.shape[-2:] != (n, n):
        raise ValueError(f"class averages are {tuple(references.shape[-2:])} px, the particles "
                         f"{n} px")
    subset = FourierSubset.within(n, n // 2, device=device)
    full = FourierSubset.within(n, n // 2, min_shell=0, device=device)
    groups = source.optics_groups()[index.cpu()]
    refs = references.to(torch.float32)
    n_shells = n // 2 + 1
    residual = torch.zeros((int(groups.max()) + 1 if groups.numel() else 1, n_shells),
                           dtype=torch.float64, device=device)
    count = torch.zeros_like(residual)
    amplitude = torch.full((index.numel(),), float("nan"), dtype=torch.float64)
    error = torch.full_like(amplitude, float("nan"))
    halves = torch.full((index.numel(), 2 * lines), float("nan"), dtype=torch.float64)
    half_errors = torch.full_like(halves, float("nan"))
    planes = half_planes(n, lines, device=device).reshape(2 * lines, -1).to(torch.float64)
    shells = subset.shell.to(device)
    mult = subset.multiplicity.to(device)  # the noise pass's full-FFT weights

    def batches() -> Iterator[tuple[int, torch.Tensor]]:
        for g in torch.unique(groups).tolist():
            rows = torch.nonzero(groups == g).squeeze(1)
            for start in range(0, rows.numel(), batch_size):
                yield int(g), rows[start : start + batch_size]

    for second in (False, True):
        if second:
            sigma2 = residual / count.clamp_min(1.0)
            sigma2 = torch.where(sigma2 > 0, sigma2, sigma2[sigma2 > 0].min()
                                 if (sigma2 > 0).any() else torch.ones_like(sigma2))
        for g, rows in batches():
            particles = index[rows]
            images, ctfs = source.load(particles, device, ctf=ctf)
            batch = prepare_batch(particles, g, images, ctfs, offsets_px[rows].to(device),
                                  subset=subset, full=full, mask=mask.to(device))
            model = _predicted(refs, classes[rows].to(device), psi_degrees[rows].to(device),
                               subset) * batch.ctf
            if not second:
                diff = (batch.x - model).abs() ** 2
                residual[g].index_add_(0, shells, (diff * mult).sum(0).to(torch.float64))
                count[g].index_add_(0, shells, mult.to(torch.float64) * len(rows))
                continue
            # whitened real-space images (white noise): sums over each half-plane; the two
            # halves on either side of a line add up to the whole particle's sums
            white = (1.0 / torch.sqrt(sigma2[g][shells])).to(torch.float32)
            x_r = centred_irfft(subset.scatter(batch.x * white), n).reshape(len(rows), -1)
            p_r = centred_irfft(subset.scatter(model * white), n).reshape(len(rows), -1)
            cross = (x_r * p_r).to(torch.float64) @ planes.T  # (b, 2 lines)
            norm = (p_r * p_r).to(torch.float64) @ planes.T
            whole_cross = cross[:, 0] + cross[:, lines]
            whole_norm = norm[:, 0] + norm[:, lines]
            amplitude[rows], error[rows] = _estimate(whole_cross, whole_norm)
            halves[rows], half_errors[rows] = _estimate(cross, norm)
            if progress is not None:
                progress(len(rows))
    return ParticleAmplitudes(amplitude, error, halves, half_errors)
