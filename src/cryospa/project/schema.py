"""The declarative job model: a job type says once what it takes, what it makes and how.

A job type is a class with class attributes (its declaration) and a few methods (its steps)::

    @register
    class ImportMovies(PerItemJob):
        name = "import movies"          # CLI: cryospa import movies ...
        folder = "Import"               # job directory Import/jobNNN/
        relion_type = 0                 # RELION 3.1 PROC_IMPORT, for default_pipeline.star
        description = "Import raw movies ..."
        params = (
            Param("movies", str, required=True, kind="pattern", help="..."),
            Param("angpix", float, None, unit="Å", range=(0, None), open_min=True,
                  required=True, help="pixel size"),
            Param("gain_rot", int, 0, choices=(0, 1, 2, 3), help="...",
                  condition=lambda p: bool(p["gain"]), condition_text="with --gain"),
        )
        inputs = ()                                        # Input("mics", (MICROGRAPHS,), ...)
        outputs = (Output("movies", NodeType.MOVIES, "movies.star"),)
        citations = ("...",)

        def list_items(self, ctx): ...                     # keys of the items ready now
        def process_item(self, ctx, key): ...              # pure; runs in a worker
        def finalize(self, ctx, results): ...              # writes movies.star
        def summary(self, ctx, results): ...               # "24 movies, 24 frames, ..."

From that one declaration come the CLI subcommand and its ``--help`` (every option with its
unit and default; :func:`add_job_arguments`), the validation that runs before anything is
created (:func:`validate_params`: type, range, choices, required, conditions, files that must
exist, patterns that must match), the stored parameter record (JSON in the project database
and RELION's ``job.star``) and later the web form. Job code never parses a command line.

Two kinds of job:

* :class:`PerItemJob`: a pure function per movie / micrograph (``process_item``) that writes
  its outputs atomically and returns a small JSON-able result; the runner spreads the items over
  an :class:`~cryospa.compute.executor.Executor`, commits each finished item to the database
  (a continued job skips them) and calls ``finalize`` with all committed results (after each
  batch when streaming, so downstream jobs see new items).
* :class:`IterativeJob`: ``run_iteration(ctx, it)`` reads iteration ``it - 1``'s checkpoint and
  writes ``run_itNNN_*`` atomically; each completed iteration is committed, and a continued job
  resumes after the last one.

Every method receives a :class:`JobContext` (picklable: paths, parameters, resolved inputs), never
the database, so the same job code runs in a worker process, an MPI rank or a queued batch job.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import math
import os
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from cryospa.errors import CryospaError, InputFileError, ParameterError
from cryospa.project.nodes import NodeType

__all__ = [
    "JOB_TYPES",
    "Input",
    "IterativeJob",
    "JobContext",
    "JobType",
    "Output",
    "Param",
    "PerItemJob",
    "ResolvedInput",
    "RunOptions",
    "add_job_arguments",
    "get_job_type",
    "load_builtin_jobs",
    "params_from_namespace",
    "register",
    "validate_params",
]

#: Package whose public modules (names not starting with ``_``) define the built-in job types;
#: each is imported on demand by :func:`load_builtin_jobs`, so a new job module needs no listing.
BUILTIN_JOB_PACKAGE = "cryospa.jobs"


def builtin_job_modules() -> tuple[str, ...]:
    """Names of the modules of :data:`BUILTIN_JOB_PACKAGE` (sorted, private ones skipped)."""
    package = importlib.import_module(BUILTIN_JOB_PACKAGE)
    names = (m.name for m in pkgutil.iter_modules(package.__path__))
    return tuple(f"{BUILTIN_JOB_PACKAGE}.{n}" for n in sorted(names) if not n.startswith("_"))


#: File stem of the STAR file of each kind of set (``{set}`` in output paths).
SET_STEMS: dict[NodeType, str] = {
    NodeType.MOVIES: "movies",
    NodeType.MICROGRAPHS: "micrographs",
    NodeType.PARTICLES: "particles",
    NodeType.CLASS_AVERAGES: "class_averages",
    NodeType.COORDINATES: "coordinates",
}

ParamKind = Literal["value", "file", "pattern", "text"]


@dataclass(frozen=True)
class Param:
    """One parameter of a job type.

    Attributes
    ----------
    name : str
        Python name; the CLI option is ``--name`` (``--gain-rot`` and ``--gain_rot`` both work).
    type : type
        ``int``, ``float``, ``str`` or ``bool``.
    default : object
        Value when not given (None: no value).
    unit : str
        Unit shown in ``--help`` ("Å", "kV", "e/Å²").
    help : str
        One or two sentences.
    range : (low, high) or None
        Inclusive bounds (either may be None); ``open_min`` / ``open_max`` make them exclusive.
    choices : tuple or None
        Allowed values.
    condition : callable or None
        ``condition(params) -> bool``: the parameter only applies when true (e.g. only with a
        gain reference). Setting it while the condition is false is an error.
    condition_text : str
        How ``condition`` reads in messages and help ("with --gain").
    required : bool
        Must be given (when its condition holds).
    kind : {"value", "file", "pattern", "text"}
        ``file``: a path that must exist (relative to the project or absolute); ``pattern``: a
        glob that must match at least one file (unless streaming); ``text``: free text.
    relion : str or None
        The matching RELION ``job.star`` variable, written for RELION's GUI.
    metavar : str or None
        Placeholder shown in ``--help`` (default: the unit or the type).
    multiple : bool
        A ``str`` parameter that takes one or several words on the command line
        (``--classes 1 3 5`` as well as ``--classes 1,3,5``); several words, or a list given
        from Python, are stored joined by commas (``"1,3,5"``).

    """

    name: str
    type: type
    default: Any = None
    unit: str = ""
    help: str = ""
    range: tuple[float | None, float | None] | None = None
    open_min: bool = False
    open_max: bool = False
    choices: tuple[Any, ...] | None = None
    condition: Callable[[Mapping[str, Any]], bool] | None = None
    condition_text: str = ""
    required: bool = False
    kind: ParamKind = "value"
    relion: str | None = None
    metavar: str | None = None
    multiple: bool = False

    def __post_init__(self) -> None:
        if self.multiple and self.type is not str:
            raise ValueError(f"parameter {self.name}: multiple=True needs type str")

    @property
    def option(self) -> str:
        """The CLI option (``--gain-rot``)."""
        return "--" + self.name.replace("_", "-")

    def applies(self, params: Mapping[str, Any]) -> bool:
        """Whether the condition holds for these parameter values."""
        return self.condition is None or bool(self.condition(params))


#: The ``--device`` option shared by every job that computes with torch.
DEVICE_PARAM = Param(
    "device", str, "auto", metavar="DEVICE",
    help="where to compute: auto (a CUDA GPU if present, else the CPU), cpu, cuda or cuda:N",
)


@dataclass(frozen=True)
class Input:
    """A typed input: a job, a job's named output, an alias, or a plain file.

    Attributes
    ----------
    name : str
        CLI option ``--name``.
    types : tuple of NodeType
        Accepted node types.
    help : str
        Help text.
    required : bool
        Must be given.
    multiple : bool
        Accept several (``--i job003 job005``).
    relion : str or None
        RELION ``job.star`` variable of this input.

    """

    name: str
    types: tuple[NodeType, ...]
    help: str = ""
    required: bool = True
    multiple: bool = False
    relion: str | None = None

    @property
    def option(self) -> str:
        """The CLI option (``--mics``)."""
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Output:
    """A typed output node: ``path`` relative to the job directory.

    ``like`` names an input whose node type the output takes (subset / join keep the type).
    """

    name: str
    type: NodeType | None
    path: str
    like: str | None = None


@dataclass(frozen=True)
class ResolvedInput:
    """An input after resolution: a file (path relative to the project) and where it came from."""

    name: str
    node_type: NodeType
    path: str
    source_job: int | None = None
    source_output: str | None = None

    def describe(self) -> str:
        """``job003:micrographs (MicrographSet)`` or ``path (MicrographSet)``."""
        if self.source_job is not None:
            return f"job{self.source_job:03d}:{self.source_output} ({self.node_type})"
        return f"{self.path} ({self.node_type})"


@dataclass
class RunOptions:
    """How a job runs (stored with the job so ``continue`` repeats it)."""

    j: int = 1
    stream: bool = False
    batch_size: int = 0
    poll: float = 10.0
    stream_timeout: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """As stored in the database."""
        return {
            "j": self.j,
            "stream": self.stream,
            "batch_size": self.batch_size,
            "poll": self.poll,
            "stream_timeout": self.stream_timeout,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunOptions:
        """Inverse of :meth:`to_json`."""
        return cls(**{k: data[k] for k in ("j", "stream", "batch_size", "poll", "stream_timeout")
                      if k in data})


@dataclass
class JobContext:
    """Everything a job's steps need; picklable, so it travels to worker processes.

    Attributes
    ----------
    project_dir : Path
        Absolute path of the project.
    job_id : int
        The job number.
    job_dir : str
        Job directory relative to the project (``Import/job001``).
    params : dict
        Validated parameter values.
    inputs : dict of str to list of ResolvedInput
        Resolved inputs by name.
    run : RunOptions
        Worker count, streaming options.
    scratch : dict
        Leader-side state kept between calls (e.g. file sizes seen at the last poll); not
        persisted.

    """

    project_dir: Path
    job_id: int
    job_dir: str
    params: dict[str, Any]
    inputs: dict[str, list[ResolvedInput]] = field(default_factory=dict)
    run: RunOptions = field(default_factory=RunOptions)
    scratch: dict[str, Any] = field(default_factory=dict)

    @property
    def job_name(self) -> str:
        """``job001``."""
        return f"job{self.job_id:03d}"

    def path(self, *parts: str) -> Path:
        """Absolute path of a file in the job directory."""
        return self.project_dir.joinpath(self.job_dir, *parts)

    def rel(self, *parts: str) -> str:
        """Project-relative path (as written in STAR files) of a file in the job directory."""
        return "/".join([self.job_dir, *parts])

    def abs(self, path: str | os.PathLike[str]) -> Path:
        """A project-relative (or absolute) path made absolute."""
        p = Path(path)
        return p if p.is_absolute() else self.project_dir / p

    def input(self, name: str) -> ResolvedInput:
        """The (first) resolved input of this name."""
        found = self.inputs.get(name) or []
        if not found:
            raise ParameterError(f"{self.job_name}: input --{name} was not given")
        return found[0]

    def log(self, message: str) -> None:
        """A line for the job's log (``run.out``)."""
        print(message, flush=True)


