"""Ledger benchmark: the batching engine against the naive baseline, in the same run.

Workloads:
  hot      1,000 payers tip one performer; each tip is a 2-leg linked chain
           (wallet -> earnings 80, wallet -> platform_revenue 20).
  uniform  single transfers between random pairs of 10,000 wallets.
For each workload and each number of concurrent submitters, the engine runs, then the naive
baseline (one transaction per submission, `SELECT … FOR UPDATE` in id order). Submitters run in
this process, as request handlers would; the database is `DATABASE_URL` (a fresh database is
created on that server and dropped after) or an embedded PostgreSQL. Ends with the ledger audit.

    python -m benchmarks.ledger_bench --submitters 1,16,64,256 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg
import orjson

from benchmarks.ledger_naive import NaiveLedger
from ledger import (
    SYSTEM_ACCOUNT_IDS,
    AccountKind,
    Code,
    Engine,
    NewAccount,
    Result,
    Transfer,
    TransferFlags,
    audit,
    create_accounts,
)
from server.app.embedded_postgres import EmbeddedPostgres, with_database
from server.app.migrator import migrate

PLATFORM = SYSTEM_ACCOUNT_IDS[AccountKind.PLATFORM_REVENUE]
CLEARING = SYSTEM_ACCOUNT_IDS[AccountKind.PAYMENT_CLEARING]
FUNDING = 10**12  # tokens per wallet: no benchmark run can spend it
NAIVE_POOL_MAX = 32  # connections for the baseline (the server allows ~100; more only slows it)

Submit = Callable[[list[Transfer]], Awaitable[bool]]


@dataclass
class Run:
    workload: str
    impl: str
    submitters: int
    seconds: float
    submissions: int  # tips (hot) or transfers (uniform) applied
    transfers: int
    failed: int
    p50_ms: float
    p99_ms: float
    batch_avg: float  # transfers per batch (engine only)

    @property
    def per_s(self) -> float:
        return self.submissions / self.seconds

    @property
    def transfers_per_s(self) -> float:
        return self.transfers / self.seconds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ledger_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=("hot", "uniform", "both"), default="both")
    p.add_argument("--submitters", default="1,16,64,256", help="comma-separated concurrent submitter counts")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per run (default 10)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds run before measuring")
    p.add_argument("--payers", type=int, default=1000, help="hot workload: payers of the one performer")
    p.add_argument("--accounts", type=int, default=10_000, help="uniform workload: wallets")
    p.add_argument("--batch-max", type=int, default=1000, help="engine: most transfers per batch")
    p.add_argument("--batch-wait-ms", type=float, default=0.0, help="engine: longest a batch waits for more")
    p.add_argument("--no-fast-path", action="store_true",
                   help="engine: every batch through the locked path (no counter cache)")
    p.add_argument("--no-naive", action="store_true", help="skip the baseline")
    p.add_argument("--no-audit", action="store_true", help="skip the audit at the end")
    p.add_argument("--json", type=Path, help="also write the runs as JSON here")
    return p.parse_args(argv)


async def fresh_database(admin_dsn: str) -> str:
    name = f"ledger_bench_{os.getpid()}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = with_database(admin_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


async def drop_database(admin_dsn: str, dsn: str) -> None:
    name = dsn.split("?")[0].rsplit("/", 1)[1]
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def wallets(pool: asyncpg.Pool, engine: Engine, count: int) -> list[int]:
    ids: list[int] = []
    for start in range(0, count, 1000):
        batch = [NewAccount(AccountKind.WALLET, uuid.uuid4()) for _ in range(min(1000, count - start))]
        ids.extend(a.id for a in await create_accounts(pool, batch))
    for start in range(0, count, engine.batch_max):
        funding = [Transfer(uuid.uuid4(), CLEARING, i, FUNDING, Code.PURCHASE)
                   for i in ids[start:start + engine.batch_max]]
        outcomes = await engine.submit(funding)
        assert all(o.result is Result.OK for o in outcomes)
    return ids


def new_id() -> uuid.UUID:
    """A random (version 4) id without uuid4's os.urandom system call per id: the load generator's
    cost is not what is measured (2.4 -> 1.5 µs an id; two per tip)."""
    return uuid.UUID(int=random.getrandbits(128), version=4)


def hot_submission(payers: list[int], performer: int) -> Callable[[], list[Transfer]]:
    def make() -> list[Transfer]:
        payer = random.choice(payers)
        return [Transfer(new_id(), payer, performer, 80, Code.TIP, TransferFlags.LINKED),
                Transfer(new_id(), payer, PLATFORM, 20, Code.FEE)]
    return make


def uniform_submission(accounts: list[int]) -> Callable[[], list[Transfer]]:
    def make() -> list[Transfer]:
        debit, credit = random.sample(accounts, 2)
        return [Transfer(new_id(), debit, credit, 1, Code.TIP)]
    return make


async def drive(submit: Submit, make: Callable[[], list[Transfer]], submitters: int, warmup: float,
                duration: float) -> tuple[int, int, int, list[float], float]:
    """Run `submitters` loops; count what completes inside the measured window."""
    # What a long-running server does after start-up: move the objects of imports and set-up out
    # of the collector's reach. Without it, each full collection (about one a second under this
    # load) walked them all for 50-75 ms, stalling every submitter: the p99 at 256 submitters.
    gc.collect()
    gc.freeze()
    latencies: list[float] = []
    counts = [0, 0, 0]  # submissions ok, transfers ok, failed
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def loop() -> None:
        while True:
            transfers = make()
            began = time.perf_counter()
            if began >= stop_at:
                return
            ok = await submit(transfers)
            ended = time.perf_counter()
            if began >= measure_from and ended <= stop_at:
                latencies.append(ended - began)
                if ok:
                    counts[0] += 1
                    counts[1] += len(transfers)
                else:
                    counts[2] += 1

    await asyncio.gather(*(loop() for _ in range(submitters)))
    return counts[0], counts[1], counts[2], latencies, duration


def summarize(workload: str, impl: str, submitters: int, result: tuple[int, int, int, list[float], float],
              batch_avg: float) -> Run:
    ok, transfers, failed, latencies, seconds = result
    latencies.sort()
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else float("nan")
    return Run(workload, impl, submitters, seconds, ok, transfers, failed, round(p50, 2), round(p99, 2),
               round(batch_avg, 1))


async def run_engine(engine: Engine, workload: str, make: Callable[[], list[Transfer]], submitters: int,
                     args: argparse.Namespace) -> Run:
    async def submit(transfers: list[Transfer]) -> bool:
        outcomes = await engine.submit(transfers)
        return all(o.result is Result.OK for o in outcomes)

    batches, events = engine.stats.batches, engine.stats.events
    result = await drive(submit, make, submitters, args.warmup, args.duration)
    done = engine.stats.batches - batches
    return summarize(workload, "engine", submitters, result, (engine.stats.events - events) / max(done, 1))


async def run_naive(naive: NaiveLedger, workload: str, make: Callable[[], list[Transfer]], submitters: int,
                    args: argparse.Namespace) -> Run:
    result = await drive(naive.submit, make, submitters, args.warmup, args.duration)
    return summarize(workload, "naive", submitters, result, 0)


def print_run(run: Run) -> None:
    unit = "tips/s" if run.workload == "hot" else "transfers/s"
    print(f"{run.workload:8} {run.impl:6} submitters={run.submitters:4}  {run.per_s:9.0f} {unit:12} "
          f"({run.transfers_per_s:9.0f} transfers/s)  p50 {run.p50_ms:7.2f} ms  p99 {run.p99_ms:7.2f} ms"
          f"{f'  batch {run.batch_avg:.0f}' if run.impl == 'engine' else ''}"
          f"{f'  failed {run.failed}' if run.failed else ''}", flush=True)


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": model, "python": platform.python_version()}


async def bench(dsn: str, args: argparse.Namespace) -> int:
    counts = [int(n) for n in args.submitters.split(",")]
    engine = Engine(dsn, batch_max=args.batch_max, batch_wait_ms=args.batch_wait_ms, queue_max=1_000_000,
                    cache_max=0 if args.no_fast_path else 100_000)
    await engine.start()
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=NAIVE_POOL_MAX)
    assert pool is not None
    runs: list[Run] = []
    try:
        version = await pool.fetchval("SHOW server_version")
        sync = await pool.fetchval("SHOW synchronous_commit")
        print(f"# {machine()} PostgreSQL {version}, synchronous_commit={sync}", flush=True)
        naive = NaiveLedger(pool)
        if args.workload in ("hot", "both"):
            payers = await wallets(pool, engine, args.payers)
            [performer] = await create_accounts(pool, [NewAccount(AccountKind.EARNINGS, uuid.uuid4())])
            make = hot_submission(payers, performer.id)
            for n in counts:
                runs.append(await run_engine(engine, "hot", make, n, args))
                print_run(runs[-1])
                if not args.no_naive:
                    runs.append(await run_naive(naive, "hot", make, n, args))
                    print_run(runs[-1])
        if args.workload in ("uniform", "both"):
            accounts = await wallets(pool, engine, args.accounts)
            make = uniform_submission(accounts)
            for n in counts:
                runs.append(await run_engine(engine, "uniform", make, n, args))
                print_run(runs[-1])
                if not args.no_naive:
                    runs.append(await run_naive(naive, "uniform", make, n, args))
                    print_run(runs[-1])
        report_ratio(runs)
        clean = True
        if not args.no_audit:
            report = await audit(pool)
            print(report.format(), flush=True)
            clean = report.ok
        if args.json:
            args.json.write_text(orjson.dumps([asdict(r) | {"per_s": r.per_s} for r in runs],
                                              option=orjson.OPT_INDENT_2).decode())
        return 0 if clean else 1
    finally:
        await pool.close()
        await engine.close()


def report_ratio(runs: list[Run]) -> None:
    for run in runs:
        if run.impl != "engine":
            continue
        base = next((r for r in runs if r.impl == "naive" and r.workload == run.workload
                     and r.submitters == run.submitters), None)
        if base is not None and base.per_s > 0:
            print(f"ratio {run.workload:8} submitters={run.submitters:4}: engine/naive = {run.per_s / base.per_s:.1f}x")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    loop_factory = None
    if sys.platform != "win32":
        import uvloop

        loop_factory = uvloop.new_event_loop  # what `greenroom serve` runs on
    admin = os.environ.get("DATABASE_URL", "")
    embedded = None
    data_dir = None
    if not admin:
        data_dir = Path(tempfile.mkdtemp(prefix="greenroom-bench-"))
        embedded = EmbeddedPostgres(data_dir)
        admin = embedded.start()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            dsn = runner.run(fresh_database(admin))
            try:
                return runner.run(bench(dsn, args))
            finally:
                runner.run(drop_database(admin, dsn))
    finally:
        if embedded is not None:
            embedded.stop()
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
