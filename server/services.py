"""Resolve the PostgreSQL DSN: `DATABASE_URL` or an embedded server in the data directory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from server.embedded import EmbeddedPostgres, ensure_database
from server.kernel.settings import Settings


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
