"""Soft spherical / circular masks and masks made from a map (as ``relion_mask_create``).

Soft-edge convention (RELION's ``softMaskOutsideMap`` and ``autoMask``): a mask is 1 inside, then
falls as a raised cosine ``0.5 + 0.5 cos(pi d / W)`` over a width ``W`` pixels, where ``d`` is the
distance beyond the hard edge, and is 0 from ``d >= W`` on. For a sphere of radius ``R`` the value
is 1 for ``r <= R``, 0.5 at ``r = R + W / 2`` and 0 for ``r >= R + W``. The centre is pixel
``n // 2`` along every axis unless given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cryospa.core.filters import lowpass

__all__ = ["mask_from_map", "soft_circle", "soft_sphere"]


def _as_shape(shape: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    if isinstance(shape, int):
        out = (shape,) * ndim
    else:
        out = tuple(int(s) for s in shape)
    if len(out) != ndim or any(s < 1 for s in out):
        raise ValueError(f"expected {ndim} positive sizes, got {shape}")
    return out


def _soft_ball(
    shape: tuple[int, ...],
    radius_px: float,
    edge_width_px: float,
    centre: Sequence[float] | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    if not radius_px >= 0:
        raise ValueError(f"radius must be >= 0 pixels, got {radius_px}")
    if not edge_width_px >= 0:
        raise ValueError(f"edge width must be >= 0 pixels, got {edge_width_px}")
    if centre is None:
        centre = [s // 2 for s in shape]
    if len(centre) != len(shape):
        raise ValueError(f"centre needs {len(shape)} coordinates (z, y, x order), got {centre}")
    r2 = torch.zeros(shape, device=device, dtype=dtype)
    for axis, (n, c) in enumerate(zip(shape, centre, strict=True)):
        coord = torch.arange(n, device=device, dtype=dtype) - float(c)
        view = [1] * len(shape)
        view[axis] = n
        r2 = r2 + coord.reshape(view) ** 2
    r = torch.sqrt(r2)
    return _raised_cosine_falloff(r - radius_px, edge_width_px)


def _raised_cosine_falloff(d: torch.Tensor, width: float) -> torch.Tensor:
    """1 for ``d <= 0``, ``0.5 + 0.5 cos(pi d / width)`` for ``0 < d < width``, 0 beyond."""
    if width <= 0:
        return (d <= 0).to(d.dtype)
    t = (d / width).clamp(0.0, 1.0)
    return 0.5 + 0.5 * torch.cos(math.pi * t)


def soft_sphere(
    shape: int | Sequence[int],
    radius_px: float,
    *,
    edge_width_px: float,
    centre: Sequence[float] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Spherical mask with a raised-cosine edge outside the radius (RELION convention).

    Parameters
    ----------
    shape
        Box size ``(d, h, w)`` in pixels, or one int for a cube.
    radius_px
        Radius (pixels) up to which the mask is 1.
    edge_width_px
        Width (pixels) of the raised-cosine fall-off beyond the radius: 0.5 at
        ``radius + width / 2``, 0 from ``radius + width`` on. 0 gives a hard sphere.
    centre
        ``(z, y, x)`` centre in pixels; default ``(d // 2, h // 2, w // 2)``.
    device, dtype
        Where and in which floating dtype to build the mask.

    Returns
    -------
    torch.Tensor
        ``(d, h, w)`` mask in ``[0, 1]``.

    """
    return _soft_ball(_as_shape(shape, 3), radius_px, edge_width_px, centre, device, dtype)


