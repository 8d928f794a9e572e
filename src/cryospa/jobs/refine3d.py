"""``cryospa refine3d``: gold-standard 3D auto-refinement (``relion_refine --auto_refine``).

The particles are split into two independent half-sets (their ``rlnRandomSubset``, else at
random); each half is refined against its own reference, both starting from ``--reference``
low-passed to ``--ini-high`` Å (and scaled to the particles unless
``--absolute-greyscale``). Every iteration marginalises each particle over orientation (HEALPix
grid, global then local searches with priors), translation and -- with ``--ctf`` -- corrects for
its CTF (the engine in :mod:`cryospa.engine.em3d`), back-projects with symmetry ``--symmetry``,
and reconstructs each half with the Wiener filter given by the FSC between the halves. The
resolution (FSC 0.143 between the half maps, with ``--mask`` solvent-flattened) limits the
next E-step; the angular sampling becomes finer when the resolution and the orientations stop
changing, and when that no longer helps a final iteration at full Nyquist joins the halves.

Outputs, as RELION's ``Refine3D/jobNNN/``: per iteration ``run_itNNN_half1_class001.mrc`` /
``half2``, ``run_itNNN_data.star``, ``run_itNNN_half1_model.star`` (FSC, resolution, sampling)
and the engine checkpoint; at the end ``run_data.star``, ``run_half1_class001_unfil.mrc``,
``run_half2_class001_unfil.mrc`` (for ``cryospa postprocess``), ``run_class001.mrc`` (both
halves joined), ``run_model.star``, ``run_fsc.png`` and ``run_angdist.png``. A killed job
continues from its last complete iteration.

``cryospa class3d`` (:mod:`cryospa.jobs.class3d`) shares this machinery.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryospa.compute.device import resolve_device, set_threads
from cryospa.core.symmetry import symmetry_operators
from cryospa.engine.em3d import (
    Model3D,
    Particles3D,
    Refine3DOptions,
    initialise_3d,
    iterate_3d,
    update_schedule,
)
from cryospa.engine.model import load_checkpoint, save_checkpoint
from cryospa.errors import InputFileError, ParameterError
from cryospa.io._files import atomic_output
from cryospa.io.mrc import write_mrc
from cryospa.io.star import (
    RelionTable,
    read_relion_star,
    require_columns,
    write_relion_star,
    write_star,
)
from cryospa.jobs._maps import check_mask_values, load_map, map_info, same_pixel_size
from cryospa.jobs.class2d import StarParticles, particle_source, project_file
from cryospa.jobs.import_particles import resolve_stacks
from cryospa.jobs.particles import CTF_COLUMNS, OPTICS_CTF_COLUMNS, ParticleSet, load_particles
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

__all__ = ["ML3DJob", "Refine3D", "check_particles_3d", "check_sizes_3d", "data_table_3d"]


_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


def common_params(*, tau2: float, ini_high: float, order_help: str) -> tuple[Param, ...]:
    """Parameters shared by refine3d and class3d."""
    return (
        Param("particle_diameter", float, None, unit="Å", range=(0, None), open_min=True,
              required=True, relion="particle_diameter",
              help="diameter of the soft circular mask on the particles and of the spherical "
              "mask on the references (a bit larger than the particle, smaller than the box)"),
        Param("symmetry", str, "C1", relion="sym_name",
              help="point group imposed on the map: C1 (none), Cn, Dn, T, O, I (the tutorial: "
              "D2)"),
        Param("ini_high", float, ini_high, unit="Å", range=(0, None), open_min=True,
              relion="ini_high",
              help="low-pass filter of the initial reference; also the resolution of the "
              "first iteration"),
        Param("absolute_greyscale", bool, False, relion="ref_correct_greyscale",
              help="the reference is already on the particles' grey scale (a map made from "
              "these particles); otherwise it is scaled to them first"),
        Param("tau2_fudge", float, tau2, range=(0, None), open_min=True, relion="tau_fudge",
              help="regularisation parameter T: larger trusts the data more"),
        Param("healpix_order", int, 2, range=(0, 6), relion="sampling",
              help=order_help),
        Param("offset_range", float, 5.0, unit="px", range=(0, None), relion="offset_range",
              help="translation search range around each particle's current origin"),
        Param("offset_step", float, 1.0, unit="px", range=(0, None), open_min=True,
              relion="offset_step", help="translation sampling (the coarse pass uses twice it)"),
        Param("ctf", bool, True, relion="do_ctf_correction",
              help="correct for the CTF (needs defocus columns)"),
        Param("ignore_ctf_until_first_peak", bool, False, relion="ctf_intact_first_peak",
              help="treat |CTF| as 1 below its first peak"),
        Param("zero_mask", bool, True, relion="do_zero_mask",
              help="fill the particles outside the mask with zeros (else with noise)"),
        Param("memory", float, 256.0, unit="MB", range=(16, None),
              help="memory bound of the E-step's slice tensors"),
        DEVICE_PARAM,
        Param("threads", int, 0, range=(0, 1024), relion="nr_threads",
              help="CPU threads for the tensor maths; 0: torch's default (all cores)"),
        Param("seed", int, 0, relion=None, help="random seed (half-sets when the particles "
              "have none, initial class assignment, noise outside the mask)"),
    )



def check_particles_3d(
    who: str, params: Mapping[str, Any], inputs: Mapping[str, list[ResolvedInput]],
    project_dir: Path,
) -> tuple[Path, ParticleSet]:
    """Checks shared by the 3D jobs: device, point group, stacks, CTF columns.

    Returns the particles STAR file and its particles.
    """
    resolve_device(str(params["device"]))
    try:
        symmetry_operators(str(params["symmetry"]))
    except ValueError as err:
        raise ParameterError(
            f"{who}: --symmetry {params['symmetry']!r} is not a point group ({err}); use "
            "C1, Cn, Dn, T, O or I (RELION's names)") from None
    path = project_file(project_dir, inputs["particles"][0].path)
    table = read_relion_star(path, "particles")
    resolve_stacks(table, path, project_dir)
    particles = load_particles(path)
    if params["ctf"]:
        require_columns(particles.rows, CTF_COLUMNS + OPTICS_CTF_COLUMNS, path=path,
                        table="particles (for --ctf; or give --no-ctf)")
    return path, particles


def check_sizes_3d(who: str, params: Mapping[str, Any], n: int, apix: float) -> None:
    """The particle diameter fits the box and the offset search stays inside it."""
    box_a = n * apix
    if float(params["particle_diameter"]) > box_a:
        raise ParameterError(
            f"{who}: --particle-diameter {float(params['particle_diameter']):g} Å is larger "
            f"than the box ({n} px x {apix:g} Å = {box_a:g} Å): give a smaller diameter")
    if float(params["offset_range"]) >= n / 2:
        raise ParameterError(f"{who}: --offset-range {float(params['offset_range']):g} px "
                             f"reaches the edge of the {n} px box: use less than half")


class ML3DJob(IterativeJob):
    """What refine3d and class3d share: inputs, checks, the iteration loop, files."""

    gold_standard = True

    def options(self, params: Mapping[str, Any]) -> Refine3DOptions:
        """The engine options of the job's parameters."""
        raise NotImplementedError

    # --- checks -------------------------------------------------------------------------
    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """Particles, reference and mask agree; symmetry known; mask in [0, 1]; sizes fit."""
        who = self.name
        path, particles = check_particles_3d(who, params, inputs, project_dir)
        n, apix = particles.box_size, particles.pixel_size_angstrom
        ref = map_info(project_file(project_dir, inputs["reference"][0].path), what="reference map")
        if ref.box != n or not same_pixel_size(ref.pixel_size_angstrom, apix):
            raise InputFileError(
                ref.path,
                f"the reference is {ref.box} px at {ref.pixel_size_angstrom:g} Å/px but the "
                f"particles ({path.name}) are {n} px at {apix:g} Å/px",
                f"resample it: cryospa resize --volume {ref.path.name} --angpix-out {apix:g} "
                f"--box-out {n}")
        if inputs.get("mask"):
            mpath = project_file(project_dir, inputs["mask"][0].path)
            mask, minfo = load_map(mpath, what="mask")
            if minfo.box != n:
                raise InputFileError(mpath, f"the mask is {minfo.box} px, the particles {n} px",
                                     "make the mask from a map of the particles' box "
                                     "(cryospa resize, then cryospa mask)")
            check_mask_values(mask, mpath)
        check_sizes_3d(who, params, n, apix)
        if float(params.get("local_searches", 0.0)) > 0:
            require_columns(particles.rows, list(_ANGLES), path=path,
                            table="particles (for --local-searches)")
        k = int(params.get("classes", 1))
        if k > len(particles):
            raise ParameterError(f"{who}: --classes {k} is more than the {len(particles)} "
                                 f"particles of {path.name}")

    # --- iterations ---------------------------------------------------------------------
    def checkpoint(self, ctx: JobContext, it: int) -> str:
        """``run_itNNN_optimiser.star``."""
        return f"run_it{it:03d}_optimiser.star"

    def _halves(self, ctx: JobContext, source: StarParticles) -> torch.Tensor:
        rows = source.particles.rows
        if "rlnRandomSubset" in rows.columns:
            subset = rows["rlnRandomSubset"].to_numpy(dtype=np.int64)
            if set(np.unique(subset)) <= {1, 2} and len(np.unique(subset)) == 2:
                return torch.from_numpy(subset - 1)
        gen = torch.Generator().manual_seed(int(ctx.params["seed"]))
        half = torch.zeros(len(source), dtype=torch.long)
        half[torch.randperm(len(source), generator=gen)[: len(source) // 2]] = 1
        return half

    def _start(self, ctx: JobContext, source: StarParticles, options: Refine3DOptions,
               device: torch.device) -> tuple[Model3D, Particles3D]:
        ref, _ = load_map(ctx.abs(ctx.input("reference").path), what="reference map")
        euler = None
        if options.local_sigma_degrees > 0:
            euler = torch.from_numpy(
                source.particles.rows[list(_ANGLES)].to_numpy(dtype=np.float64))
        model, state = initialise_3d(
            source, torch.from_numpy(np.ascontiguousarray(ref)), source.particles.origins_px(),
            self._halves(ctx, source), options, device=device, euler_degrees=euler)
        if options.n_classes > 1:  # RELION: random class assignment in the first iteration
            gen = torch.Generator().manual_seed(int(ctx.params["seed"]) + 1)
            state.class_index = torch.randint(0, options.n_classes, (len(source),),
                                              generator=gen)
        return model, state

    def run_iteration(self, ctx: JobContext, it: int) -> dict[str, Any]:
        """One iteration from the previous checkpoint (or the initial model)."""
        threads = torch.get_num_threads()
        set_threads(int(ctx.params["threads"]) or None)
        try:
            device = resolve_device(str(ctx.params["device"]))
            options = self.options(ctx.params)
            source = particle_source(ctx)
            if it == 1:
                model, state = self._start(ctx, source, options, device)
                ctx.log(f"{ctx.job_name}: {len(source)} particles, symmetry {options.symmetry},"
                        f" starting at {options.ini_high_angstrom:g} Å")
            else:
                model, state, _ = load_checkpoint(ctx.path(f"run_it{it - 1:03d}_engine"),
                                                  Model3D, Particles3D)
            was_final = model.final
            model, state, info = iterate_3d(model, state, source, options, device=device,
                                            seed_classes=it == 1 and options.n_classes > 1)
            model = update_schedule(model, options)
            info["final"] = was_final
            info["finished"] = model.finished
            self._write_iteration(ctx, it, model, state, source, info)
            ctx.log(self._describe(it, model, info))
            return {k: v for k, v in info.items() if k not in ("fsc", "combined")}
        finally:
            set_threads(threads)

    def _describe(self, it: int, model: Model3D, info: Mapping[str, Any]) -> str:
        res = ", ".join(f"{r:.2f}" for r in info["resolution_angstrom"])
        return (f"iteration {it}: resolution {res} Å, <Pmax> {info['average_pmax']:.3f}, "
                f"HEALPix order {info['healpix_order']}"
                f"{' (local)' if info['local_search'] else ''}, orientation change "
                f"{info['angle_change_degrees']:.2f}°, offset change "
                f"{info['offset_change_px']:.2f} px" + (" [final]" if info["final"] else ""))

    def converged(self, ctx: JobContext, it: int, info: Mapping[str, Any]) -> bool:
        """Auto-refine stops after its final iteration."""
        return bool(info.get("finished"))

    # --- files --------------------------------------------------------------------------
    def _maps(self, ctx: JobContext, it: int, model: Model3D) -> None:
        apix = model.pixel_size_angstrom
        for h in range(model.n_halves):
            for k in range(model.n_classes):
                name = (f"run_it{it:03d}_half{h + 1}_class{k + 1:03d}.mrc" if model.n_halves > 1
                        else f"run_it{it:03d}_class{k + 1:03d}.mrc")
                write_mrc(ctx.path(name), model.references[h, k].numpy(),
                          voxel_size_angstrom=apix)

    def _write_iteration(self, ctx: JobContext, it: int, model: Model3D, state: Particles3D,
                         source: StarParticles, info: dict[str, Any]) -> None:
        stem = f"run_it{it:03d}"
        apix = model.pixel_size_angstrom
        self._maps(ctx, it, model)
        if "combined" in info:
            write_mrc(ctx.path(f"{stem}_class001.mrc"), info["combined"].numpy(),
                      voxel_size_angstrom=apix)
        write_relion_star(ctx.path(f"{stem}_data.star"),
                          data_table_3d(source.particles.table, state, apix, model.n_halves))
        name = f"{stem}_half1_model.star" if model.n_halves > 1 else f"{stem}_model.star"
        write_star(ctx.path(name), model_blocks_3d(model, it))
        save_checkpoint(ctx.path(f"{stem}_engine"), model, state)
        write_star(ctx.path(f"{stem}_optimiser.star"), {"optimiser_general": {
            "rlnOutputRootName": ctx.rel("run"), "rlnModelStarFile": ctx.rel(name),
            "rlnExperimentalDataStarFile": ctx.rel(f"{stem}_data.star"),
            "rlnCurrentIteration": it, "rlnHasConverged": int(model.finished),
            "rlnDoAutoRefine": int(self.gold_standard)}})

    def finalize(self, ctx: JobContext, last_iteration: int) -> None:
        """Copies of the last iteration under RELION's final names, and the plots."""
        if last_iteration < 1:
            return
        stem = f"run_it{last_iteration:03d}"
        model, state, _ = load_checkpoint(ctx.path(f"{stem}_engine"), Model3D, Particles3D)
        copies = [(f"{stem}_data.star", "run_data.star")]
        if model.n_halves > 1:
            copies += [(f"{stem}_half{h}_class001.mrc", f"run_half{h}_class001_unfil.mrc")
                       for h in (1, 2)]
            copies += [(f"{stem}_half1_model.star", "run_model.star")]
            if ctx.path(f"{stem}_class001.mrc").exists():
                copies.append((f"{stem}_class001.mrc", "run_class001.mrc"))
        else:
            copies += [(f"{stem}_model.star", "run_model.star")]
            copies += [(f"{stem}_class{k:03d}.mrc", f"run_class{k:03d}.mrc")
                       for k in range(1, model.n_classes + 1)]
        for src, dst in copies:
            with atomic_output(ctx.path(dst)) as tmp:
                shutil.copyfile(ctx.path(src), tmp)
        self._plots(ctx, model, state)

    def _plots(self, ctx: JobContext, model: Model3D, state: Particles3D) -> None:
        from cryospa.plots.angles import plot_angular_distribution, plot_central_slices
        from cryospa.plots.fsc import plot_fsc

        e = state.euler_degrees.numpy()
        for k in range(model.n_classes):
            sel = state.class_index.numpy() == k
            name = ("run_angdist.png" if model.n_classes == 1
                    else f"run_class{k + 1:03d}_angdist.png")
            plot_angular_distribution(e[sel, 0], e[sel, 1], ctx.path(name),
                                      title=f"{ctx.job_name} class {k + 1}: {int(sel.sum())} "
                                      "particles")
        plot_central_slices([model.references[0, k].numpy() for k in range(model.n_classes)],
                            [f"class {k + 1}" for k in range(model.n_classes)],
                            ctx.path("run_slices.png"), title=ctx.job_name)
        if model.n_halves > 1:
            n, apix = model.box_size, model.pixel_size_angstrom
            plot_fsc(ctx.path("run_fsc.png"), np.arange(n // 2 + 1) / (n * apix),
                     {"half maps": model.fsc.numpy()},
                     title=f"{ctx.job_name}: gold-standard FSC, "
                     f"{float(model.resolution_angstrom[0]):.2f} Å")

    def summary(self, ctx: JobContext, last_iteration: int, info: Mapping[str, Any]) -> str:
        """``12 iterations, 4.52 Å (FSC 0.143), HEALPix order 4``."""
        res = list(info.get("resolution_angstrom") or [999.0])
        return (f"{last_iteration} iterations, {min(res):.2f} Å, HEALPix order "
                f"{info.get('healpix_order', '?')}")


@register
class Refine3D(ML3DJob):
    """Gold-standard 3D auto-refine with half-sets (relion_refine --auto_refine)."""

    name = "refine3d"
    folder = "Refine3D"
    relion_type = 10  # PROC_3DAUTO
    description = __doc__ or ""
    inputs = (
        Input("particles", (NodeType.PARTICLES,), help="particles to refine", relion="fn_img"),
        Input("reference", (NodeType.VOLUME,), help="initial map (same box and pixel size as "
              "the particles; cryospa resize)", relion="fn_ref"),
        Input("mask", (NodeType.MASK,), required=False, relion="fn_mask",
              help="solvent mask for the FSC between the halves (solvent-flattened FSC)"),
    )
    params = (
        *common_params(
            tau2=1.0, ini_high=40.0,
            order_help="initial HEALPix order of the coarse search: 2 = 15° coarse, 7.5° fine "
            "(RELION's GUI \"7.5 degrees\"); auto-refine makes it finer"),
        Param("auto_local_order", int, 3, range=(1, 8), relion="auto_local_sampling",
              help="HEALPix order from which searches are local around each particle's "
              "orientation (3 = 3.75° fine)"),
        Param("max_order", int, 5, range=(1, 8),
              help="finest coarse HEALPix order auto-refine goes to (5 = 0.94° fine)"),
        Param("max_iterations", int, 40, range=(2, 1000),
              help="stop (with a final iteration) after this many iterations at the latest"),
    )
    outputs = (
        Output("particles", NodeType.PARTICLES, "run_data.star"),
        Output("half_maps", NodeType.HALF_MAPS, "run_half1_class001_unfil.mrc"),
        Output("map", NodeType.VOLUME, "run_class001.mrc"),
    )
    citations = (
        "Scheres (2012) J. Struct. Biol. 180:519-530 (RELION)",
        "Scheres & Chen (2012) Nat. Methods 9:853-854 (gold-standard FSC)",
    )

    def options(self, params: Mapping[str, Any]) -> Refine3DOptions:
        """Engine options."""
        return _options(params, n_classes=1, gold=True, auto=True,
                        max_iterations=int(params["max_iterations"]),
                        auto_local_order=int(params["auto_local_order"]),
                        max_order=int(params["max_order"]))

    def n_iterations(self, ctx: JobContext) -> int:
        """``--max-iterations`` plus the final one."""
        return int(ctx.params["max_iterations"]) + 1


def _options(params: Mapping[str, Any], *, n_classes: int, gold: bool, auto: bool,
             max_iterations: int, **extra: Any) -> Refine3DOptions:
    return Refine3DOptions(
        particle_diameter_angstrom=float(params["particle_diameter"]),
        n_classes=n_classes,
        symmetry=str(params["symmetry"]),
        gold_standard=gold,
        auto_sampling=auto,
        tau2_fudge=float(params["tau2_fudge"]),
        healpix_order=int(params["healpix_order"]),
        offset_range_px=float(params["offset_range"]),
        offset_step_px=float(params["offset_step"]),
        ctf=bool(params["ctf"]),
        ignore_ctf_until_first_peak=bool(params["ignore_ctf_until_first_peak"]),
        zero_mask=bool(params["zero_mask"]),
        ini_high_angstrom=float(params["ini_high"]),
        absolute_greyscale=bool(params["absolute_greyscale"]),
        max_iterations=max_iterations,
        memory_mb=float(params["memory"]),
        seed=int(params["seed"]),
        **extra,
    )


def data_table_3d(table: RelionTable, state: Particles3D, pixel_size: float,
                  halves: int) -> RelionTable:
    """The input particles with their orientations, origins, classes (run_itNNN_data.star)."""
    data = table.data.copy()
    e = state.euler_degrees.numpy()
    data["rlnAngleRot"], data["rlnAngleTilt"], data["rlnAnglePsi"] = e[:, 0], e[:, 1], e[:, 2]
    origins = state.offsets_px.numpy() * pixel_size
    data["rlnOriginXAngst"] = origins[:, 0]
    data["rlnOriginYAngst"] = origins[:, 1]
    data["rlnClassNumber"] = state.class_index.numpy().astype(np.int64) + 1
    if halves > 1:
        data["rlnRandomSubset"] = state.half.numpy().astype(np.int64) + 1
    data["rlnNormCorrection"] = 1.0
    data["rlnLogLikeliContribution"] = state.log_likelihood.numpy()
    data["rlnMaxValueProbDistribution"] = state.max_probability.numpy()
    data["rlnNrOfSignificantSamples"] = state.significant_samples.numpy().astype(np.int64)
    return RelionTable(kind="particles", data=data, optics=table.optics.copy(),
                       other_blocks={}, path=None)


def model_blocks_3d(model: Model3D, it: int) -> dict[str, Any]:
    """RELION-style model STAR blocks: general, classes, and the FSC / SSNR per shell."""
    n, apix = model.box_size, model.pixel_size_angstrom
    shells = np.arange(n // 2 + 1)
    inv_res = shells / (n * apix)
    ang = np.where(shells > 0, n * apix / np.maximum(shells, 1), 999.0)
    blocks: dict[str, Any] = {
        "model_general": {
            "rlnReferenceDimensionality": 3,
            "rlnDataDimensionality": 2,
            "rlnOriginalImageSize": n,
            "rlnCurrentResolution": float(model.resolution_angstrom.min()),
            "rlnCurrentImageSize": min(n, 2 * model.current_shell),
            "rlnPaddingFactor": 2.0,
            "rlnPixelSize": apix,
            "rlnNrClasses": model.n_classes,
            "rlnNrBodies": 1,
            "rlnNrGroups": int(model.sigma2.shape[0]),
            "rlnSigmaOffsetsAngst": model.sigma_offset_angstrom,
            "rlnLogLikelihood": model.log_likelihood,
            "rlnAveragePmax": model.average_pmax,
            "rlnCurrentIteration": it,
            "rlnHealpixOrder": model.healpix_order,
            "rlnLocalSearches": int(model.local_search),
            "rlnSigmaPriorRotAngle": model.sigma_angle_degrees,
            "rlnOffsetRangePix": model.offset_range_px,
            "rlnOffsetStepPix": model.offset_step_px,
            "rlnChangesOptimalOrientations": model.angle_change_degrees,
            "rlnChangesOptimalOffsets": model.offset_change_px * apix,
        },
        "model_classes": pd.DataFrame({
            "rlnReferenceImage": [f"{k + 1:06d}" for k in range(model.n_classes)],
            "rlnClassDistribution": model.class_fractions.numpy(),
            "rlnEstimatedResolution": model.resolution_angstrom.numpy(),
            "rlnAccuracyRotations": model.angular_spread_degrees,
        }),
    }
    for k in range(model.n_classes):
        table = {
            "rlnSpectralIndex": shells,
            "rlnResolution": np.where(shells > 0, inv_res, 0.001),
            "rlnAngstromResolution": ang,
            "rlnSsnrMap": model.data_vs_prior[0, k].numpy(),
            "rlnReferenceTau2": model.tau2[0, k].clamp(max=1e30).numpy(),
        }
        if model.n_halves > 1:
            table["rlnGoldStandardFsc"] = model.fsc.numpy()
        blocks[f"model_class_{k + 1}"] = pd.DataFrame(table)
    return blocks

