"""Run every benchmark under bench/ and print ONE table of their ratios, with the machine.

Each benchmark runs in its own process, as a user would run it, with its defaults: the real
system (vLLM engine, embedded SmolLM2-135M). `--quick` passes its `--quick` flag (tiny sizes or
models; its tables are titled as smoke figures) or, for one without, the short settings below.
Its table is captured from `bench.common.print_table` (patched in that process to also write the
rows as JSON). Writes the
combined table, the full tables, the date and the machine to bench/results/latest.md, and the
same as data to latest.json beside it.

One file, one machine: every row carries the CPU model, and `--only` (which adds to or replaces
rows of an existing file) refuses to write into a file measured on another machine (exit 2);
rerun everything there, or give another `--out`. Studies (`sample_efficiency`: tiny models by
design, ~12 min) run only when named with `--only`.

    python bench/run_all.py                      # every system benchmark, default sizes
    python bench/run_all.py --only sample_efficiency
    python bench/run_all.py --quick --only parallel_turn --out /tmp/bench.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine, print_table  # noqa: E402

BENCH = REPO / "bench"
NOT_BENCHMARKS = {"__init__", "common", "run_all"}
# The benchmarks the issue lists (a missing one is reported, not an error), then any other.
EXPECTED = ["serve_overhead", "hot_swap", "lora_serving", "parallel_turn", "train_throughput", "packing", "peer"]
# Long studies, run only when named with --only (see the docstring).
STUDIES = {"sample_efficiency"}
# --quick for benchmarks without a --quick flag of their own
QUICK_ARGS = {
    "lora_serving": ["--rounds", "1", "--max-tokens", "16"],
    "train_throughput": ["--actions", "2", "--prompt-len", "32", "--response-len", "16", "--modes", "lora-cc,full-cc"],
    "peer": ["--episodes", "2", "--max-tokens", "16"],
}


def _peer_skip() -> str | None:
    from bench.peer import skip_reason

    return skip_reason()


# Default seconds per benchmark over the 1 h default: peer's default run (N = 8 and 32, three pairs)
# took ~85 min on the 2-core VM on 2026-12-03 and was cut off at 1 h.
TIMEOUTS = {"peer": 3 * 3600.0}
# Benchmarks that need something this repository does not install: a reason to skip, or None to run.
PRECONDITIONS = {"peer": _peer_skip}
RATIO_MARKS = ("÷", " / ", "ratio", "speed-up", "speedup")

# Runs one benchmark with bench.common.print_table also appending its rows to a JSON file.
CAPTURE = """
import json, os, runpy, sys
sys.path.insert(0, {repo!r})
import bench.common as common
tables, show = [], common.print_table
def print_table(title, rows):
    tables.append({{"title": title, "rows": [[str(c) for c in r] for r in rows]}})
    with open(os.environ["COLLM_BENCH_TABLES"], "w") as f:
        json.dump(tables, f)
    show(title, rows)
common.print_table = print_table
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def discover() -> list[str]:
    """The benchmarks a plain run executes: EXPECTED first, then any other, never a study."""
    found = {p.stem for p in BENCH.glob("*.py")} - NOT_BENCHMARKS - STUDIES
    return [n for n in EXPECTED if n in found] + sorted(found - set(EXPECTED))


def cpu_model() -> str:
    """The CPU model of this machine (the identity a results file is bound to), with its cores and GPU."""
    return machine().rsplit(", Python", 1)[0]


def load_previous(out: Path) -> dict | None:
    data = out.with_suffix(".json")
    return json.loads(data.read_text()) if data.exists() else None


def bench_args(name: str, source: str, quick: bool, extra: dict[str, list[str]] | None = None) -> list[str]:
    given = (extra or {}).get(name, [])
    if not quick:
        return given
    return (["--quick"] if '"--quick"' in source else QUICK_ARGS.get(name, [])) + given


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the benchmark's whole process group, then SIGKILL what is left after `grace` s
    (its workers can outlive it: the group exists while any member does)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if sig == signal.SIGTERM:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
    proc.wait()


def timeout_of(name: str, given: float | None) -> float:
    """Seconds bench/<name>.py may run: --timeout, else its own allowance (TIMEOUTS), else 1 h."""
    return given if given is not None else TIMEOUTS.get(name, 3600.0)


