"""PostgreSQL: which server (DATABASE_URL or an embedded one), and the pool (JSON via orjson, a statement timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import orjson

from server.app.embedded_postgres import EmbeddedPostgres, ensure_database
from server.kernel.settings import Settings


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(typ, schema="pg_catalog", encoder=lambda v: orjson.dumps(v).decode(),
                                  decoder=orjson.loads, format="text")


async def create_pool(dsn: str, settings: Settings, **overrides: Any) -> asyncpg.Pool:
    options: dict[str, Any] = {
        "min_size": settings.db_pool_min,
        "max_size": settings.db_pool_max,
        "init": _init_connection,
        "server_settings": {
            "statement_timeout": str(settings.db_statement_timeout_ms),
            "application_name": "greenroom",
        },
    }
    options.update(overrides)
    pool = await asyncpg.create_pool(dsn, **options)
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


@contextmanager
def database_dsn(settings: Settings) -> Iterator[str]:
    """Yield a DSN for the app database; an embedded server lives as long as the block."""
    if settings.database_url:
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.data_dir)
    admin_uri = embedded.start()
    try:
        yield asyncio.run(ensure_database(admin_uri))
    finally:
        embedded.stop()
