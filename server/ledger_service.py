"""The ledger's place in a worker's life: one batching engine (own connection) and one sweeper."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from ledger import Engine, Sweeper
from server.kernel import keys
from server.kernel.settings import Settings


def make_engine(settings: Settings, dsn: str) -> Engine:
    return Engine(dsn, batch_max=settings.ledger_batch_max, batch_wait_ms=settings.ledger_batch_wait_ms,
                  queue_max=settings.ledger_queue_max, batch_attempts=settings.ledger_batch_attempts,
                  metadata_max_bytes=settings.ledger_metadata_max_bytes,
                  statement_timeout_ms=settings.db_statement_timeout_ms,
                  close_timeout_s=settings.shutdown_timeout_s)


def ledger_context(dsn: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context: needs `keys.DB` (the sweeper reads due holds on the shared pool)."""

    async def ledger(app: web.Application) -> AsyncIterator[None]:
        settings = app[keys.SETTINGS]
        engine = make_engine(settings, dsn)
        await engine.start()
        sweeper = Sweeper(engine, app[keys.DB], interval_s=settings.ledger_sweep_interval_s,
                          batch_max=settings.ledger_sweep_batch_max)
        sweeper.start()
        app[keys.LEDGER] = engine
        yield
        # Requests have drained by now; the engine applies what is still queued, bounded.
        await sweeper.close()
        await engine.close()

    return ledger
