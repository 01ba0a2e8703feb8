"""`MemoryBroker`: the broker contract (`signaling.core.broker`) inside one process.

Every structure is bounded: history per channel by `history_size` (and age), the number of
channel streams by `max_channels` (least recently used dropped first), the idempotency cache by
`max_idempotency_keys` and `IDEMPOTENT_TTL_S`. A dropped stream comes back with a new epoch, so a
position from before the drop reads as unrecoverable, never as silently complete.

`publish` runs without awaiting anything, so on one event loop it is atomic: offsets are assigned,
stored and delivered to the handler in the same order.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from signaling.core.broker import (
    IDEMPOTENT_TTL_S,
    HistoryPolicy,
    HistoryResult,
    Publication,
    PublicationHandler,
    StreamPosition,
)

log = logging.getLogger("greenroom.broker")

DEFAULT_MAX_CHANNELS = 100_000
DEFAULT_MAX_IDEMPOTENCY_KEYS = 100_000


def new_epoch() -> str:
    return secrets.token_hex(6)


@dataclass(slots=True)
class _Stream:
    epoch: str
    used_at: float
    top: int = 0
    # (offset, data, published_at), oldest first; offsets contiguous up to `top`.
    entries: deque[tuple[int, bytes, float]] = field(default_factory=deque)


class MemoryBroker:
    def __init__(self, policy: HistoryPolicy, clock: Callable[[], float] = time.monotonic, *,
                 max_channels: int = DEFAULT_MAX_CHANNELS,
                 max_idempotency_keys: int = DEFAULT_MAX_IDEMPOTENCY_KEYS) -> None:
        if policy.history_size < 1 or max_channels < 1 or max_idempotency_keys < 1:
            raise ValueError("history_size, max_channels and max_idempotency_keys must be positive")
        self._policy = policy
        self._clock = clock
        self._max_channels = max_channels
        self._max_idem = max_idempotency_keys
        # Least recently used first: expired and evicted streams leave from the front.
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        # (channel, key) -> (position, expires_at); insertion order is expiry order (one TTL).
        self._idem: OrderedDict[tuple[str, str], tuple[StreamPosition, float]] = OrderedDict()
        self._subscribed: set[str] = set()
        self._handler: PublicationHandler | None = None

    async def start(self, handler: PublicationHandler) -> None:
        self._handler = handler

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def publish(self, channel: str, data: bytes, *, idempotency_key: str | None = None) -> StreamPosition:
        now = self._clock()
        if idempotency_key is not None:
            self._expire_idempotency(now)
            seen = self._idem.get((channel, idempotency_key))
            if seen is not None:
                return seen[0]
        stream = self._stream(channel, now)
        stream.top += 1
        stream.entries.append((stream.top, data, now))
        if len(stream.entries) > self._policy.history_size:
            stream.entries.popleft()
        self._trim_age(stream, now)
        position = StreamPosition(stream.top, stream.epoch)
        if idempotency_key is not None:
            self._idem[(channel, idempotency_key)] = (position, now + IDEMPOTENT_TTL_S)
            while len(self._idem) > self._max_idem:
                self._idem.popitem(last=False)
        self._deliver(channel, Publication(stream.top, data))
        return position

    async def publish_volatile(self, channel: str, data: bytes) -> None:
        self._deliver(channel, Publication(0, data))

    async def history(self, channel: str, since: StreamPosition | None, limit: int) -> HistoryResult:
        if limit < 0:
            raise ValueError("limit must not be negative")
        now = self._clock()
        stream = self._stream(channel, now)
        self._trim_age(stream, now)
        position = StreamPosition(stream.top, stream.epoch)
        if since is None:
            return HistoryResult([], position, True)
        missed = stream.top - since.offset
        if since.epoch != stream.epoch or missed < 0 or since.offset < 0:
            return HistoryResult([], position, False)
        if missed == 0:
            return HistoryResult([], position, True)
        if missed > limit or not stream.entries or stream.entries[0][0] > since.offset + 1:
            return HistoryResult([], position, False)
        start = len(stream.entries) - missed
        pubs = [Publication(stream.entries[i][0], stream.entries[i][1]) for i in range(start, len(stream.entries))]
        assert pubs[0].offset == since.offset + 1 and pubs[-1].offset == stream.top
        return HistoryResult(pubs, position, True)

    async def position(self, channel: str) -> StreamPosition:
        stream = self._stream(channel, self._clock())
        return StreamPosition(stream.top, stream.epoch)

    async def close(self) -> None:
        self._handler = None
        self._subscribed.clear()

    def _deliver(self, channel: str, pub: Publication) -> None:
        if self._handler is None or channel not in self._subscribed:
            return
        try:
            self._handler(channel, pub)
        except Exception:
            # A failing handler must not fail the publisher: the publication is already stored.
            log.exception("broker handler failed", extra={"channel": channel, "offset": pub.offset})

    def _stream(self, channel: str, now: float) -> _Stream:
        """The channel's live stream (touched now), creating it with a fresh epoch if absent or expired."""
        meta_ttl = self._policy.history_meta_ttl_s
        while self._streams:
            oldest = next(iter(self._streams.values()))
            if now - oldest.used_at <= meta_ttl:
                break
            self._streams.popitem(last=False)
        stream = self._streams.get(channel)
        if stream is None:
            stream = _Stream(new_epoch(), now)
            self._streams[channel] = stream
            while len(self._streams) > self._max_channels:
                self._streams.popitem(last=False)
        else:
            stream.used_at = now
            self._streams.move_to_end(channel)
        return stream

    def _trim_age(self, stream: _Stream, now: float) -> None:
        cutoff = now - self._policy.history_ttl_s
        while stream.entries and stream.entries[0][2] < cutoff:
            stream.entries.popleft()

    def _expire_idempotency(self, now: float) -> None:
        while self._idem:
            _, (_, expires_at) = next(iter(self._idem.items()))
            if expires_at > now:
                break
            self._idem.popitem(last=False)
