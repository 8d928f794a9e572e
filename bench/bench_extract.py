"""Benchmark: particle extraction, `cryospa extract` vs RELION 3.1 `relion_preprocess --extract`.

Not a test: prints wall time per micrograph, peak memory (max RSS of the process) and accuracy
for both programs on the same micrographs and coordinates, as Markdown tables. Usage::

    python bench/bench_extract.py [--sim DIR] [--n_micrographs 12] [--box 128] [--rescale 96]
                                  [--threads 2] [--keep DIR]

Simulated data (``cryospa simulate --level micrographs``, made unless ``--sim`` names an
existing output): the tutorial's acquisition on a laptop scale, 1024² px micrographs at
1.77 Å/px, 200 kV, 30.65 e/Å², 60 D2 particles (LDH) per micrograph; true coordinates and the
true CTF (as a CTF job's ``micrographs_ctf.star``). Both programs extract every particle at
the true coordinates with a ``--box`` px box re-scaled to ``--rescale`` px, normalised (background
outside 75 % of the box, ramp removed) and inverted; RELION with the ``--bg_radius`` its GUI
computes. Accuracy: the per-particle correlation of the two programs' images (all Fourier terms,
and without the Nyquist row / column, where the two Fourier re-scalers differ by design: RELION
keeps the +N/2 terms, cryospa folds +N/2 and -N/2 together as scipy does), and
for each program's stack the resolution at FSC 0.5 against the true map of a CTF-corrected
reconstruction with the true angles and D2 symmetry (``cryospa reconstruct`` for both, so only
the extraction differs), in Å and in pixel sizes of the particles.

Real data: the same comparison (images only) on ``shared/data/micrographs/fei-extended.mrc``
(3710 x 3838 px, uint16, 0.854 Å/px) at 300 random coordinates, 256 px boxes re-scaled to 64.

Wall times include each program's start-up (Python and torch import for cryospa, about 2 s)
and were measured on a shared 2-core machine: treat them as indicative.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _rows import add_json_option, row, side, write_rows  # noqa: E402
from _run import timed  # noqa: E402

from bench.bench_projection import fsc05  # noqa: E402
from cryospa.core.fourier import fourier_rescale  # noqa: E402
from cryospa.io.coords import write_coordinates_star  # noqa: E402
from cryospa.io.mrc import read_mrc, read_mrc_header  # noqa: E402
from cryospa.io.star import (  # noqa: E402
    RelionTable,
    joined,
    read_relion_star,
    read_star,
    write_relion_star,
)
from cryospa.jobs.extract import background_radius_px  # noqa: E402
from cryospa.jobs.reconstruct import run_reconstruct  # noqa: E402
from cryospa.project.project import Project  # noqa: E402
from cryospa.project.runner import submit  # noqa: E402
from cryospa.project.schema import get_job_type  # noqa: E402

CRYOSPA = [sys.executable, "-m", "cryospa"]
REAL_MICROGRAPH = REPO.parent / "shared" / "data" / "micrographs" / "fei-extended.mrc"


def _run_job(project: Project, job: str, params: dict[str, object],
             inputs: dict[str, list[str]]) -> str:
    record = submit(project, get_job_type(job), params, inputs)
    if record.status != "succeeded":
        raise RuntimeError(f"{job} failed: {record.error}")
    return record.name


def _stacks(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: read_mrc(p)[0] for p in sorted(folder.rglob("*.mrcs"))}


def _agreement(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> tuple[float, ...]:
    """Per-particle correlations: (min, median) with all terms, (min, median) without Nyquist."""
    full, no_nyquist = [], []
    for name, a in ours.items():
        b = theirs[name]
        if a.shape != b.shape:
            raise RuntimeError(f"{name}: stacks of shapes {a.shape} and {b.shape}")
        n = a.shape[-1]
        for x, y in zip(a, b, strict=True):
            full.append(np.corrcoef(x.ravel(), y.ravel())[0, 1])
        fa, fb = np.fft.rfft2(a), np.fft.rfft2(b)
        for f in (fa, fb):
            f[:, n // 2, :] = 0
            f[:, :, n // 2] = 0
        xa, xb = (np.fft.irfft2(f, s=(n, n)).reshape(len(f), -1) for f in (fa, fb))
        no_nyquist += [np.corrcoef(x, y)[0, 1] for x, y in zip(xa, xb, strict=True)]
    return min(full), float(np.median(full)), min(no_nyquist), float(np.median(no_nyquist))


def _with_truth(particles: Path, sim: Path, out: Path) -> Path:
    """The particles joined with their true angles and origins (by micrograph and coordinates)."""
    table = read_relion_star(particles)
    data = table.data.copy()
    truth = joined(read_relion_star(sim / "ground_truth" / "particles_true.star"))
    keys = ["stem", "rlnCoordinateX", "rlnCoordinateY"]
    for df in (data, truth):
        df["stem"] = [Path(n).stem for n in df["rlnMicrographName"]]
        df["rlnCoordinateX"] = df["rlnCoordinateX"].astype(float).round(4)
        df["rlnCoordinateY"] = df["rlnCoordinateY"].astype(float).round(4)
    cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"]
    data = data.drop(columns=[c for c in cols if c in data.columns])
    merged = data.merge(truth[keys + cols], on=keys, how="inner", validate="one_to_one")
    write_relion_star(out, RelionTable("particles", merged.drop(columns="stem"), table.optics))
    return out


def _fsc_to_truth(particles: Path, sim: Path, work: Path, label: str) -> tuple[float, float]:
    """(resolution in Å, in pixel sizes) at FSC 0.5 of a reconstruction against the true map.

    ``work`` is the project folder the image names are relative to.
    """
    posed = _with_truth(particles, sim, work / f"{label}_posed.star")
    rec_path = work / f"{label}_rec.mrc"
    result = run_reconstruct(posed, rec_path, ctf=True, symmetry="D2", progress=False)
    rec, _ = read_mrc(rec_path)
    true, header = read_mrc(sim / "ground_truth" / "map_class001.mrc")
    apix_true = header.voxel_size_angstrom[0]
    apix = result.pixel_size_angstrom
    n_true = round(true.shape[0] * apix_true / apix)
    if n_true != true.shape[0]:
        true = fourier_rescale(torch.from_numpy(true), (n_true,) * 3).numpy()
    if rec.shape[0] > n_true:  # compare inside the true map's box
        s = rec.shape[0] // 2 - n_true // 2
        rec = rec[s : s + n_true, s : s + n_true, s : s + n_true]
    res = fsc05(rec, true, apix)
    return res, res / apix


def _warm_seconds(project: Project, command: list[str]) -> float:
    """Seconds of the same extraction run again in this process (no start-up)."""
    args = command[command.index("extract") + 1 :]
    options = dict(zip(args[::2], args[1::2], strict=True))
    params: dict[str, object] = {k[2:]: int(v) if v.isdigit() else v for k, v in options.items()
                                 if k not in ("--micrographs", "--coordinates", "--project")}
    inputs = {"micrographs": [options["--micrographs"]], "coordinates": [options["--coordinates"]]}
    t = time.perf_counter()
    _run_job(project, "extract", params, inputs)
    return time.perf_counter() - t


#: The rows for ``--json`` (bench/run_all.py).
JSON_ROWS: list[dict[str, object]] = []


def simulated(args: argparse.Namespace, work: Path) -> Path:
    if args.sim and (Path(args.sim) / "ground_truth").is_dir():
        return Path(args.sim)
    out = Path(args.sim) if args.sim else work / "sim"
    cmd = [*CRYOSPA, "simulate", "--level", "micrographs", "--sym", "D2", "--angpix", "1.77",
           "--mic_size", "1024", "--n_micrographs", str(args.n_micrographs),
           "--particles_per_micrograph", "60", "--o", str(out)]
    t = time.perf_counter()
    timed(cmd, REPO, args.threads)
    print(f"simulated {args.n_micrographs} micrographs in {time.perf_counter() - t:.0f} s: {out}")
    return out


def bench_simulated(args: argparse.Namespace, work: Path) -> list[str]:
    sim = simulated(args, work)
    info = json.loads((sim / "ground_truth" / "simulation.json").read_text())
    scope = info["microscope"]
    root = work / "P"
    project = Project.init(root)
    (root / "sim").symlink_to(sim.resolve())
    mics = _run_job(project, "import micrographs", {
        "micrographs": "sim/Micrographs/*.mrc", "angpix": info["pixel_size_angstrom"],
        "kv": scope["voltage_kv"], "cs": scope["cs_mm"], "q0": scope["amplitude_contrast"]}, {})
    table = read_relion_star(root / "Import/job001/micrographs.star")
    truth = joined(read_relion_star(sim / "ground_truth" / "micrographs_ctf.star"))
    truth["stem"] = [Path(n).stem for n in truth["rlnMicrographName"]]
    data = table.data.copy()
    data["stem"] = [Path(n).stem for n in data["rlnMicrographName"]]
    data = data.merge(truth[["stem", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"]], on="stem")
    (root / "CtfTruth").mkdir()
    write_relion_star(root / "CtfTruth/micrographs_ctf.star",
                      RelionTable("micrographs", data.drop(columns="stem"), table.optics))
    coords = _run_job(project, "import coordinates",
                      {"coords": "sim/ground_truth/coords/Micrographs/*_true.star"},
                      {"mics": [mics]})
    box, scale = args.box, args.rescale or args.box
    n_mics = len(data)
    rows = []
    ours = [*CRYOSPA, "extract", "--micrographs", "CtfTruth/micrographs_ctf.star",
            "--coordinates", coords, "--box", str(box), "--edge", "pad", "--project", str(root)]
    if args.rescale:
        ours += ["--rescale", str(scale)]
    t_us, m_us = timed(ours, root, args.threads)
    radius = background_radius_px(box, scale, -1)
    relion = ["relion_preprocess", "--i", "CtfTruth/micrographs_ctf.star", "--coord_dir",
              "sim/ground_truth/coords/", "--coord_suffix", "_true.star", "--part_star",
              "Relion/particles.star", "--part_dir", "Relion/", "--extract", "--extract_size",
              str(box), "--norm", "--bg_radius", str(radius), "--invert_contrast"]
    if args.rescale:
        relion += ["--scale", str(scale)]
    t_rel, m_rel = timed(relion, root, args.threads)
    warm = _warm_seconds(project, ours) / n_mics
    stars = {"cryospa": root / "Extract/job003/particles.star",
             "RELION": root / "Relion/particles.star"}
    n_particles = len(read_star(stars["cryospa"])["particles"])
    agree = _agreement(_stacks(root / "Extract/job003"), _stacks(root / "Relion"))
    sides = {}
    for name, t, w, m in (("cryospa", t_us, f"{1000 * warm:.0f} ms", m_us),
                          ("RELION 3.1", t_rel, "-", m_rel)):
        res, px = _fsc_to_truth(stars["cryospa" if name == "cryospa" else "RELION"], sim, root,
                                name.split()[0])
        sides[name] = side(t / n_mics, m, f"reconstruction FSC 0.5 vs truth {res:.2f} Å")
        rows.append(
            f"| {name} | {n_mics} x 1024² @ {info['pixel_size_angstrom']} Å, {n_particles} "
            f"particles, {box} -> {scale} px | {1000 * t / n_mics:.0f} ms | {w} | {m:.0f} MB | "
            f"{res:.2f} Å = {px:.2f} px |"
        )
    print("\n### Simulated micrographs (true coordinates, true CTF)\n")
    print("| program | data | wall per micrograph (command) | (warm, in-process) | peak RSS | "
          "FSC 0.5 vs true map |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nper-particle correlation cryospa vs RELION: min {agree[0]:.5f}, median "
          f"{agree[1]:.5f}; without the Nyquist terms: min {agree[2]:.6f}, median "
          f"{agree[3]:.6f}")
    JSON_ROWS.append(row("particle extraction", f"{n_mics} micrographs, {n_particles} particles, "
                         f"{box} -> {scale} px", sides["cryospa"], sides["RELION 3.1"],
                         relion_program="relion_preprocess --extract", note="per micrograph"))
    return rows


def bench_real(args: argparse.Namespace, work: Path) -> None:
    if not REAL_MICROGRAPH.is_file():
        print(f"\n(real micrograph {REAL_MICROGRAPH} not found: skipped)")
        return
    root = work / "R"
    project = Project.init(root)
    (root / "Raw").mkdir()
    (root / "Raw" / "fei.mrc").symlink_to(REAL_MICROGRAPH)
    apix = round(read_mrc_header(REAL_MICROGRAPH).voxel_size_angstrom[0], 4)
    mics = _run_job(project, "import micrographs",
                    {"micrographs": "Raw/fei.mrc", "angpix": apix, "kv": 300.0}, {})
    h, w = read_mrc_header(REAL_MICROGRAPH).shape[-2:]
    rng = np.random.default_rng(0)
    box, scale = 256, 64
    xy = rng.uniform(box / 2, [w - box / 2, h - box / 2], (300, 2))
    (root / "Picks").mkdir()
    write_coordinates_star(root / "Picks" / "fei_pick.star", pd.DataFrame(
        {"rlnCoordinateX": xy[:, 0], "rlnCoordinateY": xy[:, 1]}))
    coords = _run_job(project, "import coordinates", {"coords": "Picks/*.star"},
                      {"mics": [mics]})
    t_us, m_us = timed([*CRYOSPA, "extract", "--micrographs", mics, "--coordinates", coords,
                        "--box", str(box), "--rescale", str(scale), "--project", str(root)],
                       root, args.threads)
    warm = _warm_seconds(project, [*CRYOSPA, "extract", "--micrographs", mics, "--coordinates",
                                   coords, "--box", str(box), "--rescale", str(scale)])
    shutil.copytree(root / "Picks", root / "RelPicks" / "Micrographs")
    t_rel, m_rel = timed(
        ["relion_preprocess", "--i", "Import/job001/micrographs.star", "--coord_dir",
         "RelPicks/", "--coord_suffix", "_pick.star", "--part_star", "Relion/particles.star",
         "--part_dir", "Relion/", "--extract", "--extract_size", str(box), "--scale", str(scale),
         "--norm", "--bg_radius", str(background_radius_px(box, scale, -1)),
         "--invert_contrast"], root, args.threads)
    agree = _agreement(_stacks(root / "Extract/job003"), _stacks(root / "Relion"))
    image, _ = read_mrc(REAL_MICROGRAPH, permissive=True)
    hot_y, hot_x = np.nonzero(image > 32767)
    first = np.trunc(xy) - box // 2
    touched = sum(bool(np.any((hot_x >= x0) & (hot_x < x0 + box) & (hot_y >= y0)
                              & (hot_y < y0 + box))) for x0, y0 in first)
    print(f"\n### Real micrograph fei-extended.mrc ({w} x {h} px, {apix} Å/px), 300 particles, "
          f"{box} -> {scale} px\n")
    print("| program | wall (command) | (warm, in-process) | peak RSS |")
    print("|---|---|---|---|")
    print(f"| cryospa | {t_us:.2f} s | {warm:.2f} s | {m_us:.0f} MB |")
    print(f"| RELION 3.1 | {t_rel:.2f} s | - | {m_rel:.0f} MB |")
    print(f"\nper-particle correlation: min {agree[0]:.5f}, median {agree[1]:.5f}; without the "
          f"Nyquist terms: min {agree[2]:.6f}, median {agree[3]:.6f}")
    print(f"(RELION 3.1 reads MRC mode 6, uint16, as signed 16-bit: the micrograph's "
          f"{hot_x.size} pixel(s) above 32767 turn negative there; {touched} of the particles "
          "contain one)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sim", help="simulation folder to use (made there if absent)")
    parser.add_argument("--n_micrographs", type=int, default=12)
    parser.add_argument("--box", type=int, default=128, help="box in micrograph pixels")
    parser.add_argument("--rescale", type=int, default=96, help="re-scaled box (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", help="keep the work folder here")
    parser.add_argument("--skip-real", action="store_true", help="only the simulated micrographs")
    add_json_option(parser)
    args = parser.parse_args()
    if shutil.which("relion_preprocess") is None:
        sys.exit("relion_preprocess not found: install RELION 3.1 (apt-get install relion)")
    torch.set_num_threads(args.threads)
    print(f"# cryospa extract vs relion_preprocess ({platform.node()}, {args.threads} threads)")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_extract_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bench_simulated(args, work)
        write_rows(args.json, JSON_ROWS)
        if not args.skip_real:
            bench_real(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
