"""A cryospa project: a folder with ``project.sqlite`` and RELION-style job directories.

Layout (as RELION 3.1, so RELION's GUI and Scipion / cryoSPARC importers find their way)::

    project/
      project.sqlite            the database (see :mod:`cryospa.project.db`)
      default_pipeline.star     RELION 3.1 pipeline, rewritten after every status change
      Import/job001/            one directory per job: <RELION job folder>/jobNNN/
        job.star                parameters (RELION 3.1 form, read by RELION's GUI)
        note.txt                the command that ran it
        run.out, run.err        the log
        RELION_JOB_EXIT_SUCCESS marker when finished (…_FAILURE, …_ABORTED)
        movies.star             outputs
      Import/movies -> ../Import/job001/   optional alias (a symlink, as RELION makes it)
      Trash/Import/job004/      deleted jobs

Job numbers come from one counter for the whole project (``job001``, ``job002``, ...), as in
RELION, and are never reused. Inputs are resolved here (:meth:`Project.resolve_input`): a job
(``job003``, ``3``, an alias, ``Import/job003/``), a named output (``job003:micrographs``), an
output file of a job, or a plain file made outside the project (recorded as a file input).

Every status change runs in one database transaction that also rewrites
``default_pipeline.star`` (atomically), so the file never lags behind the database by more than
one change and two processes never interleave their rewrites.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cryospa.errors import CryospaError, InputFileError, ParameterError
from cryospa.io._files import write_text_atomic
from cryospa.io.star import write_star
from cryospa.project.db import ProjectDB
from cryospa.project.nodes import RELION_NODE_CODES, NodeType, detect_node_type
from cryospa.project.schema import Input, JobType, ResolvedInput, RunOptions

__all__ = ["DB_NAME", "JobRecord", "Project", "format_job_name", "pid_alive"]

DB_NAME = "project.sqlite"
PIPELINE_NAME = "default_pipeline.star"
STOP_FILE = "CRYOSPA_STOP_STREAMING"
RELION_ABORT_FILE = "RELION_JOB_ABORT_NOW"

#: RELION 3.1 process status codes (PROC_RUNNING ... PROC_FINISHED_ABORTED).
RELION_STATUS_CODES = {"running": 0, "scheduled": 1, "succeeded": 2, "failed": 3, "aborted": 4}
EXIT_MARKERS = {
    "succeeded": "RELION_JOB_EXIT_SUCCESS",
    "failed": "RELION_JOB_EXIT_FAILURE",
    "aborted": "RELION_JOB_EXIT_ABORTED",
}

_JOB_NAME = re.compile(r"^(?:job)?(\d+)$")
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def format_job_name(job_id: int) -> str:
    """``job001`` (three digits at least, as RELION)."""
    return f"job{job_id:03d}"


def this_host() -> str:
    """The name of this machine, as recorded with running jobs."""
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


@dataclass
class JobRecord:
    """One row of the ``jobs`` table."""

    id: int
    type: str
    module: str
    folder: str
    relion_type: int
    alias: str | None
    status: str
    deleted: bool
    params: dict[str, Any]
    run: RunOptions
    created: float
    started: float | None
    ended: float | None
    host: str | None
    pid: int | None
    summary: str
    error: str

    @property
    def name(self) -> str:
        """``job003``."""
        return format_job_name(self.id)

    @property
    def dir(self) -> str:
        """Job directory relative to the project (``Import/job003``)."""
        return f"{self.folder}/{self.name}"

    @property
    def relion_name(self) -> str:
        """RELION's process name, ``Import/job003/``."""
        return self.dir + "/"

    @property
    def label(self) -> str:
        """``job003 (import movies, alias movies)``."""
        alias = f", alias {self.alias}" if self.alias else ""
        return f"{self.name} ({self.type}{alias})"

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        """From a database row."""
        stored = json.loads(row["parameters"])
        return cls(
            id=int(row["id"]),
            type=row["type"],
            module=row["module"],
            folder=row["folder"],
            relion_type=int(row["relion_type"]),
            alias=row["alias"],
            status=row["status"],
            deleted=bool(row["deleted"]),
            params=dict(stored.get("params", {})),
            run=RunOptions.from_json(stored.get("run", {})),
            created=float(row["created"]),
            started=row["started"],
            ended=row["ended"],
            host=row["host"],
            pid=row["pid"],
            summary=row["summary"],
            error=row["error"],
        )


