"""``cryospa subset`` and ``cryospa join``: new sets from existing ones, with provenance.

* ``subset``: rows of one set chosen by number (``--rows 1-100,150``, 1-based, as shown by
  ``relion_star_handler``) or by a query on its columns (``--query "rlnCtfMaxResolution < 5"``;
  the optics columns can be used too). The optics groups still used are kept.
* ``join``: several sets of the same type into one (as RELION's JoinStar). Optics groups with the
  same optical values are merged; the others are renumbered 1, 2, ... in order of first
  appearance, with names made unique. Columns not present in every set are dropped (named in
  the summary).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryospa.errors import ParameterError
from cryospa.io.star import RelionTable, joined, write_relion_star
from cryospa.jobs._sets import SET_TYPES, read_set
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

__all__ = ["Join", "Subset", "parse_rows"]

_DESCRIPTION = __doc__ or ""
_SET_TYPES = tuple(SET_TYPES)


def parse_rows(spec: str, n: int) -> np.ndarray:
    """1-based row ranges (``1-10,15,20-`` or ``1-10 15 20-``) -> sorted 0-based indices < n."""
    chosen: set[int] = set()
    for part in re.split(r"[,\s]+", re.sub(r"\s*-\s*", "-", spec.strip())):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d*))?", part)
        if not m:
            raise ParameterError(f"--rows: cannot read {part!r} (use e.g. 1-100,150,200-)")
        lo = int(m.group(1))
        hi = lo if m.group(2) is None else (int(m.group(2)) if m.group(2) else n)
        if lo < 1 or hi < lo:
            raise ParameterError(f"--rows: bad range {part!r} (rows count from 1)")
        if hi > n:
            raise ParameterError(f"--rows: {part!r} goes past the last row ({n})")
        chosen.update(range(lo - 1, hi))
    return np.array(sorted(chosen), dtype=np.int64)


def _select(table: RelionTable, params: Mapping[str, Any]) -> np.ndarray:
    n = len(table.data)
    if params["rows"]:
        return parse_rows(params["rows"], n)
    full = joined(table)
    try:
        mask = full.eval(params["query"])
    except Exception as err:
        raise ParameterError(
            f"--query {params['query']!r}: {type(err).__name__}: {err} "
            f"(columns: {', '.join(full.columns)})"
        ) from err
    if not isinstance(mask, pd.Series) or mask.dtype != bool:
        raise ParameterError(f"--query {params['query']!r} is not a true/false condition")
    return np.flatnonzero(mask.to_numpy())


@register
class Subset(PerItemJob):
    """A subset of a set, by row numbers or a query on its columns."""

    name = "subset"
    folder = "Select"
    relion_type = 7  # PROC_CLASSSELECT
    description = _DESCRIPTION
    streamable = False
    inputs = (Input("i", _SET_TYPES, help="the set", relion="fn_data"),)
    params = (
        Param("rows", str, "", kind="text", metavar="RANGES",
              help="rows to keep, 1-based, e.g. 1-100,150,200-"),
        Param("query", str, "", kind="text", metavar="CONDITION",
              help="keep rows where this holds, e.g. \"rlnCtfMaxResolution < 5\""),
    )
    outputs = (Output("subset", None, "{set}.star", like="i"),)

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """Exactly one of --rows / --query, and it must select something."""
        if bool(params["rows"]) == bool(params["query"]):
            raise ParameterError("subset: give exactly one of --rows and --query")
        table = read_set(project_dir, inputs["i"][0])
        if len(_select(table, params)) == 0:
            raise ParameterError("subset: the selection is empty")

    def list_items(self, ctx: JobContext) -> list[str]:
        """One item."""
        return ["subset"]

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Select and write."""
        src = ctx.input("i")
        table = read_set(ctx.project_dir, src)
        rows = _select(table, ctx.params)
        data = table.data.iloc[rows].reset_index(drop=True)
        used = set(data["rlnOpticsGroup"].tolist())
        optics = table.optics[table.optics["rlnOpticsGroup"].isin(used)].reset_index(drop=True)
        out = RelionTable(table.kind, data, optics)
        write_relion_star(ctx.path(Path(self.output_types(ctx.inputs)[0][2]).name), out)
        return {"kept": len(data), "of": len(table.data), "kind": table.kind}

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``kept 120 of 2000 particles``."""
        r = results[0][1]
        return f"kept {r['kept']} of {r['of']} {r['kind']}"


def _merge_optics(tables: list[RelionTable]) -> tuple[pd.DataFrame, list[dict[int, int]]]:
    columns: list[str] = []
    for t in tables:
        columns += [c for c in t.optics.columns if c not in columns]
    value_cols = [c for c in columns if c not in ("rlnOpticsGroup", "rlnOpticsGroupName")]
    merged: list[dict[str, Any]] = []
    keys: list[tuple[str, ...]] = []
    maps: list[dict[int, int]] = []
    for t in tables:
        mapping: dict[int, int] = {}
        for _, row in t.optics.iterrows():
            key = tuple(str(row.get(c, "")) for c in value_cols)
            if key in keys:
                mapping[int(row["rlnOpticsGroup"])] = keys.index(key) + 1
                continue
            keys.append(key)
            new = {c: row.get(c, np.nan) for c in columns}
            new["rlnOpticsGroup"] = len(keys)
            merged.append(new)
            mapping[int(row["rlnOpticsGroup"])] = len(keys)
        maps.append(mapping)
    optics = pd.DataFrame(merged, columns=columns)
    if "rlnOpticsGroupName" in optics.columns:
        names = optics["rlnOpticsGroupName"].astype(str).tolist()
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in seen or name in ("", "nan"):
                names[i] = f"opticsGroup{i + 1}"
            seen[names[i]] = i
        optics["rlnOpticsGroupName"] = names
    optics["rlnOpticsGroup"] = optics["rlnOpticsGroup"].astype("int64")
    return optics, maps


@register
class Join(PerItemJob):
    """Join several sets of the same type (optics groups merged / renumbered)."""

    name = "join"
    folder = "JoinStar"
    relion_type = 13  # PROC_JOINSTAR
    description = _DESCRIPTION
    streamable = False
    inputs = (Input("i", _SET_TYPES, help="two or more sets of the same type", multiple=True,
                    relion="fn_part1"),)
    outputs = (Output("joined", None, "join_{set}.star", like="i"),)

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """At least two sets, all of one type."""
        sets = inputs["i"]
        if len(sets) < 2:
            raise ParameterError("join: give at least two sets (--i job003 job007)")
        types = {r.node_type for r in sets}
        if len(types) > 1:
            listed = ", ".join(r.describe() for r in sets)
            raise ParameterError(f"join: the sets must be of one type, got {listed}")

    def list_items(self, ctx: JobContext) -> list[str]:
        """One item."""
        return ["join"]

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Merge optics groups, concatenate rows, write."""
        tables = [read_set(ctx.project_dir, r) for r in ctx.inputs["i"]]
        optics, maps = _merge_optics(tables)
        common = [c for c in tables[0].data.columns
                  if all(c in t.data.columns for t in tables[1:])]
        dropped = sorted({c for t in tables for c in t.data.columns} - set(common))
        parts = []
        for t, mapping in zip(tables, maps, strict=True):
            part = t.data[common].copy()
            part["rlnOpticsGroup"] = part["rlnOpticsGroup"].map(mapping).astype("int64")
            parts.append(part)
        data = pd.concat(parts, ignore_index=True)
        out = RelionTable(tables[0].kind, data, optics)
        write_relion_star(ctx.path(Path(self.output_types(ctx.inputs)[0][2]).name), out)
        return {"n": len(data), "sets": len(tables), "groups": len(optics),
                "kind": tables[0].kind, "dropped": dropped}

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``4000 particles from 2 sets, 1 optics group``."""
        r = results[0][1]
        text = (f"{r['n']} {r['kind']} from {r['sets']} sets, {r['groups']} optics "
                f"group{'s' if r['groups'] != 1 else ''}")
        if r["dropped"]:
            text += f" (dropped columns: {', '.join(r['dropped'])})"
        return text
