"""The wallet's place in a worker's life: the account id cache, the stream tip recorder, Stripe."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ledger.directory import AccountDirectory
from server.commerce.payments import PAYMENTS, StripeGateway
from server.kernel import keys
from signaling.tip_recorder import TIPS, TipRecorder


async def wallet_context(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context; needs `keys.DB`. Torn down before the ledger so queued records land."""
    settings = app[keys.SETTINGS]
    pool = app[keys.DB]
    app[keys.ACCOUNTS] = AccountDirectory(pool, settings.ledger_account_cache_max)
    recorder = TipRecorder(pool, batch_max=settings.tip_record_batch_max, wait_ms=settings.tip_record_wait_ms,
                           queue_max=settings.tip_record_queue_max, top_n=settings.tip_top_tippers)
    recorder.start()
    app[TIPS] = recorder
    gateway = StripeGateway(settings)
    app[PAYMENTS] = gateway
    try:
        yield
    finally:
        await recorder.close()
        await gateway.close()
