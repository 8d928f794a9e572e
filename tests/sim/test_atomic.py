"""Atomic models -> Coulomb potential maps (cryospa.sim.atomic) and their use by the simulator.

Measured with the built-in model (human LDH-A tetramer, PDB 1I10, implicit hydrogens): mean
inner potential 8.13 V (7.12 V without hydrogens; hydrogens carry 19 % of the potential);
excluded volume 177,150 Å^3 (146.4 kDa); mean potential relative to ice 3.7 V where the
excluded fraction is above 0.5, 5.1-5.5 V where it is above 0.99 (9.5-9.9 V in vacuum there);
the map at 3.54 Å/px correlates 0.969 with its D2-symmetrised self (0.951 at 1.77 Å/px) and
0.46-0.79 with its C4-, D3- or T-symmetrised self.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import gemmi
import numpy as np
import pytest
import torch

from cryospa.core.symmetry import symmetrise_volume
from cryospa.errors import InputFileError, ParameterError
from cryospa.io.mrc import write_mrc
from cryospa.sim.atomic import (
    DEFAULT_BUILTIN_MODEL,
    POTENTIAL_PER_SCATTERING_VOLT_ANGSTROM2,
    PROTEIN_VOLUME_ANGSTROM3_PER_DALTON,
    AtomicModelOptions,
    atomic_model_map,
    builtin_model_path,
    default_box_size,
    is_atomic_model,
    mean_inner_potential_volt,
    potential_map,
    read_atomic_model,
)
from cryospa.sim.particles import load_maps_for_simulation

APIX = 3.54
PEPTIDE_START = "ATLKDQLIYNLLKEEQTPQNKITVVG"  # human LDHA without the initiator Met


def _peng(element: str) -> tuple[np.ndarray, np.ndarray]:
    coefs = gemmi.Element(element).c4322.get_coefs()
    return np.array(coefs[:5]), np.array(coefs[5:])


def one_atom(element: str = "C", *, bfactor: float = 20.0, at=(0.0, 0.0, 0.0)) -> gemmi.Structure:
    """A structure of one atom, in a residue gemmi does not know (no implicit hydrogens)."""
    st = gemmi.Structure()
    model = gemmi.Model(1)
    chain = gemmi.Chain("A")
    residue = gemmi.Residue()
    residue.name = "XXX"
    residue.seqid = gemmi.SeqId(1, " ")
    atom = gemmi.Atom()
    atom.name = element
    atom.element = gemmi.Element(element)
    atom.pos = gemmi.Position(*at)
    atom.b_iso = bfactor
    atom.occ = 1.0
    residue.add_atom(atom)
    chain.add_residue(residue)
    model.add_chain(chain)
    st.add_model(model)
    return st


@pytest.fixture(scope="module")
def ldh() -> gemmi.Structure:
    return read_atomic_model(DEFAULT_BUILTIN_MODEL)


@pytest.fixture(scope="module")
def ldh_maps(ldh: gemmi.Structure) -> dict[str, torch.Tensor]:
    """The built-in model at 3.54 Å/px in a 44 px box, in ice and in vacuum."""
    common = {"pixel_size_angstrom": APIX, "box_size": 44, "centre": "origin"}
    return {
        "ice": potential_map(ldh, **common).volume.double(),
        "vacuum": potential_map(ldh, ice_potential_volt=0.0, **common).volume.double(),
    }


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.reshape(-1), b.reshape(-1)]).double())[0, 1])


# --- units ----------------------------------------------------------------------------


def test_potential_constant_is_h2_over_2pi_m0_e() -> None:
    # Kirkland (2010) quotes 47.878 V Å^2 with older constants; CODATA 2018 gives 47.8776
    assert POTENTIAL_PER_SCATTERING_VOLT_ANGSTROM2 == pytest.approx(47.878, rel=1e-4)


@pytest.mark.parametrize("apix", [0.8, 1.77, 3.54])
@pytest.mark.parametrize("element", ["C", "O", "S"])
def test_integral_of_one_atom_is_k_times_f0(apix: float, element: str) -> None:
    n = 2 * math.ceil(12.0 / apix)
    st = one_atom(element, at=(0.31, -0.47, 0.22))  # off the grid
    m = potential_map(
        st, pixel_size_angstrom=apix, box_size=n, centre="origin", ice_potential_volt=0.0
    )
    a, _ = _peng(element)
    expected = POTENTIAL_PER_SCATTERING_VOLT_ANGSTROM2 * a.sum()  # V Å^3 (carbon: 120.1)
    integral = float(m.volume.double().sum()) * apix**3
    assert integral == pytest.approx(expected, rel=0.01)
    if element == "C":
        assert a.sum() == pytest.approx(2.509, abs=1e-3)
    assert m.volume.dtype == torch.float32 and m.volume.shape == (n, n, n)


@pytest.mark.parametrize("apix", [1.0, 2.0])
def test_one_atom_matches_the_analytic_potential(apix: float) -> None:
    """A well-sampled atom (B = 150 p^2 Å^2: its spectrum is 1e-4 at Nyquist) equals
    K sum_j a_j (4 pi / (b_j + B))^1.5 exp(-4 pi^2 r^2 / (b_j + B)) at the voxels."""
    bfactor, n = 150.0 * apix**2, 2 * math.ceil(14.0 * apix)
    m = potential_map(
        one_atom("C", bfactor=bfactor),
        pixel_size_angstrom=apix,
        box_size=n,
        centre="origin",
        ice_potential_volt=0.0,
    ).volume.double()
    ax = (np.arange(n) - n // 2) * apix
    r2 = ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2
    a, b = _peng("C")
    bt = b[:, None, None, None] + bfactor
    exact = POTENTIAL_PER_SCATTERING_VOLT_ANGSTROM2 * (
        a[:, None, None, None] * (4 * np.pi / bt) ** 1.5 * np.exp(-4 * np.pi**2 * r2 / bt)
    ).sum(axis=0)
    np.testing.assert_allclose(m.numpy(), exact, atol=0.01 * exact.max())
    assert int(m.argmax()) == int(np.argmax(exact))  # the atom sits at voxel n // 2


def test_blur_keeps_the_integral_and_lowers_the_peak() -> None:
    st = one_atom("N")
    sharp, blurred = (
        potential_map(
            st,
            pixel_size_angstrom=1.0,
            box_size=24,
            centre="origin",
            ice_potential_volt=0.0,
            bfactor_angstrom2=b,
        ).volume.double()
        for b in (0.0, 100.0)
    )
    assert float(blurred.sum()) == pytest.approx(float(sharp.sum()), rel=1e-3)
    assert float(blurred.max()) < 0.6 * float(sharp.max())


def test_excluded_ice_volume_and_mean_inner_potential(
    ldh: gemmi.Structure, ldh_maps: dict[str, torch.Tensor]
) -> None:
    """Ice displaced: the integral drops by V_ice * 1.21 Å^3/Da * mass (hydrogens included)."""
    f_h = _peng("H")[0].sum()
    mip = mean_inner_potential_volt(ldh)
    # mass and scattering from the tables, independently of the module's bookkeeping
    assert 7.5 < mip < 8.5  # protein with hydrogens, independent-atom model
    assert 6.5 < mean_inner_potential_volt(ldh, hydrogens="none") < 7.5
    vac, ice = ldh_maps["vacuum"], ldh_maps["ice"]
    excluded = (vac - ice) / 4.4  # solvent-excluded fraction E
    volume = float(excluded.sum()) * APIX**3
    integral = float(vac.sum()) * APIX**3
    assert integral / volume == pytest.approx(mip, rel=0.005)  # MIP = int V / int E
    heavy = sum(c.atom.element.weight for c in ldh[0].all())
    # 146 kDa with hydrogens (heavy atoms 135.5 kDa), 1.21 Å^3 / Da
    assert volume / PROTEIN_VOLUME_ANGSTROM3_PER_DALTON / 1e3 == pytest.approx(146, rel=0.01)
    assert heavy / 1e3 == pytest.approx(135.5, rel=0.001)
    assert -0.05 < float(excluded.min()) and float(excluded.max()) < 1.05  # a soft mask
    assert float(excluded.max()) > 0.99
    # share of the potential carried by the (implicit) hydrogens: K f / (MIP V) per part
    heavy_share = (
        mean_inner_potential_volt(ldh, hydrogens="none")
        * PROTEIN_VOLUME_ANGSTROM3_PER_DALTON
        * heavy
        / (mip * volume)
    )
    assert 0.15 < 1 - heavy_share < 0.22 and f_h == pytest.approx(0.529, abs=1e-3)
    # far from the particle the potential relative to ice is 0
    assert abs(float(ice[:3].mean())) < 0.05


# --- the built-in model ---------------------------------------------------------------


def test_builtin_model_loads(ldh: gemmi.Structure) -> None:
    path = builtin_model_path(DEFAULT_BUILTIN_MODEL)
    assert path.is_file() and path.name.endswith(".cif.gz") and path.stat().st_size < 300_000
    assert builtin_model_path("ldh") == path
    assert [ch.name for ch in ldh[0]] == ["A", "B", "C", "D"]
    assert [len(ch) for ch in ldh[0]] == [331] * 4
    assert ldh[0].count_atom_sites() == 10272
    assert ldh.info["cryospa_hydrogens"] == "implicit"
    seq = gemmi.one_letter_code([r.name for r in ldh[0]["A"]])
    assert seq.upper().startswith(PEPTIDE_START)
    with pytest.raises(ParameterError, match="builtin:ldh"):
        builtin_model_path("builtin:betagal")


def _superpose(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Rotation R and translation t with q ~ p R^T + t (Kabsch), and the r.m.s.d."""
    pc, qc = p.mean(0), q.mean(0)
    u, _, vt = np.linalg.svd((p - pc).T @ (q - qc))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    t = qc - r @ pc
    return r, t, float(np.sqrt((((p @ r.T + t) - q) ** 2).sum(1).mean()))


