"""The provenance graph of a project: which job made what from what, as text and as a picture."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryospa.project.project import JobRecord, Project

__all__ = ["Edge", "edges", "graph_picture", "graph_text"]


@dataclass(frozen=True)
class Edge:
    """``source`` job's output ``output`` feeds ``target`` job's input ``input``."""

    source: int | None  # None: a file from outside the project
    output: str  # output name, or the file path
    target: int
    input: str


def edges(project: Project) -> list[Edge]:
    """All input edges between jobs that are not deleted."""
    live = {j.id for j in project.jobs()}
    out = []
    for job_id in sorted(live):
        for name, resolved in project.inputs(job_id).items():
            for r in resolved:
                if r.source_job is None:
                    out.append(Edge(None, r.path, job_id, name))
                elif r.source_job in live:
                    out.append(Edge(r.source_job, r.source_output or "", job_id, name))
    return out


def _label(job: JobRecord) -> str:
    alias = f" [{job.alias}]" if job.alias else ""
    return f"{job.name} {job.type}{alias} ({job.status})"


def graph_text(project: Project) -> str:
    """The graph as an indented tree: each job under the jobs it reads from.

    A job with several parents appears under each of them (marked ``^`` after the first time,
    without repeating its children).
    """
    jobs = {j.id: j for j in project.jobs()}
    es = edges(project)
    children: dict[int, list[tuple[int, str]]] = {}
    has_parent: set[int] = set()
    files: dict[int, list[str]] = {}
    for e in es:
        if e.source is None:
            files.setdefault(e.target, []).append(f"{e.input} <- {e.output}")
        else:
            children.setdefault(e.source, []).append((e.target, f"{e.output} -> {e.input}"))
            has_parent.add(e.target)
    lines: list[str] = []
    shown: set[int] = set()

    def walk(job_id: int, prefix: str, via: str, last: bool, top: bool) -> None:
        job = jobs[job_id]
        branch = "" if top else ("└─ " if last else "├─ ")
        extra = f"  [{via}]" if via else ""
        if job_id in shown:
            lines.append(f"{prefix}{branch}{job.name} ^{extra}")
            return
        shown.add(job_id)
        file_note = "; ".join(files.get(job_id, []))
        lines.append(f"{prefix}{branch}{_label(job)}{extra}"
                     + (f"  (files: {file_note})" if file_note else ""))
        kids = sorted(children.get(job_id, []))
        for i, (kid, kid_via) in enumerate(kids):
            child_prefix = prefix + ("" if top else ("   " if last else "│  "))
            walk(kid, child_prefix, kid_via, i == len(kids) - 1, False)

    for job_id in sorted(jobs):
        if job_id not in has_parent:
            walk(job_id, "", "", True, True)
    return "\n".join(lines) if lines else "(no jobs)"


def graph_picture(project: Project, path: str | os.PathLike[str]) -> None:
    """Draw the graph as an image (PNG, SVG or PDF by the file's suffix).

    Uses Graphviz ``dot`` when it is installed, else a layered layout drawn with matplotlib.
    """
    target = Path(path)
    jobs = {j.id: j for j in project.jobs()}
    es = [e for e in edges(project) if e.source is not None]
    if shutil.which("dot"):
        lines = ["digraph provenance {", "  rankdir=TB; node [shape=box, style=rounded];"]
        for j in jobs.values():
            lines.append(f'  j{j.id} [label="{_label(j)}\\n{j.summary[:60]}"];')
        for e in es:
            lines.append(f'  j{e.source} -> j{e.target} [label="{e.output}"];')
        lines.append("}")
        fmt = target.suffix.lstrip(".").lower() or "png"
        with tempfile.NamedTemporaryFile("w", suffix=".dot", delete=False) as f:
            f.write("\n".join(lines))
            dot_file = f.name
        try:
            subprocess.run(["dot", f"-T{fmt}", dot_file, "-o", str(target)], check=True)
        finally:
            os.unlink(dot_file)
        return
    _matplotlib_graph(jobs, es, target)


def _matplotlib_graph(jobs: dict[int, JobRecord], es: list[Edge], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth: dict[int, int] = {}
    parents: dict[int, list[int]] = {}
    for e in es:
        assert e.source is not None
        parents.setdefault(e.target, []).append(e.source)

    def level(job_id: int, seen: frozenset[int] = frozenset()) -> int:
        if job_id in depth:
            return depth[job_id]
        ps = [p for p in parents.get(job_id, []) if p in jobs and p not in seen]
        d = 0 if not ps else 1 + max(level(p, seen | {job_id}) for p in ps)
        depth[job_id] = d
        return d

    for job_id in jobs:
        level(job_id)
    rows: dict[int, list[int]] = {}
    for job_id in sorted(jobs):
        rows.setdefault(depth[job_id], []).append(job_id)
    pos: dict[int, tuple[float, float]] = {}
    width = max((len(v) for v in rows.values()), default=1)
    for d, ids in rows.items():
        for i, job_id in enumerate(ids):
            pos[job_id] = ((i + 0.5) * width / len(ids), -float(d))
    n_rows = max(rows, default=0) + 1
    fig, ax = plt.subplots(figsize=(max(4.0, 3.2 * width), max(2.0, 1.3 * n_rows)), dpi=110)
    colours = {"succeeded": "#cfe8cf", "running": "#cfe0f5", "failed": "#f5cfcf",
               "aborted": "#eeeeee", "scheduled": "#fff3c4"}
    for e in es:
        assert e.source is not None
        (x0, y0), (x1, y1) = pos[e.source], pos[e.target]
        ax.annotate("", xy=(x1, y1 + 0.18), xytext=(x0, y0 - 0.18),
                    arrowprops={"arrowstyle": "->", "color": "0.4"})
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, e.output, fontsize=7, color="0.3",
                ha="center", va="center", backgroundcolor="white")
    for job_id, (x, y) in pos.items():
        j = jobs[job_id]
        ax.text(x, y, f"{j.name} {j.type}" + (f"\n[{j.alias}]" if j.alias else "")
                + f"\n{j.summary[:40]}", ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round", "fc": colours.get(j.status, "white"), "ec": "0.3"})
    ax.set_xlim(0, width)
    ax.set_ylim(-n_rows + 0.5, 0.5)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)
