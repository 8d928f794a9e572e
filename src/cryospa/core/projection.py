"""Fourier-slice projection of volumes (3D -> 2D) and rotation of images (2D -> 2D).

The central-slice theorem: the 2D Fourier transform of the projection ``P(x, y) = sum_z V(A^T r)``
is the slice of the volume's 3D transform through the origin at ``A^T (kx, ky, 0)``. The volume is
zero-padded by ``padding_factor`` (2 by default, as RELION), pre-divided by the transform of the
trilinear kernel (gridding correction) and Fourier transformed once in :func:`make_projector`;
:func:`project` then interpolates slices for any batch of rotations. Frequencies beyond the
original Nyquist radius ``n / 2`` (or ``max_radius_px``) are set to zero, as in RELION.

Projections are line sums in voxel units: a projection of a volume with values ``v`` over
``d`` voxels along the beam has values ``~ v d``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryospa.core import _padded_fourier as pf
from cryospa.core.fourier import centre_to_origin, origin_to_centre

__all__ = [
    "Projector",
    "centred_ft_to_images",
    "images_to_centred_ft",
    "make_projector",
    "project",
    "project_images",
    "project_points",
    "project_volume",
]


@dataclass
class Projector:
    """A volume (or image) prepared for Fourier-slice interpolation.

    Attributes
    ----------
    data
        ``(C, N + 1, N + 1, N // 2 + 1)`` (3D) or ``(C, N + 1, N // 2 + 1)`` (2D) complex centred
        padded transform of ``C`` maps (e.g. classes).
    box_size
        Real-space box size ``n`` in pixels.
    padded_size
        ``N``.
    ndim
        2 or 3.
    channels
        ``data`` completed to the whole grid as real ``grid_sample`` channels
        (:func:`~cryospa.core._padded_fourier.to_full_channels`; derived, set on creation).
    """

    data: torch.Tensor
    box_size: int
    padded_size: int
    ndim: int
    channels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.channels is None:
            self.channels = pf.to_full_channels(self.data, self.ndim)

    @property
    def padding_factor(self) -> float:
        """``N / n``."""
        return self.padded_size / self.box_size


def make_projector(
    maps: torch.Tensor, *, ndim: int = 3, padding_factor: float = 2.0, gridding: bool = True
) -> Projector:
    """Prepare maps for projection.

    Parameters
    ----------
    maps
        ``(d, h, w)`` volume or ``(C, d, h, w)`` volumes for ``ndim=3``; ``(h, w)`` or
        ``(C, h, w)`` for ``ndim=2``. Boxes must be square / cubic.
    padding_factor
        Real-space zero padding before the transform (>= 1; 2 as RELION).
    gridding
        Pre-divide by the interpolation kernel's transform (recommended).
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    box = maps.shape[-ndim:]
    if len(set(box)) != 1:
        raise ValueError(f"projection needs a square/cubic box, got shape {tuple(box)}")
    if maps.ndim == ndim:
        maps = maps[None]
    if maps.ndim != ndim + 1:
        raise ValueError(f"expected maps of shape (C, *box) or box, got {tuple(maps.shape)}")
    if padding_factor < 1:
        raise ValueError(f"padding_factor must be >= 1, got {padding_factor}")
    n = box[0]
    padded = pf.padded_size(n, padding_factor)
    data = pf.real_to_centred_ft(maps, padded, ndim, correct=gridding)
    return Projector(data=data, box_size=n, padded_size=padded, ndim=ndim)


def _slice_coordinates(
    projector: Projector, rotations: torch.Tensor, max_radius_px: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded-grid coordinates of every output sample and a mask of those inside the radius."""
    n = projector.box_size
    real_dtype = projector.data.real.dtype
    device = projector.data.device
    k = pf.output_frequencies(n, 2, device=device, dtype=real_dtype)  # (n, n//2+1, 2) x,y
    r_max = n / 2 if max_radius_px is None else min(max_radius_px, n / 2)
    inside = (k * k).sum(-1) <= r_max * r_max  # (n, n//2+1)
    scale = 2.0 / n  # padded-grid units (x padding factor) over N / 2, for sample_full
    rot = rotations.to(real_dtype)
    if projector.ndim == 3:
        # 3D coordinate = A^T (kx, ky, 0): the first two rows of A, transposed
        basis = rot[..., :2, :]  # (..., 2, 3)
    else:
        basis = rot[..., :2, :2]  # (..., 2, 2)
    coords = torch.einsum("yxi,...ij->...yxj", k, basis) * scale
    return coords, inside


def project(
    projector: Projector, rotations: torch.Tensor, *, max_radius_px: float | None = None
) -> torch.Tensor:
    """Central slices (Fourier transforms of projections) for a batch of rotations.

    Parameters
    ----------
    projector
        From :func:`make_projector`.
    rotations
        ``(b, 3, 3)`` rotation matrices (3D; RELION's ``A``) or ``(b, 2, 2)`` (2D in-plane).
    max_radius_px
        Zero frequencies beyond this radius (Fourier pixels of the output box); Nyquist default.

    Returns
    -------
    torch.Tensor
        ``(C, b, n, n // 2 + 1)`` complex rfft of the projections (DC at index 0, real-space
        centre at ``n // 2``), ``C`` the number of maps in the projector.
    """
    want = (3, 3) if projector.ndim == 3 else (2, 2)
    if rotations.ndim != 3 or tuple(rotations.shape[-2:]) != want:
        raise ValueError(
            f"rotations must have shape (b, {want[0]}, {want[1]}), got {tuple(rotations.shape)}"
        )
    coords, inside = _slice_coordinates(projector, rotations, max_radius_px)
    b = rotations.shape[0]
    n = projector.box_size
    sel = coords[:, inside]  # (b, P_in, ndim)
    assert projector.channels is not None
    vals = pf.sample_full(projector.channels, sel.reshape(-1, projector.ndim))  # (C, b*P_in)
    out = torch.zeros(
        (projector.data.shape[0], b, n, n // 2 + 1), dtype=projector.data.dtype, device=vals.device
    )
    out[:, :, inside] = vals.reshape(projector.data.shape[0], b, -1)
    return out


def project_points(
    projector: Projector, rotations: torch.Tensor, freq_px: torch.Tensor
) -> torch.Tensor:
    """Central-slice values at chosen frequencies only (the engine's coefficient subsets).

    Same values as :func:`project` at those frequencies, without building whole slices.

    Parameters
    ----------
    projector
        From :func:`make_projector`.
    rotations
        ``(b, 3, 3)`` (3D) or ``(b, 2, 2)`` (2D) rotation matrices.
    freq_px
        ``(M, 2)`` output frequencies ``(kx, ky)`` in Fourier pixels of the ``n`` box (rfft
        half plane, ``|k| <= n / 2``).

    Returns
    -------
    torch.Tensor
        ``(C, b, M)`` complex values (unnormalised transform, as :func:`project`).
    """
    want = (3, 3) if projector.ndim == 3 else (2, 2)
    if rotations.ndim != 3 or tuple(rotations.shape[-2:]) != want:
        raise ValueError(
            f"rotations must have shape (b, {want[0]}, {want[1]}), got {tuple(rotations.shape)}"
        )
    real_dtype = projector.data.real.dtype
    rot = rotations.to(device=projector.data.device, dtype=real_dtype)
    # the coordinate scale of sample_full (2 / N, times the padding factor) goes into the basis
    basis = (rot[..., :2, :] if projector.ndim == 3 else rot[..., :2, :2]) * (
        2.0 / projector.box_size)
    k = freq_px.to(device=rot.device, dtype=real_dtype)
    assert projector.channels is not None
    n_maps, b, m = projector.data.shape[0], rot.shape[0], k.shape[0]
    out = torch.empty((n_maps, b, m), dtype=projector.data.dtype, device=rot.device)
    # in pieces of about pf.POINTS_PER_CHUNK samples: the coordinates and grid_sample's buffers
    # are several times the size of the result
    step = max(1, pf.POINTS_PER_CHUNK // max(1, m))
    for start in range(0, b, step):
        coords = torch.einsum("mi,bij->bmj", k, basis[start:start + step])
        out[:, start:start + step] = pf.sample_full(
            projector.channels, coords.reshape(-1, projector.ndim)).reshape(n_maps, -1, m)
    return out


def project_volume(
    volume: torch.Tensor,
    rotations: torch.Tensor,
    *,
    padding_factor: float = 2.0,
    max_radius_px: float | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Real-space projections of one ``(n, n, n)`` volume: ``(b, n, n)``, centre at ``n // 2``."""
    proj = make_projector(volume, ndim=3, padding_factor=padding_factor)
    return _real_images(proj, rotations, max_radius_px, batch_size)


def project_images(
    images: torch.Tensor,
    rotations_2d: torch.Tensor,
    *,
    padding_factor: float = 2.0,
    max_radius_px: float | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Rotate one ``(n, n)`` image by ``(b, 2, 2)`` matrices in Fourier space: ``(b, n, n)``.

    ``out(r) = image(R^T r)`` about the centre pixel ``n // 2`` (RELION's 2D convention, where
    ``R`` is the top-left 2x2 block of ``euler_to_matrix((0, 0, psi))``).
    """
    proj = make_projector(images, ndim=2, padding_factor=padding_factor)
    return _real_images(proj, rotations_2d, max_radius_px, batch_size)


def _real_images(
    proj: Projector, rotations: torch.Tensor, max_radius_px: float | None, batch_size: int
) -> torch.Tensor:
    n = proj.box_size
    outs = []
    for start in range(0, rotations.shape[0], batch_size):
        ft = project(proj, rotations[start : start + batch_size], max_radius_px=max_radius_px)[0]
        outs.append(origin_to_centre(torch.fft.irfft2(ft, s=(n, n)), 2))
    return torch.cat(outs, dim=0)


def images_to_centred_ft(images: torch.Tensor) -> torch.Tensor:
    """``(..., n, n)`` real images (centre ``n // 2``) -> ``(..., n, n // 2 + 1)`` rfft, DC at 0."""
    return torch.fft.rfft2(centre_to_origin(images, 2))


def centred_ft_to_images(ft: torch.Tensor, box_size: int) -> torch.Tensor:
    """Inverse of :func:`images_to_centred_ft`."""
    return origin_to_centre(torch.fft.irfft2(ft, s=(box_size, box_size)), 2)
