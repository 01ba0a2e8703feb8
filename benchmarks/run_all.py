"""Every benchmark with its baselines, at short settings, then one summary table (`make bench`).

Runs, each as a subprocess writing its figures as JSON (`--json`):

- ledger: `benchmarks/ledger_bench.py`, the batching engine against the naive baseline
  (`benchmarks/ledger_naive.py`), hot and uniform workloads, ends with the ledger audit.
- fanout: `benchmarks/fanout/load.py`, one room of N subscribers against raw aiohttp (the ceiling)
  and python-socketio, a short rate ladder.
- idle: `benchmarks/fanout/idle_memory.py`, server memory per idle connection, same three servers.
- storm: `benchmarks/fanout/reconnect_storm.py`, every subscriber drops and resumes (Greenroom only:
  the baselines have no resume).

The database is `DATABASE_URL`'s server when set (each benchmark creates a fresh database there
and drops it), otherwise each starts an embedded PostgreSQL. Redis is never needed (in-process
broker). The settings here are for a quick look (a few minutes on 2 cores); the figures recorded in
benchmarks/RESULTS.md come from the full runs documented there.

    python -m benchmarks.run_all                      # everything
    python -m benchmarks.run_all --only ledger,storm  # some
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.fanout.load import StepResult, best, us_per_delivery

ROOT = Path(__file__).resolve().parents[1]
FANOUT_N = 1_000
FANOUT_LADDER = (5_000, 20_000, 50_000, 80_000, 100_000, 130_000, 160_000, 200_000, 250_000, 300_000, 400_000,
                 500_000)
LEDGER_SUBMITTERS = (16, 256)


@dataclass
class Bench:
    key: str
    module: str
    args: list[str]
    timeout_s: float
    rc: int | None = None
    seconds: float = 0.0
    data: Any = None
    error: str = ""


def benches() -> list[Bench]:
    return [
        Bench("ledger", "benchmarks.ledger_bench",
              ["--submitters", ",".join(map(str, LEDGER_SUBMITTERS)), "--duration", "3", "--warmup", "0.5"], 300),
        Bench("fanout", "benchmarks.fanout.load",
              ["--sizes", str(FANOUT_N), "--step-s", "1.5", "--ladder", ",".join(map(str, FANOUT_LADDER))], 420),
        Bench("idle", "benchmarks.fanout.idle_memory", ["--quick", "--settle-s", "2"], 240),
        Bench("storm", "benchmarks.fanout.reconnect_storm", ["--quick", "--before-s", "2", "--after-s", "3"], 240),
    ]


def run(bench: Bench, out: Path) -> None:
    """Run one benchmark (output to this terminal), bounded by its timeout; read its JSON."""
    result = out / f"{bench.key}.json"
    cmd = [sys.executable, "-m", bench.module, *bench.args, "--json", str(result)]
    print(f"\n=== {bench.key}: {' '.join(cmd[1:])}", flush=True)
    started = time.monotonic()
    # Its own process group: on timeout the benchmark, its servers and its client workers all stop.
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    try:
        bench.rc = proc.wait(timeout=bench.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        bench.error = f"timed out after {bench.timeout_s:g}s"
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    bench.seconds = time.monotonic() - started
    if result.exists():
        bench.data = json.loads(result.read_text())
    elif not bench.error:
        bench.error = f"exited {bench.rc} without writing {result.name}"


# --- the summary ----------------------------------------------------------------------------


@dataclass
class Table:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, what: str, ours: float | str | None, base: float | str | None,
            fmt: Callable[[float], str] = lambda v: f"{v:,.0f}", ratio: float | None = None) -> None:
        def cell(v: float | str | None) -> str:
            return "-" if v is None else v if isinstance(v, str) else fmt(v)

        if ratio is None and isinstance(ours, int | float) and isinstance(base, int | float) and base:
            ratio = ours / base
        self.rows.append((what, cell(ours), cell(base), "-" if ratio is None else f"{ratio:.2f}x"))

    def render(self) -> str:
        head = ("what", "Greenroom", "baseline", "ratio")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(4)]
        lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
                 "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"]
        for r in self.rows:
            cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def ms(v: float) -> str:
    return f"{v:,.1f} ms"


def summarize_ledger(table: Table, runs: list[dict[str, Any]]) -> None:
    """Engine against the naive baseline per workload and submitter count: rate and p99."""
    def find(workload: str, impl: str, n: int) -> dict[str, Any] | None:
        return next((r for r in runs if r["workload"] == workload and r["impl"] == impl and r["submitters"] == n), None)

    for workload, unit in (("hot", "tips/s"), ("uniform", "transfers/s")):
        for n in sorted({r["submitters"] for r in runs if r["workload"] == workload}):
            engine, naive = find(workload, "engine", n), find(workload, "naive", n)
            if engine is None:
                continue
            base = f"naive {unit}" if naive else "naive (not run)"
            table.add(f"ledger {workload}, {n} submitters: {unit} (baseline: {base})",
                      engine["per_s"], naive["per_s"] if naive else None)
            table.add(f"ledger {workload}, {n} submitters: p99 latency, lower is better",
                      engine["p99_ms"], naive["p99_ms"] if naive else None, ms)


def summarize_fanout(table: Table, data: dict[str, Any]) -> None:
    """Per N: Greenroom's rates and CPU per delivery against raw aiohttp and python-socketio."""
    steps = [StepResult(**s) for s in data["steps"]]
    top = max(FANOUT_LADDER)

    def rate(target: str, n: int, sustained: bool) -> float | str | None:
        b = best(steps, target, n, sustained)
        if b is None:
            return "none" if any(s.target == target for s in steps) else None
        # The ladder's last rung passed: the figure is a floor, not the limit.
        at_top = round(b.rate_msgs * n) >= top
        return f">= {b.deliveries_per_s:,}" if at_top else float(b.deliveries_per_s)

    def ratio(a: float | str | None, b: float | str | None) -> float | None:
        def num(v: float | str | None) -> float | None:
            if isinstance(v, int | float):
                return float(v)
            if isinstance(v, str) and v.startswith(">= "):
                return float(v[3:].replace(",", ""))
            return None

        x, y = num(a), num(b)
        return x / y if x and y else None

    for n in sorted({s.n for s in steps}):
        for sustained, label in ((False, "deliveries/s with p99 < 100 ms"),
                                 (True, "sustained deliveries/s (p99 < 1 s)")):
            ours = rate("greenroom", n, sustained)
            for base, name in (("raw", "raw aiohttp"), ("socketio", "python-socketio")):
                theirs = rate(base, n, sustained)
                table.add(f"fan-out N={n:,}: {label} (baseline: {name})", ours, theirs, ratio=ratio(ours, theirs))
        gr, raw = us_per_delivery(steps, "greenroom", n), us_per_delivery(steps, "raw", n)
        table.add(f"fan-out N={n:,}: server CPU per delivery, lower is better (baseline: raw aiohttp)",
                  gr, raw, lambda v: f"{v:.1f} us")


