"""A room's ordered stream on this node: offsets delivered in order, gaps repaired, epochs reset.

Pub/sub delivery is at most once, so each room keeps the last offset it delivered. The next offset
is delivered at once; an older one is a duplicate (dropped, but it may reveal a stream recreated
under a new epoch); a jump means the node missed publications: live ones are held (at most
`hub_gap_buffer_max`) while the gap is filled from `broker.history`, then delivered in order.
Members therefore see each room's events without gap or duplicate, in offset order. If the gap
cannot be filled (history trimmed, or a new epoch) members get `room.reset` with the new position
and must rejoin with `since` (which answers `recovered: false`) and refetch the room's state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from server.kernel.settings import Settings
from signaling.core.broker import Broker, Publication, StreamPosition
from signaling.core.connection import Connection, Membership

log = logging.getLogger("greenroom.hub")


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


FanOut = Callable[[Room, Publication], None]
Reset = Callable[[Room, StreamPosition], None]
Spawn = Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]


class RoomStream:
    """The ordering rules above, for every room of one hub.

    `fan_out(room, pub)` hands one in-order publication to the room's members; `reset(room, position)`
    tells them the stream cannot be continued; `current(room)` says whether the room is still the
    hub's (a released room's late history reads are dropped).
    """

    def __init__(self, broker: Broker, settings: Settings, *, fan_out: FanOut, reset: Reset, spawn: Spawn,
                 current: Callable[[Room], bool]) -> None:
        self._broker = broker
        self._settings = settings
        self._fan_out = fan_out
        self._reset_members = reset
        self._spawn = spawn
        self._current = current

    def received(self, room: Room, pub: Publication) -> None:
        """A publication with history (offset > 0) arrived from the broker."""
        assert pub.offset > 0, "volatile publications are not part of the stream"
        if room.pending is not None:
            if len(room.pending) < self._settings.hub_gap_buffer_max:
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
            room.task = self._spawn(self.catch_up(room))

    def opened(self, room: Room, position: StreamPosition) -> None:
        """The room's subscription is live and its position read: joins may proceed."""
        room.offset, room.epoch = position.offset, position.epoch
        room.ready.set_result(None)

    def _deliver(self, room: Room, pub: Publication) -> None:
        assert pub.offset == room.offset + 1, "room events are delivered in offset order without gaps"
        room.offset = pub.offset
        self._fan_out(room, pub)

    async def catch_up(self, room: Room) -> None:
        """Deliver what `room.pending` holds in order, filling gaps from history, then go live."""
        limit = self._settings.room_history_max
        while True:
            pending = sorted(room.pending or (), key=lambda p: p.offset)
            if room.overflow or (pending and pending[0].offset > room.offset + 1):
                room.pending, room.overflow = [], False
                try:
                    result = await self._broker.history(room.name, StreamPosition(room.offset, room.epoch), limit)
                except Exception:
                    log.exception("cannot fill a gap in %s from history; members will resync", room.name)
                    self._skip_to(room, pending)
                    continue
                if not self._current(room):
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
        self._reset_members(room, position)
        room.pending = [pub for pub in room.pending or () if pub.offset > position.offset]

    def _check_epoch(self, room: Room) -> None:
        if room.task is None or room.task.done():
            room.task = self._spawn(self._verify_epoch(room))

    async def _verify_epoch(self, room: Room) -> None:
        position = await self._broker.position(room.name)
        if self._current(room) and room.pending is None and position.epoch != room.epoch:
            self._reset(room, position)
            room.pending = None
