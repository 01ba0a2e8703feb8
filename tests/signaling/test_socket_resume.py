"""Ordered delivery and resume: `since`, trimmed history, epochs, gaps, joins racing publishers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient

from signaling.core import keys as socket_keys
from tests.support.socket_support import Sock, connect, hub_of, public_room

MakeClient = Callable[..., Awaitable[TestClient]]


async def publish_n(client: TestClient, room: str, n: int, start: int = 0) -> list[int]:
    hub = hub_of(client)
    return [await hub.publish(room, "seq", {"i": start + i}) for i in range(n)]


async def read_until(sock: Sock, offset: int) -> list[dict[str, Any]]:
    """Live `seq` events until one at `offset` arrives."""
    got: list[dict[str, Any]] = []
    while not got or got[-1]["offset"] < offset:
        got.append(await sock.event("seq"))
    return got


async def test_resume_with_since_recovers_exactly_the_missed_events(socket_client: MakeClient) -> None:
    client = await socket_client()
    room = await public_room(client.app)
    first = await connect(client, guest=True)
    joined = await first.ok("join", room)
    seen = await read_until(first, (await publish_n(client, room, 3))[-1])
    await first.close()
    missed = await publish_n(client, room, 4, start=3)

    again = await connect(client, guest=True)
    since = {"epoch": joined["epoch"], "offset": seen[-1]["offset"]}
    resumed = await again.ok("join", room, since=since)
    assert resumed["recovered"] is True and resumed["epoch"] == joined["epoch"]
    assert [e["offset"] for e in resumed["events"]] == missed
    assert [e["data"]["i"] for e in resumed["events"]] == [3, 4, 5, 6]
    assert resumed["events"][0] == {"offset": missed[0], "type": "seq", "data": {"i": 3}}
    assert resumed["offset"] == missed[-1]
    live = await publish_n(client, room, 1, start=7)
    assert (await again.event("seq"))["offset"] == live[0] == missed[-1] + 1

    at_top = await connect(client, guest=True)
    current = await at_top.ok("join", room, since={"epoch": joined["epoch"], "offset": live[0]})
    assert current["recovered"] is True and current["events"] == [] and current["offset"] == live[0]


async def test_trimmed_history_or_another_epoch_is_not_recovered(socket_client: MakeClient) -> None:
    client = await socket_client(room_history_max=5)
    room = await public_room(client.app)
    sock = await connect(client, guest=True)
    joined = await sock.ok("join", room)
    await sock.ok("leave", room)
    top = (await publish_n(client, room, 10))[-1]
    trimmed = await sock.ok("join", room, since={"epoch": joined["epoch"], "offset": joined["offset"]})
    assert trimmed["recovered"] is False and trimmed["events"] == []
    assert trimmed["offset"] == top and trimmed["epoch"] == joined["epoch"]
    await sock.ok("leave", room)
    other = await sock.ok("join", room, since={"epoch": "not-this-one", "offset": top})
    assert other["recovered"] is False and other["events"] == [] and other["offset"] == top
    nxt = await publish_n(client, room, 1)
    assert (await sock.event("seq"))["offset"] == nxt[0] == top + 1


def check_stream(reply: dict[str, Any], since: int | None, live: list[dict[str, Any]], final: int) -> None:
    """History then live: contiguous offsets, no duplicate, ending at `final`."""
    offsets = [e["offset"] for e in reply["events"]] + [e["offset"] for e in live]
    if reply["recovered"]:
        assert since is not None
        start = since + 1
    else:
        assert reply["events"] == []
        start = reply["offset"] + 1
    assert offsets == list(range(start, final + 1)), (since, reply["offset"], offsets[:20])
    for e in live:
        assert e["data"]["i"] == e["offset"] - 1  # the offset names the publication it carries


async def test_joins_racing_a_publisher_see_no_gap_and_no_duplicate(socket_client: MakeClient) -> None:
    client = await socket_client()
    rng = random.Random(20240607)
    room = await public_room(client.app)
    witness = await connect(client, guest=True)
    epoch = (await witness.ok("join", room))["epoch"]
    hub = hub_of(client)
    total = 300
    published: list[int] = []

    async def publisher() -> None:
        for i in range(total):
            published.append(await hub.publish(room, "seq", {"i": i}))
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() / 500)

    async def joiner() -> None:
        await asyncio.sleep(rng.random() * 0.25)
        since = rng.randint(0, len(published)) if published and rng.random() < 0.6 else None
        sock = await connect(client, guest=True)
        data: dict[str, Any] = {"since": {"epoch": epoch, "offset": since}} if since is not None else {}
        reply = await sock.ok("join", room, **data)
        live = [] if reply["offset"] >= total else await read_until(sock, total)
        check_stream(reply, since, live, total)
        await sock.close()

    await asyncio.gather(publisher(), *(joiner() for _ in range(24)))
    assert published == list(range(1, total + 1))
    check_stream({"recovered": False, "events": [], "offset": 0}, None, await read_until(witness, total), total)


async def test_hub_fills_a_gap_that_pub_sub_lost(socket_client: MakeClient) -> None:
    client = await socket_client()
    room = await public_room(client.app)
    sock = await connect(client, guest=True)
    await sock.ok("join", room)
    broker = client.app[socket_keys.BROKER]
    before = await publish_n(client, room, 2)
    await read_until(sock, before[-1])
    await broker.unsubscribe(room)  # this node now misses publications, as after a pub/sub outage
    await publish_n(client, room, 3, start=2)
    await broker.subscribe(room)
    last = await publish_n(client, room, 2, start=5)
    got = await read_until(sock, last[-1])
    assert [e["offset"] for e in got] == list(range(before[-1] + 1, last[-1] + 1))
    assert [e["data"]["i"] for e in got] == [2, 3, 4, 5, 6]


async def test_unfillable_gap_tells_members_to_resync(socket_client: MakeClient) -> None:
    client = await socket_client(room_history_max=2)
    room = await public_room(client.app)
    sock = await connect(client, guest=True)
    joined = await sock.ok("join", room)
    broker = client.app[socket_keys.BROKER]
    await broker.unsubscribe(room)
    await publish_n(client, room, 5)  # history keeps 2: the node cannot fill this gap
    await broker.subscribe(room)
    trigger = await publish_n(client, room, 1, start=5)
    reset = await sock.event("room.reset")
    assert "offset" not in reset and reset["data"]["epoch"] == joined["epoch"]
    assert reset["data"]["offset"] >= trigger[0] - 1
    after = await publish_n(client, room, 1, start=6)
    assert (await sock.event("seq"))["offset"] == after[0]
    # Rejoining as told gives the state of the stream, unrecovered.
    await sock.ok("leave", room)
    again = await sock.ok("join", room, since={"epoch": joined["epoch"], "offset": joined["offset"]})
    assert again["recovered"] is False and again["offset"] == after[0]


async def test_a_resume_too_big_for_the_outbound_budget_is_not_recovered(socket_client: MakeClient) -> None:
    client = await socket_client(ws_outbound_max_bytes=16_384)
    room = await public_room(client.app)
    sock = await connect(client, guest=True)
    joined = await sock.ok("join", room)
    await sock.ok("leave", room)
    hub = hub_of(client)
    for i in range(10):  # ~10 KB missed: more than half the budget
        top = await hub.publish(room, "seq", {"i": i, "pad": "z" * 1000})
    again = await sock.ok("join", room, since={"epoch": joined["epoch"], "offset": joined["offset"]})
    assert again["recovered"] is False and again["events"] == [] and again["offset"] == top
    assert not sock.ws.closed
