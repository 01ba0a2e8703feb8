"""Where migrations are found and in which order: released keys never change, new folders (feature
packages too) come after in declared order, and a file moved or copied between folders stops the
start rather than running again."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest

from server.app import migrator
from server.app.migrator import MigrationError, discover, migrate

# Every migration released so far, in the order it applies. A name here never changes and never
# moves; new migrations may come between (a later file of a listed folder) or after (a new folder).
RELEASED = [
    "server/0001_idempotency.sql",
    "server/0010_users.sql",
    "server/0030_admin_audit.sql",
    "ledger/0001_ledger.sql",
    "ledger/0002_ledger_hot_rows.sql",
    "ledger/0003_ledger_account_guard.sql",
    "ledger/0100_purchases.sql",
    "ledger/0101_payouts.sql",
    "signaling/0010_rooms.sql",
    "signaling/0011_streams.sql",
    "signaling/0012_chat_messages.sql",
    "signaling/0013_moderation_reports.sql",
    "signaling/0100_stream_tips.sql",
]


def package(root: Path, dotted: str, files: dict[str, str]) -> None:
    """A package `dotted` under `root` (every level with an __init__.py) with these migrations."""
    path = root
    for part in dotted.split("."):
        path = path / part
        path.mkdir(exist_ok=True)
        (path / "__init__.py").touch()
    (path / "migrations").mkdir()
    for name, sql in files.items():
        (path / "migrations" / name).write_text(sql)


@pytest.fixture
def features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh top-level package name on sys.path (unique, so no module cache is shared)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"grmig_{uuid.uuid4().hex[:8]}"


def test_released_migrations_keep_their_keys_and_order() -> None:
    names = [m.name for m in discover()]
    assert [n for n in names if n in RELEASED] == RELEASED
    assert len(names) == len(set(names))
    for name in names:
        assert name.split("/", 1)[0] in migrator.PACKAGES


def test_feature_folders_come_after_in_declared_order(tmp_path: Path, features: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    package(tmp_path, f"{features}.features.seats", {"0002_holds.sql": "SELECT 2;", "0001_seats.sql": "SELECT 1;",
                                                      "README": "not a migration"})
    package(tmp_path, f"{features}.features.tickets", {"0001_tickets.sql": "SELECT 3;"})
    released = [m.name for m in discover()]
    seats, tickets = f"{features}.features.seats", f"{features}.features.tickets"

    monkeypatch.setattr(migrator, "PACKAGES", (*migrator.PACKAGES, tickets, seats))
    names = [m.name for m in discover()]
    assert names == [*released, f"{tickets}/0001_tickets.sql", f"{seats}/0001_seats.sql", f"{seats}/0002_holds.sql"]
    assert [m.name for m in discover()] == names  # deterministic

    monkeypatch.setattr(migrator, "PACKAGES", (*migrator.PACKAGES[:-2], seats, tickets))
    assert [m.name for m in discover()] == [
        *released, f"{seats}/0001_seats.sql", f"{seats}/0002_holds.sql", f"{tickets}/0001_tickets.sql"]


def test_an_unknown_or_repeated_package_is_refused(features: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(migrator, "PACKAGES", (*migrator.PACKAGES, f"{features}.features.nope"))
    with pytest.raises(MigrationError, match="not importable"):
        discover()
    monkeypatch.setattr(migrator, "PACKAGES", ("server", "ledger", "server"))
    with pytest.raises(MigrationError, match="twice"):
        discover()


def test_a_file_in_two_folders_is_refused(tmp_path: Path, features: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rooms = (Path(migrator.__file__).parents[2] / "signaling" / "migrations" / "0010_rooms.sql").read_text()
    package(tmp_path, f"{features}.features.rooms", {"0010_rooms.sql": rooms})
    monkeypatch.setattr(migrator, "PACKAGES", (*migrator.PACKAGES, f"{features}.features.rooms"))
    with pytest.raises(MigrationError, match=f"{features}.features.rooms/0010_rooms.sql and signaling/0010_rooms.sql"):
        discover()


async def test_a_new_feature_folder_applies_after_and_once(dsn: str, tmp_path: Path, features: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seats = f"{features}.features.seats"
    package(tmp_path, seats, {"0001_seats.sql": "CREATE TABLE mig_seats (id int PRIMARY KEY);",
                              "0002_holds.sql": "ALTER TABLE mig_seats ADD COLUMN held boolean;"})
    monkeypatch.setattr(migrator, "PACKAGES", (*migrator.PACKAGES, seats))
    conn = await asyncpg.connect(dsn)
    try:
        assert await migrate(conn) == [f"{seats}/0001_seats.sql", f"{seats}/0002_holds.sql"]
        assert await migrate(conn) == []
        names = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY applied_at, name")]
        assert names[-2:] == [f"{seats}/0001_seats.sql", f"{seats}/0002_holds.sql"]
        columns = "SELECT count(*) FROM information_schema.columns WHERE table_name = 'mig_seats'"
        assert await conn.fetchval(columns) == 2
    finally:
        await conn.close()


async def test_a_released_migration_moved_to_another_folder_stops_the_start(
        dsn: str, tmp_path: Path, features: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """signaling's migrations moved into a feature package: same content, new keys. Running them
    again would fail half-way or, worse, succeed; the start stops before applying anything."""
    source = Path(migrator.__file__).parents[2] / "signaling" / "migrations"
    moved = f"{features}.features.rooms"
    package(tmp_path, moved, {f.name: f.read_text() for f in source.glob("*.sql")})
    package(tmp_path, f"{features}.features.seats", {"0001_seats.sql": "CREATE TABLE mig_moved (id int);"})
    declared = [moved if p == "signaling" else p for p in migrator.PACKAGES]
    monkeypatch.setattr(migrator, "PACKAGES", (*declared, f"{features}.features.seats"))
    conn = await asyncpg.connect(dsn)
    try:
        before = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        with pytest.raises(MigrationError, match=f"{moved}/0010_rooms.sql was applied as signaling/0010_rooms.sql"):
            await migrate(conn)
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == before
        assert await conn.fetchval("SELECT to_regclass('mig_moved')") is None  # nothing applied, not even the new one
    finally:
        await conn.close()
