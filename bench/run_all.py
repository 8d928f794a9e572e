"""Run every benchmark of bench/ and print one Markdown table: cryospa against RELION.

Each ``bench_*.py`` runs in its own process with ``--json FILE`` and writes there its rows (see
``bench/_rows.py``): step, data, and for cryospa and for RELION (or the reference program the
script names, when RELION has no equivalent) the wall time, the peak memory and the accuracy
against the simulation's truth. This script runs them in turn, on the sizes of ``--quick``
(a few minutes in all) or their full sizes (the figures of the README; an hour or more on two
cores), and prints the table, headed by the machine it ran on. RELION columns are left empty,
with the reason, when RELION is not installed (``apt-get install relion``). Usage::

    python bench/run_all.py --quick                       # small sizes, a few minutes
    python bench/run_all.py                               # full sizes
    python bench/run_all.py --only class2d,refine3d --out bench/results.md
    python bench/run_all.py --quick --readme README.md    # also replace the README's table

The README's table sits between the lines ``<!-- bench-table:start -->`` and
``<!-- bench-table:end -->``; ``--readme`` rewrites what is between them. The output of each
benchmark goes to ``LOGS/<name>.log`` (``--logs``, default a temporary folder).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from _run import relion_env  # noqa: E402

START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


@dataclass(frozen=True)
class Bench:
    """One benchmark script and its arguments at the two sizes."""

    name: str
    quick: tuple[str, ...] = ()
    full: tuple[str, ...] = ()
    relion: tuple[str, ...] = ()  # RELION programs it compares against
    skip_relion: bool = False  # takes --skip-relion
    with_relion: bool = False  # takes --relion (RELION's side is opt-in)
    threads: bool = True  # takes --threads
    work: str | None = None  # option naming a work folder to put in the temporary folder
    needs: tuple[str, ...] = field(default=())  # RELION programs it cannot run without
    full_only: bool = False  # too long for --quick (no smaller size proves the same)

    @property
    def script(self) -> Path:
        """``bench/bench_<name>.py``."""
        return BENCH / f"bench_{self.name}.py"


#: Every benchmark, in the order of the tutorial's chain.
BENCHES = (
    Bench("simulate", quick=("--preset", "tiny")),
    Bench("motioncorr", quick=("--n_movies", "1", "--skip-patches"),
          relion=("relion_run_motioncorr",), skip_relion=True),
    Bench("local_alignment", quick=("--n_movies", "1", "--accuracy-only"),
          full=("--accuracy-only",), relion=("relion_run_motioncorr",), skip_relion=True),
    Bench("ctffind", quick=("--n", "4", "--skip-real"), work="--work"),
    Bench("pick_log", relion=("relion_autopick",), threads=False),
    Bench("pick_template", quick=("--iterations", "6", "--no-scan"),
          relion=("relion_autopick",)),
    Bench("extract", quick=("--n_micrographs", "3", "--skip-real"),
          relion=("relion_preprocess",), needs=("relion_preprocess",)),
    Bench("class2d", quick=("--n", "600", "--classes", "6", "--iterations", "6"),
          relion=("relion_refine",), skip_relion=True, work="--work"),
    Bench("select", quick=("--micrographs", "6", "--per-micrograph", "60", "--classes", "8",
                           "--iterations", "8"),
          relion=("relion_refine",), skip_relion=True, work="--work"),
    Bench("projection", quick=("--sizes", "64:600"),
          relion=("relion_project", "relion_reconstruct"), needs=("relion_project",)),
    Bench("postprocess", quick=("--n", "600", "--seeds", "1", "--big", "0"),
          relion=("relion_postprocess", "relion_mask_create", "relion_reconstruct"),
          threads=False, work="--work", needs=("relion_postprocess",)),
    Bench("initial_model", quick=("--n", "600", "--minibatches", "30"),
          relion=("relion_refine",), with_relion=True, work="--out"),
    Bench("refine3d", quick=("--n", "400", "--max-iterations", "4"), work="--out"),
    Bench("tutorial_template", threads=False, work="--work", full_only=True),
)


def machine(threads: int) -> str:
    """One line: CPU model, cores, RAM, threads, Python, torch, RELION, date."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f", {int(line.split()[1]) / 2**20:.0f} GB RAM"
    except OSError:
        pass
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "?"
    relion = "RELION not installed"
    if shutil.which("relion_refine"):
        out = subprocess.run(["relion_refine", "--version"], capture_output=True, text=True)
        words = (out.stdout + out.stderr).split()
        version = next((w for w in words if w[:1].isdigit()), "")
        relion = f"RELION {version}".strip() + " (CPU)"
    return (f"{model}, {os.cpu_count()} cores{ram}; {threads} threads per program; Python "
            f"{platform.python_version()}, torch {torch_version}, {relion}; "
            f"{dt.date.today().isoformat()}")


