"""The rooms of this node: who is in each, and the one path every room event takes to them.

Publishing goes through the broker (which assigns the offset); every node, the publishing one
included, receives the publication in its broker handler and fans it out to its local members:
the event frame is built ONCE per publication and the same bytes are queued to each member
without awaiting (`Connection.enqueue`), so one slow member never stalls a room.

Ordering. Pub/sub delivery is at most once, so the hub keeps, per room, the last offset it
delivered. The next offset is delivered at once; an older one is a duplicate (dropped); a jump
means the node missed publications: live ones are held while the gap is filled from
`broker.history`, then delivered in order. Members therefore see each room's events without gap
or duplicate, in offset order. If the gap cannot be filled (history trimmed, or the stream got a
new epoch) members get a `room.reset` event with the new position and must rejoin with `since`
(which answers `recovered: false`) and refetch the room's state.

Join with `since`: the member is added before its history is read, with its live events held
in a backlog; after the join reply (which carries the missed events) is queued, the backlog is
replayed from the first offset past the history, so history and live stream meet without gap
or duplicate.

Viewer counts (distinct users; each guest counts as one) come from presence (all nodes), at
most once per `viewer_count_interval_s` per room and only when the count changed;
`member.joined` / `member.left` (with history) are published for performers and moderators
only, so a big room has no per-viewer join storm, and once per user across nodes (presence tells
the first socket in and the last out).
Control events `member.kicked` / `member.banned` carrying `data.user_id` remove that user's
local connections from the room right after delivering the event, on every node; `room.access`
re-checks the room's local members against its new access rule and removes those it refuses.

Big rooms (`ws_coalesce_min_members` on this node) queue their events in the bulk outbox, which
writes to each member at most once per `ws_coalesce_ms` (the first event after a quiet spell at
once); replies and small rooms' events go right after the loop tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from server.kernel.errors import ApiError, ErrorCode
from signaling.core.broker import Broker, Publication, StreamPosition
from signaling.core.connection import Connection, Membership, Outbox
from signaling.core.frames import text_frame
from signaling.core.presence import Presence
from signaling.core.protocol import Close, event_body, event_payload

if TYPE_CHECKING:
    from server.kernel.metrics import Metrics
    from server.kernel.settings import Settings

log = logging.getLogger("greenroom.hub")

STAFF_ROLES = frozenset({"performer", "moderator"})
_EJECTING = (b'{"type":"member.kicked"', b'{"type":"member.banned"')
_ACCESS_CHANGED = b'{"type":"room.access"'

# Who of these users a room admits now, and whether guests may stay (`rooms.admitted`).
AccessCheck = Callable[[str, set[uuid.UUID]], Awaitable[tuple[bool, set[uuid.UUID]]]]


def user_sockets(user_id: uuid.UUID) -> str:
    """The presence channel that counts a user's sockets on every node (not a room)."""
    return f"user:{user_id}"


class Room:
    """A room as this node sees it: local members and the delivery position."""

    __slots__ = ("epoch", "members", "name", "name_json", "offset", "overflow", "pending", "ready", "task",
                 "viewers")

    def __init__(self, name: str) -> None:
        self.name = name
        self.name_json = orjson.dumps(name)
        self.members: dict[Connection, Membership] = {}
        self.offset = 0
        self.epoch = ""
        # Live publications held while the position is being read or a gap filled; None: deliver live.
        self.pending: list[Publication] | None = []
        self.overflow = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.viewers = -1  # last count sent


