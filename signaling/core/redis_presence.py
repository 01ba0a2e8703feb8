"""`RedisPresence`: the presence contract (`signaling.core.presence`) across processes and nodes.

While Redis fails (and for `retry_s` after a failure, so a hung Redis costs one timeout, not one
per call) reads answer from this node's own entries: counts and members degrade to this node
instead of failing. `add` and `remove` raise (at once while the failure is fresh): a join needs
the broker too and is refused anyway; the heartbeat writes back every local entry once Redis is up.

Redis layout per channel (one hash tag, so one slot; all four expire together after `ttl_s`
without a refresh):
- `…:presence:exp`   ZSET client -> expiry (ms, Redis clock)
- `…:presence:info`  HASH client -> info JSON
- `…:presence:user`  HASH client -> user key
- `…:presence:users` HASH user key -> number of its live clients (HLEN = distinct users)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.kernel.breaker import Breaker
from signaling.core.presence import Info, user_key
from signaling.core.redis_keys import NODES_KEY, binary_client, room_key

log = logging.getLogger("greenroom.presence")

PURGE_ROUNDS_MAX = 100  # purge calls per read; each drops up to `purge_batch` expired entries
HMGET_CHUNK = 1000  # Lua's unpack() has a small stack limit
COUNTS_CHUNK = 500  # channels per pipelined round trip in counts_many
CLOSE_WAIT_S = 5.0  # bound on waiting for an in-flight heartbeat at close
REDIS_DOWN = (RedisError, OSError)  # the breaker's BreakerOpen is a ConnectionError, so among them


_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS of the channel scripts: exp, info, user, users
_DROP = """
-- Returns 1 when the client was its user's last one.
local function drop(client)
  local last = 0
  local user = redis.call('HGET', KEYS[3], client)
  if user then
    if redis.call('HINCRBY', KEYS[4], user, -1) <= 0 then
      redis.call('HDEL', KEYS[4], user)
      last = 1
    end
    redis.call('HDEL', KEYS[3], client)
  end
  redis.call('HDEL', KEYS[2], client)
  redis.call('ZREM', KEYS[1], client)
  return last
end
"""

ADD_LUA = _NOW_MS + """
-- ARGV: ttl_ms, then (client, user key, info) triples
-- Returns how many of the clients were their user's first (for one client: 1 or 0).
local expires = string.format('%d', now + tonumber(ARGV[1]))
local firsts = 0
for i = 2, #ARGV, 3 do
  local client, user = ARGV[i], ARGV[i + 1]
  local old = redis.call('HGET', KEYS[3], client)
  if old ~= user then
    if old then
      if redis.call('HINCRBY', KEYS[4], old, -1) <= 0 then redis.call('HDEL', KEYS[4], old) end
    end
    redis.call('HSET', KEYS[3], client, user)
    if redis.call('HINCRBY', KEYS[4], user, 1) == 1 then firsts = firsts + 1 end
  end
  redis.call('ZADD', KEYS[1], expires, client)
  redis.call('HSET', KEYS[2], client, ARGV[i + 2])
