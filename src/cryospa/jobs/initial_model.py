"""``cryospa initial-model``: de novo 3D initial model (RELION 4's VDAM ``--denovo_3dref``).

No reference: the run starts in C1 from maps reconstructed from the particles at random
orientations and improves them by ``--minibatches`` stochastic steps (RELION 4's VDAM
schedule: small random mini-batches first, growing to ``--final-size``; see
:mod:`cryospa.engine.initial3d`). Each step aligns its mini-batch against the current maps
(global search in C1 at HEALPix order ``--healpix-order``, translations within
``--offset-range``, CTF-corrected) and updates running sums of the 3D Fourier accumulators,
from which the maps are reconstructed with the regularisation ``--tau2-fudge`` (4 as RELION
for initial models). The resolution used starts at ``--ini-high`` Å and opens to Nyquist over
the middle of the run; the last step aligns all particles.

Then the map (the largest class when ``--classes`` > 1) is turned onto the symmetry axes of
``--symmetry`` (centre of mass, coarse rotation search, local refinement of rotation and
centre; :mod:`cryospa.core.symmetry_axes`) and symmetrised. How well the symmetry fits -- the
normalised correlation between the aligned map and its symmetrised version, without the
spherical average -- is in the summary and in ``run_model.star``. The hand of the model cannot
be told from projections: it is either the true one or its mirror image.

Outputs, as RELION's ``InitialModel/jobNNN/``: every 10 mini-batches ``run_itNNN_classKKK.mrc``
(C1), ``run_itNNN_data.star``, ``run_itNNN_model.star`` and the engine checkpoint; at the end
``initial_model.mrc`` (aligned and symmetrised: the reference for ``class3d`` / ``refine3d``),
``run_classKKK.mrc`` (the C1 maps), ``run_data.star`` (the particles' orientations in the frame
of ``initial_model.mrc``), ``run_model.star`` and ``run_slices.png``. A killed job continues
from its last checkpoint.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryospa.compute.device import resolve_device, set_threads
from cryospa.core.rotations import euler_to_matrix, matrix_to_euler
from cryospa.core.symmetry import symmetry_order
from cryospa.core.symmetry_axes import SymmetryAlignment, align_to_symmetry_axes
from cryospa.engine.em3d import Model3D, Particles3D
from cryospa.engine.initial3d import (
    InitialModelOptions,
    RunningSums3D,
    initialise_denovo,
    minibatch_step_3d,
    schedule_for,
)
from cryospa.engine.model import load_checkpoint, save_checkpoint
from cryospa.errors import ParameterError
from cryospa.io._files import atomic_output
from cryospa.io.mrc import write_mrc
from cryospa.io.star import write_relion_star, write_star
from cryospa.jobs.class2d import StarParticles, particle_source
from cryospa.jobs.refine3d import (
    check_particles_3d,
    check_sizes_3d,
    data_table_3d,
    model_blocks_3d,
)
from cryospa.project.nodes import NodeType
from cryospa.project.schema import (
    DEVICE_PARAM,
    Input,
    IterativeJob,
    JobContext,
    Output,
    Param,
    ResolvedInput,
    RunOptions,
    register,
)

__all__ = ["InitialModel", "aligned_particles"]

_DESCRIPTION = __doc__ or ""

#: Mini-batches per job iteration (files and checkpoints are written after each).
_WRITE_EVERY = 10
#: Fewest particles a de novo model is attempted from.
_MIN_PARTICLES = 50


def _number(ctx: JobContext, it: int) -> int:
    """RELION's iteration number (last mini-batch) of job iteration ``it``."""
    return min(it * _WRITE_EVERY, int(ctx.params["minibatches"]))


def options_from_params(params: Mapping[str, Any]) -> InitialModelOptions:
    """The engine options of the job's parameters."""
    return InitialModelOptions(
        particle_diameter_angstrom=float(params["particle_diameter"]),
        n_classes=int(params["classes"]),
        n_minibatches=int(params["minibatches"]),
        initial_size=int(params["initial_size"]),
        final_size=int(params["final_size"]),
        healpix_order=int(params["healpix_order"]),
        offset_range_px=float(params["offset_range"]),
        offset_step_px=float(params["offset_step"]),
        ini_high_angstrom=float(params["ini_high"]),
        tau2_fudge=float(params["tau2_fudge"]),
        ctf=bool(params["ctf"]),
        ignore_ctf_until_first_peak=bool(params["ignore_ctf_until_first_peak"]),
        memory_mb=float(params["memory"]),
        seed=int(params["seed"]),
    )


