"""The broker contract (`signaling/core/broker.py`): one suite, run against MemoryBroker and RedisBroker.

With Redis, "nodes" are separate RedisBroker instances (separate pub/sub connections) on one
Redis; in memory there is one node.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from signaling.core.broker import Broker, HistoryPolicy, Publication, StreamPosition
from signaling.core.memory_broker import MemoryBroker
from signaling.core.redis_broker import RedisBroker
from signaling.core.redis_keys import room_key

POLICY = HistoryPolicy(history_size=100, history_ttl_s=60.0, history_meta_ttl_s=60.0)
WAIT_S = 5.0


class Received:
    """A node's handler: what it was given, per channel, in order."""

    def __init__(self) -> None:
        self.by_channel: dict[str, list[Publication]] = {}

    def __call__(self, channel: str, pub: Publication) -> None:
        self.by_channel.setdefault(channel, []).append(pub)

    def offsets(self, channel: str) -> list[int]:
        return [p.offset for p in self.by_channel.get(channel, [])]

    async def wait_for(self, channel: str, count: int) -> list[Publication]:
        """Wait (at most WAIT_S) until `count` publications of the channel arrived."""
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while len(self.by_channel.get(channel, [])) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{channel}: got {self.offsets(channel)}, wanted {count} publications")
            await asyncio.sleep(0.005)
        return self.by_channel[channel]


class Nodes:
    def __init__(self, kind: str, url: str | None) -> None:
        self.kind = kind
        self.url = url
        self._made: list[Broker] = []
        self._memory: dict[HistoryPolicy, MemoryBroker] = {}

    @property
    def count(self) -> int:
        """Separate nodes this backend can have."""
        return 2 if self.kind == "redis" else 1

    async def node(self, policy: HistoryPolicy = POLICY, **kwargs: Any) -> tuple[Broker, Received]:
        received = Received()
        broker: Broker
        if self.kind == "memory":
            broker = MemoryBroker(policy, **kwargs)
        else:
            assert self.url is not None
            broker = RedisBroker(self.url, policy, f"node{len(self._made)}", **kwargs)
        await broker.start(received)
        self._made.append(broker)
        return broker, received

    async def close(self) -> None:
        for broker in self._made:
            await broker.close()


@pytest.fixture
async def nodes(backend: str, backend_url: str) -> AsyncIterator[Nodes]:
    """Every test runs on both backends (`backend` and `backend_url` come from tests.support.socket_support)."""
    made = Nodes(backend, backend_url or None)
    yield made
    await made.close()


def make_broker(kind: str, url: str | None, name: str) -> Broker:
    return MemoryBroker(POLICY) if kind == "memory" else RedisBroker(url or "", POLICY, name)


async def publish_n(broker: Broker, channel: str, n: int, prefix: bytes = b"m") -> list[StreamPosition]:
    return [await broker.publish(channel, prefix + str(i).encode()) for i in range(n)]


# --- offsets, delivery, ordering -------------------------------------------------------------

async def test_offsets_start_at_one_and_increase_by_one(nodes: Nodes) -> None:
    broker, _ = await nodes.node()
    fresh = await broker.position("stream:1")
    assert fresh.offset == 0 and fresh.epoch
    positions = await publish_n(broker, "stream:1", 5)
    assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
    assert {p.epoch for p in positions} == {fresh.epoch}
    assert await broker.position("stream:1") == StreamPosition(5, fresh.epoch)
    # channels are independent streams
    other = await broker.publish("stream:2", b"x")
    assert other.offset == 1


async def test_delivers_only_subscribed_channels_with_data_intact(nodes: Nodes) -> None:
    broker, received = await nodes.node()
    await broker.subscribe("show:a")
    await broker.subscribe("show:a")  # idempotent
    payload = b"\x00:1:\xff binary, with colons"
    await broker.publish("show:b", b"not for us")
    pos = await broker.publish("show:a", payload)
    got = await received.wait_for("show:a", 1)
    assert got == [Publication(pos.offset, payload)]
    await asyncio.sleep(0.05)
    assert "show:b" not in received.by_channel
    assert received.by_channel["show:a"] == [Publication(1, payload)]


