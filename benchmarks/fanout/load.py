"""Fan-out load test: N subscribers in one room, one publisher at increasing rates.

For each target (raw ceiling, python-socketio, Greenroom) and each room size N, subscribers are
spread over `--workers` client processes (the wire client in `wire.py`; with `--pin` the server
gets the first CPU and the clients the others, otherwise the OS places them). The publisher then
sends at a ladder of rates, each for `--step-s` seconds; every message carries its send time
(CLOCK_MONOTONIC, shared by processes on one host) and each subscriber records publish-to-receive
latency in a mergeable histogram. Per step: deliveries/s, p50/p99/max latency, delivered fraction,
server CPU (and server CPU per delivery, which does not depend on how fast the client is) and
client CPU. The ladder climbs while the server keeps up (p99 < 1 s, 99% delivered); a failing
step is run once more. Reported per N: the highest rate with p99 < 100 ms (every lower rate
passing too), the highest sustained rate (p99 < 1 s), and the median server CPU per delivery.

On a small machine the clients need as much CPU as the server (each delivery is a loopback
`recv` plus a parse on their side): compare targets by their ratios and by server CPU per
delivery, and read the client CPU column before calling a rate a server limit.

    .venv/bin/python -m benchmarks.fanout.load --database-url postgresql://127.0.0.1/postgres
    .venv/bin/python -m benchmarks.fanout.load --quick

Loopback only; every loop is bounded by the ladder and `--step-s`; the servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import psutil
import uvloop

from benchmarks.fanout.latency import BUCKETS, SCALE, Histogram
from benchmarks.fanout.targets import MARK, TARGETS, Publisher, RoomInfo, Subscription, run_server

# Deliveries per second the publisher aims at, step by step (messages/s = deliveries / N).
LADDER = (1_000, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 20_000, 25_000, 30_000, 35_000, 40_000, 50_000,
          60_000, 80_000, 100_000, 130_000, 160_000, 200_000, 250_000, 300_000, 400_000, 500_000)
QUICK_LADDER = (2_000, 10_000, 30_000, 60_000)
SIZES = (100, 1_000, 5_000)
QUICK_SIZES = (100, 1_000)
P99_MS = 100.0
SUSTAINED_P99_MS = 1000.0
MIN_DELIVERED = 0.99
MIN_MESSAGES = 10  # per step: a slow rate runs longer than --step-s rather than judge p99 on a handful
DRAIN_MAX_S = 5.0  # after a step, how long stragglers may still arrive
CONNECT_CONCURRENCY = 200  # handshakes in flight per worker


@dataclass
class StepResult:
    target: str
    n: int
    step: int
    rate_msgs: float
    sent: int
    subscribers: int
    delivered: int
    deliveries_per_s: float
    delivered_fraction: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu: float  # share of one core over the step
    server_us_per_delivery: float  # server CPU time per delivery: efficiency, independent of the client
    client_cpu: float  # all client workers together, in cores
    lost_subscribers: int
    publish_errors: dict[str, int]
    publish_p50_ms: float | None  # greenroom: chat.send round trip (the publish path, before fan-out)
    publish_p99_ms: float | None

    @property
    def passed(self) -> bool:
        """The target's criterion: p99 under 100 ms, (almost) everything delivered."""
        return self.p99_ms < P99_MS and self.delivered_fraction >= MIN_DELIVERED

    @property
    def sustained(self) -> bool:
        """The server keeps up (latency bounded, nothing lost) even if slower than the criterion."""
        return self.p99_ms < SUSTAINED_P99_MS and self.delivered_fraction >= MIN_DELIVERED


# --- client worker process --------------------------------------------------------------


def worker_main(pipe: multiprocessing.connection.Connection, info: RoomInfo, n: int, cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_worker(pipe, info, n))


async def _worker(pipe: multiprocessing.connection.Connection, info: RoomInfo, n: int) -> None:
    stats: dict[int, Histogram] = {}
    log1p = math.log1p
    top = BUCKETS - 1

    def on_event(conn: Any, payload: bytes, now: int) -> None:
        k = payload.find(MARK)
        if k < 0:
            return
        end = payload.find(b";", k)
        step_end = payload.find(b";", end + 1)
        step = int(payload[end + 3:step_end])
        hist = stats.get(step)
        if hist is None:
            hist = stats[step] = Histogram()
        us = (now - int(payload[k + 3:end])) // 1000
        hist.counts[min(top, int(log1p(us if us > 0 else 0) * SCALE))] += 1
        hist.n += 1
        if us > hist.max_us:
            hist.max_us = us

    subs: list[Subscription] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> None:
        async with gate:
            sub = Subscription(info, on_event)
            await sub.open_retrying()
            subs.append(sub)

    results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    pipe.send(("ready", len(subs), len(errors), errors[:3], sum(s.retries for s in subs)))
    loop = asyncio.get_running_loop()
    while True:
        cmd, arg = await loop.run_in_executor(None, pipe.recv)
        if cmd == "count":
            pipe.send(stats[arg].n if arg in stats else 0)
        elif cmd == "stats":
            lost = sum(1 for s in subs if s.conn is not None and s.conn.closed.done())
            pipe.send((stats.pop(arg, Histogram()), lost))
        elif cmd == "stop":
            for s in subs:
                if s.conn is not None:
                    s.conn.close()
            await asyncio.sleep(0.2)
            pipe.send("stopped")
            return


