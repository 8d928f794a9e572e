"""``cryospa demo``: the tutorial's chain on simulated data, and what came out of it.

The data set is ``cryospa simulate --preset tutorial`` (lactate dehydrogenase, D2) in
``Simulated/`` of the project (made by :mod:`cryospa.cli.demo`); the chain is the shipped
``demo`` workflow (:mod:`cryospa.workflow.templates`), run by :func:`run_demo` through the
workflow runner, so that running the demo again skips the finished steps and continues a killed
one. Two things the workflow file cannot know are filled in here: the mask threshold (from the
refined map: the level enclosing the specimen's volume, :func:`volume_threshold`) and the check
of the result against the simulation's true map (:func:`fsc_to_truth`). :func:`summarise`
gathers the numbers a user looks at: movies, micrographs, particles picked and kept, classes,
resolution, B-factor, the true-map FSC and the wall time of every step.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryospa.errors import CryospaError
from cryospa.project.project import JobRecord, Project
from cryospa.workflow.runner import WorkflowResult, read_state, run_workflow
from cryospa.workflow.spec import Workflow, find_job_type, parse_workflow
from cryospa.workflow.templates import template_text

__all__ = [
    "DATA_FOLDER",
    "DEMO_SPECIMEN_VOLUME_A3",
    "DemoSummary",
    "TwoPassEcho",
    "demo_workflow",
    "fsc_to_truth",
    "run_demo",
    "runnable_until",
    "summarise",
    "volume_threshold",
]

#: Where the simulated data set goes in the demo's project.
DATA_FOLDER = "Simulated"
#: Volume of the demo's specimen, human LDH (PDB 1I10, 4 x 36.6 kDa), at 1.21 Å³ per Da.
DEMO_SPECIMEN_VOLUME_A3 = 4 * 36_600 * 1.21
_MASK_STEP, _REFINE_STEP = "mask", "refine"


# --------------------------------------------------------------------------------------
# The workflow
# --------------------------------------------------------------------------------------


def _set_var(text: str, name: str, value: object) -> str:
    """The template's text with ``vars: name:`` set to ``value`` (comments kept)."""
    pattern = re.compile(rf"^(  {name}:[ ]*)([^#\n]*?)(\s*(#.*)?)$", re.MULTILINE)
    if not pattern.search(text):
        raise CryospaError(f"demo workflow: no variable {name!r} in the template")
    return pattern.sub(lambda m: f"{m.group(1)}{value}{m.group(3)}", text, count=1)


def demo_workflow(*, threads: int = 2, angpix: float | None = None,
                  mask_threshold: float | None = None) -> Workflow:
    """The shipped ``demo`` workflow with its threads, pixel size and mask threshold set."""
    text = _set_var(template_text("demo"), "threads", int(threads))
    if angpix is not None:
        text = _set_var(text, "angpix", f"{angpix:g}")
    if mask_threshold is not None:
        text = _set_var(text, "mask_threshold", f"{mask_threshold:.6g}")
    return parse_workflow(text, source="demo.yaml", default_name="demo")


def runnable_until(workflow: Workflow, until: str | None) -> tuple[str | None, list[str]]:
    """The last step that can run (``until`` or before), and the job types not installed.

    A step whose job type is not registered in this installation (a job still being written)
    and the steps after it cannot run: the demo stops before it and says so.
    """
    steps = workflow.until(until)
    for i, step in enumerate(steps):
        if find_job_type(step.job) is None:
            missing = sorted({s.job for s in steps[i:] if find_job_type(s.job) is None})
            return (steps[i - 1].name if i > 0 else None), missing
    return (until if until is not None else workflow.steps[-1].name), []


