"""Machine-readable benchmark results: the rows ``bench/run_all.py`` collects into one table.

Each benchmark script takes ``--json FILE`` and writes there a list of rows, one per compared
step::

    {"step": "motion correction, global", "data": "2 movies 1024 x 1024 x 24",
     "ours": {"wall_s": 3.1, "peak_mb": 812, "accuracy": "global shift RMS 0.05 px"},
     "relion": {...} or null, "relion_program": "relion_run_motioncorr --use_own",
     "note": "wall per movie"}

``wall_s`` is the wall time of the whole step as the row's ``note`` says (per movie,
per micrograph, or the whole run); ``relion`` is null when RELION has no equivalent or is not
installed (``relion_program`` then says which).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["add_json_option", "row", "side", "write_rows"]


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """``--json FILE``: also write the results as rows for ``bench/run_all.py``."""
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the results as JSON rows (for bench/run_all.py)")


def side(wall_s: float, peak_mb: float | None, accuracy: str) -> dict[str, Any]:
    """One program's figures: wall time (s), peak memory (MB, None if not measured), accuracy."""
    return {"wall_s": float(wall_s), "peak_mb": None if peak_mb is None else float(peak_mb),
            "accuracy": accuracy}


def row(step: str, data: str, ours: dict[str, Any], relion: dict[str, Any] | None = None, *,
        relion_program: str = "", note: str = "") -> dict[str, Any]:
    """One compared step (see the module docstring)."""
    return {"step": step, "data": data, "ours": ours, "relion": relion,
            "relion_program": relion_program, "note": note}


def write_rows(path: Path | None, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` to ``path`` as JSON (nothing when ``path`` is None)."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