@dataclass
class OutputRecord:
    """One output node of a job."""

    job_id: int
    name: str
    node_type: NodeType
    path: str


class Project:
    """A project folder and its database. Create with :meth:`init`, open with :meth:`open`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.db = ProjectDB(self.root / DB_NAME)

    # ----------------------------------------------------------------------------------
    # Creating and opening
    # ----------------------------------------------------------------------------------
    @classmethod
    def init(cls, path: str | os.PathLike[str] = ".") -> Project:
        """Make ``path`` (created if needed) a new project.

        Raises
        ------
        CryospaError
            It already is a cryospa project, or a RELION project (its ``default_pipeline.star``
            would be overwritten).

        """
        root = Path(path)
        if (root / DB_NAME).exists():
            raise CryospaError(f"{root.resolve()} is already a cryospa project")
        if (root / PIPELINE_NAME).exists():
            raise CryospaError(
                f"{root.resolve()} holds a RELION project ({PIPELINE_NAME}); cryospa would "
                "overwrite its pipeline: make the cryospa project in a new folder"
            )
        root.mkdir(parents=True, exist_ok=True)
        project = cls(root)
        project.db.create()
        with project.db.transaction() as conn:
            project._write_pipeline(conn)
        return project

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None) -> Project:
        """Open the project at ``path``, or the one containing the working directory.

        Like git, the search goes upwards from ``path`` (default: the working directory) to
        the first folder holding ``project.sqlite``.
        """
        start = Path(path) if path is not None else Path.cwd()
        start = start.resolve()
        for folder in (start, *start.parents):
            if (folder / DB_NAME).is_file():
                project = cls(folder)
                project.db.check_schema()
                return project
        raise CryospaError(
            f"not a cryospa project: {start} (nor any folder above it): run `cryospa init` "
            "there first, or give --project DIR"
        )

    # ----------------------------------------------------------------------------------
    # Reading jobs
    # ----------------------------------------------------------------------------------
    def jobs(self, *, include_deleted: bool = False) -> list[JobRecord]:
        """All jobs, by number."""
        sql = "SELECT * FROM jobs" + ("" if include_deleted else " WHERE deleted = 0")
        return [JobRecord.from_row(r) for r in self.db.query(sql + " ORDER BY id")]

    def job_by_id(self, job_id: int) -> JobRecord:
        """The job with this number (deleted ones too)."""
        rows = self.db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise CryospaError(f"no job {format_job_name(job_id)} in project {self.root}")
        return JobRecord.from_row(rows[0])

    def find_job(self, ref: str | int) -> JobRecord | None:
        """The job named by ``ref`` (job003, 3, an alias, Import/job003/, Import/alias/)."""
        if isinstance(ref, int):
            rows = self.db.query("SELECT * FROM jobs WHERE id = ?", (ref,))
            return JobRecord.from_row(rows[0]) if rows else None
        text = ref.strip().rstrip("/")
        if "/" in text:
            folder, _, last = text.rpartition("/")
        else:
            folder, last = "", text
        m = _JOB_NAME.match(last)
        if m:
            rows = self.db.query("SELECT * FROM jobs WHERE id = ?", (int(m.group(1)),))
            if rows and (not folder or rows[0]["folder"] == folder):
                return JobRecord.from_row(rows[0])
            if rows or folder or last.startswith("job"):
                return None
        rows = self.db.query("SELECT * FROM jobs WHERE alias = ?", (last,))
        if rows and (not folder or rows[0]["folder"] == folder):
            return JobRecord.from_row(rows[0])
        return None

    def job(self, ref: str | int) -> JobRecord:
        """Like :meth:`find_job`, raising a clear error when there is no such job."""
        found = self.find_job(ref)
        if found is None:
            names = ", ".join(
                j.name + (f" ({j.alias})" if j.alias else "") for j in self.jobs()
            ) or "none yet"
            raise CryospaError(f"no job {ref!r} in project {self.root} (jobs: {names})")
        return found

    def outputs(self, job_id: int) -> list[OutputRecord]:
        """The output nodes of a job."""
        rows = self.db.query(
            "SELECT * FROM outputs WHERE job_id = ? ORDER BY rowid", (job_id,)
        )
        return [OutputRecord(job_id, r["name"], NodeType(r["node_type"]), r["path"]) for r in rows]

    def inputs(self, job_id: int) -> dict[str, list[ResolvedInput]]:
        """The resolved inputs of a job, by input name."""
        rows = self.db.query(
            "SELECT * FROM job_inputs WHERE job_id = ? ORDER BY name, position", (job_id,)
        )
        out: dict[str, list[ResolvedInput]] = {}
        for r in rows:
            out.setdefault(r["name"], []).append(
                ResolvedInput(
                    r["name"], NodeType(r["node_type"]), r["path"], r["source_job"],
                    r["source_output"],
                )
            )
        return out

    def dependents(self, job_id: int) -> list[JobRecord]:
        """Jobs (not deleted) that use an output of this job."""
        rows = self.db.query(
            "SELECT DISTINCT j.* FROM jobs j JOIN job_inputs i ON i.job_id = j.id "
            "WHERE i.source_job = ? AND j.deleted = 0 ORDER BY j.id",
            (job_id,),
        )
        return [JobRecord.from_row(r) for r in rows]

    def path(self, rel: str | os.PathLike[str]) -> Path:
        """A project-relative path made absolute."""
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    # ----------------------------------------------------------------------------------
    # Resolving inputs
    # ----------------------------------------------------------------------------------
    def resolve_input(self, inp: Input, spec: str, *, stream: bool = False) -> ResolvedInput:
        """Turn what the user gave for input ``inp`` into a typed node.

        Raises
        ------
        CryospaError
            No such job / file, a job with no output of an accepted type (the message lists
            the outputs it has), a deleted job, or a job that has not succeeded (a running one
            is accepted only by streaming jobs).

        """
        wanted = " or ".join(str(t) for t in inp.types)
        job_part, _, out_name = spec.partition(":") if ":" in spec else (spec, "", "")
        job = self.find_job(job_part)
        if job is None:
            file_path = self.path(spec)
            owner = self._output_owning(spec)
            if owner is not None:
                job, out_name = owner
            elif file_path.is_file():
                found = detect_node_type(file_path, inp.types)
                if found not in inp.types:
                    raise InputFileError(
                        spec,
                        f"given for {inp.option}, which needs a {wanted}, but it is "
                        + (f"a {found}" if found else "not recognised as one"),
                        "give a file or job of the right type",
                    )
                rel = self._relative(file_path)
                return ResolvedInput(inp.name, found, rel)
            else:
                looks_like_job = bool(_JOB_NAME.match(job_part.rstrip("/").rpartition("/")[2]))
                what = "no such job" if looks_like_job else "no job, alias or file of that name"
                jobs = ", ".join(j.name for j in self.jobs()) or "none yet"
                raise CryospaError(
                    f"{inp.option} {spec}: {what} in project {self.root} (jobs: {jobs})"
                )
        if job.deleted:
            raise CryospaError(f"{inp.option} {spec}: {job.name} was deleted (it is in Trash/)")
        outputs = self.outputs(job.id)
        have = ", ".join(f"{o.name} ({o.node_type})" for o in outputs) or "no outputs"
        if out_name:
            chosen = [o for o in outputs if o.name == out_name]
            if not chosen:
                raise CryospaError(
                    f"{inp.option} {spec}: {job.label} has no output {out_name!r} "
                    f"(it has: {have})"
                )
            if chosen[0].node_type not in inp.types:
                raise CryospaError(
                    f"{inp.option} {spec}: {job.name}:{out_name} is a {chosen[0].node_type}, "
                    f"but {inp.option} needs a {wanted}"
                )
        else:
            chosen = [o for o in outputs if o.node_type in inp.types]
            if not chosen:
                raise CryospaError(
                    f"{inp.option} {spec}: {job.label} has no {wanted} output "
                    f"(it has: {have}); {inp.option} needs a {wanted}"
                )
            if len(chosen) > 1:
                names = ", ".join(f"{job.name}:{o.name}" for o in chosen)
                raise CryospaError(
                    f"{inp.option} {spec}: {job.label} has several {wanted} outputs; "
                    f"choose one of {names}"
                )
        out = chosen[0]
        self.refresh()
        job = self.job_by_id(job.id)
        if job.status != "succeeded":
            if not (job.status == "running" and stream):
                hint = (
                    "wait for it to finish, or run this job with --stream"
                    if job.status == "running"
                    else f"continue it first (cryospa continue {job.name})"
                )
                raise CryospaError(
                    f"{inp.option} {spec}: {job.label} has status {job.status}: {hint}"
                )
        return ResolvedInput(inp.name, out.node_type, out.path, job.id, out.name)

    def _relative(self, path: Path) -> str:
        absolute = path.resolve() if not path.is_symlink() else path.absolute()
        try:
            return str(absolute.relative_to(self.root))
        except ValueError:
            return str(absolute)

    def _output_owning(self, spec: str) -> tuple[JobRecord, str] | None:
        rel = self._relative(self.path(spec))
        rows = self.db.query("SELECT job_id, name FROM outputs WHERE path = ?", (rel,))
        if not rows:
            return None
        return self.job_by_id(int(rows[0]["job_id"])), str(rows[0]["name"])

    # ----------------------------------------------------------------------------------
    # Creating jobs and changing their status
    # ----------------------------------------------------------------------------------
    def check_alias(self, alias: str) -> None:
        """Raise if ``alias`` is malformed or taken."""
        if not _ALIAS.match(alias) or _JOB_NAME.match(alias):
            raise ParameterError(
                f"--alias {alias!r}: use letters, digits, '_', '-', '.', '+' (no spaces or "
                "slashes), not a job number"
            )
        rows = self.db.query("SELECT id FROM jobs WHERE alias = ?", (alias,))
        if rows:
            raise ParameterError(
                f"--alias {alias!r} is taken by {format_job_name(int(rows[0]['id']))}"
            )

    def create_job(
        self,
        job_type: JobType,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        *,
        run: RunOptions,
        alias: str | None = None,
        command: str = "",
    ) -> JobRecord:
        """Record a new job (status scheduled), make its directory, write job.star / note.txt."""
        if alias is not None:
            self.check_alias(alias)
        outputs = job_type.output_types(inputs)
        stored = json.dumps({"params": dict(params), "run": run.to_json()})
        with self.db.transaction() as conn:
            counter = int(
                conn.execute("SELECT value FROM meta WHERE key = 'job_counter'").fetchone()[0]
            )
            job_id = counter
            while True:
                folder = self.root / job_type.folder / format_job_name(job_id)
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()  # left empty by a process killed while creating a job
                if not folder.exists() and not folder.is_symlink():
                    break
                job_id += 1  # a folder with data we did not record: never reuse it
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'job_counter'", (str(job_id + 1),)
            )
            try:
                conn.execute(
                    "INSERT INTO jobs (id, type, module, folder, relion_type, alias, status, "
                    "parameters, created) VALUES (?, ?, ?, ?, ?, ?, 'scheduled', ?, ?)",
                    (job_id, job_type.name, type(job_type).__module__, job_type.folder,
                     job_type.relion_type, alias, stored, time.time()),
                )
            except sqlite3.IntegrityError as err:
                raise ParameterError(f"--alias {alias!r} is taken") from err
            for name, resolved in inputs.items():
                for pos, r in enumerate(resolved):
                    conn.execute(
                        "INSERT INTO job_inputs (job_id, name, position, source_job, "
                        "source_output, path, node_type) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (job_id, name, pos, r.source_job, r.source_output, r.path,
                         r.node_type.value),
                    )
            job_dir = f"{job_type.folder}/{format_job_name(job_id)}"
            for out_name, node_type, out_path in outputs:
                conn.execute(
                    "INSERT INTO outputs (job_id, name, node_type, path) VALUES (?, ?, ?, ?)",
                    (job_id, out_name, node_type.value, f"{job_dir}/{out_path}"),
                )
            (self.root / job_dir).mkdir(parents=True)
            if alias:
                link = self.root / job_type.folder / alias
                if link.is_symlink() or link.exists():
                    link.unlink()
                link.symlink_to(f"../{job_dir}/")
            self._write_pipeline(conn)
        record = self.job_by_id(job_id)
        self.write_job_star(record, job_type, inputs, is_continue=False)
        self.append_note(record, command)
        return record

    def write_job_star(
        self,
        record: JobRecord,
        job_type: JobType,
        inputs: Mapping[str, list[ResolvedInput]],
        *,
        is_continue: bool,
    ) -> None:
        """Write RELION 3.1's ``job.star`` (job type, continue flag, options) for its GUI."""
        options: dict[str, str] = {}
        for p in job_type.params:
            value = record.params.get(p.name)
            if isinstance(value, bool):
                text = "Yes" if value else "No"
            elif value is None:
                text = ""
            else:
                text = str(value)
            options[p.relion or p.name] = text
        for inp in job_type.inputs:
            given = inputs.get(inp.name) or []
            options[inp.relion or inp.name] = " ".join(r.path for r in given)
        options.update(job_type.relion_options(record.params))
        options["nr_threads"] = str(record.run.j)
        options["do_queue"] = "No"
        table = pd.DataFrame(
            {"rlnJobOptionVariable": list(options), "rlnJobOptionValue": list(options.values())}
        )
        write_star(
            self.path(record.dir) / "job.star",
            {
                "job": {"rlnJobType": job_type.relion_type,
                        "rlnJobIsContinue": 1 if is_continue else 0},
                "joboptions_values": table,
            },
        )

    def append_note(self, record: JobRecord, command: str) -> None:
        """Append the command that (re)started the job to its ``note.txt`` (as RELION)."""
        note = self.path(record.dir) / "note.txt"
        old = note.read_text(encoding="utf-8") if note.is_file() else ""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = (
            f"{old} ++++ Executing new job on {stamp}\n ++++ with the following command(s): \n"
            f"{command or '(cryospa API)'}\n ++++ \n"
        )
        write_text_atomic(note, text)

    def mark_running(self, job_id: int, *, pid: int, host: str | None = None) -> None:
        """Status running, with the process id and host; clears old exit markers."""
        record = self.job_by_id(job_id)
        folder = self.path(record.dir)
        for marker in (*EXIT_MARKERS.values(), RELION_ABORT_FILE):
            (folder / marker).unlink(missing_ok=True)
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'running', pid = ?, host = ?, started = ?, "
                "ended = NULL, error = '' WHERE id = ?",
                (pid, host or this_host(), time.time(), job_id),
            )
            self._write_pipeline(conn)

    def finish(
        self,
        job_id: int,
        status: str,
        *,
        summary: str | None = None,
        error: str = "",
        only_if_pid: int | None = None,
    ) -> bool:
        """Record the end of a job (succeeded / failed / aborted) and write RELION's marker.

        With ``only_if_pid``, nothing changes unless the job is still running under that pid
        (so a job aborted by ``cryospa abort`` is not then recorded as failed by its dying
        process). Returns whether the record changed.
        """
        if status not in EXIT_MARKERS:
            raise ValueError(f"final status must be one of {list(EXIT_MARKERS)}, got {status!r}")
        with self.db.transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if only_if_pid is not None and not (
                row["status"] == "running" and row["pid"] == only_if_pid
            ):
                return False
            conn.execute(
                "UPDATE jobs SET status = ?, ended = ?, error = ?, summary = COALESCE(?, summary)"
                " WHERE id = ?",
                (status, time.time(), error, summary, job_id),
            )
            self._write_pipeline(conn)
            record = JobRecord.from_row(row)
        folder = self.path(record.dir)
        if folder.is_dir():
            for marker in EXIT_MARKERS.values():
                (folder / marker).unlink(missing_ok=True)
            (folder / EXIT_MARKERS[status]).touch()
        return True

    def set_summary(self, job_id: int, summary: str) -> None:
        """Update the one-line summary (e.g. after each streaming batch)."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE jobs SET summary = ? WHERE id = ?", (summary, job_id))

    def refresh(self) -> list[JobRecord]:
        """Mark jobs whose process died (this host, pid gone) as failed; return them."""
        host = this_host()
        died = []
        for job in self.jobs(include_deleted=True):
            if job.status != "running" or job.host != host or job.pid is None:
                continue
            if pid_alive(job.pid):
                continue
            if self.finish(
                job.id,
                "failed",
                error=f"process died (pid {job.pid} on {host}): `cryospa continue {job.name}`",
                only_if_pid=job.pid,
            ):
                died.append(self.job_by_id(job.id))
        return died

    # ----------------------------------------------------------------------------------
    # Items and iterations
    # ----------------------------------------------------------------------------------
    def item_results(self, job_id: int, status: str = "done") -> dict[str, dict[str, Any]]:
        """Committed items of a per-item job: key -> result."""
        rows = self.db.query(
            "SELECT key, result FROM items WHERE job_id = ? AND status = ?", (job_id, status)
        )
        return {r["key"]: json.loads(r["result"]) for r in rows}

    def commit_item(
        self, job_id: int, key: str, *, ok: bool, result: Mapping[str, Any] | str
    ) -> None:
        """Record one finished (or failed) item in its own transaction."""
        text = json.dumps(result, sort_keys=True) if ok else json.dumps({"error": result})
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO items (job_id, key, status, result, time) "
                "VALUES (?, ?, ?, ?, ?)",
                (job_id, key, "done" if ok else "failed", text, time.time()),
            )

    def clear_failed_items(self, job_id: int) -> None:
        """Forget failed items (retried on continue)."""
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM items WHERE job_id = ? AND status = 'failed'", (job_id,))

    def iterations(self, job_id: int) -> list[tuple[int, str, dict[str, Any]]]:
        """Completed iterations: (iteration, checkpoint path, info)."""
        rows = self.db.query(
            "SELECT iteration, path, info FROM iterations WHERE job_id = ? ORDER BY iteration",
            (job_id,),
        )
        return [(int(r["iteration"]), r["path"], json.loads(r["info"])) for r in rows]

    def commit_iteration(
        self, job_id: int, iteration: int, path: str, info: Mapping[str, Any]
    ) -> None:
        """Record a completed iteration and its checkpoint."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO iterations (job_id, iteration, path, info, time) "
                "VALUES (?, ?, ?, ?, ?)",
                (job_id, iteration, path, json.dumps(info, sort_keys=True), time.time()),
            )

    # ----------------------------------------------------------------------------------
    # Deleting
    # ----------------------------------------------------------------------------------
    def delete(self, ref: str | int) -> list[JobRecord]:
        """Move a job to ``Trash/<folder>/jobNNN/`` and mark it deleted (as RELION).

        Returns the jobs that depend on it (the caller warns about them). A running job must be
        aborted first.
        """
        self.refresh()
        job = self.job(ref)
        if job.deleted:
            raise CryospaError(f"{job.name} is already deleted")
        if job.status == "running":
            raise CryospaError(
                f"{job.label} is running: `cryospa abort {job.name}` before deleting it"
            )
        dependents = self.dependents(job.id)
        source = self.path(job.dir)
        trash = self.root / "Trash" / job.dir
        if source.exists():
            trash.parent.mkdir(parents=True, exist_ok=True)
            if trash.exists():
                shutil.rmtree(trash)
            os.replace(source, trash)
        if job.alias:
            link = self.root / job.folder / job.alias
            if link.is_symlink():
                link.unlink()
        with self.db.transaction() as conn:
            conn.execute("UPDATE jobs SET deleted = 1, alias = NULL WHERE id = ?", (job.id,))
            self._write_pipeline(conn)
        return dependents

    # ----------------------------------------------------------------------------------
    # default_pipeline.star
    # ----------------------------------------------------------------------------------
    def write_pipeline(self) -> None:
        """Rewrite ``default_pipeline.star`` from the database."""
        with self.db.transaction() as conn:
            self._write_pipeline(conn)

    def _write_pipeline(self, conn: sqlite3.Connection) -> None:
        """RELION 3.1 ``default_pipeline.star`` from the database (inside a transaction)."""
        row = conn.execute("SELECT value FROM meta WHERE key = 'job_counter'").fetchone()
        counter = int(row[0])
        jobs = [
            JobRecord.from_row(r)
            for r in conn.execute("SELECT * FROM jobs WHERE deleted = 0 ORDER BY id").fetchall()
        ]
        live = {j.id: j for j in jobs}
        processes = []
        for j in jobs:
            alias = f"{j.folder}/{j.alias}/" if j.alias else "None"
            processes.append((j.relion_name, alias, j.relion_type, RELION_STATUS_CODES[j.status]))
        nodes: dict[str, int] = {}
        out_edges = []
        for r in conn.execute("SELECT * FROM outputs ORDER BY job_id, rowid").fetchall():
            code = RELION_NODE_CODES.get(NodeType(r["node_type"]))
            if r["job_id"] in live and code is not None:
                nodes.setdefault(r["path"], code)
                out_edges.append((live[r["job_id"]].relion_name, r["path"]))
        in_edges = []
        for r in conn.execute("SELECT * FROM job_inputs ORDER BY job_id, name, position"):
            code = RELION_NODE_CODES.get(NodeType(r["node_type"]))
            if r["job_id"] in live and code is not None:
                nodes.setdefault(r["path"], code)
                in_edges.append((r["path"], live[r["job_id"]].relion_name))
        blocks: dict[str, Any] = {"pipeline_general": {"rlnPipeLineJobCounter": counter}}

        def table(columns: list[str], rows: Iterable[tuple[Any, ...]]) -> pd.DataFrame:
            return pd.DataFrame(list(rows), columns=columns)

        if processes:
            blocks["pipeline_processes"] = table(
                ["rlnPipeLineProcessName", "rlnPipeLineProcessAlias", "rlnPipeLineProcessType",
                 "rlnPipeLineProcessStatus"],
                processes,
            )
        if nodes:
            blocks["pipeline_nodes"] = table(
                ["rlnPipeLineNodeName", "rlnPipeLineNodeType"], nodes.items()
            )
        if in_edges:
            blocks["pipeline_input_edges"] = table(
                ["rlnPipeLineEdgeFromNode", "rlnPipeLineEdgeProcess"], in_edges
            )
        if out_edges:
            blocks["pipeline_output_edges"] = table(
                ["rlnPipeLineEdgeProcess", "rlnPipeLineEdgeToNode"], out_edges
            )
        write_star(self.root / PIPELINE_NAME, blocks)