def volume_threshold(volume: np.ndarray, *, pixel_size_angstrom: float,
                     specimen_volume_a3: float, lowpass_angstrom: float = 15.0) -> float:
    """The level of the low-passed map that encloses ``specimen_volume_a3``.

    As a user sets a mask threshold by eye: the map is low-passed as ``cryospa mask`` does
    before binarising, and the threshold is the value above which the voxels add up to the
    specimen's volume.

    Parameters
    ----------
    volume : numpy.ndarray
        ``(n, n, n)`` map.
    pixel_size_angstrom : float
        Its pixel size, Å.
    specimen_volume_a3 : float
        The specimen's volume, Å³ (about 1.21 Å³ per Da of protein).
    lowpass_angstrom : float
        Low-pass before counting (the mask job's ``--lowpass``).

    """
    import torch

    from cryospa.core.filters import lowpass

    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"volume {volume.shape}: need a cubic (n, n, n) map")
    if pixel_size_angstrom <= 0 or specimen_volume_a3 <= 0:
        raise ValueError(f"pixel size {pixel_size_angstrom} Å and volume {specimen_volume_a3} "
                         "Å³ must be > 0")
    v = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float64))
    if lowpass_angstrom > 0:
        v = lowpass(v, lowpass_angstrom, pixel_size_angstrom=pixel_size_angstrom, ndim=3)
    values = np.sort(v.numpy().ravel())[::-1]
    n_inside = round(specimen_volume_a3 / pixel_size_angstrom**3)
    n_inside = min(max(n_inside, 1), values.size)
    return float(values[n_inside - 1])


# --------------------------------------------------------------------------------------
# The result against the truth
# --------------------------------------------------------------------------------------


def _common_box(n: int, pixel_from: float, pixel_to: float) -> int:
    """Smallest box >= n whose Fourier rescaling from ``pixel_from`` to ``pixel_to`` is exact."""
    for box in range(n, 8 * n + 1, 2):
        m = box * pixel_from / pixel_to
        if abs(m - round(m)) < 1e-3 and round(m) % 2 == 0:
            return box
    return n


def _signed_permutations() -> list[tuple[tuple[int, ...], tuple[bool, ...]]]:
    """The 48 axis permutations with sign flips (the octahedral group and its mirror images)."""
    return [(perm, flips) for perm in itertools.permutations(range(3))
            for flips in itertools.product((False, True), repeat=3)]


def _apply(volume: Any, perm: tuple[int, ...], flips: tuple[bool, ...]) -> Any:
    """Permute the axes and mirror the flipped ones about the box centre (index n / 2)."""
    import torch

    out = volume.permute(*perm)
    for axis, flip in enumerate(flips):
        if flip:
            out = torch.roll(torch.flip(out, (axis,)), 1, dims=axis)
    return out


