"""This worker process as the others see it: an id that counts as alive while the process runs.

A keyed request in progress (`rest.framework.idempotency`) names the process running it; a retry
that reaches another process (or this one's successor after a crash) must tell whether that
owner still runs. Each worker holds a PostgreSQL session advisory lock on its random id, over a
connection of its own (asyncpg's pool drops advisory locks when a connection goes back to it).
PostgreSQL releases the lock as soon as that connection ends: at once for a killed process (the
operating system closes its socket), within `KEEPALIVE_S` for a host that vanished (TCP keepalive
on the server's side of that one connection). `gone_sql` asks whether an id's lock is still held.

What it cannot tell: a worker whose own connection dropped (PostgreSQL restarted, the network
failed) looks gone until it holds the lock again (checked every `CHECK_S`); a retry may then run a
request the worker is still running. Keyed handlers allow that (what they create carries an id
derived from the key); the key's lease only keeps it from happening while the owner is known
alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import asyncpg

log = logging.getLogger("greenroom.instance")

# How often the worker checks its connection and, when it dropped, reconnects and locks again.
CHECK_S = 5.0
# PostgreSQL probes the lock's connection after this long idle and drops it after three failed
# probes (KEEPALIVE_S / 3 apart): a vanished host's lock goes within about 2 x KEEPALIVE_S.
KEEPALIVE_S = 10
# Ids are positive bigints (63 bits minus one: the sign bit stays clear), drawn at random.
ID_BITS = 62


def gone_sql(column: str) -> str:
    """SQL that is true when the instance whose id is in `column` (a bigint) holds no lock in this
    database: its process ended, or lost its connection. Use it only with a non-null column."""
    # A one-bigint advisory lock shows its key split in two (classid: high 32 bits, objid: low
    # 32 bits) with objsubid 1.
    return f"""NOT EXISTS (
        SELECT 1 FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND ((l.classid::bigint << 32) | l.objid::bigint) = {column})"""


class Instance:
    """The worker's id and the lock that says it runs; `start` before serving, `close` after."""

    def __init__(self, dsn: str, *, check_s: float = CHECK_S) -> None:
        self.id = secrets.randbits(ID_BITS) + 1
        self._dsn = dsn
        self._check_s = check_s
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def holding(self) -> bool:
        """True while the lock is held (as far as this process knows)."""
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        """Take the lock (raises when PostgreSQL cannot be reached), then keep it."""
        await self._lock()
        self._task = asyncio.create_task(self._keep(), name="instance-lock")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._drop()

    async def _lock(self) -> None:
        conn = await asyncpg.connect(self._dsn, server_settings={
            "application_name": "greenroom instance",
            "tcp_keepalives_idle": str(KEEPALIVE_S), "tcp_keepalives_interval": str(KEEPALIVE_S // 3),
            "tcp_keepalives_count": "3"})
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.id):
                self.id = secrets.randbits(ID_BITS) + 1  # another process drew the same id
        except BaseException:
            await conn.close(timeout=self._check_s)
            raise
        self._conn = conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=self._check_s)  # the session ends: PostgreSQL releases the lock
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                conn.terminate()

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._check_s)
            try:
                if self._conn is not None:
                    async with asyncio.timeout(self._check_s):
                        await self._conn.fetchval("SELECT 1")
                    continue
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                log.warning("the instance lock's connection failed; this worker looks gone until it locks again",
                            exc_info=True)
            await self._drop()
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                async with asyncio.timeout(self._check_s):
                    await self._lock()
                log.info("instance lock held again", extra={"instance": self.id})
