"""Fourier shell / ring correlation, resolution, phase randomisation and masking correction.

Shells follow :mod:`cryospa.core.filters`: coefficient ``k`` (cycles per pixel) of an ``n``-box
belongs to shell ``round(|k| n)``; there are ``n // 2 + 1`` shells ``0 .. n // 2`` and shell ``s``
is the resolution ``n * pixel_size / s`` Å. Shell sums and averages over the rfft half grid are
weighted so that they equal sums over the full FFT; the FSC alone counts every rfft coefficient
once, as RELION's ``getFSC`` does (the ``kx = 0`` plane then weighs twice as much as in the full
FFT), so that the same maps give RELION's FSC to the last digit, and with it the same shell where
the unmasked FSC drops below 0.8 (where post-processing starts the phase randomisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from cryospa.core.filters import _check_real_input, _half_grid_weights

__all__ = [
    "ShellGrid",
    "apply_fsc_weighting",
    "first_shell_below",
    "fsc",
    "fsc_corrected_for_masking",
    "fsc_corrected_for_particle_fraction",
    "fsc_fourier",
    "fsc_weighting_curve",
    "last_shell_at_or_above",
    "phase_randomise",
    "phase_randomise_fourier",
    "resolution_at_threshold",
    "shell_resolutions_angstrom",
]


#: rfft coefficients handled at once by ShellGrid's float64 work (bounds its temporary memory)
_CHUNK = 1 << 22


class ShellGrid:
    """The Fourier shells of a real box's rfft grid, computed once and reused.

    Every function of this module that needs the shell of each Fourier coefficient (FSC, radial
    sums, per-shell weights, randomisation radius) builds one; a caller that runs several of
    them on the same box (post-processing runs a dozen) builds it once and passes it on. Only the
    shell index is stored (int32); radii are recomputed in float64 a slab of the grid at a time,
    and sums accumulate in float64 slab by slab, so the temporaries stay small (about 64 MB)
    whatever the box.

    Attributes
    ----------
    shape : tuple of int
        Real-space box ``(h, w)`` or ``(d, h, w)``.
    n_shells : int
        ``max(shape) // 2 + 1``.
    index : torch.Tensor
        rfft-grid int32 shell index ``round(|k| n)`` of each coefficient; ``n_shells`` for the
        corners beyond the last shell.
    column_weights : torch.Tensor
        ``(w // 2 + 1,)`` multiplicity of each rfft column in the full FFT (float64).
    counts : torch.Tensor
        ``(n_shells,)`` number of full-FFT coefficients per shell (float64).

    """

    def __init__(self, shape: tuple[int, ...], *, device: torch.device | str | None = None):
        if len(shape) not in (2, 3) or any(int(s) < 1 for s in shape):
            raise ValueError(f"shape must be 2 or 3 positive sizes, got {shape}")
        self.shape = tuple(int(s) for s in shape)
        self.n_shells = max(self.shape) // 2 + 1
        n = max(self.shape)
        f64 = torch.float64
        # |k| n per axis (cycles per pixel times the largest edge), as shell_radius_grid
        self._axes = [torch.fft.fftfreq(s, device=device, dtype=f64) * n for s in self.shape[:-1]]
        self._axes.append(torch.fft.rfftfreq(self.shape[-1], device=device, dtype=f64) * n)
        self.index = torch.empty(self.rfft_shape, device=device, dtype=torch.int32)
        for start in self._slabs():
            r = self.radius_slab(start)
            idx = torch.floor(r + 0.5)
            self.index[start : start + r.shape[0]] = torch.where(idx < self.n_shells, idx,
                                                                 self.n_shells).to(torch.int32)
        self.column_weights = _half_grid_weights(self.shape[-1], device=device, dtype=f64)
        ones = torch.ones((), device=device, dtype=f64).expand(self.rfft_shape)
        self.counts = self.sums(ones)

    @property
    def ndim(self) -> int:
        """2 or 3."""
        return len(self.shape)

    @property
    def rfft_shape(self) -> tuple[int, ...]:
        """Shape of the rfft grid."""
        return tuple(a.shape[0] for a in self._axes)

    @property
    def radius(self) -> torch.Tensor:
        """rfft-grid radius ``|k| n`` in Fourier pixels (float64, computed on each call)."""
        return self.radius_slab(0, self.rfft_shape[0])

    def radius_slab(self, start: int, stop: int | None = None) -> torch.Tensor:
        """Radii (float64) of rows ``start:stop`` of the first grid axis (default: one slab)."""
        stop = min(start + self._step(), self.rfft_shape[0]) if stop is None else stop
        first = self._axes[0][start:stop]
        r2 = first.reshape(-1, *([1] * (self.ndim - 1))) ** 2
        for axis, a in enumerate(self._axes[1:], start=1):
            view = [1] * self.ndim
            view[axis] = a.shape[0]
            r2 = r2 + a.reshape(view) ** 2
        return torch.sqrt(r2)

    def _step(self) -> int:
        """Rows of the first grid axis per slab (about ``_CHUNK`` coefficients)."""
        per_row = math.prod(self.rfft_shape[1:])
        return max(1, _CHUNK // max(1, per_row))

    def _slabs(self) -> range:
        """Start indices of the slabs along the first grid axis."""
        return range(0, self.rfft_shape[0], self._step())

    def sums(self, values: torch.Tensor, *, full_fft: bool = True) -> torch.Tensor:
        """Full-FFT shell sums ``(..., n_shells)`` of a real quantity ``(..., *rfft_shape)``.

        The quantity is assumed Friedel-symmetric (``|F|^2``, ``Re(A conj(B))``, ``|F|``);
        each rfft column counts as many times as it stands for in the full FFT
        (``full_fft=False``: once, RELION's half-grid sums). Sums are accumulated in float64
        and returned in the dtype of ``values``.
        """
        rshape = self.rfft_shape
        if tuple(values.shape[-self.ndim:]) != rshape:
            raise ValueError(f"values must end with the rfft grid {rshape}, got "
                             f"{tuple(values.shape)}")
        lead = values.shape[: -self.ndim]
        v = values.reshape(-1, *rshape)  # (B, *rfft_shape)
        out = torch.zeros(v.shape[0], self.n_shells + 1, device=values.device,
                          dtype=torch.float64)  # float64 sums: shells hold up to ~1e6 terms
        step = self._step()
        for start in self._slabs():
            part = v[:, start : start + step].to(torch.float64)
            if full_fft:
                part = part * self.column_weights
            part = part.reshape(v.shape[0], -1)
            # int64 and dim 0: index_add_ is ~40x slower with an int32 index along dim 1
            idx = self.index[start : start + step].reshape(-1).to(torch.int64)
            for b in range(v.shape[0]):
                out[b].index_add_(0, idx, part[b])
        return out[:, : self.n_shells].reshape(*lead, self.n_shells).to(values.dtype)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Full-FFT shell averages ``(..., n_shells)`` (see :meth:`sums`)."""
        return self.sums(values) / self.counts.to(values.dtype)

    def per_coefficient(self, curve: torch.Tensor, *, beyond: float = 0.0) -> torch.Tensor:
        """rfft-grid tensor holding ``curve[shell]`` at each coefficient (``beyond`` in corners).

        ``curve`` is ``(n_shells,)``; no interpolation between shells (as RELION).
        """
        if curve.ndim != 1 or curve.shape[0] != self.n_shells:
            raise ValueError(f"curve must be ({self.n_shells},), got {tuple(curve.shape)}")
        full = torch.cat([curve, curve.new_full((1,), beyond)])
        return full[self.index]

    def radial_map(
        self, fn: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype
    ) -> torch.Tensor:
        """rfft-grid tensor ``fn(radius)`` of ``dtype``, evaluated a slab at a time.

        ``fn`` maps float64 radii (Fourier pixels, any shape) to values of the same shape.
        """
        out = torch.empty(self.rfft_shape, device=self.index.device, dtype=dtype)
        step = self._step()
        for start in self._slabs():
            out[start : start + step] = fn(self.radius_slab(start)).to(dtype)
        return out

    def scale_radially(
        self, f: torch.Tensor, factor: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Multiply ``f`` in place by ``factor(radius)``, a slab of the grid at a time.

        ``f`` is ``(*rfft_shape)`` (complex or real); ``factor`` maps float64 radii (Fourier
        pixels, any shape) to real factors of the same shape. Returns ``f``.
        """
        if tuple(f.shape) != self.rfft_shape:
            raise ValueError(f"f must have the rfft shape {self.rfft_shape}, got {tuple(f.shape)}")
        real = f.real.dtype if f.is_complex() else f.dtype
        step = self._step()
        for start in self._slabs():
            f[start : start + step] *= factor(self.radius_slab(start)).to(real)
        return f

    def fsc(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        """FSC ``(..., n_shells)`` of two rfft transforms (``(..., *rfft_shape)``).

        Sums over the rfft half grid, each coefficient once (RELION's ``getFSC``).
        """
        ra, rb = torch.view_as_real(fa), torch.view_as_real(fb)  # (..., 2) real, imaginary
        cross = (ra * rb).sum(-1)
        pa = ra.square().sum(-1)
        pb = rb.square().sum(-1)
        cross, pa, pb = torch.broadcast_tensors(cross, pa, pb)
        num = self.sums(cross, full_fft=False)
        den = torch.sqrt(self.sums(pa, full_fft=False)) * torch.sqrt(self.sums(pb, full_fft=False))
        return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)


def fsc(a: torch.Tensor, b: torch.Tensor, *, ndim: int = 3) -> torch.Tensor:
    """Fourier shell (``ndim=3``) or ring (``ndim=2``) correlation of two real maps / images.

    ``FSC(s) = sum Re(A conj(B)) / sqrt(sum |A|^2 sum |B|^2)`` over the coefficients of shell
    ``s`` (half-grid sums, each rfft coefficient once, as RELION).

    Parameters
    ----------
    a, b
        ``(..., n, n, n)`` volumes (``ndim=3``) or ``(..., n, n)`` images (``ndim=2``) of equal
        box size; leading dims broadcast.
    ndim
        3 (FSC, default) or 2 (FRC).

    Returns
    -------
    torch.Tensor
        ``(..., n // 2 + 1)`` correlation per shell ``0 .. n // 2`` (0 where a shell has no
        power). Real dtype of the inputs, their device.

    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 (FRC) or 3 (FSC), got {ndim}")
    kind = "cubic volumes" if ndim == 3 else "square images"
    if a.ndim < ndim or b.ndim < ndim:
        raise ValueError(
            f"FSC needs {kind}, got shapes {tuple(a.shape)} and {tuple(b.shape)} (ndim={ndim})"
        )
    sa = tuple(int(s) for s in a.shape[-ndim:])
    sb = tuple(int(s) for s in b.shape[-ndim:])
    if sa != sb or len(set(sa)) != 1:
        raise ValueError(f"FSC needs {kind} of equal size, got {sa} and {sb}")
    for name, t in (("a", a), ("b", b)):
        if t.is_complex() or not t.is_floating_point():
            raise ValueError(f"FSC needs real floating-point maps, got {name} of dtype {t.dtype}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    dims = tuple(range(-ndim, 0))
    fa = torch.fft.rfftn(a.to(dtype), dim=dims)
    fb = torch.fft.rfftn(b.to(dtype), dim=dims)
    return ShellGrid(sa, device=a.device).fsc(fa, fb)


def fsc_fourier(fa: torch.Tensor, fb: torch.Tensor, *, grid: ShellGrid) -> torch.Tensor:
    """FSC of two maps given by their rfft transforms (``torch.fft.rfftn`` of the real maps).

    Parameters
    ----------
    fa, fb
        ``(..., *rfft_shape)`` complex transforms on ``grid``'s rfft grid.
    grid
        The box's :class:`ShellGrid`.

    Returns
    -------
    torch.Tensor
        ``(..., n_shells)`` as :func:`fsc`.

    """
    if not (fa.is_complex() and fb.is_complex()):
        raise ValueError("fsc_fourier takes complex rfft transforms (torch.fft.rfftn of the maps)")
    return grid.fsc(fa, fb)


def shell_resolutions_angstrom(
    n_shells: int,
    *,
    box_size: int,
    pixel_size_angstrom: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Resolution in Å of shells ``0 .. n_shells - 1``: ``box_size * pixel_size / s``.

    Returns
    -------
    torch.Tensor
        ``(n_shells,)``; shell 0 (the DC term) is ``inf`` (RELION writes 999 there).

    """
    if n_shells < 1 or box_size < 1 or not pixel_size_angstrom > 0:
        raise ValueError(
            f"need n_shells >= 1, box_size >= 1 and pixel size > 0, got {n_shells}, {box_size} "
            f"and {pixel_size_angstrom} Å"
        )
    s = torch.arange(n_shells, device=device, dtype=dtype)
    return box_size * pixel_size_angstrom / s


def resolution_at_threshold(
    fsc_curve: torch.Tensor,
    *,
    box_size: int,
    pixel_size_angstrom: float,
    threshold: float = 0.143,
    interpolate: bool = True,
) -> float:
    """Resolution (Å) where an FSC curve first drops below ``threshold``.

    Parameters
    ----------
    fsc_curve
        ``(n_shells,)`` FSC per shell ``0 .. n_shells - 1`` of a ``box_size`` box.
    box_size
        Box edge in pixels.
    pixel_size_angstrom
        Pixel size in Å.
    threshold
        FSC threshold (0.143 for gold-standard half maps, 0.5 against a model).
    interpolate
        ``True``: interpolate linearly (in shell index, i.e. spatial frequency) between the last
        shell at or above the threshold and the first shell below it. ``False``: the resolution
        of the last shell at or above the threshold, as ``relion_postprocess`` reports it.

    Returns
    -------
    float
        Resolution in Å. If the curve never drops below the threshold, the resolution of the last
        shell (Nyquist, ``2 * pixel_size``, for even boxes), as RELION reports; ``inf`` if the
        curve is already below the threshold at shell 1. Shell 0 (the DC term, a single
        coefficient that carries no resolution information and is often negative for maps of
        normalised particles) is ignored, as RELION sets it to 1.

    """
    if fsc_curve.ndim != 1 or fsc_curve.shape[0] < 2:
        raise ValueError(f"fsc_curve must be (n_shells >= 2,), got shape {tuple(fsc_curve.shape)}")
    if box_size < 1 or not pixel_size_angstrom > 0:
        raise ValueError(
            f"need box_size >= 1 and pixel size > 0, got {box_size} and {pixel_size_angstrom} Å"
        )
    curve = fsc_curve.detach().to("cpu", torch.float64).clone()
    curve[0] = 1.0  # the DC term: no resolution information
    below = torch.nonzero(curve < threshold).flatten()
    if below.numel() == 0:
        shell = float(curve.shape[0] - 1)
    else:
        i = int(below[0])
        if i <= 1:
            return math.inf
        hi, lo = float(curve[i - 1]), float(curve[i])
        if interpolate and hi != lo:
            shell = (i - 1) + (hi - threshold) / (hi - lo)
        else:
            shell = float(i - 1)
        if shell <= 0:
            return math.inf
    return box_size * pixel_size_angstrom / shell


def phase_randomise(
    x: torch.Tensor,
    *,
    beyond_resolution_angstrom: float,
    pixel_size_angstrom: float,
    ndim: int = 3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace the Fourier phases beyond a resolution by random ones, keeping the amplitudes.

    Coefficients with ``|k| >= pixel_size / beyond_resolution`` (cycles per pixel) get uniform
    random phases; in shell units that is ``radius >= n * pixel_size / resolution``, which is
    RELION's ``randomizePhasesBeyond`` (``r^2 >= index^2``) when the resolution is that of shell
    ``index``. The random phases are those of the transform of real white noise, hence
    Friedel-symmetric: the output is exactly real and keeps the power spectrum.

    Parameters
    ----------
    x
        ``(..., d, h, w)`` volumes (``ndim=3``) or ``(..., h, w)`` images (``ndim=2``).
    beyond_resolution_angstrom
        Randomise at this resolution (Å) and finer.
    pixel_size_angstrom
        Pixel size in Å.
    ndim
        3 (default) or 2.
    generator
        Optional ``torch.Generator`` (on ``x``'s device) for reproducible phases.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as ``x``.

    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if x.ndim < ndim or x.is_complex() or not x.is_floating_point():
        raise ValueError(
            f"phase_randomise needs real (..., {'d, ' if ndim == 3 else ''}h, w) data, got shape "
            f"{tuple(x.shape)} and dtype {x.dtype}"
        )
    if not beyond_resolution_angstrom > 0 or not pixel_size_angstrom > 0:
        raise ValueError(
            f"resolution and pixel size must be > 0 Å, got {beyond_resolution_angstrom} and "
            f"{pixel_size_angstrom}"
        )
    shape = tuple(int(s) for s in x.shape[-ndim:])
    dims = tuple(range(-ndim, 0))
    grid = ShellGrid(shape, device=x.device)
    from_radius = max(shape) * pixel_size_angstrom / beyond_resolution_angstrom
    f = phase_randomise_fourier(torch.fft.rfftn(x, dim=dims), from_radius=from_radius, grid=grid,
                                generator=generator)
    return torch.fft.irfftn(f, s=shape, dim=dims)


def phase_randomise_fourier(
    f: torch.Tensor,
    *,
    from_radius: float,
    grid: ShellGrid,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """:func:`phase_randomise` on an rfft transform: random phases from a radius on.

    Parameters
    ----------
    f
        ``(..., *rfft_shape)`` complex transform (``torch.fft.rfftn`` of real data).
    from_radius
        Coefficients with radius ``>= from_radius`` Fourier pixels get random phases (RELION's
        ``randomizePhasesBeyond(index)``: ``r^2 >= index^2``).
    grid
        The box's :class:`ShellGrid`.
    generator
        Optional ``torch.Generator`` on ``f``'s device.

    Returns
    -------
    torch.Tensor
        New transform, same shape / dtype / device; amplitudes kept, phases those of the
        transform of real white noise (Friedel-symmetric, so its inverse is exactly real).

    """
    if not f.is_complex():
        raise ValueError("phase_randomise_fourier takes a complex rfft transform")
    # small tolerance so that a resolution computed from shell s randomises shell radius s
    cut = from_radius - 1e-6 * max(from_radius, 1.0)
    randomise = grid.radial_map(lambda r: r >= cut, torch.bool)
    real_dtype = f.real.dtype
    noise = torch.randn((*f.shape[: -grid.ndim], *grid.shape), generator=generator,
                        device=f.device, dtype=real_dtype)
    g = torch.fft.rfftn(noise, dim=tuple(range(-grid.ndim, 0)))
    del noise
    mag = torch.abs(g)
    g[mag == 0] = 1.0  # (never in practice) a zero noise coefficient: phase 0
    g.div_(torch.where(mag > 0, mag, 1.0))  # unit phasors, in place to spare memory
    g.mul_(torch.abs(f))
    return torch.where(randomise, g, f)


def fsc_corrected_for_masking(
    fsc_masked: torch.Tensor,
    fsc_masked_phase_randomised: torch.Tensor,
    *,
    randomise_from_shell: int,
    guard_shells: int = 2,
) -> torch.Tensor:
    """Correct a masked FSC for the mask's own correlation (Chen et al. 2013, as RELION).

    ``FSC_true = (FSC_t - FSC_n) / (1 - FSC_n)`` for shells ``>= randomise_from_shell +
    guard_shells``, ``FSC_true = FSC_t`` below, where ``FSC_t`` is the FSC of the masked half maps
    and ``FSC_n`` that of the masked phase-randomised half maps. RELION's ``relion_postprocess``
    starts the correction 2 shells beyond the randomisation shell (``guard_shells=2``) and sets a
    non-positive DC value of either curve to 1.

    Parameters
    ----------
    fsc_masked, fsc_masked_phase_randomised
        ``(..., n_shells)`` curves.
    randomise_from_shell
        First shell whose phases were randomised (RELION: first shell where the unmasked FSC
        drops below 0.8).
    guard_shells
        Extra shells before the correction starts (default 2, as RELION).

    Returns
    -------
    torch.Tensor
        ``(..., n_shells)`` corrected curve (0 where ``FSC_n == 1``).

    """
    if fsc_masked.shape != fsc_masked_phase_randomised.shape:
        raise ValueError(
            f"FSC curves must have equal shapes, got {tuple(fsc_masked.shape)} and "
            f"{tuple(fsc_masked_phase_randomised.shape)}"
        )
    if randomise_from_shell < 0 or guard_shells < 0:
        raise ValueError(
            f"randomise_from_shell and guard_shells must be >= 0, got {randomise_from_shell} "
            f"and {guard_shells}"
        )
    t = fsc_masked.clone()
    nrand = fsc_masked_phase_randomised.clone()
    t[..., 0] = torch.where(t[..., 0] <= 0, 1.0, t[..., 0])
    nrand[..., 0] = torch.where(nrand[..., 0] <= 0, 1.0, nrand[..., 0])
    denom = 1.0 - nrand
    corrected = torch.where(denom != 0, (t - nrand) / torch.where(denom != 0, denom, 1.0), 0.0)
    shells = torch.arange(t.shape[-1], device=t.device)
    return torch.where(shells < randomise_from_shell + guard_shells, t, corrected)


def fsc_weighting_curve(fsc_curve: torch.Tensor) -> torch.Tensor:
    """Rosenthal & Henderson (2003) weight ``sqrt(2 FSC / (1 + FSC))`` per shell.

    As in RELION's postprocess (``applyFscWeighting``), the weight is 0 where FSC <= 0 and for
    every shell from the first one where the FSC drops below 1e-4 onwards (so noise beyond the
    resolution is removed). Shell 0 (the DC term, which carries no resolution information and
    whose FSC is +-1 for a single coefficient) always gets weight 1; RELION zeroes the whole map
    when an unmasked DC FSC is negative, which is a bug not worth copying.

    Parameters
    ----------
    fsc_curve
        ``(..., n_shells)`` FSC between half maps.

    Returns
    -------
    torch.Tensor
        ``(..., n_shells)`` weights in ``[0, 1]``, to be used with
        :func:`apply_fsc_weighting` (nearest shell, as RELION) or
        :func:`cryospa.core.filters.filter_by_1d` (interpolated).

    """
    f = fsc_curve.clone()
    f[..., 0] = 1.0
    weights = torch.sqrt(2 * f.clamp(min=0.0) / (1 + f.clamp(min=0.0)))
    dropped = torch.cumsum((f < 1e-4).to(torch.int32), dim=-1) > 0
    return torch.where(dropped, torch.zeros_like(weights), weights)


def apply_fsc_weighting(
    x: torch.Tensor, fsc_curve: torch.Tensor, *, ndim: int = 3
) -> torch.Tensor:
    """Multiply every Fourier coefficient by the FSC weight of its shell (RELION's postprocess).

    Each coefficient of shell ``round(|k| n)`` is multiplied by :func:`fsc_weighting_curve` of
    that shell (no interpolation between shells, as ``relion_postprocess``); coefficients beyond
    the last shell (the corners of the box) are set to 0.

    Parameters
    ----------
    x
        ``(..., n, n, n)`` volumes (``ndim=3``) or ``(..., n, n)`` images (``ndim=2``), real.
    fsc_curve
        ``(n // 2 + 1,)`` FSC per shell.
    ndim
        3 (default) or 2.

    Returns
    -------
    torch.Tensor
        Weighted data, same shape, dtype and device as ``x``.

    """
    shape = _check_real_input(x, ndim, "apply_fsc_weighting: x")
    n_shells = max(shape) // 2 + 1
    if fsc_curve.ndim != 1 or fsc_curve.shape[0] != n_shells:
        raise ValueError(
            f"fsc_curve must be ({n_shells},) for a box of {max(shape)}, got shape "
            f"{tuple(fsc_curve.shape)}"
        )
    weights = fsc_weighting_curve(fsc_curve.to(device=x.device, dtype=x.dtype))
    factor = ShellGrid(shape, device=x.device).per_coefficient(weights, beyond=0.0)
    dims = tuple(range(-ndim, 0))
    return torch.fft.irfftn(torch.fft.rfftn(x, dim=dims) * factor, s=shape, dim=dims)


def first_shell_below(fsc_curve: torch.Tensor, threshold: float) -> int | None:
    """First shell ``> 0`` whose FSC is below ``threshold`` (None if there is none).

    RELION's postprocess randomises the phases from this shell on, with ``threshold=0.8`` on the
    unmasked FSC (``--randomize_at_fsc``).

    Parameters
    ----------
    fsc_curve
        ``(n_shells,)`` FSC per shell.
    threshold
        FSC value.

    """
    if fsc_curve.ndim != 1:
        raise ValueError(f"fsc_curve must be 1D, got shape {tuple(fsc_curve.shape)}")
    below = torch.nonzero(fsc_curve[1:] < threshold).flatten()
    return int(below[0]) + 1 if below.numel() else None


def last_shell_at_or_above(fsc_curve: torch.Tensor, threshold: float = 0.143) -> int:
    """The last shell before the FSC first drops below ``threshold`` (RELION's resolution shell).

    ``relion_postprocess`` reports the resolution ``n * pixel_size / s`` of this shell ``s``
    (``rlnFinalResolution``). Shell 0 (the DC term) counts as above the threshold; 0 means the
    curve is below the threshold from shell 1 on (no resolution), ``n_shells - 1`` that it never
    drops below it.

    Parameters
    ----------
    fsc_curve
        ``(n_shells,)`` FSC per shell.
    threshold
        FSC threshold (0.143 for half maps).

    """
    if fsc_curve.ndim != 1 or fsc_curve.shape[0] < 1:
        raise ValueError(f"fsc_curve must be (n_shells,), got shape {tuple(fsc_curve.shape)}")
    first = first_shell_below(fsc_curve, threshold)
    return int(fsc_curve.shape[0]) - 1 if first is None else first - 1


def fsc_corrected_for_particle_fraction(
    fsc_curve: torch.Tensor, fraction: float
) -> torch.Tensor:
    """FSC of the particle alone from an unmasked FSC and the particle's share of the box.

    ``FSC_part = f FSC / (1 + (f - 1) FSC)`` (Sindelar & Grigorieff 2012; cisTEM's part_FSC;
    RELION 3.1 writes it as ``rlnFourierShellCorrelationParticleMaskFraction`` with
    ``f = 0.476 / (fraction of the box where the mask is > 0.5)``).

    Parameters
    ----------
    fsc_curve
        ``(..., n_shells)`` unmasked FSC.
    fraction
        ``f`` (> 0): box volume over particle volume, scaled as above.

    """
    if not fraction > 0:
        raise ValueError(f"fraction must be > 0, got {fraction}")
    denom = 1.0 + (fraction - 1.0) * fsc_curve
    return torch.where(denom != 0, fraction * fsc_curve / torch.where(denom != 0, denom, 1.0), 0.0)
