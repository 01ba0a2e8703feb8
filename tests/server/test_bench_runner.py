"""`make bench` (benchmarks/run_all.py): every benchmark it names exists and imports, and its summary
reads their JSON into one table (Greenroom, baseline, ratio). Running the benchmarks is `make bench`."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from benchmarks import run_all

ROOT = Path(__file__).resolve().parents[2]


def test_make_bench_runs_run_all() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0]
    assert "-m benchmarks.run_all" in recipe


@pytest.mark.parametrize("bench", run_all.benches(), ids=lambda b: b.key)
def test_each_benchmark_module_imports_and_has_a_main(bench: run_all.Bench) -> None:
    module = importlib.import_module(bench.module)
    assert callable(module.main)


def test_every_benchmark_script_is_run() -> None:
    scripts = {"benchmarks." + p.relative_to(ROOT / "benchmarks").with_suffix("").as_posix().replace("/", ".")
               for p in (ROOT / "benchmarks").rglob("*.py")}
    # Libraries and servers the benchmarks start, not benchmarks themselves:
    helpers = {"benchmarks.run_all", "benchmarks.ledger_naive", "benchmarks.fanout.__init__",
               "benchmarks.fanout.latency", "benchmarks.fanout.targets", "benchmarks.fanout.wire",
               "benchmarks.fanout.raw_server", "benchmarks.fanout.socketio_server"}
    assert scripts - helpers == {b.module for b in run_all.benches()}


def step(target: str, rate: float, p99: float, us: float = 10.0, n: int = 1000) -> dict[str, Any]:
    return {"target": target, "n": n, "step": 1, "rate_msgs": rate, "sent": 10, "subscribers": n,
            "delivered": 10 * n, "deliveries_per_s": int(rate * n), "delivered_fraction": 1.0, "p50_ms": p99 / 2,
            "p99_ms": p99, "max_ms": p99, "server_cpu": 0.5, "server_us_per_delivery": us, "client_cpu": 0.5,
            "lost_subscribers": 0, "publish_errors": {}, "publish_p50_ms": None, "publish_p99_ms": None}


def bench(key: str, data: Any, rc: int = 0) -> run_all.Bench:
    b = next(b for b in run_all.benches() if b.key == key)
    b.data, b.rc, b.seconds = data, rc, 12.0
    return b


def rows(text: str) -> dict[str, list[str]]:
    out = {}
    for line in text.splitlines()[2:]:
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells[1:]
    return out


def test_summary_puts_greenroom_beside_each_baseline_with_the_ratio() -> None:
    top = max(run_all.FANOUT_LADDER) / 1000  # messages/s at N = 1,000
    floor = f">= {max(run_all.FANOUT_LADDER):,}"
    ledger = [
        {"workload": "hot", "impl": "engine", "submitters": 256, "per_s": 10_000.0, "p99_ms": 50.0},
        {"workload": "hot", "impl": "naive", "submitters": 256, "per_s": 400.0, "p99_ms": 1000.0},
    ]
    fanout = {"steps": [
        step("raw", 20, 10, us=8), step("raw", 50, 20, us=8), step("raw", 80, 150, us=8), step("raw", 80, 500, us=8),
        step("socketio", 5, 300), step("socketio", 5, 400),  # never under 100 ms; sustained at 5k/s
        step("greenroom", 20, 10, us=4), step("greenroom", 50, 30, us=4), step("greenroom", 80, 60, us=4),
        step("greenroom", 100, 70, us=4), step("greenroom", 130, 80, us=4), step("greenroom", 160, 90, us=4),
        step("greenroom", 200, 95, us=4), step("greenroom", top, 99, us=4),  # the ladder's top: a floor
    ]}
    idle = {"rows": [{"target": "raw", "connections": 2000, "kb_per_connection": 13.6},
                     {"target": "socketio", "connections": 2000, "kb_per_connection": 30.0},
                     {"target": "greenroom", "connections": 2000, "kb_per_connection": 17.0}]}
    storm = {"result": {"clients": 1000, "rejoined": 1000, "all_rejoined_s": 1.21, "missed": 0, "duplicated": 0}}
    text = run_all.summary([bench("ledger", ledger), bench("fanout", fanout), bench("idle", idle),
                            bench("storm", storm, rc=1)])
    table = rows(text)
    assert table["ledger hot, 256 submitters: tips/s (baseline: naive tips/s)"] == ["10,000", "400", "25.00x"]
    assert table["ledger hot, 256 submitters: p99 latency, lower is better"] == ["50.0 ms", "1,000.0 ms", "0.05x"]
    ratio = f"{max(run_all.FANOUT_LADDER) / 50_000:.2f}x"
    assert table["fan-out N=1,000: deliveries/s with p99 < 100 ms (baseline: raw aiohttp)"] == [floor, "50,000", ratio]
    assert table["fan-out N=1,000: deliveries/s with p99 < 100 ms (baseline: python-socketio)"] == [floor, "none", "-"]
    ratio = f"{max(run_all.FANOUT_LADDER) / 5_000:.2f}x"
    assert table["fan-out N=1,000: sustained deliveries/s (p99 < 1 s) (baseline: python-socketio)"] == [
        floor, "5,000", ratio]
    assert table["fan-out N=1,000: server CPU per delivery, lower is better (baseline: raw aiohttp)"] == [
        "4.0 us", "8.0 us", "0.50x"]
    assert table["idle memory, 2,000 connections: KB per connection, lower is better (baseline: raw aiohttp)"] == [
        "17.0 KB", "13.6 KB", "1.25x"]
    assert table["reconnect storm: rejoined / missed / duplicated events (must be all / 0 / 0)"] == [
        "1,000 / 0 / 0", "-", "-"]
    assert "storm: FAILED in 12s (exit 1)" in text
    assert "ledger: ok in 12s" in text


def test_a_benchmark_without_figures_is_reported_failed() -> None:
    b = bench("idle", None, rc=2)
    b.error = "exited 2 without writing idle.json"
    text = run_all.summary([b])
    assert "idle: FAILED in 12s (exit 2) (exited 2 without writing idle.json)" in text
