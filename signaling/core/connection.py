"""One client socket: who it is, the rooms it joined, and its bounded outbound path.

Every outbound frame (replies and events alike, so their order is kept) is queued with
`enqueue`, which never awaits: a broadcast loop writing to a thousand members must not wait on
any of them. Frames queued during one loop tick are written to the transport in one `write`
(the `Outbox`), which keeps one JSON object per websocket frame on the wire but pays one system
call per member per tick instead of one per event.

Backpressure is counted in bytes: what is queued here plus what the transport has not sent yet.
Above `ws_outbound_max_bytes` the connection is closed as a slow consumer (4008) and may resume
with `since`; above the lower `ws_volatile_drop_bytes`, volatile events (viewer counts, which the
next one supersedes) are dropped instead of queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from server.kernel.identity import Identity
from server.kernel.settings import Settings
from signaling.core.frames import text_frame
from signaling.core.protocol import CLOSE_REASONS, Close

log = logging.getLogger("greenroom.socket")

OPS_WINDOW_S = 10.0


@dataclass(frozen=True, slots=True)
class Grant:
    """What a member may do in a room, decided by the room feature's gate at join.

    The core reads only `role` (presence info) and `announce` (whether the member's joins and
    leaves are published: staff are, viewers are only counted); a feature subclasses it with the
    rights its ops check (`signaling.features.rooms.access.RoomGrant`).
    """

    role: str
    announce: bool

    def describe(self) -> dict[str, Any]:
        """What the join reply tells the client about its rights."""
        return {"role": self.role}


@dataclass(slots=True)
class Membership:
    """A joined room. Until `live`, events are held in `backlog` while the join fetches history."""

    grant: Grant
    live: bool = False
    backlog: list[tuple[int, bytes]] = field(default_factory=list)
    overflowed: bool = False


class Outbox:
    """Connections with frames queued; each flushed in one write, right after this loop tick.

    With `interval_s`, a flush comes at most once per interval: the first frames after a quiet
    spell still go at once, and what arrives within the interval after a flush waits for the next
    one (big rooms under load: one write per member carries several events).
    """

    def __init__(self, interval_s: float = 0.0) -> None:
        assert interval_s >= 0
        self._dirty: list[Connection] = []
        self._scheduled = False
        self._interval_s = interval_s
        self._last_flush = -math.inf

    def mark(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            delay = self._last_flush + self._interval_s - loop.time() if self._interval_s else 0.0
            if delay > 0:
                loop.call_later(delay, self.flush)
            else:
                loop.call_soon(self.flush)

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        if self._interval_s:
            self._last_flush = asyncio.get_running_loop().time()
        for conn in dirty:
            conn.flush()


class Connection:
    """A socket's session state; created by the endpoint once the websocket is open."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport, settings: Settings,
                 outbox: Outbox) -> None:
        self.conn_id = uuid.uuid4().hex
        self.ws = ws
        self.remote = ""  # client IP, set by the endpoint; guests are counted per address
        self.identity: Identity | None = None
        self.authenticated = False  # True once signed in or admitted as a guest
        self.rooms: dict[str, Membership] = {}
        self.detached = False  # the hub forgot it: nothing may count it any more
        self.close_code: int | None = None
        self.max_buffered = 0  # highest unsent byte count seen; tests and metrics read it
        self._transport = transport
        self._outbox = outbox
        self._max_bytes = settings.ws_outbound_max_bytes
        self._volatile_bytes = min(settings.ws_volatile_drop_bytes, settings.ws_outbound_max_bytes)
        self._close_timeout = settings.ws_close_timeout_s
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._waiting_in: Outbox | None = None  # the outbox that will flush `_out`
        self._sent_pending = 0  # transport buffer size at the last flush; it only shrinks in between
        self._close_task: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._ops_limit = settings.ws_ops_per_10s
        self._ops_window = 0.0
        self._ops_count = 0

    def sign_in(self, identity: Identity) -> None:
        """Adopt a verified identity (first auth or refresh); close 4003 at its `exp` unless refreshed."""
        self.identity = identity
        self.authenticated = True
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, identity.expires_at - time.time())
        self._expiry = asyncio.get_running_loop().call_later(delay, self.close_soon, Close.TOKEN_EXPIRED)

    def admit_guest(self) -> None:
        self.authenticated = True

    def take_op(self) -> bool:
        """Count one inbound frame against `ws_ops_per_10s` (fixed 10 s windows); False when over."""
        now = time.monotonic()
        if now - self._ops_window >= OPS_WINDOW_S:
            self._ops_window, self._ops_count = now, 0
        self._ops_count += 1
        return self._ops_count <= self._ops_limit

    @property
    def user_id(self) -> uuid.UUID | None:
        return self.identity.user_id if self.identity is not None else None

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def enqueue(self, frame: bytes, outbox: Outbox | None = None) -> bool:
        """Queue one built frame; False (and a slow-consumer close) when over the byte budget.

        `outbox` decides when the queue is written (default: the connection's, right after this
        tick); a frame for the default outbox moves a queue that waits for another one up to it.
        """
        if self.close_code is not None:
            return False
        size = self._out_bytes + self._sent_pending + len(frame)
        if size > self._max_bytes:
            # The estimate counts what this tick queued and the buffer as of the last flush; hand the
            # queue to the kernel now and judge by what is really unsent (a burst is not a slow reader).
            self.flush()
            size = self._transport.get_write_buffer_size() + len(frame)
            self._sent_pending = size - len(frame)
            if size > self._max_bytes:
                self.close_soon(Close.SLOW_CONSUMER)
                return False
        if not self._out:
            self._waiting_in = outbox or self._outbox
            self._waiting_in.mark(self)
        elif outbox is None and self._waiting_in is not self._outbox:
            # A reply (or a small room's event) does not wait for a big room's interval: it goes
            # right after this tick, with the events queued before it.
            self._waiting_in = self._outbox
            self._outbox.mark(self)
        self._out.append(frame)
        self._out_bytes += len(frame)
        return True

    def enqueue_volatile(self, frame: bytes, outbox: Outbox | None = None) -> bool:
        """Queue a frame the next one supersedes; dropped while the socket is behind."""
        if self._out_bytes + self._sent_pending + len(frame) > self._volatile_bytes:
            return False
        return self.enqueue(frame, outbox)

    def send(self, payload: bytes) -> bool:
        """Queue one JSON payload as a text frame."""
        return self.enqueue(text_frame(payload))

    def flush(self) -> None:
        if not self._out:
            return
        self._waiting_in = None
        out, self._out = self._out, []
        self._out_bytes = 0
        if self._transport.is_closing():
            return
        self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        self._sent_pending = self._transport.get_write_buffer_size()
        if self._sent_pending > self.max_buffered:
            self.max_buffered = self._sent_pending

    def close_soon(self, code: Close, reason: str | None = None) -> None:
        """Close from synchronous code (fan-out, timers); the first reason given wins."""
        if self.close_code is not None:
            return
        self.close_code = code
        if self._expiry is not None:
            self._expiry.cancel()
        self._close_task = asyncio.get_running_loop().create_task(self._close(code, reason))

    async def close(self, code: Close, reason: str | None = None) -> None:
        """Close and wait (bounded by `ws_close_timeout_s`) for the close handshake."""
        self.close_soon(code, reason)
        if self._close_task is not None:
            await asyncio.shield(self._close_task)

    async def _close(self, code: Close, reason: str | None) -> None:
        text = reason or CLOSE_REASONS.get(code, "")
        if code == Close.SLOW_CONSUMER:
            self._out.clear()  # what it could not take is recoverable from history
            self._out_bytes = 0
        else:
            self.flush()  # replies and events queued before the close still go out first
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=text.encode()), self._close_timeout)
        except (TimeoutError, ConnectionError, RuntimeError):
            self._abort()
        else:
            # The transport flushes what it holds (the close frame last) before it closes; a peer
            # that never reads would keep that buffer forever, so it gets `ws_close_timeout_s`.
            if self._transport.get_write_buffer_size():
                asyncio.get_running_loop().call_later(self._close_timeout, self._abort)

    def _abort(self) -> None:
        if not self._transport.is_closing() or self._transport.get_write_buffer_size():
            with contextlib.suppress(Exception):
                self._transport.abort()
