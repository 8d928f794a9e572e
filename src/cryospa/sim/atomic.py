r"""Coulomb potential maps from atomic models (PDB / mmCIF, read with gemmi).

Physics (independent-atom model, neutral atoms)::

    V_atoms(r) = K sum_i occ_i F^-1[ f_i(s) exp(-(B_i + B) s^2 / 4) ](r - r_i)         [V]
    f_i(s)     = sum_{j=1..5} a_ij exp(-b_ij s^2 / 4)          s = 1 / d = 2 sin(theta) / lambda
    K          = h^2 / (2 pi m0 e) = 47.877 V Å^2
    dV(r)      = V_atoms(r) - V_ice E(r)                        potential relative to ice  [V]
    E(r)       = (1[D >= D_p] * G_edge)(r)                      solvent-excluded fraction
    D(r)       = sum_i v_i G(r - r_i; B_i + B_ex)

* ``f_i`` is the elastic electron scattering factor of a neutral atom (Å): the 5-Gaussian fit of
  Peng et al. 1996, Acta Cryst. A52:257 (International Tables C, table 4.3.2.2; gemmi's
  ``c4322`` table, used through ``gemmi.DensityCalculatorE``). In the first Born approximation
  ``f(s) = (2 pi m0 e / h^2) integral V(r) exp(2 pi i s.r) d^3r`` (Kirkland 2010, "Advanced
  computing in electron microscopy", ch. 5; the tables use the rest mass m0), so the
  potential is ``K`` times the inverse Fourier transform of ``f``. Units: ``f`` in Å, its
  inverse transform ``rho(r) = sum_j a_j (4 pi / b_j)^(3/2) exp(-4 pi^2 r^2 / b_j)`` in
  Å / Å^3 = Å^-2 (what gemmi puts on its grid), and ``K = h^2 / (2 pi m0 e)`` =
  (6.62607015e-34 J s)^2 / (2 pi 9.1093837e-31 kg 1.602176634e-19 C) = 4.78766e-19 V m^2
  = 47.877 V Å^2 (Kirkland quotes 47.878 with older constants), so ``K rho`` is in volts.
  Integral over all space of one atom's potential: ``K f(0)`` V Å^3 (carbon: ``f(0)`` =
  2.509 Å, 120.1 V Å^3).
* ``B_i`` is the atom's B-factor from the model (Å^2; anisotropic ADPs are used when present)
  and ``B`` an extra blur for all atoms (``bfactor_angstrom2``). Radiation damage and image
  blur belong in the simulator's B-factor envelope, not here.
* Hydrogens: X-ray models rarely have them, but they carry about 19 % of a protein's potential
  (``f(0)`` = 0.53 Å each, about one per heavy atom). With ``hydrogens="implicit"`` (the
  default when the model has none) each residue gets the hydrogens gemmi tabulates for it
  (less the two lost to each peptide / phosphodiester bond for amino and nucleic acids),
  shared equally by its C, N and S atoms and placed on them with an extra B of
  ``8 pi^2 (1 Å)^2 / 3`` = 26.3 Å^2 (a bond length of 1 Å in a random direction).
* Solvent: the particle displaces vitreous ice. The simulator's maps are potentials relative to
  the ice around the particle (:mod:`cryospa.sim.physics`, :mod:`cryospa.sim.micrographs`), so
  the ice's mean inner potential ``V_ice`` (4.4 V, Rullgård et al. 2011) is subtracted over the
  volume the molecule occupies, ``E``. Each atom has a volume ``v_i = 1.21 Å^3/Da x (mass of
  the atom and its hydrogens)`` (protein partial specific volume 0.73 cm^3/g); the molecule's
  volume ``V_p = sum_i v_i`` is given to the ``V_p / s^3`` voxels of the fine grid (voxel size
  ``s``) where ``D``, a sum of Gaussians of volume ``v_i`` and width ``B_ex`` (Å^2; default
  ``8 pi^2 1.5^2``, a standard deviation of 1.5 Å) about the atoms, is largest: a solid mask,
  1 inside the protein (no ice there) with its edge on the molecular surface. The mask is then
  smoothed by a Gaussian ``G_edge`` of standard deviation ``max(1 Å, p / 2)`` plus the blur
  ``B``, so the edge is soft and well sampled. The integral of ``E`` is ``V_p`` whatever the
  edge's shape, so the mass excess is right. ``ice_potential_volt=0`` gives the potential in
  vacuum. The mean inner potential of a protein with its hydrogens is about 8.1 V in this
  model (7.1 V without; the ratio of the integrals of ``V_atoms`` and ``E``, see
  :func:`mean_inner_potential_volt`), so protein is about 3.7 V above ice on average. A map
  from here is therefore in absolute volts relative to ice and is used as it is: no
  ``contrast_potential_volt`` scaling applies to it.

Sampling (``V_atoms``): the map is the band-limited potential sampled on the requested grid
(Fourier components up to the grid's Nyquist frequency, as a map Fourier-rescaled from a fine
one). gemmi puts the atoms on a grid twice as fine, with an extra blur ``B_s = 18.4 p^2`` (Å^2,
``p`` the output voxel size) that keeps the fine grid's aliasing below 1e-4 of ``f(0)`` below
the output Nyquist frequency; the fine map is Fourier-cropped to the output grid and the blur
``B_s`` is then removed exactly (multiplying by ``exp(B_s s^2 / 4)``, at most ``exp(1.15)`` at
Nyquist; the mask ``E`` is Fourier-cropped and smoothed, not sharpened). Geometry: voxel
``(i, j, k)`` (``x`` fastest, arrays ``(z, y, x)``) is at ``(i p, j p, k p)`` Å in the box's
frame, the centre voxel ``n // 2`` as everywhere in cryospa. The box is periodic: the model
must fit inside it with a margin.

Models: a built-in one is shipped (:data:`DEFAULT_BUILTIN_MODEL`, see
``cryospa/sim/data/README.md``), named ``builtin:NAME`` wherever a map path is accepted.
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import gemmi
import numpy as np
import torch

from cryospa.core.fourier import fourier_rescale, frequency_grid_3d
from cryospa.errors import InputFileError, ParameterError

__all__ = [
    "ATOMIC_MODEL_SUFFIXES",
    "BUILTIN_MODELS",
    "BUILTIN_PREFIX",
    "DEFAULT_ATOMIC_PIXEL_SIZE_ANGSTROM",
    "DEFAULT_BUILTIN_MODEL",
    "ICE_MEAN_INNER_POTENTIAL_VOLT",
    "POTENTIAL_PER_SCATTERING_VOLT_ANGSTROM2",
    "AtomicMap",
    "AtomicModelOptions",
    "Centre",
    "Hydrogens",
    "atomic_model_map",
    "builtin_model_path",
    "default_box_size",
    "is_atomic_model",
    "mean_inner_potential_volt",
    "potential_map",
    "read_atomic_model",
    "resolve_model_path",
]

PathLike = str | os.PathLike[str]
Centre = Literal["mass", "origin", "keep"]
Hydrogens = Literal["auto", "implicit", "explicit", "none"]

_PLANCK_J_S = 6.62607015e-34
_ELECTRON_MASS_KG = 9.1093837015e-31
_ELEMENTARY_CHARGE_C = 1.602176634e-19
#: ``K = h^2 / (2 pi m0 e)`` in V Å^2 (47.877): potential = K x inverse FT of the electron
#: scattering factor (Å).
POTENTIAL_PER_SCATTERING_VOLT_ANGSTROM2 = (
    _PLANCK_J_S**2 / (2 * math.pi * _ELECTRON_MASS_KG * _ELEMENTARY_CHARGE_C) * 1e20
)
#: Mean inner potential of vitreous ice (V); Rullgård et al. 2011, J. Microsc. 243:234.
ICE_MEAN_INNER_POTENTIAL_VOLT = 4.4
#: Volume per dalton of protein (Å^3 / Da), partial specific volume 0.73 cm^3 / g.
PROTEIN_VOLUME_ANGSTROM3_PER_DALTON = 1.21
#: Default width (Å^2, as a B-factor) of each atom's solvent-excluded Gaussian (sd 1.5 Å).
EXCLUSION_BFACTOR_ANGSTROM2 = 8 * math.pi**2 * 1.5**2
#: Extra B (Å^2) of implicit hydrogens on their heavy atom: 1 Å bond, random direction.
IMPLICIT_HYDROGEN_BFACTOR_ANGSTROM2 = 8 * math.pi**2 / 3
#: Pixel size (Å) used for atomic models when none is given (the tutorial's movies binned 2x).
DEFAULT_ATOMIC_PIXEL_SIZE_ANGSTROM = 1.77
#: Prefix naming a model shipped with cryospa, e.g. ``builtin:ldh``.
BUILTIN_PREFIX = "builtin:"
#: Shipped models: name -> file in ``cryospa/sim/data``.
BUILTIN_MODELS = {"ldh": "ldh_1i10_d2.cif.gz"}
#: The default shipped model: human lactate dehydrogenase A, D2 tetramer (PDB 1I10).
DEFAULT_BUILTIN_MODEL = "builtin:ldh"
#: File name endings read as atomic models (optionally followed by ``.gz``).
ATOMIC_MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")

_OVERSAMPLING = 2  # fine grid / output grid
_ALIAS_TOLERANCE = 1e-4
_HYDROGEN_MASS_DA = 1.008


# --------------------------------------------------------------------------------------
# Names and paths
# --------------------------------------------------------------------------------------


def is_atomic_model(path: PathLike) -> bool:
    """True for ``builtin:NAME`` and for ``.pdb / .ent / .cif / .mmcif`` (optionally ``.gz``)."""
    name = str(path)
    if name.startswith(BUILTIN_PREFIX):
        return True
    lower = name.lower()
    if lower.endswith(".gz"):
        lower = lower[:-3]
    return lower.endswith(ATOMIC_MODEL_SUFFIXES)


def builtin_model_path(name: str = DEFAULT_BUILTIN_MODEL) -> Path:
    """File of a model shipped with cryospa.

    Parameters
    ----------
    name
        ``NAME`` or ``builtin:NAME``; one of :data:`BUILTIN_MODELS`.

    Returns
    -------
    Path
        The installed file (gzipped mmCIF).

    Raises
    ------
    ParameterError
        Unknown name.
    """
    key = name[len(BUILTIN_PREFIX) :] if name.startswith(BUILTIN_PREFIX) else name
    if key not in BUILTIN_MODELS:
        known = ", ".join(BUILTIN_PREFIX + k for k in BUILTIN_MODELS)
        raise ParameterError(f"no built-in model {name!r}: the built-in models are {known}")
    path = Path(str(resources.files("cryospa.sim") / "data" / BUILTIN_MODELS[key]))
    if not path.is_file():  # a broken installation, not a user error
        raise FileNotFoundError(f"built-in model file {path} is missing: reinstall cryospa")
    return path


def resolve_model_path(spec: PathLike) -> Path:
    """The file behind a model name: ``builtin:NAME`` or a path (returned as it is)."""
    name = str(spec)
    if name.startswith(BUILTIN_PREFIX):
        return builtin_model_path(name)
    return Path(name)


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _check_pdb_text(path: Path) -> None:
    """Catch what gemmi lets pass in PDB format: ATOM lines without three coordinates.

    gemmi skips a line cut short and reads a line run into the next one, so a truncated file
    would otherwise load silently with fewer atoms. (A file cut exactly at a line end cannot be
    told from a shorter model.)
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="latin-1") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.startswith(("ATOM  ", "HETATM")):
                    continue
                try:
                    [float(line[c : c + 8]) for c in (30, 38, 46)]
                    complete = len(line.rstrip("\r\n")) >= 54
                except ValueError:
                    complete = False
                if not complete:
                    raise InputFileError(
                        path,
                        f"line {number} is an ATOM / HETATM record without its x, y, z "
                        "(columns 31-54): the file is truncated or malformed",
                        "download or write the model again",
                    )
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise InputFileError(path, f"cannot be read ({err})", "check the file") from err