async def test_concurrent_publishes_reach_every_node_in_offset_order_without_gaps(nodes: Nodes) -> None:
    pairs = [await nodes.node() for _ in range(nodes.count)]
    for broker, _ in pairs:
        await broker.subscribe("stream:hot")
    tasks, per_task = 20, 15
    total = tasks * per_task

    async def publisher(t: int) -> list[tuple[StreamPosition, bytes]]:
        broker = pairs[t % len(pairs)][0]
        out = []
        for i in range(per_task):
            data = f"{t}-{i}".encode()
            out.append((await broker.publish("stream:hot", data), data))
            if random.random() < 0.3:
                await asyncio.sleep(0)
        return out

    results = await asyncio.gather(*(publisher(t) for t in range(tasks)))
    by_offset = {pos.offset: data for chunk in results for pos, data in chunk}
    assert sorted(by_offset) == list(range(1, total + 1))
    assert len({pos.epoch for chunk in results for pos, _ in chunk}) == 1
    for _, received in pairs:
        got = await received.wait_for("stream:hot", total)
        assert [p.offset for p in got] == list(range(1, total + 1))
        assert all(p.data == by_offset[p.offset] for p in got)


async def test_unsubscribe_stops_delivery(nodes: Nodes) -> None:
    broker, received = await nodes.node()
    await broker.subscribe("stream:u")
    await broker.subscribe("stream:barrier")
    await broker.publish("stream:u", b"1")
    await received.wait_for("stream:u", 1)
    await broker.unsubscribe("stream:u")
    await broker.unsubscribe("stream:u")  # idempotent
    await broker.unsubscribe("stream:never")
    await broker.publish("stream:u", b"2")
    await broker.publish_volatile("stream:u", b"v")
    # Redis delivers one connection's messages in publish order: once the barrier arrived,
    # anything for stream:u would have too.
    await broker.publish("stream:barrier", b"b")
    await received.wait_for("stream:barrier", 1)
    assert received.offsets("stream:u") == [1]
    await broker.subscribe("stream:u")
    await broker.publish("stream:u", b"3")
    await received.wait_for("stream:u", 2)
    assert received.offsets("stream:u") == [1, 3]


async def test_a_failing_handler_does_not_fail_publish_or_later_delivery(
        backend: str, backend_url: str) -> None:
    received = Received()
    seen: list[int] = []

    def flaky(channel: str, pub: Publication) -> None:
        seen.append(pub.offset)
        if pub.offset == 2:
            raise RuntimeError("handler bug")
        received(channel, pub)

    broker = make_broker(backend, backend_url or None, "flaky")
    await broker.start(flaky)
    try:
        await broker.subscribe("stream:f")
        positions = await publish_n(broker, "stream:f", 3)
        assert [p.offset for p in positions] == [1, 2, 3]
        await received.wait_for("stream:f", 2)
        assert received.offsets("stream:f") == [1, 3]
        assert seen == [1, 2, 3]
    finally:
        await broker.close()


async def test_volatile_has_offset_zero_and_no_history(nodes: Nodes) -> None:
    broker, received = await nodes.node()
    await broker.subscribe("stream:v")
    before = await broker.publish("stream:v", b"kept")
    await broker.publish_volatile("stream:v", b"viewers=5")
    await broker.publish_volatile("stream:elsewhere", b"not subscribed")
    after = await broker.publish("stream:v", b"kept too")
    got = await received.wait_for("stream:v", 3)
    assert got == [Publication(1, b"kept"), Publication(0, b"viewers=5"), Publication(2, b"kept too")]
    assert after.offset == before.offset + 1
    result = await broker.history("stream:v", StreamPosition(0, before.epoch), 10)
    assert result.recovered and [p.data for p in result.publications] == [b"kept", b"kept too"]
    assert "stream:elsewhere" not in received.by_channel
    assert (await broker.position("stream:elsewhere")).offset == 0


# --- history and recovery ----------------------------------------------------------------------

async def test_history_since_returns_exactly_the_missed_publications(nodes: Nodes) -> None:
    broker, _ = await nodes.node()
    positions = await publish_n(broker, "stream:h", 10)
    epoch = positions[0].epoch
    result = await broker.history("stream:h", StreamPosition(4, epoch), 100)
    assert result.recovered
    assert result.position == StreamPosition(10, epoch)
    assert result.publications == [Publication(i + 1, b"m%d" % i) for i in range(4, 10)]
    from_start = await broker.history("stream:h", StreamPosition(0, epoch), 100)
    assert [p.offset for p in from_start.publications] == list(range(1, 11))
    up_to_date = await broker.history("stream:h", StreamPosition(10, epoch), 100)
    assert up_to_date.recovered and up_to_date.publications == []
    position_only = await broker.history("stream:h", None, 100)
    assert position_only.recovered and position_only.publications == []
    assert position_only.position == StreamPosition(10, epoch)


