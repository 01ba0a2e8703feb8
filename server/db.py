"""The PostgreSQL pool: JSON via orjson, a statement timeout, one place to create it."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

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
