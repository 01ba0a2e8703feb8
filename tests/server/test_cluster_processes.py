"""Two real server processes sharing PostgreSQL and Redis: one ordered stream, shared presence,
and a node killed with SIGKILL whose clients resume on the other node without loss."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.openapi_check import served_document_middleware
from tests.support.ops_support import ServerProcess

pytestmark = pytest.mark.slow
PRESENCE_TTL_S = 2.0
_refs = itertools.count(1)


class Socket:
    """A bare websocket session: send an op, await its reply, collect the room's events."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    async def op(self, op: str, room: str | None = None, **data: Any) -> dict[str, Any]:
        ref = next(_refs)
        await self.ws.send_json({"op": op, "ref": ref, "room": room, "data": data})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), timeout=15)
            if msg["op"] == "reply" and msg["ref"] == ref:
                assert msg["ok"], msg
                result: dict[str, Any] = msg["data"]
                return result
            if msg["op"] == "event" and "offset" in msg:
                self.events.append(msg)

    async def chats_until(self, count: int) -> list[dict[str, Any]]:
        """Read until `count` chat events arrived (bounded by the timeout)."""
        while sum(e["type"] == "chat.message" for e in self.events) < count:
            msg = await asyncio.wait_for(self.ws.receive_json(), timeout=15)
            if msg["op"] == "event" and "offset" in msg:
                self.events.append(msg)
        return [e for e in self.events if e["type"] == "chat.message"]


async def register(http: aiohttp.ClientSession, base: str, email: str, role: str) -> str:
    async with http.post(f"{base}/v1/auth/register", json={
            "email": email, "password": "Correct-Horse-Battery-9", "display_name": email.split("@")[0],
            "role": role}) as resp:
        assert resp.status == 201, await resp.text()
        token: str = (await resp.json())["data"]["access_token"]
        return token


async def connect(http: aiohttp.ClientSession, base: str, token: str) -> Socket:
    ws = await http.ws_connect(base.replace("http", "ws") + f"/ws?token={token}")
    return Socket(ws)


async def viewer_count(http: aiohttp.ClientSession, base: str, stream_id: str) -> int:
    async with http.get(f"{base}/v1/streams/{stream_id}/viewers") as resp:
        assert resp.status == 200, await resp.text()
        count: int = (await resp.json())["data"]["viewer_count"]
        return count


async def count_becomes(http: aiohttp.ClientSession, base: str, stream_id: str, want: int,
                        within_s: float) -> int:
    deadline = time.monotonic() + within_s
    while True:
        seen = await viewer_count(http, base, stream_id)
        if seen == want or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.2)


async def test_two_processes_one_stream_presence_and_failover(tmp_path: Path, dsn: str, redis_url: str) -> None:
    env = {"DATABASE_URL": dsn, "REDIS_URL": redis_url, "GREENROOM_DATA_DIR": str(tmp_path / "data"),
           "GREENROOM_PRESENCE_TTL_S": str(PRESENCE_TTL_S), "GREENROOM_CHAT_RATE_PER_10S": "100",
           "GREENROOM_VIEWER_COUNT_INTERVAL_S": "0.2"}
    a = ServerProcess(env, log_path=tmp_path / "a.log")
    b = ServerProcess(env, log_path=tmp_path / "b.log")
    try:
        a.wait_ready()
        b.wait_ready()
        async with aiohttp.ClientSession(middlewares=(served_document_middleware(),)) as http:
            performer = await register(http, a.url, "host@example.test", "performer")
            alice = await register(http, a.url, "alice@example.test", "viewer")
            bob = await register(http, b.url, "bob@example.test", "viewer")
            auth = {"Authorization": f"Bearer {performer}"}
            async with http.post(f"{a.url}/v1/streams", json={"title": "Two nodes"}, headers=auth) as resp:
                assert resp.status == 201, await resp.text()
                stream_id = (await resp.json())["data"]["id"]
            async with http.post(f"{b.url}/v1/streams/{stream_id}/start", headers=auth) as resp:
                assert resp.status == 200, await resp.text()
            room = f"stream:{stream_id}"

            host_a, host_b = await connect(http, a.url, performer), await connect(http, b.url, performer)
            viewer_a, viewer_b = await connect(http, a.url, alice), await connect(http, b.url, bob)
            joins = [await sock.op("join", room) for sock in (host_a, host_b, viewer_a, viewer_b)]
            assert len({j["epoch"] for j in joins}) == 1  # one stream, whichever node answers

            # Both nodes publish, interleaved: every member on either node sees one ordered stream.
            for i in range(10):
                await (host_a if i % 2 == 0 else host_b).op("chat.send", room, text=f"m{i}")
            seen_a = await viewer_a.chats_until(10)
            seen_b = await viewer_b.chats_until(10)
            assert [e["data"]["text"] for e in seen_a] == [f"m{i}" for i in range(10)]
            assert [(e["offset"], e["data"]["id"]) for e in seen_a] == [(e["offset"], e["data"]["id"])
                                                                        for e in seen_b]
            offsets = [e["offset"] for e in seen_a]
            assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)

            # Presence spans the nodes: both answer the same count (host, alice, bob).
            assert await count_becomes(http, a.url, stream_id, 3, 5) == 3
            assert await count_becomes(http, b.url, stream_id, 3, 5) == 3

            # Node A dies without a goodbye; alice's last position is what her client kept.
            last = max(e["offset"] for e in viewer_a.events)
            a.signal(signal.SIGKILL)
            assert a.wait_exit(10) == -signal.SIGKILL
            for i in range(10, 15):
                await host_b.op("chat.send", room, text=f"m{i}")

            # Alice reconnects to node B and resumes: exactly the missed messages, in order.
            alice_b = await connect(http, b.url, alice)
            resumed = await alice_b.op("join", room, since={"epoch": joins[2]["epoch"], "offset": last})
            assert resumed["recovered"] is True
            missed = [e for e in resumed["events"] if e["type"] == "chat.message"]
            assert [e["data"]["text"] for e in missed] == [f"m{i}" for i in range(10, 15)]
            assert all(e["offset"] > last for e in resumed["events"])
            assert [e["offset"] for e in resumed["events"]] == list(range(last + 1, resumed["offset"] + 1))

            # A's presence entries expire with its heartbeat: alice is back via B, so still 3.
            assert await count_becomes(http, b.url, stream_id, 3, PRESENCE_TTL_S * 3) == 3
            await alice_b.ws.close()
            assert await count_becomes(http, b.url, stream_id, 2, PRESENCE_TTL_S * 3) == 2
    finally:
        a.kill()
        b.kill()


