"""Presence (`signaling/core/presence.py`): one suite over MemoryPresence and RedisPresence, then the
cross-node behaviour only Redis has (heartbeat, a dead node's clients expiring within the TTL)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from server.kernel.settings import load_settings
from signaling.core.backend import create_broker, create_presence
from signaling.core.memory_broker import MemoryBroker
from signaling.core.memory_presence import MemoryPresence
from signaling.core.presence import Presence
from signaling.core.redis_broker import RedisBroker
from signaling.core.redis_presence import RedisPresence


class Nodes:
    def __init__(self, kind: str, url: str | None) -> None:
        self.kind = kind
        self.url = url
        self._made: list[Presence] = []
        self._memory: MemoryPresence | None = None

    async def node(self, ttl_s: float = 30.0, **kwargs: int) -> Presence:
        """A node's presence; in memory every "node" is the one process-wide instance."""
        if self.kind == "memory":
            if self._memory is None:
                self._memory = MemoryPresence()
                self._made.append(self._memory)
            return self._memory
        assert self.url is not None
        presence = RedisPresence(self.url, f"node{len(self._made)}", ttl_s, **kwargs)
        await presence.start()
        self._made.append(presence)
        return presence

    async def close(self) -> None:
        for presence in self._made:
            await presence.close()


@pytest.fixture
async def nodes(backend: str, backend_url: str) -> AsyncIterator[Nodes]:
    """Every test runs on both backends (`backend` and `backend_url` come from tests.support.socket_support)."""
    made = Nodes(backend, backend_url or None)
    yield made
    await made.close()


async def test_add_remove_members_and_counts(nodes: Nodes) -> None:
    a, b = await nodes.node(), await nodes.node()
    await a.add("stream:1", "c1", {"user_id": "u1", "name": "Ann"})
    await b.add("stream:1", "c2", {"user_id": "u1", "name": "Ann"})  # same user, second tab
    await a.add("stream:1", "g1", {"name": "guest"})  # a guest counts as a user of its own
    await b.add("stream:2", "c9", {"user_id": "u9"})
    for reader in (a, b):
        assert await reader.counts("stream:1") == (3, 2)
        assert await reader.members("stream:1", 10) == {
            "c1": {"user_id": "u1", "name": "Ann"}, "c2": {"user_id": "u1", "name": "Ann"},
            "g1": {"name": "guest"}}
    assert await a.counts("stream:2") == (1, 1)
    assert await a.counts("stream:none") == (0, 0)
    assert await a.members("stream:none", 10) == {}

    # replacing an entry moves it to its new user
    await a.add("stream:1", "c1", {"user_id": "u2", "name": "Bo"})
    assert await b.counts("stream:1") == (3, 3)
    assert (await b.members("stream:1", 10))["c1"] == {"user_id": "u2", "name": "Bo"}

    await b.remove("stream:1", "c2")
    await b.remove("stream:1", "c2")  # idempotent
    await b.remove("stream:nowhere", "c2")
    assert await a.counts("stream:1") == (2, 2)
    await a.remove("stream:1", "c1")
    await a.remove("stream:1", "g1")
    assert await b.counts("stream:1") == (0, 0)
    assert await b.members("stream:1", 10) == {}
    assert await b.counts("stream:2") == (1, 1)


async def test_members_are_bounded_by_the_limit(nodes: Nodes) -> None:
    node = await nodes.node()
    for i in range(1100):  # more than one HMGET chunk in the Redis read script
        await node.add("show:big", f"c{i}", {"user_id": i % 700})
    assert await node.counts("show:big") == (1100, 700)
    assert len(await node.members("show:big", 5)) == 5
    listed = await node.members("show:big", 1050)
    assert len(listed) == 1050 and all(info["user_id"] == int(cid[1:]) % 700 for cid, info in listed.items())
    assert await node.members("show:big", 0) == {}


async def test_concurrent_adds_and_removes_keep_counts_exact(nodes: Nodes) -> None:
    a, b = await nodes.node(), await nodes.node()
    await asyncio.gather(*((a if i % 2 else b).add("stream:c", f"c{i}", {"user_id": i % 10}) for i in range(200)))
    assert await a.counts("stream:c") == (200, 10)
    await asyncio.gather(*((b if i % 2 else a).remove("stream:c", f"c{i}") for i in range(0, 200, 2)))
    assert await b.counts("stream:c") == (100, 5)


async def test_add_and_remove_tell_a_users_first_and_last_entry_on_any_node(nodes: Nodes) -> None:
    a, b = await nodes.node(), await nodes.node()
    room = f"stream:{uuid.uuid4()}"
    assert await a.add(room, "c1", {"user_id": "u1"}) is True
    assert await b.add(room, "c2", {"user_id": "u1"}) is False  # second socket, other node
    assert await a.add(room, "c1", {"user_id": "u1"}) is False  # a refresh of the same entry
    assert await b.add(room, "g1", {}) is True  # a guest is a user of its own
    assert await a.remove(room, "c1") is False  # u1 still has c2
    assert await a.remove(room, "c1") is False  # idempotent
    assert await b.remove(room, "c2") is True
    assert await b.remove(room, "g1") is True
    assert await a.remove(f"stream:{uuid.uuid4()}", "c9") is False


async def test_concurrent_first_entries_of_one_user_elect_exactly_one(nodes: Nodes) -> None:
    a, b = await nodes.node(), await nodes.node()
    room = f"stream:{uuid.uuid4()}"
    firsts = await asyncio.gather(*((a if i % 2 else b).add(room, f"c{i}", {"user_id": "same"}) for i in range(40)))
    assert firsts.count(True) == 1
    lasts = await asyncio.gather(*((b if i % 2 else a).remove(room, f"c{i}") for i in range(40)))
    assert lasts.count(True) == 1


