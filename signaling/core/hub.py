"""The rooms and sockets of this node, and the one path every room event takes to them.

Publishing goes through the broker (which assigns the offset); every node, the publishing one
included, receives the publication in its broker handler, puts it in order (`room_stream`) and
fans it out to its local members: the event frame is built ONCE per publication and the same bytes
are queued to each member without awaiting (`Connection.enqueue`), so one slow member never stalls
a room. Big rooms (`ws_coalesce_min_members` on this node) queue their events in the bulk outbox,
which writes to each member at most once per `ws_coalesce_ms` (the first event after a quiet spell
at once); replies and small rooms' events go right after the loop tick.

Join with `since`: the member is added before its history is read, with its live events held in a
backlog; after the join reply (which carries the missed events) is queued, the backlog is replayed
from the first offset past the history, so history and live stream meet without gap or duplicate.

`member.joined` / `member.left` (with history) are published for members whose grant says
`announce` (staff), once per user across nodes (presence tells the first socket in and the last
out), so a big room has no per-viewer join storm.

What other nodes ask of this one (remove a user from a room, disconnect a user, deliver to one
user or connection, re-check access) arrives through `control.Control`, which calls the methods
under "control targets". Who may hold a socket at all is `admission.Admission`'s; viewer counts
are `viewers.ViewerCounts`'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import orjson
from aiohttp import web

from server.kernel.errors import ApiError, ErrorCode
from server.kernel.metrics import Metrics
from server.kernel.settings import Settings
from signaling.core.admission import Admission
from signaling.core.broker import Broker, BrokerUnavailable, Publication, StreamPosition
from signaling.core.connection import Connection, Membership, Outbox
from signaling.core.frames import text_frame
from signaling.core.ops import OpRegistry
from signaling.core.presence import Presence
from signaling.core.protocol import Close, event_body, event_payload
from signaling.core.room_stream import Room, RoomStream

log = logging.getLogger("greenroom.hub")

ChannelHandler = Callable[[Publication], None]


class Hub:
    def __init__(self, broker: Broker, presence: Presence, settings: Settings, registry: OpRegistry,
                 app: web.Application, metrics: Metrics | None = None) -> None:
        self.broker = broker
        self.presence = presence
        self.settings = settings
        self.registry = registry
        self.app = app  # handed to the registry's hooks (the access re-check reads the database)
        self.metrics = metrics
        self.admission = Admission(presence, settings)
        self.outbox = Outbox()
        # Big rooms' events: at most one write per member per GREENROOM_WS_COALESCE_MS.
        self.bulk_outbox = Outbox(settings.ws_coalesce_ms / 1000)
        self.rooms: dict[str, Room] = {}
        self.connections: dict[str, Connection] = {}
        self.stream = RoomStream(broker, settings, fan_out=self._fan_out, reset=self._reset_members,
                                 spawn=self._spawn, current=self._current)
        self._listeners: dict[str, ChannelHandler] = {}  # channels that are not rooms (control)
        # Events of committed changes waiting for the broker: (room, type, data, idempotency key).
        self._unsent: deque[tuple[str, str, dict[str, Any], str]] = deque()
        self._retrier: asyncio.Task[None] | None = None
        self._serials: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start(self._on_publication)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def listen(self, channel: str, handler: ChannelHandler | None) -> None:
        """Route a non-room channel's publications to `handler` (None stops it)."""
        if handler is None:
            self._listeners.pop(channel, None)
        else:
            self._listeners[channel] = handler

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hub task failed", exc_info=task.exception())

    def _current(self, room: Room) -> bool:
        return self.rooms.get(room.name) is room

    # --- connections ---------------------------------------------------------------------

    def attach(self, conn: Connection) -> None:
        self.connections[conn.conn_id] = conn
        if self.metrics is not None:
            self.metrics.ws_opened()

    @property
    def full(self) -> bool:
        """This node holds as many sockets as it may (`admission.Admission.full`)."""
        return self.admission.full(len(self.connections))

    async def detach(self, conn: Connection) -> None:
        """The socket is gone: leave every room, stop counting it, let features free what it held."""
        if self.connections.pop(conn.conn_id, None) is None:
            return
        conn.detached = True
        if self.metrics is not None:
            self.metrics.ws_closed()
        await self.admission.release(conn)
        for name in list(conn.rooms):
            await self.leave(conn, name)
        for hook in self.registry.detach_hooks:
            try:
                await hook(conn)
            except Exception:
                log.exception("a feature's detach hook failed", extra={"conn_id": conn.conn_id})

    # --- publishing ----------------------------------------------------------------------

    async def publish(self, room: str, type_: str, data: dict[str, Any], *,
                      idempotency_key: str | None = None) -> int:
        """Append an event to the room's ordered stream; every member on every node receives it.

        Returns the offset. With `idempotency_key`, a repeat within the broker's idempotency
        window publishes nothing and returns the first offset. UNAVAILABLE (503) when the broker
        cannot be reached: the event was not published (retry with the same key to be sure).
        """
        try:
            position = await self.broker.publish(room, event_body(type_, data), idempotency_key=idempotency_key)
        except BrokerUnavailable:
            raise ApiError(ErrorCode.UNAVAILABLE, "the room's event stream is unavailable; try again shortly",
                           details={"room": room}) from None
        return position.offset

    async def publish_eventually(self, room: str, type_: str, data: dict[str, Any], *,
                                 idempotency_key: str | None = None) -> int | None:
        """Publish the event of a change already committed (a stream edit, a ban): now, or when the
        broker is back. Returns the offset, or None when the event waits in the retry queue (at most
        `hub_unsent_max`, retried every `redis_retry_s` with one idempotency key, so once)."""
        key = idempotency_key or f"unsent:{uuid.uuid4()}"
        try:
            return await self.publish(room, type_, data, idempotency_key=key)
        except ApiError:
            if len(self._unsent) >= self.settings.hub_unsent_max:
                dropped = self._unsent.popleft()
                log.error("room event dropped: the retry queue is full", extra={"room": dropped[0], "type": dropped[1]})
            self._unsent.append((room, type_, data, key))
            if self._retrier is None or self._retrier.done():
                self._retrier = self._spawn(self._retry_unsent())
            return None

    async def _retry_unsent(self) -> None:
        while self._unsent:
            await asyncio.sleep(self.settings.redis_retry_s)
            while self._unsent:
                room, type_, data, key = self._unsent[0]
                try:
                    await self.broker.publish(room, event_body(type_, data), idempotency_key=key)
                except BrokerUnavailable:
                    break
                self._unsent.popleft()

    def _on_publication(self, channel: str, pub: Publication) -> None:
        listener = self._listeners.get(channel)
        if listener is not None:
            listener(pub)
            return
        room = self.rooms.get(channel)
        if room is None:
            return
        if pub.offset == 0:
            self.deliver_volatile(room, text_frame(event_payload(room.name_json, 0, pub.data)))
        else:
            self.stream.received(room, pub)

    # --- fan-out -------------------------------------------------------------------------

    def _fan_out(self, room: Room, pub: Publication) -> None:
        frame = text_frame(event_payload(room.name_json, pub.offset, pub.data))
        backlog_max = self.settings.ws_join_backlog_max
        outbox = self._outbox_for(room)
        for conn, member in room.members.items():
            if member.live:
                conn.enqueue(frame, outbox)
            elif len(member.backlog) < backlog_max:
                member.backlog.append((pub.offset, frame))
            else:
                member.overflowed = True

    def _outbox_for(self, room: Room) -> Outbox | None:
        """Big rooms' events wait for the bulk outbox's interval; None: right after this tick."""
        return self.bulk_outbox if len(room.members) >= self.settings.ws_coalesce_min_members else None

    def deliver_volatile(self, room: Room, frame: bytes) -> None:
        """A frame the next one supersedes, to the room's live members (dropped for laggards)."""
        outbox = self._outbox_for(room)
        for conn, member in room.members.items():
            if member.live:
                conn.enqueue_volatile(frame, outbox)

    def _reset_members(self, room: Room, position: StreamPosition) -> None:
        payload = event_payload(room.name_json, 0, event_body(
            "room.reset", {"epoch": position.epoch, "offset": position.offset}))
        frame = text_frame(payload)
        for conn, member in room.members.items():
            if member.live:
                conn.enqueue(frame)
            else:
                member.backlog.clear()  # its join reads history under the new position

    # --- membership ----------------------------------------------------------------------

    async def join(self, conn: Connection, name: str, membership: Membership,
                   since: StreamPosition | None) -> dict[str, Any]:
        """Add `conn` to the room; return `{recovered, epoch, offset, events}` for the join reply.

        The caller must queue the reply and then call `go_live(conn, name, offset)`.
        """
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name)
            room.task = self._spawn(self._open(room))
        member = membership
        conn.rooms[name] = member
        room.members[conn] = member
        try:
            await asyncio.shield(room.ready)
            result = await self.broker.history(name, since, self.settings.room_history_max)
            if conn.rooms.get(name) is not member:
                raise ApiError(ErrorCode.PERMISSION_DENIED, "removed from the room while joining")
            await self._arrived(room, conn, member)
        except Exception as exc:
            if conn.rooms.get(name) is not member:  # removed (kicked, banned) while the room opened
                raise ApiError(ErrorCode.PERMISSION_DENIED, "removed from the room while joining") from None
            await self.leave(conn, name, announce=False)
            if isinstance(exc, ApiError):
                raise
            log.exception("join %s failed", name)
            raise ApiError(ErrorCode.UNAVAILABLE, "the room is unavailable; try again") from None
        recovered = since is not None and result.recovered
        events = result.publications if recovered else []
        if sum(len(p.data) for p in events) > self.settings.ws_outbound_max_bytes // 2:
            # A reply that big would close the socket as a slow consumer (and again on every retry):
            # the client refetches the room's state instead.
            recovered, events = False, []
        top = events[-1].offset if events else (since.offset if recovered and since else result.position.offset)
        return {
            "recovered": recovered,
            "epoch": result.position.epoch,
            "offset": top,
            "events": [orjson.Fragment(b'{"offset":%d,%b' % (p.offset, p.data[1:])) for p in events],
        }

    def go_live(self, conn: Connection, name: str, offset: int) -> None:
        """After the join reply: replay the live events held past `offset`, then deliver live."""
        member = conn.rooms.get(name)
        if member is None or member.live:
            return
        if member.overflowed:
            conn.close_soon(Close.SLOW_CONSUMER)
            return
        for event_offset, frame in member.backlog:
            if event_offset > offset:
                conn.enqueue(frame)
        member.backlog = []
        member.live = True

    async def leave(self, conn: Connection, name: str, *, announce: bool = True) -> bool:
        """Remove `conn` from the room (False if it was not in it)."""
        removed = self._remove(conn, name)
        if removed is None:
            return False
        await self._after_leave(conn, *removed, announce=announce)
        return True

    def _remove(self, conn: Connection, name: str) -> tuple[Room, Membership] | None:
        """The synchronous half of leaving: from this call on, the socket gets no more of the room's events."""
        member = conn.rooms.pop(name, None)
        room = self.rooms.get(name)
        if member is None or room is None:
            return None
        room.members.pop(conn, None)
        return room, member

    async def _after_leave(self, conn: Connection, room: Room, member: Membership, *, announce: bool = True) -> None:
        last = False
        try:
            last = await self.presence.remove(room.name, conn.conn_id)
        except Exception:
            log.exception("presence remove failed for %s", room.name)  # the entry expires with its TTL
        if announce and last and conn.user_id is not None and member.grant.announce:
            await self._announce(room.name, "member.left", conn.user_id, member.grant.role)
        if not room.members:
            await self._release(room)

    async def _arrived(self, room: Room, conn: Connection, member: Membership) -> None:
        """Presence decides announcements: a user's first socket in the room on any node announces
        the join, its last one the leave (a user whose last socket was on a node that died leaves
        the counts within the presence TTL, without an announcement)."""
        info = {"user_id": str(conn.user_id) if conn.user_id else None, "role": member.grant.role}
        first = await self.presence.add(room.name, conn.conn_id, info)
        if first and conn.user_id is not None and member.grant.announce:
            await self._announce(room.name, "member.joined", conn.user_id, member.grant.role)

    async def _announce(self, room: str, type_: str, user_id: uuid.UUID, role: str) -> None:
        try:
            await self.publish(room, type_, {"user_id": str(user_id), "role": role})
        except Exception:
            log.exception("cannot publish %s in %s", type_, room)

    async def _open(self, room: Room) -> None:
        """Subscribe, read the stream's position, and deliver what arrived in between."""
        try:
            async with self._serial(room.name):
                await self.broker.subscribe(room.name)
            position = await self.broker.position(room.name)
        except BaseException as exc:
            # Joins wait on `ready`, so it is settled however the open ended: a cancelled open too
            # (`_release` cancels it when the last member went, e.g. kicked while joining).
            failed = exc if isinstance(exc, Exception) else ConnectionError(f"{room.name} closed while opening")
            room.ready.set_exception(failed)
            room.ready.exception()  # joins waiting on it report it; nobody else must
            if self._current(room):
                del self.rooms[room.name]
            if not isinstance(exc, Exception):
                raise
            return
        self.stream.opened(room, position)
        await self.stream.catch_up(room)

    async def _release(self, room: Room) -> None:
        if self._current(room):
            del self.rooms[room.name]
        if room.task is not None and not room.task.done():
            room.task.cancel()
        async with self._serial(room.name):
            if room.name not in self.rooms:  # nobody rejoined while we waited
                try:
                    await self.broker.unsubscribe(room.name)
                except Exception:
                    log.exception("cannot unsubscribe %s; its publications are ignored here", room.name)

    @contextlib.asynccontextmanager
    async def _serial(self, name: str) -> AsyncIterator[None]:
        """Subscribe and unsubscribe of one channel happen one at a time, in call order."""
        entry = self._serials.get(name)
        if entry is None:
            entry = self._serials[name] = (asyncio.Lock(), [0])
        entry[1][0] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1][0] -= 1
            if entry[1][0] == 0:
                del self._serials[name]

    async def presence_of(self, name: str, limit: int) -> dict[str, Any]:
        """The room's member count and up to `limit` members, across every node."""
        clients, users = await self.presence.counts(name)
        members = await self.presence.members(name, limit)
        return {"count": users, "connections": clients,
                "members": [{"conn_id": conn_id, **info} for conn_id, info in members.items()]}

    # --- control targets (called by control.Control on every node) ------------------------

    def remove_user(self, user_id: uuid.UUID, room: str) -> None:
        """Take the user's sockets on this node out of the room."""
        for conn in list(self.admission.sockets_of(user_id)):
            removed = self._remove(conn, room)
            if removed is not None:
                self._spawn(self._after_leave(conn, *removed))

    def disconnect_user(self, user_id: uuid.UUID, code: int, reason: str) -> None:
        """Close the user's sockets on this node."""
        for conn in list(self.admission.sockets_of(user_id)):
            conn.close_soon(Close(code), reason)

    def deliver_direct(self, type_: str, data: dict[str, Any], *, user_id: uuid.UUID | None,
                       conn_id: str | None, room: str | None) -> None:
        """Push one event (no offset) to a user's sockets or one connection on this node."""
        if conn_id is not None:
            conn = self.connections.get(conn_id)
            targets = [conn] if conn is not None else []
        else:
            assert user_id is not None, "a delivery names a user or a connection"
            targets = list(self.admission.sockets_of(user_id))
        if room is not None:
            targets = [c for c in targets if room in c.rooms]
        if not targets:
            return
        body = event_body(type_, data)
        payload = event_payload(orjson.dumps(room), 0, body) if room is not None else b'{"op":"event",' + body[1:]
        frame = text_frame(payload)
        for conn in targets:
            conn.enqueue(frame)

    def recheck_access(self, room: str) -> None:
        """The room's access rule changed: remove this node's members it no longer admits."""
        current = self.rooms.get(room)
        if current is not None and current.members:
            self._spawn(self._recheck_access(current))

    async def _recheck_access(self, room: Room) -> None:
        check = self.registry.access_check
        if check is None:
            return
        users = {conn.user_id for conn in room.members if conn.user_id is not None}
        try:
            guests, admitted = await check(self.app, room.name, users)
        except Exception:
            log.exception("cannot re-check access to %s", room.name)
            return
        for conn in list(room.members):
            keep = guests if conn.user_id is None else conn.user_id in admitted
            if not keep:
                await self.leave(conn, room.name)
