"""Fixtures: real PostgreSQL (fresh database per test) and real Redis; never mocks of either."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from server.settings import Settings, load_settings
from tests.services import PostgresForTests, RedisForTests

_redis_dbs = itertools.count(1)

# `backend` (memory | redis) and `socket_client`; the ledger tests' `db`, `clock` and `engine`
pytest_plugins = ("tests.socket_support", "tests.ledger_support")


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


@pytest.fixture
def make_app(dsn: str) -> Callable[[Settings], web.Application]:
    from server.app import create_app

    def make(settings: Settings) -> web.Application:
        return create_app(settings, dsn)

    return make


@pytest.fixture
async def client(aiohttp_client: Any, make_app: Callable[[Settings], web.Application],
                 settings: Settings) -> TestClient:
    """A test client of an app on a fresh database, single-node (no Redis)."""
    return await aiohttp_client(make_app(settings))