def read_atomic_model(
    path: PathLike,
    *,
    assembly: str | None = None,
    remove_waters: bool = True,
    remove_ligands: bool = False,
    hydrogens: Hydrogens = "auto",
) -> gemmi.Structure:
    """Read a PDB / mmCIF model (optionally gzipped) with gemmi and clean it.

    Parameters
    ----------
    path
        Model file, or ``builtin:NAME``.
    assembly
        Name of a biological assembly in the file (``"1"``, ...) to build from the deposited
        chains with its operators; None keeps the deposited coordinates as they are.
    remove_waters
        Drop water molecules (the simulator's ice stands in for the solvent).
    remove_ligands
        Drop everything that is not polymer (ligands, ions) as well.
    hydrogens
        ``"auto"``: keep the file's hydrogens, or add implicit ones if it has none;
        ``"implicit"``: replace them by implicit ones; ``"explicit"``: keep the file's (maybe
        none); ``"none"``: remove all. Implicit hydrogens are added by :func:`potential_map`;
        here the choice only decides whether explicit ones are removed.

    Returns
    -------
    gemmi.Structure
        One model (the first of an ensemble), with ``structure.info["cryospa_hydrogens"]``
        set to ``"implicit"``, ``"explicit"`` or ``"none"``.

    Raises
    ------
    InputFileError
        The file is missing, does not parse, is truncated or has no atoms (or none are left).
    ParameterError
        Unknown assembly or option.
    """
    if hydrogens not in ("auto", "implicit", "explicit", "none"):
        raise ParameterError(
            f"hydrogens must be auto, implicit, explicit or none, got {hydrogens!r}"
        )
    file = resolve_model_path(path)
    if not file.is_file():
        raise InputFileError(file, "no such file", "check the path of the atomic model")
    lower = file.name.lower().removesuffix(".gz")
    if lower.endswith((".pdb", ".ent")):
        _check_pdb_text(file)
    try:
        st = gemmi.read_structure(str(file))
    except (RuntimeError, ValueError, OSError) as err:
        raise InputFileError(
            file,
            f"not a readable PDB / mmCIF model: {err}".replace("\n", " "),
            "check that the file is a complete PDB or mmCIF file (download it again)",
        ) from err
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputFileError(
            file, "no atoms found", "give a PDB or mmCIF file with ATOM / HETATM records"
        )
    while len(st) > 1:  # an ensemble: keep the first model
        del st[len(st) - 1]
    st.setup_entities()
    if assembly is not None:
        names = [a.name for a in st.assemblies]
        if assembly not in names:
            raise ParameterError(
                f"{file}: no assembly {assembly!r}; the file has "
                f"{', '.join(names) if names else 'no assembly records'}"
            )
        model = gemmi.make_assembly(
            st.assemblies[names.index(assembly)], st[0], gemmi.HowToNameCopiedChain.AddNumber
        )
        st.add_model(model)
        del st[0]
        st.setup_entities()
    if remove_ligands:
        st.remove_ligands_and_waters()
    elif remove_waters:
        st.remove_waters()
    has_h = any(cra.atom.is_hydrogen() for cra in st[0].all())
    if hydrogens in ("implicit", "none") or (hydrogens == "auto" and not has_h):
        st.remove_hydrogens()
    if hydrogens == "none" or (hydrogens == "explicit" and not has_h):
        mode = "explicit" if hydrogens == "explicit" else "none"
    elif hydrogens == "implicit" or (hydrogens == "auto" and not has_h):
        mode = "implicit"
    else:
        mode = "explicit"
    st.remove_empty_chains()
    if len(st[0]) == 0 or st[0].count_atom_sites() == 0:
        raise InputFileError(
            file,
            "no atoms left after removing waters / ligands / hydrogens",
            "keep ligands or waters, or check the file",
        )
    st.info["cryospa_hydrogens"] = mode
    return st


