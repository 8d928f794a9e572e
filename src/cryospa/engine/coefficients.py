"""The flat set of Fourier coefficients the engine works on (inside the current resolution).

Images and references are handled only on the rfft coefficients of an ``n x n`` box whose shell
``round(|k| n)`` lies in ``[min_shell, max_shell]`` (shell 0, the DC term, is left out by default:
RELION gives it no weight either, which makes the likelihood blind to additive offsets). The set
is a flat index ``(M,)`` into the ``(n, n // 2 + 1)`` rfft grid; it is recomputed whenever the
resolution radius changes.

Each half-grid coefficient stands for ``multiplicity`` coefficients of the full FFT: 2 for
``0 < kx < n / 2`` (itself and its Friedel mate), 1 on the ``kx = 0`` and ``kx = n / 2`` columns
(whose mates are themselves in the half grid). Sums weighted by the multiplicity equal sums over
the full FFT, so shell averages match :func:`cryospa.core.filters.radial_average`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["FourierSubset"]


@dataclass(frozen=True)
class FourierSubset:
    """Coefficients of an ``n x n`` rfft grid inside a range of shells.

    Attributes
    ----------
    box_size
        ``n`` (pixels).
    max_shell, min_shell
        Shells kept (inclusive).
    index
        ``(M,)`` long flat index into the ``(n, n // 2 + 1)`` grid.
    shell
        ``(M,)`` long shell of each coefficient.
    multiplicity
        ``(M,)`` float32, 1 or 2 (full-FFT coefficients each one stands for).
    kx, ky
        ``(M,)`` float32 frequencies in cycles per pixel.
    shell_counts
        ``(n // 2 + 1,)`` float64 number of full-FFT coefficients of each shell inside the set.
    """

    box_size: int
    max_shell: int
    min_shell: int
    index: torch.Tensor
    shell: torch.Tensor
    multiplicity: torch.Tensor
    kx: torch.Tensor
    ky: torch.Tensor
    shell_counts: torch.Tensor

    @classmethod
    def within(
        cls,
        box_size: int,
        max_shell: int,
        *,
        min_shell: int = 1,
        device: torch.device | str | None = None,
    ) -> FourierSubset:
        """The coefficients with ``min_shell <= round(|k| n) <= max_shell``.

        ``max_shell`` is capped at ``n // 2`` (Nyquist); the box corners beyond it never count.
        """
        if box_size < 2:
            raise ValueError(f"box size must be >= 2 pixels, got {box_size}")
        n = box_size
        top = min(int(max_shell), n // 2)
        if top < min_shell:
            raise ValueError(f"max_shell {max_shell} is below min_shell {min_shell}")
        ky = torch.fft.fftfreq(n, device=device, dtype=torch.float64)
        kx = torch.fft.rfftfreq(n, device=device, dtype=torch.float64)
        gy, gx = torch.meshgrid(ky, kx, indexing="ij")
        shell = torch.floor(torch.sqrt(gx * gx + gy * gy) * n + 0.5).long().reshape(-1)
        keep = (shell >= min_shell) & (shell <= top)
        index = torch.nonzero(keep).flatten()
        col = index % (n // 2 + 1)
        mult = torch.full(index.shape, 2.0, dtype=torch.float32, device=index.device)
        mult[col == 0] = 1.0
        if n % 2 == 0:
            mult[col == n // 2] = 1.0
        counts = torch.zeros(n // 2 + 1, dtype=torch.float64, device=index.device)
        counts.index_add_(0, shell[index], mult.to(torch.float64))
        return cls(
            box_size=n,
            max_shell=top,
            min_shell=int(min_shell),
            index=index,
            shell=shell[index],
            multiplicity=mult,
            kx=gx.reshape(-1)[index].to(torch.float32),
            ky=gy.reshape(-1)[index].to(torch.float32),
            shell_counts=counts,
        )

    @property
    def size(self) -> int:
        """``M``, the number of coefficients."""
        return int(self.index.numel())

    @property
    def n_shells(self) -> int:
        """``n // 2 + 1``."""
        return self.box_size // 2 + 1

    def gather(self, grid: torch.Tensor) -> torch.Tensor:
        """``(..., n, n // 2 + 1)`` -> ``(..., M)``."""
        return grid.reshape(*grid.shape[:-2], -1)[..., self.index]

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """``(..., M)`` -> ``(..., n, n // 2 + 1)`` with zeros outside the set."""
        n = self.box_size
        out = torch.zeros(
            (*values.shape[:-1], n * (n // 2 + 1)), dtype=values.dtype, device=values.device
        )
        out[..., self.index] = values
        return out.reshape(*values.shape[:-1], n, n // 2 + 1)

    def shell_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Multiplicity-weighted sums per shell of a real ``(..., M)`` quantity: ``(..., S)``."""
        lead = values.shape[:-1]
        flat = (values * self.multiplicity.to(values.dtype)).reshape(-1, self.size)
        out = torch.zeros(flat.shape[0], self.n_shells, dtype=values.dtype, device=values.device)
        out.index_add_(1, self.shell, flat)
        return out.reshape(*lead, self.n_shells)

    def per_coefficient(self, per_shell: torch.Tensor) -> torch.Tensor:
        """Spread a ``(..., S)`` shell quantity onto the coefficients: ``(..., M)``."""
        return per_shell[..., self.shell]

    def phase_ramps(self, shifts_px: torch.Tensor) -> torch.Tensor:
        """``(T, 2)`` shifts (dx, dy) in pixels -> ``(T, M)`` complex64 factors.

        Multiplying a centred image's coefficients by the ramp translates the image by
        ``+shift`` (content towards larger x / y), as :func:`cryospa.core.fourier.phase_shift_2d`.
        """
        s = shifts_px.to(device=self.kx.device, dtype=torch.float64)
        phase = -2.0 * math.pi * (
            s[:, :1] * self.kx.to(torch.float64) + s[:, 1:2] * self.ky.to(torch.float64)
        )
        return torch.polar(torch.ones_like(phase), phase).to(torch.complex64)
