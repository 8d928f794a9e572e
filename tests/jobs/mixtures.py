"""A two-state mixture for the 3D classification tests (class3d, initial-model --classes 2)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from cryospa.io.mrc import read_mrc, write_mrc
from cryospa.io.star import read_relion_star


def second_conformation(volume: np.ndarray) -> np.ndarray:
    """``volume`` with four D2-related globular additions (a bound partner, ~25 % more mass)."""
    n = volume.shape[0]
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    out = volume.astype(np.float64).copy()
    site = np.array([5.0, 4.0, 3.0])  # px (x, y, z): 42 Å from the centre at 6 Å/px
    for signs in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
        px, py, pz = site * np.array(signs)
        out += 0.8 * volume.max() * np.exp(-((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2)
                                           / (2 * 1.2 ** 2))
    return out.astype(np.float32)


def two_state_mixture(first_map: Path, simulated: Callable[..., Path], folder: Path,
                      n: int) -> tuple[Path, Path]:
    """``n`` particles (32 px, 6 Å/px, SNR 0.5, D2): 60 % of ``first_map``, 40 % of its
    :func:`second_conformation`. Returns the simulation folder and the first state's map."""
    first, _ = read_mrc(first_map)
    folder.mkdir()
    write_mrc(folder / "a.mrc", first, voxel_size_angstrom=6.0)
    write_mrc(folder / "b.mrc", second_conformation(first), voxel_size_angstrom=6.0)
    mix = simulated("--level", "particles", "--map", str(folder / "a.mrc"), "--map",
                    str(folder / "b.mrc"), "--fractions", "0.6", "0.4", "--n", str(n), "--box",
                    "32", "--angpix", "6", "--snr", "0.5", "--sym", "D2")
    return mix, folder / "a.mrc"


def class_accuracy(data_star: Path, mix: Path) -> tuple[float, np.ndarray]:
    """Fraction of particles in the right one of two classes (either labelling) and the
    assigned class numbers."""
    got = read_relion_star(data_star, "particles").data["rlnClassNumber"].to_numpy()
    truth = read_relion_star(mix / "ground_truth" / "particles_true.star",
                             "particles").data["rlnClassNumber"].to_numpy()
    return max(float((got == truth).mean()), float((got == 3 - truth).mean())), got
