"""`greenroom demo` seeds logins, a live stream, a ticketed show and wallets, and is safe to rerun."""

from __future__ import annotations

import asyncpg
import pytest

from ledger.accounts import accounts_of, balances
from server.cli import main
from server.cli.demo import GRANT_TOKENS, PASSWORD, USERS, run_seed
from server.kernel.settings import Settings


async def test_seed_is_complete_and_idempotent(settings: Settings, dsn: str) -> None:
    first = await run_seed(settings, dsn)
    second = await run_seed(settings, dsn)
    assert first == second
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM users") == len(USERS)
        live = await conn.fetch("SELECT id, status FROM streams")
        assert [r["status"] for r in live] == ["live"]
        viewer = await conn.fetchval("SELECT id FROM users WHERE email = $1", USERS[2].email)
        assert await conn.fetchval("SELECT count(*) FROM room_grants WHERE room = $1 AND user_id = $2",
                                   first["show_room"], viewer) == 1
        [wallet] = await accounts_of(conn, viewer)
        balance = await balances(conn, wallet.id)
        assert balance is not None and balance.available == GRANT_TOKENS  # granted once, not twice
    finally:
        await conn.close()


async def test_demo_logins_work(settings: Settings, dsn: str, aiohttp_client, make_app) -> None:  # type: ignore[no-untyped-def]
    await run_seed(settings, dsn)
    client = await aiohttp_client(make_app(settings))
    for user in USERS:
        resp = await client.post("/v1/auth/login", json={"email": user.email, "password": PASSWORD})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["data"]["user"]["role"] == user.role


def test_demo_command_prints_logins(dsn: str, tmp_path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("GREENROOM_DATA_DIR", str(tmp_path))
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert all(u.email in out for u in USERS)
    assert PASSWORD in out
