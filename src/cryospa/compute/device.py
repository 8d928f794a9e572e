"""Choosing the torch device and the number of CPU threads."""

from __future__ import annotations

import torch

from cryospa.errors import ParameterError

__all__ = ["resolve_device", "set_threads"]


def resolve_device(spec: str | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a torch device.

    ``"auto"`` picks the first CUDA GPU when one is present, else the CPU. Asking for CUDA on a
    machine without it raises :class:`ParameterError` with the fix.
    """
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ParameterError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(
            f"device {spec!r} requested but no CUDA GPU is available: use --device cpu"
        )
    return device


def set_threads(n: int | None) -> None:
    """Use ``n`` CPU threads for tensor maths (None or < 1: leave torch's default)."""
    if n is not None and n >= 1:
        torch.set_num_threads(n)
