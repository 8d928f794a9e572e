"""Point-group symmetry as RELION defines it, and symmetrisation of volumes.

RELION (inheriting Xmipp's ``SymList``) builds each group from a few generators and closes the
set under multiplication. The generators, in map coordinates ``(x, y, z)`` (x the fast axis), with
mirror planes given by their normal and phi the golden ratio, are:

* ``Cn``: n-fold along z. ``Ci``: inversion. ``Cs``: mirror z.
* ``Cnv``: ``Cn`` plus mirror y. ``Cnh``: ``Cn`` plus mirror z.
* ``Sn`` (n even, RELION's definition): (n/2)-fold along z plus inversion.
* ``Dn``: n-fold along z, 2-fold along x. ``Dnv``: plus mirror x. ``Dnh``: plus mirror z.
* ``T``: 3-fold along z, 2-fold along (0, sqrt(2/3), sqrt(1/3)). ``Td``: plus mirror
  (sqrt 2, sqrt 6, 0). ``Th``: 3-fold along z, 2-fold along (0, -sqrt(2/3), -sqrt(1/3)),
  inversion.
* ``O``: 3-fold along (1, 1, 1), 4-fold along z. ``Oh``: plus mirror (0, 1, 1).
* ``I`` = ``I2``: 2-fold along z, 5-fold along (1, 0, phi), 3-fold along (0, 1, phi^2).
* ``I1``: 2-fold along x, 5-fold along (phi, 0, -1), 3-fold along (phi^2, 1, 0).
* ``I3``: 2-fold along (-1, 0, phi), 5-fold along z, 3-fold along
  (-phi^2, sqrt(1 + phi^2), phi^3).
* ``I4``: 2-fold along (1, 0, phi), 5-fold along (2, 0, 1), 3-fold along
  (phi^2, sqrt(1 + phi^2), phi^3).
* ``Ih`` (= ``I2h``), ``I1h``, ``I3h``, ``I4h``: the icosahedral group plus mirror x, -z,
  (phi, 0, 1) and (phi, 0, -1) respectively.

Source: RELION's ``src/symmetries.cpp`` (``SymList::fill_symmetry_class``); RELION lists the
3-folds of ``I3``/``I4`` as decimals accurate to about 1e-8, the exact axes are used here. ``I``
is RELION's default icosahedral orientation ``I2``; ``I5`` is not implemented by RELION either.
Names are case-insensitive. Each group is closed under inversion, so the sets of matrices are the
same for active and passive readings. Groups with mirrors or inversion (the ``v``, ``h``, ``d``,
``i``, ``s`` forms and ``Sn``) contain improper operators (determinant -1).
"""

from __future__ import annotations

import functools
import math
import re

import torch

from cryospa.core.interpolate import InterpolationOrder, rotate_volume

__all__ = [
    "VALID_SYMMETRY_FORMS",
    "is_proper_group",
    "symmetrise_volume",
    "symmetry_family",
    "symmetry_operators",
    "symmetry_order",
]

VALID_SYMMETRY_FORMS = (
    "C1, Cn, Ci, Cs, Cnv, Cnh, Sn (n even), Dn, Dnv, Dnh, T, Td, Th, O, Oh, "
    "I (= I2), I1, I2, I3, I4, Ih, I1h, I2h, I3h, I4h (n a positive integer, any case)"
)

_PHI = (1.0 + math.sqrt(5.0)) / 2.0

# Generators: ("rot", fold, axis) | ("mirror", normal) | ("inversion",)
_Generator = tuple
_TETRA_2FOLD = (0.0, math.sqrt(2.0 / 3.0), math.sqrt(1.0 / 3.0))
_ICOSA: dict[str, list[_Generator]] = {
    "I2": [
        ("rot", 2, (0.0, 0.0, 1.0)),
        ("rot", 5, (1.0, 0.0, _PHI)),
        ("rot", 3, (0.0, 1.0, _PHI**2)),
    ],
    "I1": [
        ("rot", 2, (1.0, 0.0, 0.0)),
        ("rot", 5, (_PHI, 0.0, -1.0)),
        ("rot", 3, (_PHI**2, 1.0, 0.0)),
    ],
    "I3": [
        ("rot", 2, (-1.0, 0.0, _PHI)),
        ("rot", 5, (0.0, 0.0, 1.0)),
        ("rot", 3, (-(_PHI**2), math.sqrt(1.0 + _PHI**2), _PHI**3)),
    ],
    "I4": [
        ("rot", 2, (1.0, 0.0, _PHI)),
        ("rot", 5, (2.0, 0.0, 1.0)),
        ("rot", 3, (_PHI**2, math.sqrt(1.0 + _PHI**2), _PHI**3)),
    ],
}
_ICOSA_MIRROR = {
    "I2": (1.0, 0.0, 0.0),
    "I1": (0.0, 0.0, -1.0),
    "I3": (_PHI, 0.0, 1.0),
    "I4": (_PHI, 0.0, -1.0),
}


