"""Rooms: durable records of who may enter a stream's or show's room and with what rights.

A room is `stream:{uuid}` or `show:{uuid}`. Its row holds the host and the access rule
(`public`, `ticket`, `pass`, `private`); `room_grants` say who holds a ticket, pass or invite;
`room_moderators`, `room_bans`, `room_mutes` and `room_settings` hold the staff and the
moderation state. Everything here is PostgreSQL, so a ban is durable and every node sees it.

Rank decides who may moderate whom (`moderation.py`): admin > host (performer) > room moderator >
everyone else. This module is the socket core's gate: `authorize_join` decides who enters a room
and with what `RoomGrant`, `admitted` who may stay after the access rule changed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeAlias

import asyncpg
from aiohttp import web

from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode, forbidden, not_found
from server.kernel.identity import Identity
from signaling.core.connection import Grant, Membership

RoomKind = Literal["stream", "show"]
Access = Literal["public", "ticket", "pass", "private"]
RoomRole = Literal["performer", "moderator", "viewer", "guest"]
GrantSource = Literal["ticket", "pass", "invite"]

ACCESS: tuple[Access, ...] = ("public", "ticket", "pass", "private")
ROOM_RE = re.compile(r"^(stream|show):([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
# Which grants open which access rule; an invite opens every kind of room.
ADMITTED_BY: dict[Access, tuple[GrantSource, ...]] = {
    "public": (),
    "ticket": ("ticket", "invite"),
    "pass": ("pass", "invite"),
    "private": ("invite",),
}
RANK: dict[str, int] = {"guest": 0, "viewer": 0, "moderator": 1, "performer": 2, "admin": 3}

# Domain functions run on the pool or inside a caller's transaction (ticketing creates show rooms).
Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True, slots=True)
class RoomGrant(Grant):
    """What a member may do in a room, decided at join (`authorize_join`)."""

    room: str
    kind: RoomKind
    room_id: uuid.UUID
    can_chat: bool
    can_tip: bool
    can_moderate: bool

    def describe(self) -> dict[str, Any]:
        return {"role": self.role, "can_chat": self.can_chat, "can_tip": self.can_tip,
                "can_moderate": self.can_moderate}


def grant_of(member: Membership | None) -> RoomGrant | None:
    """The rooms feature's grant of a joined room (None when not joined)."""
    if member is None:
        return None
    assert isinstance(member.grant, RoomGrant), "the rooms feature is the gate of every room"
    return member.grant


@dataclass(frozen=True, slots=True)
class Standing:
    """A user's position in a room, read in one query."""

    room: str
    host_id: uuid.UUID
    access: Access
    rank: int
    role: RoomRole
    banned: bool
    muted_until: datetime | None
    granted: frozenset[str]
    slow_mode_s: int
    display_name: str


def parse_room(name: str) -> tuple[RoomKind, uuid.UUID]:
    """Split a room name; a malformed one is NOT_FOUND (it names no room)."""
    m = ROOM_RE.match(name)
    if m is None:
        raise not_found("room")
    kind: RoomKind = "stream" if m.group(1) == "stream" else "show"
    return kind, uuid.UUID(m.group(2))


def room_name(kind: RoomKind, ref_id: uuid.UUID) -> str:
    return f"{kind}:{ref_id}"


async def create_room(db: Db, kind: RoomKind, ref_id: uuid.UUID, host_id: uuid.UUID, access: Access) -> str:
    """Insert the room record (idempotent for the same host); return its name."""
    name = room_name(kind, ref_id)
    row = await db.fetchrow(
        """INSERT INTO rooms (name, kind, ref_id, host_id, access) VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
           RETURNING host_id""",
        name, kind, ref_id, host_id, access)
    assert row is not None
    if row["host_id"] != host_id:
        raise ApiError(ErrorCode.CONFLICT, f"room {name} already exists with another host")
    return name


async def create_show_room(db: Db, host_id: uuid.UUID, show_id: uuid.UUID, access: Access = "ticket") -> str:
    """The room of a ticketed show; ticketing grants seats by inserting `room_grants` rows."""
    return await create_room(db, "show", show_id, host_id, access)


async def set_access(db: Db, room: str, access: Access) -> bool:
    """Change the room's access rule; True when it changed (publish `room.access` after commit)."""
    old = await db.fetchval("SELECT access FROM rooms WHERE name = $1 FOR UPDATE", room)
    if old is None or old == access:
        return False
    await db.execute("UPDATE rooms SET access = $2 WHERE name = $1", room, access)
    return True


async def grant(db: Db, room: str, user_id: uuid.UUID, source: GrantSource,
                expires_at: datetime | None = None) -> None:
    """Let a user in (ticket, pass or invite); re-granting replaces the expiry."""
    await db.execute(
        """INSERT INTO room_grants (room, user_id, source, expires_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (room, user_id, source) DO UPDATE SET expires_at = EXCLUDED.expires_at""",
        room, user_id, source, expires_at)