# --------------------------------------------------------------------------------------
# Atom tables
# --------------------------------------------------------------------------------------


@dataclass
class _Atoms:
    """Flat per-atom arrays of a model (positions in Å, after centring)."""

    xyz: np.ndarray  # (n, 3)
    weight: np.ndarray  # (n,) atom mass x occupancy (Da)
    n_hydrogens: np.ndarray  # (n,) implicit hydrogens x occupancy
    bfactor: np.ndarray  # (n,) Å^2
    scattering0: np.ndarray  # (n,) f(0) x occupancy (Å)


def _implicit_hydrogen_count(residue: gemmi.Residue) -> float:
    """Hydrogens of a residue in a chain, from gemmi's table (0 when unknown)."""
    info = gemmi.find_tabulated_residue(residue.name)
    if info is None or not info.found():
        return 0.0
    count = float(info.hydrogen_count)
    if info.is_amino_acid() or info.is_nucleic_acid():
        count -= 2.0  # H2O lost to the bond with the neighbour
    return max(count, 0.0)


def _atom_table(model: gemmi.Model, *, implicit_hydrogens: bool) -> _Atoms:
    """Per-atom positions, masses, implicit-hydrogen counts, B and f(0)."""
    xyz, weight, n_h, bfac, f0 = [], [], [], [], []
    for chain in model:
        for residue in chain:
            atoms = list(residue)
            share = np.zeros(len(atoms))
            if implicit_hydrogens:
                carriers = [
                    i for i, a in enumerate(atoms) if a.element.name in ("C", "N", "S")
                ] or [i for i, a in enumerate(atoms) if not a.is_hydrogen()]
                occ = sum(atoms[i].occ for i in carriers)
                if carriers and occ > 0:
                    per = _implicit_hydrogen_count(residue) / occ
                    for i in carriers:
                        share[i] = per * atoms[i].occ
            for i, a in enumerate(atoms):
                xyz.append(a.pos.tolist())
                weight.append(a.element.weight * a.occ)
                n_h.append(share[i])
                bfac.append(a.b_iso)
                f0.append(sum(a.element.c4322.get_coefs()[:5]) * a.occ)
    return _Atoms(
        xyz=np.asarray(xyz, dtype=np.float64).reshape(-1, 3),
        weight=np.asarray(weight, dtype=np.float64),
        n_hydrogens=np.asarray(n_h, dtype=np.float64),
        bfactor=np.asarray(bfac, dtype=np.float64),
        scattering0=np.asarray(f0, dtype=np.float64),
    )


