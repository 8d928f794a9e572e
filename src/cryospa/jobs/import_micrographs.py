"""``cryospa import micrographs``: register micrographs (MRC) made elsewhere as a MicrographSet.

Per micrograph (one item each): read the MRC header (it must be one 2D image) and symlink the
file into the job's ``Micrographs/`` folder. ``finalize`` writes ``micrographs.star`` in RELION
3.1 form: ``data_optics`` (name, pixel size as ``rlnMicrographPixelSize`` and
``rlnMicrographOriginalPixelSize``, voltage, Cs, amplitude contrast) and ``data_micrographs``
(``rlnMicrographName``, ``rlnOpticsGroup``). ``--stream`` watches the pattern for new files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from cryospa.errors import InputFileError
from cryospa.io.mrc import read_mrc_header
from cryospa.io.star import RelionTable, write_relion_star
from cryospa.jobs._importing import (
    OPTICS_PARAMS,
    SETTLE_PARAM,
    link_into,
    list_pattern,
    optics_row,
    pattern_base,
    stable_files,
)
from cryospa.project.nodes import NodeType
from cryospa.project.schema import JobContext, Output, Param, PerItemJob, register

__all__ = ["ImportMicrographs"]

_DESCRIPTION = __doc__ or ""


@register
class ImportMicrographs(PerItemJob):
    """Import micrographs as a MicrographSet (see the module docstring)."""

    name = "import micrographs"
    folder = "Import"
    relion_type = 0  # PROC_IMPORT
    description = _DESCRIPTION
    params = (
        Param("micrographs", str, None, required=True, kind="pattern", metavar="PATTERN",
              help="micrograph files (.mrc), a pattern relative to the project, e.g. "
              "'Micrographs/*.mrc' (quote it)", relion="fn_in_raw"),
        *OPTICS_PARAMS,
        SETTLE_PARAM,
    )
    outputs = (Output("micrographs", NodeType.MICROGRAPHS, "micrographs.star"),)
    citations = ("Scheres (2012) J. Struct. Biol. 180:519-530 (RELION)",)

    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """RELION 3.1 import job options for its GUI."""
        return {"do_raw": "Yes", "is_multiframe": "No", "do_other": "No"}

    def list_items(self, ctx: JobContext) -> list[str]:
        """Files matching the pattern (when streaming: those no longer growing)."""
        return stable_files(ctx, list_pattern(ctx, ctx.params["micrographs"]), slot="mics")

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Check the header and link the micrograph."""
        info = read_mrc_header(ctx.abs(key))
        shape = info.shape
        if len(shape) == 3 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) != 2:
            raise InputFileError(key, f"a micrograph must be one 2D image, found shape {shape}",
                                 "import movies with `cryospa import movies`")
        name = link_into(ctx, key, "Micrographs", pattern_base(ctx.params["micrographs"]))
        return {"micrograph": name, "nx": int(shape[1]), "ny": int(shape[0])}

    def finalize(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> None:
        """Write ``micrographs.star``."""
        row = optics_row(ctx.params, "rlnMicrographOriginalPixelSize")
        row["rlnMicrographPixelSize"] = float(ctx.params["angpix"])
        data = pd.DataFrame(
            {
                "rlnMicrographName": [r["micrograph"] for _, r in results],
                "rlnOpticsGroup": pd.Series([1] * len(results), dtype="int64"),
            }
        )
        write_relion_star(
            ctx.path("micrographs.star"),
            RelionTable("micrographs", data, pd.DataFrame([row])),
        )

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``12 micrographs, 1024 x 1024, 1.77 Å/px``."""
        sizes = sorted({(r["nx"], r["ny"]) for _, r in results})
        size_text = ", ".join(f"{nx} x {ny}" for nx, ny in sizes)
        return f"{len(results)} micrographs, {size_text}, {ctx.params['angpix']:g} Å/px"
