"""Server memory per idle connection: RSS growth for 10,000 subscribers sitting in one room.

For each target the server starts alone, its RSS is read once it answers and its room exists, then
`--connections` subscribers connect from `--workers` client processes and join (Greenroom: guests
in a public stream's room), the server settles for `--settle-s`, and its RSS is read again.
Per connection = (after - before) / connections. Target: <= 20 KB per idle connection.

    .venv/bin/python -m benchmarks.fanout.idle_memory --database-url postgresql://127.0.0.1/postgres
    .venv/bin/python -m benchmarks.fanout.idle_memory --quick      # 2,000 connections

The open-files limit is raised to its hard limit in this process (inherited by the servers and the
client workers); a hard limit below the connection count stops the run with a message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import psutil

from benchmarks.fanout.load import start_run, start_workers, stop_workers
from benchmarks.fanout.targets import TARGETS, run_server

TARGET_KB = 20.0


async def measure(target: str, args: argparse.Namespace) -> dict[str, float | int | str]:
    async with run_server(target, cpus=None, admin_dsn=args.database_url) as server:
        assert server.info is not None
        proc = psutil.Process(server.proc.pid)
        await asyncio.sleep(args.settle_s)
        before = proc.memory_info().rss
        t0 = time.monotonic()
        workers, connected = await start_workers(server.info, args.connections, args.workers, None)
        connect_s = time.monotonic() - t0
        try:
            await asyncio.sleep(args.settle_s)
            after = proc.memory_info().rss
        finally:
            await stop_workers(workers)
    per_conn = (after - before) / max(1, connected) / 1024
    row: dict[str, float | int | str] = {
        "target": target, "connections": connected, "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1), "kb_per_connection": round(per_conn, 1),
        "connect_s": round(connect_s, 1)}
    print(f"{target:>10}: {connected} connections in {connect_s:.1f}s, RSS {row['rss_before_mb']} -> "
          f"{row['rss_after_mb']} MB, {per_conn:.1f} KB per connection", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4, help="client processes")
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--quick", action="store_true", help="2,000 connections")
    ns = parser.parse_args()
    if ns.quick:
        ns.connections = min(ns.connections, 2_000)
    info = start_run(ns.connections)
    rows = [asyncio.run(measure(t.strip(), ns)) for t in ns.targets.split(",") if t.strip()]
    print()
    print("| target | connections | RSS before (MB) | RSS after (MB) | KB per connection | target <= 20 KB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        verdict = "met" if float(r["kb_per_connection"]) <= TARGET_KB else "MISSED"
        print(f"| {r['target']} | {r['connections']:,} | {r['rss_before_mb']} | {r['rss_after_mb']} | "
              f"{r['kb_per_connection']} | {verdict if r['target'] == 'greenroom' else '-'} |")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