class Hub:
    def __init__(self, broker: Broker, presence: Presence, settings: Settings,
                 metrics: Metrics | None = None) -> None:
        self.broker = broker
        self.presence = presence
        self.settings = settings
        self.metrics = metrics
        self.outbox = Outbox()
        # Big rooms' events: at most one write per member per GREENROOM_WS_COALESCE_MS.
        self.bulk_outbox = Outbox(settings.ws_coalesce_ms / 1000)
        self.rooms: dict[str, Room] = {}
        self.connections: dict[str, Connection] = {}
        self.by_user: dict[uuid.UUID, set[Connection]] = {}
        self.guests_by_ip: dict[str, set[Connection]] = {}
        self._serials: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        # Set by the app: re-checks a room's members when its access rule changes (`room.access`).
        self.access_check: AccessCheck | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start(self._on_publication)
        self._ticker = asyncio.get_running_loop().create_task(self._count_viewers())

    async def close(self) -> None:
        tasks = [t for t in (self._ticker, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hub task failed", exc_info=task.exception())

    # --- connections ---------------------------------------------------------------------

    def attach(self, conn: Connection) -> None:
        self.connections[conn.conn_id] = conn
        if self.metrics is not None:
            self.metrics.ws_opened()

    async def admit_user(self, conn: Connection, user_id: uuid.UUID) -> bool:
        """Count `conn` against its user's socket limit, on every node; False when over it.

        The sockets of a user are a presence channel of their own (`user_sockets`): add this one,
        then count. Two sockets arriving at once at the limit may both be refused, never both
        admitted over it. If presence fails, this node's own count still applies.
        """
        limit = self.settings.ws_max_conns_per_user
        conns = self.by_user.setdefault(user_id, set())
        if conn in conns:
            return True
        if len(conns) >= limit:
            if not conns:
                del self.by_user[user_id]
            return False
        conns.add(conn)
        channel = user_sockets(user_id)
        try:
            await self.presence.add(channel, conn.conn_id, {"user_id": str(user_id)})
            clients, _ = await self.presence.counts(channel)
        except Exception as exc:
            log.warning("presence unavailable for the socket limit of %s: %s", user_id, exc)
            return True
        if clients <= limit and conn.conn_id in self.connections:
            return True
        self._forget_user_socket(conn, user_id)
        with contextlib.suppress(Exception):
            await self.presence.remove(channel, conn.conn_id)
        return False

    def _forget_user_socket(self, conn: Connection, user_id: uuid.UUID) -> None:
        conns = self.by_user.get(user_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.by_user[user_id]

    def admit_guest(self, conn: Connection) -> bool:
        """Count a guest `conn` against its address's per-node limit; False when over it."""
        conns = self.guests_by_ip.setdefault(conn.remote, set())
        if conn not in conns and len(conns) >= self.settings.ws_max_guests_per_ip:
            if not conns:
                del self.guests_by_ip[conn.remote]
            return False
        conns.add(conn)
        return True

    async def detach(self, conn: Connection) -> None:
        """The socket is gone: leave every room, forget the connection."""
        if self.connections.pop(conn.conn_id, None) is None:
            return
        if self.metrics is not None:
            self.metrics.ws_closed()
        guests = self.guests_by_ip.get(conn.remote)
        if guests is not None:
            guests.discard(conn)
            if not guests:
                del self.guests_by_ip[conn.remote]
        uid = conn.user_id
        if uid is not None and conn in self.by_user.get(uid, ()):
            self._forget_user_socket(conn, uid)
            try:
                await self.presence.remove(user_sockets(uid), conn.conn_id)
            except Exception:
                log.exception("presence remove failed for the sockets of %s", uid)  # expires with its TTL
        for name in list(conn.rooms):
            await self.leave(conn, name)

    # --- publishing ----------------------------------------------------------------------

    async def publish(self, room: str, type_: str, data: dict[str, Any], *,
                      idempotency_key: str | None = None) -> int:
        """Append an event to the room's ordered stream; every member on every node receives it.

        Returns the offset. With `idempotency_key`, a repeat within the broker's idempotency
        window publishes nothing and returns the first offset.
        """
        position = await self.broker.publish(room, event_body(type_, data), idempotency_key=idempotency_key)
        return position.offset

    async def publish_volatile(self, room: str, type_: str, data: dict[str, Any]) -> None:
        """Fan out an event without offset or history (the next one supersedes it); may be dropped."""
        await self.broker.publish_volatile(room, event_body(type_, data))

    def _on_publication(self, channel: str, pub: Publication) -> None:
        room = self.rooms.get(channel)
        if room is None:
            return
        if pub.offset == 0:
            self._deliver_volatile(room, text_frame(event_payload(room.name_json, 0, pub.data)))
            return
        if room.pending is not None:
            if len(room.pending) < self.settings.hub_gap_buffer_max:
                room.pending.append(pub)
            else:
                room.overflow = True  # history covers what is not held
            return
        if pub.offset == room.offset + 1:
            self._deliver(room, pub)
        elif pub.offset <= room.offset:
            self._check_epoch(room)  # a duplicate, or a stream recreated under a new epoch
        else:
            room.pending = [pub]
            room.task = self._spawn(self._catch_up(room))

    # --- delivery ------------------------------------------------------------------------

    def _deliver(self, room: Room, pub: Publication) -> None:
        assert pub.offset == room.offset + 1, "room events are delivered in offset order without gaps"
        room.offset = pub.offset
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
        if pub.data.startswith(_EJECTING):
            self._eject(room, pub.data)
        elif pub.data.startswith(_ACCESS_CHANGED):
            self._spawn(self._recheck_access(room))

    def _outbox_for(self, room: Room) -> Outbox | None:
        """Big rooms' events wait for the bulk outbox's interval; None: right after this tick."""
        return self.bulk_outbox if len(room.members) >= self.settings.ws_coalesce_min_members else None

    def _deliver_volatile(self, room: Room, frame: bytes) -> None:
        outbox = self._outbox_for(room)
        for conn, member in room.members.items():
            if member.live:
                conn.enqueue_volatile(frame, outbox)

    def _eject(self, room: Room, body: bytes) -> None:
        try:
            user_id = uuid.UUID(str(orjson.loads(body)["data"]["user_id"]))
        except (ValueError, KeyError, TypeError):
            log.warning("control event without a valid data.user_id in %s", room.name)
            return
        for conn in list(self.by_user.get(user_id, ())):
            removed = self._remove(conn, room.name)
            if removed is not None:
                self._spawn(self._after_leave(conn, *removed))

    async def _recheck_access(self, room: Room) -> None:
        """Remove this node's sockets of the room that its (new) access rule does not admit."""
        check = self.access_check
        if check is None:
            return
        users = {conn.user_id for conn in room.members if conn.user_id is not None}
        try:
            guests, admitted = await check(room.name, users)
        except Exception:
            log.exception("cannot re-check access to %s", room.name)
            return
        for conn in list(room.members):
            keep = guests if conn.user_id is None else conn.user_id in admitted
            if not keep:
                await self.leave(conn, room.name)

    async def _catch_up(self, room: Room) -> None:
        """Deliver what `room.pending` holds in order, filling gaps from history, then go live."""
        limit = self.settings.room_history_max
        while True:
            pending = sorted(room.pending or (), key=lambda p: p.offset)
            if room.overflow or (pending and pending[0].offset > room.offset + 1):
                room.pending, room.overflow = [], False
                try:
                    result = await self.broker.history(room.name, StreamPosition(room.offset, room.epoch), limit)
                except Exception:
                    log.exception("cannot fill a gap in %s from history; members will resync", room.name)
                    self._skip_to(room, pending)
                    continue
                if self.rooms.get(room.name) is not room:
                    return
                if not result.recovered:
                    self._reset(room, result.position)
                    continue
                before = room.offset
                for pub in result.publications:
                    if pub.offset == room.offset + 1:
                        self._deliver(room, pub)
                pending = sorted([*pending, *(room.pending or ())], key=lambda p: p.offset)
                if room.offset == before and pending and pending[0].offset > room.offset + 1:
                    log.error("room %s: history lacks offsets pub/sub delivered; members will resync", room.name)
                    self._skip_to(room, pending)
                    continue
            for i, pub in enumerate(pending):
                if pub.offset <= room.offset:
                    continue
                if pub.offset != room.offset + 1:
                    room.pending = pending[i:]  # another gap: fill it on the next round
                    break
                self._deliver(room, pub)
            else:
                room.pending = None
                return

    def _skip_to(self, room: Room, pending: list[Publication]) -> None:
        """History is unreachable: deliver what arrived, so clients see the gap and resync themselves."""
        for pub in pending:
            if pub.offset > room.offset:
                room.offset = pub.offset - 1
                self._deliver(room, pub)

    def _reset(self, room: Room, position: StreamPosition) -> None:
        """The stream cannot be continued (trimmed past the gap, or a new epoch): tell members to resync."""
        log.warning("room %s: history cannot fill a gap; members must resync", room.name)
        room.offset, room.epoch = position.offset, position.epoch
        payload = event_payload(room.name_json, 0, event_body(
            "room.reset", {"epoch": position.epoch, "offset": position.offset}))
        frame = text_frame(payload)
        for conn, member in room.members.items():
            if member.live:
                conn.enqueue(frame)
            else:
                member.backlog.clear()  # its join reads history under the new position
        room.pending = [pub for pub in room.pending or () if pub.offset > position.offset]

    def _check_epoch(self, room: Room) -> None:
        if room.task is None or room.task.done():
            room.task = self._spawn(self._verify_epoch(room))

    async def _verify_epoch(self, room: Room) -> None:
        position = await self.broker.position(room.name)
        if self.rooms.get(room.name) is room and room.pending is None and position.epoch != room.epoch:
            self._reset(room, position)
            room.pending = None

    # --- membership ----------------------------------------------------------------------

    async def join(self, conn: Connection, name: str, grant: Any, since: StreamPosition | None) -> dict[str, Any]:
        """Add `conn` to the room; return `{recovered, epoch, offset, events}` for the join reply.

        The caller must queue the reply and then call `go_live(conn, name, offset)`.
        """
        room = self.rooms.get(name)
        if room is None:
            room = self.rooms[name] = Room(name)
            room.task = self._spawn(self._open(room))
        member = Membership(grant)
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
        staff = self._staff(conn, member)
        if announce and last and staff is not None:
            await self._announce(room.name, "member.left", staff, member.grant.role)
        if not room.members:
            await self._release(room)

    async def _arrived(self, room: Room, conn: Connection, member: Membership) -> None:
        info = {"user_id": str(conn.user_id) if conn.user_id else None, "role": member.grant.role}
        first = await self.presence.add(room.name, conn.conn_id, info)
        staff = self._staff(conn, member)
        if first and staff is not None:
            await self._announce(room.name, "member.joined", staff, member.grant.role)

    @staticmethod
    def _staff(conn: Connection, member: Membership) -> uuid.UUID | None:
        """The user, when this membership is one that joins and leaves are announced for.

        Presence decides when: a user's first socket in the room on any node announces the join,
        its last one the leave (a user whose last socket was on a node that died leaves the counts
        within the presence TTL, without an announcement).
        """
        if conn.user_id is None or member.grant.role not in STAFF_ROLES:
            return None
        return conn.user_id

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
            if self.rooms.get(room.name) is room:
                del self.rooms[room.name]
            if not isinstance(exc, Exception):
                raise
            return
        room.offset, room.epoch = position.offset, position.epoch
        room.ready.set_result(None)
        await self._catch_up(room)

    async def _release(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
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

    # --- presence ------------------------------------------------------------------------

    async def presence_of(self, name: str, limit: int) -> dict[str, Any]:
        """The room's member count and up to `limit` members, across every node."""
        clients, users = await self.presence.counts(name)
        members = await self.presence.members(name, limit)
        return {"count": users, "connections": clients,
                "members": [{"conn_id": conn_id, **info} for conn_id, info in members.items()]}

    async def _count_viewers(self) -> None:
        interval = self.settings.viewer_count_interval_s
        while True:
            await asyncio.sleep(interval)
            rooms = [room for room in self.rooms.values() if room.members and room.ready.done()]
            if not rooms:
                continue
            try:
                counts = await self.presence.counts_many([room.name for room in rooms])
            except Exception:
                log.exception("presence counts failed for %d rooms", len(rooms))
                continue
            for room in rooms:
                count = counts[room.name][1]
                if count != room.viewers and self.rooms.get(room.name) is room:
                    room.viewers = count
                    body = event_body("room.viewers", {"count": count})
                    self._deliver_volatile(room, text_frame(event_payload(room.name_json, 0, body)))