def test_builtin_model_is_d2_about_the_axes(ldh: gemmi.Structure) -> None:
    """Chain A maps onto B, C, D by 2-folds about x, z, y through the origin."""
    ca = {
        ch.name: np.array([r["CA"][0].pos.tolist() for r in ch]) for ch in ldh[0]
    }  # (331, 3) each
    for other, axis in (("B", 0), ("C", 2), ("D", 1)):
        r, t, rmsd = _superpose(ca["A"], ca[other])
        expected = -np.eye(3)
        expected[axis, axis] = 1.0
        np.testing.assert_allclose(r, expected, atol=0.02)  # within about 1 degree
        assert np.abs(t).max() < 0.5 and rmsd < 2.0


def test_builtin_map_has_d2_symmetry(ldh_maps: dict[str, torch.Tensor]) -> None:
    v = ldh_maps["ice"]
    assert corr(v, symmetrise_volume(v, "D2")) > 0.95
    for wrong in ("C4", "D3"):
        assert corr(v, symmetrise_volume(v, wrong)) < 0.85


def test_ensemble_keeps_the_first_model(tmp_path: Path, ldh: gemmi.Structure) -> None:
    two = gemmi.Structure()
    for number, chain in ((1, "A"), (2, "B")):
        model = gemmi.Model(number)
        model.add_chain(ldh[0][chain])
        two.add_model(model)
    two.setup_entities()
    path = tmp_path / "ensemble.pdb"
    path.write_text(two.make_pdb_string())
    st = read_atomic_model(path)
    assert len(st) == 1 and st[0].count_atom_sites() == ldh[0]["A"].count_atom_sites()