async def test_counts_many_equals_counts_per_channel(nodes: Nodes) -> None:
    a, b = await nodes.node(), await nodes.node()
    rooms = [f"stream:{uuid.uuid4()}" for _ in range(5)]
    for i, room in enumerate(rooms):
        for k in range(i):
            await (a if k % 2 else b).add(room, f"c{k}", {"user_id": f"u{k % 2}"})
    expected = {room: await a.counts(room) for room in rooms}
    assert expected[rooms[0]] == (0, 0) and expected[rooms[4]] == (4, 2)
    assert await b.counts_many(rooms) == expected
    assert await a.counts_many([]) == {}


# --- Redis: across nodes ------------------------------------------------------------------------

async def wait_counts(presence: Presence, channel: str, want: tuple[int, int], within_s: float) -> float:
    """Seconds until `counts` equals `want`; fails after `within_s`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while (got := await presence.counts(channel)) != want:
        if loop.time() - start > within_s:
            raise AssertionError(f"counts {got}, wanted {want} within {within_s}s")
        await asyncio.sleep(0.05)
    return loop.time() - start


async def test_a_dead_nodes_clients_leave_within_the_ttl(redis_url: str) -> None:
    ttl = 1.0
    a = RedisPresence(redis_url, "node-a", ttl, refresh_batch=7, purge_batch=5)
    b = RedisPresence(redis_url, "node-b", ttl, refresh_batch=7, purge_batch=5)
    await a.start()
    await b.start()
    try:
        for i in range(30):  # several refresh batches and purge rounds
            await a.add("stream:n", f"a{i}", {"user_id": f"ua{i % 3}"})
        await b.add("stream:n", "b1", {"user_id": "ub"})
        assert await b.counts("stream:n") == (31, 4)
        assert await b.nodes() == ["node-a", "node-b"]
        # heartbeats keep everyone listed well past the TTL
        await asyncio.sleep(ttl * 1.6)
        assert await b.counts("stream:n") == (31, 4)

        await a.close()  # node A stops refreshing without removing its clients, as if it died
        assert await b.nodes() == ["node-b"]
        elapsed = await wait_counts(b, "stream:n", (1, 1), within_s=ttl + 0.5)
        assert elapsed <= ttl + 0.5
        assert await b.members("stream:n", 100) == {"b1": {"user_id": "ub"}}
    finally:
        await b.close()


async def test_counts_many_finishes_purging_what_one_round_leaves(redis_url: str) -> None:
    ttl = 0.5
    dying = RedisPresence(redis_url, "node-d", ttl)
    reader = RedisPresence(redis_url, "node-m", 30.0, purge_batch=3)  # one read drops at most 3
    rooms = [f"stream:{uuid.uuid4()}" for _ in range(3)]
    await dying.start()
    try:
        for room in rooms:
            for i in range(8):
                await dying.add(room, f"d{i}", {"user_id": f"u{i}"})
        await reader.add(rooms[0], "alive", {"user_id": "alive"})
        await dying.close()  # stops refreshing: its 24 entries expire
        await asyncio.sleep(ttl + 0.3)
        assert await reader.counts_many(rooms) == {rooms[0]: (1, 1), rooms[1]: (0, 0), rooms[2]: (0, 0)}
    finally:
        await reader.close()


async def test_a_removal_racing_a_heartbeat_is_not_undone(redis_url: str) -> None:
    node = RedisPresence(redis_url, "node-r", 30.0, refresh_batch=10)
    reader = RedisPresence(redis_url, "reader", 30.0)
    try:
        await asyncio.gather(*(node.add("stream:race", f"c{i}", {"user_id": i}) for i in range(2000)))
        # A heartbeat whose snapshot still lists the last clients (their refresh comes late in its
        # pipeline) races their removal, which reaches Redis first.
        await asyncio.gather(node._tick(), *(node.remove("stream:race", f"c{i}") for i in range(1900, 2000)))
        assert await reader.counts("stream:race") == (1900, 1900)
    finally:
        await node.close()
        await reader.close()


async def test_redis_presence_keys_expire_with_the_ttl(redis_url: str) -> None:
    node = RedisPresence(redis_url, "node-k", 2.0)
    admin = aioredis.from_url(redis_url)
    try:
        await node.add("stream:k", "c1", {"user_id": 1})
        keys = await admin.keys("gr:room:{stream:k}:presence:*")
        assert len(keys) == 4
        for key in keys:
            assert 0 < await admin.pttl(key) <= 2000
    finally:
        await admin.aclose()
        await node.close()


# --- choosing a backend ------------------------------------------------------------------------

async def test_backend_is_memory_without_redis_and_redis_with_it(tmp_path: Path, redis_url: str) -> None:
    single = load_settings(data_dir=tmp_path, redis_url="")
    assert isinstance(create_broker(single, None), MemoryBroker)
    assert isinstance(create_presence(single, None), MemoryPresence)

    client = aioredis.from_url(redis_url)
    try:
        broker = create_broker(single, client, node_id="n1")
        presence = create_presence(single, client, node_id="n1")
        assert isinstance(broker, RedisBroker) and isinstance(presence, RedisPresence)
        await broker.start(lambda _c, _p: None)
        await presence.start()
        assert await presence.nodes() == ["n1"]
        await broker.close()
        await presence.close()
        assert await client.ping()  # a passed-in client stays its owner's

        by_url = load_settings(data_dir=tmp_path, redis_url=redis_url)
        owned = create_broker(by_url, None)
        assert isinstance(owned, RedisBroker)
        assert (await owned.publish("stream:b", b"x")).offset == 1
        await owned.close()
    finally:
        await client.aclose()