class JobType:
    """Base of all job types; see the module docstring for the declaration."""

    name: ClassVar[str] = ""
    folder: ClassVar[str] = "External"
    relion_type: ClassVar[int] = 99  # PROC_EXTERNAL
    description: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    inputs: ClassVar[tuple[Input, ...]] = ()
    outputs: ClassVar[tuple[Output, ...]] = ()
    citations: ClassVar[tuple[str, ...]] = ()
    streamable: ClassVar[bool] = False

    # Hooks ----------------------------------------------------------------------------
    def check(
        self,
        params: Mapping[str, Any],
        inputs: Mapping[str, list[ResolvedInput]],
        project_dir: Path,
        run: RunOptions,
    ) -> None:
        """Extra validation before anything is created; raise :class:`CryospaError`."""

    def prepare(self, ctx: JobContext) -> None:
        """Leader-side set-up before the first item / iteration (idempotent, atomic writes)."""

    def relion_options(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Extra RELION ``job.star`` options (variable -> value) for RELION's GUI."""
        return {}

    def output_types(
        self, inputs: Mapping[str, list[ResolvedInput]]
    ) -> list[tuple[str, NodeType, str]]:
        """Each declared output as ``(name, node type, path in the job folder)``.

        An output declared ``like`` an input takes that input's node type, and ``{set}`` in its
        path becomes the set's file stem (``particles``, ``micrographs``, ...).
        """
        out = []
        for o in self.outputs:
            if o.type is not None:
                node_type = o.type
            else:
                src = inputs.get(o.like or "") or []
                if not src:
                    raise ParameterError(f"output {o.name}: input --{o.like} not given")
                node_type = src[0].node_type
            out.append((o.name, node_type, o.path.format(set=SET_STEMS.get(node_type, "set"))))
        return out

    @classmethod
    def one_line(cls) -> str:
        """First line of the description (without a leading ````cryospa name``: ``)."""
        line = (cls.description.strip().splitlines() or [cls.name])[0]
        if line.startswith("``") and "``: " in line:
            rest = line.split("``: ", 1)[1]
            line = rest[:1].upper() + rest[1:]
        return line


class PerItemJob(JobType):
    """A job made of independent items (movies, micrographs): see the module docstring."""

    streamable: ClassVar[bool] = True

    def list_items(self, ctx: JobContext) -> list[str]:
        """Keys of the items that are ready now, in a deterministic order."""
        raise NotImplementedError

    def process_item(self, ctx: JobContext, key: str) -> dict[str, Any]:
        """Process one item: write its outputs atomically, return a small JSON-able result."""
        raise NotImplementedError

    def finalize(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> None:
        """Write the job's output files from all committed items (``(key, result)``, key order)."""

    def summary(self, ctx: JobContext, results: list[tuple[str, dict[str, Any]]]) -> str:
        """One line for ``cryospa jobs``."""
        return f"{len(results)} items"

    def stream_grace(self, ctx: JobContext) -> float:
        """Seconds to keep waiting, after the stream ended, for items still on their way."""
        return float(ctx.params.get("settle") or 0.0) * 2

    def stream_done(self, ctx: JobContext) -> bool:
        """Whether the stream has ended by itself (for jobs without an upstream job)."""
        return False


class IterativeJob(JobType):
    """A job of successive iterations with checkpoints: see the module docstring."""

    def n_iterations(self, ctx: JobContext) -> int:
        """Number of iterations to run (at most)."""
        raise NotImplementedError

    def checkpoint(self, ctx: JobContext, it: int) -> str:
        """Main checkpoint file of iteration ``it`` (relative to the job directory)."""
        return f"run_it{it:03d}_optimiser.star"

    def run_iteration(self, ctx: JobContext, it: int) -> dict[str, Any]:
        """Run iteration ``it`` (1-based) from iteration ``it - 1``'s checkpoint (0: start).

        Writes ``run_itNNN_*`` files atomically; returns JSON-able info (stored).
        """
        raise NotImplementedError

    def converged(self, ctx: JobContext, it: int, info: Mapping[str, Any]) -> bool:
        """Whether to stop before ``n_iterations``."""
        return False

    def finalize(self, ctx: JobContext, last_iteration: int) -> None:
        """Write the final outputs from the last iteration's checkpoint."""

    def summary(self, ctx: JobContext, last_iteration: int, info: Mapping[str, Any]) -> str:
        """One line for ``cryospa jobs``."""
        return f"{last_iteration} iterations"


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

#: job type name ("import movies") -> class
JOB_TYPES: dict[str, type[JobType]] = {}


def register(cls: type[JobType]) -> type[JobType]:
    """Class decorator adding a job type to :data:`JOB_TYPES`."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__}: a job type needs a name")
    existing = JOB_TYPES.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"job type {cls.name!r} registered twice ({existing}, {cls})")
    JOB_TYPES[cls.name] = cls
    return cls


def load_builtin_jobs() -> dict[str, type[JobType]]:
    """Import every built-in job module and return the registry."""
    for module in builtin_job_modules():
        importlib.import_module(module)
    return JOB_TYPES


def get_job_type(name: str, module: str | None = None) -> JobType:
    """An instance of the job type ``name`` (importing ``module`` first if it is not known)."""
    if name not in JOB_TYPES and module:
        if module == "__main__":
            raise CryospaError(
                f"job type {name!r} was defined in a script; run it from that script again"
            )
        importlib.import_module(module)
    if name not in JOB_TYPES:
        load_builtin_jobs()
    if name not in JOB_TYPES:
        known = ", ".join(sorted(JOB_TYPES))
        raise CryospaError(f"unknown job type {name!r} (known: {known})")
    return JOB_TYPES[name]()


# --------------------------------------------------------------------------------------
# CLI and validation
# --------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _help_text(p: Param) -> str:
    parts = [p.help.rstrip(".")] if p.help else []
    if p.unit:
        parts.append(f"in {p.unit}")
    if p.choices is not None:
        parts.append("one of " + ", ".join(_fmt(c) for c in p.choices))
    elif p.range is not None:
        lo, hi = p.range
        lo_s = "" if lo is None else (f"> {_fmt(lo)}" if p.open_min else f">= {_fmt(lo)}")
        hi_s = "" if hi is None else (f"< {_fmt(hi)}" if p.open_max else f"<= {_fmt(hi)}")
        parts.append(" and ".join(s for s in (lo_s, hi_s) if s))
    if p.condition_text:
        parts.append(f"only {p.condition_text}")
    text = "; ".join(parts)
    if p.required:
        text += " (required)"
    elif p.default is not None and p.default != "":
        text += f" (default: {_fmt(p.default)})"
    else:
        text += " (default: none)"
    return text.replace("%", "%%")


def add_job_arguments(parser: argparse.ArgumentParser, job_type: JobType) -> None:
    """Add the options of ``job_type`` (its parameters, inputs and the common job options)."""
    if job_type.inputs:
        g = parser.add_argument_group("inputs (a job: job003, job003:NAME, an alias, "
                                      "Import/job003/, or a file)")
        for inp in job_type.inputs:
            types = " or ".join(str(t) for t in inp.types)
            g.add_argument(
                inp.option,
                *([f"--{inp.name}"] if "_" in inp.name else []),
                dest=f"input_{inp.name}",
                nargs="+" if inp.multiple else None,
                default=None,
                metavar="JOB|FILE",
                help=f"{inp.help.rstrip('.')}; a {types}"
                + (" (required)" if inp.required else " (optional)"),
            )
    if job_type.params:
        g = parser.add_argument_group("parameters")
        for p in job_type.params:
            names = [p.option] + ([f"--{p.name}"] if "_" in p.name else [])
            if p.type is bool:
                g.add_argument(
                    *names,
                    dest=f"param_{p.name}",
                    action=argparse.BooleanOptionalAction,
                    default=None,
                    help=_help_text(p),
                )
            else:
                g.add_argument(
                    *names,
                    dest=f"param_{p.name}",
                    type=p.type,
                    nargs="+" if p.multiple else None,
                    default=None,
                    metavar=p.metavar or (p.unit if p.unit else p.type.__name__.upper()),
                    help=_help_text(p),
                )
    add_run_arguments(parser, streamable=job_type.streamable)


def add_run_arguments(parser: argparse.ArgumentParser, *, streamable: bool) -> None:
    """``--alias``, ``--background``, ``--j``, ``--project`` and the streaming options."""
    g = parser.add_argument_group("running")
    g.add_argument("--alias", default=None, help="a name for the job, e.g. 'movies' (optional)")
    g.add_argument(
        "--background",
        action="store_true",
        help="run detached; output in the job directory's run.out / run.err",
    )
    g.add_argument(
        "--j", type=int, default=1, metavar="N", help="worker processes (default: 1)"
    )
    g.add_argument(
        "--project",
        default=None,
        metavar="DIR",
        help="the project folder (default: found from the working directory upwards)",
    )
    if streamable:
        g.add_argument(
            "--stream",
            action="store_true",
            help="keep polling the input for new items until the upstream job ends (imports: "
            "until `cryospa stop JOB` or --stream-timeout)",
        )
        g.add_argument(
            "--batch-size",
            "--batch_size",
            dest="batch_size",
            type=int,
            default=0,
            metavar="N",
            help="when streaming, update the output after every N items (default: 0, after "
            "each poll)",
        )
        g.add_argument(
            "--poll",
            type=float,
            default=10.0,
            metavar="SECONDS",
            help="when streaming, seconds between looks for new items (default: 10)",
        )
        g.add_argument(
            "--stream-timeout",
            "--stream_timeout",
            dest="stream_timeout",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="when streaming, stop after this many seconds without a new item "
            "(default: 0, never)",
        )


def params_from_namespace(
    job_type: JobType, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, list[str]], RunOptions]:
    """Raw parameter values (None = not given), input specs and run options from the CLI."""
    params = {p.name: _join_words(getattr(args, f"param_{p.name}", None))
              for p in job_type.params}
    inputs: dict[str, list[str]] = {}
    for inp in job_type.inputs:
        value = getattr(args, f"input_{inp.name}", None)
        if value is None:
            continue
        inputs[inp.name] = list(value) if isinstance(value, list) else [value]
    run = RunOptions(
        j=args.j,
        stream=bool(getattr(args, "stream", False)),
        batch_size=int(getattr(args, "batch_size", 0) or 0),
        poll=float(getattr(args, "poll", 10.0)),
        stream_timeout=float(getattr(args, "stream_timeout", 0.0) or 0.0),
    )
    return params, inputs, run


def _join_words(value: Any) -> Any:
    """Several words of a ``multiple`` parameter (``--classes 1 3 5``) -> ``"1,3,5"``."""
    if isinstance(value, list | tuple):
        return ",".join(str(v).strip(",") for v in value)
    return value


def _coerce(p: Param, value: Any) -> Any:
    if p.multiple:
        value = _join_words(value)
    if p.type is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "yes", "true", "on"):
                return True
            if low in ("0", "no", "false", "off"):
                return False
            raise ParameterError(f"{p.option}: {value!r} is not yes/no")
        return bool(value)
    if p.type is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool):
            raise ParameterError(f"{p.option}: expected a whole number, got {value!r}")
    try:
        return p.type(value)
    except (TypeError, ValueError) as err:
        raise ParameterError(
            f"{p.option}: {value!r} is not a valid {p.type.__name__}"
        ) from err


def validate_params(
    job_type: JobType,
    raw: Mapping[str, Any],
    *,
    project_dir: Path,
    stream: bool = False,
) -> dict[str, Any]:
    """Fill defaults and check every parameter; return the values to store.

    Raises
    ------
    ParameterError
        Unknown parameter, wrong type, out of range, not a choice, missing when required,
        given when its condition does not hold.
    InputFileError
        A file parameter that does not exist; a pattern matching no file (unless streaming).

    """
    known = {p.name for p in job_type.params}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ParameterError(
            f"{job_type.name}: unknown parameter(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known))})"
        )
    values: dict[str, Any] = {}
    given: set[str] = set()
    for p in job_type.params:
        v = raw.get(p.name)
        if v is None:
            values[p.name] = p.default
        else:
            values[p.name] = _coerce(p, v)
            given.add(p.name)
    for p in job_type.params:
        v = values[p.name]
        if not p.applies(values):
            if p.name in given and v != p.default:
                raise ParameterError(
                    f"{job_type.name}: {p.option} {_fmt(v)} only applies {p.condition_text}"
                )
            continue
        if v is None or (p.required and v == ""):
            if p.required:
                raise ParameterError(
                    f"{job_type.name}: {p.option} is required ({p.help.rstrip('.')})"
                )
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ParameterError(f"{job_type.name}: {p.option} must be a finite number, got {v}")
        if p.choices is not None and v not in p.choices:
            raise ParameterError(
                f"{job_type.name}: {p.option} {_fmt(v)} is not one of "
                f"{', '.join(_fmt(c) for c in p.choices)}"
            )
        if p.range is not None:
            lo, hi = p.range
            bad = (
                (lo is not None and (v <= lo if p.open_min else v < lo))
                or (hi is not None and (v >= hi if p.open_max else v > hi))
            )
            if bad:
                raise ParameterError(
                    f"{job_type.name}: {p.option} {_fmt(v)}{' ' + p.unit if p.unit else ''} is "
                    f"out of range ({_help_text(p).split('; ')[-1].split(' (')[0]})"
                )
        if p.kind == "file" and v != "":
            path = Path(v) if Path(v).is_absolute() else project_dir / v
            if not path.is_file():
                raise InputFileError(
                    v, f"file for {p.option} not found", f"paths are relative to {project_dir}"
                )
        if p.kind == "pattern":
            check_pattern(str(v), project_dir=project_dir, option=p.option, stream=stream)
    return values


def check_pattern(pattern: str, *, project_dir: Path, option: str, stream: bool) -> None:
    """A file pattern must match a file (or, when streaming, its folder must exist)."""
    full = pattern if os.path.isabs(pattern) else str(project_dir / pattern)
    if stream:
        folder = Path(full).parent
        while glob.has_magic(str(folder)) and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise InputFileError(
                pattern, f"{option}: folder {folder} does not exist", "create it or fix the path"
            )
        return
    if not any(True for _ in glob.iglob(full, recursive=True)):
        raise InputFileError(
            pattern,
            f"{option}: the pattern matches no file",
            f"patterns are relative to the project {project_dir}; use --stream to wait for "
            "files",
        )


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``mic2`` before ``mic10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def describe_job_type(job_type: JobType) -> str:
    """A multi-line description for ``--help`` (description + citations)."""
    text = job_type.description.strip()
    if job_type.citations:
        text += "\n\nCite:\n" + "\n".join(f"  {c}" for c in job_type.citations)
    return text
