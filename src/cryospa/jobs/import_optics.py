r"""``cryospa import optics``: assign optics groups to the rows of a set.

Works on movies, micrographs or particles, as the "assign optics groups" step of the RELION
tutorial in Scipion.

Two ways to say which row goes to which group:

* ``--groups FILE.star``: a table with a file-name column (``rlnMicrographMovieName`` or
  ``rlnMicrographName``; matched on the file name without folder and extension) and the group
  (``rlnOpticsGroupName``, or ``rlnOpticsGroup``); an optional ``data_optics`` table in the same
  file gives optical values per group name (e.g. ``rlnBeamTiltX``) that replace the input's.
* ``--regex PATTERN``: a regular expression searched in each file name; its first group (or
  the whole match) names the group, e.g. ``--regex 'GridSquare_(\d+)'`` puts every exposure of
  a grid square in one group ``opticsGroup_<n>``.

Every row must get a group; the new groups inherit the optical values of the rows' old groups
(which must agree within a new group) and are numbered 1, 2, ... in order of first appearance.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryospa.errors import InputFileError, ParameterError
from cryospa.io.star import (
    OPTICS_COLUMNS,
    RelionTable,
    joined,
    read_star,
    split_optics,
    write_relion_star,
)
from cryospa.jobs._sets import name_column, read_set
from cryospa.project.nodes import NodeType
from cryospa.project.schema import (
    Input,
    JobContext,
    Output,
    Param,
    PerItemJob,
    ResolvedInput,
    RunOptions,
    register,
)

__all__ = ["ImportOptics", "assign_optics_groups"]

_DESCRIPTION = __doc__ or ""


def _stem(name: str) -> str:
    return Path(str(name).split("@")[-1]).stem


def assign_optics_groups(
    table: RelionTable, *, groups_file: Path | None = None, regex: str = ""
) -> RelionTable:
    """A copy of ``table`` with optics groups assigned (see the module docstring).

    Raises
    ------
    ParameterError
        A row matches no group, the regex does not compile, or rows of one new group had
        different optical values.

    """
    col = name_column(table)
    names = table.data[col].astype(str)
    overrides: dict[str, dict[str, Any]] = {}
    if groups_file is not None:
        blocks = read_star(groups_file)
        mapping: dict[str, str] = {}
        for block_name, block in blocks.items():
            if block_name == "optics":
                for _, row in block.iterrows():
                    if "rlnOpticsGroupName" in block.columns:
                        overrides[str(row["rlnOpticsGroupName"])] = {
                            c: row[c] for c in block.columns
                            if c in OPTICS_COLUMNS and c not in ("rlnOpticsGroup",
                                                                 "rlnOpticsGroupName")}
                continue
            key_col = next((c for c in ("rlnMicrographMovieName", "rlnMicrographName")
                            if c in block.columns), None)
            group_col = next((c for c in ("rlnOpticsGroupName", "rlnOpticsGroup")
                              if c in block.columns), None)
            if key_col and group_col:
                for k, g in zip(block[key_col].astype(str), block[group_col].astype(str),
                                strict=True):
                    mapping[_stem(k)] = g if group_col == "rlnOpticsGroupName" \
                        else f"opticsGroup{g}"
        if not mapping:
            raise InputFileError(groups_file, "no table with a file-name column and "
                                 "rlnOpticsGroupName / rlnOpticsGroup",
                                 "see `cryospa import optics --help`")
        new_names = [mapping.get(_stem(n)) for n in names]
    else:
        try:
            pattern = re.compile(regex)
        except re.error as err:
            raise ParameterError(f"--regex {regex!r}: {err}") from err
        new_names = []
        for n in names:
            m = pattern.search(n)
            new_names.append(
                None if m is None else "opticsGroup_" + (m.group(1) if m.groups() else m.group(0))
            )
    missing = [n for n, g in zip(names, new_names, strict=True) if g is None]
    if missing:
        raise ParameterError(
            f"{len(missing)} of {len(names)} rows match no optics group (e.g. {missing[0]})"
        )
    full = joined(table)
    full["rlnOpticsGroupName"] = new_names
    for name, values in overrides.items():
        rows = full["rlnOpticsGroupName"] == name
        for c, v in values.items():
            full.loc[rows, c] = v
    order = {n: i + 1 for i, n in enumerate(dict.fromkeys(new_names))}
    full["rlnOpticsGroup"] = full["rlnOpticsGroupName"].map(order).astype("int64")
    try:
        out = split_optics(full, table.kind)
    except ValueError as err:
        raise ParameterError(f"optics groups: {err}") from err
    out.other_blocks = table.other_blocks
    return out


@register
class ImportOptics(PerItemJob):
    """Assign optics groups to a set (see the module docstring)."""

    name = "import optics"
    folder = "Import"
    relion_type = 0  # PROC_IMPORT
    description = _DESCRIPTION
    streamable = False
    inputs = (Input("i", (NodeType.MOVIES, NodeType.MICROGRAPHS, NodeType.PARTICLES),
                    help="the set to assign groups to"),)
    params = (
        Param("groups", str, "", kind="file", metavar="STAR",
              help="STAR file mapping file names to optics groups"),
        Param("regex", str, "", kind="text", metavar="PATTERN",
              help="regular expression whose first group names the optics group"),
    )
    outputs = (Output("assigned", None, "{set}.star", like="i"),)

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """Exactly one of --groups / --regex, and every row must get a group."""
        if bool(params["groups"]) == bool(params["regex"]):
            raise ParameterError("import optics: give exactly one of --groups and --regex")
        self._assign(project_dir, params, inputs["i"][0])

    def _assign(self, project_dir: Path, params: Mapping[str, Any],
                src: ResolvedInput) -> RelionTable:
        table = read_set(project_dir, src)
        groups = Path(params["groups"]) if params["groups"] else None
        if groups is not None and not groups.is_absolute():
            groups = project_dir / groups
        return assign_optics_groups(table, groups_file=groups, regex=params["regex"])

    def list_items(self, ctx: JobContext) -> list[str]:
        """One item."""
        return ["optics"]

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Assign and write."""
        out = self._assign(ctx.project_dir, ctx.params, ctx.input("i"))
        write_relion_star(ctx.path(Path(self.output_types(ctx.inputs)[0][2]).name), out)
        counts = out.data["rlnOpticsGroup"].value_counts().sort_index()
        return {"n": len(out.data), "groups": len(out.optics), "kind": out.kind,
                "sizes": [int(v) for v in counts.tolist()]}

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``24 movies in 3 optics groups (8, 8, 8)``."""
        r = results[0][1]
        sizes = ", ".join(str(s) for s in r["sizes"][:8])
        return f"{r['n']} {r['kind']} in {r['groups']} optics groups ({sizes})"