def test_model_bfactors_off_sharpens_but_keeps_the_integral(ldh: gemmi.Structure) -> None:
    common = {"pixel_size_angstrom": APIX, "box_size": 44, "centre": "origin"}
    with_b = potential_map(ldh, **common).volume.double()
    without = potential_map(ldh, model_bfactors=False, **common).volume.double()
    assert float(without.max()) > float(with_b.max())
    assert float(without.sum()) == pytest.approx(float(with_b.sum()), rel=1e-3)


def test_default_box_and_pixel(ldh: gemmi.Structure) -> None:
    n = default_box_size(ldh, APIX, centre="origin")
    assert n % 2 == 0 and 1.5 * 2 * 50.8 / APIX <= n <= 1.5 * 2 * 50.9 / APIX + 2


def test_model_outside_the_box_is_an_error(ldh: gemmi.Structure) -> None:
    with pytest.raises(ParameterError, match="--box"):
        potential_map(ldh, pixel_size_angstrom=APIX, box_size=24, centre="origin")
    with pytest.raises(ParameterError, match="centre the model"):
        potential_map(ldh, pixel_size_angstrom=APIX, box_size=44, centre="keep")


def test_assembly_from_operators(tmp_path: Path, ldh: gemmi.Structure) -> None:
    """One chain plus the D2 operators: make_assembly gives back the tetramer."""
    st = gemmi.Structure()
    st.add_model(gemmi.Model(1))
    st[0].add_chain(ldh[0]["A"])
    assembly = gemmi.Assembly("1")
    gen = gemmi.Assembly.Gen()
    gen.chains = ["A"]
    for diag in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
        op = gemmi.Assembly.Operator()
        op.transform = gemmi.Transform(
            gemmi.Mat33([[diag[0], 0, 0], [0, diag[1], 0], [0, 0, diag[2]]]), gemmi.Vec3(0, 0, 0)
        )
        gen.operators.append(op)
    assembly.generators.append(gen)
    st.assemblies.append(assembly)
    st.setup_entities()
    path = tmp_path / "chainA.cif"
    st.make_mmcif_document().write_file(str(path))
    one = read_atomic_model(path)
    four = read_atomic_model(path, assembly="1")
    assert len(one[0]) == 1 and len(four[0]) == 4
    assert four[0].count_atom_sites() == 4 * one[0].count_atom_sites()
    with pytest.raises(ParameterError, match="no assembly '7'"):
        read_atomic_model(path, assembly="7")