def run_one(name: str, quick: bool, timeout: float, extra: dict[str, list[str]] | None = None) -> dict:
    """Run bench/<name>.py; returns {"status", "seconds", "tables"} (tables: title + rows)."""
    skip = PRECONDITIONS[name]() if name in PRECONDITIONS else None
    if skip:
        print(f"\n=== {name}: {skip}", flush=True)
        return {"status": skip, "seconds": 0.0, "args": [], "tables": []}
    path = BENCH / f"{name}.py"
    source = path.read_text()
    args = bench_args(name, source, quick, extra)
    shown = list(args)
    with tempfile.TemporaryDirectory(prefix=f"collm-bench-{name}-") as tmp:
        tables_file = Path(tmp) / "tables.json"
        cmd = [sys.executable, "-c", CAPTURE.format(repo=str(REPO)), str(path), *args]
        print(f"\n=== {name}: python bench/{name}.py {' '.join(args)}", flush=True)
        start = time.perf_counter()
        # its own session, so a timeout stops the benchmark's workers and agent services too
        # (a plain kill of the benchmark left bench/peer.py's worker training for 20 minutes)
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "COLLM_BENCH_TABLES": str(tables_file)},
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            stop_group(proc)
        except BaseException:
            stop_group(proc)
            raise
        seconds = time.perf_counter() - start
        tables = json.loads(tables_file.read_text()) if tables_file.exists() else []
    status = "ok" if code == 0 else f"timed out after {timeout:.0f} s" if code is None else f"failed (exit {code})"
    if code == 0 and not tables:
        status = "ok, but no table was captured"
    return {"status": status, "seconds": seconds, "args": shown, "tables": tables}


def ratio_rows(name: str, tables: list[dict]) -> list[list[str]]:
    """The ratio rows of a benchmark's tables (all its rows if it reports no ratio)."""
    rows = [r for t in tables for r in t["rows"]]
    ratios = [r for r in rows if any(m in r[0].lower() for m in RATIO_MARKS)]
    return [[name, *r] for r in (ratios or rows)]


def markdown(results: dict[str, dict], missing: list[str], command: str, cpu: str) -> str:
    lines = ["# Benchmark results", "", f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}", f"- machine: {machine()}",
             f"- command: `{command}`", "", "| benchmark | metric | value | note | machine |", "|---|---|---|---|---|"]
    for name, r in results.items():
        for row in ratio_rows(name, r["tables"]):
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in [*row, cpu]) + " |")
    lines += ["", "## Runs", "", "| benchmark | arguments | status | seconds | date |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | `{' '.join(r['args']) or '(defaults)'}` | {r['status']} | {r['seconds']:.0f} "
                     f"| {r.get('date', '')} |")
    for name in missing:
        lines.append(f"| {name} | | skipped: bench/{name}.py does not exist | |")
    lines += ["", "## Full tables"]
    for name, r in results.items():
        for t in r["tables"]:
            lines += ["", f"### {name}: {t['title']}", "", "| metric | value | note |", "|---|---|---|"]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (smoke checks; not for the record)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (spaces or commas)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds per benchmark (default 1 h; peer 3 h); on expiry its whole process group stops")
    ap.add_argument("--bench-args", action="append", default=[], metavar="NAME=ARGS",
                    help="extra arguments for one benchmark, e.g. peer='--episodes 8' (recorded in the Runs table)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default bench/results/latest.md (--quick: bench/results/quick.md, never the record)")
    args = ap.parse_args(argv)
    args.out = args.out or BENCH / "results" / ("quick.md" if args.quick else "latest.md")
    extra: dict[str, list[str]] = {}
    for item in args.bench_args:
        name, sep, rest = item.partition("=")
        if not sep or not name:
            ap.error(f"--bench-args: {item!r} is not NAME=ARGS (e.g. peer='--episodes 8')")
        extra[name] = shlex.split(rest)

    available = discover()
    runnable = set(available) | {n for n in STUDIES if (BENCH / f"{n}.py").exists()}
    only = [n for item in args.only or [] for n in item.split(",") if n]
    if unknown := [n for n in only if n not in runnable]:
        ap.error(f"--only: no benchmark named {', '.join(unknown)}; choose from {', '.join(sorted(runnable))}")
    wanted = only or available + [n for n in EXPECTED if n not in available]
    missing = [n for n in wanted if n not in runnable]
    cpu = cpu_model()
    previous = load_previous(args.out) if args.only else None
    if previous is not None and previous.get("cpu") != cpu:
        print(f"run_all: {args.out} was measured on {previous.get('cpu')!r}, this is {cpu!r}; one file holds "
              "one machine: rerun every benchmark here (no --only) or write elsewhere with --out", file=sys.stderr)
        return 2
    for name in missing:
        print(f"note: bench/{name}.py does not exist; skipped", flush=True)
    results = dict(previous["results"]) if previous else {}
    for name in wanted:
        if name in runnable:
            results[name] = {**run_one(name, args.quick, timeout_of(name, args.timeout), extra), "date": time.strftime("%Y-%m-%d %H:%M")}

    rows = [(f"{bench}: {metric}", value, note) for bench, metric, value, note in
            (r for name, res in results.items() for r in ratio_rows(name, res["tables"]))]
    rows += [(f"{name}: (no result)", "-", res["status"]) for name, res in results.items() if not res["tables"]]
    rows += [(f"{name}: (no result)", "-", "skipped: not present") for name in missing]
    print()
    print_table("CoLLM benchmarks: ratios", rows)
    command = "python bench/run_all.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(results, missing, command.strip(), cpu))
    args.out.with_suffix(".json").write_text(json.dumps({"cpu": cpu, "machine": machine(), "results": results}, indent=1))
    print(f"wrote {args.out}")
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped")
                    for name, r in results.items() if name in wanted) else 1


if __name__ == "__main__":
    sys.exit(main())
