"""Greenroom's app (`create_app`) on a listening socket with a chosen accept backlog.

`greenroom serve` listens with aiohttp's default backlog of 128 connections; a burst of thousands
of reconnects overflows it and the kernel drops SYNs, which clients retry after 1, 3, 7, 15 s...
This launcher runs the same application, one worker, with `--backlog`, so the reconnect storm can
tell the server's own cost from the listen queue's. Settings come from `GREENROOM_*` as usual;
`DATABASE_URL` is required (migrations run at start, as in `serve`).

    python -m benchmarks.fanout.greenroom_server --backlog 4096
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import uvloop
from aiohttp import web

from server.app import create_app
from server.settings import load_settings


async def serve(backlog: int) -> None:
    settings = load_settings()
    if not settings.database_url:
        sys.exit("DATABASE_URL is required")
    runner = web.AppRunner(create_app(settings, settings.database_url), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=backlog)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=4096)
    ns = parser.parse_args()
    uvloop.run(serve(ns.backlog))


if __name__ == "__main__":
    main()