def run_bench(bench: Bench, *, quick: bool, threads: int, logs: Path, work: Path
              ) -> tuple[list[dict[str, Any]], str]:
    """Run one benchmark; its rows and a status (``ok``, or why it was skipped / failed)."""
    if quick and bench.full_only:
        return [], "skipped at --quick (full size only)"
    missing = [p for p in bench.needs if shutil.which(p) is None]
    if missing:
        return [], f"skipped: {', '.join(missing)} not installed (apt-get install relion)"
    out = logs / f"{bench.name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(bench.script), *(bench.quick if quick else bench.full),
           "--json", str(out)]
    if bench.threads:
        cmd += ["--threads", str(threads)]
    have_relion = all(shutil.which(p) is not None for p in bench.relion)
    if bench.skip_relion and not have_relion:
        cmd.append("--skip-relion")
    if bench.with_relion and have_relion:
        cmd.append("--relion")
    if bench.work:
        cmd += [bench.work, str(work / bench.name)]
    env = relion_env(threads)
    log = logs / f"{bench.name}.log"
    t = time.monotonic()
    with log.open("w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - t
    if code != 0 or not out.is_file():
        return [], f"failed (exit {code}) after {seconds:.0f} s: see {log}"
    rows = json.loads(out.read_text())
    return rows, f"ok in {seconds:.0f} s"


def _wall(s: dict[str, Any] | None) -> str:
    if s is None:
        return ""
    w = float(s["wall_s"])
    return f"{w:.2f} s" if w < 10 else f"{w:.0f} s"


def _mem(s: dict[str, Any] | None) -> str:
    return "" if s is None or s.get("peak_mb") is None else f"{float(s['peak_mb']):.0f} MB"


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The Markdown table of the rows."""
    lines = ["| step | data (timing) | cryospa wall | RELION wall | ratio | cryospa peak "
             "memory | RELION peak memory | cryospa accuracy | RELION accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours, theirs = r["ours"], r.get("relion")
        ratio = ""
        if theirs is not None and float(theirs["wall_s"]) > 0:
            ratio = f"{float(ours['wall_s']) / float(theirs['wall_s']):.2f}"
        data = r["data"] + (f" ({r['note']})" if r.get("note") else "")
        program = r.get("relion_program") or ""
        if theirs is None:
            relion_acc = f"— ({program})" if program else "—"
        else:
            relion_acc = theirs["accuracy"] + (f" [{program}]" if program else "")
        lines.append(f"| {r['step']} | {data} | {_wall(ours)} | {_wall(theirs)} | {ratio} | "
                     f"{_mem(ours)} | {_mem(theirs)} | {ours['accuracy']} | {relion_acc} |")
    return lines


def embed(readme: Path, text: str) -> None:
    """Replace what is between the README's table markers with ``text``."""
    content = readme.read_text(encoding="utf-8")
    if START not in content or END not in content:
        raise SystemExit(f"{readme}: no {START} ... {END} markers: add them where the table goes")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    tmp = readme.with_name(readme.name + ".tmp")
    tmp.write_text(f"{head}{START}\n{text.rstrip()}\n{END}{tail}", encoding="utf-8")
    tmp.replace(readme)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes (a few minutes in all) instead of the full ones")
    parser.add_argument("--only", default=None, metavar="NAMES",
                        help="comma-separated benchmarks to run (names: "
                        + ", ".join(b.name for b in BENCHES) + ")")
    parser.add_argument("--threads", type=int, default=2, help="threads per program (default 2)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="also write the table (with its machine line) to FILE, e.g. "
                        "bench/results.md")
    parser.add_argument("--readme", type=Path, default=None, metavar="FILE",
                        help="also put the table into FILE between the bench-table markers")
    parser.add_argument("--logs", type=Path, default=None, metavar="DIR",
                        help="where each benchmark's output goes (default: a temporary folder)")
    args = parser.parse_args()
    chosen = list(BENCHES)
    if args.only:
        names = [n.strip().removeprefix("bench_").removesuffix(".py")
                 for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in {b.name for b in BENCHES}]
        if unknown:
            parser.error(f"--only: unknown benchmark(s) {', '.join(unknown)} (names: "
                         + ", ".join(b.name for b in BENCHES) + ")")
        chosen = [b for b in BENCHES if b.name in names]
    logs = args.logs or Path(tempfile.mkdtemp(prefix="cryospa-bench-logs-"))
    logs.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cryospa-bench-work-"))
    have_relion = shutil.which("relion_refine") is not None
    if not have_relion:
        print("RELION is not installed (apt-get install relion): its columns stay empty",
              flush=True)
    rows: list[dict[str, Any]] = []
    statuses = []
    known = {b.script.name for b in BENCHES}
    for extra in sorted(BENCH.glob("bench_*.py")):
        if extra.name not in known and not args.only:
            statuses.append((extra.stem, "not in the suite yet: add it to BENCHES in "
                             "bench/run_all.py"))
    start = time.monotonic()
    try:
        for bench in chosen:
            print(f"[{bench.name}] running {bench.script.name} "
                  f"({'quick' if args.quick else 'full'} sizes) ...", flush=True)
            got, status = run_bench(bench, quick=args.quick, threads=args.threads, logs=logs,
                                    work=work)
            print(f"[{bench.name}] {status}", flush=True)
            statuses.append((bench.name, status))
            rows.extend(got)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = "quick sizes (`--quick`)" if args.quick else "full sizes"
    text = "\n".join([
        f"Machine: {machine(args.threads)}. Benchmarks at {size}, "
        f"{(time.monotonic() - start) / 60:.0f} min in all (`python bench/run_all.py"
        f"{' --quick' if args.quick else ''}`).",
        "",
        *table(rows),
        "",
        *(f"* {name}: {status}" for name, status in statuses if not status.startswith("ok")),
    ]).rstrip() + "\n"
    print("\n" + text)
    print(f"logs: {logs}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    if args.readme:
        embed(args.readme, text)
    return 0 if all(s.startswith(("ok", "skipped", "not in")) for _, s in statuses) else 1


if __name__ == "__main__":
    raise SystemExit(main())
