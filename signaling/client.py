"""A Python client for the room socket (`GET /ws`), used by tests, benchmarks and bots.

    async with GreenroomClient("ws://127.0.0.1:8080/ws", token=access_token) as client:
        joined = await client.join("stream:42")          # JoinResult(recovered, epoch, offset, events)
        await client.request("chat.send", room="stream:42", text="hello")
        async for event in client.events():                # Event(room, offset, type, data)
            if event.type == REJOINED and not event.data["recovered"]:
                ...                                        # history was lost: refetch the room's state
            print(event.type, event.data)

Behaviour
- Auth: `token=` (fixed) or `token_provider=` (an async callable returning a fresh access token).
  The token is sent as the first `auth` op, never in the URL. With a provider, the client asks it
  for a new token `refresh_margin_s` before the current one's `exp` and sends another `auth` op
  on the live socket; after a close for an expired token it reconnects with a fresh one.
  No token and no provider: a guest connection (an `auth` op without a token).
- Requests: `request(op, room=None, **data)` / `call(op, room, data)` send one envelope with a new
  `ref` and await the reply with that ref. `ok: false` raises `ClientError(code, message)`; no reply
  within `request_timeout_s` raises `ClientError("TIMEOUT")`; a connection lost before the reply
  raises `ClientError("DISCONNECTED")` (the op may or may not have run: retry only ops that are
  idempotent, such as `tip.send` with the same id). A request made while reconnecting waits for
  the connection (within its timeout).
- Rooms: `join(room)` remembers the room's `{epoch, offset}` and advances it with every event. After
  a reconnect the client rejoins every room with `since` and puts an event of type `REJOINED`
  (`client.rejoined`, data `{recovered, epoch, offset}`) in the stream before the recovered events.
  Events are delivered in offset order without duplicates: events at or below the room's offset
  are dropped, and live events that arrive while a (re)join is in flight wait for its reply. A
  live event that skips offsets (at-most-once delivery lost some) makes the client leave and
  rejoin that room with `since`, which fills the gap from history. Volatile events (no offset,
  such as `room.viewers`) pass through unfiltered. A resume refused twice in a row as a slow
  consumer (the missed history is larger than the server's outbound budget) is given up: the
  client rejoins without `since` and says `recovered: false`.
- Delivery: `events()` is an async iterator over a bounded queue (`max_pending_events`); when the
  queue is full the client stops reading the socket, so a consumer that falls behind becomes a
  slow consumer on the server, which closes the socket; the client then resumes with `since`.
  `on_event(callback)` registers a synchronous callback instead (or as well); set
  `max_pending_events=0` to use callbacks only.
- Reconnect: after an unexpected close, wait `ReconnectPolicy.delay(attempt)` (exponential from
  `base_delay_s`, capped at `max_delay_s`, with jitter so thousands of clients do not return in
  the same millisecond) and try again, at most `max_attempts` times in a row (None: forever). A
  refused token (close 4001, or `INVALID_TOKEN` on auth) without a provider ends the client.
  When reconnecting gives up, `events()` ends and `failure` says why.
- `close()` closes the socket, fails pending requests and ends `events()`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

log = logging.getLogger("greenroom.client")

REJOINED = "client.rejoined"
ROOM_RESET = "room.reset"  # server: events of this room were lost beyond history
REJOIN_FAILED = "client.rejoin_failed"

# Close codes (signaling.core.protocol.Close) after which the same credentials cannot help.
CLOSE_AUTH_FAILED = 4001
CLOSE_TOKEN_EXPIRED = 4003
CLOSE_SLOW_CONSUMER = 4008
# A resume whose history reply is itself too big for the server's outbound budget is closed as slow
# again, every time; after this many such closes in a row the client rejoins without `since`.
SLOW_RESUMES_MAX = 2
# Codes of failed requests that say nothing about the request itself: the connection went away.
TRANSIENT = frozenset({"TIMEOUT", "DISCONNECTED"})

TokenProvider = Callable[[], Awaitable[str]]
EventCallback = Callable[["Event"], None]


class ClientError(Exception):
    """An `ok: false` reply, or a local failure with code TIMEOUT / DISCONNECTED / CLOSED."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}