def _hydrogen_mode(structure: gemmi.Structure) -> str:
    """``"implicit"``, ``"explicit"`` or ``"none"``: as :func:`read_atomic_model` decided."""
    key = "cryospa_hydrogens"
    if key in structure.info:
        return str(structure.info[key])
    return "explicit" if any(c.atom.is_hydrogen() for c in structure[0].all()) else "none"


def mean_inner_potential_volt(
    structure: gemmi.Structure, *, hydrogens: Hydrogens | None = None
) -> float:
    """Mean inner potential of a molecule in this model (V): ``K sum f_i(0) / sum v_i``.

    The integral of the potential over the integral of the excluded-volume fraction ``E`` (see
    the module docstring), i.e. the mean potential of the molecule's volume in vacuum.

    Parameters
    ----------
    structure
        From :func:`read_atomic_model`.
    hydrogens
        ``"implicit"`` adds implicit hydrogens; default: the structure's own choice.

    Returns
    -------
    float
        Volts; about 8 V for a protein with hydrogens, 6.6 V without.
    """
    mode = hydrogens or _hydrogen_mode(structure)
    return _mean_inner_potential(_atom_table(structure[0], implicit_hydrogens=mode == "implicit"))


def _mean_inner_potential(table: _Atoms) -> float:
    """``K sum f_i(0) / sum v_i`` (V) of an atom table."""
    f_h = sum(gemmi.Element("H").c4322.get_coefs()[:5])
    total_f = table.scattering0.sum() + f_h * table.n_hydrogens.sum()
    volume = PROTEIN_VOLUME_ANGSTROM3_PER_DALTON * (
        table.weight.sum() + _HYDROGEN_MASS_DA * table.n_hydrogens.sum()
    )
    return float(POTENTIAL_PER_SCATTERING_VOLT_ANGSTROM2 * total_f / volume)