# --- the simulator's map loading ---------------------------------------------------------


def test_load_maps_takes_atomic_models_in_volts(ldh_maps: dict[str, torch.Tensor]) -> None:
    maps = load_maps_for_simulation(
        [DEFAULT_BUILTIN_MODEL],
        fractions=None,
        map_pixel_size_angstrom=None,
        pixel_size_angstrom=APIX,
        box_size=44,
        symmetry="C1",
        contrast_potential_volt=2.0,  # does not apply to atomic models
        particle_diameter_angstrom=None,
    )
    assert maps.volts_per_unit == 1.0 and maps.box_size == 44
    np.testing.assert_allclose(maps.volumes[0].double().numpy(), ldh_maps["ice"].numpy(), atol=1e-5)
    assert "atomic model builtin:ldh" in maps.descriptions[0]
    assert maps.sources == [DEFAULT_BUILTIN_MODEL]
    assert 40 < 2 * maps.particle_radius_px * APIX < 110  # LDH is about 100 Å across


def test_load_maps_mixes_mrc_maps_and_models(
    tmp_path: Path, ldh_maps: dict[str, torch.Tensor]
) -> None:
    """The MRC map is scaled (contrast potential), the model is not; default box from the model."""
    mrc = tmp_path / "ldh_arbitrary_units.mrc"
    write_mrc(mrc, (ldh_maps["vacuum"] * 1e-3).float().numpy(), voxel_size_angstrom=APIX)
    maps = load_maps_for_simulation(
        [DEFAULT_BUILTIN_MODEL, mrc],
        fractions=[0.5, 0.5],
        map_pixel_size_angstrom=None,
        pixel_size_angstrom=APIX,
        box_size=None,
        symmetry="D2",
        contrast_potential_volt=2.0,
        particle_diameter_angstrom=None,
        atomic_options=AtomicModelOptions(bfactor_angstrom2=10.0),
    )
    ldh = read_atomic_model("builtin:ldh")
    assert maps.box_size == default_box_size(ldh, APIX, centre="origin")
    assert maps.volts_per_unit > 100  # 1e-3 units scaled back to volts
    assert "scaled by" in maps.descriptions[1] and "atomic model" in maps.descriptions[0]
    # the model keeps absolute volts: its integral is K sum f - V_ice V_p, not rescaled
    assert float(maps.volumes[0].double().sum()) == pytest.approx(
        float(ldh_maps["ice"].sum()), rel=0.01
    )


