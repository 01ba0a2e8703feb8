"""The audit's stream side: stream totals, top-tipper totals and tip records against the ledger,
through `greenroom audit` (a real process) and `GET /v1/admin/ledger/audit`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from ledger import Result
from ledger.flows.tips import transfer_tip
from server.commerce import keys as money
from server.kernel import keys
from server.kernel.settings import Settings
from tests.support.factories import TestUser, make_user
from tests.support.ops_support import ROOT
from tests.support.rooms_support import new_stream
from tests.support.wallet_support import fund

TIP_CHECKS = {"stream_tips_in_ledger", "ledger_stream_tips_recorded", "stream_totals_match_tips",
              "stream_tippers_match_tips"}


async def cli_audit(dsn: str, **env: str) -> tuple[int, str]:
    """`python -m server.cli audit` against the test's database; (exit code, output)."""
    full = {**os.environ, "DATABASE_URL": dsn, **env}
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "server.cli", "audit"], cwd=ROOT,
                                   env=full, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout + proc.stderr


async def admin_audit(client: TestClient, admin: TestUser) -> dict[str, Any]:
    resp = await client.get("/v1/admin/ledger/audit", headers=admin.headers)
    assert resp.status == 200, await resp.text()
    data: dict[str, Any] = (await resp.json())["data"]
    return data


def failed(report: dict[str, Any]) -> dict[str, list[str]]:
    return {c["name"]: c["offending"] for c in report["checks"] if not c["ok"]}


async def _stream_with_tips(client: TestClient) -> tuple[dict[str, Any], TestUser, list[TestUser]]:
    app = client.app
    host = await make_user(app, role="performer")
    fans = [await make_user(app), await make_user(app)]
    stream = await new_stream(client, host)
    assert (await client.post(f"/v1/streams/{stream['id']}/start", headers=host.headers)).status == 200
    for fan, amounts in zip(fans, ([30, 20], [7]), strict=True):
        await fund(app, fan.id, 100)
        for amount in amounts:
            resp = await client.post("/v1/wallet/transfer", headers=fan.headers, json={
                "to_user_id": str(host.id), "stream_id": stream["id"], "amount": amount})
            assert resp.status == 201, await resp.text()
    # A tip outside any stream has no stream record, and needs none.
    resp = await client.post("/v1/wallet/transfer", headers=fans[0].headers,
                             json={"to_user_id": str(host.id), "amount": 5})
    assert resp.status == 201
    return stream, host, fans


async def test_audit_checks_stream_totals_against_the_ledger(aiohttp_client: Any, dsn: str,
                                                             make_app: Callable[[Settings], web.Application],
                                                             make_settings: Callable[..., Settings]) -> None:
    client = await aiohttp_client(make_app(make_settings(tip_audit_settle_s=0)))
    app, db = client.app, client.app[keys.DB]
    admin = await make_user(app, role="admin")
    stream, _, fans = await _stream_with_tips(client)
    assert await db.fetchval("SELECT total_tokens_received FROM streams WHERE id = $1", uuid.UUID(stream["id"])) == 57
    report = await admin_audit(client, admin)
    assert report["ok"] is True, report
    assert {c["name"] for c in report["checks"]} >= TIP_CHECKS
    code, out = await cli_audit(dsn, GREENROOM_TIP_AUDIT_SETTLE_S="0")
    assert code == 0, out
    assert "ok    stream_totals_match_tips" in out
    # A stream's total edited behind the recorder's back: both name the stream.
    await db.execute("UPDATE streams SET total_tokens_received = total_tokens_received + 13 WHERE id = $1",
                     uuid.UUID(stream["id"]))
    report = await admin_audit(client, admin)
    assert report["ok"] is False and failed(report) == {"stream_totals_match_tips": [stream["id"]]}
    code, out = await cli_audit(dsn, GREENROOM_TIP_AUDIT_SETTLE_S="0")
    assert code == 1, out
    assert "FAIL  stream_totals_match_tips" in out and stream["id"] in out
    # And a tipper's total.
    await db.execute("UPDATE streams SET total_tokens_received = total_tokens_received - 13 WHERE id = $1",
                     uuid.UUID(stream["id"]))
    await db.execute("UPDATE stream_tippers SET total = total + 1 WHERE user_id = $1", fans[1].id)
    assert failed(await admin_audit(client, admin)) == {"stream_tippers_match_tips": [stream["id"]]}
    code, out = await cli_audit(dsn, GREENROOM_TIP_AUDIT_SETTLE_S="0")
    assert code == 1 and "FAIL  stream_tippers_match_tips" in out and stream["id"] in out, out