# --------------------------------------------------------------------------------------
# Maps
# --------------------------------------------------------------------------------------


def default_box_size(
    structure: gemmi.Structure,
    pixel_size_angstrom: float,
    *,
    centre: Centre = "mass",
    factor: float = 1.5,
) -> int:
    """An even box (pixels) of ``factor`` times the model's diameter about its centre.

    The diameter is twice the largest distance of an atom from the centre the map is built
    about (``centre``: centre of mass, the coordinate origin, or for ``"keep"`` the centre of
    mass as well).
    """
    if pixel_size_angstrom <= 0:
        raise ParameterError(f"pixel size must be > 0 Å, got {pixel_size_angstrom}")
    model = structure[0]
    xyz = np.array([cra.atom.pos.tolist() for cra in model.all()])
    if centre == "origin":
        c = np.zeros(3)
    else:
        c = np.array(model.calculate_center_of_mass().tolist())
    diameter = 2.0 * float(np.sqrt(((xyz - c) ** 2).sum(axis=1)).max())
    n = math.ceil(factor * diameter / pixel_size_angstrom)
    return max(8, n + n % 2)


@dataclass
class AtomicMap:
    """A potential map computed from an atomic model.

    Attributes
    ----------
    volume
        ``(n, n, n)`` float32 potential relative to ice (V), ``(z, y, x)``.
    pixel_size_angstrom
        Voxel size (Å).
    source
        Where the model came from.
    mean_inner_potential_volt
        Mean inner potential of the molecule in vacuum (:func:`mean_inner_potential_volt`).
    ice_potential_volt
        Potential of the ice the molecule displaces (V; 0: vacuum).
    hydrogens
        ``"implicit"``, ``"explicit"`` or ``"none"``.
    n_atoms
        Atoms in the model (hydrogens included only when explicit).
    """

    volume: torch.Tensor
    pixel_size_angstrom: float
    source: str
    mean_inner_potential_volt: float
    ice_potential_volt: float
    hydrogens: str
    n_atoms: int

    def describe(self) -> str:
        """One line for the record."""
        return (
            f"atomic model {self.source}: {self.n_atoms} atoms, Peng 1996 electron scattering "
            f"factors, hydrogens {self.hydrogens}, mean inner potential "
            f"{self.mean_inner_potential_volt:.2f} V, ice {self.ice_potential_volt:g} V "
            "excluded; absolute volts (no scaling)"
        )


def _single_atom_model(
    atoms: _Atoms, element: str, occupancy: np.ndarray, bfactor: np.ndarray
) -> gemmi.Model:
    """A gemmi model with one atom of ``element`` per row of ``atoms`` (given occ and B)."""
    model = gemmi.Model(1)
    chain = gemmi.Chain("A")
    residue = gemmi.Residue()
    residue.name = "UNK"
    residue.seqid = gemmi.SeqId(1, " ")
    el = gemmi.Element(element)
    for (x, y, z), occ, b in zip(atoms.xyz, occupancy, bfactor, strict=True):
        if occ <= 0:
            continue
        a = gemmi.Atom()
        a.name = element
        a.element = el
        a.pos = gemmi.Position(float(x), float(y), float(z))
        a.occ = float(occ)
        a.b_iso = float(b)
        residue.add_atom(a)
    chain.add_residue(residue)
    model.add_chain(chain)
    return model


