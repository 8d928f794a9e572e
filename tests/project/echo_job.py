"""A test per-item job reading a MovieSet: one small text file per movie (a stand-in for motion
correction in streaming tests). Importing this module registers the job type ``test echo``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cryospa.io._files import write_text_atomic
from cryospa.io.star import read_relion_star, write_star
from cryospa.project.nodes import NodeType
from cryospa.project.schema import Input, JobContext, Output, PerItemJob, register


@register
class Echo(PerItemJob):
    """One text file per movie of the input set (test job)."""

    name = "test echo"
    folder = "Echo"
    relion_type = 99
    description = "Writes one text file per movie (a test of streaming between jobs)."
    inputs = (Input("movies", (NodeType.MOVIES,), help="movies"),)
    outputs = (Output("list", NodeType.FSC, "echo.star"),)

    def list_items(self, ctx: JobContext) -> list[str]:
        star = ctx.abs(ctx.input("movies").path)
        if not star.is_file():
            return []
        return read_relion_star(star, "movies").data["rlnMicrographMovieName"].tolist()

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        out = ctx.path(Path(key).stem + ".txt")
        write_text_atomic(out, key + "\n")
        return {"file": ctx.rel(out.name)}

    def finalize(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> None:
        write_star(ctx.path("echo.star"),
                   {"echo": pd.DataFrame({"rlnMicrographName": [k for k, _ in results]})})