end
for k = 1, 4 do redis.call('PEXPIRE', KEYS[k], ARGV[1]) end
return firsts
"""

REMOVE_LUA = _DROP + """
-- ARGV: clients. Returns how many were their user's last.
local lasts = 0
for i = 1, #ARGV do lasts = lasts + drop(ARGV[i]) end
return lasts
"""

READ_LUA = _NOW_MS + _DROP + """
-- ARGV: purge batch, 'counts' or 'members', limit
-- Returns {more, ...}: more = 1 while expired entries are left to drop (call again).
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
for i = 1, #expired do drop(expired[i]) end
local more = 0
if #expired >= tonumber(ARGV[1]) then more = 1 end
if ARGV[2] == 'counts' then
  return {more, redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[4])}
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'LIMIT', 0, ARGV[3])
local infos = {}
for i = 1, #ids, CHUNK do
  local part = redis.call('HMGET', KEYS[2], unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
  for j = 1, #part do infos[#infos + 1] = part[j] end
end
return {more, ids, infos}
""".replace("CHUNK", str(HMGET_CHUNK))

NODE_BEAT_LUA = _NOW_MS + """
-- ARGV: node id, ttl_ms
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), ARGV[1])
return 0
"""

NODES_LUA = _NOW_MS + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


def _keys(channel: str) -> list[str]:
    return [room_key(channel, f"presence:{part}") for part in ("exp", "info", "user", "users")]


class RedisPresence:
    def __init__(self, redis: Redis | str, node_id: str, ttl_s: float, *,
                 refresh_batch: int = 500, purge_batch: int = 1000, pool_max: int = 64,
                 retry_s: float = 2.0) -> None:
        if ttl_s <= 0 or refresh_batch < 1 or purge_batch < 1:
            raise ValueError("ttl_s, refresh_batch and purge_batch must be positive")
        self._redis, self._owns_client = binary_client(redis, pool_max)
        self.node_id = node_id
        self._ttl_ms = max(1, math.ceil(ttl_s * 1000))
        self._interval_s = ttl_s / 3
        self._refresh_batch = refresh_batch
        self._purge_batch = purge_batch
        self._add: Any = self._redis.register_script(ADD_LUA)
        self._remove: Any = self._redis.register_script(REMOVE_LUA)
        self._read: Any = self._redis.register_script(READ_LUA)
        self._node_beat: Any = self._redis.register_script(NODE_BEAT_LUA)
        self._nodes: Any = self._redis.register_script(NODES_LUA)
        # This node's entries: channel -> client -> (user key, info JSON); the heartbeat source.
        self._local: dict[str, dict[str, tuple[str, bytes]]] = {}
        # Removed while a heartbeat was in flight: removed again after it, since the heartbeat may
        # have written them back.
        self._removed_in_tick: set[tuple[str, str]] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._breaker = Breaker("redis presence", retry_s)

    async def start(self) -> None:
        if self._heartbeat is not None:
            raise RuntimeError("presence already started")
        await self._tick()
        self._heartbeat = asyncio.create_task(self._beat(), name=f"presence-heartbeat-{self.node_id}")

    async def add(self, channel: str, client_id: str, info: Info) -> bool:
        entry = (user_key(client_id, info), orjson.dumps(info))
        room = self._local.setdefault(channel, {})
        previous = room.get(client_id)
        room[client_id] = entry
        try:
            return int(await self._breaker.run(lambda: self._add(keys=_keys(channel),
                                                                 args=[self._ttl_ms, client_id, *entry]),
                                               REDIS_DOWN)) == 1
        except BaseException:
            # The caller sees a failure, so a later heartbeat must not list the client either.
            if previous is None:
                self._forget(channel, client_id)
            else:
                room[client_id] = previous
            raise

    async def remove(self, channel: str, client_id: str) -> bool:
        self._forget(channel, client_id)
        if self._removed_in_tick is not None:
            self._removed_in_tick.add((channel, client_id))
        return int(await self._breaker.run(lambda: self._remove(keys=_keys(channel), args=[client_id]),
                                           REDIS_DOWN)) == 1

    async def members(self, channel: str, limit: int) -> dict[str, Info]:
        if limit <= 0:
            return {}
        try:
            reply = await self._breaker.run(lambda: self._read_fresh(channel, "members", limit), REDIS_DOWN)
        except REDIS_DOWN:
            return self._local_members(channel, limit)
        return {cid.decode(): orjson.loads(info) for cid, info in zip(reply[1], reply[2], strict=True)
                if info is not None}

    async def counts(self, channel: str) -> tuple[int, int]:
        return (await self.counts_many([channel]))[channel]

    async def counts_many(self, channels: list[str]) -> dict[str, tuple[int, int]]:
        try:
            return await self._breaker.run(lambda: self._counts_many(channels), REDIS_DOWN)
        except REDIS_DOWN:
            return {channel: self._local_counts(channel) for channel in channels}

    @property
    def degraded(self) -> bool:
        """Reads answer for this node only (Redis failed moments ago)."""
        return self._breaker.open

    def _local_counts(self, channel: str) -> tuple[int, int]:
        room = self._local.get(channel, {})
        return len(room), len({key for key, _ in room.values()})

    def _local_members(self, channel: str, limit: int) -> dict[str, Info]:
        room = self._local.get(channel, {})
        return {cid: orjson.loads(info) for cid, (_, info) in list(room.items())[:limit]}

    async def _counts_many(self, channels: list[str]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for start in range(0, len(channels), COUNTS_CHUNK):
            chunk = channels[start:start + COUNTS_CHUNK]
            async with self._redis.pipeline(transaction=False) as pipe:
                for channel in chunk:
                    await self._read(keys=_keys(channel), args=[self._purge_batch, "counts", 0], client=pipe)
                replies: list[Any] = await pipe.execute()
            for channel, reply in zip(chunk, replies, strict=True):
                if reply[0] != 0:  # more expired entries than one purge drops: finish that one alone
                    reply = await self._read_fresh(channel, "counts", 0)
                out[channel] = (int(reply[1]), int(reply[2]))
        return out

    async def nodes(self) -> list[str]:
        return sorted(n.decode() for n in await self._nodes(keys=[NODES_KEY], args=[]))

    async def close(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            # Bounded: the stop flag ends the loop even where a library swallowed the cancellation.
            done, _ = await asyncio.wait({self._heartbeat}, timeout=self._interval_s + CLOSE_WAIT_S)
            if not done:
                log.error("presence heartbeat did not stop", extra={"node": self.node_id})
            self._heartbeat = None
        try:
            await self._redis.zrem(NODES_KEY, self.node_id)
        except Exception as exc:
            log.warning("presence: could not deregister node %s: %s", self.node_id, exc)
        self._local.clear()
        if self._owns_client:
            await self._redis.aclose()

    async def _read_fresh(self, channel: str, mode: str, limit: int) -> list[Any]:
        """The read script's answer once expired entries are gone. After PURGE_ROUNDS_MAX calls the
        client count is still exact (live entries only) but distinct users may include expired ones."""
        for _ in range(PURGE_ROUNDS_MAX):
            reply: list[Any] = await self._read(keys=_keys(channel), args=[self._purge_batch, mode, limit])
            if reply[0] == 0:
                break
        else:
            log.warning("presence: %s still has expired entries after %d purges", channel, PURGE_ROUNDS_MAX)
        return reply

    def _forget(self, channel: str, client_id: str) -> None:
        room = self._local.get(channel)
        if room is not None:
            room.pop(client_id, None)
            if not room:
                del self._local[channel]

    async def _beat(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval_s)
            if self._stop.is_set():
                return
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("presence heartbeat failed: %s", exc, extra={"node": self.node_id})

    async def _tick(self) -> None:
        """Refresh this node and every local entry in one pipelined round trip."""
        self._removed_in_tick = set()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                await self._node_beat(keys=[NODES_KEY], args=[self.node_id, self._ttl_ms], client=pipe)
                for channel, room in list(self._local.items()):
                    entries = list(room.items())
                    for i in range(0, len(entries), self._refresh_batch):
                        args: list[Any] = [self._ttl_ms]
                        for client_id, (key, info) in entries[i:i + self._refresh_batch]:
                            args += (client_id, key, info)
                        await self._add(keys=_keys(channel), args=args, client=pipe)
                await pipe.execute()
        finally:
            removed, self._removed_in_tick = self._removed_in_tick, None
        for channel, client_id in removed:
            if client_id not in self._local.get(channel, {}):
                await self._remove(keys=_keys(channel), args=[client_id])