def _density_on_grid(
    calculator: type[gemmi.DensityCalculatorE] | type[gemmi.DensityCalculatorN],
    model: gemmi.Model,
    cell: gemmi.UnitCell,
    n_fine: int,
    blur: float,
) -> np.ndarray:
    """Put a model's density on an ``n_fine^3`` P1 grid with a gemmi density calculator."""
    dc = calculator()
    dc.blur = float(blur)
    dc.grid.unit_cell = cell
    dc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    dc.grid.set_size(n_fine, n_fine, n_fine)
    dc.put_model_density_on_grid(model)
    return np.array(dc.grid, copy=True)  # (x, y, z)


def _crop_fine(fine: np.ndarray, n: int) -> torch.Tensor:
    """``(x, y, z)`` fine-grid array -> ``(n, n, n)`` ``(z, y, x)`` Fourier-cropped samples."""
    small = fourier_rescale(torch.from_numpy(fine), (n, n, n))  # band-limited samples at p
    return small.permute(2, 1, 0).contiguous()  # (x, y, z) -> (z, y, x)


def _excluded_volume_mask(
    table: _Atoms,
    cell: gemmi.UnitCell,
    n_fine: int,
    exclusion_bfactor_angstrom2: float,
) -> np.ndarray:
    """Binary ``(x, y, z)`` mask of the molecule's volume on the fine grid (see module doc).

    ``D = sum_i v_i G(r - r_i)`` is put on the grid with gemmi's neutron calculator: carbon's
    scattering length ``b_C`` is a constant, so atoms of carbon with occupancy ``v_i / b_C``
    and B-factor ``B_i + B_ex`` give exactly these Gaussians. The mask is the ``V_p / s^3``
    voxels where ``D`` is largest (``V_p = sum_i v_i``, ``s`` the fine voxel size).
    """
    volumes = PROTEIN_VOLUME_ANGSTROM3_PER_DALTON * (
        table.weight + _HYDROGEN_MASS_DA * table.n_hydrogens
    )
    b_carbon = gemmi.Element("C").neutron92.get_coefs()[0]
    ex_model = _single_atom_model(
        table, "C", volumes / b_carbon, table.bfactor + exclusion_bfactor_angstrom2
    )
    density = _density_on_grid(gemmi.DensityCalculatorN, ex_model, cell, n_fine, 0.0)
    voxel = (cell.a / n_fine) ** 3
    count = min(density.size, max(0, round(float(volumes.sum()) / voxel)))
    mask = np.zeros(density.shape, dtype=np.float32)
    positive = density[density > 0]  # the mask lies where the Gaussians are (fast partition)
    if count >= positive.size:
        mask[density > 0] = 1.0
    elif count > 0:
        level = np.partition(positive, positive.size - count)[positive.size - count]
        mask[density >= level] = 1.0
    return mask


