"""``cryospa select``: keep good 2D classes (by number or ``--auto``) or the best 3D class.

Input: a 2D classification (a ``cryospa class2d`` job, its ``run_optimiser.star`` or any
iteration's ``run_itNNN_optimiser.star``; RELION's ``run_itNNN_optimiser.star`` works too). The
optimiser names the model STAR file (class averages, class distribution, resolution, accuracies)
and the particles STAR file (each particle's class).

* ``--classes 1,4,7-9``: keep these classes (numbers as shown in the class2d gallery / table).
* ``--auto``: rank the classes by interpretable features and keep those scoring at least
  ``--min-score``. Each feature gives a sub-score between 0 (bad) and 1 (good); a class's score
  is the product of its sub-scores, so one clear defect is enough to reject it:

  ============== =========================================================== ==================
  feature        what it is                                                  sub-score 1 / 0
  ============== =========================================================== ==================
  size           class fraction x number of classes (1 = an equal share)     >= 0.25 / 0
  resolution     the class's estimated resolution / that of the best class    <= 3 / >= 5
  contrast       s.d. inside the mask / median over the populated classes    0.25-2 / 0 or >= 3
  edge           signal in the mask's outer ring / in its centre              <= 1 / >= 2
  centring       centre of mass of the density from the box centre / radius   <= 0.1 / >= 0.3
  ============== =========================================================== ==================

  Too much contrast is ice contamination or carbon; signal at the mask edge is aggregates,
  neighbours or ice edges; density off-centre is junk that did not align; a resolution much
  worse than the best class's is noise or heterogeneous junk; tiny classes hold outliers (see
  :mod:`cryospa.core.class_features`). ``class_scores.star`` lists every feature, sub-score and
  score, so a user can see why a class was kept or rejected and adjust ``--min-score``.

  When no class reaches ``--min-score`` the job is refused before anything is written: the
  message names the threshold, the best class's score and the features that held it down.

  Then, within the kept classes, particles that do not hold their whole class are dropped
  (``--particle-sigma``, 3 by default with ``--auto``). A broken particle that keeps most of a
  particle lands in the class of its view, so no class score can find it, but one side of it
  lacks the class average's density. For each particle, the signal amplitude relative to its
  class average at its assigned angle and origin (the noise-weighted least-squares scale of the
  CTF-modulated average, :mod:`cryospa.engine.amplitude`) is measured in each half of the box on
  either side of 4 lines through the centre; the weakest half (about 1 for a whole particle,
  0.2-0.6 for a broken one) is divided by its class's median and then by its micrograph's
  median (ice thickness), and particles more than ``--particle-sigma`` robust standard
  deviations (1.4826 x the median absolute deviation) below the median are removed.
  ``particle_scores.star`` lists every particle's whole and weakest-half amplitude, relative
  value and deviation, ``particle_amplitudes.png`` their histogram with the threshold.

* ``--class3d JOB --auto``: the best class of a 3D classification (a ``cryospa class3d`` job,
  or its ``run_data.star`` / ``run_itNNN_data.star`` with the model STAR file and the class maps
  next to it): among the classes holding at least a quarter of an equal share of the particles,
  those whose resolution is within 10 % of the best, and of these the largest. ``--classes``
  chooses 3D classes by number instead. Outputs: ``particles.star`` (the particles of the kept
  classes) and ``best_class.mrc`` (the map of the largest kept class, a Volume for ``resize`` or
  ``refine3d``), ``class_scores.star`` / ``.txt`` (per class: particles, fraction, resolution,
  kept).

Outputs (2D): ``particles.star`` (the particles of the kept classes, less those dropped by
``--particle-sigma``, with their class, angle and origin, RELION 3.1), ``class_averages.star``
(the kept class averages, a ClassAverages set for ``cryospa pick template`` and
``relion_autopick --ref``: its images block comes first, as that program reads only a file's
first block), ``class_scores.star`` (per class: particles, features,
sub-scores, score, particles dropped, selected), ``particle_scores.star`` and
``particle_amplitudes.png`` (with ``--particle-sigma``), ``selected.png`` (the gallery with kept
classes framed green, rejected red, and their scores) and ``class_scores.txt``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryospa.compute.device import resolve_device
from cryospa.engine.amplitude import ParticleAmplitudes
from cryospa.errors import InputFileError, ParameterError
from cryospa.io._files import write_text_atomic
from cryospa.io.mrc import format_image_name, parse_image_name, read_mrc
from cryospa.io.star import RelionTable, read_relion_star, read_star, write_relion_star, write_star
from cryospa.jobs.sets import parse_rows
from cryospa.project.nodes import NodeType
from cryospa.project.schema import (
    DEVICE_PARAM,
    Input,
    JobContext,
    Output,
    Param,
    PerItemJob,
    ResolvedInput,
    RunOptions,
    register,
)

__all__ = [
    "ClassSet",
    "Classes3D",
    "Select",
    "auto_keep",
    "best_3d_class",
    "class_scores",
    "particle_outliers",
    "read_classification",
    "read_classification_3d",
]

_DESCRIPTION = __doc__ or ""

#: The features and how they map to sub-scores: (column, good up to, bad from).
FEATURES = ("size", "resolution", "contrast", "edge", "centring")


@dataclass
class ClassSet:
    """A 2D classification read back: its classes and particles."""

    model_path: Path
    particles: RelionTable
    classes: pd.DataFrame  # model_classes (rlnReferenceImage, rlnClassDistribution, ...)
    images: np.ndarray  # (K, n, n) class averages
    pixel_size_angstrom: float
    particle_diameter_angstrom: float
    iteration: int
    data_path: Path | None = None  # the particles STAR file
    ctf_corrected: bool = True  # rlnDoCorrectCtf of the optimiser
    intact_until_first_peak: bool = False  # rlnDoIgnoreCtfUntilFirstPeak
    mask_edge_px: float = 5.0  # rlnWidthMaskEdge

    @property
    def n_classes(self) -> int:
        """Number of classes K."""
        return len(self.classes)

    def counts(self) -> np.ndarray:
        """Particles per class (K,)."""
        numbers = self.particles.data["rlnClassNumber"].to_numpy(dtype=np.int64)
        return np.bincount(numbers - 1, minlength=self.n_classes)[: self.n_classes]


def _locate(path: str, project_dir: Path, star: Path) -> Path:
    """A path written in an optimiser / model file: relative to the project or a parent folder."""
    p = Path(path)
    if p.is_absolute():
        return p
    candidates = [project_dir / p, *(parent / p for parent in star.parents), star.parent / p.name]
    for c in candidates:
        if c.is_file():
            return c
    raise InputFileError(star, f"it names {path}, which is not found (looked relative to the "
                         "project and the file's folders)",
                         "give the optimiser of a complete 2D classification")


def read_classification(optimiser: Path, project_dir: Path) -> ClassSet:
    """Read a 2D classification from its optimiser STAR file (ours or RELION's)."""
    general = read_star(optimiser).get("optimiser_general")
    if general is None or "rlnModelStarFile" not in general.columns:
        raise InputFileError(optimiser, "not an optimiser STAR file (no data_optimiser_general "
                             "with rlnModelStarFile)",
                             "give a class2d job or its run_optimiser.star")
    row = general.iloc[0]
    model_path = _locate(str(row["rlnModelStarFile"]), project_dir, optimiser)
    data_path = _locate(str(row["rlnExperimentalDataStarFile"]), project_dir, optimiser)
    blocks = read_star(model_path)
    model_general = blocks.get("model_general")
    classes = blocks.get("model_classes")
    if model_general is None or classes is None or "rlnReferenceImage" not in classes.columns:
        raise InputFileError(model_path, "no data_model_general / data_model_classes tables",
                             "give the model STAR file of a 2D classification")
    if int(model_general.iloc[0].get("rlnReferenceDimensionality", 2)) != 2:
        raise InputFileError(model_path, "this is a 3D classification; select works on 2D "
                             "classes", "give a class2d job")
    particles = read_relion_star(data_path, "particles")
    if "rlnClassNumber" not in particles.data.columns:
        raise InputFileError(data_path, "the particles have no rlnClassNumber column",
                             "give the data STAR file of a 2D classification")
    images = []
    for name in classes["rlnReferenceImage"].astype(str):
        index, stack = parse_image_name(name)
        data, _ = read_mrc(_locate(stack, project_dir, model_path))
        images.append(data[index or 0] if data.ndim == 3 else data)
    apix = float(model_general.iloc[0]["rlnPixelSize"])
    diameter = float(row.get("rlnParticleDiameter", -1))
    if not diameter > 0:
        diameter = 0.9 * images[0].shape[-1] * apix
    return ClassSet(model_path, particles, classes.reset_index(drop=True),
                    np.stack(images).astype(np.float32), apix, diameter,
                    int(row.get("rlnCurrentIteration", 0)), data_path=data_path,
                    ctf_corrected=bool(int(row.get("rlnDoCorrectCtf", 1))),
                    intact_until_first_peak=bool(int(row.get("rlnDoIgnoreCtfUntilFirstPeak", 0))),
                    mask_edge_px=float(row.get("rlnWidthMaskEdge", 5)))


def _ramp(value: np.ndarray, good: float, bad: float) -> np.ndarray:
    """1 where ``value`` is on the good side of ``good``, 0 beyond ``bad``, linear between."""
    t = (np.asarray(value, dtype=np.float64) - good) / (bad - good)
    return np.clip(1.0 - t, 0.0, 1.0)


def class_scores(cs: ClassSet) -> pd.DataFrame:
    """Features, sub-scores and score of every class (see the module docstring)."""
    import torch

    from cryospa.core.class_features import class_image_features

    k = cs.n_classes
    counts = cs.counts()
    fraction = counts / max(1, int(counts.sum()))
    radius = cs.particle_diameter_angstrom / 2 / cs.pixel_size_angstrom
    feats = {name: t.numpy() for name, t in
             class_image_features(torch.from_numpy(cs.images), radius).items()}
    res = cs.classes.get("rlnEstimatedResolution",
                         pd.Series(np.full(k, 999.0))).to_numpy(dtype=np.float64)
    populated = fraction * k >= 0.25
    res_ok = np.where(populated & (res < 999), res, np.inf)
    best = float(res_ok.min()) if np.isfinite(res_ok).any() else np.inf
    res_ratio = np.where((res < 999) & np.isfinite(best), res / best, np.inf)
    contrast = feats["contrast"]
    reference = float(np.median(contrast[populated])) if populated.any() else float(
        np.median(contrast))
    contrast_ratio = contrast / reference if reference > 0 else np.zeros(k)
    centring = feats["centre_offset_px"] / radius
    sub = {
        "size": _ramp(-fraction * k, -0.25, 0.0),
        "resolution": np.where(np.isfinite(res_ratio), _ramp(res_ratio, 3.0, 5.0), 0.0),
        "contrast": np.minimum(_ramp(contrast_ratio, 2.0, 3.0),
                               _ramp(-contrast_ratio, -0.25, 0.0)),
        "edge": _ramp(feats["edge_ratio"], 1.0, 2.0),
        "centring": _ramp(centring, 0.1, 0.3),
    }
    score = np.prod(np.stack([sub[f] for f in FEATURES]), axis=0)
    return pd.DataFrame({
        "rlnClassNumber": np.arange(1, k + 1),
        "rlnGroupNrParticles": counts.astype(np.int64),
        "rlnClassDistribution": fraction,
        "rlnEstimatedResolution": res,
        "featureResolutionRatio": np.where(np.isfinite(res_ratio), res_ratio, 999.0),
        "featureContrastRatio": contrast_ratio,
        "featureEdgeRatio": feats["edge_ratio"],
        "featureCentreOffset": centring,
        **{f"score{f.capitalize()}": sub[f] for f in FEATURES},
        "rlnClassScore": score,
    })


def auto_keep(scores: pd.DataFrame, min_score: float) -> np.ndarray:
    """Which classes ``--auto`` keeps (K,) bool; refuses to keep none.

    Raises
    ------
    ParameterError
        No class scores ``min_score`` or more: the message names the threshold, the best
        class's score and the features that held it down, and what to change.

    """
    score = scores["rlnClassScore"].to_numpy(dtype=np.float64)
    keep = score >= min_score
    if keep.any():
        return keep
    best = int(np.argmax(score))
    row = scores.iloc[best]
    subs = {f: float(row[f"score{f.capitalize()}"]) for f in FEATURES}
    weak = sorted((f for f in FEATURES if subs[f] < 1.0), key=lambda f: subs[f])
    held = (", held down by " + ", ".join(f"{f} {subs[f]:.2f}" for f in weak)
            if weak else "")
    populated = int((scores["rlnClassDistribution"].to_numpy() * len(scores) >= 0.25).sum())
    hint = (f"lower --min-score to {np.floor(100 * score[best]) / 100:.2f} or less to keep it, "
            if score[best] > 0 else "")
    raise ParameterError(
        f"select --auto: no class reaches --min-score {min_score:g}: the best is class "
        f"{int(row['rlnClassNumber'])} ({int(row['rlnGroupNrParticles'])} particles) with score "
        f"{score[best]:.2f}{held} ({populated} of {len(scores)} classes hold a fair share of the "
        f"particles); {hint}choose classes by number with --classes, or classify again (more "
        "particles or iterations, fewer classes, a --particle-diameter that fits the particle); "
        "the sub-scores are explained in `cryospa select --help`"
    )


#: Micrographs with fewer particles in the kept classes are not normalised by their median.
_MIN_PER_MICROGRAPH = 10


def particle_outliers(
    amplitude: np.ndarray, classes: np.ndarray, micrographs: np.ndarray | None, n_sigma: float
) -> pd.DataFrame:
    """Particles whose signal amplitude is far below that of their class (``--particle-sigma``).

    Parameters
    ----------
    amplitude
        ``(P,)`` each particle's amplitude relative to its class average (the weakest half's,
        :class:`cryospa.engine.amplitude.ParticleAmplitudes`); nan where unknown.
    classes
        ``(P,)`` class of each particle.
    micrographs
        ``(P,)`` micrograph of each particle (None: no per-micrograph normalisation).
    n_sigma
        Threshold in robust standard deviations below the median.

    Returns
    -------
    pandas.DataFrame
        ``relative`` (amplitude / class median / micrograph median), ``deviation`` (in robust
        standard deviations from the median of ``relative``) and ``outlier`` (bool), one row per
        particle. Particles with an unknown amplitude are never outliers. ``attrs["threshold"]``
        is the relative amplitude below which a particle is an outlier (nan when fewer than two
        are known or they do not vary).

    """
    beta = np.asarray(amplitude, dtype=np.float64)
    classes = np.asarray(classes)
    relative = np.full(beta.shape, np.nan)
    for k in np.unique(classes):
        rows = (classes == k) & np.isfinite(beta)
        median = float(np.median(beta[rows])) if rows.any() else 0.0
        if median > 0:
            relative[rows] = beta[rows] / median
    if micrographs is not None:
        micrographs = np.asarray(micrographs)
        for m in np.unique(micrographs):
            rows = (micrographs == m) & np.isfinite(relative)
            if rows.sum() >= _MIN_PER_MICROGRAPH:
                relative[rows] /= float(np.median(relative[rows]))
    known = np.isfinite(relative)
    deviation = np.zeros(beta.shape)
    threshold = float("nan")
    if known.sum() >= 2:
        centre = float(np.median(relative[known]))
        sigma = 1.4826 * float(np.median(np.abs(relative[known] - centre)))
        if sigma > 0:
            deviation[known] = (relative[known] - centre) / sigma
            threshold = centre - float(n_sigma) * sigma
    out = pd.DataFrame({"relative": relative, "deviation": deviation,
                        "outlier": known & (deviation < -float(n_sigma))})
    out.attrs["threshold"] = threshold
    return out


def _amplitudes(cs: ClassSet, rows: np.ndarray, device_spec: str) -> ParticleAmplitudes:
    """Signal amplitude of the particles ``rows`` of ``cs`` relative to their class average."""
    import torch
    from tqdm import tqdm

    from cryospa.core.masks import soft_circle
    from cryospa.engine.amplitude import signal_amplitudes
    from cryospa.jobs.class2d import StarParticles
    from cryospa.jobs.particles import load_particles

    assert cs.data_path is not None
    device = resolve_device(device_spec)
    particles = load_particles(cs.data_path)
    if particles.box_size != cs.images.shape[-1]:
        raise InputFileError(cs.data_path, f"the particles are {particles.box_size} px but the "
                             f"class averages {cs.images.shape[-1]} px",
                             "give the particles the classification was run on")
    source = StarParticles(particles, intact_until_first_peak=cs.intact_until_first_peak)
    ctf = cs.ctf_corrected and source.has_ctf
    data = cs.particles.data.iloc[rows]
    apix = cs.pixel_size_angstrom
    offsets = np.zeros((len(rows), 2))
    for i, axis in enumerate("XY"):
        if f"rlnOrigin{axis}Angst" in data.columns:
            offsets[:, i] = data[f"rlnOrigin{axis}Angst"].to_numpy(dtype=np.float64) / apix
    psi = (data["rlnAnglePsi"].to_numpy(dtype=np.float64, copy=True)
           if "rlnAnglePsi" in data.columns else np.zeros(len(rows)))
    n = cs.images.shape[-1]
    radius = cs.particle_diameter_angstrom / 2 / apix
    mask = soft_circle(n, radius, edge_width_px=cs.mask_edge_px, device=device)
    bar = tqdm(total=len(rows), desc="particle amplitudes", unit="particle")
    try:
        return signal_amplitudes(
            source, torch.from_numpy(cs.images).to(device), torch.from_numpy(rows.copy()),
            torch.from_numpy(data["rlnClassNumber"].to_numpy(dtype=np.int64, copy=True) - 1),
            torch.from_numpy(psi).to(torch.float32), torch.from_numpy(offsets).to(torch.float32),
            mask, ctf=ctf, progress=bar.update)
    finally:
        bar.close()


def _particle_sigma(params: Mapping[str, Any]) -> float:
    """``--particle-sigma``: as given, else 3 with ``--auto`` and 0 with ``--classes``."""
    sigma = params.get("particle_sigma")
    return (3.0 if params.get("auto") else 0.0) if sigma is None else float(sigma)


def _class_choice(params: Mapping[str, Any], k: int) -> str:
    if params["auto"] == bool(params["classes"]):
        raise ParameterError("select: give either --classes (e.g. 1,3,5-7) or --auto")
    if params["classes"]:
        try:
            parse_rows(params["classes"], k)
        except ParameterError as err:
            raise ParameterError(str(err).replace("--rows", "--classes").replace(
                "row", "class")) from err
    return "auto" if params["auto"] else "classes"


# --------------------------------------------------------------------------------------
# 3D classifications
# --------------------------------------------------------------------------------------


@dataclass
class Classes3D:
    """A 3D classification read back: its particles, classes and class maps."""

    data_path: Path
    particles: RelionTable
    resolution_angstrom: np.ndarray  # (K,) from the model STAR file
    maps: list[Path]  # (K,) run[_itNNN]_classNNN.mrc

    @property
    def n_classes(self) -> int:
        """Number of classes K."""
        return len(self.maps)

    def counts(self) -> np.ndarray:
        """Particles per class (K,)."""
        numbers = self.particles.data["rlnClassNumber"].to_numpy(dtype=np.int64)
        return np.bincount(numbers - 1, minlength=self.n_classes)[: self.n_classes]


def read_classification_3d(data_star: Path) -> Classes3D:
    """Read a 3D classification from its particles STAR file (``run[_itNNN]_data.star``).

    The model STAR file (``run[_itNNN]_model.star``) and the class maps
    (``run[_itNNN]_classNNN.mrc``) must be next to it, as ``cryospa class3d`` and RELION write
    them.
    """
    name = data_star.name
    if not name.endswith("_data.star"):
        raise InputFileError(data_star, "not the particles of a 3D classification (expected "
                             "run_data.star or run_itNNN_data.star)",
                             "give a class3d job or its run_data.star")
    stem = data_star.parent / name[: -len("_data.star")]
    model_path = Path(f"{stem}_model.star")
    if not model_path.is_file():
        raise InputFileError(model_path, "the model STAR file of the 3D classification is "
                             "missing", f"keep it next to {name}")
    blocks = read_star(model_path)
    general, classes = blocks.get("model_general"), blocks.get("model_classes")
    if general is None or classes is None or "rlnEstimatedResolution" not in classes.columns:
        raise InputFileError(model_path, "no data_model_general / data_model_classes tables "
                             "with rlnEstimatedResolution", "give a class3d job")
    if int(general.iloc[0].get("rlnReferenceDimensionality", 3)) != 3:
        raise InputFileError(model_path, "this is a 2D classification",
                             "give it with --classes-from instead of --class3d")
    particles = read_relion_star(data_star, "particles")
    if "rlnClassNumber" not in particles.data.columns:
        raise InputFileError(data_star, "the particles have no rlnClassNumber column",
                             "give the data STAR file of a 3D classification")
    k = len(classes)
    maps = [Path(f"{stem}_class{i:03d}.mrc") for i in range(1, k + 1)]
    missing = [m.name for m in maps if not m.is_file()]
    if missing:
        raise InputFileError(data_star.parent, f"class map(s) {', '.join(missing)} missing",
                             "give a complete 3D classification")
    return Classes3D(data_star, particles,
                     classes["rlnEstimatedResolution"].to_numpy(dtype=np.float64), maps)


def best_3d_class(counts: np.ndarray, resolution_angstrom: np.ndarray) -> int:
    """Index of the best 3D class: the largest of those within 10 % of the best resolution.

    Only classes holding at least a quarter of an equal share of the particles compete (all of
    them if none does).

    Parameters
    ----------
    counts : numpy.ndarray
        (K,) particles per class.
    resolution_angstrom : numpy.ndarray
        (K,) each class's estimated resolution, Å (999: none).

    """
    counts = np.asarray(counts, dtype=np.float64)
    res = np.asarray(resolution_angstrom, dtype=np.float64)
    if counts.shape != res.shape or counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts {counts.shape} and resolutions {res.shape}: need (K,) each")
    share = counts / max(1.0, counts.sum()) * counts.size
    populated = share >= 0.25
    if not populated.any():
        populated = counts > 0
    if not populated.any():
        populated = np.ones_like(populated)
    best = float(res[populated].min())
    candidates = populated & (res <= 1.1 * best)
    return int(np.flatnonzero(candidates)[np.argmax(counts[candidates])])


def _scores_3d(cs: Classes3D, keep: np.ndarray) -> pd.DataFrame:
    counts = cs.counts()
    return pd.DataFrame({
        "rlnClassNumber": np.arange(1, cs.n_classes + 1),
        "rlnGroupNrParticles": counts.astype(np.int64),
        "rlnClassDistribution": counts / max(1, int(counts.sum())),
        "rlnEstimatedResolution": cs.resolution_angstrom,
        "rlnSelected": keep.astype(np.int64),
    })


def _score_text_3d(scores: pd.DataFrame, mapped: int) -> str:
    lines = ["class  particles  fraction  resolution  kept"]
    for _, r in scores.iterrows():
        k = int(r["rlnClassNumber"])
        lines.append(f"{k:5d}  {int(r['rlnGroupNrParticles']):9d}  "
                     f"{float(r['rlnClassDistribution']):8.3f}  "
                     f"{float(r['rlnEstimatedResolution']):10.2f}  "
                     f"{'yes' if r['rlnSelected'] else 'no'}"
                     + ("  (best_class.mrc)" if k == mapped else ""))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------


@register
class Select(PerItemJob):
    """Keep 2D or 3D classes by number or by automatic ranking (see the module docstring)."""

    name = "select"
    folder = "Select"
    relion_type = 7  # PROC_CLASSSELECT
    description = _DESCRIPTION
    streamable = False
    inputs = (
        Input("classes_from", (NodeType.OPTIMISER,), required=False,
              help="a 2D classification: a class2d job, or its (iteration's) optimiser STAR "
              "file", relion="fn_model"),
        Input("class3d", (NodeType.PARTICLES,), required=False,
              help="a 3D classification instead: a class3d job, or its run_data.star (the "
              "model STAR file and class maps next to it)", relion="fn_data"),
    )
    params = (
        Param("classes", str, "", kind="text", metavar="NUMBERS", multiple=True,
              help="class numbers to keep, e.g. 1,4,7-9 or 1 4 7-9 (as in the class2d gallery)"),
        Param("auto", bool, False, help="rank the classes automatically by interpretable "
              "features and keep those scoring at least --min-score (3D: keep the best class, "
              "the largest of those within 10 % of the best resolution)",
              relion="do_class_ranker"),
        Param("min_score", float, 0.5, range=(0, 1), metavar="SCORE",
              help="with --auto: keep classes whose score (product of the feature sub-scores, "
              "0 to 1) is at least this", relion="rank_threshold"),
        Param("particle_sigma", float, None, range=(0, 100), metavar="SIGMA",
              help="2D: also drop particles of the kept classes whose signal amplitude relative "
              "to their class average is more than this many robust standard deviations below "
              "the median (broken particles, fragments); 0 keeps them all. Default: 3 with "
              "--auto, 0 with --classes", relion=None),
        DEVICE_PARAM,
    )
    outputs = (
        Output("particles", NodeType.PARTICLES, "particles.star"),
        Output("class_averages", NodeType.CLASS_AVERAGES, "class_averages.star"),
        Output("map", NodeType.VOLUME, "best_class.mrc"),
    )
    citations = ("Scheres (2012) J. Mol. Biol. 415:406-418 (RELION; 2D class selection)",)

    def output_types(
        self, inputs: Mapping[str, list[ResolvedInput]]
    ) -> list[tuple[str, NodeType, str]]:
        """2D: particles and class averages; 3D: particles and the best class's map."""
        outs = super().output_types(inputs)
        drop = "class_averages" if inputs.get("class3d") else "map"
        return [o for o in outs if o[0] != drop]

    @staticmethod
    def _which(inputs: Mapping[str, list[ResolvedInput]]) -> str:
        given = [n for n in ("classes_from", "class3d") if inputs.get(n)]
        if len(given) != 1:
            raise ParameterError("select: give one classification: --classes-from (2D: a "
                                 "class2d job) or --class3d (a class3d job)")
        return given[0]

    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """One readable classification; existing class numbers; --auto must keep something."""
        if self._which(inputs) == "class3d":
            cs3 = read_classification_3d(project_dir / inputs["class3d"][0].path)
            _class_choice(params, cs3.n_classes)
            return
        cs = read_classification(project_dir / inputs["classes_from"][0].path, project_dir)
        mode = _class_choice(params, cs.n_classes)
        if mode == "auto":
            auto_keep(class_scores(cs), float(params["min_score"]))
        if _particle_sigma(params) > 0:
            from cryospa.jobs.particles import load_particles

            assert cs.data_path is not None
            load_particles(cs.data_path)  # the images --particle-sigma reads are all there
            resolve_device(str(params["device"]))

    def list_items(self, ctx: JobContext) -> list[str]:
        """One item."""
        return ["select"]

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Score, select, write."""
        if self._which(ctx.inputs) == "class3d":
            return self._select_3d(ctx)
        cs = read_classification(ctx.abs(ctx.input("classes_from").path), ctx.project_dir)
        k = cs.n_classes
        scores = class_scores(cs)
        if _class_choice(ctx.params, k) == "auto":
            keep = auto_keep(scores, float(ctx.params["min_score"]))
        else:
            keep = np.zeros(k, dtype=bool)
            keep[parse_rows(ctx.params["classes"], k)] = True
        scores["rlnSelected"] = keep.astype(np.int64)
        chosen = np.flatnonzero(keep) + 1
        table = cs.particles
        in_kept = table.data["rlnClassNumber"].isin(chosen).to_numpy()
        sigma = _particle_sigma(ctx.params)
        dropped = np.zeros(len(table.data), dtype=bool)
        if sigma > 0:
            dropped = self._drop_particles(ctx, cs, np.flatnonzero(in_kept), sigma)
        scores["particlesDropped"] = np.bincount(
            table.data["rlnClassNumber"].to_numpy(dtype=np.int64)[dropped] - 1,
            minlength=k)[:k].astype(np.int64)
        data = table.data[in_kept & ~dropped].reset_index(drop=True)
        used = set(data["rlnOpticsGroup"].tolist())
        optics = table.optics[table.optics["rlnOpticsGroup"].isin(used)].reset_index(drop=True)
        write_relion_star(ctx.path("particles.star"), RelionTable("particles", data, optics))

        first = table.optics.iloc[:1].copy()
        first["rlnOpticsGroup"] = 1
        first["rlnImagePixelSize"] = cs.pixel_size_angstrom
        first["rlnImageSize"] = cs.images.shape[-1]
        first["rlnImageDimensionality"] = 2
        rows = cs.classes.iloc[chosen - 1].reset_index(drop=True)
        averages = pd.DataFrame({
            "rlnImageName": [format_image_name(i, ctx.rel("class_averages.mrcs"))
                             for i in range(len(chosen))],
            "rlnReferenceImage": rows["rlnReferenceImage"],
            "rlnClassNumber": chosen,
            "rlnClassDistribution": scores["rlnClassDistribution"].to_numpy()[chosen - 1],
            "rlnEstimatedResolution": scores["rlnEstimatedResolution"].to_numpy()[chosen - 1],
            "rlnClassScore": scores["rlnClassScore"].to_numpy()[chosen - 1],
            "rlnOpticsGroup": np.ones(len(chosen), dtype=np.int64),
        })
        from cryospa.io.mrc import write_mrc

        write_mrc(ctx.path("class_averages.mrcs"), cs.images[chosen - 1],
                  voxel_size_angstrom=cs.pixel_size_angstrom)
        # images block first: relion_autopick --ref reads only a file's first block
        write_relion_star(ctx.path("class_averages.star"),
                          RelionTable("particles", averages, first.reset_index(drop=True)),
                          data_first=True)
        write_star(ctx.path("class_scores.star"), {"class_scores": scores})
        write_text_atomic(ctx.path("class_scores.txt"), _score_text(scores))
        ctx.log(_score_text(scores).rstrip())
        from cryospa.plots.classes import class_gallery

        class_gallery(
            cs.images, scores["rlnClassDistribution"].to_numpy(),
            scores["rlnEstimatedResolution"].to_numpy(), ctx.path("selected.png"),
            selected=keep, captions=[f"score {s:.2f}" for s in scores["rlnClassScore"]],
            title=f"{ctx.job_name}: {len(chosen)} of {k} classes, {len(data)} of "
            f"{len(table.data)} particles kept",
        )
        return {"classes": [int(c) for c in chosen], "n_classes": k, "kept": len(data),
                "of": len(table.data), "mode": "auto" if ctx.params["auto"] else "classes",
                "dropped": int(dropped.sum())}

    @staticmethod
    def _drop_particles(ctx: JobContext, cs: ClassSet, rows: np.ndarray,
                        sigma: float) -> np.ndarray:
        """``--particle-sigma``: (N,) bool, the particles of ``rows`` to drop; writes why."""
        data = cs.particles.data
        measured = _amplitudes(cs, rows, str(ctx.params["device"]))
        weakest = measured.weakest_half.numpy()
        sub = data.iloc[rows]
        micrographs = (sub["rlnMicrographName"].astype(str).to_numpy()
                       if "rlnMicrographName" in sub.columns else None)
        found = particle_outliers(weakest, sub["rlnClassNumber"].to_numpy(), micrographs, sigma)
        table = pd.DataFrame({
            "rlnImageName": sub["rlnImageName"].to_numpy(),
            "rlnClassNumber": sub["rlnClassNumber"].to_numpy(dtype=np.int64),
            "particleAmplitude": measured.amplitude.numpy(),
            "particleWeakestHalf": weakest,
            "particleRelativeWeakestHalf": found["relative"].to_numpy(),
            "particleDeviationSigma": found["deviation"].to_numpy(),
            "rlnSelected": (~found["outlier"].to_numpy()).astype(np.int64),
        })
        write_star(ctx.path("particle_scores.star"), {"particle_scores": table})
        threshold = float(found.attrs["threshold"])
        if np.isfinite(threshold):
            from cryospa.plots.classes import plot_amplitude_histogram

            plot_amplitude_histogram(
                ctx.path("particle_amplitudes.png"), found["relative"].to_numpy(), threshold,
                title=f"{int(found['outlier'].sum())} of {len(rows)} particles of the kept "
                f"classes below {threshold:.2f} ({sigma:g} robust s.d. below the median)")
        ctx.log(f"--particle-sigma {sigma:g}: dropped {int(found['outlier'].sum())} of "
                f"{len(rows)} particles of the kept classes (relative weakest-half amplitude below "
                f"{threshold:.3f}); see particle_scores.star and particle_amplitudes.png")
        dropped = np.zeros(len(data), dtype=bool)
        dropped[rows[found["outlier"].to_numpy()]] = True
        return dropped

    def _select_3d(self, ctx: JobContext) -> dict[str, Any]:
        cs = read_classification_3d(ctx.abs(ctx.input("class3d").path))
        k = cs.n_classes
        counts = cs.counts()
        keep = np.zeros(k, dtype=bool)
        if _class_choice(ctx.params, k) == "auto":
            keep[best_3d_class(counts, cs.resolution_angstrom)] = True
        else:
            keep[parse_rows(ctx.params["classes"], k)] = True
        kept = np.flatnonzero(keep)
        mapped = int(kept[np.argmax(counts[kept])])
        chosen = kept + 1
        table = cs.particles
        data = table.data[table.data["rlnClassNumber"].isin(chosen)].reset_index(drop=True)
        if data.empty:
            raise ParameterError(f"select: class(es) {', '.join(map(str, chosen))} of "
                                 f"{cs.data_path.name} hold no particles: choose others with "
                                 "--classes")
        used = set(data["rlnOpticsGroup"].tolist())
        optics = table.optics[table.optics["rlnOpticsGroup"].isin(used)].reset_index(drop=True)
        write_relion_star(ctx.path("particles.star"), RelionTable("particles", data, optics))
        volume, header = read_mrc(cs.maps[mapped])
        from cryospa.io.mrc import write_mrc

        write_mrc(ctx.path("best_class.mrc"), volume,
                  voxel_size_angstrom=header.voxel_size_angstrom)
        scores = _scores_3d(cs, keep)
        write_star(ctx.path("class_scores.star"), {"class_scores": scores})
        text = _score_text_3d(scores, mapped + 1)
        write_text_atomic(ctx.path("class_scores.txt"), text)
        ctx.log(text.rstrip())
        return {"classes": [int(c) for c in chosen], "n_classes": k, "kept": len(data),
                "of": len(table.data), "mode": "auto" if ctx.params["auto"] else "classes",
                "map_class": mapped + 1,
                "resolution": float(cs.resolution_angstrom[mapped])}

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """``kept 8 of 20 classes (auto): 4210 of 5000 particles``."""
        r = results[0][1]
        line = (f"kept {len(r['classes'])} of {r['n_classes']} classes ({r['mode']}): "
                f"{r['kept']} of {r['of']} particles")
        if r.get("dropped"):
            line += f" ({r['dropped']} dropped by --particle-sigma)"
        if "map_class" in r:
            line += f"; map of 3D class {r['map_class']} ({r['resolution']:.1f} Å)"
        return line


def _score_text(scores: pd.DataFrame) -> str:
    dropped = "particlesDropped" in scores.columns
    lines = ["class  particles  resolution  res.ratio  contrast  edge  centring | size  res  "
             "contr  edge  centr | score  kept" + ("  dropped" if dropped else "")]
    order = np.argsort(-scores["rlnClassScore"].to_numpy(), kind="stable")
    for i in order:
        r = scores.iloc[i]
        res = float(r["rlnEstimatedResolution"])
        lines.append(
            f"{int(r['rlnClassNumber']):5d}  {int(r['rlnGroupNrParticles']):9d}  "
            f"{res if res < 999 else float('inf'):10.1f}  {float(r['featureResolutionRatio']):9.2f}"
            f"  {float(r['featureContrastRatio']):8.2f}  {float(r['featureEdgeRatio']):4.2f}  "
            f"{float(r['featureCentreOffset']):8.2f} | "
            + "  ".join(f"{float(r['score' + f.capitalize()]):4.2f}" for f in FEATURES)
            + f" | {float(r['rlnClassScore']):5.2f}  {'yes' if r['rlnSelected'] else 'no '}"
            + (f"  {int(r['particlesDropped']):7d}" if dropped else "")
        )
    return "\n".join(lines) + "\n"
