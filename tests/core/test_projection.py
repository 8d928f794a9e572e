import math

import pytest
import torch

from cryospa.core.backprojection import backproject, make_backprojector, reconstruct
from cryospa.core.ctf import ctf_2d_on_grid
from cryospa.core.fsc import fsc
from cryospa.core.projection import (
    images_to_centred_ft,
    make_projector,
    project,
    project_images,
    project_volume,
)
from cryospa.core.rotations import euler_to_matrix, random_rotations


def _grid(n: int, ndim: int, dtype: torch.dtype) -> list[torch.Tensor]:
    ax = torch.arange(n, dtype=dtype) - n // 2
    return list(torch.meshgrid(*[ax] * ndim, indexing="ij"))


def _random_map(n: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    vol = torch.randn(n, n, n, generator=g, dtype=torch.float64)
    z, y, x = _grid(n, 3, torch.float64)
    return (vol * (torch.sqrt(x * x + y * y + z * z) < n // 2 - 3)).to(dtype)


@pytest.mark.parametrize("n", [48, 49])
@pytest.mark.parametrize(("padding", "tolerance"), [(2, 0.015), (4, 0.003)])
def test_projection_of_gaussian_blob_is_analytic(n: int, padding: int, tolerance: float) -> None:
    # trilinear interpolation error falls as 1 / padding^2 (measured: 1.0 % at 2, 0.2 % at 4)
    dtype = torch.float64
    z, y, x = _grid(n, 3, dtype)
    sigma = 3.0
    centre = torch.tensor([5.0, -7.0, 3.0], dtype=dtype)  # x, y, z
    vol = torch.exp(
        -((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2) / (2 * sigma**2)
    )
    rots = random_rotations(8, generator=torch.Generator().manual_seed(0))
    proj = project_volume(vol, rots, padding_factor=padding)
    assert proj.shape == (8, n, n) and proj.dtype == dtype
    yy, xx = _grid(n, 2, dtype)
    peak = math.sqrt(2 * math.pi) * sigma  # line integral through the centre
    for i in range(8):
        p = rots[i] @ centre  # the blob lands at A c (RELION: P(r) = V(A^T r))
        analytic = peak * torch.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * sigma**2))
        assert (proj[i] - analytic).abs().max() < tolerance * peak


def test_projection_keeps_device_and_float32(device: str) -> None:
    vol = _random_map(32, 0, torch.float32).to(device)
    rots = random_rotations(4, generator=torch.Generator().manual_seed(0), dtype=torch.float32).to(
        device
    )
    ft = project(make_projector(vol), rots)
    assert ft.shape == (1, 4, 32, 17) and ft.dtype == torch.complex64 and ft.device.type == device


def test_identity_projection_is_sum_along_z() -> None:
    n = 32
    vol = _random_map(n, 1)
    # band-limit the map to the Nyquist sphere (projection drops frequencies beyond it)
    ft = torch.fft.fftn(vol)
    k = torch.fft.fftfreq(n, dtype=torch.float64)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    vol = torch.fft.ifftn(ft * (kx**2 + ky**2 + kz**2 <= 0.25)).real
    p = project_volume(vol, torch.eye(3, dtype=torch.float64)[None], padding_factor=4)[0]
    ref = vol.sum(0)
    # a white spectrum up to Nyquist is the worst case for interpolation: 2.5 % max error
    assert torch.corrcoef(torch.stack([p.flatten(), ref.flatten()]))[0, 1] > 0.999
    assert (p - ref).abs().max() < 0.04 * ref.abs().max()


def test_2d_rotation_by_90_degrees_matches_rot90() -> None:
    n = 64
    yy, xx = _grid(n, 2, torch.float64)
    img = torch.exp(-((xx - 10) ** 2 + (yy - 3) ** 2) / 8.0) + 0.5 * torch.exp(
        -((xx + 4) ** 2 + (yy + 12) ** 2) / 18.0
    )
    r = euler_to_matrix(torch.tensor([[0.0, 0.0, 90.0]], dtype=torch.float64))[:, :2, :2]
    out = project_images(img, r, padding_factor=4)[0]
    # out(r) = img(R^T r) with R = [[0, 1], [-1, 0]]: a point at (x, y) moves to (y, -x)
    expected = torch.zeros_like(img)
    iy, ix = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    src_x = (-(iy - n // 2)) + n // 2  # x_src = -y_out
    src_y = (ix - n // 2) + n // 2  # y_src = x_out
    ok = (src_x >= 0) & (src_x < n) & (src_y >= 0) & (src_y < n)
    expected[ok] = img[src_y[ok], src_x[ok]]
    assert (out - expected).abs().max() < 0.01


@pytest.mark.parametrize("n", [32, 33])
def test_reconstruction_from_noiseless_projections(n: int) -> None:
    vol = _random_map(n, 2)
    rots = random_rotations(3000, generator=torch.Generator().manual_seed(1))
    proj = make_projector(vol)
    bp = make_backprojector(n, dtype=torch.float64)
    for s in range(0, 3000, 1000):
        backproject(bp, project(proj, rots[s : s + 1000])[0], rots[s : s + 1000])
    rec = reconstruct(bp)
    curve = fsc(rec, vol)
    nyquist = n // 2
    assert curve[: int(0.9 * nyquist) + 1].min() > 0.99


def test_ctf_weighted_reconstruction_and_symmetry() -> None:
    n = 33  # odd: torch.rot90 turns about pixel n // 2 only for odd n
    vol = _random_map(n, 4)
    # impose C4 on the map by averaging rotations about z (exact for 90 degrees)
    vol = (
        vol
        + torch.rot90(vol, 1, dims=(1, 2))
        + torch.rot90(vol, 2, dims=(1, 2))
        + torch.rot90(vol, 3, dims=(1, 2))
    ) / 4
    g = torch.Generator().manual_seed(5)
    rots = random_rotations(600, generator=g)
    defocus = 8000 + 20000 * torch.rand(600, generator=g, dtype=torch.float64)
    ctf = ctf_2d_on_grid(
        (n, n),
        4.0,
        dtype=torch.float64,
        defocus_u_angstrom=defocus,
        defocus_v_angstrom=defocus - 300,
        astigmatism_angle_degrees=30.0,
        voltage_kv=300.0,
        spherical_aberration_mm=2.7,
        amplitude_contrast=0.1,
    )
    images_ft = project(make_projector(vol), rots)[0] * ctf
    # C4 operators about z: the map is invariant, so inserting A R_s for each s is valid
    c4 = euler_to_matrix(
        torch.tensor([[0.0, 0.0, a] for a in (0.0, 90.0, 180.0, 270.0)], dtype=torch.float64)
    )
    bp = make_backprojector(n, dtype=torch.float64)
    sym_rots = (rots[:, None] @ c4[None]).reshape(-1, 3, 3)
    backproject(bp, images_ft.repeat_interleave(4, 0), sym_rots, ctf=ctf.repeat_interleave(4, 0))
    rec = reconstruct(bp)
    curve = fsc(rec, vol)
    assert curve[: int(0.9 * n // 2) + 1].min() > 0.98


def test_backproject_rejects_wrong_image_size() -> None:
    bp = make_backprojector(32)
    with pytest.raises(ValueError, match="rfft of 32x32"):
        backproject(bp, torch.zeros(2, 30, 16, dtype=torch.complex64), torch.eye(3).expand(2, 3, 3))


def test_project_rejects_non_cubic() -> None:
    with pytest.raises(ValueError, match="square/cubic"):
        make_projector(torch.zeros(32, 32, 30))


def test_images_to_centred_ft_delta_is_flat() -> None:
    img = torch.zeros(16, 16, dtype=torch.float64)
    img[8, 8] = 1.0
    ft = images_to_centred_ft(img)
    assert torch.allclose(ft, torch.ones_like(ft))


def test_wiener_regularised_reconstruction_beats_plain_on_noisy_data() -> None:
    # images = projections + white noise (sigma per pixel); with the true per-shell SNR
    # tau2 = S(k) / (n^2 sigma^2), the Wiener estimate D / (W + 1 / tau2) has a lower error
    # against the truth than D / W, and never a worse FSC
    from cryospa.core.filters import radial_average

    n = 32
    vol = _random_map(n, 6)
    g = torch.Generator().manual_seed(8)
    rots = random_rotations(800, generator=g)
    clean = project(make_projector(vol), rots)[0]
    sigma = 8.0 * float(torch.fft.irfft2(clean, s=(n, n)).std())
    noise_ft = torch.fft.rfft2(torch.randn(800, n, n, generator=g, dtype=torch.float64) * sigma)
    bp = make_backprojector(n, dtype=torch.float64)
    backproject(bp, clean + noise_ft, rots)
    signal = radial_average(torch.fft.rfftn(vol).abs() ** 2, ndim=3, shape=vol.shape)
    tau2 = signal / (n * n * sigma**2)
    plain = reconstruct(bp)
    wiener = reconstruct(bp, tau2=tau2)

    def err(v: torch.Tensor) -> float:
        return float(((v - vol) ** 2).sum())

    # measured: 0.59 of the plain error; the true tau2 is the optimum within a factor 3
    assert err(wiener) < 0.7 * err(plain)
    assert err(wiener) < 1.05 * min(err(reconstruct(bp, tau2=tau2 * s)) for s in (0.3, 3.0))
    f_plain, f_wiener = fsc(plain, vol), fsc(wiener, vol)
    assert (f_wiener - f_plain).min() > -0.01


def test_2d_backprojection_of_rotated_copies_restores_the_image() -> None:
    n = 48
    yy, xx = _grid(n, 2, torch.float64)
    img = torch.exp(-((xx - 9) ** 2 + (yy + 4) ** 2) / 10.0) - 0.7 * torch.exp(
        -((xx + 6) ** 2 + (yy - 8) ** 2) / 6.0
    )
    psi = torch.linspace(0, 360, 37, dtype=torch.float64)[:-1]
    rots = euler_to_matrix(torch.stack([torch.zeros_like(psi), torch.zeros_like(psi), psi], -1))[
        :, :2, :2
    ]
    proj2d = make_projector(img, ndim=2)
    rotated = project(proj2d, rots)[0]  # (36, n, n//2+1): the image turned by each psi
    bp = make_backprojector(n, ndim=2, dtype=torch.float64)
    backproject(bp, rotated, rots)  # inserting each copy at its own rotation undoes it
    out = reconstruct(bp, mask_radius_px=None)
    assert (out - img).abs().max() < 0.02 * img.abs().max()


def test_points_in_pieces_equal_points_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryospa.core import _padded_fourier as pf
    from cryospa.core.backprojection import backproject_points
    from cryospa.core.projection import project_points

    g = torch.Generator().manual_seed(3)
    proj = make_projector(torch.randn(16, 16, 16, generator=g))
    rots = random_rotations(7, generator=g).float()
    ky, kx = torch.meshgrid(torch.arange(-5.0, 6.0), torch.arange(0.0, 6.0), indexing="ij")
    freq = torch.stack([kx.flatten(), ky.flatten()], -1)
    values = torch.randn(7, freq.shape[0], dtype=torch.complex64, generator=g)
    weights = torch.rand(7, freq.shape[0], generator=g)
    whole = project_points(proj, rots, freq)
    bp_whole = make_backprojector(16)
    backproject_points(bp_whole, values, weights, rots, freq)
    monkeypatch.setattr(pf, "POINTS_PER_CHUNK", 2 * freq.shape[0] + 1)  # 2 rotations a piece
    # equal to float32 rounding (the coordinates are computed in other batch shapes)
    torch.testing.assert_close(project_points(proj, rots, freq), whole, rtol=1e-4, atol=1e-3)
    bp_pieces = make_backprojector(16)
    backproject_points(bp_pieces, values, weights, rots, freq)
    torch.testing.assert_close(bp_pieces.data, bp_whole.data, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bp_pieces.weight, bp_whole.weight, rtol=1e-4, atol=1e-4)
    # and the projection of real maps: Friedel mates of the whole grid agree with the half grid
    torch.testing.assert_close(project_points(proj, rots, -freq), whole.conj(), rtol=1e-4,
                               atol=1e-3)
