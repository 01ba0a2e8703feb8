"""The wallet's place in a worker's life: the account id cache, the stream tip recorder, Stripe."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ledger.directory import AccountDirectory
from server import appkeys
from server.payments import StripeGateway
from signaling.tip_recorder import TipRecorder


async def wallet_context(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context; needs `appkeys.DB`. Torn down before the ledger so queued records land."""
    settings = app[appkeys.SETTINGS]
    pool = app[appkeys.DB]
    app[appkeys.ACCOUNTS] = AccountDirectory(pool, settings.ledger_account_cache_max)
    recorder = TipRecorder(pool, batch_max=settings.tip_record_batch_max, wait_ms=settings.tip_record_wait_ms,
                           queue_max=settings.tip_record_queue_max, top_n=settings.tip_top_tippers)
    recorder.start()
    app[appkeys.TIPS] = recorder
    gateway = StripeGateway(settings)
    app[appkeys.PAYMENTS] = gateway
    try:
        yield
    finally:
        await recorder.close()
        await gateway.close()
