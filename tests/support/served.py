"""The real app on a fresh database, served on a local port by an event loop in a thread of its own.

For clients that are synchronous (schemathesis sends its cases with `requests`) and for fixtures
shared by a whole test module: `ServedApp.run(coro)` runs a coroutine in the app's loop (to make
users and objects through the domain), `url` is where it listens. Nothing is mocked: the app is
`create_app` with its lifecycle, on PostgreSQL like every other test.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from server.app.factory import create_app
from server.kernel.settings import Settings, load_settings
from tests.support.services import PostgresForTests, free_port

T = TypeVar("T")

# Budgets large enough that a generated sweep meets the routes, not the rate limiter, and password
# hashing cheap enough that register and login examples take milliseconds.
SWEEP_SETTINGS: dict[str, Any] = {
    "rate_auth_per_min": 1_000_000, "rate_payments_per_min": 1_000_000, "rate_tips_per_min": 1_000_000,
    "rate_streaming_per_min": 1_000_000, "rate_general_per_hour": 1_000_000, "rate_anonymous_per_min": 1_000_000,
    "argon2_time_cost": 1, "argon2_memory_kib": 8192, "argon2_parallelism": 1,
}


class ServedApp:
    """`create_app` on a fresh database of `postgres`, listening on 127.0.0.1 from `start()` until `stop()`.

    The loop runs from construction, so `run()` can start helpers (a fake Stripe) before the app."""

    def __init__(self, postgres: PostgresForTests, data_dir: Path) -> None:
        self._postgres = postgres
        self._data_dir = data_dir
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="served-app", daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self.dsn = ""
        self.url = ""
        self.app: web.Application | None = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run `coro` in the app's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self, **overrides: Any) -> ServedApp:
        """Serve the app with these settings (on top of the data dir, the fresh database and a free port)."""
        self.dsn = self.run(self._postgres.fresh_database())
        port = free_port()
        settings = load_settings(data_dir=self._data_dir, database_url=self.dsn, port=port, **overrides)
        self.run(self._serve(settings, port))
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _serve(self, settings: Settings, port: int) -> None:
        self.app = create_app(settings, self.dsn)
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()

    def stop(self) -> None:
        """Stop the app (its lifecycle unwinds), drop its database, end the loop."""
        try:
            if self._runner is not None:
                self.run(self._runner.cleanup())
            if self.dsn:
                self.run(self._postgres.drop_database(self.dsn))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