def summarize_idle(table: Table, data: dict[str, Any]) -> None:
    rows = {r["target"]: r for r in data["rows"]}
    ours = rows.get("greenroom")
    for base, name in (("raw", "raw aiohttp"), ("socketio", "python-socketio")):
        theirs = rows.get(base)
        conns = (ours or theirs or {}).get("connections", 0)
        table.add(f"idle memory, {conns:,} connections: KB per connection, lower is better (baseline: {name})",
                  ours["kb_per_connection"] if ours else None, theirs["kb_per_connection"] if theirs else None,
                  lambda v: f"{v:.1f} KB")


def summarize_storm(table: Table, data: dict[str, Any]) -> None:
    r = data["result"]
    table.add(f"reconnect storm, {r['clients']:,} clients: all rejoined after (no baseline: no resume)",
              r["all_rejoined_s"], None, lambda v: f"{v:.2f} s")
    table.add("reconnect storm: rejoined / missed / duplicated events (must be all / 0 / 0)",
              f"{r['rejoined']:,} / {r['missed']} / {r['duplicated']}", None)


SUMMARIES: dict[str, Callable[[Table, Any], None]] = {
    "ledger": summarize_ledger, "fanout": summarize_fanout, "idle": summarize_idle, "storm": summarize_storm}


def summary(results: list[Bench]) -> str:
    table = Table()
    for bench in results:
        if bench.data is not None:
            SUMMARIES[bench.key](table, bench.data)
    status = [f"{b.key}: {'ok' if b.rc == 0 and not b.error else 'FAILED'} in {b.seconds:.0f}s"
              + (f" (exit {b.rc})" if b.rc else "") + (f" ({b.error})" if b.error else "") for b in results]
    return table.render() + "\n\n" + "; ".join(status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated: " + ",".join(b.key for b in benches()))
    parser.add_argument("--out", type=Path, help="where the JSON files go (default benchmarks/out/run-<time>)")
    ns = parser.parse_args(argv)
    chosen = benches()
    if ns.only:
        keys = [k.strip() for k in ns.only.split(",") if k.strip()]
        unknown = set(keys) - {b.key for b in chosen}
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        chosen = [b for b in chosen if b.key in keys]
    out = ns.out or ROOT / "benchmarks" / "out" / time.strftime("run-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    db = os.environ.get("DATABASE_URL")
    print(f"database: {'DATABASE_URL' if db else 'embedded PostgreSQL per benchmark'}; results in {out}")
    started = time.monotonic()
    for bench in chosen:
        run(bench, out)
    print(f"\n=== summary (all runs {time.monotonic() - started:.0f}s; load average now "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; short runs on a shared machine are noisy)\n")
    print(summary(chosen))
    return 0 if all(b.rc == 0 and not b.error for b in chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
