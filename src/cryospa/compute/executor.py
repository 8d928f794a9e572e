"""Where the items of a per-item job run: this process, a local process pool, later MPI / queues.

The runner of a per-item job (:mod:`cryospa.project.runner`) is the *leader*: it lists the items,
hands them to an :class:`Executor`, and commits each result to the project database as it
arrives. Workers only run the job's pure ``process_item(ctx, key)`` (which writes its own outputs
atomically) and send back a small JSON-able result; they never touch the database. That split is
what lets other executors plug in without changing job code:

* :class:`InlineExecutor` (``--j 1``): items run one after the other in the leader.
* :class:`LocalPoolExecutor` (``--j N``): a pool of N spawned worker processes on this machine.
* an MPI executor (later): rank 0 is the leader and runs the same runner loop; ``map_unordered``
  sends ``(key)`` messages to idle ranks (``mpi4py`` ``comm.send`` / ``comm.recv`` with
  ``ANY_SOURCE``) and yields results as they come back; ranks > 0 run a loop that receives a
  key, calls ``fn(ctx, key)`` and returns the outcome. The context is broadcast once.
* queue submission (later) wraps the *whole* job: the runner is launched by the queue's script
  (``cryospa continue JOB`` inside a RELION-style template, ``XXXcommandXXX``), so the job
  record, ``continue`` and the executors above stay as they are.

Every executor yields :class:`ItemOutcome` in completion order; the leader makes the final
output order deterministic (sorted keys), so outputs do not depend on the executor.
"""

from __future__ import annotations

import multiprocessing
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

__all__ = ["Executor", "InlineExecutor", "ItemOutcome", "LocalPoolExecutor", "make_executor"]

ItemFunction = Callable[[Any, str], dict[str, Any]]


@dataclass
class ItemOutcome:
    """The result of one item: ``result`` on success, else ``error`` (one line) + traceback."""

    key: str
    result: dict[str, Any] | None = None
    error: str | None = None
    traceback: str = ""

    @property
    def ok(self) -> bool:
        """True if the item succeeded."""
        return self.error is None


def run_one(fn: ItemFunction, ctx: Any, key: str) -> ItemOutcome:
    """Run ``fn(ctx, key)`` and capture any exception as an outcome (never raises Exception)."""
    try:
        return ItemOutcome(key, result=fn(ctx, key))
    except Exception as err:
        return ItemOutcome(key, error=f"{type(err).__name__}: {err}",
                           traceback=traceback.format_exc())


class Executor(ABC):
    """Runs ``fn(ctx, key)`` for many keys and yields the outcomes as they complete."""

    n_workers: int = 1

    @abstractmethod
    def map_unordered(
        self, fn: ItemFunction, ctx: Any, keys: Iterable[str]
    ) -> Iterator[ItemOutcome]:
        """Yield one :class:`ItemOutcome` per key, in completion order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineExecutor(Executor):
    """Items one after the other in this process."""

    n_workers = 1

    def map_unordered(
        self, fn: ItemFunction, ctx: Any, keys: Iterable[str]
    ) -> Iterator[ItemOutcome]:
        """Run each key in turn."""
        for key in keys:
            yield run_one(fn, ctx, key)


class LocalPoolExecutor(Executor):
    """A pool of ``n_workers`` spawned processes on this machine.

    At most ``2 * n_workers`` items are in flight, so a job stopped early (abort, stream stop)
    has little queued work to throw away.
    """

    def __init__(self, n_workers: int) -> None:
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        self.n_workers = n_workers
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.n_workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    def map_unordered(
        self, fn: ItemFunction, ctx: Any, keys: Iterable[str]
    ) -> Iterator[ItemOutcome]:
        """Submit keys to the pool (bounded) and yield outcomes as they complete."""
        pool = self._get_pool()
        pending: set[Future[ItemOutcome]] = set()
        it = iter(keys)
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * self.n_workers:
                try:
                    key = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending.add(pool.submit(run_one, fn, ctx, key))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()

    def close(self) -> None:
        """Shut the pool down, cancelling queued items."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def make_executor(n_workers: int) -> Executor:
    """The executor for ``--j N`` on this machine."""
    return InlineExecutor() if n_workers <= 1 else LocalPoolExecutor(n_workers)
