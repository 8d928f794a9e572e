"""``cryospa import particles``: register a RELION particles STAR file (and its stacks).

Before anything runs, every stack named in ``rlnImageName`` must exist and hold the image
numbers used (the message names the first missing or short stack). Image paths are resolved as
RELION does, against the project folder, and else against the STAR file's own folder; the job's
``particles.star`` (RELION 3.1, with ``data_optics``; RELION 3.0 files are upgraded) names every
stack relative to the project, so it works from the project as RELION expects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryospa.errors import InputFileError
from cryospa.io.mrc import format_image_name, parse_image_name, read_mrc_header
from cryospa.io.star import RelionTable, read_relion_star, write_relion_star
from cryospa.project.nodes import NodeType
from cryospa.project.schema import (
    JobContext,
    Output,
    Param,
    PerItemJob,
    ResolvedInput,
    RunOptions,
    register,
)

__all__ = ["ImportParticles", "resolve_stacks"]

_DESCRIPTION = __doc__ or ""


def resolve_stacks(table: RelionTable, star: Path, project_dir: Path) -> dict[str, Path]:
    """Each stack of ``rlnImageName`` -> its file, checked to exist and be long enough.

    Raises
    ------
    InputFileError
        A stack is missing (the message names it and where it was looked for) or has fewer
        images than the largest index used.

    """
    if "rlnImageName" not in table.data.columns:
        raise InputFileError(star, "no rlnImageName column", "give a particles STAR file")
    highest: dict[str, int] = {}
    for name in table.data["rlnImageName"].astype(str):
        index, stack = parse_image_name(name)
        i = index + 1 if index is not None else 1  # images needed in the stack
        if i > highest.get(stack, 0):
            highest[stack] = i
    found: dict[str, Path] = {}
    for stack, n in highest.items():
        candidates = [Path(stack)] if os.path.isabs(stack) else [
            project_dir / stack, star.parent / stack]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            where = " or ".join(str(c) for c in candidates)
            raise InputFileError(
                stack, f"particle stack named in {star.name} not found (looked for {where})",
                "image paths are relative to the project (as RELION) or to the STAR file",
            )
        info = read_mrc_header(path)
        count = info.shape[0] if len(info.shape) == 3 else 1
        if count < n:
            raise InputFileError(
                path, f"stack has {count} images but {star.name} uses image {n}",
                "the stack is truncated or the STAR file belongs to another stack",
            )
        found[stack] = path
    return found


@register
class ImportParticles(PerItemJob):
    """Import a RELION particles STAR file as a ParticleSet (see the module docstring)."""

    name = "import particles"
    folder = "Import"
    relion_type = 0  # PROC_IMPORT
    description = _DESCRIPTION
    params = (
        Param("particles", str, None, required=True, kind="file", metavar="STAR",
              help="RELION particles STAR file (3.0 or 3.1+)", relion="fn_in_other"),
    )
    outputs = (Output("particles", NodeType.PARTICLES, "particles.star"),)
    citations = ("Scheres (2012) J. Struct. Biol. 180:519-530 (RELION)",)
    streamable = False

    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """RELION 3.1 import job options for its GUI."""
        return {"do_raw": "No", "do_other": "Yes",
                "node_type": "Particles STAR file (.star)"}

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """The STAR file must parse and every stack must exist and be long enough."""
        star = _abs(project_dir, params["particles"])
        resolve_stacks(read_relion_star(star, "particles"), star, project_dir)

    def list_items(self, ctx: JobContext) -> list[str]:
        """One item: the file."""
        return [ctx.params["particles"]]

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Rewrite image names relative to the project and write ``particles.star``."""
        star = ctx.abs(key)
        table = read_relion_star(star, "particles")
        stacks = resolve_stacks(table, star, ctx.project_dir)
        root = Path(os.path.abspath(ctx.project_dir))
        renamed = {}
        for stack, path in stacks.items():
            absolute = Path(os.path.abspath(path))
            renamed[stack] = (
                str(absolute.relative_to(root)) if absolute.is_relative_to(root) else str(absolute)
            )
        names = []
        for name in table.data["rlnImageName"].astype(str):
            index, stack = parse_image_name(name)
            names.append(format_image_name(index or 0, renamed[stack]))
        table.data["rlnImageName"] = names
        write_relion_star(ctx.path("particles.star"), table)
        size = int(table.optics["rlnImageSize"].iloc[0]) if "rlnImageSize" in table.optics else 0
        angpix = (float(table.optics["rlnImagePixelSize"].iloc[0])
                  if "rlnImagePixelSize" in table.optics else 0.0)
        return {"particles": len(table.data), "stacks": len(stacks), "box": size,
                "angpix": angpix, "optics_groups": len(table.optics)}

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``2000 particles in 4 stacks, 64 px, 3 Å/px, 1 optics group``."""
        r = results[0][1]
        groups = r["optics_groups"]
        return (f"{r['particles']} particles in {r['stacks']} stacks, {r['box']} px, "
                f"{r['angpix']:g} Å/px, {groups} optics group{'s' if groups != 1 else ''}")


def _abs(project_dir: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else project_dir / p