def _parse(name: str) -> tuple[str, int]:
    """Canonical (family, n) of a symmetry name; raise ValueError for unknown names."""
    if not isinstance(name, str):
        raise ValueError(f"symmetry name must be a string, got {name!r}")
    s = name.strip().upper()
    patterns = [
        (r"C(\d+)", "C"),
        (r"CI", "CI"),
        (r"CS", "CS"),
        (r"C(\d+)V", "CV"),
        (r"C(\d+)H", "CH"),
        (r"S(\d+)", "S"),
        (r"D(\d+)", "D"),
        (r"D(\d+)V", "DV"),
        (r"D(\d+)H", "DH"),
        (r"T", "T"),
        (r"TD", "TD"),
        (r"TH", "TH"),
        (r"O", "O"),
        (r"OH", "OH"),
        (r"I", "I2"),
        (r"I([1-4])", "I"),
        (r"IH", "I2H"),
        (r"I([1-4])H", "IH"),
    ]
    for pattern, family in patterns:
        m = re.fullmatch(pattern, s)
        if m is None:
            continue
        if family in ("I", "IH"):
            return f"I{m.group(1)}" + ("H" if family == "IH" else ""), 0
        if m.groups():
            n = int(m.group(1))
            if n < 1:
                break
            if family == "S" and n % 2:
                raise ValueError(f"symmetry {name!r}: RELION's Sn groups need an even n")
            return family, n
        return family, 0
    raise ValueError(f"unknown symmetry group {name!r}; valid forms: {VALID_SYMMETRY_FORMS}")