@dataclass
class Worker:
    proc: multiprocessing.process.BaseProcess
    pipe: multiprocessing.connection.Connection

    async def ask(self, cmd: str, arg: Any = None) -> Any:
        self.pipe.send((cmd, arg))
        return await asyncio.to_thread(self.pipe.recv)


async def start_workers(info: RoomInfo, n: int, count: int, cpus: set[int] | None) -> tuple[list[Worker], int]:
    ctx = multiprocessing.get_context("spawn")
    workers: list[Worker] = []
    shares = [n // count + (1 if i < n % count else 0) for i in range(count)]
    for share in shares:
        if share == 0:
            continue
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(theirs, info, share, cpus), daemon=True)
        proc.start()
        workers.append(Worker(proc, ours))
    connected = 0
    retried = 0
    for w in workers:
        _, ok, failed, samples, retries = await asyncio.to_thread(w.pipe.recv)
        connected += ok
        retried += retries
        if failed:
            print(f"  {failed} subscribers failed to connect, e.g. {samples}", file=sys.stderr)
    if retried:
        print(f"  {retried} connection attempts were reset or refused and retried", file=sys.stderr)
    return workers, connected


async def stop_workers(workers: list[Worker]) -> None:
    for w in workers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(w.ask("stop"), 30)
        w.proc.join(5)
        if w.proc.is_alive():
            w.proc.kill()


# --- publisher --------------------------------------------------------------------------


async def publish_for(pub: Publisher, rate: float, seconds: float, step: int, text_bytes: int) -> int:
    """Send at `rate` messages/s for `seconds` (paced every millisecond); return how many were sent."""
    pad = "x" * max(0, text_bytes - 40)
    start = time.monotonic()
    sent = 0
    total = max(1, round(rate * seconds))
    seq = 0
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            seq += 1
            pub.publish(f"t={time.monotonic_ns()};s={step};q={seq};{pad}")
            sent += 1
        await asyncio.sleep(0.001)
    return sent


def line(r: StepResult) -> str:
    return (f"  {r.rate_msgs:>8} msg/s  {r.deliveries_per_s:>8} deliv/s  p50 {r.p50_ms:>7} ms  "
            f"p99 {r.p99_ms:>8} ms  max {r.max_ms:>8} ms  delivered {r.delivered_fraction:.4f}  "
            f"server cpu {r.server_cpu:.2f} ({r.server_us_per_delivery} us/deliv)  client cpu {r.client_cpu:.2f}"
            + (f"  lost {r.lost_subscribers}" if r.lost_subscribers else "")
            + (f"  errors {r.publish_errors}" if r.publish_errors else "")
            + (f"  publish p50 {r.publish_p50_ms} p99 {r.publish_p99_ms} ms" if r.publish_p50_ms is not None else ""))