@register
class InitialModel(IterativeJob):
    """De novo initial model (see the module docstring)."""

    name = "initial-model"
    folder = "InitialModel"
    relion_type = 18  # PROC_INIMODEL
    description = _DESCRIPTION
    inputs = (
        Input("particles", (NodeType.PARTICLES,), relion="fn_img",
              help="particles to build the model from (extracted, normalised, white on black; "
              "typically the selected particles of a 2D classification)"),
    )
    params = (
        Param("particle_diameter", float, None, unit="Å", range=(0, None), open_min=True,
              required=True, relion="particle_diameter",
              help="diameter of the soft circular mask on the particles and of the spherical "
              "mask on the model (a bit larger than the particle, smaller than the box; the "
              "tutorial: 200)"),
        Param("symmetry", str, "C1", relion="sym_name",
              help="point group of the molecule: C1 (none), Cn, Dn, T, O, I (the tutorial: "
              "D2). The model is built in C1, then turned onto this group's axes and "
              "symmetrised; the summary says how well the symmetry fits"),
        Param("classes", int, 1, range=(1, 50), relion="nr_classes",
              help="number of models built at once (K); initial_model.mrc is the largest"),
        Param("minibatches", int, 200, range=(10, 100000), relion="nr_iter",
              help="number of mini-batch steps (RELION 4's VDAM default 200); files every 10"),
        Param("initial_size", int, 0, range=(0, 1000000), relion=None,
              help="particles per mini-batch during the first 30 % of the steps; 0: RELION's "
              "default (0.5 % of the particles, 200 to 5,000)"),
        Param("final_size", int, 0, range=(0, 1000000), relion=None,
              help="particles per mini-batch during the last 20 % of the steps (the size grows "
              "linearly in between); 0: RELION's default (10 % of the particles, 1,000 to "
              "50,000)"),
        Param("healpix_order", int, 1, range=(0, 4), relion="sampling",
              help="HEALPix order of the global orientation search: 1 = 15° coarse, 7.5° "
              "fine (RELION's initial-model GUI: 15 degrees)"),
        Param("offset_range", float, 6.0, unit="px", range=(0, None), relion="offset_range",
              help="translation search range around each particle's current origin"),
        Param("offset_step", float, 2.0, unit="px", range=(0, None), open_min=True,
              relion="offset_step", help="translation sampling (the coarse pass uses twice it)"),
        Param("ini_high", float, 40.0, unit="Å", range=(0, None), open_min=True,
              relion="ini_high",
              help="resolution limit of the first 30 % of the steps; it then opens to Nyquist "
              "as the run goes (never beyond where the map's SNR drops below 1)"),
        Param("tau2_fudge", float, 4.0, range=(0, None), open_min=True, relion="tau_fudge",
              help="regularisation parameter T: larger trusts the data more (4 as RELION for "
              "initial models)"),
        Param("ctf", bool, True, relion="do_ctf_correction",
              help="correct for the CTF (needs defocus columns; --no-ctf for CTF-less data)"),
        Param("ignore_ctf_until_first_peak", bool, False, relion="ctf_intact_first_peak",
              condition=lambda p: bool(p["ctf"]), condition_text="with --ctf",
              help="treat |CTF| as 1 below its first peak"),
        Param("memory", float, 256.0, unit="MB", range=(16, None),
              help="memory bound of the E-step's slice tensors"),
        DEVICE_PARAM,
        Param("threads", int, 0, range=(0, 1024), relion="nr_threads",
              help="CPU threads for the tensor maths; 0: torch's default (all cores)"),
        Param("seed", int, 0, relion=None,
              help="random seed (starting maps, mini-batches); another seed gives another "
              "independent run"),
    )
    outputs = (
        Output("map", NodeType.VOLUME, "initial_model.mrc"),
        Output("particles", NodeType.PARTICLES, "run_data.star"),
    )
    citations = (
        "Punjani, Rubinstein, Fleet & Brubaker (2017) Nat. Methods 14:290-296 (stochastic "
        "gradient ab initio reconstruction)",
        "Kimanius, Dong, Sharov, Nakane & Scheres (2021) Biochem. J. 478:4169-4185 (VDAM, "
        "RELION 4)",
        "Scheres (2012) J. Struct. Biol. 180:519-530 (RELION)",
    )

    # --- checks -------------------------------------------------------------------------
    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """Symmetry known, stacks exist, CTF columns, diameter and offsets fit, enough data."""
        who = self.name
        path, particles = check_particles_3d(who, params, inputs, project_dir)
        n, apix = particles.box_size, particles.pixel_size_angstrom
        check_sizes_3d(who, params, n, apix)
        if float(params["ini_high"]) < 2 * apix:
            raise ParameterError(
                f"{who}: --ini-high {float(params['ini_high']):g} Å is beyond Nyquist "
                f"({2 * apix:g} Å at {apix:g} Å/px): start at a low resolution, e.g. 40 Å")
        k = int(params["classes"])
        need = max(_MIN_PARTICLES, 20 * k)
        if len(particles) < need:
            raise ParameterError(
                f"{who}: {path.name} has {len(particles)} particles; a de novo model with "
                f"{k} class(es) needs at least {need}: select more particles")

    # --- iterations ---------------------------------------------------------------------
    def n_iterations(self, ctx: JobContext) -> int:
        """One job iteration per 10 mini-batches."""
        return math.ceil(int(ctx.params["minibatches"]) / _WRITE_EVERY)

    def checkpoint(self, ctx: JobContext, it: int) -> str:
        """``run_itNNN_optimiser.star`` (NNN the last mini-batch)."""
        return f"run_it{_number(ctx, it):03d}_optimiser.star"

    def run_iteration(self, ctx: JobContext, it: int) -> dict[str, Any]:
        """Ten mini-batches from the previous checkpoint (or random starting maps)."""
        threads = torch.get_num_threads()
        set_threads(int(ctx.params["threads"]) or None)
        try:
            return self._iteration(ctx, it)
        finally:
            set_threads(threads)

    def _iteration(self, ctx: JobContext, it: int) -> dict[str, Any]:
        device = resolve_device(str(ctx.params["device"]))
        options = options_from_params(ctx.params)
        source = particle_source(ctx)
        schedule = schedule_for(len(source), options)
        if it == 1:
            model, state, running = initialise_denovo(source, source.particles.origins_px(),
                                                      options, device=device)
            ctx.log(f"{ctx.job_name}: {len(source)} particles, {options.n_classes} class(es), "
                    f"{options.n_minibatches} mini-batches of {schedule.initial_size} to "
                    f"{schedule.final_size}, from random maps at "
                    f"{options.ini_high_angstrom:g} Å")
        else:
            model, state, extra = load_checkpoint(
                ctx.path(f"run_it{_number(ctx, it - 1):03d}_engine"), Model3D, Particles3D)
            running = RunningSums3D.from_arrays(extra["arrays"], model.box_size, device)
        info: dict[str, Any] = {}
        for step in range((it - 1) * _WRITE_EVERY + 1, _number(ctx, it) + 1):
            model, state, info = minibatch_step_3d(model, state, running, source, options,
                                                   step=step, schedule=schedule,
                                                   device=device)
            if info["reseeded_classes"]:
                ctx.log(f"{ctx.job_name}: mini-batch {step}: class(es) "
                        f"{', '.join(map(str, info['reseeded_classes']))} had fewer than "
                        f"{options.class_inactivity_threshold:g} / K of the particles and were "
                        "re-seeded from the largest class")
        self._write_iteration(ctx, it, model, state, source, running)
        res = ", ".join(f"{r:.1f}" for r in info["resolution_angstrom"])
        ctx.log(f"{ctx.job_name}: mini-batches to {info['step']} ({info['minibatch_size']} "
                f"particles last): {info['resolution_used_angstrom']:.1f} Å used, SNR-1 "
                f"resolution {res} Å, <Pmax> {info['average_pmax']:.3f}, posterior spread "
                f"{info['angular_spread_degrees']:.1f}°")
        info["finished"] = model.finished
        return info

    def _write_iteration(self, ctx: JobContext, it: int, model: Model3D, state: Particles3D,
                         source: StarParticles, running: RunningSums3D) -> None:
        stem = f"run_it{_number(ctx, it):03d}"
        apix = model.pixel_size_angstrom
        for k in range(model.n_classes):
            write_mrc(ctx.path(f"{stem}_class{k + 1:03d}.mrc"), model.references[0, k].numpy(),
                      voxel_size_angstrom=apix)
        write_relion_star(ctx.path(f"{stem}_data.star"),
                          data_table_3d(source.particles.table, state, apix, 1))
        write_star(ctx.path(f"{stem}_model.star"), model_blocks_3d(model, _number(ctx, it)))
        save_checkpoint(ctx.path(f"{stem}_engine"), model, state, arrays=running.arrays())
        write_star(ctx.path(f"{stem}_optimiser.star"), {"optimiser_general": {
            "rlnOutputRootName": ctx.rel("run"),
            "rlnModelStarFile": ctx.rel(f"{stem}_model.star"),
            "rlnExperimentalDataStarFile": ctx.rel(f"{stem}_data.star"),
            "rlnCurrentIteration": _number(ctx, it),
            "rlnNumberOfIterations": int(ctx.params["minibatches"]),
            "rlnHasConverged": int(model.finished),
            "rlnDoAutoRefine": 0}})
        if it > 2:  # the running sums are large; the last two checkpoints suffice
            ctx.path(f"run_it{_number(ctx, it - 2):03d}_engine.pt").unlink(missing_ok=True)

    # --- the end ------------------------------------------------------------------------
    def finalize(self, ctx: JobContext, last_iteration: int) -> None:
        """Symmetry alignment, ``initial_model.mrc``, final copies and the slices picture."""
        if last_iteration < 1:
            return
        stem = f"run_it{_number(ctx, last_iteration):03d}"
        model, state, _ = load_checkpoint(ctx.path(f"{stem}_engine"), Model3D, Particles3D)
        apix = model.pixel_size_angstrom
        symmetry = str(ctx.params["symmetry"])
        best = int(torch.argmax(model.class_fractions))
        radius = 0.5 * float(ctx.params["particle_diameter"]) / apix + 2.0
        alignment = align_to_symmetry_axes(model.references[0, best].to(torch.float64),
                                           symmetry, mask_radius_px=radius)
        write_mrc(ctx.path("initial_model.mrc"),
                  alignment.symmetrised.to(torch.float32).numpy(), voxel_size_angstrom=apix)
        for k in range(model.n_classes):
            with atomic_output(ctx.path(f"run_class{k + 1:03d}.mrc")) as tmp:
                shutil.copyfile(ctx.path(f"{stem}_class{k + 1:03d}.mrc"), tmp)
        source = particle_source(ctx)
        moved = aligned_particles(state, alignment)
        write_relion_star(ctx.path("run_data.star"),
                          data_table_3d(source.particles.table, moved, apix, 1))
        blocks = model_blocks_3d(model, _number(ctx, last_iteration))
        blocks["model_general"].update({
            "rlnSymmetryGroup": symmetry,
            "rlnSymmetryFit": round(alignment.fit, 6),
            "rlnSymmetryPairCorrelation": round(alignment.pair_correlation, 6),
            "rlnSymmetryAlignedClass": best + 1,
        })
        write_star(ctx.path("run_model.star"), blocks)
        ctx.scratch["symmetry_fit"] = alignment.fit
        ctx.log(f"{ctx.job_name}: class {best + 1} turned onto the {symmetry} axes: symmetry "
                f"fit {alignment.fit:.3f} (normalised correlation with its symmetrised map, "
                f"1 = exact); the hand cannot be told from projections")
        from cryospa.plots.angles import plot_angular_distribution, plot_central_slices

        e = moved.euler_degrees.numpy()
        plot_angular_distribution(e[:, 0], e[:, 1], ctx.path("run_angdist.png"),
                                  title=f"{ctx.job_name}: {len(e)} particles")
        plot_central_slices(
            [alignment.symmetrised.to(torch.float32).numpy()]
            + [model.references[0, k].numpy() for k in range(model.n_classes)],
            [f"initial model ({symmetry})"] + [f"class {k + 1} (C1)"
                                               for k in range(model.n_classes)],
            ctx.path("run_slices.png"), title=ctx.job_name)

    def summary(self, ctx: JobContext, last_iteration: int, info: Mapping[str, Any]) -> str:
        """``200 mini-batches, 18.5 Å; D2 fit 0.97 (hand undetermined)``."""
        symmetry = str(ctx.params["symmetry"])
        res = min(list(info.get("resolution_angstrom") or [999.0]))
        text = f"{_number(ctx, last_iteration)} mini-batches, {res:.1f} Å"
        fit = ctx.scratch.get("symmetry_fit")
        if fit is None:
            path = ctx.path("run_model.star")
            if path.exists():
                from cryospa.io.star import read_star

                general = read_star(path)["model_general"]
                if "rlnSymmetryFit" in general:
                    fit = float(np.asarray(general["rlnSymmetryFit"]).ravel()[0])
        if isinstance(fit, float) and symmetry_order(symmetry) > 1:
            verdict = ("fits" if float(fit) >= 0.8 else "fits poorly" if float(fit) >= 0.5
                       else "does not fit")
            text += f"; {symmetry} {verdict} ({float(fit):.2f})"
        return text + "; hand undetermined (mirror image equally possible)"


def aligned_particles(state: Particles3D, alignment: SymmetryAlignment) -> Particles3D:
    """The particles' orientations and origins in the frame of the aligned map.

    With the aligned map ``W(p) = V(R^T p - t)``, a particle seen as ``V`` in orientation
    ``A`` with origin ``o`` is ``W`` in orientation ``A R^T`` with origin ``o + (A t)_xy``.
    """
    rot = alignment.rotation.to(torch.float64)
    a = euler_to_matrix(state.euler_degrees.to(torch.float64))
    new_a = a @ rot.T
    shift = (a @ alignment.shift_px.to(torch.float64))[:, :2]
    out = Particles3D(**{f: getattr(state, f) for f in state.__dataclass_fields__})
    out.euler_degrees = matrix_to_euler(new_a)
    out.offsets_px = state.offsets_px.to(torch.float64) + shift
    return out