async def user_id(http: aiohttp.ClientSession, base: str, token: str) -> str:
    async with http.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200, await resp.text()
        uid: str = (await resp.json())["data"]["id"]
        return uid


async def joined(sock: Socket, room: str) -> bool:
    """Whether the socket is still in the room (a `presence` op answers NOT_JOINED otherwise)."""
    ref = next(_refs)
    await sock.ws.send_json({"op": "presence", "ref": ref, "room": room, "data": {}})
    while True:
        msg = await asyncio.wait_for(sock.ws.receive_json(), timeout=15)
        if msg["op"] == "reply" and msg["ref"] == ref:
            if not msg["ok"]:
                assert msg["error"]["code"] == "NOT_JOINED", msg
            return bool(msg["ok"])


async def test_control_actions_cross_processes(tmp_path: Path, dsn: str, redis_url: str) -> None:
    """A kick on node A and an access change on node B remove sockets held by the other node."""
    env = {"DATABASE_URL": dsn, "REDIS_URL": redis_url, "GREENROOM_DATA_DIR": str(tmp_path / "data")}
    a = ServerProcess(env, log_path=tmp_path / "a.log")
    b = ServerProcess(env, log_path=tmp_path / "b.log")
    try:
        a.wait_ready()
        b.wait_ready()
        async with aiohttp.ClientSession() as http:
            performer = await register(http, a.url, "host@example.test", "performer")
            alice = await register(http, a.url, "alice@example.test", "viewer")
            bob = await register(http, b.url, "bob@example.test", "viewer")
            auth = {"Authorization": f"Bearer {performer}"}
            async with http.post(f"{a.url}/v1/streams", json={"title": "Control"}, headers=auth) as resp:
                assert resp.status == 201, await resp.text()
                stream_id = (await resp.json())["data"]["id"]
            room = f"stream:{stream_id}"
            host_a = await connect(http, a.url, performer)
            alice_a, bob_b = await connect(http, a.url, alice), await connect(http, b.url, bob)
            for sock in (host_a, alice_a, bob_b):
                await sock.op("join", room)

            # The host kicks Bob over node A's socket; Bob's socket lives on node B.
            await host_a.op("room.kick", room, user_id=await user_id(http, a.url, bob))
            deadline = time.monotonic() + 5
            while await joined(bob_b, room):
                assert time.monotonic() < deadline, "the kick never reached node B"
                await asyncio.sleep(0.05)
            assert not bob_b.ws.closed and await bob_b.op("ping") is not None  # only the room was left

            # The stream turns private through node B's REST API; Alice, on node A, is removed.
            async with http.patch(f"{b.url}/v1/streams/{stream_id}", json={"access": "private"},
                                  headers=auth) as resp:
                assert resp.status == 200, await resp.text()
            deadline = time.monotonic() + 5
            while await joined(alice_a, room):
                assert time.monotonic() < deadline, "the access change never reached node A"
                await asyncio.sleep(0.05)
            assert await joined(host_a, room)  # the host is admitted by any rule
    finally:
        a.kill()
        b.kill()
