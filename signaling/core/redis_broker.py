"""`RedisBroker`: the broker contract (`signaling.core.broker`) across processes and nodes.

Per channel (all keys share the hash tag `{channel}`, see `redis_keys`):
- `…:meta` HASH `e` = epoch, `s` = top offset; expires after `history_meta_ttl_s` unused, and a
  stream created again gets a new epoch (the stale stream is deleted with it).
- `…:stream` STREAM, one entry per publication with the explicit id `<offset>-0` and fields
  `d` (data) and `t` (Redis clock, ms). Trimmed to about `history_size` entries (`MAXLEN ~`);
  `history` never recovers more than `history_size` or anything older than `history_ttl_s`, so the
  approximate trim only ever keeps extra entries, it never decides an answer. The whole stream
  expires `history_ttl_s` after the last publication (every entry is older than that by then).
- `…:idem:<key>` STRING `offset:epoch` for `IDEMPOTENT_TTL_S`.
- pub/sub channel `…:pub`, messages `<offset>:<data>` (offset 0: volatile).

One Lua script assigns the offset, appends to the stream, publishes and records the idempotency
key, so Redis (single-threaded) orders every channel's publications the same way for every node.

Fan-out: ONE dedicated pub/sub connection per broker (node). `subscribe` returns once Redis has
confirmed the subscription, so a `history` read after it can be followed seamlessly by live
delivery. If the connection drops (or stops answering pings), the reader reconnects with bounded,
jittered backoff and subscribes again; publications in between are missed, which the offsets reveal
and `history` repairs (delivery is at most once by contract).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import struct
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from server.kernel.breaker import Breaker
from signaling.core.broker import (
    IDEMPOTENT_TTL_S,
    BrokerUnavailable,
    HistoryPolicy,
    HistoryResult,
    Publication,
    PublicationHandler,
    StreamPosition,
)
from signaling.core.memory_broker import new_epoch
from signaling.core.redis_keys import binary_client, channel_of, connection_kwargs, pubsub_channel, room_key

log = logging.getLogger("greenroom.broker")

RECONNECT_BASE_S = 0.05
SUBSCRIBE_CHUNK = 500  # channels per SUBSCRIBE command when resubscribing after a reconnect
DEAD_AFTER_PINGS = 3  # silent ping intervals before the pub/sub connection counts as dead
CLOSE_WAIT_S = 5.0  # bound on waiting for the reader task at close
_FRAME_LEN = struct.Struct(">I")
REDIS_DOWN = (RedisError, OSError)
T = TypeVar("T")

PUBLISH_LUA = """
-- KEYS: meta, stream, idempotency key (the meta key again when there is none)
-- ARGV: data, history_size, stream_ttl_ms, meta_ttl_ms, new_epoch, pubsub channel, idempotency_ttl_ms or ''
if ARGV[7] ~= '' then
  local seen = redis.call('GET', KEYS[3])
  if seen then return {seen, 1} end
end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  -- entries of an expired epoch would have ids above the restarted offsets
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], offset .. '-0', 'd', ARGV[1], 't', string.format('%d', now_ms))
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[6], offset .. ':' .. ARGV[1])
local result = offset .. ':' .. epoch
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[3], result, 'PX', ARGV[7])
end
return {result, 0}
"""

HISTORY_LUA = """
-- KEYS: meta, stream
-- ARGV: new_epoch, meta_ttl_ms, since_epoch ('' for position only), since_offset, most entries to read,
--       history_ttl_ms
-- Returns {top, epoch} and, when every publication after since is kept and young enough, their data
-- in offset order as one string of (4-byte big-endian length, data) frames: one bulk reply parses
-- far faster in the client than one per publication.
local meta = redis.call('HMGET', KEYS[1], 'e', 's')
local epoch, top = meta[1], tonumber(meta[2])
if not epoch then
  epoch, top = ARGV[1], 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[3] ~= epoch then
  return {top, epoch}
end
local since = tonumber(ARGV[4])
local missed = top - since
if missed <= 0 or missed > tonumber(ARGV[5]) then
  return {top, epoch}