_STANDING_SQL = """
SELECT r.host_id, r.access,
       u.display_name, u.role AS user_role,
       EXISTS (SELECT 1 FROM room_moderators m WHERE m.room = r.name AND m.user_id = u.id) AS is_mod,
       EXISTS (SELECT 1 FROM room_bans b WHERE b.room = r.name AND b.user_id = u.id
                 AND (b.until IS NULL OR b.until > now())) AS banned,
       (SELECT mu.until FROM room_mutes mu WHERE mu.room = r.name AND mu.user_id = u.id
                 AND mu.until > now()) AS muted_until,
       ARRAY(SELECT g.source FROM room_grants g WHERE g.room = r.name AND g.user_id = u.id
                 AND (g.expires_at IS NULL OR g.expires_at > now())) AS granted,
       COALESCE((SELECT s.slow_mode_s FROM room_settings s WHERE s.room = r.name), 0) AS slow_mode_s
FROM rooms r LEFT JOIN users u ON u.id = $2
WHERE r.name = $1
"""


async def standing(db: Db, room: str, user_id: uuid.UUID | None) -> tuple[Standing, bool]:
    """The user's standing in the room (guest when `user_id` is None) and whether the user exists.

    NOT_FOUND when the room does not exist or its name is malformed.
    """
    parse_room(room)
    row = await db.fetchrow(_STANDING_SQL, room, user_id)
    if row is None:
        raise not_found("room")
    exists = row["user_role"] is not None
    role: RoomRole
    if not exists:
        role, rank = "guest", 0
    elif row["host_id"] == user_id:
        role, rank = "performer", RANK["performer"]
    elif row["is_mod"]:
        role, rank = "moderator", RANK["moderator"]
    else:
        role, rank = "viewer", 0
    if exists and row["user_role"] == "admin":
        # An admin counts as staff in every room it does not host.
        rank = RANK["admin"]
        if role != "performer":
            role = "moderator"
    return Standing(room=room, host_id=row["host_id"], access=row["access"], rank=rank, role=role,
                    banned=row["banned"], muted_until=row["muted_until"], granted=frozenset(row["granted"]),
                    slow_mode_s=row["slow_mode_s"], display_name=row["display_name"] or ""), exists


def admits(s: Standing) -> bool:
    """Whether the access rule lets this standing in (staff always; others per grants)."""
    if s.access == "public" or s.rank >= RANK["moderator"]:
        return True
    return any(src in s.granted for src in ADMITTED_BY[s.access])


# `admits` for many users at once; a grant of the access rule's own name or an invite opens the
# room, as ADMITTED_BY says (tests/signaling/test_room_access_change.py holds the two together).
_ADMITTED_SQL = """
SELECT r.access = 'public', ARRAY(
    SELECT u.id FROM users u WHERE u.id = ANY($2::uuid[]) AND (
        r.access = 'public' OR u.id = r.host_id OR u.role = 'admin'
        OR EXISTS (SELECT 1 FROM room_moderators m WHERE m.room = r.name AND m.user_id = u.id)
        OR EXISTS (SELECT 1 FROM room_grants g WHERE g.room = r.name AND g.user_id = u.id
                     AND (g.source = 'invite' OR g.source = r.access)
                     AND (g.expires_at IS NULL OR g.expires_at > now()))))
FROM rooms r WHERE r.name = $1
"""


async def admitted(app: web.Application, room: str, user_ids: Collection[uuid.UUID]) -> tuple[bool, set[uuid.UUID]]:
    """Whether guests may stay in the room, and which of these users its access rule lets in now.

    One query for a whole room's members (the hub re-checks its sockets when the rule changes);
    bans aside, which eject by themselves. An unknown room admits nobody.
    """
    row = await app[keys.DB].fetchrow(_ADMITTED_SQL, room, list(user_ids))
    if row is None:
        return False, set()
    return bool(row[0]), set(row[1])


async def authorize_join(app: web.Application, identity: Identity | None, room: str) -> RoomGrant:
    """Decide whether `identity` (None: a guest) may join `room`, and with what rights.

    Raises NOT_FOUND (unknown or malformed room), BANNED, PERMISSION_DENIED (access rule not met).
    """
    kind, room_id = parse_room(room)
    s, exists = await standing(app[keys.DB], room, identity.user_id if identity else None)
    if identity is not None and not exists:
        raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED, "this account no longer exists")
    if s.banned and s.rank < RANK["performer"]:
        raise ApiError(ErrorCode.BANNED, "you are banned from this room")
    if not admits(s):
        if identity is None:
            raise forbidden(f"this room needs a {s.access}; sign in with an account that holds one")
        raise forbidden("this room is private" if s.access == "private" else f"this room needs a {s.access}")
    signed_in = identity is not None
    # Staff joins and leaves are announced (`member.joined`); viewers are only counted.
    return RoomGrant(role=s.role, announce=s.role in ("performer", "moderator"), room=room, kind=kind, room_id=room_id,
                     can_chat=signed_in and s.muted_until is None,
                     can_tip=signed_in and s.role != "performer",
                     can_moderate=s.rank >= RANK["moderator"])
