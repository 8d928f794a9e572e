"""An index of the built-in job types, so the command line need not import them all.

Job modules import torch, pandas, scipy and the engine at the top (seconds), while building
``cryospa --help`` or ``cryospa mask --help`` only needs each job's declaration: name,
description, parameters, inputs. The index holds those declarations as JSON, plus the module
that defines each job type; :func:`job_declarations` turns them back into light
:class:`~cryospa.project.schema.JobType` classes (same options, same help, no steps), and a
job that runs is imported alone (:func:`~cryospa.project.schema.get_job_type` with its module).

The index is a cache, rebuilt by importing every job module once whenever a file of the cryospa
package changes: its key is the path, size and modification time of every ``.py`` file of the
package, the cryospa version and the Python version. It lives in ``$CRYOSPA_CACHE_DIR``, else
``$XDG_CACHE_HOME/cryospa``, else ``~/.cache/cryospa``; when that folder cannot be written, the
command line imports every job module as before (slower, same result). A job type whose
declaration cannot be written as JSON (a parameter type other than int, float, str, bool) turns
the index off the same way.

Job modules therefore need no special pattern to keep the command line fast: they may import
what they like at the top.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryospa import __version__
from cryospa.project.nodes import NodeType
from cryospa.project.schema import (
    JOB_TYPES,
    Input,
    JobType,
    Param,
    builtin_job_modules,
    load_builtin_jobs,
)

__all__ = ["build_index", "index_path", "job_declarations", "job_module", "source_key"]

#: Version of the index format (bump when the JSON layout changes).
FORMAT = 1
_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/cryospa


def source_key(package_dir: Path = _PACKAGE_DIR) -> str:
    """Hash of every ``.py`` file's path, size and modification time under ``package_dir``."""
    h = hashlib.sha256(f"{FORMAT} {__version__} {sys.version} {package_dir}".encode())
    stack = [package_dir]
    entries: list[tuple[str, int, int]] = []
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    if e.name != "__pycache__":
                        stack.append(Path(e.path))
                elif e.name.endswith(".py"):
                    st = e.stat()
                    entries.append((e.path, st.st_size, st.st_mtime_ns))
    for path, size, mtime in sorted(entries):
        h.update(f"{path}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def index_path(package_dir: Path = _PACKAGE_DIR) -> Path:
    """Where the index of this copy of cryospa is kept (one file per installed copy)."""
    base = os.environ.get("CRYOSPA_CACHE_DIR")
    if base:
        folder = Path(base)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        folder = (Path(xdg) if xdg else Path.home() / ".cache") / "cryospa"
    tag = hashlib.sha256(str(package_dir).encode()).hexdigest()[:12]
    return folder / f"job_index-{tag}.json"


# --------------------------------------------------------------------------------------
# declarations <-> JSON
# --------------------------------------------------------------------------------------


def _param_json(p: Param) -> dict[str, Any]:
    type_name = next((k for k, t in _TYPES.items() if p.type is t), None)
    if type_name is None:
        raise TypeError(f"parameter {p.name}: type {p.type!r} is not int, float, str or bool")
    out = {
        "name": p.name, "type": type_name, "default": p.default, "unit": p.unit,
        "help": p.help, "range": None if p.range is None else list(p.range),
        "open_min": p.open_min, "open_max": p.open_max,
        "choices": None if p.choices is None else list(p.choices),
        "condition_text": p.condition_text, "required": p.required, "kind": p.kind,
        "relion": p.relion, "metavar": p.metavar, "multiple": p.multiple,
    }
    json.dumps(out)  # TypeError now if a default or a choice is not plain JSON
    return out


def _param_from_json(d: Mapping[str, Any]) -> Param:
    return Param(
        d["name"], _TYPES[d["type"]], d["default"], unit=d["unit"], help=d["help"],
        range=None if d["range"] is None else (d["range"][0], d["range"][1]),
        open_min=d["open_min"], open_max=d["open_max"],
        choices=None if d["choices"] is None else tuple(d["choices"]),
        condition_text=d["condition_text"], required=d["required"], kind=d["kind"],
        relion=d["relion"], metavar=d["metavar"], multiple=d["multiple"],
    )


def _job_json(cls: type[JobType]) -> dict[str, Any]:
    return {
        "name": cls.name, "module": cls.__module__, "qualname": cls.__qualname__,
        "folder": cls.folder, "relion_type": cls.relion_type,
        "description": cls.description, "citations": list(cls.citations),
        "streamable": cls.streamable,
        "params": [_param_json(p) for p in cls.params],
        "inputs": [{"name": i.name, "types": [str(t) for t in i.types], "help": i.help,
                    "required": i.required, "multiple": i.multiple, "relion": i.relion}
                   for i in cls.inputs],
    }


def _job_from_json(d: Mapping[str, Any]) -> type[JobType]:
    """A light class with the declaration of a job type (for the command line; no steps)."""
    attrs: dict[str, Any] = {
        "__module__": d["module"],
        "__doc__": f"Declaration of job type {d['name']!r} (defined in {d['module']}).",
        "name": d["name"], "folder": d["folder"], "relion_type": d["relion_type"],
        "description": d["description"], "citations": tuple(d["citations"]),
        "streamable": d["streamable"],
        "params": tuple(_param_from_json(p) for p in d["params"]),
        "inputs": tuple(Input(i["name"], tuple(NodeType(t) for t in i["types"]), help=i["help"],
                              required=i["required"], multiple=i["multiple"],
                              relion=i["relion"]) for i in d["inputs"]),
        "declaration_only": True,
    }
    return type(d["qualname"].rsplit(".", 1)[-1], (JobType,), attrs)


def build_index() -> dict[str, Any] | None:
    """Import every built-in job module and describe its job types (None: not describable)."""
    load_builtin_jobs()
    modules = set(builtin_job_modules())
    try:
        jobs = [_job_json(cls) for _, cls in sorted(JOB_TYPES.items())
                if cls.__module__ in modules]
    except TypeError:
        return None
    return {"format": FORMAT, "jobs": jobs}


def _write(path: Path, data: Mapping[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache folder: the index is rebuilt next time


def _load(path: Path, key: str) -> list[dict[str, Any]] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or data.get("format") != FORMAT:
        return None
    jobs = data.get("jobs")
    return jobs if isinstance(jobs, list) else None


def _index(*, use_cache: bool = True) -> list[dict[str, Any]] | None:
    """The job declarations as JSON, from the cache or freshly built (and then cached)."""
    key = source_key()
    path = index_path()
    if use_cache:
        jobs = _load(path, key)
        if jobs is not None:
            return jobs
    built = build_index()
    if built is None:
        return None
    if source_key() == key:  # no file changed while the modules were imported
        _write(path, {**built, "key": key})
    jobs = built["jobs"]
    return list(jobs)


def job_declarations(*, use_cache: bool = True) -> dict[str, type[JobType]]:
    """Job type name -> class with its declaration, for building the command line.

    Job types already imported (and any registered by a script) are the real classes; the
    others are light declaration-only classes from the index, whose modules are not imported.
    Without a usable index every built-in job module is imported (as :func:`load_builtin_jobs`).
    """
    jobs = _index(use_cache=use_cache)
    if jobs is None:
        return dict(load_builtin_jobs())
    found: dict[str, type[JobType]] = {}
    try:
        for d in jobs:
            found[d["name"]] = _job_from_json(d)
    except (KeyError, TypeError, ValueError):  # an index written by another cryospa
        return dict(load_builtin_jobs())
    found.update(JOB_TYPES)
    return found


def job_module(cls: type[JobType]) -> str | None:
    """The module to import for the real class of ``cls`` (a declaration or a real class)."""
    return cls.__module__ if cls.__module__ != "__main__" else None