def potential_map(
    structure: gemmi.Structure,
    *,
    pixel_size_angstrom: float,
    box_size: int,
    centre: Centre = "mass",
    bfactor_angstrom2: float = 0.0,
    model_bfactors: bool = True,
    ice_potential_volt: float = ICE_MEAN_INNER_POTENTIAL_VOLT,
    exclusion_bfactor_angstrom2: float = EXCLUSION_BFACTOR_ANGSTROM2,
    source: str = "model",
) -> AtomicMap:
    """Coulomb potential (V, relative to ice) of an atomic model on a cubic grid.

    Parameters
    ----------
    structure
        ``gemmi.Structure`` from :func:`read_atomic_model` (its first model is used).
    pixel_size_angstrom
        Voxel size ``p`` (Å).
    box_size
        Box edge ``n`` (pixels, even).
    centre
        ``"mass"``: centre of mass at the box centre (voxel ``n // 2``); ``"origin"``: the
        model's coordinate origin there (models already in a symmetry frame, such as the
        built-in ones); ``"keep"``: coordinates as they are, the box spanning ``[0, n p)`` Å
        along each axis (a model fitted into a map whose origin is 0).
    bfactor_angstrom2
        Extra blur of every atom (Å^2, >= 0).
    model_bfactors
        Use the model's B-factors (True) or none (False; only ``bfactor_angstrom2``).
    ice_potential_volt
        Mean inner potential of the displaced ice (V); 0 for the potential in vacuum.
    exclusion_bfactor_angstrom2
        Width (as a B-factor, Å^2) of the Gaussians whose sum ``D`` decides which voxels the
        molecule's volume fills (see the module docstring).
    source
        Name of the model, for the record.

    Returns
    -------
    AtomicMap
        The map (``(n, n, n)`` float32 torch tensor, CPU) and what it holds.

    Raises
    ------
    ParameterError
        Bad sizes, or the model (with its blur) does not fit into the box.
    """
    p = float(pixel_size_angstrom)
    if not (p > 0 and math.isfinite(p)):
        raise ParameterError(f"pixel size must be > 0 Å, got {pixel_size_angstrom}")
    if box_size < 8 or box_size % 2:
        raise ParameterError(f"box size must be even and >= 8 pixels, got {box_size}")
    if bfactor_angstrom2 < 0 or exclusion_bfactor_angstrom2 <= 0:
        raise ParameterError(
            f"B-factors must be >= 0 Å^2 (blur) and > 0 (exclusion), got {bfactor_angstrom2} "
            f"and {exclusion_bfactor_angstrom2}"
        )
    if ice_potential_volt < 0:
        raise ParameterError(f"ice potential must be >= 0 V, got {ice_potential_volt}")
    n = int(box_size)
    length = n * p
    model = structure[0].clone()
    if centre not in ("mass", "origin", "keep"):
        raise ParameterError(f"centre must be mass, origin or keep, got {centre!r}")
    if centre != "keep":
        here = np.zeros(3) if centre == "origin" else model.calculate_center_of_mass().tolist()
        shift = np.full(3, n // 2 * p) - np.asarray(here)
        model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*shift)))
    if not model_bfactors:
        for cra in model.all():
            cra.atom.b_iso = 0.0
            cra.atom.aniso = gemmi.SMat33f(0, 0, 0, 0, 0, 0)
    mode = _hydrogen_mode(structure)
    table = _atom_table(model, implicit_hydrogens=mode == "implicit")

    # the model (and its blur) must fit: the grid is periodic
    k_nyquist = 0.5 / p
    blur_sampling = (
        4.0 * math.log(1.0 / _ALIAS_TOLERANCE) / (((2 * _OVERSAMPLING - 1) ** 2 - 1) * k_nyquist**2)
    )
    blur = blur_sampling + float(bfactor_angstrom2)
    margin = 2.0 * math.sqrt((float(bfactor_angstrom2) + 30.0) / (8 * math.pi**2)) + 1.0
    lo, hi = table.xyz.min(axis=0), table.xyz.max(axis=0)
    if np.any(lo < margin) or np.any(hi > length - margin):
        centre_px = n // 2 * p
        reach = float(np.abs(np.concatenate([lo, hi]) - centre_px).max()) + margin
        raise ParameterError(
            f"{source}: the model reaches {reach:.0f} Å from the box centre but the box is "
            f"{n} px x {p:g} Å = {length:.0f} Å: use a box of at least "
            f"{2 * math.ceil(reach / p)} px (--box; 1.5 to 2 times the particle is usual)"
            + ("" if centre != "keep" else ", or centre the model")
        )

    n_fine = _OVERSAMPLING * n
    cell = gemmi.UnitCell(length, length, length, 90, 90, 90)
    fine = _density_on_grid(gemmi.DensityCalculatorE, model, cell, n_fine, blur)
    if mode == "implicit" and table.n_hydrogens.any():
        h_model = _single_atom_model(
            table, "H", table.n_hydrogens, table.bfactor + IMPLICIT_HYDROGEN_BFACTOR_ANGSTROM2
        )
        fine += _density_on_grid(gemmi.DensityCalculatorE, h_model, cell, n_fine, blur)
    kz, ky, kx = frequency_grid_3d((n, n, n), p, rfft=True, dtype=torch.float64)
    k2 = kx * kx + ky * ky + kz * kz
    ft = torch.fft.rfftn(_crop_fine(fine, n)).to(torch.complex128)
    del fine
    # volts, with the sampling blur B_s removed
    ft *= POTENTIAL_PER_SCATTERING_VOLT_ANGSTROM2 * torch.exp(blur_sampling * k2 / 4.0)
    if ice_potential_volt > 0:
        mask = _excluded_volume_mask(table, cell, n_fine, exclusion_bfactor_angstrom2)
        edge = 8 * math.pi**2 * max(1.0, 0.5 * p) ** 2 + float(bfactor_angstrom2)
        ft -= (
            ice_potential_volt
            * torch.fft.rfftn(_crop_fine(mask, n)).to(torch.complex128)
            * torch.exp(-edge * k2 / 4.0)
        )
    volume = torch.fft.irfftn(ft, s=(n, n, n)).to(torch.float32)
    return AtomicMap(
        volume=volume,
        pixel_size_angstrom=p,
        source=source,
        mean_inner_potential_volt=_mean_inner_potential(table),
        ice_potential_volt=float(ice_potential_volt),
        hydrogens=mode,
        n_atoms=int(model.count_atom_sites()),
    )


