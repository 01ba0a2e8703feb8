"""Process model: resolve services once, then one or N workers sharing the port (SO_REUSEPORT).

Stopping: SIGTERM or SIGINT during start-up (embedded PostgreSQL, migrations, a worker building
its app) is remembered and honoured as soon as that step ends, so nothing is left half-started
(a second Ctrl-C aborts at once); once serving, it makes a worker stop accepting, run `app.on_shutdown` (the socket
layer closes websockets with 1001 "going away" there), wait up to `shutdown_timeout_s` for
in-flight requests, then tear down the lifecycle contexts (ledger batches, pools) in reverse
order. With several workers the parent turns its SIGTERM/SIGINT into exactly one SIGTERM per
worker (workers ignore SIGINT, so a terminal's Ctrl-C, which reaches the whole process group,
is not counted twice), waits for them, and only then stops the embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

from aiohttp import web
from prometheus_client.multiprocess import mark_process_dead

from server.app.db import connect, database_dsn
from server.app.logs import configure
from server.app.migrator import migrate
from server.kernel.metrics import MULTIPROC_ENV
from server.kernel.settings import Settings

log = logging.getLogger("greenroom.runner")

EXIT_UNCLEAN = 1

# A stop signal that arrives during start-up (the parent's database and migrations, a worker
# building its app: before the event loop's handlers exist) is remembered here and honoured as
# soon as serving would begin.
_stop_requested = False


def _remember_stop(signum: int, _frame: object) -> None:
    global _stop_requested
    if _stop_requested and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C aborts a start-up that is taking long (a bad DSN)
    _stop_requested = True


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    if sys.platform != "win32":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def stop_bound_s(settings: Settings) -> float:
    """The longest a worker takes to stop: the drain, then as long again for teardown."""
    return 2 * settings.shutdown_timeout_s + 5


def handler_options(settings: Settings) -> dict[str, Any]:
    """aiohttp's per-connection bounds. Its keep-alive timer starts when a connection opens and
    again after each answer, and closes the connection if no whole request head arrived by then:
    so it bounds a slow or stalled head as well as an idle connection (`http_header_timeout_s`).
    The body is bounded where a route reads it (`rest.framework.router.read_body`)."""
    return {"keepalive_timeout": settings.http_header_timeout_s, "lingering_time": settings.http_linger_s}


async def serve_app(app: web.Application, settings: Settings, *, reuse_port: bool,
                    stop_on: tuple[signal.Signals, ...]) -> int:
    """Serve until one of `stop_on` arrives, then drain (bounded); 0 when the stop was clean."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in stop_on:
        loop.add_signal_handler(sig, stop.set)  # a repeated signal changes nothing
    if _stop_requested:
        stop.set()
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=settings.shutdown_timeout_s, **handler_options(settings))
    await runner.setup()
    try:
        if not stop.is_set():  # told to stop while starting: never bind, go straight to teardown
            site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port,
                               backlog=settings.listen_backlog)
            await site.start()
            log.info("worker ready", extra={"pid": os.getpid(), "port": settings.port})
            await stop.wait()
        log.info("worker draining", extra={"pid": os.getpid(), "bound_s": stop_bound_s(settings)})
    finally:
        try:
            async with asyncio.timeout(stop_bound_s(settings)):
                await runner.cleanup()
        except TimeoutError:
            log.error("worker did not stop within its bound", extra={"pid": os.getpid()})
            return EXIT_UNCLEAN
    log.info("worker stopped", extra={"pid": os.getpid()})
    return 0


def run_worker(settings: Settings, dsn: str, reuse_port: bool, pooled: bool = False) -> int:
    """One worker: build the app and serve until told to stop."""
    # Imported here, not at the top: a spawned worker unpickles this module before it can install
    # its stop handlers, and the app's imports are most of a worker's start-up time.
    from server.app.factory import create_app

    if pooled:  # the parent forwards Ctrl-C as SIGTERM; see the module docstring
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure(settings.log_level)
    stop_on = (signal.SIGTERM,) if pooled else (signal.SIGTERM, signal.SIGINT)
    for sig in stop_on:  # until serve_app puts the loop's handlers in place
        signal.signal(sig, _remember_stop)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve_app(create_app(settings, dsn), settings, reuse_port=reuse_port, stop_on=stop_on))


def _pooled_worker(settings: Settings, dsn: str) -> None:
    sys.exit(run_worker(settings, dsn, reuse_port=True, pooled=True))


async def _migrate(dsn: str) -> None:
    conn = await connect(dsn)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    if applied:
        log.info("migrations applied", extra={"count": len(applied)})


def _supervise(settings: Settings, dsn: str) -> int:
    """Start the workers; stop them all on a signal or when one dies; 0 only if all stopped cleanly."""
    # Workers record metrics into files here, so a scrape answered by any one of them sums them all.
    metrics_dir = tempfile.mkdtemp(prefix="greenroom-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    procs: list[BaseProcess] = []
    stopping = False

    def stop_all(signum: int = 0, _frame: object = None) -> None:
        nonlocal stopping
        if not stopping and signum:
            log.info("stopping workers", extra={"signal": signal.Signals(signum).name})
        stopping = True
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT)}
    if _stop_requested:  # a signal remembered before these handlers existed
        stopping = True
    try:
        for _ in range(settings.workers):
            if stopping:
                break
            worker = ctx.Process(target=_pooled_worker, args=(settings, dsn), daemon=False)
            worker.start()
            procs.append(worker)
        if stopping:  # a signal arrived while workers were starting
            stop_all()
        live = {p.sentinel: p for p in procs}
        while live:
            ready = wait(list(live))
            for proc in [q for sentinel, q in live.items() if sentinel in ready]:
                del live[proc.sentinel]
                proc.join()
                if proc.pid is not None:
                    mark_process_dead(proc.pid, metrics_dir)
                if not stopping:
                    log.error("worker exited unexpectedly; stopping the others",
                              extra={"pid": proc.pid, "exitcode": proc.exitcode})
                    stop_all()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0 if all(_stopped_cleanly(p.exitcode, stopping) for p in procs) else EXIT_UNCLEAN


def _stopped_cleanly(exitcode: int | None, stopping: bool) -> bool:
    """0, or killed by the pool's own SIGTERM before the worker had a handler for it.

    A worker installs its SIGTERM handler before it builds the app, so dying of SIGTERM means it
    was still importing (spawn's bootstrap): it never served anything that could be cut short.
    """
    return exitcode == 0 or (stopping and exitcode == -signal.SIGTERM)


def serve_forever(settings: Settings) -> int:
    configure(settings.log_level)
    for sig in (signal.SIGTERM, signal.SIGINT):  # remembered through start-up, honoured before serving
        signal.signal(sig, _remember_stop)
    with database_dsn(settings) as dsn:
        asyncio.run(_migrate(dsn))
        if _stop_requested:
            log.info("stopped before serving")
            return 0
        log.info("serving", extra={"url": f"http://{settings.host}:{settings.port}/",
                                   "workers": settings.workers, "redis": bool(settings.redis_url)})
        if settings.workers == 1:
            return run_worker(settings, dsn, reuse_port=False)
        return _supervise(settings, dsn)
