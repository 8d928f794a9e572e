"""Model state of the engine and per-particle state, with atomic checkpoints.

A checkpoint is two files written atomically (temporary name, then rename): ``<stem>.pt``, a
``torch.save`` of a flat dict of CPU tensors (loaded with ``weights_only=True``), and
``<stem>.json`` with the scalars. The JSON is written last, so a readable JSON means a complete
checkpoint.

Units: spectra are per rfft coefficient of the ``norm="ortho"`` transform (white noise of
real-space variance ``v`` has ``sigma2 = v``); offsets in pixels, ``sigma_offset`` in Å.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from cryospa.io._files import atomic_output, write_text_atomic

__all__ = ["ClassModel", "ParticleState", "load_checkpoint", "save_checkpoint"]


@dataclass
class ClassModel:
    """The parameters the EM iterations estimate (2D classification).

    Attributes
    ----------
    references
        ``(K, n, n)`` float32 class references (real space, centre at ``n // 2``).
    class_fractions
        ``(K,)`` float64 prior class probabilities ``pi_k``.
    sigma2
        ``(G, n // 2 + 1)`` float64 noise power per shell of each optics group.
    tau2
        ``(K, n // 2 + 1)`` float64 signal power per shell of each reference (as used in the
        next M-step's regulariser, before the fudge factor ``T``).
    data_vs_prior
        ``(K, n // 2 + 1)`` float64 spectral SNR of the last reconstruction.
    resolution_angstrom
        ``(K,)`` float64 resolution where the spectral SNR drops below 1.
    accuracy_rotation_degrees, accuracy_translation_angstrom
        ``(K,)`` float64 expected pose errors (RELION's rlnAccuracyRotations / ...Angst).
    sigma_offset_angstrom
        Standard deviation of the Gaussian prior on offsets (Å).
    current_shell
        Largest Fourier shell used in the next E-step.
    pixel_size_angstrom
        Pixel size (Å).
    iteration
        Iterations done (0: the initial model).
    log_likelihood, average_pmax
        Of the last E-step (0 for the initial model).
    """

    references: torch.Tensor
    class_fractions: torch.Tensor
    sigma2: torch.Tensor
    tau2: torch.Tensor
    data_vs_prior: torch.Tensor
    resolution_angstrom: torch.Tensor
    accuracy_rotation_degrees: torch.Tensor
    accuracy_translation_angstrom: torch.Tensor
    sigma_offset_angstrom: float
    current_shell: int
    pixel_size_angstrom: float
    iteration: int = 0
    log_likelihood: float = 0.0
    average_pmax: float = 0.0

    @property
    def n_classes(self) -> int:
        """``K``."""
        return int(self.references.shape[0])

    @property
    def box_size(self) -> int:
        """``n``."""
        return int(self.references.shape[-1])

    @property
    def current_resolution_angstrom(self) -> float:
        """Resolution (Å) of :attr:`current_shell`."""
        return self.box_size * self.pixel_size_angstrom / max(self.current_shell, 1)


@dataclass
class ParticleState:
    """Per-particle results of the last E-step (all ``(N,)`` or ``(N, 2)``, CPU).

    Attributes
    ----------
    offsets_px
        ``(N, 2)`` float64 origins (x, y) in pixels (the particle sits at ``centre - origin``).
    class_index
        ``(N,)`` long best class (0-based; -1 before the first E-step).
    psi_degrees
        ``(N,)`` float64 best in-plane angle.
    max_probability
        ``(N,)`` float64 largest posterior probability (rlnMaxValueProbDistribution).
    significant_samples
        ``(N,)`` long poses holding the adaptive fraction of the posterior
        (rlnNrOfSignificantSamples).
    log_likelihood
        ``(N,)`` float64 log-likelihood contribution (rlnLogLikeliContribution).
    """

    offsets_px: torch.Tensor
    class_index: torch.Tensor
    psi_degrees: torch.Tensor
    max_probability: torch.Tensor
    significant_samples: torch.Tensor
    log_likelihood: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @classmethod
    def start(cls, offsets_px: torch.Tensor) -> ParticleState:
        """State before the first E-step: the given offsets, nothing assigned."""
        n = offsets_px.shape[0]
        return cls(
            offsets_px=offsets_px.to(torch.float64).cpu().clone(),
            class_index=torch.full((n,), -1, dtype=torch.long),
            psi_degrees=torch.zeros(n, dtype=torch.float64),
            max_probability=torch.zeros(n, dtype=torch.float64),
            significant_samples=torch.zeros(n, dtype=torch.long),
            log_likelihood=torch.zeros(n, dtype=torch.float64),
        )


def _tensor_fields(obj: Any) -> dict[str, torch.Tensor]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)
            if isinstance(getattr(obj, f.name), torch.Tensor)}


def _scalar_fields(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)
            if not isinstance(getattr(obj, f.name), torch.Tensor)}


def save_checkpoint(
    stem: str | os.PathLike[str],
    model: Any,
    particles: Any,
    *,
    extra: dict[str, Any] | None = None,
    arrays: dict[str, torch.Tensor] | None = None,
) -> tuple[Path, Path]:
    """Write ``<stem>.pt`` (tensors) then ``<stem>.json`` (scalars), each atomically.

    ``extra`` is stored in the JSON (JSON-able values, e.g. the options used), ``arrays``
    (more tensors, e.g. running sums) in the ``.pt``; :func:`load_checkpoint` returns them as
    ``extra["arrays"]``.
    """
    stem = Path(stem)
    pt, js = stem.with_suffix(".pt"), stem.with_suffix(".json")
    tensors = {f"model.{k}": v.detach().cpu() for k, v in _tensor_fields(model).items()}
    tensors.update(
        {f"particles.{k}": v.detach().cpu() for k, v in _tensor_fields(particles).items()}
    )
    tensors.update({f"arrays.{k}": v.detach().cpu() for k, v in (arrays or {}).items()})
    with atomic_output(pt) as tmp:
        torch.save(tensors, tmp)
    record = {"model": _scalar_fields(model), "tensors": pt.name, "extra": extra or {}}
    write_text_atomic(js, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return pt, js


def load_checkpoint(
    stem: str | os.PathLike[str],
    model_type: type[Any] = ClassModel,
    particles_type: type[Any] = ParticleState,
) -> tuple[Any, Any, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    ``model_type`` / ``particles_type``: the dataclasses saved (3D jobs save
    :class:`cryospa.engine.em3d.Model3D` and ``Particles3D``).
    """
    stem = Path(stem)
    record = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    tensors = torch.load(stem.with_name(record["tensors"]), weights_only=True)
    model_kw = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("model.")}
    part_kw = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("particles.")}
    arrays = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("arrays.")}
    model = model_type(**model_kw, **record["model"])
    extra = dict(record.get("extra") or {})
    if arrays:
        extra["arrays"] = arrays
    return model, particles_type(**part_kw), extra