async def test_since_older_than_the_kept_history_is_not_recovered(nodes: Nodes) -> None:
    broker, _ = await nodes.node(HistoryPolicy(history_size=5, history_ttl_s=60.0, history_meta_ttl_s=60.0))
    positions = await publish_n(broker, "stream:t", 12)
    epoch = positions[0].epoch
    edge = await broker.history("stream:t", StreamPosition(7, epoch), 100)
    assert edge.recovered and [p.offset for p in edge.publications] == [8, 9, 10, 11, 12]
    for since in (6, 3, 0):
        lost = await broker.history("stream:t", StreamPosition(since, epoch), 100)
        assert not lost.recovered and lost.publications == []
        assert lost.position == StreamPosition(12, epoch)


async def test_since_of_another_epoch_or_a_forged_offset_is_not_recovered(nodes: Nodes) -> None:
    broker, _ = await nodes.node()
    positions = await publish_n(broker, "stream:e", 3)
    epoch = positions[0].epoch
    for since in (StreamPosition(1, "another-epoch"), StreamPosition(1, ""), StreamPosition(4, epoch),
                  StreamPosition(10**30, epoch), StreamPosition(-1, epoch)):
        result = await broker.history("stream:e", since, 100)
        assert not result.recovered, since
        assert result.publications == []
        assert result.position == StreamPosition(3, epoch)


async def test_more_missed_than_the_limit_is_not_recovered(nodes: Nodes) -> None:
    broker, _ = await nodes.node()
    positions = await publish_n(broker, "stream:l", 10)
    epoch = positions[0].epoch
    over = await broker.history("stream:l", StreamPosition(0, epoch), 9)
    assert not over.recovered and over.publications == []
    exact = await broker.history("stream:l", StreamPosition(0, epoch), 10)
    assert exact.recovered and len(exact.publications) == 10
    nothing_allowed = await broker.history("stream:l", StreamPosition(9, epoch), 0)
    assert not nothing_allowed.recovered
    assert (await broker.history("stream:l", StreamPosition(10, epoch), 0)).recovered
    with pytest.raises(ValueError):
        await broker.history("stream:l", StreamPosition(0, epoch), -1)


async def test_history_older_than_its_ttl_is_trimmed(nodes: Nodes) -> None:
    broker, _ = await nodes.node(HistoryPolicy(history_size=100, history_ttl_s=0.4, history_meta_ttl_s=60.0))
    old = await publish_n(broker, "stream:age", 3, b"old")
    await asyncio.sleep(0.5)
    new = await publish_n(broker, "stream:age", 2, b"new")
    epoch = old[0].epoch
    assert new[0] == StreamPosition(4, epoch)  # age trims history, not the stream
    lost = await broker.history("stream:age", StreamPosition(1, epoch), 100)
    assert not lost.recovered and lost.publications == []
    kept = await broker.history("stream:age", StreamPosition(3, epoch), 100)
    assert kept.recovered and [p.data for p in kept.publications] == [b"new0", b"new1"]


async def test_an_expired_stream_comes_back_with_a_new_epoch(nodes: Nodes) -> None:
    policy = HistoryPolicy(history_size=100, history_ttl_s=60.0, history_meta_ttl_s=0.3)
    broker, received = await nodes.node(policy)
    await broker.subscribe("stream:x")
    first = await publish_n(broker, "stream:x", 3)
    old_epoch = first[0].epoch
    # Reads keep the stream alive as writes do.
    for _ in range(3):
        await asyncio.sleep(0.15)
        assert (await broker.position("stream:x")).epoch == old_epoch
    await asyncio.sleep(0.5)
    again = await broker.publish("stream:x", b"after")
    assert again.offset == 1 and again.epoch != old_epoch
    stale = await broker.history("stream:x", StreamPosition(3, old_epoch), 100)
    assert not stale.recovered and stale.position == again
    fresh = await broker.history("stream:x", StreamPosition(0, again.epoch), 100)
    assert fresh.recovered and fresh.publications == [Publication(1, b"after")]
    got = await received.wait_for("stream:x", 4)
    assert [p.offset for p in got] == [1, 2, 3, 1]


# --- idempotent publish ------------------------------------------------------------------------

