"""Process model: resolve services once, then one or N workers sharing the port (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import sys

from aiohttp import web

from .logs import configure
from .settings import Settings

log = logging.getLogger("greenroom.runner")


def _install_loop() -> None:
    if sys.platform != "win32":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_worker(settings: Settings, dsn: str, reuse_port: bool) -> None:
    """One worker: build the app and serve until SIGINT/SIGTERM, then drain (bounded)."""
    from .app import create_app

    configure(settings.log_level)
    _install_loop()
    app = create_app(settings, dsn)
    web.run_app(app, host=settings.host, port=settings.port, reuse_port=reuse_port,
                shutdown_timeout=settings.shutdown_timeout_s, print=None, access_log=None,
                handle_signals=True)


async def _migrate(dsn: str) -> None:
    from .db import connect
    from .migrator import migrate

    conn = await connect(dsn)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    if applied:
        log.info("migrations applied", extra={"count": len(applied)})


def serve_forever(settings: Settings) -> int:
    from .services import database_dsn

    configure(settings.log_level)
    with database_dsn(settings) as dsn:
        asyncio.run(_migrate(dsn))
        log.info("serving", extra={"url": f"http://{settings.host}:{settings.port}/",
                                   "workers": settings.workers, "redis": bool(settings.redis_url)})
        if settings.workers == 1:
            run_worker(settings, dsn, reuse_port=False)
            return 0
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=run_worker, args=(settings, dsn, True), daemon=False)
                 for _ in range(settings.workers)]
        for p in procs:
            p.start()

        def forward(_signum: int, _frame: object) -> None:
            for p in procs:
                if p.is_alive():
                    p.terminate()  # SIGTERM: each worker drains on its own

        signal.signal(signal.SIGTERM, forward)
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; workers drain on their own
            for p in procs:
                p.join(timeout=settings.shutdown_timeout_s + 5)
        return max((p.exitcode or 0) for p in procs)
