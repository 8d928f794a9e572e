"""Particle extraction: boxes cut from a micrograph, re-scaled, normalised and inverted (RELION).

The conventions are those of RELION 3.1's ``relion_preprocess --extract``:

* **Box centre.** A coordinate ``(x, y)`` (micrograph pixels, 0-based pixel centres, x = column)
  is truncated to integers ``(int(x), int(y))`` (towards zero, C's cast) and that pixel becomes
  pixel ``B // 2`` of the ``B``-pixel box (the image centre of :mod:`cryospa.core`): the box
  covers columns ``int(x) - B // 2 .. int(x) - B // 2 + B - 1``. The sub-pixel remainder is
  not interpolated away: a particle at ``x`` sits at ``B // 2 + (x - int(x))`` in its box, i.e.
  at the centre minus an origin of ``-(x - int(x))`` pixels.
* **Edges.** RELION fills the part of a box beyond the micrograph with the nearest edge pixels
  (:func:`extract_boxes` with ``pad_edges=True``) and refuses boxes entirely outside;
  :func:`boxes_inside` tells which boxes lie wholly inside, so a job can drop the others.
* **Order of operations** per box (:func:`preprocess_particles`): Fourier re-scaling to the
  output size (:func:`cryospa.core.fourier.fourier_rescale`, means kept, as RELION's
  ``resizeMap``), then normalisation, then contrast inversion (``x -> -x``).
* **Normalisation** (:func:`normalise_background`, RELION's ``normalise``): the background is
  every pixel with ``dx^2 + dy^2 > r^2`` (``dx, dy`` integer offsets from the box centre, ``r``
  the integer background radius in pixels of the output box); optionally a plane
  ``a x + b y + c`` fitted to the background by least squares is subtracted from the whole
  image (ramp removal), then the image becomes ``(image - mean) / sd`` with the mean and the
  population standard deviation of the background. An image whose background sd is below
  ``1e-10`` keeps its values (after the ramp), as in RELION.
* **Re-centring** (:func:`recentre_coordinates`, RELION's ``--recenter`` on re-extraction): the
  refined origin (Å) in micrograph pixels ``o = origin / pixel size`` is split into its nearest
  integer ``round(o)`` (halves away from zero, RELION's ``ROUND``), which moves the coordinate
  (``x' = x - round(o)``), and the sub-pixel remainder, which stays as the new origin
  (``(o - round(o)) * pixel size`` Å, within half a pixel).
"""

from __future__ import annotations

import functools

import torch

from cryospa.core.fourier import _resize_fft_axis, fourier_rescale

__all__ = [
    "background_mask",
    "box_centres",
    "boxes_inside",
    "boxes_touch",
    "extract_boxes",
    "normalise_background",
    "preprocess_particles",
    "recentre_coordinates",
    "relion_round",
    "subtract_background_ramp",
]


def box_centres(coordinates_px: torch.Tensor) -> torch.Tensor:
    """Integer box centres of particle coordinates, truncated towards zero as RELION does.

    Parameters
    ----------
    coordinates_px
        ``(..., 2)`` coordinates (x, y) in micrograph pixels (``rlnCoordinateX/Y``).

    Returns
    -------
    torch.Tensor
        ``(..., 2)`` int64 pixel (column, row) that becomes the box centre ``B // 2``.

    """
    if coordinates_px.shape[-1:] != (2,):
        raise ValueError(f"coordinates must be (..., 2), got shape {tuple(coordinates_px.shape)}")
    if not torch.isfinite(coordinates_px).all():
        raise ValueError("coordinates must be finite numbers")
    return torch.trunc(coordinates_px.to(torch.float64)).to(torch.int64)


