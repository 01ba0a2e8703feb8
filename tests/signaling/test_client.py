"""The Python socket client against a scripted room server that can misbehave on cue.

The scripted server speaks the room-socket protocol (DESIGN.md) with an in-memory event stream per
room, and lets a test drop connections, skip live events, replay duplicates and change the epoch:
the failures the client must survive, on demand. The client against the real server is tested in
test_client_live.py.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer

from signaling.client import (
    REJOIN_FAILED,
    REJOINED,
    ClientError,
    Event,
    GreenroomClient,
    ReconnectPolicy,
    token_expiry,
)
from tests.support.client_support import Room, ScriptedServer

FAST = ReconnectPolicy(base_delay_s=0.01, max_delay_s=0.05, max_attempts=5)


@pytest.fixture
async def server() -> AsyncIterator[tuple[ScriptedServer, str]]:
    scripted = ScriptedServer()
    test_server = TestServer(scripted.app)
    await test_server.start_server()
    yield scripted, str(test_server.make_url("/ws"))
    await test_server.close()


async def collect(client: GreenroomClient, n: int, wait_s: float = 5.0) -> list[Event]:
    out: list[Event] = []

    async def run() -> None:
        async for event in client.events():
            out.append(event)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), wait_s)
    return out


def jwt_with_exp(exp: float) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part({'exp': exp, 'sub': 'u1'})}.sig"


def offsets(events: list[Event]) -> list[int]:
    return [e.offset for e in events if e.offset]


async def test_concurrent_requests_are_matched_by_ref(server: tuple[ScriptedServer, str]) -> None:
    _, url = server
    async with GreenroomClient(url, token="good") as client:
        # The slow one is answered last; each caller must still get its own reply.
        results = await asyncio.gather(*(client.request("echo", n=i, delay=0.05 if i == 0 else 0) for i in range(20)))
        assert [r["n"] for r in results] == list(range(20))
        assert client.identity == {"user_id": "u1"}


async def test_error_reply_raises_client_error_with_code(server: tuple[ScriptedServer, str]) -> None:
    _, url = server
    async with GreenroomClient(url, token="good") as client:
        with pytest.raises(ClientError) as info:
            await client.request("fail")
        assert info.value.code == "RATE_LIMIT_EXCEEDED"
        assert info.value.message == "slow down"
        assert (await client.request("echo", x=1))["x"] == 1  # the socket is still usable


async def test_unanswered_request_times_out(server: tuple[ScriptedServer, str]) -> None:
    _, url = server
    async with GreenroomClient(url, token="good", request_timeout_s=0.2) as client:
        with pytest.raises(ClientError) as info:
            await client.request("silent")
        assert info.value.code == "TIMEOUT"
        assert not client._pending  # the abandoned ref is forgotten


async def test_malformed_server_frames_are_ignored(server: tuple[ScriptedServer, str]) -> None:
    _, url = server
    async with GreenroomClient(url, token="good") as client:
        assert (await client.request("garbage")) == {"after": "garbage"}


async def test_guest_sends_no_auth(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    async with GreenroomClient(url) as client:
        await client.join("stream:1")
        assert scripted.tokens == []
        assert client.identity == {"role": "guest"}


async def test_live_events_in_order_and_volatile_pass_through(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    await scripted.publish("stream:1", "chat.message", {"text": "before"})
    async with GreenroomClient(url, token="good") as client:
        joined = await client.join("stream:1")
        assert (joined.epoch, joined.offset, joined.recovered) == ("e1", 1, False)
        for i in range(5):
            await scripted.publish("stream:1", "chat.message", {"i": i})
        await scripted.volatile("stream:1", "room.viewers", {"count": 3})
        got = await collect(client, 6)
        assert offsets(got) == [2, 3, 4, 5, 6]
        assert got[-1] == Event("stream:1", 0, "room.viewers", {"count": 3})
        assert client.position("stream:1") == ("e1", 6)


async def test_reconnect_resumes_with_since_without_gap_or_duplicate(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    async with GreenroomClient(url, token="good", reconnect=FAST) as client:
        await client.join("stream:1")
        await scripted.publish("stream:1", "chat.message", {"i": 1})
        assert offsets(await collect(client, 1)) == [1]
        await scripted.drop_all(code=4008)  # slow consumer: resumable
        # Published while the client is away: only history can bring these back.
        for i in range(2, 6):
            await scripted.publish("stream:1", "chat.message", {"i": i})
        got = await collect(client, 5)
        assert got[0].type == REJOINED
        assert got[0].data["recovered"] is True
        assert got[0].data["since"] == {"epoch": "e1", "offset": 1}
        assert offsets(got[1:]) == [2, 3, 4, 5]
        assert scripted.joins[-1]["since"] == {"epoch": "e1", "offset": 1}
        assert client.stats.reconnects == 1
        await scripted.publish("stream:1", "chat.message", {"i": 6})
        assert offsets(await collect(client, 1)) == [6]


async def test_new_epoch_reports_not_recovered(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    async with GreenroomClient(url, token="good", reconnect=FAST) as client:
        await client.join("stream:1")
        await scripted.publish("stream:1", "chat.message", {"i": 1})
        await collect(client, 1)
        scripted.rooms["stream:1"] = Room(epoch="e2")  # history lost (e.g. Redis flushed)
        await scripted.drop_all(code=1001)
        got = await collect(client, 1)
        assert got[0].type == REJOINED and got[0].data["recovered"] is False
        assert client.position("stream:1") == ("e2", 0)
        await scripted.publish("stream:1", "chat.message", {"i": 1})
        assert offsets(await collect(client, 1)) == [1]  # offset 1 again, but a new epoch: not a duplicate


async def test_live_event_racing_the_join_reply_is_delivered_once(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    async with GreenroomClient(url, token="good", reconnect=FAST) as client:
        await client.join("stream:1")
        await scripted.publish("stream:1", "chat.message", {"i": 1})
        await collect(client, 1)
        await scripted.drop_all()
        await scripted.publish("stream:1", "chat.message", {"i": 2})
        await scripted.publish("stream:1", "chat.message", {"i": 3})
        scripted.live_before_reply = True  # offset 3 arrives live, then again in the join reply's history
        got = await collect(client, 3)
        assert [e.type for e in got] == [REJOINED, "chat.message", "chat.message"]
        assert offsets(got) == [2, 3]
        assert client.stats.duplicates_dropped == 1


async def test_gap_in_live_delivery_is_filled_from_history(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    async with GreenroomClient(url, token="good") as client:
        await client.join("stream:1")
        scripted.skip_live = {2, 3}
        for i in range(1, 6):
            await scripted.publish("stream:1", "chat.message", {"i": i})
        got = await collect(client, 6)
        assert offsets(got) == [1, 2, 3, 4, 5]
        assert client.stats.gaps == 1
        assert scripted.joins[-1]["since"] == {"epoch": "e1", "offset": 1}


async def test_refused_rejoin_drops_the_room_and_says_so(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    async with GreenroomClient(url, token="good", reconnect=FAST) as client:
        await client.join("stream:1")
        await client.join("stream:2")
        scripted.banned.add("stream:1")
        await scripted.drop_all()
        got = await collect(client, 2)
        assert {(e.room, e.type) for e in got} == {("stream:1", REJOIN_FAILED), ("stream:2", REJOINED)}
        assert next(e for e in got if e.type == REJOIN_FAILED).data["code"] == "BANNED"
        with pytest.raises(KeyError):
            client.position("stream:1")


async def test_refused_token_without_provider_gives_up(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    client = GreenroomClient(url, token="good", reconnect=FAST)
    await client.connect()
    scripted.refuse_tokens = True
    await scripted.drop_all(code=4001)
    assert [e async for e in client.events()] == []  # ends instead of hanging
    assert isinstance(client.failure, ClientError) and client.failure.code == "AUTH_FAILED"
    assert len(scripted.tokens) == 1  # never retried the refused token
    with pytest.raises(ClientError) as info:
        await client.request("echo")
    assert info.value.code == "CLOSED"


async def test_first_connect_failure_raises_and_does_not_reconnect(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    scripted.refuse_tokens = True
    client = GreenroomClient(url, token="bad", reconnect=FAST)
    with pytest.raises(ClientError) as info:
        await client.connect()
    assert info.value.code == "AUTH_FAILED"
    await asyncio.sleep(0.2)
    assert len(scripted.tokens) == 1
    await client.close()


async def test_gives_up_after_bounded_attempts(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    client = GreenroomClient(url, token="good",
                             reconnect=ReconnectPolicy(base_delay_s=0.01, max_delay_s=0.02, max_attempts=3))
    await client.connect()
    scripted.unavailable = True
    await scripted.drop_all(code=1001)
    assert [e async for e in client.events()] == []  # ends instead of hanging
    assert isinstance(client.failure, ClientError)
    assert "gave up after 3 reconnect attempts" in client.failure.message
    assert client.closed and len(scripted.tokens) == 1


async def test_token_provider_refreshes_before_expiry(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    issued: list[str] = []

    async def provider() -> str:
        token = jwt_with_exp(time.time() + 0.3 + 5.0 * (len(issued) > 0))
        issued.append(token)
        return token

    async with GreenroomClient(url, token_provider=provider, refresh_margin_s=0.2):
        for _ in range(100):
            if len(scripted.tokens) >= 2:
                break
            await asyncio.sleep(0.02)
        assert scripted.tokens == issued[:2]  # the second token went over the same socket
        assert len(scripted.conns) == 1


async def test_token_provider_reconnects_after_expiry_close(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    count = 0

    async def provider() -> str:
        nonlocal count
        count += 1
        return f"opaque-{count}"

    async with GreenroomClient(url, token_provider=provider, reconnect=FAST) as client:
        await client.join("stream:1")
        await scripted.drop_all(code=4003)
        got = await collect(client, 1)
        assert got[0].type == REJOINED
        assert scripted.tokens == ["opaque-1", "opaque-2"]


async def test_request_while_reconnecting_waits_for_the_socket(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    async with GreenroomClient(url, token="good", reconnect=ReconnectPolicy(base_delay_s=0.2, max_delay_s=0.2)) as c:
        await scripted.drop_all(code=1001)
        await asyncio.sleep(0.05)
        assert not c.connected
        assert (await c.request("echo", v=2))["v"] == 2


async def test_pending_request_fails_when_connection_drops(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    async with GreenroomClient(url, token="good", reconnect=FAST) as client:
        pending = asyncio.create_task(client.request("silent"))
        await asyncio.sleep(0.05)
        await scripted.drop_all(code=1001)
        with pytest.raises(ClientError) as info:
            await pending
        assert info.value.code == "DISCONNECTED"


async def test_slow_reader_stops_reading_instead_of_growing(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    async with GreenroomClient(url, token="good", max_pending_events=5) as client:
        await client.join("stream:1")
        for i in range(20):
            await scripted.publish("stream:1", "chat.message", {"i": i})
        await asyncio.sleep(0.1)
        assert len(client._events) == 5  # the rest waits in the socket, not in client memory
        got = await collect(client, 20)
        assert offsets(got) == list(range(1, 21))


def test_backoff_grows_is_jittered_and_capped() -> None:
    policy = ReconnectPolicy(base_delay_s=0.5, max_delay_s=8.0, factor=2.0)
    for attempt, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (50, 8.0)]:
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(delays) > 1  # jittered: a thousand clients do not return in the same instant


def test_token_expiry_reads_jwt_exp_and_tolerates_garbage() -> None:
    assert token_expiry(jwt_with_exp(1234.0)) == 1234.0
    for junk in ("opaque", "a.b.c", "a..c", "", "x.!!!.y"):
        assert token_expiry(junk) is None


def test_token_and_provider_are_exclusive() -> None:
    async def provider() -> str:
        return "t"

    with pytest.raises(ValueError, match="not both"):
        GreenroomClient("ws://x/ws", token="t", token_provider=provider)


async def test_live_events_held_during_a_join_continue_from_its_reply_or_resync() -> None:
    from signaling.client import _Room

    client = GreenroomClient("ws://127.0.0.1:9/ws")
    resyncs: list[int] = []
    client._resync = lambda state, event: resyncs.append(event.offset)  # type: ignore[method-assign]
    # Held while joining: 5 continues the reply's stream, 5 again is a duplicate, 7 skips 6.
    held = [Event("r", 5, "m", {}), Event("r", 5, "m", {}), Event("r", 7, "m", {}), Event("r", 8, "m", {})]
    state = _Room("r", {}, epoch="e1", offset=2, joining=True, held=held)
    client._joined(state, {"epoch": "e1", "offset": 4, "recovered": True,
                           "events": [{"offset": 3, "type": "m", "data": {}}, {"offset": 4, "type": "m", "data": {}}]})
    assert [e.offset for e in client._events] == [3, 4, 5]
    assert resyncs == [7]
    assert [e.offset for e in state.held] == [8]  # kept for after the resync's reply
    assert client.stats.gaps == 1 and client.stats.duplicates_dropped == 1
    assert state.offset == 5


async def test_room_reset_rejoins_and_reports_not_recovered(server: tuple[ScriptedServer, str]) -> None:
    scripted, url = server
    async with GreenroomClient(url, token="good", reconnect=FAST) as client:
        await client.join("stream:1")
        await scripted.publish("stream:1", "chat.message", {"i": 1})
        await collect(client, 1)
        # The server lost what it would deliver next (a new epoch) and says so with a volatile reset.
        scripted.rooms["stream:1"] = Room(epoch="e2")
        await scripted.volatile("stream:1", "room.reset", {"epoch": "e2", "offset": 0})
        got = await collect(client, 1)
        assert got[0].type == REJOINED and got[0].data["recovered"] is False
        assert scripted.joins[-1]["since"] == {"epoch": "e1", "offset": 1}
        assert client.position("stream:1") == ("e2", 0)
