"""Interpretable features of 2D class averages, for ranking classes (``cryospa select --auto``).

Each feature is a number a user can check by looking at the class average; all are computed on
the ``(K, n, n)`` stack of class averages (protein white, as RELION writes them) inside the
particle mask of radius ``R`` pixels (the classification's particle diameter / 2):

* ``contrast``: standard deviation of the average inside the mask. Good classes have similar
  contrast; a class far above the others is usually ice contamination or carbon (strong, flat
  density), a class far below is noise.
* ``edge_ratio``: r.m.s. deviation from the mean in the outer ring of the mask
  (``0.7 R < r < 0.95 R``) over that in the central disc (``r < 0.5 R``). A centred particle
  smaller than the mask has little signal at the edge (ratio well below 1); aggregates, ice
  edges and off-centre objects have as much or more signal at the edge than in the centre.
* ``centre_offset_px``: distance in pixels between the box centre and the centre of mass of the
  positive density (above the median inside the mask). Alignment centres real particles; junk
  that cannot be aligned leaves its density off-centre.
"""

from __future__ import annotations

import torch

__all__ = ["class_image_features", "density_centres"]


def class_image_features(images: torch.Tensor, mask_radius_px: float) -> dict[str, torch.Tensor]:
    """Image features of class averages (see the module docstring).

    Parameters
    ----------
    images
        ``(K, n, n)`` class averages, protein positive, box centre at ``n // 2``.
    mask_radius_px
        Radius ``R`` of the particle mask in pixels (> 2).

    Returns
    -------
    dict
        ``contrast``, ``edge_ratio``, ``centre_offset_px``: ``(K,)`` float64 tensors. An empty
        (all-zero) class has contrast 0, edge ratio 0 and offset 0.

    """
    if images.ndim != 3 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be (K, n, n), got {tuple(images.shape)}")
    n = images.shape[-1]
    radius = min(float(mask_radius_px), n / 2)
    if radius <= 2:
        raise ValueError(f"mask radius must be > 2 px, got {mask_radius_px}")
    x = images.to(torch.float64)
    coords = torch.arange(n, dtype=torch.float64, device=x.device) - n // 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    r = torch.hypot(xx, yy)
    inside = r < radius
    centre = r < 0.5 * radius
    ring = (r > 0.7 * radius) & (r < 0.95 * radius)

    def region_std(mask: torch.Tensor) -> torch.Tensor:
        values = x[:, mask]
        return values.std(dim=1, unbiased=False)

    contrast = region_std(inside)
    centre_std = region_std(centre)
    # a flat centre (rare) counts as a thousandth of the contrast, not as zero
    floor = (1e-3 * contrast).clamp_min(1e-30)
    edge_ratio = torch.where(contrast > 0, region_std(ring) / torch.maximum(centre_std, floor),
                             torch.zeros_like(contrast))
    centres = density_centres(x, radius)
    offset = torch.hypot(centres[:, 0], centres[:, 1])
    return {"contrast": contrast, "edge_ratio": edge_ratio, "centre_offset_px": offset}


def density_centres(images: torch.Tensor, mask_radius_px: float) -> torch.Tensor:
    """Centres of mass of the density above the median inside a disc of ``mask_radius_px``.

    ``(K, n, n)`` images (protein positive, box centre at ``n // 2``) -> ``(K, 2)`` float64
    ``(x, y)`` in pixels from the box centre; ``(0, 0)`` for a flat image.
    """
    n = images.shape[-1]
    x = images.to(torch.float64)
    coords = torch.arange(n, dtype=torch.float64, device=x.device) - n // 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    inside = torch.hypot(xx, yy) < min(float(mask_radius_px), n / 2)
    median = x[:, inside].median(dim=1).values
    weight = (x - median[:, None, None]).clamp_min(0) * inside
    total = weight.sum((1, 2))
    cx = (weight * xx).sum((1, 2)) / total.clamp_min(1e-30)
    cy = (weight * yy).sum((1, 2)) / total.clamp_min(1e-30)
    return torch.where((total > 0)[:, None], torch.stack([cx, cy], dim=1),
                       torch.zeros((x.shape[0], 2), dtype=torch.float64, device=x.device))