@dataclass(frozen=True)
class AtomicModelOptions:
    """How atomic models become maps (the options of :func:`atomic_model_map`).

    Attributes
    ----------
    assembly
        Biological assembly to build (``"1"``, ...); None: the deposited coordinates.
    remove_waters, remove_ligands
        Drop waters / all non-polymer residues.
    hydrogens
        ``auto``, ``implicit``, ``explicit`` or ``none`` (:func:`read_atomic_model`).
    bfactor_angstrom2
        Extra blur of every atom (Å^2).
    model_bfactors
        Use the model's B-factors.
    ice_potential_volt
        Mean inner potential of the displaced ice (V); 0: vacuum (no ice around particles).
    centre
        ``mass``, ``origin`` or ``keep`` (:func:`potential_map`); None: ``origin`` for the
        built-in models, ``mass`` for files.
    """

    assembly: str | None = None
    remove_waters: bool = True
    remove_ligands: bool = False
    hydrogens: Hydrogens = "auto"
    bfactor_angstrom2: float = 0.0
    model_bfactors: bool = True
    ice_potential_volt: float = ICE_MEAN_INNER_POTENTIAL_VOLT
    centre: Centre | None = None

    def centre_for(self, path: PathLike) -> Centre:
        """The centring used for ``path``."""
        if self.centre is not None:
            return self.centre
        return "origin" if str(path).startswith(BUILTIN_PREFIX) else "mass"

    def read(self, path: PathLike) -> gemmi.Structure:
        """:func:`read_atomic_model` with these options."""
        return read_atomic_model(
            path,
            assembly=self.assembly,
            remove_waters=self.remove_waters,
            remove_ligands=self.remove_ligands,
            hydrogens=self.hydrogens,
        )

    def map(
        self,
        structure: gemmi.Structure,
        path: PathLike,
        *,
        pixel_size_angstrom: float,
        box_size: int,
    ) -> AtomicMap:
        """:func:`potential_map` of a structure read from ``path`` with these options."""
        return potential_map(
            structure,
            pixel_size_angstrom=pixel_size_angstrom,
            box_size=box_size,
            centre=self.centre_for(path),
            bfactor_angstrom2=self.bfactor_angstrom2,
            model_bfactors=self.model_bfactors,
            ice_potential_volt=self.ice_potential_volt,
            source=str(path),
        )


def atomic_model_map(
    path: PathLike,
    *,
    pixel_size_angstrom: float,
    box_size: int | None = None,
    centre: Centre | None = None,
    assembly: str | None = None,
    remove_waters: bool = True,
    remove_ligands: bool = False,
    hydrogens: Hydrogens = "auto",
    bfactor_angstrom2: float = 0.0,
    model_bfactors: bool = True,
    ice_potential_volt: float = ICE_MEAN_INNER_POTENTIAL_VOLT,
) -> AtomicMap:
    """Read an atomic model and compute its potential map (V, relative to ice).

    Parameters
    ----------
    path
        PDB / mmCIF file (optionally ``.gz``) or ``builtin:NAME``.
    pixel_size_angstrom
        Voxel size (Å).
    box_size
        Box (pixels, even); default :func:`default_box_size` (1.5 times the diameter).
    centre
        See :func:`potential_map`; default ``"origin"`` for the built-in models (they are in
        their symmetry frame) and ``"mass"`` for files.
    assembly, remove_waters, remove_ligands, hydrogens
        See :func:`read_atomic_model`.
    bfactor_angstrom2, model_bfactors, ice_potential_volt
        See :func:`potential_map`.

    Returns
    -------
    AtomicMap
        The map and its description.
    """
    options = AtomicModelOptions(
        assembly=assembly,
        remove_waters=remove_waters,
        remove_ligands=remove_ligands,
        hydrogens=hydrogens,
        bfactor_angstrom2=bfactor_angstrom2,
        model_bfactors=model_bfactors,
        ice_potential_volt=ice_potential_volt,
        centre=centre,
    )
    structure = options.read(path)
    if box_size is None:
        box_size = default_box_size(structure, pixel_size_angstrom, centre=options.centre_for(path))
    return options.map(structure, path, pixel_size_angstrom=pixel_size_angstrom, box_size=box_size)
