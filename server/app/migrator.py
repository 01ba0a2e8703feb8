"""Ordered SQL migrations, applied at start and by `greenroom migrate`.

Each package in `PACKAGES` may keep its own `migrations/NNNN_name.sql`; packages apply in
`PACKAGES` order, files in name order. A migration's key is `<package>/<file>`
(`signaling/0010_rooms.sql`, `signaling.features.seats/0001_seats.sql`), recorded in
`schema_migrations`. A PostgreSQL advisory lock makes concurrent starts (several workers, several
nodes) safe: one applies, the others wait and then find nothing left to do.

A released migration is never edited (a changed checksum stops the start) and never moves: a
pending migration with the content of one applied under another key, or the same content in two
folders, stops the start too, rather than running it a second time.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources

import asyncpg

# Where migrations live, in the order they apply. Released folders keep their place; a new folder
# (a root package, or a feature package such as "signaling.features.seats") is appended after
# them, so every released key and the order of what is already applied stay as they are.
PACKAGES: tuple[str, ...] = ("server", "ledger", "signaling", "sfu_bridge", "rest")
LOCK_ID = 0x6772_6565_6E72  # "greenr": any constant shared by every process of this app

log = logging.getLogger("greenroom.migrate")


class MigrationError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Migration:
    name: str  # "package/0001_x.sql"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover() -> list[Migration]:
    """Every migration of `PACKAGES`, in order; refuses an unknown package and a file in two folders."""
    if len(set(PACKAGES)) != len(PACKAGES):
        raise MigrationError(f"PACKAGES names a package twice: {PACKAGES}")
    found: list[Migration] = []
    for package in PACKAGES:
        try:
            folder = resources.files(package).joinpath("migrations")
        except ModuleNotFoundError as e:
            raise MigrationError(f"PACKAGES names {package!r}, which is not importable") from e
        if not folder.is_dir():
            continue
        files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
        found.extend(Migration(f"{package}/{f.name}", f.read_text()) for f in files)
    first: dict[str, str] = {}
    for m in found:
        other = first.setdefault(m.checksum, m.name)
        if other != m.name:
            raise MigrationError(f"{m.name} and {other} have the same content: one migration in two folders")
    return found


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing; return the names applied by this call."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   name text PRIMARY KEY, checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())""")
        done = {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}
        applied_as = {checksum: name for name, checksum in done.items()}
        pending: list[Migration] = []
        for m in discover():
            if m.name in done:
                if done[m.name] != m.checksum:
                    raise MigrationError(f"released migration {m.name} was edited; add a new one instead")
            elif m.checksum in applied_as:
                raise MigrationError(f"{m.name} was applied as {applied_as[m.checksum]}: a released migration "
                                     "moved; move it back (a key never changes)")
            else:
                pending.append(m)
        for m in pending:
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute("INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                                   m.name, m.checksum)
            log.info("migration applied", extra={"migration": m.name})
            applied.append(m.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
    return applied
