"""Reconnect storm: 5,000 subscribers lose their sockets at once and come back with `since`.

Greenroom only (the baselines have no resume). Subscribers (guests in a public stream's room) are
spread over `--workers` client processes and record the offset of every event they receive, live
or from a join reply. A publisher sends `chat.send` at `--rate` messages/s for the whole run. At
the storm, every subscriber drops its TCP connection without a close frame (as a network failure
would), reconnects at once (or within `--jitter-ms`) and rejoins with `since = {epoch, last offset
seen}`. Measured: time until every subscriber has its join reply (p50, p99, all), how many resumes
were refused (`recovered: false`), and, after the publisher stops and the room drains, per
subscriber: offsets never received (missed) and offsets received twice (duplicated). Both must be 0.

    .venv/bin/python -m benchmarks.fanout.reconnect_storm --database-url postgresql://127.0.0.1/postgres
    .venv/bin/python -m benchmarks.fanout.reconnect_storm --quick      # 1,000 clients
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import sys
import time
from typing import Any

import uvloop

from benchmarks.fanout.load import CONNECT_CONCURRENCY, Worker, publish_for, start_run, stop_workers
from benchmarks.fanout.targets import Publisher, RoomInfo, Subscription, run_server

DRAIN_MAX_S = 30.0


class Tracker:
    """One subscriber's view of the room: every offset received, from which epoch."""

    def __init__(self, info: RoomInfo) -> None:
        self.sub = Subscription(info, self.on_event)
        self.epoch = ""
        self.seen: list[int] = []
        self.rejoin_s: float | None = None
        self.recovered: bool | None = None

    def on_event(self, conn: Any, payload: bytes, now: int) -> None:
        k = payload.find(b'"offset":', 0, 120)  # the envelope puts it right after the room name
        if k >= 0:
            self.seen.append(int(payload[k + 9:payload.find(b",", k)]))

    def absorb(self, reply: dict[str, Any]) -> None:
        self.epoch = reply["epoch"]
        self.seen.extend(e["offset"] for e in reply.get("events") or [])
        if not self.seen:
            self.seen.append(reply["offset"])  # the position joined at: offsets after it are expected

    @property
    def last(self) -> int:
        return max(self.seen)


def worker_main(pipe: multiprocessing.connection.Connection, info: RoomInfo, n: int, jitter_ms: float) -> None:
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_worker(pipe, info, n, jitter_ms))


