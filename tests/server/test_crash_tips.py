"""A real server killed with SIGKILL in the middle of a keyed tip storm, restarted on the same
database, every request retried with its Idempotency-Key until it gets a final answer: each tip is
applied once (ledger, wallets), the stream's total is right, and `greenroom audit` is clean.

Before keys in progress had leases, the requests the kill cut short got 409 CONFLICT on every
retry for 24 h (and tips the ledger had applied never got their stream record)."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from ledger.flows.tips import leg_ids, split
from ledger.ids import derived_id
from tests.support.openapi_check import served_document_middleware
from tests.support.ops_support import ROOT, ServerProcess

pytestmark = pytest.mark.slow

VIEWERS = 6
TIPS_PER_VIEWER = 40
IN_FLIGHT = 24  # requests on the wire at once: the kill cuts many of them short
KILL_AFTER = 60  # final answers before the kill
FUNDS = 100_000
FEE_BPS = 2000  # the default tip_fee_bps
DEADLINE_S = 45.0  # the whole storm, kill and retries included
PASSWORD = "Correct-Horse-Battery-9"
TAKEN_OVER = "idempotency key taken over"


@dataclass
class Viewer:
    id: uuid.UUID
    token: str


@dataclass
class Tip:
    viewer: Viewer
    key: str
    amount: int
    answer: dict[str, Any] | None = None
    cut_short: bool = False  # an attempt lost its connection (the kill, or the server being down)

    @property
    def id(self) -> uuid.UUID:
        return derived_id("tip", self.viewer.id, self.key)  # what `idempotent_id` derives from the key


class Target:
    """Where the server listens now: the restarted one has another port."""

    def __init__(self, url: str) -> None:
        self.url = url


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _json(resp: aiohttp.ClientResponse, status: int) -> Any:
    body = await resp.json()
    assert resp.status == status, body
    return body["data"]


async def _register(http: aiohttp.ClientSession, base: str, email: str, role: str) -> Viewer:
    async with http.post(f"{base}/v1/auth/register", json={
            "email": email, "password": PASSWORD, "display_name": email.split("@")[0], "role": role}) as resp:
        data = await _json(resp, 201)
    return Viewer(uuid.UUID(data["user"]["id"]), data["access_token"])


async def _send_until_final(http: aiohttp.ClientSession, target: Target, tip: Tip, performer: Viewer,
                            stream_id: str, deadline: float) -> None:
    """POST the tip with its key until a final answer; another attempt after a lost connection, a
    key in progress elsewhere (409 with Retry-After) or a busy server (503)."""
    body = {"to_user_id": str(performer.id), "amount": tip.amount, "message": f"tip {tip.key}",
            "stream_id": stream_id}
    headers = {**_auth(tip.viewer.token), "Idempotency-Key": tip.key}
    while True:
        assert time.monotonic() < deadline, f"{tip.key}: no final answer in time"
        try:
            async with http.post(f"{target.url}/v1/wallet/transfer", json=body, headers=headers) as resp:
                got = await resp.json()
                if resp.status in (200, 201):
                    tip.answer = got["data"]
                    return
                in_progress = resp.status == 409 and "Retry-After" in resp.headers
                assert in_progress or resp.status == 503, f"{tip.key}: {resp.status} {got}"
                await asyncio.sleep(min(float(resp.headers.get("Retry-After", "0.1")), 1.0))
        except (TimeoutError, aiohttp.ClientConnectionError):
            tip.cut_short = True
            await asyncio.sleep(0.05)


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    """`python -m server.cli <args>` as a real process; its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", *args, cwd=ROOT, env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_a_server_killed_in_a_keyed_tip_storm_applies_each_tip_once(tmp_path: Path, dsn: str) -> None:
    env = {"DATABASE_URL": dsn, "GREENROOM_DATA_DIR": str(tmp_path / "data"),
           "GREENROOM_RATE_TIPS_PER_MIN": "100000", "GREENROOM_RATE_AUTH_PER_MIN": "1000",
           "GREENROOM_ARGON2_TIME_COST": "1", "GREENROOM_ARGON2_MEMORY_KIB": "8192"}
    drop = ("REDIS_URL",)  # one node: room events fan out in process
    first = ServerProcess(env, drop=drop, log_path=tmp_path / "first.log")
    second: ServerProcess | None = None
    try:
        await asyncio.to_thread(first.wait_ready)
        code, out = await _cli(env, "users", "create", "--email", "admin@example.test", "--password", PASSWORD,
                               "--role", "admin")
        assert code == 0, out
        async with aiohttp.ClientSession(middlewares=(served_document_middleware(),)) as http:
            base = first.url
            async with http.post(f"{base}/v1/auth/login", json={"email": "admin@example.test",
                                                                 "password": PASSWORD}) as resp:
                admin_token = (await _json(resp, 200))["access_token"]
            performer = await _register(http, base, "host@example.test", "performer")
            viewers = [await _register(http, base, f"fan{i}@example.test", "viewer") for i in range(VIEWERS)]
            for v in viewers:
                async with http.post(f"{base}/v1/admin/wallet/adjust", json={
                        "user_id": str(v.id), "amount": FUNDS, "reason": "storm funds"},
                        headers=_auth(admin_token)) as resp:
                    await _json(resp, 200)
            async with http.post(f"{base}/v1/streams", json={"title": "Storm"}, headers=_auth(performer.token)) as resp:
                stream_id = (await _json(resp, 201))["id"]
            async with http.post(f"{base}/v1/streams/{stream_id}/start", headers=_auth(performer.token)) as resp:
                await _json(resp, 200)

            rng = random.Random(7)
            tips = [Tip(v, f"storm-{i}-{n}", rng.randint(1, 500)) for n in range(TIPS_PER_VIEWER)
                    for i, v in enumerate(viewers)]
            target = Target(base)
            deadline = time.monotonic() + DEADLINE_S
            gate = asyncio.Semaphore(IN_FLIGHT)

            async def send(tip: Tip) -> None:
                async with gate:
                    await _send_until_final(http, target, tip, performer, stream_id, deadline)

            storm = [asyncio.create_task(send(t)) for t in tips]
            while sum(t.answer is not None for t in tips) < KILL_AFTER:
                assert time.monotonic() < deadline and not any(s.done() and s.exception() for s in storm)
                await asyncio.sleep(0.002)
            first.kill()  # SIGKILL to the server's process group, mid-storm
            db = await asyncpg.connect(dsn)
            try:
                # Statements the dead server had already sent may still commit: count once its sessions ended.
                gone_by = time.monotonic() + 10
                while await db.fetchval("SELECT count(*) FROM pg_stat_activity "
                                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"):
                    assert time.monotonic() < gone_by, "the killed server's sessions never ended"
                    await asyncio.sleep(0.02)
                orphaned = await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE status IS NULL")
                second = ServerProcess(env, drop=drop, log_path=tmp_path / "second.log")
                await asyncio.to_thread(second.wait_ready)
                target.url = second.url
                await asyncio.gather(*storm)

                # Every key got its final answer: the tip it names, applied.
                for t in tips:
                    assert t.answer is not None
                    assert (t.answer["id"], t.answer["amount"]) == (str(t.id), t.amount), t.key
                cut_short = [t for t in tips if t.cut_short]
                assert orphaned > 0 and cut_short, "the kill left no request in progress: nothing was tested"
                assert second.output().count(TAKEN_OVER) == orphaned, "each orphaned key was taken over once"
                assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE status IS NULL") == 0

                # The ledger: each tip's legs once, and no other tip.
                share_ids = [leg_ids(t.id)[0] for t in tips]
                stored = await db.fetch("SELECT id, amount FROM ledger_transfers WHERE id = ANY($1::uuid[])",
                                        share_ids)
                assert {r["id"]: r["amount"] for r in stored} == {
                    leg_ids(t.id)[0]: split(t.amount, FEE_BPS).share for t in tips}
                assert await db.fetchval("SELECT count(*) FROM ledger_transfers WHERE code = 'tip'") == len(tips)
                # The stream: one record per tip, and its total is their gross amounts (recorder.py).
                assert await db.fetchval("SELECT count(*) FROM stream_tips WHERE stream_id = $1",
                                         uuid.UUID(stream_id)) == len(tips)
            finally:
                await db.close()
            async with http.get(f"{second.url}/v1/streams/{stream_id}") as resp:
                assert (await _json(resp, 200))["total_tokens_received"] == sum(t.amount for t in tips)
            for v in viewers:
                async with http.get(f"{second.url}/v1/wallet/balance", headers=_auth(v.token)) as resp:
                    spent = sum(t.amount for t in tips if t.viewer is v)
                    assert (await _json(resp, 200))["token_balance"] == FUNDS - spent
            async with http.get(f"{second.url}/v1/wallet/balance", headers=_auth(performer.token)) as resp:
                earned = sum(split(t.amount, FEE_BPS).share for t in tips)
                assert (await _json(resp, 200))["earnings"]["available"] == earned

        # The audit process: ledger invariants, and every stream tip record and total against the
        # ledger, with no tip young enough to be excused.
        code, report = await _cli({**env, "GREENROOM_TIP_AUDIT_SETTLE_S": "0"}, "audit")
        assert code == 0, report
    except BaseException:
        print(first.output()[-20_000:])
        if second is not None:
            print(second.output()[-20_000:])
        raise
    finally:
        first.kill()
        if second is not None:
            second.kill()
