"""The workflows shipped with cryospa, as YAML files next to this module.

``cryospa workflow template NAME`` prints one; a user copies it, edits the paths and the
acquisition values at its top, and runs it with ``cryospa run``.
"""

from __future__ import annotations

from importlib import resources

from cryospa.errors import CryospaError

__all__ = ["template_names", "template_text"]


def template_names() -> list[str]:
    """Names of the shipped templates (``tutorial``, ...)."""
    folder = resources.files(__name__)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.endswith(".yaml"))


def template_text(name: str) -> str:
    """The YAML text of template ``name``."""
    if name not in template_names():
        raise CryospaError(f"no workflow template {name!r} (templates: "
                           f"{', '.join(template_names())})")
    return resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
