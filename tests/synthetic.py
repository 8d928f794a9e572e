"""Small synthetic inputs for tests (the full physical simulator is `cryospa simulate`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cryospa.io.mrc import write_mrc
from cryospa.io.star import split_optics, write_relion_star


def pseudo_atomic_map(
    n: int = 64, *, n_atoms: int = 1500, sigma_px: float = 0.8, seed: int = 0
) -> np.ndarray:
    """A map of Gaussian 'atoms' in an ellipsoid: signal up to Nyquist, like a real protein."""
    rng = np.random.default_rng(seed)
    ax = np.arange(n) - n // 2
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    semi = np.array([0.31, 0.23, 0.19]) * n
    pts = rng.normal(size=(4 * n_atoms, 3)) * semi / 2.2
    pts = pts[np.sum((pts / semi) ** 2, axis=1) < 1][:n_atoms]
    vol = np.zeros((n, n, n), dtype=np.float64)
    r = int(np.ceil(4 * sigma_px))
    for px, py, pz in pts:
        ix, iy, iz = (round(v) + n // 2 for v in (px, py, pz))
        sl = (slice(iz - r, iz + r + 1), slice(iy - r, iy + r + 1), slice(ix - r, ix + r + 1))
        d2 = (x[sl] - px) ** 2 + (y[sl] - py) ** 2 + (z[sl] - pz) ** 2
        vol[sl] += np.exp(-d2 / (2 * sigma_px**2))
    return vol.astype(np.float32)


def random_particles_table(
    n: int,
    *,
    box_size: int,
    pixel_size: float,
    seed: int = 0,
    stack: str = "particles.mrcs",
    max_origin_angstrom: float = 10.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
) -> pd.DataFrame:
    """Particle rows (joined with optics) with uniform random poses, origins and astigmatic CTFs."""
    rng = np.random.default_rng(seed)
    du = rng.uniform(8000, 25000, n)
    return pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@{stack}" for i in range(n)],
            "rlnAngleRot": rng.uniform(-180, 180, n),
            "rlnAngleTilt": np.degrees(np.arccos(rng.uniform(-1, 1, n))),
            "rlnAnglePsi": rng.uniform(-180, 180, n),
            "rlnOriginXAngst": rng.uniform(-max_origin_angstrom, max_origin_angstrom, n),
            "rlnOriginYAngst": rng.uniform(-max_origin_angstrom, max_origin_angstrom, n),
            "rlnDefocusU": du,
            "rlnDefocusV": du - rng.uniform(0, 1500, n),
            "rlnDefocusAngle": rng.uniform(-180, 180, n),
            "rlnRandomSubset": rng.integers(1, 3, n),
            "rlnOpticsGroup": np.ones(n, dtype=int),
            "rlnOpticsGroupName": "opticsGroup1",
            "rlnVoltage": voltage_kv,
            "rlnSphericalAberration": cs_mm,
            "rlnAmplitudeContrast": amplitude_contrast,
            "rlnImagePixelSize": pixel_size,
            "rlnImageSize": box_size,
            "rlnImageDimensionality": 2,
        }
    )


def write_map_and_angles(
    folder: Path, *, n: int = 64, pixel_size: float = 2.0, n_particles: int = 200, seed: int = 0
) -> tuple[Path, Path, np.ndarray]:
    """Write ``map.mrc`` and ``angles.star`` (RELION 3.1 form) into ``folder``."""
    vol = pseudo_atomic_map(n, seed=seed)
    map_path = folder / "map.mrc"
    write_mrc(map_path, vol, voxel_size_angstrom=pixel_size)
    rows = random_particles_table(n_particles, box_size=n, pixel_size=pixel_size, seed=seed + 1)
    star_path = folder / "angles.star"
    write_relion_star(star_path, split_optics(rows, "particles"))
    return map_path, star_path, vol


def cc_shift(a: np.ndarray, b: np.ndarray, *, window: bool = True) -> tuple[float, float]:
    """Displacement ``(dx, dy)`` of ``a``'s content relative to ``b`` (``a(p) ~ b(p - d)``).

    Integer peak of the (Hann-windowed) cross-correlation, refined to 0.001 px by evaluating
    the band-limited cross-correlation on finer and finer grids (matrix DFT).
    """
    h, w = a.shape
    win = np.outer(np.hanning(h), np.hanning(w)) if window else np.ones((h, w))
    fa = np.fft.fft2((a - a.mean()) * win)
    fb = np.fft.fft2((b - b.mean()) * win)
    cross = fa * np.conj(fb)
    cc = np.fft.ifft2(cross).real
    iy, ix = np.unravel_index(int(np.argmax(cc)), cc.shape)
    best = (float(ix - w if ix > w // 2 else ix), float(iy - h if iy > h // 2 else iy))
    ky, kx = np.fft.fftfreq(h), np.fft.fftfreq(w)
    step = 1.0
    for _ in range(3):
        step /= 10
        offsets = np.arange(-10, 11) * step
        xs, ys = best[0] + offsets, best[1] + offsets
        ey = np.exp(2j * np.pi * np.outer(ys, ky))
        ex = np.exp(2j * np.pi * np.outer(kx, xs))
        values = (ey @ cross @ ex).real
        j, i = np.unravel_index(int(np.argmax(values)), values.shape)
        best = (float(xs[i]), float(ys[j]))
    return best


def simulation_maps(
    spec: str = "builtin:ldh",
    pixel_size: float = 1.77,
    *,
    box: int | None = None,
    symmetry: str = "D2",
):  # type: ignore[no-untyped-def]
    """Maps for simulator tests: the shipped model (default) or an MRC map, as ``simulate``."""
    from cryospa.sim.particles import load_maps_for_simulation

    return load_maps_for_simulation(
        [spec],
        fractions=None,
        map_pixel_size_angstrom=None,
        pixel_size_angstrom=pixel_size,
        box_size=box,
        symmetry=symmetry,
        contrast_potential_volt=2.0,
        particle_diameter_angstrom=None,
    )
