"""CTF-weighted Fourier back-projection and reconstruction (3D from 2D slices; 2D from 2D).

Each image's transform ``X_i(k)`` is inserted as a central slice (``A_i^T (kx, ky, 0)``) into a
padded 3D Fourier grid by trilinear splatting: the data sum ``D += CTF_i X_i`` and the weight sum
``W += CTF_i^2``. The reconstruction is the Wiener-like estimate

    V(k) = D(k) / (W(k) + lambda(k)),   lambda(k) = 1 / tau^2(k)  (or a small floor)

followed by the inverse transform, the gridding correction (division by the transform of the
splatting kernel, ``sinc^2`` per axis of the padded box) and cropping to the original box. With
``tau2`` (the spectral signal power per shell, e.g. from the FSC as RELION's ``--fsc``) it is the
regularised reconstruction of Scheres (2012); without, a small floor ``min_weight_fraction *
mean(W)`` only guards empty voxels.

Symmetry is imposed by inserting every image once per operator ``R_s`` with rotation ``A R_s``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryospa.core import _padded_fourier as pf
from cryospa.core.fourier import origin_to_centre
from cryospa.core.masks import soft_circle, soft_sphere

__all__ = [
    "BackProjector",
    "backproject",
    "backproject_points",
    "make_backprojector",
    "reconstruct",
    "symmetrise_backprojector",
]


@dataclass
class BackProjector:
    """Accumulators of a back-projection.

    Attributes
    ----------
    data
        ``(N + 1, N + 1, N // 2 + 1)`` (3D) or ``(N + 1, N // 2 + 1)`` (2D) complex sum of
        ``CTF X`` in the centred padded layout.
    weight
        Same shape, real sum of ``CTF^2``.
    box_size, padded_size, ndim
        ``n``, ``N`` and 2 or 3.
    """

    data: torch.Tensor
    weight: torch.Tensor
    box_size: int
    padded_size: int
    ndim: int

    @property
    def padding_factor(self) -> float:
        """``N / n``."""
        return self.padded_size / self.box_size

    def __iadd__(self, other: BackProjector) -> BackProjector:
        """Sum another accumulator of the same geometry into this one (e.g. across workers)."""
        if (other.box_size, other.padded_size, other.ndim) != (
            self.box_size,
            self.padded_size,
            self.ndim,
        ):
            raise ValueError("cannot add back-projectors of different geometry")
        self.data += other.data
        self.weight += other.weight
        return self


def make_backprojector(
    box_size: int,
    *,
    ndim: int = 3,
    padding_factor: float = 2.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> BackProjector:
    """Empty accumulators for a ``box_size`` reconstruction (3D or 2D)."""
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    padded = pf.padded_size(box_size, padding_factor)
    shape = (padded + 1,) * (ndim - 1) + (padded // 2 + 1,)
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return BackProjector(
        data=torch.zeros(shape, dtype=cdtype, device=device),
        weight=torch.zeros(shape, dtype=dtype, device=device),
        box_size=box_size,
        padded_size=padded,
        ndim=ndim,
    )


def backproject(
    bp: BackProjector,
    images_ft: torch.Tensor,
    rotations: torch.Tensor,
    *,
    ctf: torch.Tensor | None = None,
    image_weights: torch.Tensor | None = None,
    max_radius_px: float | None = None,
) -> None:
    """Insert a batch of image transforms as central slices (accumulates in place).

    Parameters
    ----------
    bp
        Accumulators from :func:`make_backprojector`.
    images_ft
        ``(b, n, n // 2 + 1)`` complex rfft of centred images (see
        :func:`cryospa.core.projection.images_to_centred_ft`), already shifted so the particle
        is at the centre.
    rotations
        ``(b, 3, 3)`` RELION matrices ``A`` (3D) or ``(b, 2, 2)`` (2D).
    ctf
        ``(b, n, n // 2 + 1)`` CTF values, or None for no CTF (weight 1).
    image_weights
        ``(b,)`` per-image weights (e.g. posterior probabilities), or None.
    max_radius_px
        Ignore frequencies beyond this radius in output Fourier pixels (Nyquist default).
    """
    n = bp.box_size
    if images_ft.shape[-2:] != (n, n // 2 + 1):
        raise ValueError(
            f"images_ft must be the rfft of {n}x{n} images, shape (b, {n}, {n // 2 + 1}), "
            f"got {tuple(images_ft.shape)}"
        )
    real_dtype = bp.weight.dtype
    k = pf.output_frequencies(n, 2, device=bp.weight.device, dtype=real_dtype)
    r_max = n / 2 if max_radius_px is None else min(max_radius_px, n / 2)
    inside = (k * k).sum(-1) <= r_max * r_max
    rot = rotations.to(real_dtype)
    basis = rot[..., :2, :] if bp.ndim == 3 else rot[..., :2, :2]
    coords = torch.einsum("pi,...ij->...pj", k[inside], basis) * bp.padding_factor  # (b,P,nd)
    values = images_ft[:, inside].to(bp.data.dtype)  # (b, P)
    if ctf is not None:
        c = ctf[:, inside].to(real_dtype)
        values = values * c
        wts = c * c
    else:
        wts = torch.ones(values.shape, dtype=real_dtype, device=values.device)
    if image_weights is not None:
        iw = image_weights.to(real_dtype)[:, None]
        values = values * iw
        wts = wts * iw
    pf.scatter_centred(
        bp.data, bp.weight, coords.reshape(-1, bp.ndim), values.reshape(-1), wts.reshape(-1)
    )


def backproject_points(
    bp: BackProjector,
    values: torch.Tensor,
    weights: torch.Tensor,
    rotations: torch.Tensor,
    freq_px: torch.Tensor,
) -> None:
    """Insert slices known only at chosen frequencies (accumulates in place).

    Adds ``values`` to the data and ``weights`` to the weight sums (no CTF applied here: pass
    the already CTF-multiplied sums, e.g. ``sum w CTF X`` and ``sum w CTF^2``).

    Parameters
    ----------
    bp
        Accumulators from :func:`make_backprojector`.
    values
        ``(b, M)`` complex values (unnormalised transform units, as :func:`backproject`).
    weights
        ``(b, M)`` real weights.
    rotations
        ``(b, 3, 3)`` (3D) or ``(b, 2, 2)`` (2D) matrices.
    freq_px
        ``(M, 2)`` frequencies ``(kx, ky)`` in Fourier pixels of the ``n`` box (``|k| <= n/2``).
    """
    real_dtype = bp.weight.dtype
    rot = rotations.to(device=bp.weight.device, dtype=real_dtype)
    basis = (rot[..., :2, :] if bp.ndim == 3 else rot[..., :2, :2]) * bp.padding_factor
    k = freq_px.to(device=rot.device, dtype=real_dtype)
    # in pieces: splatting keeps 8 neighbour indices and weights per sample
    step = max(1, pf.POINTS_PER_CHUNK // max(1, k.shape[0]))
    for start in range(0, rot.shape[0], step):
        rows = slice(start, start + step)
        coords = torch.einsum("mi,bij->bmj", k, basis[rows])
        pf.scatter_centred(
            bp.data,
            bp.weight,
            coords.reshape(-1, bp.ndim),
            values[rows].to(bp.data.dtype).reshape(-1),
            weights[rows].to(real_dtype).reshape(-1),
        )


def symmetrise_backprojector(bp: BackProjector, operators: torch.Tensor) -> BackProjector:
    """Impose a point group on the accumulators (as RELION's ``BackProjector::symmetrise``).

    ``D'(k) = sum_s D(R_s k)`` and the same for the weights, interpolated trilinearly in the
    padded grid; equivalent to inserting every slice once per operator, at the cost of one
    resampling of the grid per operator. ``operators`` ``(S, 3, 3)`` proper rotations including
    the identity. Returns a new accumulator (the input is unchanged).
    """
    if bp.ndim != 3:
        raise ValueError("symmetry is imposed on 3D accumulators only")
    data = bp.data.clone()
    weight = bp.weight.clone()
    pf.symmetrise_half_plane(data, 3, conj=True)
    pf.symmetrise_half_plane(weight, 3, conj=False)
    channels = pf.to_channels(torch.stack([data, weight.to(data.dtype)]))
    n_full, n_x = data.shape[-2], data.shape[-1]
    half = n_full // 2
    real_dtype = bp.weight.dtype
    dev = data.device
    axis = torch.arange(n_full, device=dev, dtype=real_dtype) - half
    gz, gy, gx = torch.meshgrid(axis, axis, torch.arange(n_x, device=dev, dtype=real_dtype),
                                indexing="ij")
    coords = torch.stack([gx, gy, gz], dim=-1).reshape(-1, 3)
    acc = torch.zeros((2, coords.shape[0]), dtype=data.dtype, device=dev)
    for op in operators.to(device=dev, dtype=real_dtype):
        acc += pf.sample_centred(channels, coords @ op.T)
    out = BackProjector(data=acc[0].reshape(data.shape), weight=acc[1].real.reshape(data.shape),
                        box_size=bp.box_size, padded_size=bp.padded_size, ndim=3)
    # reconstruct() adds the Friedel mates on the x = 0 plane again: keep half of it here
    out.data[..., 0] *= 0.5
    out.weight[..., 0] *= 0.5
    return out


def reconstruct(
    bp: BackProjector,
    *,
    tau2: torch.Tensor | None = None,
    tau2_fudge: float = 1.0,
    min_weight_fraction: float = 1e-3,
    gridding: bool = True,
    mask_radius_px: float | None = -1.0,
    mask_edge_px: float = 2.0,
) -> torch.Tensor:
    """Reconstruct the real-space map from the accumulators.

    Parameters
    ----------
    bp
        Filled accumulators.
    tau2
        ``(n_shells,)`` signal-to-noise power ratio of one image's Fourier coefficient per
        shell of the output box (shell = rounded radius in Fourier pixels of the ``n`` box),
        for data inserted with CTF weights ``CTF^2`` (signal power over noise power per
        coefficient; RELION's tau2 / sigma2). Adds ``1 / (fudge padding^ndim tau2)`` to the
        per-voxel weights of the padded grid (Wiener filter). None: no regularisation.
    tau2_fudge
        RELION's ``T`` (``--tau2_fudge``): larger trusts the data more.
    min_weight_fraction
        Floor on the weights as a fraction of the mean non-zero weight (guards empty voxels).
    gridding
        Divide by the transform of the splatting kernel.
    mask_radius_px
        Zero the map beyond this radius (pixels) with a raised-cosine edge of ``mask_edge_px``,
        as RELION does: the box corners hold only noise. ``-1`` (default): ``n / 2``; None: no
        mask.

    Returns
    -------
    torch.Tensor
        ``(n, n, n)`` (or ``(n, n)``) real map, centre at ``n // 2``.
    """
    nd = bp.ndim
    data = bp.data.clone()
    weight = bp.weight.clone()
    pf.symmetrise_half_plane(data, nd, conj=True)
    pf.symmetrise_half_plane(weight, nd, conj=False)
    data_std = pf.from_centred(data, nd)
    weight_std = pf.from_centred(weight, nd).real
    nz = weight_std[weight_std > 0]
    floor = min_weight_fraction * (
        nz.mean() if nz.numel() else torch.ones((), dtype=weight_std.dtype)
    )
    denom = weight_std
    if tau2 is not None:
        npad = bp.padded_size
        grid = pf.output_frequencies(npad, nd, device=weight_std.device, dtype=weight_std.dtype)
        shell = torch.round(torch.linalg.vector_norm(grid, dim=-1) / bp.padding_factor).long()
        t = tau2.to(device=weight_std.device, dtype=weight_std.dtype)
        shell = shell.clamp(max=t.numel() - 1)
        # the padded grid spreads each unpadded voxel's weight over padding^ndim voxels
        oversampling = bp.padding_factor**nd
        ts = t[shell]
        inv = torch.where(ts > 0, 1.0 / (tau2_fudge * oversampling * ts), torch.full_like(ts, 1e30))
        denom = denom + inv
    vol_ft = data_std / torch.clamp(denom, min=float(floor))
    vol_ft = torch.where(weight_std > 0, vol_ft, torch.zeros_like(vol_ft))
    out = torch.fft.irfftn(vol_ft, s=(bp.padded_size,) * nd, dim=tuple(range(-nd, 0)))
    out = pf.crop_real(origin_to_centre(out, nd), bp.box_size, nd)
    if gridding:
        out = out / pf.gridding_correction(
            bp.box_size, bp.padded_size, nd, device=out.device, dtype=out.dtype
        )
    if mask_radius_px is not None:
        radius = bp.box_size / 2 if mask_radius_px < 0 else mask_radius_px
        make = soft_sphere if nd == 3 else soft_circle
        out = out * make(
            bp.box_size, radius, edge_width_px=mask_edge_px, device=out.device, dtype=out.dtype
        )
    return out
