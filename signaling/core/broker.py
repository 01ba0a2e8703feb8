"""The broker contract: how room events travel between nodes and are kept for resume.

Follows Centrifuge's broker model. Implementations: `MemoryBroker` (one process) and
`RedisBroker` (many processes and nodes). The same contract test suite runs against both.

Contract
--------
- Channels are room names (`stream:{id}`, `show:{id}`). Each channel has one stream of
  publications with an `epoch` (a random string fixed when the stream is created) and an
  `offset` that increases by exactly 1 per publication with history, starting at 1.
- `publish` assigns the offset, appends to history and hands the publication to pub/sub as ONE
  atomic step per channel, so every subscriber sees publications of a channel in offset order.
  It returns the position assigned.
- Delivery to subscribers is at most once: a node that is disconnected from pub/sub misses
  publications; the offsets let it (or its clients) notice the gap and close it from history.
- `publish(..., idempotency_key=k)`: a second publish with the same key within
  `IDEMPOTENT_TTL_S` publishes nothing and returns the first position (a tip retried after a
  reconnect is broadcast once).
- History is bounded by count (`history_size`) and age (`history_ttl_s`); the stream itself
  (and so its epoch) expires when unused for `history_meta_ttl_s`; a lost stream gets a new
  epoch, which makes every old position unrecoverable rather than silently wrong.
- `history(channel, since)` returns, in offset order, every publication after `since` when
  that is possible (`recovered=True`): same epoch and nothing after `since.offset` trimmed.
  Otherwise `recovered=False` and no publications: the client must refetch state. Never a gap,
  never a duplicate. `since=None` returns the current position only.
- Volatile publications (`publish_volatile`) have no offset and no history: for state that the
  next message supersedes (viewer counts). They may be dropped.
- When the broker cannot be reached, `publish`, `publish_volatile`, `history`, `position` and
  `subscribe` raise `BrokerUnavailable` (at once while a recent failure is fresh: they do not wait
  on a dead server again). A publish that timed out may still have been applied: publish again
  with the same idempotency key to be sure it happened once.
- The handler given to `start` is called on the node's event loop for every publication on a
  channel this node subscribed to, in offset order per channel. It must not block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

IDEMPOTENT_TTL_S = 300.0


class BrokerUnavailable(ConnectionError):
    """The broker cannot be reached now; nothing is known to have been published."""


@dataclass(frozen=True, slots=True)
class StreamPosition:
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Publication:
    """`offset` is 0 for volatile publications. `data` is opaque bytes (the hub's encoded event)."""

    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class HistoryResult:
    publications: list[Publication]
    position: StreamPosition  # the stream's current top
    recovered: bool


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    history_size: int
    history_ttl_s: float
    history_meta_ttl_s: float = 7 * 86400.0


PublicationHandler = Callable[[str, Publication], None]


class Broker(Protocol):
    async def start(self, handler: PublicationHandler) -> None:
        """Begin delivering publications of subscribed channels to `handler`."""

    async def subscribe(self, channel: str) -> None:
        """This node wants the channel's publications (idempotent)."""

    async def unsubscribe(self, channel: str) -> None:
        """This node no longer wants them (idempotent)."""

    async def publish(self, channel: str, data: bytes, *, idempotency_key: str | None = None) -> StreamPosition:
        """Append to history and fan out atomically; return the assigned position."""

    async def publish_volatile(self, channel: str, data: bytes) -> None:
        """Fan out without offset or history; may be dropped."""

    async def history(self, channel: str, since: StreamPosition | None, limit: int) -> HistoryResult:
        """Publications after `since` (at most `limit`; more than that is `recovered=False`)."""

    async def position(self, channel: str) -> StreamPosition:
        """The current top of the channel's stream (creates the stream and its epoch if needed)."""

    async def close(self) -> None:
        """Stop delivery and release connections."""