@dataclass(frozen=True, slots=True)
class Event:
    room: str
    offset: int  # 0 for volatile events and for the client's own REJOINED notices
    type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JoinResult:
    room: str
    recovered: bool
    epoch: str
    offset: int
    events: list[Event]  # what the reply carried (already delivered to events() as well)
    data: dict[str, Any]  # the whole reply data, for room state beyond the stream position


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    enabled: bool = True
    base_delay_s: float = 0.25
    max_delay_s: float = 15.0
    factor: float = 2.0
    max_attempts: int | None = 20  # consecutive failed attempts before giving up; None: never give up

    def delay(self, attempt: int) -> float:
        """Delay before attempt `attempt` (1-based): equal jitter, half fixed and half random."""
        cap = min(self.max_delay_s, self.base_delay_s * self.factor ** max(0, attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)


@dataclass(slots=True)
class ClientStats:
    connects: int = 0
    reconnects: int = 0
    duplicates_dropped: int = 0  # events at or below a room's offset (resume overlap)
    gaps: int = 0  # live events that skipped offsets; each triggered a resync


@dataclass(slots=True)
class _Room:
    name: str
    join_data: dict[str, Any]
    epoch: str | None = None
    offset: int = 0
    joining: bool = True  # live events wait in `held` until the join reply is handled
    held: list[Event] = field(default_factory=list)


def token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, read without verifying it (the server verifies; we only schedule)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


class GreenroomClient:
    """One socket, many rooms; reconnects and resumes on its own. See the module docstring."""

    def __init__(self, url: str, *, token: str | None = None, token_provider: TokenProvider | None = None,
                 session: aiohttp.ClientSession | None = None, reconnect: ReconnectPolicy | None = None,
                 request_timeout_s: float = 10.0, connect_timeout_s: float = 10.0,
                 max_pending_events: int = 10_000, max_held_events: int = 10_000,
                 refresh_margin_s: float = 30.0, heartbeat_s: float | None = 30.0,
                 max_msg_bytes: int = 4 * 1024 * 1024) -> None:
        if token is not None and token_provider is not None:
            raise ValueError("give token or token_provider, not both")
        self.url = url
        self._token = token
        self._provider = token_provider
        self._own_session = session is None
        self._session = session
        self.policy = reconnect or ReconnectPolicy()
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.refresh_margin_s = refresh_margin_s
        self.max_held_events = max_held_events
        self._heartbeat = heartbeat_s
        self._max_msg = max_msg_bytes
        self._refs = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._rooms: dict[str, _Room] = {}
        self.max_pending_events = max_pending_events
        self._events: deque[Event] = deque()
        self._events_ready = asyncio.Event()  # something to read, or the client ended
        self._events_room = asyncio.Event()  # the queue is below its bound
        self._events_room.set()
        self._callbacks: list[EventCallback] = []
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._connected = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._live_ws: aiohttp.ClientWebSocketResponse | None = None  # authenticated, so worth reconnecting
        self._reconnector: asyncio.Task[None] | None = None
        self._last_close_code: int | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._resyncs: set[asyncio.Task[None]] = set()
        self._closing = False
        self.closed = False
        self.failure: BaseException | None = None
        self.identity: dict[str, Any] = {}
        self.stats = ClientStats()

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> GreenroomClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the socket and authenticate (one attempt; raises on failure)."""
        if self.closed:
            raise ClientError("CLOSED", "client is closed")
        await self._open()

    async def close(self) -> None:
        """Close the socket; pending requests fail with CLOSED; `events()` ends."""
        await self._shutdown(None)

    async def _shutdown(self, failure: BaseException | None) -> None:
        if self.closed:
            return
        self._closing = True
        self.closed = True
        self.failure = failure
        self._connected.clear()
        tasks = [t for t in (self._reader, self._reconnector, self._refresher, *self._resyncs) if t is not None]
        current = asyncio.current_task()  # the reconnector itself shuts down when it gives up
        for t in tasks:
            if t is not current:
                t.cancel()
        if self._ws is not None:
            await self._ws.close()
        for t in tasks:
            if t is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        reason = "client closed" if failure is None else f"client gave up: {failure}"
        self._fail_pending(ClientError("CLOSED", reason))
        if self._own_session and self._session is not None:
            await self._session.close()
        self._events_ready.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # --- requests ----------------------------------------------------------------------

    async def request(self, op: str, room: str | None = None, **data: Any) -> dict[str, Any]:
        """Send `op` with `data` as keyword arguments; return the reply's data."""
        return await self.call(op, room, data)

    async def call(self, op: str, room: str | None = None, data: dict[str, Any] | None = None,
                   timeout_s: float | None = None) -> dict[str, Any]:
        """Send one envelope and await its reply (see the module docstring for the errors)."""
        timeout = self.request_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        while True:
            if self.closed:
                raise ClientError("CLOSED", "client is closed")
            try:
                await asyncio.wait_for(self._connected.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise ClientError("TIMEOUT", f"not connected within {timeout:g}s") from None
            ws = self._ws
            if ws is not None and not ws.closed:
                break
            await asyncio.sleep(0.01)  # closed but the reader has not noticed yet; wait for the next socket
        return await self._send(ws, op, room, data or {}, max(0.0, deadline - time.monotonic()))

    async def join(self, room: str, **data: Any) -> JoinResult:
        """Join `room` (from its current top); later rejoins resume from the last event seen."""
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _Room(room, dict(data))
        state.joining = True
        try:
            reply = await self.call("join", room, dict(data))
        except BaseException:
            if state.epoch is None:
                del self._rooms[room]
            else:
                state.joining = False
            raise
        return self._joined(state, reply)

    async def leave(self, room: str) -> None:
        """Leave `room` and forget its position."""
        state = self._rooms.pop(room, None)
        if state is not None:
            await self.call("leave", room, {})

    def on_event(self, callback: EventCallback) -> None:
        """Call `callback(event)` for every delivered event (synchronously, in order)."""
        self._callbacks.append(callback)

    async def events(self) -> AsyncIterator[Event]:
        """Every delivered event, in order per room; ends when the client closes or gives up."""
        if self.max_pending_events <= 0:
            raise RuntimeError("events() needs max_pending_events > 0")
        while True:
            if self._events:
                event = self._events.popleft()
                if len(self._events) < self.max_pending_events:
                    self._events_room.set()
                yield event
                continue
            if self.closed:
                return
            self._events_ready.clear()
            await self._events_ready.wait()

    def position(self, room: str) -> tuple[str | None, int]:
        """The last `(epoch, offset)` seen in `room`."""
        state = self._rooms[room]
        return state.epoch, state.offset

    # --- connection --------------------------------------------------------------------

    async def _open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        token = self._token
        if self._provider is not None:
            token = self._token = await self._provider()
        ws = await self._session.ws_connect(self.url, heartbeat=self._heartbeat, max_msg_size=self._max_msg,
                                            timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                                            autoping=True)
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws), name="greenroom-client-reader")
        try:
            # Without a token the `auth` op admits a guest (public rooms, read-only).
            self.identity = await self._send(ws, "auth", None, {} if token is None else {"token": token},
                                             self.connect_timeout_s)
        except ClientError as exc:
            await ws.close()
            if ws.close_code in (CLOSE_AUTH_FAILED, CLOSE_TOKEN_EXPIRED):
                raise ClientError("AUTH_FAILED", f"server refused the token (close code {ws.close_code})") from exc
            raise
        except BaseException:
            await ws.close()
            raise
        self.stats.connects += 1
        self._live_ws = ws
        self._connected.set()
        self._schedule_refresh()

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, op: str, room: str | None,
                    data: dict[str, Any], wait_s: float) -> dict[str, Any]:
        ref = next(self._refs)
        envelope: dict[str, Any] = {"op": op, "ref": ref, "data": data}
        if room is not None:
            envelope["room"] = room
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = fut
        try:
            await ws.send_str(orjson.dumps(envelope).decode())  # text: the server refuses binary frames
            return await asyncio.wait_for(fut, wait_s)
        except TimeoutError:
            raise ClientError("TIMEOUT", f"no reply to {op!r} within {wait_s:g}s") from None
        except (ConnectionError, aiohttp.ClientError) as exc:
            raise ClientError("DISCONNECTED", f"connection lost sending {op!r}: {exc}") from None
        finally:
            self._pending.pop(ref, None)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    await self._dispatch(msg.data)
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    break
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in dispatch must not leave the client silently dead
            log.exception("socket reader failed")
            await ws.close()
        finally:
            self._connected.clear()
            self._last_close_code = ws.close_code
            self._fail_pending(ClientError("DISCONNECTED", f"connection closed (code {ws.close_code})"))
        # Only a socket that was up starts reconnecting; a failed attempt is the reconnector's to retry.
        if not self._closing and self._live_ws is ws and (self._reconnector is None or self._reconnector.done()):
            self._reconnector = asyncio.create_task(self._reconnect(ws.close_code), name="greenroom-client-reconnect")

    async def _dispatch(self, raw: str | bytes) -> None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("server sent malformed JSON")
            return
        if not isinstance(msg, dict):
            return
        kind = msg.get("op")
        if kind == "reply":
            fut = self._pending.get(msg.get("ref"))  # type: ignore[arg-type]
            if fut is None or fut.done():
                return
            if msg.get("ok"):
                data = msg.get("data")
                fut.set_result(data if isinstance(data, dict) else {})
            else:
                err = msg.get("error") or {}
                fut.set_exception(ClientError(str(err.get("code", "ERROR")), str(err.get("message", "")),
                                              err.get("details")))
        elif kind == "event":
            event = _event(msg, msg.get("room"))
            if event is not None:
                await self._on_live(event)

    async def _on_live(self, event: Event) -> None:
        state = self._rooms.get(event.room)
        if event.type == ROOM_RESET and state is not None and not state.joining:
            # The server lost events history cannot give back: rejoin with `since`, whose answer
            # (`recovered: false`) reaches the caller as a REJOINED notice to refetch state.
            self._resync(state, event)
            return
        if state is None or event.offset == 0:
            await self._deliver(event)  # volatile, or a room we did not join through this client
            return
        if state.joining:
            if len(state.held) < self.max_held_events:
                state.held.append(event)
            return  # beyond the bound the join reply's history (or the next resync) covers it
        if event.offset <= state.offset:
            self.stats.duplicates_dropped += 1
            return
        if event.offset > state.offset + 1:
            self.stats.gaps += 1
            self._resync(state, event)
            return
        state.offset = event.offset
        await self._deliver(event)

    def _joined(self, state: _Room, reply: dict[str, Any]) -> JoinResult:
        epoch = str(reply.get("epoch", ""))
        top = int(reply.get("offset", 0))
        recovered = bool(reply.get("recovered", False))
        events = [e for e in (_event(raw, state.name) for raw in reply.get("events") or []) if e is not None]
        if epoch != state.epoch or not recovered:
            state.offset = min([e.offset for e in events if e.offset] or [top + 1]) - 1
        state.epoch = epoch
        for event in events:
            if event.offset == 0:
                self._deliver_nowait(event)
            elif event.offset <= state.offset:
                self.stats.duplicates_dropped += 1
            else:
                state.offset = event.offset
                self._deliver_nowait(event)
        state.offset = max(state.offset, top)
        held, state.held = state.held, []
        state.joining = False
        # Live events that arrived before the reply continue the stream from `top`, or reveal a gap.
        for i, event in enumerate(held):
            if event.offset == 0:
                self._deliver_nowait(event)
            elif event.offset <= state.offset:
                self.stats.duplicates_dropped += 1
            elif event.offset == state.offset + 1:
                state.offset = event.offset
                self._deliver_nowait(event)
            else:
                self.stats.gaps += 1
                self._resync(state, event)
                state.held.extend(held[i + 1:])
                break
        return JoinResult(state.name, recovered, epoch, top, events, reply)

    def _resync(self, state: _Room, trigger: Event) -> None:
        """Fill a gap in live delivery from history: leave, then join with `since`."""
        state.joining = True
        state.held.append(trigger)

        async def run() -> None:
            try:
                await self.call("leave", state.name, {})
                await self._rejoin_or_drop(state)
            except ClientError as exc:
                log.warning("resync of %s failed: %s", state.name, exc)
                state.joining = False  # the reconnect path (or the next gap) tries again

        task = asyncio.create_task(run())
        self._resyncs.add(task)
        task.add_done_callback(self._resyncs.discard)

    async def _rejoin(self, state: _Room, resume: bool = True) -> None:
        data = dict(state.join_data)
        since = {"epoch": state.epoch, "offset": state.offset}
        if state.epoch is not None and resume:
            data["since"] = since
        state.joining = True
        reply = await self.call("join", state.name, data)
        notice = Event(state.name, 0, REJOINED, {"recovered": bool(reply.get("recovered", False)),
                                                 "epoch": reply.get("epoch"), "offset": reply.get("offset"),
                                                 "since": since})
        self._deliver_nowait(notice)
        self._joined(state, reply)

    async def _reconnect(self, close_code: int | None) -> None:
        if not self.policy.enabled:
            await self._shutdown(ClientError("DISCONNECTED", f"connection closed (code {close_code})"))
            return
        if close_code in (CLOSE_AUTH_FAILED, CLOSE_TOKEN_EXPIRED) and self._provider is None:
            await self._shutdown(ClientError("AUTH_FAILED", f"server refused the token (close code {close_code})"))
            return
        for room in self._rooms.values():
            room.joining = True
        attempt = slow_resumes = 0
        while not self._closing:
            attempt += 1
            if self.policy.max_attempts is not None and attempt > self.policy.max_attempts:
                await self._shutdown(ClientError("DISCONNECTED", f"gave up after {attempt - 1} reconnect attempts"))
                return
            await asyncio.sleep(self.policy.delay(attempt))
            try:
                await asyncio.wait_for(self._open(), self.connect_timeout_s)
                for state in list(self._rooms.values()):
                    await self._rejoin_or_drop(state, resume=slow_resumes < SLOW_RESUMES_MAX)
            except ClientError as exc:
                if exc.code in ("INVALID_TOKEN", "TOKEN_EXPIRED", "AUTH_FAILED") and self._provider is None:
                    await self._shutdown(exc)
                    return
                if exc.code == "DISCONNECTED" and self._last_close_code == CLOSE_SLOW_CONSUMER:
                    slow_resumes += 1
                log.info("reconnect attempt %d failed: %s", attempt, exc)
                await self._drop_socket()
                continue
            except (TimeoutError, OSError, aiohttp.ClientError) as exc:
                log.info("reconnect attempt %d failed: %r", attempt, exc)
                await self._drop_socket()
                continue
            self.stats.reconnects += 1
            return

    async def _rejoin_or_drop(self, state: _Room, resume: bool = True) -> None:
        """Rejoin one room; a refusal (banned, room gone) drops the room and says so in the stream."""
        try:
            await self._rejoin(state, resume)
        except ClientError as exc:
            if exc.code in TRANSIENT:
                raise
            self._rooms.pop(state.name, None)
            self._deliver_nowait(Event(state.name, 0, REJOIN_FAILED,
                                       {"code": exc.code, "message": exc.message}))

    async def _drop_socket(self) -> None:
        self._connected.clear()
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()

    def _schedule_refresh(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        self._refresher = None
        if self._provider is None or self._token is None:
            return
        exp = self.identity.get("expires_at")
        if not isinstance(exp, int | float):
            exp = token_expiry(self._token)
        if exp is None:
            return
        self._refresher = asyncio.create_task(self._refresh_at(exp - self.refresh_margin_s))

    async def _refresh_at(self, when: float) -> None:
        await asyncio.sleep(max(0.0, when - time.time()))
        assert self._provider is not None
        try:
            token = await self._provider()
            ws = self._ws
            if ws is None or ws.closed:
                return  # the reconnect path authenticates with a fresh token anyway
            self.identity = await self._send(ws, "auth", None, {"token": token}, self.request_timeout_s)
            self._token = token
        except ClientError as exc:
            log.warning("token refresh failed: %s", exc)
            return
        self._refresher = None
        self._schedule_refresh()

    # --- delivery ----------------------------------------------------------------------

    async def _deliver(self, event: Event) -> None:
        """Delivery from the reader: waits while the queue is full, which stops reading the socket."""
        for cb in self._callbacks:
            cb(event)
        if self.max_pending_events > 0:
            while len(self._events) >= self.max_pending_events and not self.closed:
                self._events_room.clear()
                await self._events_room.wait()
            self._append(event)

    def _deliver_nowait(self, event: Event) -> None:
        """Delivery of a join reply's events, which must not wait: the queue may exceed its bound by
        one reply's history (bounded by the server's history limit) rather than lose recovered events."""
        for cb in self._callbacks:
            cb(event)
        if self.max_pending_events > 0:
            self._append(event)

    def _append(self, event: Event) -> None:
        self._events.append(event)
        self._events_ready.set()

    def _fail_pending(self, exc: ClientError) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()


def _event(raw: Any, room: Any) -> Event | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        return None
    name = raw.get("room", room)
    if not isinstance(name, str):
        return None
    offset = raw.get("offset") or 0
    data = raw.get("data")
    return Event(name, offset if isinstance(offset, int) else 0, raw["type"], data if isinstance(data, dict) else {})
