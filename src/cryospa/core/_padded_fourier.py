"""Private helpers shared by projection and back-projection.

A padded Fourier grid is stored "centred": for a real-space box of ``n`` pixels padded to
``N = padding * n`` (even), the rfft over ``ndim`` axes is kept with the full axes fftshifted and
extended by one sample, so index ``i`` holds frequency ``i - N // 2`` for ``i = 0 .. N`` (the extra
sample at ``+N/2`` repeats ``-N/2`` by periodicity) and the half axis (x) holds ``0 .. N // 2``.
Shapes: ``(..., N + 1, N // 2 + 1)`` in 2D and ``(..., N + 1, N + 1, N // 2 + 1)`` in 3D.

Trilinear (bilinear) interpolation on this grid multiplies real space by ``prod_i sinc^2(x_i / N)``
(the transform of the triangle kernel); :func:`gridding_correction` is that factor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cryospa.core.fourier import centre_to_origin, origin_to_centre

#: Samples interpolated or splatted at once by ``project_points`` / ``backproject_points``:
#: bounds their temporary buffers (coordinates, neighbour indices and weights, about 100 bytes
#: per sample) to ~200 MB.
POINTS_PER_CHUNK = 2**21


def padded_size(box_size: int, padding_factor: float) -> int:
    """Even padded box size ``N >= padding_factor * box_size``."""
    n = round(box_size * padding_factor)
    return n + (n % 2)


def pad_real(x: torch.Tensor, new_size: int, ndim: int) -> torch.Tensor:
    """Zero-pad the last ``ndim`` axes to ``new_size`` keeping pixel ``n // 2`` at ``N // 2``."""
    n = x.shape[-1]
    before = new_size // 2 - n // 2
    after = new_size - n - before
    return F.pad(x, [before, after] * ndim)


def crop_real(x: torch.Tensor, box_size: int, ndim: int) -> torch.Tensor:
    """Inverse of :func:`pad_real`: crop the last ``ndim`` axes to ``box_size`` about the centre."""
    big = x.shape[-1]
    start = big // 2 - box_size // 2
    for d in range(-ndim, 0):
        x = x.narrow(d, start, box_size)
    return x


