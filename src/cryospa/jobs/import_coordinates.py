"""``cryospa import coordinates``: coordinates (RELION STAR, EMAN .box) for a MicrographSet.

Each coordinate file is matched to the micrograph of the input MicrographSet whose file name
(without extension) starts its own name (``mic012_autopick.star`` and ``mic012.box`` go with
``.../mic012.mrc``; the longest match wins). Per file (one item each) the coordinates are
written as a RELION coordinate STAR file laid out as RELION 3.1 extraction looks for them:
``<job>/<micrograph path without extension, less its leading <Type>/jobNNN/>_coords.star``
(``--coord_dir <job>/ --coord_suffix _coords.star``). ``coordinates.star`` lists micrograph ->
coordinate file
(``rlnMicrographName``, ``rlnMicrographCoordinates``, as RELION 4 writes it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cryospa.errors import InputFileError
from cryospa.io._files import write_text_atomic
from cryospa.io.coords import read_coordinates, write_coordinates_star
from cryospa.io.star import read_relion_star, write_star
from cryospa.jobs._coords import coordinate_file_name
from cryospa.jobs._importing import SETTLE_PARAM, list_pattern, stable_files
from cryospa.jobs._sets import read_input_set
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

__all__ = ["ImportCoordinates"]

_DESCRIPTION = __doc__ or ""

SUFFIX = "_coords.star"


def _micrograph_for(coord_key: str, stems: dict[str, str]) -> str | None:
    stem = Path(coord_key).name
    best = None
    for mic_stem, mic in stems.items():
        if stem.startswith(mic_stem) and (best is None or len(mic_stem) > len(best[0])):
            rest = stem[len(mic_stem):]
            if rest[:1] in ("", "_", ".", "-"):
                best = (mic_stem, mic)
    return best[1] if best else None


def _stems(ctx_or_dir: Path, star: str) -> dict[str, str]:
    path = Path(star) if Path(star).is_absolute() else ctx_or_dir / star
    table = read_relion_star(path, "micrographs")
    return {Path(str(m)).stem: str(m) for m in table.data["rlnMicrographName"]}


@register
class ImportCoordinates(PerItemJob):
    """Import coordinate files for a MicrographSet (see the module docstring)."""

    name = "import coordinates"
    folder = "Import"
    relion_type = 0  # PROC_IMPORT
    description = _DESCRIPTION
    inputs = (Input("mics", (NodeType.MICROGRAPHS,), help="the micrographs the coordinates "
                    "belong to", relion="fn_in_other"),)
    params = (
        Param("coords", str, None, required=True, kind="pattern", metavar="PATTERN",
              help="coordinate files (.star or .box), a pattern relative to the project, e.g. "
              "'Picks/*_autopick.star' (quote it)"),
        SETTLE_PARAM,
    )
    outputs = (Output("coordinates", NodeType.COORDINATES, "coordinates.star"),)
    citations = ("Scheres (2012) J. Struct. Biol. 180:519-530 (RELION)",)

    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """RELION 3.1 import job options for its GUI."""
        return {"do_raw": "No", "do_other": "Yes",
                "node_type": "Particle coordinates (*.box, *_pick.star)"}

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """Without streaming, at least one coordinate file must match a micrograph."""
        if run.stream:
            return
        from cryospa.project.schema import JobContext as Ctx

        ctx = Ctx(project_dir, 0, "", dict(params), dict(inputs), run)
        stems = _stems(project_dir, inputs["mics"][0].path)
        files = list_pattern(ctx, params["coords"])
        if not any(_micrograph_for(f, stems) for f in files):
            example = ", ".join(list(stems)[:3])
            raise InputFileError(
                params["coords"],
                f"none of the {len(files)} coordinate files matches a micrograph of "
                f"{inputs['mics'][0].path} (e.g. {example})",
                "coordinate file names must start with the micrograph's name",
            )

    def list_items(self, ctx: JobContext) -> list[str]:
        """Coordinate files that match a micrograph."""
        stems = ctx.scratch.get("stems")
        if stems is None or ctx.run.stream:
            table = read_input_set(ctx, "mics", "micrographs",
                                   "give the output of import micrographs, motioncorr or ctffind")
            if table is None:  # streaming: the micrographs are not written yet
                return []
            stems = ctx.scratch["stems"] = {Path(str(m)).stem: str(m)
                                            for m in table.data["rlnMicrographName"]}
        files = stable_files(ctx, list_pattern(ctx, ctx.params["coords"]), slot="coords")
        return [f for f in files if _micrograph_for(f, stems)]

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Read one coordinate file and write it in RELION's layout."""
        stems = ctx.scratch.get("stems") or _stems(ctx.project_dir, ctx.input("mics").path)
        mic = _micrograph_for(key, stems)
        if mic is None:
            raise InputFileError(key, "matches no micrograph of the input set")
        df = read_coordinates(ctx.abs(key))
        keep = [c for c in df.columns if c.startswith("rln")]
        rel = coordinate_file_name(mic, SUFFIX)
        out = ctx.path(*Path(rel).parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_coordinates_star(out, df[keep])
        return {"micrograph": mic, "coordinates": ctx.rel(*Path(rel).parts), "n": len(df)}

    def finalize(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> None:
        """Write ``coordinates.star`` and RELION 3.1's ``coords_suffix`` file."""
        table = pd.DataFrame(
            {
                "rlnMicrographName": [r["micrograph"] for _, r in results],
                "rlnMicrographCoordinates": [r["coordinates"] for _, r in results],
            }
        )
        write_star(ctx.path("coordinates.star"), {"coordinate_files": table})
        write_text_atomic(ctx.path("coords_suffix" + SUFFIX), ctx.input("mics").path + "\n")

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``1234 particles on 12 micrographs``."""
        total = sum(r["n"] for _, r in results)
        return f"{total} particles on {len(results)} micrographs"
