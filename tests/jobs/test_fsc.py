"""``run_fsc``'s RELION-form FSC table: shell resolutions as RELION writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryospa.io.mrc import write_mrc
from cryospa.io.star import read_star
from cryospa.jobs.fsc import run_fsc
from tests.conftest import requires_relion, run_relion
from tests.synthetic import pseudo_atomic_map

N = 32
APIX = 2.5


def _half_maps(folder: Path) -> tuple[Path, Path, Path]:
    vol = pseudo_atomic_map(N, n_atoms=300)
    rng = np.random.default_rng(3)
    paths = []
    for name in ("half1", "half2"):
        noisy = vol + rng.normal(0, 0.5 * vol.std(), vol.shape).astype(np.float32)
        write_mrc(folder / f"{name}.mrc", noisy, voxel_size_angstrom=APIX)
        paths.append(folder / f"{name}.mrc")
    write_mrc(folder / "mask.mrc", np.ones_like(vol), voxel_size_angstrom=APIX)
    return paths[0], paths[1], folder / "mask.mrc"


def test_fsc_table_shell_zero_as_relion(tmp_path: Path) -> None:
    h1, h2, _ = _half_maps(tmp_path)
    result = run_fsc(h1, h2, star_out=tmp_path / "fsc.star")
    table = read_star(tmp_path / "fsc.star")["fsc"]
    inv = table["rlnResolution"].to_numpy()
    ang = table["rlnAngstromResolution"].to_numpy()
    # RELION: shell 0 is 999 Å and 1/999 1/Å (not 0); the other shells k / (N * pixel size)
    assert ang[0] == 999.0
    assert inv[0] == pytest.approx(1 / 999, rel=1e-5)
    np.testing.assert_allclose(inv[1:], np.arange(1, N // 2 + 1) / (N * APIX), rtol=1e-5)
    np.testing.assert_allclose(inv * ang, 1.0, rtol=1e-5)
    # the in-memory curve keeps the true frequency (0 at the origin) for plotting
    assert result.inverse_resolution[0] == 0.0


@pytest.mark.relion
@requires_relion
def test_fsc_table_matches_relion_postprocess(tmp_path: Path) -> None:
    h1, _, mask = _half_maps(tmp_path)
    (tmp_path / "R").mkdir()
    run_relion(["relion_postprocess", "--i", h1.name, "--mask", mask.name, "--angpix",
                str(APIX), "--o", "R/postprocess"], tmp_path)
    relion = read_star(tmp_path / "R" / "postprocess.star")["fsc"]
    run_fsc(h1, tmp_path / "half2.mrc", star_out=tmp_path / "ours.star")
    ours = read_star(tmp_path / "ours.star")["fsc"]
    assert len(ours) == len(relion)
    np.testing.assert_array_equal(ours["rlnSpectralIndex"], relion["rlnSpectralIndex"])
    for column in ("rlnResolution", "rlnAngstromResolution"):
        np.testing.assert_allclose(ours[column], relion[column], rtol=1e-4, atol=1e-6)
