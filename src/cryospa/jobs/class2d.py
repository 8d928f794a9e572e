"""``cryospa class2d``: reference-free 2D classification (RELION's EM algorithm).

Particles are classified into ``--classes`` 2D class averages by the regularised likelihood
optimisation of RELION (Scheres 2012, J. Mol. Biol. 415:406; the engine in
:mod:`cryospa.engine`): each iteration marginalises every particle over class, in-plane angle
(``--psi-step``) and translation (``--offset-range`` / ``--offset-step`` pixels around its
current origin, Gaussian prior), with CTF correction (``--ctf``, optionally ignoring CTFs until
their first peak) and adaptive oversampling (a coarse pass at twice the steps, then the fine
poses only where the coarse posterior is significant), then re-estimates the class averages
(Wiener-like, regularised by ``--tau2-fudge``), class fractions, noise spectra per optics group
and the offset prior. Particles and averages are masked with a soft circle of
``--particle-diameter`` Å (zeros outside, or noise with ``--no-zero-mask``).

``--vdam --minibatches 200``: instead of full EM iterations, steps from random subsets of the
particles of growing size (RELION 4's VDAM schedule; the update is stochastic EM of the
sufficient statistics, see :mod:`cryospa.engine.minibatch`), inactive classes re-seeded, a full
EM pass at the end; files are written every 10 mini-batches (``run_it010_*``, ...).

Outputs per iteration, as RELION's ``Class2D/jobNNN/``: ``run_itNNN_classes.mrcs`` (the class
averages), ``run_itNNN_model.star`` (class distribution, resolution, accuracy of rotations and
translations, spectra), ``run_itNNN_data.star`` (the particles with their class, psi, origin,
``rlnMaxValueProbDistribution``, ``rlnNrOfSignificantSamples``, ``rlnLogLikeliContribution``),
``run_itNNN_optimiser.star`` and the engine checkpoint ``run_itNNN_engine.pt/.json``; at the
end ``run_data.star``, ``run_class_averages.star``, ``run_optimiser.star`` (copies of the last
iteration), ``run_classes.png`` (gallery sorted by class size) and ``run_classes.txt`` (class
table). A killed job continues from its last complete iteration.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cryospa.compute.device import resolve_device, set_threads
from cryospa.engine import (
    Class2DOptions,
    ClassModel,
    ParticleState,
    initialise,
    iterate,
    load_checkpoint,
    save_checkpoint,
)
from cryospa.engine.minibatch import MinibatchSchedule, RunningStatistics, minibatch_step
from cryospa.errors import InputFileError, ParameterError
from cryospa.io._files import atomic_output, write_text_atomic
from cryospa.io.mrc import format_image_name, write_mrc
from cryospa.io.star import (
    RelionTable,
    read_relion_star,
    require_columns,
    write_relion_star,
    write_star,
)
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

__all__ = [
    "Class2D",
    "StarParticles",
    "options_from_params",
    "particle_source",
    "project_file",
]

_DESCRIPTION = __doc__ or ""
#: Images kept in memory when the whole stack is at most this large (RELION --preread_images).
_PRELOAD_BYTES = 2 * 2**30


class StarParticles:
    """A :class:`cryospa.engine.data.ParticleSource` over a particles STAR file."""

    def __init__(self, particles: ParticleSet, *, intact_until_first_peak: bool = False) -> None:
        self.particles = particles
        self.box_size = particles.box_size
        self.pixel_size_angstrom = particles.pixel_size_angstrom
        self.has_ctf = all(c in particles.rows.columns for c in CTF_COLUMNS + OPTICS_CTF_COLUMNS)
        self.intact_until_first_peak = intact_until_first_peak
        groups = (
            particles.rows["rlnOpticsGroup"].to_numpy()
            if "rlnOpticsGroup" in particles.rows.columns
            else np.ones(len(particles), dtype=np.int64)
        )
        self.group_numbers, inverse = np.unique(groups, return_inverse=True)
        self._groups = torch.from_numpy(inverse.astype(np.int64))
        self._cache: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.particles)

    def optics_groups(self) -> torch.Tensor:
        """0-based optics group of each particle (in order of rlnOpticsGroup numbers)."""
        return self._groups

    def load(
        self, index: torch.Tensor, device: torch.device, *, ctf: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (from memory when they fit, else from the stacks) and CTFs."""
        idx = index.cpu().numpy()
        n = self.box_size
        if self._cache is None and len(self) * n * n * 4 <= _PRELOAD_BYTES:
            self._cache = torch.from_numpy(self.particles.images())
        if self._cache is not None:
            images = self._cache[torch.from_numpy(idx)].to(device)
        else:
            images = torch.from_numpy(self.particles.images(idx)).to(device)
        if images.shape[-2:] != (n, n):
            raise InputFileError(self.particles.path, f"images are {tuple(images.shape[-2:])} px "
                                 f"but the optics table says {n} px", "fix rlnImageSize")
        if not ctf:
            return images, None
        return images, self.particles.ctf(
            idx, device=device, intact_until_first_peak=self.intact_until_first_peak
        )


