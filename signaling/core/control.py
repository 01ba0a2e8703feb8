"""The control channel: typed actions one node asks of every node (Centrifuge's `handleControl`).

Room streams carry room events only; what must happen to a user or a connection wherever it is
goes here: remove a user from a room (kick, ban), disconnect a user (suspension), deliver an event
to one user's sockets or to one connection (a seat hold confirmation, a WebRTC offer), re-check a
room's members against its new access rule.

Contract:
- An action is published once on the broker's control channel (`CONTROL_CHANNEL`, volatile: no
  offset, no history) and applied by every node, the sender included, when it arrives. `send`
  returns once the broker accepted it; a node that is not connected to the broker at that moment
  misses it (at most once, like live room events). Durable state (bans, suspensions, access rules
  in PostgreSQL) is what a missed action falls back on: a banned user's next join is refused.
- Actions from one node arrive at every node in the order they were sent (one broker connection
  each way); relative to room events they keep the order they were sent in on Redis, so a kick's
  `member.kicked` event (published first) reaches the room before its removal.
- A malformed action is logged and dropped; applying an action never raises into the broker.
- While the broker cannot be reached, `send` applies the action to this node only (logged): the
  node keeps serving what it can, and durable state covers the other nodes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from server.kernel import keys
from signaling.core.broker import Broker, BrokerUnavailable, Publication
from signaling.core.hub import Hub

log = logging.getLogger("greenroom.control")

CONTROL_CHANNEL = "gr:control"  # not a room name (those are `kind:uuid`)
ACTION_MAX_BYTES = 65536  # a delivered event is a signaling message, not a file


@dataclass(frozen=True, slots=True)
class RemoveMember:
    """Take the user's sockets out of the room (they stay open; a rejoin is decided afresh)."""

    user_id: uuid.UUID
    room: str


@dataclass(frozen=True, slots=True)
class DisconnectUser:
    """Close every socket of the user with `code` (a `protocol.Close` value) and `reason`.

    With `revoke_before` (unix seconds), every node first refuses the user's access tokens issued
    before it (the account was suspended or its role changed): a reconnect or an `auth` with the
    old token fails at once on any node, not after the next key reload.
    """

    user_id: uuid.UUID
    code: int
    reason: str
    revoke_before: float | None = None


@dataclass(frozen=True, slots=True)
class DeliverEvent:
    """Push `{op: event, room?, type, data}` (no offset) to one user's sockets or one connection.

    With `room`, only sockets that joined that room receive it.
    """

    type: str
    data: dict[str, Any]
    user_id: uuid.UUID | None = None
    conn_id: str | None = None
    room: str | None = None


@dataclass(frozen=True, slots=True)
class RecheckAccess:
    """The room's access rule changed: remove the members it no longer admits."""

    room: str


Action = RemoveMember | DisconnectUser | DeliverEvent | RecheckAccess


def encode(action: Action) -> bytes:
    match action:
        case RemoveMember(user_id, room):
            body: dict[str, Any] = {"a": "remove", "u": str(user_id), "r": room}
        case DisconnectUser(user_id, code, reason, revoke_before):
            body = {"a": "disconnect", "u": str(user_id), "c": code, "m": reason, "v": revoke_before}
        case DeliverEvent(type_, data, user_id, conn_id, room):
            if (user_id is None) == (conn_id is None):
                raise ValueError("deliver to exactly one of user_id or conn_id")
            body = {"a": "deliver", "t": type_, "d": data, "u": str(user_id) if user_id else None,
                    "c": conn_id, "r": room}
        case RecheckAccess(room):
            body = {"a": "recheck", "r": room}
    payload = orjson.dumps(body)
    if len(payload) > ACTION_MAX_BYTES:
        raise ValueError(f"control action over {ACTION_MAX_BYTES} bytes")
    return payload


def decode(payload: bytes) -> Action:
    """The action in `payload`; ValueError (or KeyError/TypeError) when it is not one."""
    body = orjson.loads(payload)
    kind = body["a"]
    if kind == "remove":
        return RemoveMember(uuid.UUID(body["u"]), str(body["r"]))
    if kind == "disconnect":
        revoke = body.get("v")
        return DisconnectUser(uuid.UUID(body["u"]), int(body["c"]), str(body["m"]),
                              float(revoke) if revoke is not None else None)
    if kind == "deliver":
        data = body["d"]
        if not isinstance(data, dict):
            raise TypeError("deliver data must be an object")
        user = uuid.UUID(body["u"]) if body["u"] is not None else None
        conn = str(body["c"]) if body["c"] is not None else None
        room = str(body["r"]) if body["r"] is not None else None
        return DeliverEvent(str(body["t"]), data, user, conn, room)
    if kind == "recheck":
        return RecheckAccess(str(body["r"]))
    raise ValueError(f"unknown control action {kind!r}")


class Control:
    """Sends actions to every node and applies the ones that arrive to this node's hub."""

    def __init__(self, broker: Broker, hub: Hub) -> None:
        self._broker = broker
        self._hub = hub
        self.applied = 0  # actions applied on this node (observability, tests)

    async def start(self) -> None:
        """Listen on the control channel (after the hub started the broker)."""
        self._hub.listen(CONTROL_CHANNEL, self._received)
        await self._broker.subscribe(CONTROL_CHANNEL)

    def close(self) -> None:
        """Stop applying actions (the broker's own close ends the subscription)."""
        self._hub.listen(CONTROL_CHANNEL, None)

    async def send(self, action: Action) -> None:
        payload = encode(action)
        try:
            await self._broker.publish_volatile(CONTROL_CHANNEL, payload)
        except BrokerUnavailable:
            log.warning("broker unavailable: control action applied on this node only",
                        extra={"action": type(action).__name__})
            self._received(Publication(0, payload))

    async def remove(self, user_id: uuid.UUID, room: str) -> None:
        await self.send(RemoveMember(user_id, room))

    async def disconnect(self, user_id: uuid.UUID, code: int, reason: str, *,
                         revoke_before: float | None = None) -> None:
        await self.send(DisconnectUser(user_id, code, reason, revoke_before))

    async def deliver_to_user(self, user_id: uuid.UUID, type_: str, data: dict[str, Any], *,
                              room: str | None = None) -> None:
        await self.send(DeliverEvent(type_, data, user_id=user_id, room=room))

    async def deliver_to_connection(self, conn_id: str, type_: str, data: dict[str, Any], *,
                                    room: str | None = None) -> None:
        await self.send(DeliverEvent(type_, data, conn_id=conn_id, room=room))

    async def recheck_access(self, room: str) -> None:
        await self.send(RecheckAccess(room))

    def _received(self, pub: Publication) -> None:
        try:
            action = decode(pub.data)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            log.error("malformed control action dropped: %r", pub.data[:200])
            return
        self.applied += 1
        match action:
            case RemoveMember(user_id, room):
                self._hub.remove_user(user_id, room)
            case DisconnectUser(user_id, code, reason, revoke_before):
                if revoke_before is not None:
                    self._hub.app[keys.AUTH].revoke_user_tokens(user_id, revoke_before)
                self._hub.disconnect_user(user_id, code, reason)
            case DeliverEvent(type_, data, user_id, conn_id, room):
                self._hub.deliver_direct(type_, data, user_id=user_id, conn_id=conn_id, room=room)
            case RecheckAccess(room):
                self._hub.recheck_access(room)
