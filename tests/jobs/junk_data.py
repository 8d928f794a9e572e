"""A 2D-classification data set with known labels: two molecules plus junk, extracted in a project.

Used by the class-selection tests and ``bench/bench_select.py``. Micrographs are simulated with
``cryospa simulate --level micrographs`` from two maps (the shipped LDH model and the real
beta-galactosidase map of shared/data) with a fraction of junk (aggregates, broken particles,
ice contamination); the particles are extracted at the true centres of the molecules *and* of the
junk, so the set holds exactly that fraction of junk, and every particle keeps its label
(1, 2: molecule; -1, -2, -3: junk type, as ``ground_truth/junk_true.star``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cryospa.io.coords import write_coordinates_star
from cryospa.io.star import RelionTable, joined, read_relion_star, write_relion_star
from cryospa.project.project import JobRecord, Project
from cryospa.project.runner import submit
from cryospa.project.schema import get_job_type

REPO = Path(__file__).resolve().parents[2]
BETAGAL = REPO.parent / "shared" / "data" / "maps" / "betagal_relion1x_test" / "ref_model.mrc"
if not BETAGAL.is_file():
    BETAGAL = Path("/work/shared/data/maps/betagal_relion1x_test/ref_model.mrc")

#: Label column added to the particles (not a RELION label; dropped before classification).
LABEL = "trueLabel"


def simulate_args(n_micrographs: int, per_micrograph: int, junk: float, seed: int) -> list[str]:
    """``cryospa simulate`` arguments of the data set (3.54 Å/px, 1024² micrographs)."""
    return ["--level", "micrographs", "--map", "builtin:ldh", "--map", str(BETAGAL),
            "--n_micrographs", str(n_micrographs), "--mic_size", "1024", "--angpix", "3.54",
            "--box", "64", "--particles_per_micrograph", str(per_micrograph),
            "--junk_fraction", str(junk), "--seed", str(seed)]


def _run(project: Project, job: str, params: dict[str, object],
         inputs: dict[str, list[str]] | None = None) -> JobRecord:
    record = submit(project, get_job_type(job), params, inputs or {})
    assert record.status == "succeeded", record.error
    return record


def _stems(names: pd.Series) -> list[str]:
    return [Path(n).stem for n in names]


def extract_with_labels(project: Project, sim: Path) -> tuple[JobRecord, np.ndarray]:
    """Import, true CTF, true + junk coordinates, extraction; (extract job, label per particle)."""
    (project.root / "sim").symlink_to(sim)
    info = json.loads((sim / "ground_truth" / "simulation.json").read_text())
    scope = info["microscope"]
    mics = _run(project, "import micrographs", {
        "micrographs": "sim/Micrographs/*.mrc", "angpix": info["pixel_size_angstrom"],
        "kv": scope["voltage_kv"], "cs": scope["cs_mm"], "q0": scope["amplitude_contrast"]})
    table = read_relion_star(project.root / mics.dir / "micrographs.star")
    truth = joined(read_relion_star(sim / "ground_truth" / "micrographs_ctf.star"))
    truth["stem"] = _stems(truth["rlnMicrographName"])
    data = table.data.copy()
    data["stem"] = _stems(data["rlnMicrographName"])
    data = data.merge(truth[["stem", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]],
                      on="stem")
    (project.root / "CtfTruth").mkdir()
    write_relion_star(project.root / "CtfTruth" / "micrographs_ctf.star",
                      RelionTable("micrographs", data.drop(columns="stem"), table.optics))

    parts = joined(read_relion_star(sim / "ground_truth" / "particles_true.star"))
    junk = read_relion_star(sim / "ground_truth" / "junk_true.star").data
    both = pd.concat([
        pd.DataFrame({"stem": _stems(parts["rlnMicrographName"]),
                      "rlnCoordinateX": parts["rlnCoordinateX"],
                      "rlnCoordinateY": parts["rlnCoordinateY"],
                      LABEL: parts["rlnClassNumber"].astype(int)}),
        pd.DataFrame({"stem": _stems(junk["rlnMicrographName"]),
                      "rlnCoordinateX": junk["rlnCoordinateX"],
                      "rlnCoordinateY": junk["rlnCoordinateY"],
                      LABEL: junk["rlnClassNumber"].astype(int)}),
    ], ignore_index=True)
    folder = project.root / "Picks"
    folder.mkdir()
    for stem, rows in both.groupby("stem"):
        write_coordinates_star(folder / f"{stem}_all.star",
                               rows[["rlnCoordinateX", "rlnCoordinateY"]].reset_index(drop=True))
    coords = _run(project, "import coordinates", {"coords": "Picks/*_all.star"},
                  {"mics": [mics.name]})
    ext = _run(project, "extract", {"box": 64}, {"micrographs": ["CtfTruth/micrographs_ctf.star"],
                                                  "coordinates": [coords.name]})
    out = read_relion_star(project.root / ext.dir / "particles.star").data
    key = pd.DataFrame({"stem": _stems(out["rlnMicrographName"]),
                        "x": out["rlnCoordinateX"].round(3), "y": out["rlnCoordinateY"].round(3)})
    both["x"], both["y"] = both["rlnCoordinateX"].round(3), both["rlnCoordinateY"].round(3)
    merged = key.merge(both[["stem", "x", "y", LABEL]], on=["stem", "x", "y"], how="left",
                       validate="one_to_one")
    labels = merged[LABEL].to_numpy()
    assert not np.isnan(labels.astype(float)).any(), "an extracted particle matches no coordinate"
    return ext, labels.astype(int)