def options_from_params(params: Mapping[str, Any]) -> Class2DOptions:
    """The engine options of a job's parameters."""
    return Class2DOptions(
        n_classes=int(params["classes"]),
        particle_diameter_angstrom=float(params["particle_diameter"]),
        tau2_fudge=float(params["tau2_fudge"]),
        psi_step_degrees=float(params["psi_step"]),
        offset_range_px=float(params["offset_range"]),
        offset_step_px=float(params["offset_step"]),
        ctf=bool(params["ctf"]),
        ignore_ctf_until_first_peak=bool(params["ignore_ctf_until_first_peak"]),
        zero_mask=bool(params["zero_mask"]),
        adaptive=bool(params["adaptive"]),
        adaptive_fraction=float(params["adaptive_fraction"]),
        strict_highres_angstrom=float(params["strict_highres_exp"]),
        batch_size=int(params["batch_size"]),
        seed=int(params["seed"]),
        centre_classes=bool(params.get("vdam", False) if params.get("center_classes") is None
                            else params["center_classes"]),
    )


#: With --vdam, files are written every this many mini-batches (RELION's --grad_write_iter).
_WRITE_EVERY = 10
#: With --vdam, classes below this fraction of 1 / K are re-seeded during the first 80 % of the
#: mini-batches (RELION's --class_inactivity_threshold for 2D VDAM).
_INACTIVITY = 0.1


def _number(ctx: JobContext, it: int) -> int:
    """The RELION iteration number of job iteration ``it`` (its last mini-batch with --vdam)."""
    if ctx.params.get("vdam"):
        return min(it * _WRITE_EVERY, int(ctx.params["minibatches"]))
    return it


def _stem(ctx: JobContext, it: int) -> str:
    return f"run_it{_number(ctx, it):03d}"