async def test_audit_finds_tip_records_the_ledger_does_not_back(aiohttp_client: Any, dsn: str,
                                                                 make_app: Callable[[Settings], web.Application],
                                                                 make_settings: Callable[..., Settings]) -> None:
    client = await aiohttp_client(make_app(make_settings(tip_audit_settle_s=0)))
    app, db = client.app, client.app[keys.DB]
    admin = await make_user(app, role="admin")
    stream, host, fans = await _stream_with_tips(client)
    # A record whose amount differs from the ledger's, and a record with no ledger tip at all.
    changed = await db.fetchval("SELECT tip_id FROM stream_tips WHERE amount = 7")
    await db.execute("UPDATE stream_tips SET amount = 8 WHERE tip_id = $1", changed)
    forged = uuid.uuid4()
    await db.execute("INSERT INTO stream_tips (tip_id, stream_id, from_user_id, to_user_id, amount, fee) "
                     "VALUES ($1, $2, $3, $4, 1, 0)", forged, uuid.UUID(stream["id"]), fans[0].id, host.id)
    found = failed(await admin_audit(client, admin))
    assert found["stream_tips_in_ledger"] == sorted([str(changed), str(forged)])
    code, out = await cli_audit(dsn, GREENROOM_TIP_AUDIT_SETTLE_S="0")
    assert code == 1 and str(forged) in out and str(changed) in out, out


async def test_audit_reports_a_tip_applied_but_not_recorded(aiohttp_client: Any, dsn: str,
                                                            make_app: Callable[[Settings], web.Application],
                                                            make_settings: Callable[..., Settings]) -> None:
    """The process died between the ledger commit and the stream record, and the client never
    retried: the money moved, the stream does not show it. The audit names the tip for repair."""
    client = await aiohttp_client(make_app(make_settings(tip_audit_settle_s=0)))
    app = client.app
    admin = await make_user(app, role="admin")
    stream, host, fans = await _stream_with_tips(client)
    tip_id = uuid.uuid4()
    outcome = await transfer_tip(app[money.LEDGER], app[money.ACCOUNTS], tip_id=tip_id, sender=fans[0].id,
                                 recipient=host.id, amount=9, fee_bps=app[keys.SETTINGS].tip_fee_bps,
                                 metadata={"stream": stream["id"]})
    assert outcome.result is Result.OK
    assert failed(await admin_audit(client, admin)) == {"ledger_stream_tips_recorded": [str(tip_id)]}
    code, out = await cli_audit(dsn, GREENROOM_TIP_AUDIT_SETTLE_S="0")
    assert code == 1 and "tip applied but not recorded" in out and str(tip_id) in out, out
    # A tip that young is still expected to be recorded (by the request or its retry): not a finding.
    code, out = await cli_audit(dsn, GREENROOM_TIP_AUDIT_SETTLE_S="600")
    assert code == 0, out
    # The client's retry with the same id records it; the audit is clean again.
    resp = await client.post("/v1/wallet/transfer", headers=fans[0].headers, json={
        "id": str(tip_id), "to_user_id": str(host.id), "stream_id": stream["id"], "amount": 9})
    assert resp.status == 200 and (await resp.json())["data"]["replayed"] is True
    assert (await admin_audit(client, admin))["ok"] is True
