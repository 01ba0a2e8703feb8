"""Viewer counts: the volatile `room.viewers` event of every room this node serves.

Counts are distinct users (each guest counts as one) from presence, so they cover every node;
sent at most once per `viewer_count_interval_s` per room and only when the count changed, read
for all rooms of the node in one pipelined presence call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from signaling.core.frames import text_frame
from signaling.core.hub import Hub
from signaling.core.protocol import event_body, event_payload

log = logging.getLogger("greenroom.hub")


class ViewerCounts:
    def __init__(self, hub: Hub, interval_s: float) -> None:
        assert interval_s > 0
        self._hub = hub
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        assert self._task is None, "started twice"
        self._task = asyncio.create_task(self._run(), name="viewer-counts")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.tick()

    async def tick(self) -> None:
        """Send the changed counts of every room with members on this node."""
        hub = self._hub
        rooms = [room for room in hub.rooms.values() if room.members and room.ready.done()]
        if not rooms:
            return
        try:
            counts = await hub.presence.counts_many([room.name for room in rooms])
        except Exception:
            log.exception("presence counts failed for %d rooms", len(rooms))
            return
        for room in rooms:
            count = counts[room.name][1]
            if count != room.viewers and hub.rooms.get(room.name) is room:
                room.viewers = count
                body = event_body("room.viewers", {"count": count})
                hub.deliver_volatile(room, text_frame(event_payload(room.name_json, 0, body)))