async def _worker(pipe: multiprocessing.connection.Connection, info: RoomInfo, n: int, jitter_ms: float) -> None:
    trackers = [Tracker(info) for _ in range(n)]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def first(t: Tracker) -> None:
        async with gate:
            t.absorb(await t.sub.open_retrying())

    await asyncio.gather(*(first(t) for t in trackers))
    pipe.send(("ready", len(trackers)))
    loop = asyncio.get_running_loop()
    while True:
        cmd, arg = await loop.run_in_executor(None, pipe.recv)
        if cmd == "storm":
            start = time.monotonic()
            for t in trackers:
                assert t.sub.conn is not None
                t.sub.conn.abort()

            async def back(t: Tracker, start: float = start) -> None:
                if jitter_ms:
                    await asyncio.sleep(random.uniform(0, jitter_ms / 1000))
                for attempt in range(20):  # a refused connection under the storm is retried, bounded
                    try:
                        reply = await t.sub.open(since={"epoch": t.epoch, "offset": t.last}, timeout_s=60)
                        break
                    except (OSError, TimeoutError, RuntimeError):
                        await asyncio.sleep(min(2.0, 0.05 * 2 ** attempt))
                else:
                    return
                t.rejoin_s = time.monotonic() - start
                t.recovered = bool(reply.get("recovered"))
                if t.recovered and reply["epoch"] == t.epoch:
                    t.absorb(reply)
                else:  # a new epoch or trimmed history: offsets restart; only what follows is comparable
                    t.seen = []
                    t.absorb(reply)

            await asyncio.gather(*(back(t) for t in trackers))
            pipe.send([t.rejoin_s for t in trackers])
        elif cmd == "last":
            lasts = [t.last for t in trackers]
            pipe.send((min(lasts), max(lasts)))
        elif cmd == "verify":
            final = arg
            missed = dup = refused = 0
            for t in trackers:
                refused += t.recovered is False
                seen = t.seen
                dup += len(seen) - len(set(seen))
                missed += len(set(range(min(seen), final + 1)) - set(seen))
            pipe.send((missed, dup, refused))
        elif cmd == "stop":
            for t in trackers:
                if t.sub.conn is not None:
                    t.sub.conn.close()
            await asyncio.sleep(0.2)
            pipe.send("stopped")
            return


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def storm(args: argparse.Namespace) -> dict[str, Any]:
    async with run_server("greenroom", cpus=None, admin_dsn=args.database_url, backlog=args.backlog) as server:
        info = server.info
        assert info is not None
        ctx = multiprocessing.get_context("spawn")
        workers: list[Worker] = []
        for i in range(args.workers):
            share = args.clients // args.workers + (1 if i < args.clients % args.workers else 0)
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(theirs, info, share, args.jitter_ms), daemon=True)
            proc.start()
            workers.append(Worker(proc, ours))
        pub = Publisher(info, sockets=2)
        try:
            t0 = time.monotonic()
            ready = sum([(await asyncio.to_thread(w.pipe.recv))[1] for w in workers])
            print(f"{ready} clients joined in {time.monotonic() - t0:.1f}s", flush=True)
            await pub.open()
            publishing = asyncio.create_task(publish_for(pub, args.rate, args.before_s + args.after_s, 1, 64))
            await asyncio.sleep(args.before_s)
            rejoins: list[float | None] = []
            for result in await asyncio.gather(*(w.ask("storm") for w in workers)):
                rejoins += result
            sent = await publishing
            # Bounded wait for the last published offset to reach every client.
            final = 0
            deadline = time.monotonic() + DRAIN_MAX_S
            while time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                if pub.ok + sum(pub.errors.values()) < sent:
                    continue
                lasts = [await w.ask("last") for w in workers]
                final = max(final, *(hi for _, hi in lasts))
                if min(lo for lo, _ in lasts) >= final:
                    break
            missed = dup = refused = 0
            for w in workers:
                m, d, r = await w.ask("verify", final)
                missed, dup, refused = missed + m, dup + d, refused + r
        finally:
            pub.close()
            await stop_workers(workers)
    back = [r for r in rejoins if r is not None]
    result = {"clients": ready, "rejoined": len(back), "rate_msgs": args.rate, "jitter_ms": args.jitter_ms,
              "backlog": args.backlog or 4096,
              "rejoin_p50_s": round(percentile(back, 0.5), 2) if back else None,
              "rejoin_p99_s": round(percentile(back, 0.99), 2) if back else None,
              "all_rejoined_s": round(max(back), 2) if back else None,
              "recovered_false": refused, "missed": missed, "duplicated": dup, "final_offset": final,
              "published": sent, "publish_errors": pub.errors}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=20.0, help="chat messages/s published throughout")
    parser.add_argument("--before-s", type=float, default=3.0, help="publishing before the storm")
    parser.add_argument("--after-s", type=float, default=5.0, help="publishing after the storm starts")
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="spread reconnects over this window")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--backlog", type=int, help=(
        "Greenroom's listen backlog (GREENROOM_LISTEN_BACKLOG; default 4096)"))
    parser.add_argument("--json", help="also write the result as JSON here")
    parser.add_argument("--quick", action="store_true", help="1,000 clients")
    ns = parser.parse_args()
    if ns.quick:
        ns.clients = min(ns.clients, 1_000)
    info = start_run(ns.clients)
    result = asyncio.run(storm(ns))
    print(json.dumps(result))
    ok = result["missed"] == 0 and result["duplicated"] == 0 and result["rejoined"] == result["clients"]
    print("PASS: no missed, no duplicated events" if ok else "FAIL: see missed/duplicated/rejoined above")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"machine": info, "result": result}, f, indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
