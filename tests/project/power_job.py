"""A test iterative job: power iteration on a fixed symmetric matrix, checkpointed each step.

Importing this module registers the job type ``test power``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from cryospa.io._files import atomic_output, write_text_atomic
from cryospa.project.nodes import NodeType
from cryospa.project.schema import IterativeJob, JobContext, Output, Param, register


def _matrix(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    return a @ a.T / n


@register
class PowerIteration(IterativeJob):
    """Power iteration (test job): the leading eigenvector of a random SPD matrix."""

    name = "test power"
    folder = "PowerIteration"
    relion_type = 99
    description = "Power iteration on a random symmetric matrix (a test of iterative jobs)."
    params = (
        Param("n", int, 50, range=(2, 2000), help="matrix size"),
        Param("iterations", int, 30, range=(1, 10000), help="iterations"),
        Param("seed", int, 0, help="random seed of the matrix"),
        Param("sleep", float, 0.0, unit="s", range=(0, 10), help="pause per iteration"),
    )
    outputs = (Output("vector", NodeType.OPTIMISER, "eigenvector.txt"),)

    def n_iterations(self, ctx: JobContext) -> int:
        return int(ctx.params["iterations"])

    def checkpoint(self, ctx: JobContext, it: int) -> str:
        return f"run_it{it:03d}_vector.npy"

    def run_iteration(self, ctx: JobContext, it: int) -> dict[str, Any]:
        a = _matrix(ctx.params["n"], ctx.params["seed"])
        if it == 1:
            v = np.ones(ctx.params["n"]) / np.sqrt(ctx.params["n"])
        else:
            v = np.load(ctx.path(self.checkpoint(ctx, it - 1)))
        for _ in range(3):
            v = a @ v
            v /= np.linalg.norm(v)
        time.sleep(ctx.params["sleep"])
        with atomic_output(ctx.path(self.checkpoint(ctx, it))) as tmp, open(tmp, "wb") as f:
            np.save(f, v)
        return {"eigenvalue": float(v @ a @ v)}

    def finalize(self, ctx: JobContext, last_iteration: int) -> None:
        v = np.load(ctx.path(self.checkpoint(ctx, last_iteration)))
        text = "\n".join(repr(float(x)) for x in v) + "\n"
        write_text_atomic(ctx.path("eigenvector.txt"), text)

    def summary(self, ctx: JobContext, last_iteration: int, info: Any) -> str:
        return f"{last_iteration} iterations, eigenvalue {info.get('eigenvalue', 0):.6f}"
