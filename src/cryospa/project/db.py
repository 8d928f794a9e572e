"""The project database: ``project.sqlite``, the truth for what ran, with what, producing what.

Several processes use one project at once (a foreground job, background jobs, ``cryospa jobs``
in another terminal, streaming jobs feeding each other), so:

* the database runs in WAL mode (readers never block the writer, the writer never blocks
  readers) with a ``busy_timeout``;
* every change happens in one transaction opened with ``BEGIN IMMEDIATE`` (the write lock is
  taken at the start, so two writers never deadlock upgrading a read lock), and a transaction
  that still meets ``database is locked`` after the timeout is retried with back-off;
* a process killed in the middle of a transaction leaves the database as it was before it
  (SQLite's journal), so ``PRAGMA integrity_check`` stays ``ok``.

The schema is versioned with ``PRAGMA user_version``; :data:`SCHEMA_VERSION` is the current
version and :func:`_migrate` brings older files up to date.

Tables
------
``jobs``        one row per job: type, alias, status, parameters (JSON), times, host, pid,
                summary, error; ``deleted`` when moved to the trash.
``job_inputs``  input name -> (source job, output name) or a plain file path.
``outputs``     the nodes a job produces: name, node type, path relative to the project.
``items``       per-item progress of per-item jobs (key, done / failed, result JSON).
``iterations``  completed iterations of iterative jobs (iteration, checkpoint path, info).
``meta``        key-value settings (the job counter).
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

__all__ = ["SCHEMA_VERSION", "STATUSES", "ProjectDB"]

SCHEMA_VERSION = 1

#: Job statuses, as stored.
STATUSES: tuple[str, ...] = ("scheduled", "running", "succeeded", "failed", "aborted")

T = TypeVar("T")

_BUSY_TIMEOUT_MS = 30_000
_MAX_ATTEMPTS = 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id         INTEGER PRIMARY KEY,
    type       TEXT NOT NULL,
    module     TEXT NOT NULL,
    folder     TEXT NOT NULL,
    relion_type INTEGER NOT NULL DEFAULT 99,
    alias      TEXT UNIQUE,
    status     TEXT NOT NULL CHECK (status IN
               ('scheduled', 'running', 'succeeded', 'failed', 'aborted')),
    deleted    INTEGER NOT NULL DEFAULT 0,
    parameters TEXT NOT NULL,
    created    REAL NOT NULL,
    started    REAL,
    ended      REAL,
    host       TEXT,
    pid        INTEGER,
    summary    TEXT NOT NULL DEFAULT '',
    error      TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS job_inputs (
    job_id        INTEGER NOT NULL REFERENCES jobs(id),
    name          TEXT NOT NULL,
    position      INTEGER NOT NULL DEFAULT 0,
    source_job    INTEGER REFERENCES jobs(id),
    source_output TEXT,
    path          TEXT NOT NULL,
    node_type     TEXT NOT NULL,
    PRIMARY KEY (job_id, name, position)
);
CREATE TABLE IF NOT EXISTS outputs (
    job_id    INTEGER NOT NULL REFERENCES jobs(id),
    name      TEXT NOT NULL,
    node_type TEXT NOT NULL,
    path      TEXT NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS items (
    job_id  INTEGER NOT NULL REFERENCES jobs(id),
    key     TEXT NOT NULL,
    status  TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    result  TEXT NOT NULL,
    time    REAL NOT NULL,
    PRIMARY KEY (job_id, key)
);
CREATE TABLE IF NOT EXISTS iterations (
    job_id    INTEGER NOT NULL REFERENCES jobs(id),
    iteration INTEGER NOT NULL,
    path      TEXT NOT NULL,
    info      TEXT NOT NULL,
    time      REAL NOT NULL,
    PRIMARY KEY (job_id, iteration)
);
"""


def _is_locked(err: sqlite3.OperationalError) -> bool:
    text = str(err).lower()
    return "locked" in text or "busy" in text


class ProjectDB:
    """Access to one ``project.sqlite``; safe to use from several processes at once.

    A connection is opened lazily per process (a connection must not cross a ``fork``), so an
    instance can be passed to a worker process and used there.

    Parameters
    ----------
    path : path-like
        The database file.

    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._pid = -1

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.path = Path(str(state["path"]))
        self._conn = None
        self._pid = -1

    # ----------------------------------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        """The connection of this process (autocommit; transactions are explicit)."""
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None
            )
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._conn = conn
            self._pid = os.getpid()
        return self._conn

    def close(self) -> None:
        """Close this process's connection (reopened on next use)."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    @staticmethod
    def _retry(fn: Callable[[], T]) -> T:
        for attempt in range(_MAX_ATTEMPTS):
            try:
                return fn()
            except sqlite3.OperationalError as err:
                if not _is_locked(err) or attempt == _MAX_ATTEMPTS - 1:
                    raise
                time.sleep(min(2.0, 0.01 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), rolled back on error.

        The write lock is taken at ``BEGIN``; while other writers hold it this waits up to the
        busy timeout, then retries with back-off.
        """
        conn = self.conn
        self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._retry(lambda: conn.execute("COMMIT"))

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """Run a read-only query and return all rows."""
        conn = self.conn
        return list(self._retry(lambda: conn.execute(sql, params).fetchall()))

    # ----------------------------------------------------------------------------------
    def create(self) -> None:
        """Create the tables in a new database file (or upgrade an older schema)."""
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            _migrate(conn, version)

    def check_schema(self) -> None:
        """Upgrade the schema if this file is older than this cryospa; refuse if newer."""
        version = self.query("PRAGMA user_version")[0][0]
        if version > SCHEMA_VERSION:
            from cryospa.errors import CryospaError

            raise CryospaError(
                f"{self.path}: project database schema {version} is newer than this cryospa "
                f"understands ({SCHEMA_VERSION}): update cryospa"
            )
        if version < SCHEMA_VERSION:
            self.create()

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` ("ok" when the file is sound)."""
        return "; ".join(str(r[0]) for r in self.query("PRAGMA integrity_check"))


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    if version < 1:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('job_counter', '1')")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
