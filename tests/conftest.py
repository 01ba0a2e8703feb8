"""Fixtures: real PostgreSQL (fresh database per test) and real Redis; never mocks of either."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from server.kernel.settings import Settings, load_settings
from tests.support.openapi_check import checking_middleware
from tests.support.services import PostgresForTests, RedisForTests

_redis_dbs = itertools.count(1)

# `backend` (memory | redis) and `socket_client`; the ledger tests' `db`, `clock` and `engine`
pytest_plugins = ("tests.support.socket_support", "tests.support.ledger_support")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresForTests]:
    pg = PostgresForTests()
    asyncio.run(pg.create_template())
    yield pg
    asyncio.run(pg.drop_template())
    pg.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisForTests]:
    server = RedisForTests()
    yield server
    server.close()


@pytest.fixture
async def dsn(postgres: PostgresForTests) -> AsyncIterator[str]:
    """A fresh, migrated database for this test."""
    url = await postgres.fresh_database()
    yield url
    await postgres.drop_database(url)


@pytest.fixture
async def redis_url(redis_server: RedisForTests) -> AsyncIterator[str]:
    """An empty Redis logical database for this test (bundled server); flushed before use."""
    base = redis_server.url.rstrip("/")
    if os.environ.get("REDIS_URL"):
        url = base  # a shared server: tests namespace their keys by room/user ids
    else:
        url = f"{base}/{next(_redis_dbs) % 1024}"
        client = aioredis.from_url(url)
        await client.flushdb()
        await client.aclose()
    yield url


@pytest.fixture
def make_settings(tmp_path: Path, dsn: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"data_dir": tmp_path / "data", "database_url": dsn, "port": 0}
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


# A test app's shutdown takes well under a second; past this, every task's stack goes to stderr
# (shown with the test's report) so that a hang names what it waits for.
SHUTDOWN_WATCHDOG_S = 20.0
# aiohttp's runner waits up to this per step for a request it believes still in flight at shutdown
# (its default, 60 s a step, once outlasted the 120 s test timeout in a CI-like run: the teardown of
# a two-node test waited on no task at all, see the watchdog's dump in the issue notes).
SHUTDOWN_TIMEOUT_S = 5.0


def _awaiting(coro: Any) -> Iterator[str]:
    """Where a suspended coroutine waits, outermost first, down its `await` chain."""
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            yield f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)


def _watch_shutdown(app: web.Application) -> None:
    handle: list[asyncio.TimerHandle] = []

    def dump() -> None:
        print(f"--- app shutdown still running after {SHUTDOWN_WATCHDOG_S}s; tasks:", file=sys.stderr)
        for task in asyncio.all_tasks():
            print(f"task {task.get_name()}:", file=sys.stderr)
            for line in _awaiting(task.get_coro()):
                print("   ", line, file=sys.stderr)

    async def start(_app: web.Application) -> None:
        handle.append(asyncio.get_running_loop().call_later(SHUTDOWN_WATCHDOG_S, dump))

    async def stop(_app: web.Application) -> None:  # after the cleanup contexts (appended later)
        for h in handle:
            h.cancel()

    app.on_shutdown.insert(0, start)
    app.on_cleanup.append(stop)


@pytest.fixture
def make_app(dsn: str) -> Callable[[Settings], web.Application]:
    from server.app.factory import create_app

    def make(settings: Settings) -> web.Application:
        app = create_app(settings, dsn)
        _watch_shutdown(app)
        return app

    return make


@pytest.fixture
def aiohttp_client(aiohttp_client: Any) -> Callable[..., Any]:
    """pytest-aiohttp's factory, whose clients check every answer against the app's OpenAPI document
    (tests/support/openapi_check.py): a route that drifts from the document fails the test."""

    async def go(app_or_server: Any, **kwargs: Any) -> TestClient:
        if isinstance(app_or_server, web.Application):
            kwargs["middlewares"] = (*kwargs.get("middlewares", ()), checking_middleware(app_or_server))
            server = TestServer(app_or_server)
            await server.start_server(shutdown_timeout=SHUTDOWN_TIMEOUT_S)
            app_or_server = server
        client: TestClient = await aiohttp_client(app_or_server, **kwargs)
        return client

    return go


@pytest.fixture
async def client(aiohttp_client: Any, make_app: Callable[[Settings], web.Application],
                 settings: Settings) -> TestClient:
    """A test client of an app on a fresh database, single-node (no Redis)."""
    return await aiohttp_client(make_app(settings))
