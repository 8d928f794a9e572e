"""The tutorial template on a second data set: only paths and acquisition values edited.

Not a test (about 25 min on 2 cores). Issue 8 asks that ``cryospa run`` on the shipped tutorial
template (``cryospa workflow template tutorial``), pointed at a simulated data set with other
acquisition parameters than the demo's, completes without edits beyond paths and acquisition
values. This script makes such a data set and runs it:

1. The specimen: the shipped LDH tetramer (D2) twice, one copy 47 Å above and one below the
   centre along its z 2-fold axis (``--octamer-shift``), which keeps D2. That gives a
   190 x 80 x 66 Å octamer, about beta-galactosidase's size, so the template's specimen values
   (200 Å mask, LoG 150-180 Å) fit as they are. (The only beta-galactosidase map offline,
   ``maps/betagal_relion1x_test/ref_model.mrc``, has no signal beyond 45 Å: a refinement of its
   projections cannot go further, and post-processing rightly refuses a Guinier fit.)
2. ``cryospa simulate --preset tutorial`` with different acquisition: 1.9 Å/px, 300 kV,
   Cs 2.7 mm, 30 frames of 1.0 e/Å² (the demo: 1.77 Å/px, 200 kV, 1.4 mm, 24 x 1.277 e/Å²),
   defocus 0.8-2.2 µm, 16 movies of 40 particles and 10 % junk.
3. The template with the seven ``EDIT`` lines of paths and acquisition changed (``_set_var``,
   as ``cryospa demo`` does) and ``cryospa run`` on it.
4. The summary of ``cryospa demo`` on the result: particle counts per step, resolution,
   B-factor, FSC against the true map, wall time per step; plus the peak memory of the run.

Usage::

    python bench/bench_tutorial_template.py [--work DIR] [--angpix 1.9] [--kv 300] [--cs 2.7]
        [--dose-per-frame 1.0] [--frames 30] [--movies 16]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import gemmi
from _rows import add_json_option, row, side, write_rows

from cryospa.project.project import Project
from cryospa.sim.atomic import builtin_model_path
from cryospa.workflow.demo import _set_var, summarise
from cryospa.workflow.spec import load_workflow


def octamer(path: Path, shift_angstrom: float) -> Path:
    """Two copies of the shipped LDH tetramer at +-``shift`` along z (D2 kept), as mmCIF."""
    structure = gemmi.read_structure(str(builtin_model_path()))
    model = structure[0]
    out_model = gemmi.Model("1")
    names = iter("ABCDEFGHIJKLMNOP")
    for dz in (shift_angstrom, -shift_angstrom):
        for chain in model:
            copy = gemmi.Chain(next(names))
            for residue in chain:
                moved = residue.clone()
                for atom in moved:
                    atom.pos = gemmi.Position(atom.pos.x, atom.pos.y, atom.pos.z + dz)
                copy.add_residue(moved)
            out_model.add_chain(copy)
    out = gemmi.Structure()
    out.cell = structure.cell
    out.spacegroup_hm = structure.spacegroup_hm
    out.add_model(out_model)
    out.setup_entities()
    out.make_mmcif_document().write_file(str(path))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("bench_tutorial_template"))
    ap.add_argument("--angpix", type=float, default=1.9, help="Å/px of the movies")
    ap.add_argument("--kv", type=float, default=300.0, help="acceleration voltage, kV")
    ap.add_argument("--cs", type=float, default=2.7, help="spherical aberration, mm")
    ap.add_argument("--dose-per-frame", type=float, default=1.0, help="e/Å² per frame")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--movies", type=int, default=16)
    ap.add_argument("--particles-per-movie", type=int, default=40)
    ap.add_argument("--octamer-shift", type=float, default=47.0, help="Å")
    ap.add_argument("--seed", type=int, default=7)
    add_json_option(ap)
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    if not (data / "movies.star").is_file():
        cif = octamer(work / "ldh_octamer_d2.cif", args.octamer_shift)
        subprocess.run(
            ["cryospa", "simulate", "--preset", "tutorial", "--map", str(cif), "--sym", "D2",
             "--angpix", str(args.angpix), "--voltage", str(args.kv), "--cs", str(args.cs),
             "--dose_per_frame", str(args.dose_per_frame), "--n_frames", str(args.frames),
             "--defocus", "8000", "22000", "--n_micrographs", str(args.movies),
             "--particles_per_micrograph", str(args.particles_per_movie), "--seed",
             str(args.seed), "--o", str(data)], check=True)
    text = subprocess.run(["cryospa", "workflow", "template", "tutorial"], check=True,
                          capture_output=True, text=True).stdout
    for name, value in (("movies", data / "Movies" / "*.tiff"), ("gain", data / "gain.mrc"),
                        ("defects", data / "defects.txt"), ("angpix", f"{args.angpix:g}"),
                        ("kv", f"{args.kv:g}"), ("cs", f"{args.cs:g}"),
                        ("dose_per_frame", f"{args.dose_per_frame:g}")):
        text = _set_var(text, name, value)
    spec = work / "tutorial.yaml"
    spec.write_text(text, encoding="utf-8")
    project_dir = work / "P"
    start = time.perf_counter()
    run = subprocess.run(["cryospa", "run", str(spec), "--project", str(project_dir)])
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = summarise(Project.open(project_dir), load_workflow(spec), data)
    print("\n".join(summary.lines()))
    print(f"\ncryospa run: exit {run.returncode}, {wall / 60:.1f} min, peak memory {peak:.0f} MB "
          f"(largest process)")
    truth = summary.truth or {}
    accuracy = (f"{summary.resolution_angstrom:.2f} Å reported, true-map FSC 0.5 at "
                f"{truth.get('resolution_0.5', float('nan')):.2f} Å"
                if summary.resolution_angstrom is not None else "did not finish")
    write_rows(args.json, [row(
        "tutorial template, second data set", f"{args.movies} movies, {args.angpix:g} Å/px, "
        f"{args.kv:g} kV", side(wall, peak, accuracy), None,
        note="movies to post-processed map, template edited in paths and acquisition only")])
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