def soft_circle(
    shape: int | Sequence[int],
    radius_px: float,
    *,
    edge_width_px: float,
    centre: Sequence[float] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Circular mask ``(h, w)`` with a raised-cosine edge; see :func:`soft_sphere`.

    ``centre`` is ``(y, x)``, default ``(h // 2, w // 2)``.
    """
    return _soft_ball(_as_shape(shape, 2), radius_px, edge_width_px, centre, device, dtype)


def _squared_distance_to(region: torch.Tensor, ndim: int, max_distance: float) -> torch.Tensor:
    """Squared Euclidean distance (pixels^2) from every pixel to the nearest pixel of ``region``.

    Exact wherever that distance is ``<= max_distance``; elsewhere the value is larger than
    ``max_distance^2`` (possibly ``inf``). Separable lower-envelope search along each of the last
    ``ndim`` axes, restricted to offsets ``|o| <= ceil(max_distance)``; no wrap-around.
    """
    radius = math.ceil(max_distance)
    d2 = torch.where(region, 0.0, math.inf).to(torch.float32)
    for dim in range(-ndim, 0):
        n = d2.shape[dim]
        src = d2
        out = src.clone()
        for o in range(1, min(radius, n - 1) + 1):
            o2 = float(o * o)
            fwd = out.narrow(dim, o, n - o)
            torch.minimum(fwd, src.narrow(dim, 0, n - o) + o2, out=fwd)
            bwd = out.narrow(dim, 0, n - o)
            torch.minimum(bwd, src.narrow(dim, o, n - o) + o2, out=bwd)
        d2 = out
    return d2


def mask_from_map(
    volume: torch.Tensor,
    *,
    threshold: float,
    lowpass_angstrom: float | None = None,
    pixel_size_angstrom: float | None = None,
    extend_px: float = 0.0,
    soft_edge_px: float = 0.0,
    ndim: int = 3,
) -> torch.Tensor:
    """Make a soft mask from a map, as ``relion_mask_create --i map --ini_threshold ...``.

    Steps: (1) optional raised-cosine low-pass to ``lowpass_angstrom`` (edge 2 Fourier pixels,
    the cut rounded to the nearest Fourier shell ``round(n * pixel_size / lowpass)`` as RELION's
    ``lowPassFilterMap`` does); (2) binarise: 1 where ``value >= threshold``; (3) extend
    (``extend_px > 0``): also 1 where a 1-pixel lies at distance ``< extend_px``, or shrink
    (``extend_px < 0``): 0 where a 0-pixel lies at distance ``< |extend_px|``; (4) soft edge
    (``soft_edge_px = W > 0``): a 0-pixel at distance ``d < W`` from the nearest 1-pixel becomes
    ``0.5 + 0.5 cos(pi d / W)``. Distances are Euclidean between pixel centres; the box does not
    wrap around.

    Parameters
    ----------
    volume
        ``(..., d, h, w)`` map(s) (``ndim=3``) or ``(..., h, w)`` images (``ndim=2``).
    threshold
        Density threshold of the initial binary mask (``--ini_threshold``).
    lowpass_angstrom
        Low-pass resolution in Å before binarising (``--lowpass``); needs ``pixel_size_angstrom``.
    pixel_size_angstrom
        Pixel size in Å (``--angpix``).
    extend_px
        Pixels to grow (> 0) or shrink (< 0) the binary mask (``--extend_inimask``).
    soft_edge_px
        Width in pixels of the raised-cosine soft edge added outside (``--width_soft_edge``).
    ndim
        3 (default) or 2.

    Returns
    -------
    torch.Tensor
        Mask in ``[0, 1]``, same shape, dtype and device as ``volume``.

    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    if volume.ndim < ndim or volume.is_complex() or not volume.is_floating_point():
        raise ValueError(
            f"mask_from_map needs a real map with at least {ndim} dimensions, got shape "
            f"{tuple(volume.shape)} and dtype {volume.dtype}"
        )
    if soft_edge_px < 0:
        raise ValueError(f"soft edge width must be >= 0 pixels, got {soft_edge_px}")
    x = volume
    if lowpass_angstrom is not None:
        if pixel_size_angstrom is None:
            raise ValueError(
                f"a low-pass to {lowpass_angstrom} Å needs pixel_size_angstrom (--angpix)"
            )
        if not lowpass_angstrom > 0 or not pixel_size_angstrom > 0:
            raise ValueError(
                f"low-pass resolution and pixel size must be > 0 Å, got {lowpass_angstrom} and "
                f"{pixel_size_angstrom}"
            )
        n = max(int(s) for s in x.shape[-ndim:])
        shell = math.floor(n * pixel_size_angstrom / lowpass_angstrom + 0.5)  # RELION's ROUND
        # the resolution of that shell (a shell 0 cut keeps only the mean, as RELION's edge)
        at = n * pixel_size_angstrom / max(shell, 1e-9)
        x = lowpass(x, at, pixel_size_angstrom=pixel_size_angstrom, ndim=ndim)
    binary = x >= threshold
    if extend_px > 0:
        binary = binary | (_squared_distance_to(binary, ndim, extend_px) < extend_px**2)
    elif extend_px < 0:
        binary = binary & ~(_squared_distance_to(~binary, ndim, -extend_px) < extend_px**2)
    mask = binary.to(volume.dtype)
    if soft_edge_px > 0:
        d2 = _squared_distance_to(binary, ndim, soft_edge_px).to(volume.dtype)
        edge = (~binary) & (d2 < soft_edge_px**2)
        d = torch.sqrt(torch.where(edge, d2, 0.0))
        mask = torch.where(edge, 0.5 + 0.5 * torch.cos(math.pi * d / soft_edge_px), mask)
    return mask