async def test_idempotent_publish_returns_the_first_position_and_delivers_once(nodes: Nodes) -> None:
    pairs = [await nodes.node() for _ in range(nodes.count)]
    for broker, _ in pairs:
        await broker.subscribe("stream:tip")
    first = await pairs[0][0].publish("stream:tip", b"tip-1", idempotency_key="tip-1")
    await pairs[0][0].publish("stream:tip", b"other")
    retry = await pairs[-1][0].publish("stream:tip", b"tip-1 retried", idempotency_key="tip-1")
    assert retry == first
    # a storm of retries racing each other, from every node
    storm = await asyncio.gather(*(pairs[i % len(pairs)][0].publish("stream:tip", b"tip-2", idempotency_key="tip-2")
                                   for i in range(20)))
    assert len(set(storm)) == 1 and storm[0].offset == 3
    # the key is per channel
    elsewhere = await pairs[0][0].publish("stream:tip2", b"tip-1", idempotency_key="tip-1")
    assert elsewhere.offset == 1
    await pairs[0][0].publish("stream:tip", b"last")
    for _, received in pairs:
        got = await received.wait_for("stream:tip", 4)
        await asyncio.sleep(0.05)
        assert [(p.offset, p.data) for p in got] == [(1, b"tip-1"), (2, b"other"), (3, b"tip-2"), (4, b"last")]
    history = await pairs[0][0].history("stream:tip", StreamPosition(0, first.epoch), 100)
    assert [p.data for p in history.publications] == [b"tip-1", b"other", b"tip-2", b"last"]


# --- subscription lifecycle ---------------------------------------------------------------------

async def test_subscribing_before_start_delivers_after_start(backend: str, backend_url: str) -> None:
    broker = make_broker(backend, backend_url or None, "early")
    received = Received()
    try:
        await broker.subscribe("stream:early")
        await broker.start(received)
        await broker.publish("stream:early", b"hi")
        assert [p.data for p in await received.wait_for("stream:early", 1)] == [b"hi"]
    finally:
        await broker.close()


# --- Redis only -------------------------------------------------------------------------------

async def test_redis_pubsub_reconnects_and_history_closes_the_gap(redis_url: str) -> None:
    publisher = RedisBroker(redis_url, POLICY, "pub")
    subscriber = RedisBroker(redis_url, POLICY, "sub", reconnect_max_s=0.2)
    received = Received()
    admin = aioredis.from_url(redis_url)
    try:
        await publisher.start(lambda _c, _p: None)
        await subscriber.start(received)
        await subscriber.subscribe("stream:r")
        epoch = (await publish_n(publisher, "stream:r", 5))[0].epoch
        await received.wait_for("stream:r", 5)

        killed = await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed >= 1
        await publish_n(publisher, "stream:r", 5, b"during")
        # keep publishing until live delivery resumes (bounded)
        for _ in range(200):
            await publisher.publish("stream:r", b"probe")
            await asyncio.sleep(0.02)
            if received.offsets("stream:r")[-1] > 10:
                break
        assert subscriber.reconnects >= 1
        live = received.offsets("stream:r")
        assert live == sorted(set(live)), "no duplicates, in order"
        top = (await publisher.position("stream:r")).offset
        # the hub's repair: resume from the last offset before the first gap
        contiguous = 0
        while contiguous < len(live) and live[contiguous] == contiguous + 1:
            contiguous += 1
        repair = await subscriber.history("stream:r", StreamPosition(contiguous, epoch), 1000)
        assert repair.recovered
        recovered = sorted(set(live[:contiguous]) | {p.offset for p in repair.publications})
        assert recovered == list(range(1, top + 1))
    finally:
        await admin.aclose()
        await publisher.close()
        await subscriber.close()


async def test_redis_pubsub_connection_that_stops_answering_is_replaced(redis_url: str) -> None:
    broker = RedisBroker(redis_url, POLICY, "silent", ping_interval_s=0.1, reconnect_max_s=0.2)
    received = Received()
    admin = aioredis.from_url(redis_url)
    try:
        await broker.start(received)
        await broker.subscribe("stream:s")
        # Redis answers no one (pings included) while paused: the watchdog gives up on the connection.
        await admin.execute_command("CLIENT", "PAUSE", "700", "ALL")
        await asyncio.sleep(0.9)
        for _ in range(100):
            if broker.reconnects:
                break
            await asyncio.sleep(0.02)
        assert broker.reconnects >= 1
        await broker.subscribe("stream:s")
        await broker.publish("stream:s", b"after")
        assert [p.data for p in await received.wait_for("stream:s", 1)] == [b"after"]
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
        await broker.close()


