"""Private file helpers shared by the io modules: atomic output, existence checks."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryospa.errors import InputFileError, ParameterError


def require_file(path: str | os.PathLike[str], *, what: str = "file") -> Path:
    """Return ``path`` as a Path; raise InputFileError if it is not an existing file."""
    p = Path(path)
    if not p.exists():
        raise InputFileError(p, f"{what} not found", "check the path and the working directory")
    if not p.is_file():
        raise InputFileError(p, f"{what} is not a regular file (a directory?)", "give a file path")
    return p


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary file lives in the same folder, so :func:`os.replace` is atomic: a reader
    never sees a half-written file, and a writer killed at any moment leaves the old file
    (or nothing) in place. On error the temporary file is removed.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise InputFileError(
            target, "output folder does not exist", f"create {target.parent} before writing"
        )
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_new_folder(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` if it can become a new output folder (absent or empty), else raise."""
    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ParameterError(
            f"output folder {target} exists and is not empty: choose another --o or remove it"
        )
    return target


@contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success rename it onto ``path``.

    ``path`` must not exist or be an empty folder (else :class:`ParameterError`). On error the
    temporary folder and everything in it are removed, so no partial output folder is left.
    """
    target = check_new_folder(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