def _generators(family: str, n: int) -> list[_Generator]:
    z = (0.0, 0.0, 1.0)
    if family == "C":
        return [("rot", n, z)]
    if family == "CI":
        return [("inversion",)]
    if family == "CS":
        return [("mirror", z)]
    if family == "CV":
        return [("rot", n, z), ("mirror", (0.0, 1.0, 0.0))]
    if family == "CH":
        return [("rot", n, z), ("mirror", z)]
    if family == "S":
        return [("rot", n // 2, z), ("inversion",)]
    dihedral = [("rot", n, z), ("rot", 2, (1.0, 0.0, 0.0))]
    if family == "D":
        return dihedral
    if family == "DV":
        return [*dihedral, ("mirror", (1.0, 0.0, 0.0))]
    if family == "DH":
        return [*dihedral, ("mirror", z)]
    tetra = [("rot", 3, z), ("rot", 2, _TETRA_2FOLD)]
    if family == "T":
        return tetra
    if family == "TD":
        return [*tetra, ("mirror", (math.sqrt(2.0), math.sqrt(6.0), 0.0))]
    if family == "TH":
        return [("rot", 3, z), ("rot", 2, tuple(-c for c in _TETRA_2FOLD)), ("inversion",)]
    octa = [("rot", 3, (1.0, 1.0, 1.0)), ("rot", 4, z)]
    if family == "O":
        return octa
    if family == "OH":
        return [*octa, ("mirror", (0.0, 1.0, 1.0))]
    if family.startswith("I"):
        key = family[:2]
        gens = list(_ICOSA[key])
        if family.endswith("H"):
            gens.append(("mirror", _ICOSA_MIRROR[key]))
        return gens
    raise ValueError(f"unknown symmetry family {family!r}")  # pragma: no cover - _parse guards


def _axis_rotation(axis: tuple[float, ...], angle: float) -> torch.Tensor:
    a = torch.tensor(axis, dtype=torch.float64)
    x, y, z = (a / torch.linalg.vector_norm(a)).tolist()
    c, s = math.cos(angle), math.sin(angle)
    t = 1.0 - c
    return torch.tensor(
        [
            [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
            [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
            [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
        ],
        dtype=torch.float64,
    )


def _generator_matrices(gen: _Generator) -> list[torch.Tensor]:
    kind = gen[0]
    if kind == "rot":
        fold, axis = gen[1], gen[2]
        return [] if fold == 1 else [_axis_rotation(axis, 2.0 * math.pi / fold)]
    if kind == "mirror":
        nrm = torch.tensor(gen[1], dtype=torch.float64)
        nrm = nrm / torch.linalg.vector_norm(nrm)
        return [torch.eye(3, dtype=torch.float64) - 2.0 * torch.outer(nrm, nrm)]
    return [-torch.eye(3, dtype=torch.float64)]


def _new_rows(candidates: torch.Tensor, known: torch.Tensor, tol: float) -> torch.Tensor:
    """Keep the ``candidates`` (c, 3, 3) absent from ``known`` (k, 3, 3), each once, in order."""
    flat = candidates.reshape(-1, 9)
    fresh = (flat[:, None] - known.reshape(1, -1, 9)).abs().amax(dim=-1).amin(dim=1) >= tol
    flat = flat[fresh]
    if flat.shape[0] == 0:
        return candidates[:0]
    same = (flat[:, None] - flat[None]).abs().amax(dim=-1) < tol  # (c, c)
    first = ~torch.tril(same, diagonal=-1).any(dim=1)  # no equal candidate earlier in the list
    return flat[first].reshape(-1, 3, 3)


@functools.lru_cache(maxsize=64)
def _group(family: str, n: int) -> torch.Tensor:
    """Build the closed group as (n, 3, 3) float64 CPU matrices, identity first."""
    tol = 1e-6
    gens = [m for gen in _generators(family, n) for m in _generator_matrices(gen)]
    elements = torch.eye(3, dtype=torch.float64)[None]
    if not gens:
        return elements
    gen_stack = _new_rows(torch.stack(gens), elements, tol)  # (s, 3, 3)
    elements = torch.cat([elements, gen_stack])
    frontier = gen_stack
    # Breadth-first closure: a finite group is generated by right-multiplying by its generators.
    while frontier.shape[0] > 0:
        products = (frontier[:, None] @ gen_stack[None, :]).reshape(-1, 3, 3)  # (f * s, 3, 3)
        frontier = _new_rows(products, elements, tol)
        elements = torch.cat([elements, frontier])
        if elements.shape[0] > 10000:  # pragma: no cover - guards against a bad generator
            raise ValueError(f"symmetry group {family}{n or ''} does not close")
    group = elements.clone()
    group[group.abs() < 1e-12] = 0.0
    return group


def symmetry_operators(
    name: str,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Matrices of a point group as RELION defines it (same axes and orientation).

    Parameters
    ----------
    name
        Group name, case-insensitive: ``C1``, ``C7``, ``D2``, ``T``, ``O``, ``I`` (= ``I2``),
        ``I1`` ... ``I4``, or one with mirrors/inversion (see the module docstring).
    dtype, device
        Of the returned tensor.

    Returns
    -------
    torch.Tensor
        ``(n, 3, 3)`` operators acting on column vectors ``(x, y, z)``, identity first; ``n`` is
        the group order. A map ``V`` with this symmetry has ``V(g p) = V(p)`` for every ``g``.

    Raises
    ------
    ValueError
        For an unknown name, listing the valid forms.

    """
    family, n = _parse(name)
    return _group(family, n).to(dtype=dtype, device=device, copy=True)  # never the cached tensor


def symmetry_family(name: str) -> tuple[str, int]:
    """Canonical form of a group name: ``(family, n)``.

    ``family`` is one of ``C, CI, CS, CV, CH, S, D, DV, DH, T, TD, TH, O, OH, I1, I2, I3, I4, I1H,
    I2H, I3H, I4H`` and ``n`` the order of the main axis for the ``C``, ``S`` and ``D`` families (0
    otherwise). ``"I"`` gives ``("I2", 0)`` and ``"d2"`` gives ``("D", 2)``. Raises ``ValueError``
    for unknown names.
    """
    return _parse(name)


def symmetry_order(name: str) -> int:
    """Count the operators of the group ``name`` (identity included), e.g. 60 for ``I1``."""
    family, n = _parse(name)
    return int(_group(family, n).shape[0])


def is_proper_group(name: str) -> bool:
    """Tell whether all operators of ``name`` are rotations (no mirror or inversion)."""
    family, n = _parse(name)
    return bool((torch.linalg.det(_group(family, n)) > 0).all())


def symmetrise_volume(
    volume: torch.Tensor,
    symmetry: str | torch.Tensor,
    *,
    order: InterpolationOrder = "linear",
) -> torch.Tensor:
    """Average of a volume over all operators of a point group, in real space.

    As RELION's ``relion_image_handler --sym``: each operator is applied about the centre voxel
    ``n // 2`` with trilinear interpolation (samples from outside the box are zero) and the
    results, identity included, are averaged.

    Parameters
    ----------
    volume
        ``(..., d, h, w)`` real volume(s).
    symmetry
        Group name (see :func:`symmetry_operators`) or an ``(n, 3, 3)`` tensor of operators.
    order
        Interpolation, ``"linear"`` or ``"nearest"``.

    Returns
    -------
    torch.Tensor
        ``(..., d, h, w)`` symmetrised volume(s), same dtype and device as ``volume``.

    """
    if volume.dim() < 3:
        raise ValueError(f"volume needs shape (..., d, h, w), got {tuple(volume.shape)}")
    if isinstance(symmetry, str):
        ops = symmetry_operators(symmetry, dtype=volume.dtype, device=volume.device)
    else:
        if symmetry.dim() != 3 or symmetry.shape[-2:] != (3, 3):
            raise ValueError(
                f"symmetry operators need shape (n, 3, 3), got {tuple(symmetry.shape)}"
            )
        ops = symmetry.to(dtype=volume.dtype, device=volume.device)
    total = torch.zeros_like(volume)
    for op in ops:  # one operator at a time keeps memory at a few volumes
        total = total + rotate_volume(volume, op, order=order)
    return total / ops.shape[0]