async def test_redis_keys_share_one_hash_tag_and_expire(redis_url: str) -> None:
    broker = RedisBroker(redis_url, HistoryPolicy(10, 30.0, 600.0), "keys")
    admin = aioredis.from_url(redis_url)
    try:
        await broker.publish("stream:k", b"x", idempotency_key="k1")
        keys = sorted(k.decode() if isinstance(k, bytes) else k for k in await admin.keys("gr:room:*"))
        assert keys == sorted([room_key("stream:k", "meta"), room_key("stream:k", "stream"),
                               room_key("stream:k", "idem:k1")])
        assert all("{stream:k}" in k for k in keys)
        ttls = {k: await admin.pttl(k) for k in keys}
        assert 0 < ttls[room_key("stream:k", "stream")] <= 30_000
        assert 30_000 < ttls[room_key("stream:k", "meta")] <= 600_000
        assert 0 < ttls[room_key("stream:k", "idem:k1")] <= 300_000
    finally:
        await admin.aclose()
        await broker.close()


async def test_redis_stream_stays_near_history_size(redis_url: str) -> None:
    broker = RedisBroker(redis_url, HistoryPolicy(10, 60.0, 60.0), "trim")
    admin = aioredis.from_url(redis_url)
    try:
        positions = await publish_n(broker, "stream:big", 500)
        length = await admin.xlen(room_key("stream:big", "stream"))
        assert 10 <= length <= 200  # approximate trim: whole nodes only
        epoch = positions[0].epoch
        # however many entries Redis still holds, recovery honours history_size exactly
        assert (await broker.history("stream:big", StreamPosition(490, epoch), 100)).recovered
        assert not (await broker.history("stream:big", StreamPosition(489, epoch), 100)).recovered
    finally:
        await admin.aclose()
        await broker.close()


async def test_redis_broker_without_a_server_fails_to_start_clearly() -> None:
    from tests.support.services import free_port

    broker = RedisBroker(f"redis://127.0.0.1:{free_port()}", POLICY, "down", subscribe_timeout_s=0.3)
    with pytest.raises(ConnectionError):
        await broker.start(lambda _c, _p: None)


async def test_redis_broker_accepts_a_decoding_client(redis_url: str) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    broker = RedisBroker(client, POLICY, "decoding")
    received = Received()
    try:
        await broker.start(received)
        await broker.subscribe("stream:d")
        await broker.publish("stream:d", b"\xff\xfe not utf-8")
        assert (await received.wait_for("stream:d", 1))[0].data == b"\xff\xfe not utf-8"
        pos = await broker.position("stream:d")
        hist = await broker.history("stream:d", StreamPosition(0, pos.epoch), 10)
        assert hist.publications[0].data == b"\xff\xfe not utf-8"
    finally:
        await broker.close()
        assert await client.ping()  # the caller's client stays usable
        await client.aclose()


# --- memory only: the bounds --------------------------------------------------------------------

async def test_memory_broker_bounds_channels_and_idempotency_keys() -> None:
    now = [0.0]
    policy = HistoryPolicy(history_size=100, history_ttl_s=60.0, history_meta_ttl_s=3600.0)
    broker = MemoryBroker(policy, clock=lambda: now[0], max_channels=3, max_idempotency_keys=2)
    await broker.start(Received())
    first = await broker.publish("stream:0", b"x")
    for i in range(1, 4):
        await broker.publish(f"stream:{i}", b"x")
    # stream:0 was least recently used and got dropped: a new epoch, old positions unrecoverable
    again = await broker.position("stream:0")
    assert again.offset == 0 and again.epoch != first.epoch
    assert not (await broker.history("stream:0", first, 10)).recovered

    a = await broker.publish("stream:i", b"a", idempotency_key="a")
    assert await broker.publish("stream:i", b"a", idempotency_key="a") == a
    await broker.publish("stream:i", b"b", idempotency_key="b")
    await broker.publish("stream:i", b"c", idempotency_key="c")  # evicts "a" (size bound)
    assert (await broker.publish("stream:i", b"a", idempotency_key="a")).offset == 4
    now[0] += 301.0  # past IDEMPOTENT_TTL_S, "c" is forgotten too
    assert (await broker.publish("stream:i", b"c", idempotency_key="c")).offset == 5


def test_memory_broker_rejects_unbounded_settings() -> None:
    with pytest.raises(ValueError):
        MemoryBroker(HistoryPolicy(0, 1.0))
    with pytest.raises(ValueError):
        MemoryBroker(POLICY, max_channels=0)

