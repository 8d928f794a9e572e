"""Exceptions that carry a message a user can act on.

Every error raised for bad input names the file (when there is one), the problem and the fix,
e.g. ``InputFileError("particles.star: table 'particles' has no column 'rlnDefocusU'; ...")``.
"""

from __future__ import annotations


class CryospaError(Exception):
    """Base class of all errors cryospa raises on purpose."""


class InputFileError(CryospaError, ValueError):
    """A file given by the user is missing, truncated, malformed or inconsistent."""

    def __init__(self, path: object, problem: str, fix: str | None = None) -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        message = f"{self.path}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


class ParameterError(CryospaError, ValueError):
    """A parameter value is out of range or inconsistent with the data."""