def _box_range(centres: torch.Tensor, box_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last pixel (x, y) of each box: ``(..., 2)`` each."""
    first = centres - box_size // 2
    return first, first + box_size - 1


def boxes_inside(
    centres: torch.Tensor, box_size: int, micrograph_shape: tuple[int, int]
) -> torch.Tensor:
    """Which boxes lie wholly inside the micrograph.

    Parameters
    ----------
    centres
        ``(..., 2)`` int64 box centres (x, y) from :func:`box_centres`.
    box_size
        Box edge ``B`` in pixels.
    micrograph_shape
        ``(h, w)`` of the micrograph.

    Returns
    -------
    torch.Tensor
        ``(...)`` bool, True where every pixel of the box is a micrograph pixel.

    """
    h, w = micrograph_shape
    first, last = _box_range(centres, box_size)
    return (first[..., 0] >= 0) & (first[..., 1] >= 0) & (last[..., 0] <= w - 1) & (
        last[..., 1] <= h - 1
    )


def boxes_touch(
    centres: torch.Tensor, box_size: int, micrograph_shape: tuple[int, int]
) -> torch.Tensor:
    """Which boxes share at least one pixel with the micrograph (RELION rejects the others).

    Same arguments as :func:`boxes_inside`; returns ``(...)`` bool.
    """
    h, w = micrograph_shape
    first, last = _box_range(centres, box_size)
    return (last[..., 0] >= 0) & (last[..., 1] >= 0) & (first[..., 0] <= w - 1) & (
        first[..., 1] <= h - 1
    )


def extract_boxes(
    micrograph: torch.Tensor,
    centres: torch.Tensor,
    box_size: int,
    *,
    pad_edges: bool = False,
) -> torch.Tensor:
    """Cut ``B x B`` boxes centred (at pixel ``B // 2``) on integer positions of a micrograph.

    Parameters
    ----------
    micrograph
        ``(h, w)`` real image.
    centres
        ``(n, 2)`` int64 centres (x, y) from :func:`box_centres`, on any device (moved to the
        micrograph's).
    box_size
        Box edge ``B`` in pixels (> 0).
    pad_edges
        ``False``: every box must lie wholly inside (else ``ValueError``; see
        :func:`boxes_inside`). ``True``: pixels beyond an edge take the value of the nearest
        edge pixel (RELION); a box must still touch the micrograph.

    Returns
    -------
    torch.Tensor
        ``(n, B, B)`` boxes, dtype and device of the micrograph.

    """
    if micrograph.ndim != 2:
        raise ValueError(f"micrograph must be (h, w), got shape {tuple(micrograph.shape)}")
    if box_size < 1:
        raise ValueError(f"box size must be >= 1 pixel, got {box_size}")
    if centres.ndim != 2 or centres.shape[1] != 2 or centres.dtype != torch.int64:
        raise ValueError(
            f"centres must be an (n, 2) int64 tensor, got {tuple(centres.shape)} {centres.dtype}"
        )
    h, w = (int(s) for s in micrograph.shape)
    device = micrograph.device
    centres = centres.to(device)
    if pad_edges:
        outside = ~boxes_touch(centres, box_size, (h, w))
        what = "lie entirely outside"
    else:
        outside = ~boxes_inside(centres, box_size, (h, w))
        what = "cross the edge of"
    if outside.any():
        bad = centres[outside][:3].tolist()
        raise ValueError(
            f"{int(outside.sum())} boxes of {box_size} px {what} the {w} x {h} micrograph "
            f"(first centres (x, y): {bad})"
        )
    out = micrograph.new_empty((centres.shape[0], box_size, box_size))
    inside = boxes_inside(centres, box_size, (h, w))
    first = (centres - box_size // 2).tolist()
    for i in torch.nonzero(inside).flatten().tolist():  # plain copies of whole boxes
        x0, y0 = first[i]
        out[i] = micrograph[y0 : y0 + box_size, x0 : x0 + box_size]
    crossing = torch.nonzero(~inside).flatten()
    if crossing.numel():  # nearest edge pixel for pixels beyond the edge (clamped indices)
        offsets = torch.arange(box_size, device=device) - box_size // 2  # (B,)
        cols = (centres[crossing, 0:1] + offsets).clamp(0, w - 1)  # (k, B)
        rows = (centres[crossing, 1:2] + offsets).clamp(0, h - 1)  # (k, B)
        out[crossing] = micrograph[rows[:, :, None], cols[:, None, :]]
    return out  # (n, B, B)


def background_mask(
    box_size: int, radius_px: int, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """The background of a ``B``-pixel box: ``dx^2 + dy^2 > r^2`` around pixel ``B // 2``.

    Parameters
    ----------
    box_size
        Box edge ``B`` in pixels.
    radius_px
        Integer background radius ``r`` in pixels (RELION's ``--bg_radius``); ``2 r <= B``.

    Returns
    -------
    torch.Tensor
        ``(B, B)`` bool, True on background pixels.

    """
    if radius_px < 0 or 2 * radius_px > box_size:
        raise ValueError(
            f"background radius {radius_px} px must be >= 0 and at most half the {box_size} px "
            "box"
        )
    d = torch.arange(box_size, device=device) - box_size // 2
    r2 = d[:, None] ** 2 + d[None, :] ** 2
    return r2 > radius_px * radius_px


@functools.lru_cache(maxsize=16)
def _plane_basis(
    box_size: int, radius_px: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Background indices, a plane's design matrix on the box and its least-squares solver.

    Returns ``(index (n_bg,), design (B*B, 3), solver (3, n_bg))``: the plane coefficients
    ``(a, b, c)`` of ``a x + b y + c`` fitted to the background values ``v`` are
    ``solver @ v`` (normal equations, solved in float64).
    """
    mask = background_mask(box_size, radius_px, device=device).flatten()
    if int(mask.sum()) < 3:
        raise ValueError(
            f"a background radius of {radius_px} px leaves < 3 pixels of {box_size} px"
        )
    d = torch.arange(box_size, device=device, dtype=torch.float64) - box_size // 2
    yy, xx = torch.meshgrid(d, d, indexing="ij")
    design = torch.stack([xx.flatten(), yy.flatten(), torch.ones_like(xx).flatten()], dim=1)
    bg = design[mask]  # (n_bg, 3)
    solver = torch.linalg.solve(bg.T @ bg, bg.T)  # (3, n_bg)
    index = torch.nonzero(mask).flatten()
    return index, design.to(dtype), solver.to(dtype)


def subtract_background_ramp(images: torch.Tensor, radius_px: int) -> torch.Tensor:
    """Subtract from each image the plane fitted by least squares to its background.

    Parameters
    ----------
    images
        ``(..., B, B)`` real images.
    radius_px
        Integer background radius (see :func:`background_mask`); at least 3 background pixels.

    Returns
    -------
    torch.Tensor
        ``(..., B, B)`` images minus ``a x + b y + c``, same dtype and device.

    """
    b = images.shape[-1]
    if images.shape[-2] != b:
        raise ValueError(f"images must be square, got shape {tuple(images.shape)}")
    background_mask(b, radius_px)  # checks the radius
    index, design, solver = _plane_basis(b, radius_px, images.device, images.dtype)
    flat = images.reshape(*images.shape[:-2], b * b)
    coeffs = flat.index_select(-1, index) @ solver.T  # (..., 3)
    return (flat - coeffs @ design.T).reshape(images.shape)


def normalise_background(
    images: torch.Tensor, radius_px: int, *, ramp: bool = True
) -> torch.Tensor:
    """Zero mean and unit standard deviation of each image's background (RELION's ``--norm``).

    Parameters
    ----------
    images
        ``(..., B, B)`` real images.
    radius_px
        Integer background radius in pixels (see :func:`background_mask`).
    ramp
        Subtract the least-squares plane over the background first (RELION's default;
        ``--no_ramp`` turns it off).

    Returns
    -------
    torch.Tensor
        ``(..., B, B)`` ``(image - mean_bg) / sd_bg`` with the population sd; images with a
        flat background (sd < 1e-10) are returned unscaled (after the ramp), as RELION does.

    """
    b = images.shape[-1]
    if images.shape[-2] != b:
        raise ValueError(f"images must be square, got shape {tuple(images.shape)}")
    if ramp:
        images = subtract_background_ramp(images, radius_px)
    index = torch.nonzero(background_mask(b, radius_px, device=images.device).flatten())
    if index.numel() == 0:
        raise ValueError(f"a background radius of {radius_px} px leaves no background in {b} px")
    bg = images.reshape(*images.shape[:-2], b * b).index_select(-1, index.flatten())  # (..., n_bg)
    mean = bg.mean(dim=-1)
    sd = (bg - mean[..., None]).square().mean(dim=-1).sqrt()
    flat = sd < 1e-10
    mean = torch.where(flat, torch.zeros_like(mean), mean)
    sd = torch.where(flat, torch.ones_like(sd), sd)
    return (images - mean[..., None, None]) / sd[..., None, None]


def _rescale_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`~cryospa.core.fourier.fourier_rescale` of square images, with real FFTs.

    For even sizes the centring rolls of ``fourier_rescale`` cancel (a roll by half an even
    box is a sign ``(-1)^k`` on both sides), so cropping / padding the ``rfft2`` with the same
    Nyquist rules (folded when cropping, split when padding) gives the same images several
    times faster. Odd sizes go through ``fourier_rescale``.
    """
    b = images.shape[-1]
    if b % 2 or size % 2:
        return fourier_rescale(images, (size, size))
    f = _resize_fft_axis(torch.fft.rfft2(images), -2, size)  # rows: a full FFT axis
    half = size // 2
    if size < b:
        g = f[..., : half + 1].clone()
        mirror = (-torch.arange(size, device=f.device)) % size
        g[..., half] += torch.conj(f[..., mirror, half])  # F(ky, -half) = conj F(-ky, half)
    else:
        g = f.new_zeros((*f.shape[:-1], half + 1))
        g[..., : b // 2 + 1] = f
        g[..., b // 2] *= 0.5  # the old Nyquist column, split between +-b/2
    out = torch.fft.irfft2(g, s=(size, size))
    return (out * (size * size / (b * b))).to(images.dtype)


def preprocess_particles(
    boxes: torch.Tensor,
    *,
    output_size: int | None = None,
    background_radius_px: int | None = None,
    ramp: bool = True,
    invert_contrast: bool = False,
) -> torch.Tensor:
    """RELION's per-particle operations: re-scale, normalise, invert (in that order).

    Parameters
    ----------
    boxes
        ``(n, B, B)`` extracted boxes.
    output_size
        Re-scale to ``(S, S)`` by Fourier cropping (``S < B``) or padding (``S > B``); the
        pixel size becomes ``pixel size * B / S``. None: keep ``B``.
    background_radius_px
        Normalise with this integer radius in pixels of the *output* box
        (:func:`normalise_background`); None: no normalisation.
    ramp
        Remove the background plane before normalising.
    invert_contrast
        Multiply by -1 (dark particles become white).

    Returns
    -------
    torch.Tensor
        ``(n, S, S)`` particles, dtype and device of ``boxes``.

    """
    out = boxes
    if output_size is not None and output_size != boxes.shape[-1]:
        out = _rescale_images(out, output_size)
    if background_radius_px is not None:
        out = normalise_background(out, background_radius_px, ramp=ramp)
    if invert_contrast:
        out = -out
    return out


def relion_round(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer with halves away from zero (RELION's ``ROUND``)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def recentre_coordinates(
    coordinates_px: torch.Tensor,
    origins_angstrom: torch.Tensor,
    pixel_size_angstrom: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move coordinates onto refined particle centres, as RELION's re-extraction ``--recenter``.

    A refined particle sits at ``box centre - origin``, i.e. at micrograph position
    ``coordinate - origin / pixel size``. The whole-pixel part of that shift moves the
    coordinate; the sub-pixel remainder stays as the origin.

    Parameters
    ----------
    coordinates_px
        ``(..., 2)`` coordinates (x, y) in micrograph pixels.
    origins_angstrom
        ``(..., 2)`` refined origins (``rlnOriginX/YAngst``) in Å.
    pixel_size_angstrom
        Micrograph pixel size in Å (the coordinates' unit).

    Returns
    -------
    coordinates_px : torch.Tensor
        ``(..., 2)`` float64 ``x - round(origin / pixel size)``.
    origins_angstrom : torch.Tensor
        ``(..., 2)`` float64 ``(origin / pixel size - round(...)) * pixel size``, each within
        half a pixel of zero.

    """
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel size must be > 0 Å, got {pixel_size_angstrom}")
    if coordinates_px.shape != origins_angstrom.shape or coordinates_px.shape[-1:] != (2,):
        raise ValueError(
            f"coordinates and origins must both be (..., 2), got {tuple(coordinates_px.shape)} "
            f"and {tuple(origins_angstrom.shape)}"
        )
    shift = origins_angstrom.to(torch.float64) / pixel_size_angstrom
    whole = relion_round(shift)
    return coordinates_px.to(torch.float64) - whole, (shift - whole) * pixel_size_angstrom
