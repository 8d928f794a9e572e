"""Helpers shared by the import jobs: file patterns, links into the job folder, stable files."""

from __future__ import annotations

import glob
import os
import time
import uuid
from pathlib import Path
from typing import Any

from cryospa.project.schema import JobContext, Param, natural_key

__all__ = [
    "OPTICS_PARAMS",
    "SETTLE_PARAM",
    "link_into",
    "list_pattern",
    "optics_row",
    "pattern_base",
    "stable_files",
]

#: Optics parameters shared by import movies / micrographs (RELION import names).
OPTICS_PARAMS: tuple[Param, ...] = (
    Param("angpix", float, None, unit="Å", range=(0, None), open_min=True, required=True,
          help="pixel size of the files", relion="angpix"),
    Param("kv", float, 300.0, unit="kV", range=(10, 3000), help="acceleration voltage",
          relion="kV"),
    Param("cs", float, 2.7, unit="mm", range=(0, 100), help="spherical aberration",
          relion="Cs"),
    Param("q0", float, 0.1, range=(0, 1), open_max=True,
          help="amplitude contrast (fraction)", relion="Q0"),
    Param("optics_group_name", str, "opticsGroup1", help="name of the optics group",
          relion="optics_group_name"),
)


def optics_row(params: dict[str, Any], pixel_size_column: str) -> dict[str, Any]:
    """One RELION optics-group row from the optics parameters."""
    row: dict[str, Any] = {
        "rlnOpticsGroupName": str(params["optics_group_name"]),
        "rlnOpticsGroup": 1,
        pixel_size_column: float(params["angpix"]),
        "rlnVoltage": float(params["kv"]),
        "rlnSphericalAberration": float(params["cs"]),
        "rlnAmplitudeContrast": float(params["q0"]),
    }
    return row


def pattern_base(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard (``Raw/`` of ``Raw/*/*.tif``)."""
    parts = Path(pattern).parts
    base: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        base.append(part)
    return str(Path(*base)) if base else ""


def list_pattern(ctx: JobContext, pattern: str) -> list[str]:
    """Files matching ``pattern`` (project-relative or absolute), as given, in natural order."""
    full = pattern if os.path.isabs(pattern) else str(ctx.project_dir / pattern)
    found = []
    for path in glob.iglob(full, recursive=True):
        if os.path.isfile(path):
            key = path if os.path.isabs(pattern) else os.path.relpath(path, ctx.project_dir)
            found.append(key)
    return sorted(found, key=natural_key)


#: The streaming parameter of file imports.
SETTLE_PARAM = Param(
    "settle", float, 5.0, unit="s", range=(0, None),
    help="when streaming, a file counts as complete once it has not changed for this long "
    "(and not between two polls)",
)


def stable_files(ctx: JobContext, keys: list[str], *, slot: str) -> list[str]:
    """When streaming, the complete files: unchanged since the last poll and for ``settle`` s.

    The sizes seen are kept in ``ctx.scratch[slot]``; ``ctx.scratch["waiting"]`` is set to the
    number of files still changing (the runner waits for them after a stop). Without
    streaming, every file is returned.
    """
    if not ctx.run.stream:
        return keys
    seen: dict[str, tuple[int, int]] = ctx.scratch.setdefault(slot, {})
    ready_before: set[str] = ctx.scratch.setdefault(slot + "_ready", set())
    settle = float(ctx.params.get("settle") or 0.0)
    now_s = time.time()
    ready, waiting = [], 0
    for key in keys:
        if key in ready_before:
            ready.append(key)
            continue
        try:
            st = ctx.abs(key).stat()
        except OSError:
            continue
        now = (st.st_size, st.st_mtime_ns)
        if st.st_size > 0 and seen.get(key) == now and now_s - st.st_mtime >= settle:
            ready.append(key)
            ready_before.add(key)
        else:
            waiting += 1
        seen[key] = now
    ctx.scratch["waiting"] = waiting
    return ready


def link_into(ctx: JobContext, key: str, subfolder: str, base: str) -> str:
    """Symlink the file ``key`` into ``<job>/<subfolder>/`` (atomically); return its rel. path.

    The link keeps the file's path below ``base`` (the pattern's fixed folder), so files of the
    same name in different folders do not collide. Files inside the project are linked with a
    relative target (the project can be moved), others with an absolute one.
    """
    source = ctx.abs(key)
    source_abs = Path(os.path.abspath(source))
    base_abs = Path(os.path.abspath(ctx.abs(base))) if base else None
    rel = (
        source_abs.relative_to(base_abs)
        if base_abs is not None and source_abs.is_relative_to(base_abs)
        else Path(source_abs.name)
    )
    link = ctx.path(subfolder, *rel.parts)
    link.parent.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.abspath(ctx.project_dir))
    target = (
        os.path.relpath(source_abs, link.parent)
        if source_abs.is_relative_to(root)
        else str(source_abs)
    )
    if not (link.is_symlink() and os.readlink(link) == target):
        tmp = link.with_name(f".{link.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        os.symlink(target, tmp)
        os.replace(tmp, link)
    return ctx.rel(subfolder, *rel.parts)