def gridding_correction(
    size: int, padded: int, ndim: int, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``prod_i sinc^2(x_i / padded)`` over a real-space box of ``size`` (centre ``size // 2``)."""
    x = (torch.arange(size, device=device, dtype=dtype) - size // 2) / padded
    s = torch.sinc(x) ** 2  # torch.sinc is sin(pi x) / (pi x)
    out = s
    for _ in range(ndim - 1):
        out = out[..., None] * s
    # out[i, j, (k)] = s[i] s[j] (s[k]): separable kernel transform
    return out


def to_centred(ft: torch.Tensor, ndim: int) -> torch.Tensor:
    """Standard rfft layout (DC at 0) -> centred extended layout (see module docstring)."""
    full_dims = tuple(range(-ndim, -1))
    c = torch.fft.fftshift(ft, dim=full_dims)
    for d in full_dims:
        first = c.narrow(d, 0, 1)
        c = torch.cat([c, first], dim=d)
    return c


def from_centred(c: torch.Tensor, ndim: int) -> torch.Tensor:
    """Centred extended layout -> standard rfft layout, folding the duplicated +N/2 samples in."""
    full_dims = tuple(range(-ndim, -1))
    for d in full_dims:
        size = c.shape[d]
        main = c.narrow(d, 0, size - 1).clone()
        main.narrow(d, 0, 1).add_(c.narrow(d, size - 1, 1))
        c = main
    return torch.fft.ifftshift(c, dim=full_dims)


def real_to_centred_ft(x: torch.Tensor, padded: int, ndim: int, *, correct: bool) -> torch.Tensor:
    """Pad a real image/volume, optionally pre-divide by the gridding kernel, rfft, centre."""
    xp = pad_real(x, padded, ndim)
    if correct:
        xp = xp / gridding_correction(padded, padded, ndim, device=x.device, dtype=x.dtype)
    ft = torch.fft.rfftn(centre_to_origin(xp, ndim), dim=tuple(range(-ndim, 0)))
    return to_centred(ft, ndim)


def centred_ft_to_real(c: torch.Tensor, padded: int, box_size: int, ndim: int) -> torch.Tensor:
    """Inverse of :func:`real_to_centred_ft` without the gridding division; crops to the box."""
    ft = from_centred(c, ndim)
    xp = torch.fft.irfftn(ft, s=(padded,) * ndim, dim=tuple(range(-ndim, 0)))
    return crop_real(origin_to_centre(xp, ndim), box_size, ndim)


def output_frequencies(
    box_size: int, ndim_out: int, *, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Integer frequency coordinates of the rfft grid of a ``box_size`` image/volume.

    Returns ``(*grid, ndim_out)`` with the components ordered (x, y[, z]).
    """
    kx = torch.fft.rfftfreq(box_size, device=device, dtype=dtype) * box_size
    kf = torch.fft.fftfreq(box_size, device=device, dtype=dtype) * box_size
    if ndim_out == 2:
        gy, gx = torch.meshgrid(kf, kx, indexing="ij")
        return torch.stack([gx, gy], dim=-1)
    gz, gy, gx = torch.meshgrid(kf, kf, kx, indexing="ij")
    return torch.stack([gx, gy, gz], dim=-1)


def to_channels(c: torch.Tensor) -> torch.Tensor:
    """``(C, ...)`` complex centred grid -> ``(1, 2 C, ...)`` real channels for ``grid_sample``."""
    real = torch.view_as_real(c)  # (C, ..., 2)
    return real.movedim(-1, 1).reshape(1, -1, *c.shape[1:]).contiguous()


def sample_centred(channels: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Interpolate a centred padded FT at frequency coordinates, with Friedel symmetry.

    Parameters
    ----------
    channels
        ``(1, 2 C, N + 1, [N + 1,] N // 2 + 1)`` real channels from :func:`to_channels` of a
        centred grid with ``C`` maps.
    coords
        ``(P, ndim)`` frequency coordinates (x, y[, z]) in padded-grid units.

    Returns
    -------
    torch.Tensor
        ``(C, P)`` complex interpolated values.
    """
    ndim = coords.shape[-1]
    n_full = channels.shape[-2]
    half = n_full // 2
    neg = coords[:, :1] < 0  # (P, 1)
    coords = torch.where(neg, -coords, coords)
    # grid_sample coordinates with align_corners=True map -1 / +1 to the first / last index:
    # x index = kx, y (and z) index = k + N // 2
    sizes = [channels.shape[-1]] + [n_full] * (ndim - 1)
    scale = torch.tensor([2.0 / (s - 1) for s in sizes], dtype=coords.dtype, device=coords.device)
    offset = torch.tensor(
        [-1.0] + [2.0 * half / (n_full - 1) - 1.0] * (ndim - 1),
        dtype=coords.dtype,
        device=coords.device,
    )
    norm = (coords * scale + offset).to(channels.dtype)
    grid = norm.reshape(1, 1, -1, ndim) if ndim == 2 else norm.reshape(1, 1, 1, -1, ndim)
    out = F.grid_sample(channels, grid, mode="bilinear", align_corners=True)
    out = out.reshape(channels.shape[1] // 2, 2, -1).movedim(1, -1).contiguous()
    vals = torch.view_as_complex(out)  # (C, P)
    return torch.where(neg.T, vals.conj(), vals)


def to_full_channels(c: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(C, ...)`` complex centred half grid -> real channels of the whole grid.

    The x axis is completed with the Friedel mates, so index ``i`` of every axis holds
    frequency ``i - N // 2``: ``(1, 2 C, N + 1, [N + 1,] N + 1)``. Sampling it
    (:func:`sample_full`) needs no conjugation; it takes twice the memory of
    :func:`to_channels`. ``c`` must be Hermitian on its x = 0 plane (the transform of real maps).
    """
    mirror = torch.flip(c[..., 1:], dims=tuple(range(-ndim, 0))).conj()  # x = -N/2 .. -1
    return to_channels(torch.cat([mirror, c], dim=-1))


def sample_full(channels: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Interpolate :func:`to_full_channels` at ``(P, ndim)`` coordinates scaled by ``2 / N``.

    ``coords`` are frequencies (x, y[, z]) in padded-grid units times ``2 / N`` (so +-1 is
    +-Nyquist of the padded grid): the caller folds the scale into its rotation. Returns
    ``(C, P)`` complex values, as :func:`sample_centred`.
    """
    ndim = coords.shape[-1]
    grid = coords.to(channels.dtype)
    grid = grid.reshape(1, 1, -1, ndim) if ndim == 2 else grid.reshape(1, 1, 1, -1, ndim)
    out = F.grid_sample(channels, grid, mode="bilinear", align_corners=True)
    out = out.reshape(channels.shape[1] // 2, 2, -1)
    return torch.complex(out[:, 0], out[:, 1])


def scatter_centred(
    data: torch.Tensor,
    weight: torch.Tensor | None,
    coords: torch.Tensor,
    values: torch.Tensor,
    value_weights: torch.Tensor | None,
) -> None:
    """Add values (and weights) into a centred padded grid by trilinear (bilinear) splatting.

    Parameters
    ----------
    data
        ``(N + 1, [N + 1,] N // 2 + 1)`` complex accumulator, modified in place.
    weight
        Same shape, real accumulator, modified in place (or None).
    coords
        ``(P, ndim)`` frequency coordinates (x, y[, z]) in padded-grid units, within the radius
        ``N / 2`` (so every neighbour with a non-zero weight lies inside the grid).
    values
        ``(P,)`` complex values.
    value_weights
        ``(P,)`` real weights (e.g. CTF^2), or None.
    """
    ndim = coords.shape[-1]
    n_points = coords.shape[0]
    half = data.shape[-2] // 2
    real_dtype = data.real.dtype
    # Friedel: a point with x < 0 goes in as its mate (-k, conj(value)); sign = -1 for those
    sign = 1.0 - 2.0 * (coords[:, 0] < 0).to(real_dtype)
    pos = (coords.to(real_dtype) * sign[:, None]).T.contiguous()  # (ndim, P), index units
    pos[1:] += half
    base = torch.floor(pos)
    frac = pos - base
    row = data.shape[-1]
    strides = [1, row, row * data.shape[-2]][:ndim]
    flat = base[0].long()
    for axis in range(1, ndim):
        flat += base[axis].long() * strides[axis]
    # the 2^ndim neighbours as constant offsets from the lower corner, x fastest. A neighbour
    # beyond the grid edge (or past the end of a row) only ever gets weight 0, so clamping
    # its index into the array is safe. Rows of (2^ndim, P): the long axis stays contiguous,
    # which keeps every elementwise pass vectorised (a (P, 8) layout is several times slower)
    corners = torch.zeros(1, dtype=torch.long, device=coords.device)
    weights = torch.ones((1, n_points), dtype=real_dtype, device=coords.device)
    for axis in range(ndim):
        corners = torch.cat([corners, corners + strides[axis]])
        weights = torch.cat([weights * (1.0 - frac[axis]), weights * frac[axis]])
    index = (corners[:, None] + flat[None, :]).clamp_(0, data.numel() - 1).view(-1)
    # scatter straight into the accumulators viewed as flat real arrays: 1D scatter_add_ is
    # several times faster on the CPU than index_add_ of multi-column rows
    pairs = torch.view_as_real(data).view(-1, 2)
    pairs[:, 0].scatter_add_(0, index, (weights * values.real.to(real_dtype)).view(-1))
    pairs[:, 1].scatter_add_(0, index, (weights * (values.imag.to(real_dtype) * sign)).view(-1))
    if weight is not None and value_weights is not None:
        weight.view(-1).scatter_add_(0, index, (weights * value_weights.to(real_dtype)).view(-1))


def symmetrise_half_plane(c: torch.Tensor, ndim: int, *, conj: bool) -> None:
    """Make the x = 0 plane of a centred accumulator Hermitian (add the Friedel mates), in place.

    Splatting only into the x >= 0 half misses the mirrored contributions that samples near
    x = 0 make to the x = 0 plane on the other side; they are the conjugated point reflection.
    """
    plane = c[..., 0]
    flip_dims = tuple(range(-(ndim - 1), 0))
    mate = torch.flip(plane, dims=flip_dims)
    plane.add_(mate.conj() if conj else mate)