end
local entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+', 'COUNT', missed)
if #entries ~= missed then
  return {top, epoch}
end
-- entries hold fields {'d', data, 't', ms} as XADD wrote them; the oldest decides the age
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(entries[1][2][4]) < now_ms - tonumber(ARGV[6]) then
  return {top, epoch}
end
-- ids are distinct offsets in (since, top]: with `missed` of them, first and last settle contiguity
if entries[1][1] ~= (since + 1) .. '-0' or entries[missed][1] ~= top .. '-0' then
  return {top, epoch}
end
local frames = {}
for i = 1, missed do
  local data = entries[i][2][2]
  frames[2 * i - 1] = struct.pack('>I4', #data)
  frames[2 * i] = data
end
return {top, epoch, table.concat(frames)}
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _unframe(blob: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(blob):
        (size,) = _FRAME_LEN.unpack_from(blob, at)
        at += 4
        out.append(blob[at:at + size])
        at += size
    return out


def _position(raw: bytes) -> StreamPosition:
    offset, _, epoch = raw.partition(b":")
    return StreamPosition(int(offset), epoch.decode())


class _Link:
    """One pub/sub connection and the SUBSCRIBE/UNSUBSCRIBE replies still owed on it, per channel."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.inflight: dict[str, int] = {}


class RedisBroker:
    def __init__(self, redis: Redis | str, policy: HistoryPolicy, node_id: str, *,
                 subscribe_timeout_s: float = 5.0, reconnect_max_s: float = 5.0,
                 ping_interval_s: float = 5.0, pool_max: int = 64, retry_s: float = 2.0) -> None:
        if policy.history_size < 1:
            raise ValueError("history_size must be positive")
        self._redis, self._owns_client = binary_client(redis, pool_max)
        self._policy = policy
        self.node_id = node_id
        self._subscribe_timeout_s = subscribe_timeout_s
        self._reconnect_max_s = reconnect_max_s
        self._ping_interval_s = ping_interval_s
        self._publish_script: Any = self._redis.register_script(PUBLISH_LUA)
        self._history_script: Any = self._redis.register_script(HISTORY_LUA)
        # Channels this node wants -> resolved once Redis confirmed the subscription on the current
        # connection (pending again while disconnected).
        self._channels: dict[str, asyncio.Future[None]] = {}
        self._handler: PublicationHandler | None = None
        self._link: _Link | None = None
        self._connected = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._last_rx = 0.0
        self._was_connected = False
        self.reconnects = 0  # connections made after the first one (observability, tests)
        # Commands fail fast for `retry_s` after one failed: a hung Redis costs one timeout, not one each.
        self._breaker = Breaker("redis broker", retry_s)

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, handler: PublicationHandler) -> None:
        if self._reader is not None:
            raise RuntimeError("broker already started")
        self._handler = handler
        self._reader = asyncio.create_task(self._run(), name=f"broker-pubsub-{self.node_id}")
        try:
            await asyncio.wait_for(self._connected.wait(), self._subscribe_timeout_s)
        except TimeoutError:
            await self.close()
            raise ConnectionError(f"no Redis pub/sub connection within {self._subscribe_timeout_s}s") from None
        # Channels subscribed before start are live when start returns, as later ones are.
        pending = [fut for fut in self._channels.values() if not fut.done()]
        if pending:
            await asyncio.wait(pending, timeout=self._subscribe_timeout_s)

    async def close(self) -> None:
        self._closed = True
        link = self._link
        if link is not None:
            # A closed socket ends the reader's loop even where a library swallows the cancellation.
            with contextlib.suppress(Exception):
                await link.conn.disconnect(nowait=True)
        if self._reader is not None:
            self._reader.cancel()
            done, _ = await asyncio.wait({self._reader}, timeout=CLOSE_WAIT_S)
            if not done:
                log.error("redis pub/sub reader did not stop within %ss", CLOSE_WAIT_S, extra={"node": self.node_id})
            self._reader = None
        for fut in self._channels.values():
            if not fut.done():
                fut.set_exception(ConnectionError("broker closed"))
                fut.exception()  # waiters still get it; nobody waiting is fine too
        self._channels.clear()
        self._handler = None
        if self._owns_client:
            await self._redis.aclose()

    # --- subscriptions -----------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        fut = self._channels.get(channel)
        added = fut is None
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._channels[channel] = fut
            if self._link is not None:
                await self._send(self._link, "SUBSCRIBE", [channel])
        if fut.done() or self._reader is None:
            return  # not started yet: the first connection subscribes to it
        # Disconnected while Redis failed just now: do not wait for it.
        timeout = 0.0 if self._link is None and self._breaker.open else self._subscribe_timeout_s
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            if added and self._channels.get(channel) is fut:
                await self.unsubscribe(channel)
            raise BrokerUnavailable(f"Redis did not confirm the subscription to {channel!r} "
                                    f"within {timeout}s") from None

    async def unsubscribe(self, channel: str) -> None:
        fut = self._channels.pop(channel, None)
        if fut is None:
            return
        if not fut.done():
            fut.set_result(None)  # the last call wins: nobody waits for a channel no longer wanted
        if self._link is not None:
            await self._send(self._link, "UNSUBSCRIBE", [channel])

    # --- publishing and history --------------------------------------------------------

    async def publish(self, channel: str, data: bytes, *, idempotency_key: str | None = None) -> StreamPosition:
        meta = room_key(channel, "meta")
        idem = room_key(channel, f"idem:{idempotency_key}") if idempotency_key is not None else meta
        policy = self._policy
        raw, _ = await self._guarded(lambda: self._publish_script(
            keys=[meta, room_key(channel, "stream"), idem],
            args=[data, policy.history_size, _ms(policy.history_ttl_s), _ms(policy.history_meta_ttl_s),
                  new_epoch(), pubsub_channel(channel),
                  _ms(IDEMPOTENT_TTL_S) if idempotency_key is not None else ""]))
        return _position(raw)

    async def publish_volatile(self, channel: str, data: bytes) -> None:
        await self._guarded(lambda: self._redis.publish(pubsub_channel(channel), b"0:" + data))

    async def _guarded(self, command: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis command; BrokerUnavailable if it fails, or at once while Redis just failed."""
        try:
            return await self._breaker.run(command, REDIS_DOWN)
        except REDIS_DOWN as exc:  # BreakerOpen is a ConnectionError, so an OSError
            raise BrokerUnavailable(f"Redis: {type(exc).__name__}: {exc}") from exc

    async def history(self, channel: str, since: StreamPosition | None, limit: int) -> HistoryResult:
        if limit < 0:
            raise ValueError("limit must not be negative")
        policy = self._policy
        reply = await self._guarded(lambda: self._history_script(
            keys=[room_key(channel, "meta"), room_key(channel, "stream")],
            args=[new_epoch(), _ms(policy.history_meta_ttl_s),
                  since.epoch if since is not None else "", since.offset if since is not None else 0,
                  min(limit, policy.history_size), _ms(policy.history_ttl_s)]))
        top, epoch = int(reply[0]), reply[1].decode()
        position = StreamPosition(top, epoch)
        if since is None:
            return HistoryResult([], position, True)
        missed = top - since.offset
        if since.epoch != epoch or since.offset < 0 or missed < 0:
            return HistoryResult([], position, False)
        # The script returns data only for a complete, young-enough run since.offset+1 .. top.
        data = _unframe(reply[2]) if len(reply) > 2 else []
        if len(data) != missed:
            return HistoryResult([], position, False)
        return HistoryResult([Publication(since.offset + 1 + i, d) for i, d in enumerate(data)], position, True)

    async def position(self, channel: str) -> StreamPosition:
        return (await self.history(channel, None, 0)).position

    # --- the pub/sub connection ----------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._closed:
            if failures:
                delay = min(self._reconnect_max_s, RECONNECT_BASE_S * 2 ** (failures - 1))
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            try:
                link = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("redis pub/sub connect failed (attempt %d): %s", failures, exc,
                            extra={"node": self.node_id})
                continue
            if self._closed:
                self._drop(link)
                await link.conn.disconnect(nowait=True)
                return
            if self._was_connected:
                self.reconnects += 1
                log.info("redis pub/sub reconnected; %d channels resubscribed", len(self._channels),
                         extra={"node": self.node_id})
            self._was_connected = True
            failures = 0
            pinger = asyncio.create_task(self._ping(link))
            try:
                await self._read(link)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures = 1
                if not self._closed:
                    log.warning("redis pub/sub connection lost: %s", exc, extra={"node": self.node_id})
            finally:
                pinger.cancel()
                self._drop(link)
                with contextlib.suppress(Exception):
                    await link.conn.disconnect(nowait=True)

    async def _connect(self) -> _Link:
        cls, kwargs = connection_kwargs(self._redis)
        # RESP2 keeps pub/sub replies plain arrays; maintenance push notifications need RESP3.
        kwargs.pop("maint_notifications_config", None)
        kwargs.pop("maint_notifications_pool_handler", None)
        kwargs.update(decode_responses=False, protocol=2, health_check_interval=0,
                      retry=Retry(NoBackoff(), 0),
                      client_name="gr-broker-" + re.sub(r"[^\w.-]", "_", self.node_id))
        conn = cls(**kwargs)
        await conn.connect()
        link = _Link(conn)
        self._last_rx = asyncio.get_running_loop().time()
        # Publish the link and take the channel list with no await between: a `subscribe` after
        # this point sends its own SUBSCRIBE on the new link.
        self._link = link
        self._connected.set()
        channels = list(self._channels)
        for i in range(0, len(channels), SUBSCRIBE_CHUNK):
            await self._send(link, "SUBSCRIBE", channels[i:i + SUBSCRIBE_CHUNK])
        return link

    def _drop(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
            self._connected.clear()
        loop = asyncio.get_running_loop()
        for channel, fut in self._channels.items():
            if fut.done():
                self._channels[channel] = loop.create_future()

    async def _send(self, link: _Link, command: str, channels: list[str]) -> None:
        for channel in channels:
            link.inflight[channel] = link.inflight.get(channel, 0) + 1
        try:
            await link.conn.send_command(command, *(pubsub_channel(c) for c in channels), check_health=False)
        except Exception as exc:
            # The connection is gone; the reader notices, reconnects and subscribes again.
            log.debug("redis pub/sub %s failed: %s", command, exc)

    async def _read(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await link.conn.read_response(timeout=math.inf)
            self._last_rx = loop.time()
            kind = message[0]
            if kind == b"message":
                self._dispatch(message[1], message[2])
            elif kind in (b"subscribe", b"unsubscribe"):
                self._acknowledged(link, message[1])

    def _acknowledged(self, link: _Link, name: bytes) -> None:
        channel = channel_of(name)
        if channel is None:
            return
        left = link.inflight.get(channel, 0) - 1
        if left > 0:
            link.inflight[channel] = left
            return
        link.inflight.pop(channel, None)
        # With no SUBSCRIBE/UNSUBSCRIBE of the channel still unanswered, Redis is in the state we
        # last asked for; the channel is live if we still want it.
        fut = self._channels.get(channel)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _dispatch(self, name: bytes, payload: bytes) -> None:
        channel = channel_of(name)
        if channel is None or channel not in self._channels or self._handler is None:
            return
        head, _, data = payload.partition(b":")
        try:
            pub = Publication(int(head), data)
        except ValueError:
            log.error("malformed publication on %r", name)
            return
        try:
            self._handler(channel, pub)
        except Exception:
            log.exception("broker handler failed", extra={"channel": channel, "offset": pub.offset})

    async def _ping(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        while self._link is link:
            await asyncio.sleep(self._ping_interval_s)
            if loop.time() - self._last_rx > DEAD_AFTER_PINGS * self._ping_interval_s:
                log.warning("redis pub/sub connection silent; reconnecting", extra={"node": self.node_id})
                await link.conn.disconnect(nowait=True)
                return
            await self._send(link, "PING", [])