def cpu_seconds(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return 0.0


# --- one target -------------------------------------------------------------------------


async def run_target(target: str, args: argparse.Namespace, sizes: tuple[int, ...],
                     ladder: tuple[int, ...]) -> list[StepResult]:
    results: list[StepResult] = []
    async with run_server(target, cpus=args.server_cpus, admin_dsn=args.database_url,
                          redis_url=args.redis_url) as server:
        assert server.info is not None
        sproc = psutil.Process(server.proc.pid)
        step = 0
        for n in sizes:
            workers, connected = await start_workers(server.info, n, args.workers, args.client_cpus)
            wprocs = [psutil.Process(w.proc.pid) for w in workers if w.proc.pid is not None]
            pub = Publisher(server.info, sockets=args.publisher_sockets)
            try:
                await pub.open()
                print(f"{target} N={n}: {connected} subscribers connected", flush=True)
                step += 1  # warm-up at the lowest rate after the connection burst, not reported
                await asyncio.sleep(1.0)
                await publish_for(pub, max(1.0, ladder[0] / n), 3.0, step, args.text_bytes)
                await asyncio.sleep(1.0)
                for w in workers:
                    await w.ask("stats", step)
                # Up the ladder while the server keeps up (p99 < 1 s); a failing step is retried, since
                # other load on a shared machine can spoil one step.
                for target_rate in ladder:
                    rate = target_rate / n
                    for attempt in range(1 + args.retries):
                        step += 1
                        r = await run_step(target, pub, workers, sproc, wprocs, args, n, connected, rate, step)
                        results.append(r)
                        print(line(r) + ("  (retry)" if attempt else ""), flush=True)
                        if r.passed:
                            break
                    if not r.sustained:
                        break
            finally:
                pub.close()
                await stop_workers(workers)
    return results


async def run_step(target: str, pub: Publisher, workers: list[Worker], sproc: psutil.Process,
                   wprocs: list[psutil.Process], args: argparse.Namespace, n: int, connected: int,
                   rate: float, step: int) -> StepResult:
    """Publish at `rate` for the step, wait for the deliveries, and merge what the workers measured."""
    seconds = max(args.step_s, MIN_MESSAGES / rate)
    errs_before = dict(pub.errors)
    pub.rtt = Histogram()
    s0, c0 = cpu_seconds(sproc), sum(cpu_seconds(p) for p in wprocs)
    t0 = time.monotonic()
    sent = await publish_for(pub, rate, seconds, step, args.text_bytes)
    elapsed = time.monotonic() - t0
    await drain(workers, step, sent * connected)
    s1, c1 = cpu_seconds(sproc), sum(cpu_seconds(p) for p in wprocs)
    busy = time.monotonic() - t0  # publishing plus the drain: the window the CPU times cover
    hist, lost = Histogram(), 0
    for w in workers:
        h, lw = await w.ask("stats", step)
        hist.merge(h)
        lost += lw
    errors = {k: v - errs_before.get(k, 0) for k, v in pub.errors.items() if v - errs_before.get(k, 0)}
    # CPU is read after the drain: deliveries that trail the step are paid for within it.
    # Deliveries/s is over the publishing time: a server that falls behind shows it in the latency.
    return StepResult(target, n, step, round(rate, 2), sent, connected, hist.n,
                      round(hist.n / elapsed), round(hist.n / max(1, sent * connected), 4),
                      round(hist.quantile_ms(0.5), 2), round(hist.quantile_ms(0.99), 2),
                      round(hist.max_us / 1000, 2), round((s1 - s0) / busy, 2),
                      round((s1 - s0) * 1e6 / max(1, hist.n), 2), round((c1 - c0) / busy, 2), lost, errors,
                      round(pub.rtt.quantile_ms(0.5), 2) if pub.rtt.n else None,
                      round(pub.rtt.quantile_ms(0.99), 2) if pub.rtt.n else None)


async def drain(workers: list[Worker], step: int, expected: int) -> None:
    """Wait until every delivery of the step arrived, or nothing arrived for a second (bounded)."""
    deadline = time.monotonic() + DRAIN_MAX_S
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        got = 0
        for w in workers:
            got += await w.ask("count", step)
        if got >= expected:
            return
        if got != last:
            last, last_change = got, time.monotonic()
        elif time.monotonic() - last_change > 1.0:
            return
        await asyncio.sleep(0.1)


# --- report -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("aiohttp", "uvloop", "orjson", "python-socketio", "python-engineio"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "kernel": platform.release(), "versions": versions, "loadavg": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def start_run(sockets: int) -> dict[str, Any]:
    """Set up this process for a run of `sockets` client sockets; print and return the machine.

    Raises the open-files limit to its hard limit (servers and workers inherit it; exits when even
    that is too low) and makes uvloop the event loop, as `greenroom serve` runs it.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = sockets + 1000
    if hard < need:
        sys.exit(f"open files hard limit {hard} is below the {need} this run needs; raise it (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    info = machine()
    print(json.dumps(info), flush=True)
    return info


def best(results: list[StepResult], target: str, n: int, sustained: bool = False) -> StepResult | None:
    """The highest passing rate below which every rate passed (once, counting the retry)."""
    steps = [r for r in results if r.target == target and r.n == n]
    top: StepResult | None = None
    for rate in sorted({r.rate_msgs for r in steps}):
        good = [r for r in steps if r.rate_msgs == rate and (r.sustained if sustained else r.passed)]
        if not good:
            break
        top = max(good, key=lambda r: r.deliveries_per_s)
    return top


def highest(results: list[StepResult], target: str, n: int) -> StepResult | None:
    """The highest rate that passed in any try, even above a rate that failed (noise on a shared machine)."""
    good = [r for r in results if r.target == target and r.n == n and r.passed]
    return max(good, key=lambda r: r.deliveries_per_s, default=None)


def us_per_delivery(results: list[StepResult], target: str, n: int) -> float | None:
    """Median server CPU per delivery over the steps that kept up (fixed costs weigh less at high rates)."""
    values = sorted(r.server_us_per_delivery for r in results
                    if r.target == target and r.n == n and r.sustained and r.deliveries_per_s >= 5_000)
    return values[len(values) // 2] if values else None


def summary(results: list[StepResult], sizes: tuple[int, ...], targets: list[str]) -> str:
    """Per N and target: best rate with p99 < 100 ms, best sustained rate (p99 < 1 s), server us/delivery."""
    def ratio(a: float | None, b: float | None, fmt: str) -> str:
        return format(a / b, fmt) if a and b else "-"

    def cell(r: StepResult | None) -> str:
        return f"{r.deliveries_per_s:,} ({r.p99_ms})" if r else "none"

    lines = ["| N | target | deliveries/s with p99 < 100 ms, all lower rates too (p99 ms) | highest step with p99 "
             "< 100 ms | sustained deliveries/s, p99 < 1 s | server us/delivery |", "|---|---|---|---|---|---|"]
    for n in sizes:
        for t in targets:
            us = us_per_delivery(results, t, n)
            lines.append(f"| {n:,} | {t} | {cell(best(results, t, n))} | {cell(highest(results, t, n))} | "
                         f"{cell(best(results, t, n, sustained=True))} | {us if us else '-'} |")
    lines += ["", "| N | greenroom/raw, p99 < 100 ms | greenroom/raw, sustained | raw/greenroom server us "
              "| greenroom/socketio, p99 < 100 ms | greenroom/socketio, sustained |", "|---|---|---|---|---|---|"]
    for n in sizes:
        def rate(t: str, sustained: bool, n: int = n) -> float | None:
            b = best(results, t, n, sustained)
            return float(b.deliveries_per_s) if b else None

        lines.append(f"| {n:,} | {ratio(rate('greenroom', False), rate('raw', False), '.2f')} | "
                     f"{ratio(rate('greenroom', True), rate('raw', True), '.2f')} | "
                     f"{ratio(us_per_delivery(results, 'raw', n), us_per_delivery(results, 'greenroom', n), '.2f')} | "
                     f"{ratio(rate('greenroom', False), rate('socketio', False), '.1f')} | "
                     f"{ratio(rate('greenroom', True), rate('socketio', True), '.1f')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated: raw,socketio,greenroom")
    parser.add_argument("--sizes", help="comma-separated subscriber counts (default 100,1000,5000)")
    parser.add_argument("--step-s", type=float, default=4.0, help="seconds per rate step")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--retries", type=int, default=1,
                        help="repeat a failing step this many times before the ladder stops (other load is noise)")
    # Ops of one socket run one at a time and each chat.send waits for PostgreSQL: the publisher
    # needs a few sockets for its round trips not to cap the rate (RESULTS.md, "Fan-out").
    parser.add_argument("--publisher-sockets", type=int, default=4,
                        help="greenroom: sockets the publisher spreads chat.send over (ops of one socket are serial)")
    parser.add_argument("--text-bytes", type=int, default=64, help="chat text length")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""),
                        help="PostgreSQL server for greenroom (a fresh database is created); empty: embedded")
    parser.add_argument("--redis-url", default="", help="greenroom with RedisBroker (default: in-process broker)")
    parser.add_argument("--json", help="also write every step as JSON here")
    parser.add_argument("--pin", action="store_true",
                        help="server on the first CPU, clients on the others (default: the OS places them)")
    parser.add_argument("--quick", action="store_true", help="N=100,1000, four rates, 1.5 s steps")
    parser.add_argument("--ladder", help="comma-separated deliveries/s to climb (default: the full ladder, or "
                        "the quick one with --quick)")
    ns = parser.parse_args()
    targets = [t.strip() for t in ns.targets.split(",") if t.strip()]
    sizes = tuple(int(x) for x in ns.sizes.split(",")) if ns.sizes else (QUICK_SIZES if ns.quick else SIZES)
    ladder: tuple[int, ...] = QUICK_LADDER if ns.quick else LADDER
    if ns.ladder:
        ladder = tuple(sorted(int(x) for x in ns.ladder.split(",")))
    if ns.quick:
        ns.step_s = min(ns.step_s, 1.5)
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) > 1 and ns.pin
    ns.server_cpus = {cpus[0]} if pin else None
    ns.client_cpus = set(cpus[1:]) if pin else None
    info = start_run(max(sizes))
    results: list[StepResult] = []
    for target in targets:
        results += asyncio.run(run_target(target, ns, sizes, ladder))
    print()
    print(f"load average at the end: {os.getloadavg()}")
    print(summary(results, sizes, targets))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"machine": info, "args": {k: v for k, v in vars(ns).items() if not isinstance(v, set)},
                       "steps": [asdict(r) for r in results]}, f, indent=1)


if __name__ == "__main__":
    main()