@register
class Class2D(IterativeJob):
    """2D classification (see the module docstring)."""

    name = "class2d"
    folder = "Class2D"
    relion_type = 8  # PROC_2DCLASS
    description = _DESCRIPTION
    inputs = (
        Input("particles", (NodeType.PARTICLES,), help="particles to classify (extracted, "
              "normalised, white on black)", relion="fn_img"),
    )
    params = (
        Param("classes", int, 20, range=(1, 10000), relion="nr_classes",
              help="number of classes K (the tutorial: 20 for 6,000 particles; about 100 "
              "particles per class or more)"),
        Param("iterations", int, 25, range=(1, 1000), relion="nr_iter",
              condition=lambda p: not p["vdam"], condition_text="without --vdam",
              help="EM iterations (RELION's default 25)"),
        Param("vdam", bool, False, relion="do_grad",
              help="mini-batch (VDAM-like) optimisation: gradient steps from random subsets of "
              "growing size, a full EM pass at the end; faster on large data sets"),
        Param("minibatches", int, 200, range=(10, 100000), relion="nr_iter_grad",
              condition=lambda p: bool(p["vdam"]), condition_text="with --vdam",
              help="number of mini-batches (RELION's default 200); files are written every 10"),
        Param("particle_diameter", float, None, unit="Å", range=(0, None), open_min=True,
              required=True, relion="particle_diameter",
              help="diameter of the soft circular mask on particles and class averages; a bit "
              "larger than the particle and smaller than the box (the tutorial: 200)"),
        Param("tau2_fudge", float, 2.0, range=(0, None), open_min=True, relion="tau_fudge",
              help="regularisation parameter T: larger values trust the data more (2 for 2D "
              "as RELION)"),
        Param("psi_step", float, 6.0, unit="°", range=(0.1, 90), relion="psi_sampling",
              help="in-plane angular sampling (fine; the coarse pass uses twice it), as "
              "RELION's GUI"),
        Param("offset_range", float, 5.0, unit="px", range=(0, None), relion="offset_range",
              help="translation search range around each particle's current origin"),
        Param("offset_step", float, 1.0, unit="px", range=(0, None), open_min=True,
              relion="offset_step",
              help="translation sampling (fine; the coarse pass uses twice it)"),
        Param("ctf", bool, True, relion="do_ctf_correction",
              help="correct for the CTF (needs defocus columns; --no-ctf for phase-flipped or "
              "CTF-less data)"),
        Param("ignore_ctf_until_first_peak", bool, False, relion="ctf_intact_first_peak",
              condition=lambda p: bool(p["ctf"]), condition_text="with --ctf",
              help="treat |CTF| as 1 below its first peak (for strongly low-frequency data)"),
        Param("zero_mask", bool, True, relion="do_zero_mask",
              help="fill the particles outside the mask with zeros (else with noise)"),
        Param("center_classes", bool, None, relion=None,
              help="move each class average's centre of mass to the box centre after every "
              "iteration (or mini-batch), the particles' offsets with it; default: on with "
              "--vdam (whose running sums let classes drift), off for EM (whose offset prior "
              "keeps good classes centred, so an off-centre class is junk that select --auto "
              "can see)"),
        Param("adaptive", bool, True,
              help="adaptive oversampling: coarse pass, then fine poses only where the "
              "posterior is significant (--no-adaptive: exhaustive fine search)"),
        Param("adaptive_fraction", float, 0.999, range=(0.5, 1.0),
              condition=lambda p: bool(p["adaptive"]), condition_text="with --adaptive",
              help="posterior mass kept for the fine pass (RELION's --adaptive_fraction)"),
        Param("strict_highres_exp", float, 0.0, unit="Å", range=(0, None),
              relion="highres_limit",
              help="never use frequencies beyond this resolution in the E-step; 0: no limit"),
        Param("batch_size", int, 0, range=(0, 100000),
              help="particles per E-step batch; 0: from a 256 MB memory budget"),
        DEVICE_PARAM,
        Param("threads", int, 0, range=(0, 1024), relion="nr_threads",
              help="CPU threads for the tensor maths; 0: torch's default (all cores)"),
        Param("seed", int, 0, relion=None,
              help="random seed (initial random subsets, noise outside the mask)"),
    )
    outputs = (
        Output("particles", NodeType.PARTICLES, "run_data.star"),
        Output("class_averages", NodeType.CLASS_AVERAGES, "run_class_averages.star"),
        Output("optimiser", NodeType.OPTIMISER, "run_optimiser.star"),
    )
    citations = (
        "Scheres (2012) J. Mol. Biol. 415:406-418 (regularised likelihood)",
        "Scheres (2012) J. Struct. Biol. 180:519-530 (RELION)",
        "Scheres (2016) Methods Enzymol. 579:125-157 (adaptive oversampling, 2D classification)",
    )

    # ----------------------------------------------------------------------------------
    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """Stacks exist, CTF columns when --ctf, the mask fits the box, K <= particles."""
        resolve_device(str(params["device"]))
        path = project_file(project_dir, inputs["particles"][0].path)
        table = read_relion_star(path, "particles")
        resolve_stacks(table, path, project_dir)
        particles = load_particles(path)
        n = len(particles)
        if params["ctf"]:
            require_columns(particles.rows, CTF_COLUMNS + OPTICS_CTF_COLUMNS, path=path,
                            table="particles (for --ctf)")
        box_angstrom = particles.box_size * particles.pixel_size_angstrom
        if float(params["particle_diameter"]) > box_angstrom:
            raise ParameterError(
                f"class2d: --particle-diameter {float(params['particle_diameter']):g} Å is larger "
                f"than the box ({particles.box_size} px x {particles.pixel_size_angstrom:g} Å = "
                f"{box_angstrom:g} Å): give a diameter that fits the box"
            )
        if int(params["classes"]) > n:
            raise ParameterError(
                f"class2d: --classes {params['classes']} is more than the {n} particles of "
                f"{path.name}: use fewer classes (about 100 particles per class or more)"
            )
        if float(params["offset_range"]) >= particles.box_size / 2:
            raise ParameterError(
                f"class2d: --offset-range {float(params['offset_range']):g} px reaches the edge "
                f"of the {particles.box_size} px box: use less than half the box"
            )

    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """RELION 3.1 2D-classification options for its GUI."""
        return {"dont_skip_align": "Yes", "do_fast_subsets": "No", "do_helix": "No"}

    def n_iterations(self, ctx: JobContext) -> int:
        """``--iterations``, or one per 10 mini-batches with ``--vdam``."""
        if ctx.params.get("vdam"):
            return math.ceil(int(ctx.params["minibatches"]) / _WRITE_EVERY)
        return int(ctx.params["iterations"])

    def checkpoint(self, ctx: JobContext, it: int) -> str:
        """``run_itNNN_optimiser.star`` (NNN the mini-batch number with ``--vdam``)."""
        return f"{_stem(ctx, it)}_optimiser.star"

    # ----------------------------------------------------------------------------------
    def _source(self, ctx: JobContext) -> StarParticles:
        return particle_source(ctx)

    def run_iteration(self, ctx: JobContext, it: int) -> dict[str, Any]:
        """One EM iteration from the previous checkpoint (or the initial model)."""
        threads = torch.get_num_threads()
        set_threads(int(ctx.params["threads"]) or None)
        try:
            return self._iteration(ctx, it)
        finally:
            set_threads(threads)  # in-process runs (tests, the web server) keep their setting

    def _iteration(self, ctx: JobContext, it: int) -> dict[str, Any]:
        device = resolve_device(str(ctx.params["device"]))
        options = options_from_params(ctx.params)
        source = self._source(ctx)
        running: RunningStatistics | None = None
        if it == 1:
            model, state = initialise(
                source, source.particles.origins_px(), options, device=device
            )
            ctx.log(f"{ctx.job_name}: {len(source)} particles, {options.n_classes} classes, "
                    f"starting at {model.current_resolution_angstrom:.1f} Å")
        else:
            model, state, extra = load_checkpoint(ctx.path(f"{_stem(ctx, it - 1)}_engine"))
            if "arrays" in extra:
                running = RunningStatistics.from_arrays(extra["arrays"], model.box_size, device)
        if ctx.params.get("vdam"):
            model, state, running, info = self._minibatches(
                ctx, it, model, state, running, source, options, device)
        else:
            model, state, info = iterate(model, state, source, options, device=device)
        self._write_iteration(ctx, it, model, state, source, options, running)
        what = (f"mini-batches to {_number(ctx, it)} ({info['minibatch_size']} particles last)"
                if ctx.params.get("vdam") else f"iteration {it}")
        ctx.log(
            f"{ctx.job_name}: {what}: log-likelihood {info['log_likelihood']:.6g}, "
            f"<Pmax> {info['average_pmax']:.3f}, {info['resolution_used_angstrom']:.1f} Å used, "
            f"changed classes {100 * info['changed_class_fraction']:.1f} %, "
            f"{info['fine_poses_per_particle']:.0f} fine poses per particle, "
            f"{info['seconds_expectation'] + info['seconds_maximisation']:.1f} s"
        )
        return info

    def _minibatches(
        self,
        ctx: JobContext,
        it: int,
        model: ClassModel,
        state: ParticleState,
        running: RunningStatistics | None,
        source: StarParticles,
        options: Class2DOptions,
        device: torch.device,
    ) -> tuple[ClassModel, ParticleState, RunningStatistics, dict[str, Any]]:
        """The mini-batches of job iteration ``it`` (10 of them; the last is a full EM pass)."""
        total = int(ctx.params["minibatches"])
        schedule = MinibatchSchedule.default(len(source), total, options.n_classes)
        seconds = [0.0, 0.0]
        info: dict[str, Any] = {}
        previous = state
        for step in range((it - 1) * _WRITE_EVERY + 1, min(it * _WRITE_EVERY, total) + 1):
            last = step == total
            model, state, running, info = minibatch_step(
                model, state, running, source, options,
                particles=None if last else schedule.particles(step, options.seed),
                eta=1.0 if last else schedule.weight(step), device=device,
                inactivity_threshold=_INACTIVITY if step <= 0.8 * total else 0.0,
                seed=options.seed * 7919 + step)
            seconds[0] += info["seconds_expectation"]
            seconds[1] += info["seconds_maximisation"]
        if running is None:  # pragma: no cover - the loop always runs at least one step
            raise RuntimeError(f"job iteration {it} has no mini-batch")
        seen = (previous.class_index >= 0) & (state.class_index >= 0)
        info["changed_class_fraction"] = round(float(
            (state.class_index[seen] != previous.class_index[seen]).double().mean()
        ) if bool(seen.any()) else 1.0, 6)
        info["seconds_expectation"], info["seconds_maximisation"] = (
            round(seconds[0], 3), round(seconds[1], 3))
        return model, state, running, info

    def _write_iteration(
        self,
        ctx: JobContext,
        it: int,
        model: ClassModel,
        state: ParticleState,
        source: StarParticles,
        options: Class2DOptions,
        running: RunningStatistics | None = None,
    ) -> None:
        stem = _stem(ctx, it)
        apix = model.pixel_size_angstrom
        write_mrc(ctx.path(f"{stem}_classes.mrcs"), model.references.numpy(),
                  voxel_size_angstrom=apix)
        write_relion_star(ctx.path(f"{stem}_data.star"),
                          data_table(source.particles.table, state, apix))
        write_star(ctx.path(f"{stem}_model.star"),
                   model_blocks(model, ctx.rel(f"{stem}_classes.mrcs"), options,
                                source.group_numbers, _group_sizes(source)))
        save_checkpoint(ctx.path(f"{stem}_engine"), model, state,
                        extra={"options": options.to_json()},
                        arrays=None if running is None else running.arrays())
        write_star(ctx.path(f"{stem}_optimiser.star"),
                   {"optimiser_general": optimiser_pairs(ctx, it, options)})
        if running is not None and it > 2:
            # the running sums are large; only the last checkpoints are needed to continue
            ctx.path(f"{_stem(ctx, it - 2)}_engine.pt").unlink(missing_ok=True)

    def finalize(self, ctx: JobContext, last_iteration: int) -> None:
        """Copies of the last iteration, the class table and the gallery."""
        if last_iteration < 1:
            return
        stem = _stem(ctx, last_iteration)
        model, _, _ = load_checkpoint(ctx.path(f"{stem}_engine"))
        for src, dst in (("data", "run_data.star"), ("optimiser", "run_optimiser.star")):
            with atomic_output(ctx.path(dst)) as tmp:
                shutil.copyfile(ctx.path(f"{stem}_{src}.star"), tmp)
        particles = read_relion_star(ctx.path(f"{stem}_data.star"), "particles")
        write_relion_star(ctx.path("run_class_averages.star"),  # first block read by autopick
                          class_average_table(model, ctx.rel(f"{stem}_classes.mrcs"), particles),
                          data_first=True)
        counts = np.bincount(particles.data["rlnClassNumber"].to_numpy(dtype=np.int64) - 1,
                             minlength=model.n_classes)
        table = class_table(model, counts)
        write_text_atomic(ctx.path("run_classes.txt"), table)
        ctx.log(table.rstrip())
        from cryospa.plots.classes import class_gallery

        class_gallery(
            model.references.numpy(),
            model.class_fractions.numpy(),
            model.resolution_angstrom.numpy(),
            ctx.path("run_classes.png"),
            title=f"{ctx.job_name}: iteration {_number(ctx, last_iteration)}, "
            f"{int(counts.sum())} particles",
        )

    def summary(self, ctx: JobContext, last_iteration: int, info: Mapping[str, Any]) -> str:
        """``20 classes, 25 iterations, best 8.9 Å; largest: #3 12.1 % 9.2 Å, ...``."""
        fractions = list(info.get("class_fractions") or [])
        res = list(info.get("class_resolution_angstrom") or [])
        if not fractions:
            return f"{last_iteration} iterations"
        order = sorted(range(len(fractions)), key=lambda i: (-fractions[i], i))
        best = min((r for r, f in zip(res, fractions, strict=False) if f > 0), default=999.0)
        top = ", ".join(
            f"#{i + 1} {100 * fractions[i]:.1f} % {res[i]:.1f} Å" if res[i] < 999
            else f"#{i + 1} {100 * fractions[i]:.1f} %"
            for i in order[:5]
        )
        steps = (f"{_number(ctx, last_iteration)} mini-batches" if ctx.params.get("vdam")
                 else f"{last_iteration} iterations")
        return f"{len(fractions)} classes, {steps}, best {best:.1f} Å; largest: {top}"


