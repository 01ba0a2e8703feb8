"""The auth lifecycle: the token service of this worker and its periodic upkeep.

Every `key_cache_refresh_s` a worker rotates the signing key when due, reloads public keys and
access-token revocations, and deletes a bounded batch of expired refresh sessions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from server.accounts.passwords import passwords_for
from server.accounts.sessions import purge_expired
from server.accounts.tokens import TokenService
from server.kernel import keys

log = logging.getLogger("greenroom.auth")


async def _upkeep(tokens: TokenService) -> None:
    settings = tokens.settings
    while True:
        await asyncio.sleep(settings.key_cache_refresh_s)
        try:
            await tokens.maintain()
            await purge_expired(tokens.pool, settings.sessions_purge_batch)
        except Exception:  # a failed pass keeps the cached keys; the next pass retries
            log.warning("auth upkeep failed; keeping cached keys", exc_info=True)


async def auth_context(app: web.Application) -> AsyncIterator[None]:
    """Install the TokenService as `app[AUTH]` (needs the `database` context before it)."""
    settings = app[keys.SETTINGS]
    # Built off the loop: it computes the dummy hash used for unknown-email logins.
    await asyncio.to_thread(passwords_for, settings)
    tokens = TokenService(settings, app[keys.DB])
    await tokens.start()
    app[keys.AUTH] = tokens
    task = asyncio.create_task(_upkeep(tokens), name="auth-upkeep")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await tokens.close()