def test_symmetry_imposed_on_a_model_in_the_wrong_frame_is_an_error() -> None:
    with pytest.raises(ParameterError, match="C4 symmetry"):
        load_maps_for_simulation(
            [DEFAULT_BUILTIN_MODEL],
            fractions=None,
            map_pixel_size_angstrom=None,
            pixel_size_angstrom=APIX,
            box_size=44,
            symmetry="C4",
            contrast_potential_volt=2.0,
            particle_diameter_angstrom=None,
        )


def test_is_atomic_model() -> None:
    for name in ("a.pdb", "A.PDB.gz", "pdb1abc.ent", "x.cif", "x.mmcif.gz", "builtin:ldh"):
        assert is_atomic_model(name)
    for name in ("map.mrc", "map.map", "x.mrcs", "model.gz", "cif.mrc"):
        assert not is_atomic_model(name)


# --- bad input --------------------------------------------------------------------------


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = gzip.decompress(builtin_model_path().read_bytes())
    pdb_text = read_atomic_model(DEFAULT_BUILTIN_MODEL).make_pdb_string()
    files = {
        "truncated.cif": good[: len(good) // 2],
        "truncated.cif.gz": builtin_model_path().read_bytes()[:40_000],
        "truncated.pdb": (pdb_text[: len(pdb_text) // 2] + "ATOM  12345  CA  ALA A 9").encode(),
        "garbage.pdb": bytes(range(256)) * 8,
        "garbage.cif": b"hello\nthis is not a model\n",
        "empty.pdb": b"",
        "no_atoms.pdb": b"HEADER    TEST\nREMARK   1 NOTHING HERE\nEND\n",
        "no_atoms.cif": b"data_x\n_entry.id x\n",
    }
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / name
        out[name].write_bytes(data)
    return out


@pytest.mark.parametrize(
    "name",
    [
        "truncated.cif",
        "truncated.cif.gz",
        "truncated.pdb",
        "garbage.pdb",
        "garbage.cif",
        "empty.pdb",
        "no_atoms.pdb",
        "no_atoms.cif",
        "missing.pdb",
    ],
)
def test_bad_model_files_raise_input_file_error(tmp_path: Path, name: str) -> None:
    path = _bad_files(tmp_path).get(name, tmp_path / name)
    with pytest.raises(InputFileError) as info:
        read_atomic_model(path)
    assert info.value.path == str(path) and str(path) in str(info.value)
    assert info.value.fix
    with pytest.raises(InputFileError):  # the simulator's loader passes it on
        load_maps_for_simulation(
            [path],
            fractions=None,
            map_pixel_size_angstrom=None,
            pixel_size_angstrom=APIX,
            box_size=44,
            symmetry="C1",
            contrast_potential_volt=2.0,
            particle_diameter_angstrom=None,
        )


def test_model_left_empty_after_cleaning(tmp_path: Path) -> None:
    path = tmp_path / "waters.pdb"
    path.write_text(
        "HETATM    1  O   HOH A   1       1.000   2.000   3.000  1.00 20.00           O\nEND\n"
    )
    with pytest.raises(InputFileError, match="no atoms left"):
        read_atomic_model(path)
    assert read_atomic_model(path, remove_waters=False)[0].count_atom_sites() == 1


def test_bad_options() -> None:
    with pytest.raises(ParameterError):
        read_atomic_model(DEFAULT_BUILTIN_MODEL, hydrogens="some")  # type: ignore[arg-type]
    with pytest.raises(ParameterError):
        atomic_model_map(DEFAULT_BUILTIN_MODEL, pixel_size_angstrom=0.0)
    with pytest.raises(ParameterError):
        atomic_model_map(DEFAULT_BUILTIN_MODEL, pixel_size_angstrom=APIX, box_size=45)