# --------------------------------------------------------------------------------------
# RELION files
# --------------------------------------------------------------------------------------


def particle_source(ctx: JobContext) -> StarParticles:
    """The job's ``particles`` input as an engine source, made once per run (``ctx.scratch``)."""
    cached = ctx.scratch.get("source")
    if isinstance(cached, StarParticles):
        return cached
    source = StarParticles(
        load_particles(ctx.abs(ctx.input("particles").path)),
        intact_until_first_peak=bool(ctx.params["ignore_ctf_until_first_peak"]),
    )
    ctx.scratch["source"] = source
    return source


def project_file(project_dir: Path, path: str) -> Path:
    """``path`` as given to a job: absolute, or relative to the project folder."""
    p = Path(path)
    return p if p.is_absolute() else project_dir / p


def _group_sizes(source: StarParticles) -> np.ndarray:
    return np.bincount(source.optics_groups().numpy(), minlength=len(source.group_numbers))


def data_table(table: RelionTable, state: ParticleState, pixel_size: float) -> RelionTable:
    """The input particles with the iteration's assignments (RELION's run_itNNN_data.star)."""
    data = table.data.copy()
    data["rlnAnglePsi"] = state.psi_degrees.numpy()
    origins = state.offsets_px.numpy() * pixel_size
    data["rlnOriginXAngst"] = origins[:, 0]
    data["rlnOriginYAngst"] = origins[:, 1]
    data["rlnClassNumber"] = state.class_index.numpy().astype(np.int64) + 1
    data["rlnNormCorrection"] = 1.0
    data["rlnLogLikeliContribution"] = state.log_likelihood.numpy()
    data["rlnMaxValueProbDistribution"] = state.max_probability.numpy()
    data["rlnNrOfSignificantSamples"] = state.significant_samples.numpy().astype(np.int64)
    return RelionTable(kind="particles", data=data, optics=table.optics.copy(),
                       other_blocks={}, path=None)