def fsc_to_truth(
    volume: np.ndarray,
    pixel_size_angstrom: float,
    truth: np.ndarray,
    truth_pixel_size_angstrom: float,
    *,
    mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """FSC between a map and the true map, after bringing them into register.

    The truth is re-scaled (Fourier, padded first so that the scaling is exact) and windowed to
    the map's pixel size and box. A de novo map is determined only up to the axes' order and
    sign and its hand: for a map aligned on its symmetry axes (as a D2 refinement is) the 48
    signed axis permutations cover this; the best one, with the best translation (phase
    correlation), is kept. Both maps are multiplied by ``mask`` when given.

    Parameters
    ----------
    volume : numpy.ndarray
        ``(n, n, n)`` map.
    pixel_size_angstrom : float
        Its pixel size, Å.
    truth : numpy.ndarray
        ``(m, m, m)`` true map.
    truth_pixel_size_angstrom : float
        Its pixel size, Å.
    mask : numpy.ndarray or None
        ``(n, n, n)`` soft mask applied to both maps.

    Returns
    -------
    dict
        ``fsc`` (n // 2 + 1,), ``resolution_0.5`` and ``resolution_0.143`` in Å (where the FSC
        first drops below), ``hand_flipped`` and ``shift_px``.

    """
    import torch

    from cryospa.core.fsc import fsc, resolution_at_threshold
    from cryospa.jobs.resize import resize_volume, window

    n = int(volume.shape[-1])
    if volume.shape != (n, n, n) or truth.ndim != 3 or len(set(truth.shape)) != 1:
        raise ValueError(f"volume {volume.shape} and truth {truth.shape}: need cubic maps")
    if mask is not None and mask.shape != volume.shape:
        raise ValueError(f"mask {mask.shape} does not match the map {volume.shape}")
    t = torch.from_numpy(np.ascontiguousarray(truth, dtype=np.float64))
    box = _common_box(int(t.shape[-1]), truth_pixel_size_angstrom, pixel_size_angstrom)
    t, _ = resize_volume(window(t, box), pixel_size_angstrom=truth_pixel_size_angstrom,
                         new_pixel_size_angstrom=pixel_size_angstrom, new_box=n)
    v = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float64))
    m = (torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float64)) if mask is not None
         else torch.ones_like(v))
    ft = torch.fft.rfftn(t * m)
    best: tuple[float, Any, tuple[int, int, int], bool] | None = None
    for perm, flips in _signed_permutations():
        cand = _apply(v, perm, flips)
        cc = torch.fft.irfftn(torch.fft.rfftn(cand * m) * ft.conj(), s=(n, n, n))
        peak = int(torch.argmax(cc))
        score = float(cc.reshape(-1)[peak])
        if best is None or score > best[0]:
            idx = [int(i) for i in np.unravel_index(peak, (n, n, n))]
            det = np.linalg.det(np.eye(3)[list(perm)]) * (-1) ** sum(flips)
            best = (score, cand, (idx[0], idx[1], idx[2]), det < 0)
    assert best is not None
    _, aligned, shift, flipped = best
    aligned = torch.roll(aligned, (-shift[0], -shift[1], -shift[2]), dims=(0, 1, 2))
    curve = fsc(aligned * m, t * m)
    signed = tuple(int(s if s <= n // 2 else s - n) for s in shift)
    return {
        "fsc": curve.numpy(),
        **{f"resolution_{c:g}": float(resolution_at_threshold(
            curve, box_size=n, pixel_size_angstrom=pixel_size_angstrom, threshold=c))
           for c in (0.5, 0.143)},
        "hand_flipped": bool(flipped),
        "shift_px": signed,
    }


# --------------------------------------------------------------------------------------
# Running and summarising
# --------------------------------------------------------------------------------------


def _data_pixel_size(data_dir: Path) -> float:
    import json

    path = data_dir / "ground_truth" / "simulation.json"
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["pixel_size_angstrom"])
    except (OSError, ValueError, KeyError) as err:
        raise CryospaError(f"{path}: not readable as a simulation's parameters ({err}): "
                           "delete the folder and run the demo again to simulate anew") from err


def _step_jobs(project: Project, workflow: Workflow) -> dict[str, JobRecord]:
    project.refresh()
    out = {}
    for step, name in read_state(project, workflow.name).items():
        job = project.find_job(name)
        if job is not None and not job.deleted:
            out[step] = job
    return out


def _refined_map(project: Project, job: JobRecord) -> Path:
    for o in project.outputs(job.id):
        if o.name == "map":
            return project.path(o.path)
    raise CryospaError(f"{job.label} has no map output")


def run_demo(
    project: Project,
    *,
    until: str | None = None,
    threads: int = 2,
    echo: Callable[[str], None] | None = None,
    data_dir: Path | None = None,
    specimen_volume_a3: float = DEMO_SPECIMEN_VOLUME_A3,
) -> tuple[WorkflowResult, Workflow, str | None]:
    """Run (or resume) the demo workflow in ``project`` up to ``until``.

    ``data_dir``: the simulated data set (its pixel size sets the workflow's ``angpix``).
    Returns the runner's result, the workflow as run and the last step that could run (steps
    of job types not installed are left out; see :func:`runnable_until`).
    """
    out = echo or (lambda line: print(line, flush=True))
    angpix = _data_pixel_size(data_dir) if data_dir is not None else None
    workflow = demo_workflow(threads=threads, angpix=angpix)
    last, missing = runnable_until(workflow, until)
    if missing:
        out(f"note: job type(s) {', '.join(missing)} not installed in this cryospa: the demo "
            f"stops after step {last!r}")
    if last is None:
        return WorkflowResult(), workflow, None
    names = [s.name for s in workflow.until(last)]
    once = TwoPassEcho(out)

    if _MASK_STEP in names:  # the mask's threshold comes from the refined map
        first = run_workflow(project, workflow, until=_REFINE_STEP, j=threads, echo=once,
                             command="cryospa demo")
        if not first.ok:
            return first, workflow, last
        once.first_pass.update(step.name for step in workflow.until(_REFINE_STEP))
        job = _step_jobs(project, workflow)[_REFINE_STEP]
        from cryospa.io.mrc import read_mrc

        volume, header = read_mrc(_refined_map(project, job))
        apix = float(header.voxel_size_angstrom[0])
        level = volume_threshold(volume, pixel_size_angstrom=apix,
                                 specimen_volume_a3=specimen_volume_a3)
        out(f"mask threshold {level:.4g}: the level of the 15 Å low-passed refined map that "
            f"encloses the specimen's {specimen_volume_a3 / 1000:.0f} nm³")
        workflow = demo_workflow(threads=threads, angpix=angpix, mask_threshold=level)
    result = run_workflow(project, workflow, until=last, j=threads, echo=once,
                          command="cryospa demo")
    return result, workflow, last


class TwoPassEcho:
    """The demo's progress lines over its two workflow passes (to the refinement, then on).

    The second pass would list every step of the first as "skipped": those lines, and lines
    already shown, are left out.
    """

    def __init__(self, out: Callable[[str], None]) -> None:
        self.out = out
        self.first_pass: set[str] = set()  # steps the first pass handled
        self._said: set[str] = set()

    def __call__(self, line: str) -> None:
        """Show ``line`` unless it is a repeat (class docstring)."""
        step = re.match(r"\[\d+/\d+\] ([^:]+): skipped: ", line)
        if (step and step.group(1) in self.first_pass) or line in self._said:
            return
        self._said.add(line)
        self.out(line)


@dataclass
class DemoSummary:
    """What the demo produced (see :func:`summarise`); ``lines()`` for the terminal."""

    counts: dict[str, str] = field(default_factory=dict)
    steps: list[tuple[str, str, str, float]] = field(default_factory=list)  # step, job, dir, s
    resolution_angstrom: float | None = None
    bfactor_angstrom2: float | None = None
    truth: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The summary as text lines."""
        out = ["", "cryospa demo: summary"]
        out += [f"  {k:<22} {v}" for k, v in self.counts.items()]
        if self.resolution_angstrom is not None:
            out.append(f"  {'resolution':<22} {self.resolution_angstrom:.2f} Å (gold-standard "
                       "FSC 0.143, masked)")
        if self.bfactor_angstrom2 is not None:
            out.append(f"  {'B-factor':<22} {self.bfactor_angstrom2:.0f} Å²")
        if self.truth is not None:
            r05, r0143 = self.truth["resolution_0.5"], self.truth["resolution_0.143"]
            line = (f"  {'vs the true map':<22} FSC 0.5 at {r05:.2f} Å (0.143 at "
                    f"{r0143:.2f} Å)")
            if self.resolution_angstrom is not None:
                ratio = self.resolution_angstrom / r05
                line += (f"; reported / true-map resolution {ratio:.2f} "
                         + ("(within 15 %)" if abs(ratio - 1) <= 0.15 else "(more than 15 % "
                            "apart)"))
            out.append(line)
        if self.steps:
            out.append("  wall time per step:")
            total = 0.0
            for step, job, folder, seconds in self.steps:
                total += seconds
                out.append(f"    {step:<16} {job:<7} {folder + '/':<22} {_clock(seconds)}")
            out.append(f"    {'total':<16} {'':<7} {'':<22} {_clock(total)}")
        if self.files:
            out.append("  where to look:")
            out += [f"    {k:<20} {v}" for k, v in self.files.items()]
        return out


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m:d}:{s:02d}"


def _rows(project: Project, job: JobRecord, name: str) -> int | None:
    from cryospa.io.star import read_relion_star

    for o in project.outputs(job.id):
        if o.name == name and o.path.endswith(".star") and project.path(o.path).is_file():
            return len(read_relion_star(project.path(o.path)).data)
    return None


def summarise(project: Project, workflow: Workflow, data_dir: Path | None = None) -> DemoSummary:
    """Counts, resolution, B-factor, true-map FSC, wall times and files of the demo's jobs.

    ``data_dir``: the simulated data set (its ``ground_truth/map_class001.mrc`` is the true map).
    """
    jobs = _step_jobs(project, workflow)
    s = DemoSummary()

    def count(step: str, output: str) -> int | None:
        job = jobs.get(step)
        return _rows(project, job, output) if job is not None and job.status == "succeeded" \
            else None

    for label, step, output in (("movies", "movies", "movies"),
                                ("micrographs", "motion", "micrographs"),
                                ("particles, LoG picks", "log_particles", "particles"),
                                ("particles, template", "particles", "particles"),
                                ("particles kept (2D)", "good_particles", "particles"),
                                ("particles, best 3D", "best_class", "particles")):
        n = count(step, output)
        if n is not None:
            s.counts[label] = str(n)
    for label, step in (("2D classes (LoG)", "templates"), ("2D classes", "good_particles"),
                        ("3D classes", "best_class")):
        job = jobs.get(step)
        if job is not None and job.status == "succeeded" and job.summary:
            s.counts[label] = job.summary
    for wf_step in workflow.steps:
        job = jobs.get(wf_step.name)
        if job is not None and job.started and job.ended and job.status == "succeeded":
            s.steps.append((wf_step.name, job.name, job.dir, job.ended - job.started))
    post = jobs.get("postprocess")
    if post is not None and post.status == "succeeded":
        _postprocess_figures(project, post, s, data_dir)
    for step, label, pattern in (("log_classes", "2D classes (LoG)", "*classes*.png"),
                                 ("good_particles", "2D selection", "selected.png"),
                                 ("refine", "refinement", "run_fsc.png")):
        job = jobs.get(step)
        if job is not None and job.status == "succeeded":
            found = sorted(project.path(job.dir).glob(pattern))
            if found:
                s.files.setdefault(label, str(found[-1].relative_to(project.root)))
    return s


def _postprocess_figures(project: Project, post: JobRecord, s: DemoSummary,
                         data_dir: Path | None) -> None:
    from cryospa.io.mrc import read_mrc
    from cryospa.io.star import read_star

    folder = project.path(post.dir)
    general = read_star(folder / "postprocess.star").get("general")
    if general is not None:
        row = general.iloc[0]
        s.resolution_angstrom = float(row["rlnFinalResolution"])
        if "rlnBfactorUsedForSharpening" in general.columns:
            s.bfactor_angstrom2 = float(row["rlnBfactorUsedForSharpening"])
    s.files["map"] = str((folder / "postprocess_masked.mrc").relative_to(project.root))
    for png in sorted(folder.glob("*.png")):
        s.files[f"plot {png.stem}"] = str(png.relative_to(project.root))
    truth_path = (data_dir / "ground_truth" / "map_class001.mrc") if data_dir else None
    if truth_path is not None and truth_path.is_file():
        volume, header = read_mrc(folder / "postprocess.mrc")
        truth, theader = read_mrc(truth_path)
        mask = None
        mask_name = general.iloc[0].get("rlnMaskName") if general is not None else None
        if isinstance(mask_name, str) and project.path(mask_name).is_file():
            mask, _ = read_mrc(project.path(mask_name))
        s.truth = fsc_to_truth(volume, float(header.voxel_size_angstrom[0]), truth,
                               float(theader.voxel_size_angstrom[0]), mask=mask)


def wall_clock(start: float) -> str:
    """``m:ss`` since ``start`` (``time.monotonic()``)."""
    return _clock(time.monotonic() - start)
