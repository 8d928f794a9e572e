"""Benchmark: junk rejection by 2D classification + ``cryospa select --auto``, ours and RELION's.

Not a test: simulates micrographs of two molecules (LDH and the real beta-galactosidase map)
with 15 % junk (aggregates, broken particles, ice contamination), extracts every true particle
and junk centre (labels known; see tests/jobs/junk_data.py), classifies them with
``cryospa class2d`` and with ``relion_refine`` 2D (same classes, iterations, T, mask, sampling,
threads), runs ``cryospa select --auto`` on both classifications (select reads RELION's
optimiser STAR file), and prints a Markdown table: wall time of the classification, fraction of
the junk in rejected classes, fraction of the junk not in the selected particles (rejected
classes, and the broken particles ``--particle-sigma`` drops from kept classes; per junk type),
fraction of the molecules kept, purity of the kept
classes (the smallest over kept classes holding >= 1 % of the particles, molecules only), and the
resolution at which the kept class averages match the true projections of their members (FRC
0.5, median over kept classes; the junk members are left out of the true projections).
Usage::

    python bench/bench_select.py [--micrographs 30] [--per-micrograph 100] [--junk 0.15]
        [--classes 20] [--iterations 25] [--threads 2] [--class-seed 1] [--skip-relion]
        [--work DIR]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _rows import add_json_option, side, write_rows  # noqa: E402
from _rows import row as result_row  # noqa: E402
from _run import timed  # noqa: E402

from cryospa.cli.main import main as cli  # noqa: E402
from cryospa.io.mrc import read_mrc  # noqa: E402
from cryospa.io.star import (  # noqa: E402
    RelionTable,
    read_relion_star,
    read_star,
    write_relion_star,
)
from cryospa.project.project import Project  # noqa: E402
from cryospa.project.runner import submit  # noqa: E402
from cryospa.project.schema import get_job_type  # noqa: E402
from tests.jobs.junk_data import LABEL, extract_with_labels, simulate_args  # noqa: E402
from tests.jobs.test_class2d import class_purity, class_vs_truth_resolution  # noqa: E402

JUNK_NAMES = {-1: "aggregates", -2: "broken", -3: "ice"}


def prepare(work: Path, args: argparse.Namespace) -> tuple[Project, str, np.ndarray, Path]:
    """Simulated micrographs -> project with extracted, labelled particles."""
    sim = work / "sim"
    if not (sim / "micrographs.star").is_file():
        if sim.exists():
            shutil.rmtree(sim)
        assert cli(["simulate", *simulate_args(args.micrographs, args.per_micrograph, args.junk,
                                                args.seed), "--o", str(sim)]) == 0
    proj_dir = work / "P"
    if proj_dir.exists():
        shutil.rmtree(proj_dir)
    project = Project.init(proj_dir)
    ext, labels = extract_with_labels(project, sim)
    return project, ext.name, labels, sim


def truth_star(project: Project, ext_dir: str, labels: np.ndarray, sim: Path) -> Path:
    """The extracted particles with their true angles / origins (junk rows get class 0)."""
    table = read_relion_star(project.root / ext_dir / "particles.star", "particles")
    truth = read_relion_star(sim / "ground_truth" / "particles_true.star", "particles").data
    data = table.data.copy()
    data[LABEL] = labels
    keys = ["rlnCoordinateX", "rlnCoordinateY"]
    stem = [Path(n).stem for n in data["rlnMicrographName"]]
    tstem = [Path(n).stem for n in truth["rlnMicrographName"]]
    key = {(s, round(x, 3), round(y, 3)): i for i, (s, x, y) in
           enumerate(zip(tstem, truth[keys[0]], truth[keys[1]], strict=True))}
    cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
            "rlnClassNumber"]
    for c in cols:
        data[c] = 0.0
    for row, (s, x, y) in enumerate(zip(stem, data[keys[0]], data[keys[1]], strict=True)):
        i = key.get((s, round(x, 3), round(y, 3)))
        if i is not None:
            data.loc[row, cols] = truth.loc[i, cols].to_numpy()
    data["rlnClassNumber"] = data["rlnClassNumber"].astype(int)
    out = project.root / "truth_particles.star"
    write_relion_star(out, RelionTable("particles", data.drop(columns=[LABEL]), table.optics))
    return out


def evaluate(project: Project, optimiser: str, labels: np.ndarray, truth: Path,
             sim: Path) -> dict[str, float]:
    """Run ``select --auto`` on a classification and measure junk rejection and quality."""
    sel = submit(project, get_job_type("select"), {"auto": True}, {"classes_from": [optimiser]})
    assert sel.status == "succeeded", sel.error
    general = read_relion_star(project.root / sel.dir / "class_averages.star").data
    kept = set(general["rlnClassNumber"].astype(int))
    opt = read_star(project.root / optimiser)["optimiser_general"].iloc[0]
    data_path = project.root / str(opt["rlnExperimentalDataStarFile"])
    data = read_relion_star(data_path, "particles").data
    assigned = data["rlnClassNumber"].to_numpy(dtype=int)
    in_kept = np.isin(assigned, list(kept))
    chosen = read_relion_star(project.root / sel.dir / "particles.star", "particles").data
    selected = np.isin(data["rlnImageName"].to_numpy(), chosen["rlnImageName"].to_numpy())
    junk, molecules = labels < 0, labels > 0
    out: dict[str, float] = {
        "junk_rejected_classes": float((junk & ~in_kept).sum() / max(1, junk.sum())),
        "junk_rejected": float((junk & ~selected).sum() / max(1, junk.sum())),
        "molecules_kept": float((molecules & selected).sum() / max(1, molecules.sum())),
        "molecules_in_kept_classes": float((molecules & in_kept).sum() / max(1, molecules.sum())),
        "kept_classes": len(kept),
    }
    for code, name in JUNK_NAMES.items():
        sel_j = labels == code
        out[f"rejected_{name}"] = float((sel_j & ~selected).sum() / max(1, sel_j.sum()))
    good = molecules & in_kept
    purity = class_purity(assigned[good], labels[good])
    out["purity_min"] = min(p for c, (n, p) in purity.items() if n >= 0.01 * assigned.size)
    model = read_star(project.root / str(opt["rlnModelStarFile"]))
    stack = str(model["model_classes"]["rlnReferenceImage"].iloc[0]).split("@")[1]
    images, _ = read_mrc(project.root / stack)
    # FRC of each kept class against the true projections of its molecule members
    tmp = project.root / "frc_members.star"
    table = read_relion_star(data_path, "particles")
    members = table.data[good].reset_index(drop=True)
    write_relion_star(tmp, RelionTable("particles", members, table.optics))
    truth_table = read_relion_star(truth, "particles")
    tdata = truth_table.data[good].reset_index(drop=True)
    tmp_truth = project.root / "frc_truth.star"
    write_relion_star(tmp_truth, RelionTable("particles", tdata, truth_table.optics))
    maps = [read_mrc(sim / "ground_truth" / f"map_class00{i}.mrc")[0] for i in (1, 2)]
    apix = float(table.optics["rlnImagePixelSize"].iloc[0])
    res = class_vs_truth_resolution(images, tmp, tmp_truth, maps, apix, max_members=300)
    out["frc_median"] = statistics.median(res.values())
    out["frc_best"] = min(res.values())
    # per molecule (the beta-gal map has no signal beyond about 45 Å, LDH has)
    for code, name in ((1, "ldh"), (2, "betagal")):
        mine = [r for c, r in res.items()
                if np.bincount(labels[good & (assigned == c)], minlength=3).argmax() == code]
        out[f"frc_{name}"] = statistics.median(mine) if mine else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micrographs", type=int, default=30)
    parser.add_argument("--per-micrograph", type=int, default=100)
    parser.add_argument("--junk", type=float, default=0.15)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--diameter", type=float, default=200.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11, help="simulation seed")
    parser.add_argument("--class-seed", type=int, default=1,
                        help="random seed of both classifications")
    parser.add_argument("--skip-relion", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    add_json_option(parser)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_select_"))
    work.mkdir(parents=True, exist_ok=True)
    project, ext, labels, sim = prepare(work, args)
    truth = truth_star(project, f"Extract/{ext}", labels, sim)
    print(f"{labels.size} particles, junk {int((labels < 0).sum())} "
          f"({', '.join(f'{n} {int((labels == c).sum())}' for c, n in JUNK_NAMES.items())})")
    rows = {}
    cmd = [sys.executable, "-m", "cryospa", "class2d", "--particles", ext, "--classes",
           str(args.classes), "--iterations", str(args.iterations), "--particle-diameter",
           str(args.diameter), "--threads", str(args.threads), "--device", "cpu", "--seed",
           str(args.class_seed)]
    wall, rss = timed(cmd, project.root, args.threads)
    c2d = max(j.id for j in project.jobs())
    rows["cryospa"] = {"wall": wall, "rss": rss, **evaluate(
        project, f"Class2D/job{c2d:03d}/run_optimiser.star", labels, truth, sim)}
    if not args.skip_relion and shutil.which("relion_refine"):
        (project.root / "Relion").mkdir(exist_ok=True)
        cmd = ["relion_refine", "--i", f"Extract/{ext}/particles.star", "--o", "Relion/run",
               "--K", str(args.classes), "--iter", str(args.iterations), "--tau2_fudge", "2",
               "--particle_diameter", str(args.diameter), "--psi_step", "12",
               "--offset_range", "5", "--offset_step", "2", "--oversampling", "1", "--ctf",
               "--zero_mask", "--flatten_solvent", "--j", str(args.threads),
               "--dont_combine_weights_via_disc", "--pool", "30", "--random_seed",
               str(args.class_seed)]
        wall, rss = timed(cmd, project.root, args.threads)
        rows["RELION 3.1"] = {"wall": wall, "rss": rss, **evaluate(
            project, f"Relion/run_it{args.iterations:03d}_optimiser.star", labels, truth, sim)}
    print(f"\n{labels.size} particles (box 64, 3.54 Å/px, {100 * args.junk:.0f} % junk), "
          f"K={args.classes}, {args.iterations} iterations, {args.threads} threads; "
          "selection: cryospa select --auto on each classification\n")
    print("| classification | wall | peak memory | junk in rejected classes | junk not selected "
          "(aggregates / broken / ice) | molecules in kept classes / selected | purity of kept "
          "classes | FRC 0.5 vs truth (median / best; median LDH / beta-gal classes) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['wall']:.0f} s | {r['rss']:.0f} MB | "
              f"{100 * r['junk_rejected_classes']:.0f} % | "
              f"{100 * r['junk_rejected']:.0f} % ({100 * r['rejected_aggregates']:.0f} / "
              f"{100 * r['rejected_broken']:.0f} / {100 * r['rejected_ice']:.0f} %) | "
              f"{100 * r['molecules_in_kept_classes']:.1f} / {100 * r['molecules_kept']:.1f} % | "
              f"{r['purity_min']:.3f} | {r['frc_median']:.1f} / {r['frc_best']:.1f} Å; "
              f"{r['frc_ldh']:.1f} / {r['frc_betagal']:.1f} Å |")

    def figures(r: dict[str, float] | None) -> dict[str, object] | None:
        if r is None:
            return None
        return side(r["wall"], r["rss"], f"junk rejected {100 * r['junk_rejected']:.0f} % "
                    f"({100 * r['junk_rejected_classes']:.0f} % by classes), molecules kept "
                    f"{100 * r['molecules_kept']:.0f} %, kept purity {r['purity_min']:.3f}")

    write_rows(args.json, [result_row(
        "2D classification + select --auto (junk)", f"{labels.size} particles, "
        f"{100 * args.junk:.0f} % junk, K={args.classes}, {args.iterations} it",
        figures(rows["cryospa"]), figures(rows.get("RELION 3.1")),  # type: ignore[arg-type]
        relion_program="relion_refine 2D (+ cryospa select)", note="classification")])


if __name__ == "__main__":
    main()