def _relion_spectrum(values: torch.Tensor, box_size: int) -> np.ndarray:
    """Ortho power per coefficient -> RELION's (forward FFT / n^2, per real component)."""
    return values.numpy() / (2.0 * box_size * box_size)


def model_blocks(
    model: ClassModel,
    classes_mrcs: str,
    options: Class2DOptions,
    group_numbers: np.ndarray,
    group_sizes: np.ndarray,
) -> dict[str, Any]:
    """The blocks of RELION's run_itNNN_model.star (RELION 3.1 labels and units)."""
    n = model.box_size
    apix = model.pixel_size_angstrom
    k = model.n_classes
    shells = np.arange(n // 2 + 1)
    with np.errstate(divide="ignore"):
        inv_res = shells / (n * apix)
        ang_res = np.where(shells > 0, n * apix / np.maximum(shells, 1), 999.0)
    blocks: dict[str, Any] = {
        "model_general": {
            "rlnReferenceDimensionality": 2,
            "rlnDataDimensionality": 2,
            "rlnOriginalImageSize": n,
            "rlnCurrentResolution": model.current_resolution_angstrom,
            "rlnCurrentImageSize": min(n, 2 * model.current_shell),
            "rlnPaddingFactor": 2.0,
            "rlnIsHelix": 0,
            "rlnFourierSpaceInterpolator": 1,
            "rlnMinRadiusNnInterpolation": 10,
            "rlnPixelSize": apix,
            "rlnNrClasses": k,
            "rlnNrBodies": 1,
            "rlnNrGroups": len(group_numbers),
            "rlnTau2FudgeFactor": options.tau2_fudge,
            "rlnNormCorrectionAverage": 1.0,
            "rlnSigmaOffsetsAngst": model.sigma_offset_angstrom,
            "rlnOrientationalPriorMode": 0,
            "rlnSigmaPriorRotAngle": 0.0,
            "rlnSigmaPriorTiltAngle": 0.0,
            "rlnSigmaPriorPsiAngle": 0.0,
            "rlnLogLikelihood": model.log_likelihood,
            "rlnAveragePmax": model.average_pmax,
        },
        "model_classes": pd.DataFrame({
            "rlnReferenceImage": [format_image_name(i, classes_mrcs) for i in range(k)],
            "rlnClassDistribution": model.class_fractions.numpy(),
            "rlnAccuracyRotations": model.accuracy_rotation_degrees.numpy(),
            "rlnAccuracyTranslationsAngst": model.accuracy_translation_angstrom.numpy(),
            "rlnEstimatedResolution": model.resolution_angstrom.numpy(),
            "rlnOverallFourierCompleteness": np.ones(k),
            "rlnClassPriorOffsetX": np.zeros(k),
            "rlnClassPriorOffsetY": np.zeros(k),
        }),
    }
    tau2 = _relion_spectrum(model.tau2, n)
    for c in range(k):
        dvp = model.data_vs_prior[c].numpy()
        ref_sigma2 = np.where(dvp > 0, options.tau2_fudge * tau2[c] / np.where(dvp > 0, dvp, 1),
                              0.0)
        blocks[f"model_class_{c + 1}"] = pd.DataFrame({
            "rlnSpectralIndex": shells,
            "rlnResolution": inv_res,
            "rlnAngstromResolution": ang_res,
            "rlnSsnrMap": dvp,
            "rlnGoldStandardFsc": np.zeros(shells.size),
            "rlnFourierCompleteness": (shells <= model.current_shell).astype(np.float64),
            "rlnReferenceSigma2": ref_sigma2,
            "rlnReferenceTau2": tau2[c],
            "rlnSpectralOrientabilityContribution": np.zeros(shells.size),
        })
    blocks["model_groups"] = pd.DataFrame({
        "rlnGroupNumber": np.arange(1, len(group_numbers) + 1),
        "rlnGroupName": [f"group_{int(g)}" for g in group_numbers],
        "rlnGroupNrParticles": group_sizes.astype(np.int64),
        "rlnGroupScaleCorrection": np.ones(len(group_numbers)),
    })
    sigma2 = _relion_spectrum(model.sigma2, n)
    for g in range(len(group_numbers)):
        blocks[f"model_group_{g + 1}"] = pd.DataFrame({
            "rlnSpectralIndex": shells,
            "rlnResolution": inv_res,
            "rlnSigma2Noise": sigma2[g],
        })
    return blocks


def optimiser_pairs(ctx: JobContext, it: int, options: Class2DOptions) -> dict[str, Any]:
    """RELION's run_itNNN_optimiser.star ``data_optimiser_general`` (the files of ``it``)."""
    stem = _stem(ctx, it)
    return {
        "rlnOutputRootName": ctx.rel("run"),
        "rlnModelStarFile": ctx.rel(f"{stem}_model.star"),
        "rlnExperimentalDataStarFile": ctx.rel(f"{stem}_data.star"),
        "rlnCurrentIteration": _number(ctx, it),
        "rlnNumberOfIterations": int(ctx.params["minibatches"] if ctx.params.get("vdam")
                                     else ctx.params["iterations"]),
        "rlnDoStochasticGradientDescent": int(bool(ctx.params.get("vdam"))),
        "rlnDoSplitRandomHalves": 0,
        "rlnJoinHalvesUntilThisResolution": -1.0,
        "rlnAdaptiveOversampleOrder": 1 if options.adaptive else 0,
        "rlnAdaptiveOversampleFraction": options.adaptive_fraction,
        "rlnRandomSeed": options.seed,
        "rlnParticleDiameter": options.particle_diameter_angstrom,
        "rlnWidthMaskEdge": int(options.mask_edge_px),
        "rlnDoZeroMask": int(options.zero_mask),
        "rlnDoSolventFlattening": 1,
        "rlnHighresLimitExpectation": options.strict_highres_angstrom or -1.0,
        "rlnIncrementImageSize": options.incr_size,
        "rlnDoMapEstimation": 1,
        "rlnDoCorrectCtf": int(options.ctf),
        "rlnDoIgnoreCtfUntilFirstPeak": int(options.ignore_ctf_until_first_peak),
        "rlnRefsAreCtfCorrected": int(options.ctf),
    }


def class_average_table(
    model: ClassModel, classes_mrcs: str, particles: RelionTable
) -> RelionTable:
    """The class averages as a ClassAverages set (one row per class, optics of the data)."""
    k = model.n_classes
    first = particles.optics.iloc[:1].copy()
    first["rlnOpticsGroup"] = 1
    first["rlnImageDimensionality"] = 2
    data = pd.DataFrame({
        "rlnImageName": [format_image_name(i, classes_mrcs) for i in range(k)],
        "rlnClassNumber": np.arange(1, k + 1),
        "rlnClassDistribution": model.class_fractions.numpy(),
        "rlnEstimatedResolution": model.resolution_angstrom.numpy(),
        "rlnAccuracyRotations": model.accuracy_rotation_degrees.numpy(),
        "rlnAccuracyTranslationsAngst": model.accuracy_translation_angstrom.numpy(),
        "rlnOpticsGroup": np.ones(k, dtype=np.int64),
    })
    return RelionTable(kind="particles", data=data, optics=first.reset_index(drop=True),
                       other_blocks={}, path=None)


def class_table(model: ClassModel, counts: np.ndarray) -> str:
    """A text table of the classes, largest first."""
    from cryospa.plots.classes import gallery_order

    lines = ["class  particles  fraction  resolution(Å)  acc.rot(°)  acc.trans(Å)"]
    for c in gallery_order(model.class_fractions.numpy()):
        res = float(model.resolution_angstrom[c])
        lines.append(
            f"{c + 1:5d}  {int(counts[c]):9d}  {100 * float(model.class_fractions[c]):7.2f} %"
            f"  {res if res < 999 else math.inf:13.2f}"
            f"  {float(model.accuracy_rotation_degrees[c]):10.2f}"
            f"  {float(model.accuracy_translation_angstrom[c]):12.2f}"
        )
    return "\n".join(lines) + "\n"

