"""Rooms: durable records of who may enter a stream's or show's room and with what rights.

A room is `stream:{uuid}` or `show:{uuid}`. Its row holds the host and the access rule
(`public`, `ticket`, `pass`, `private`); `room_grants` say who holds a ticket, pass or invite;
`room_moderators`, `room_bans`, `room_mutes` and `room_settings` hold the staff and the
moderation state. Everything here is PostgreSQL, so a ban is durable and every node sees it.

Rank decides who may moderate whom: admin > host (performer) > room moderator > everyone else.
An actor needs a rank of at least moderator and strictly above the target's.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeAlias

import asyncpg
from aiohttp import web

from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode, forbidden, not_found
from server.kernel.identity import Identity
from signaling.core import keys as socket_keys

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


@dataclass(frozen=True)
class RoomGrant:
    """What a member may do in a room, decided at join."""

    room: str
    kind: RoomKind
    room_id: uuid.UUID
    role: RoomRole
    can_chat: bool
    can_tip: bool
    can_moderate: bool

    @property
    def announce(self) -> bool:
        """Staff joins and leaves are announced (`member.joined`); viewers are only counted."""
        return self.role in ("performer", "moderator")


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


async def admitted(db: Db, room: str, user_ids: Collection[uuid.UUID]) -> tuple[bool, set[uuid.UUID]]:
    """Whether guests may stay in the room, and which of these users its access rule lets in now.

    One query for a whole room's members (the hub re-checks its sockets when the rule changes);
    bans aside, which eject by themselves. An unknown room admits nobody.
    """
    row = await db.fetchrow(_ADMITTED_SQL, room, list(user_ids))
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
    return RoomGrant(room=room, kind=kind, room_id=room_id, role=s.role,
                     can_chat=signed_in and s.muted_until is None,
                     can_tip=signed_in and s.role != "performer",
                     can_moderate=s.rank >= RANK["moderator"])


# --- moderation -------------------------------------------------------------------------------

async def _require_staff(db: Db, room: str, actor: Identity, doing: str) -> None:
    me, _ = await standing(db, room, actor.user_id)
    if me.rank < RANK["moderator"]:
        raise forbidden(f"only the performer or a moderator of this room may {doing}")


async def _lift(app: web.Application, actor: Identity, room: str, target_id: uuid.UUID,
                table: Literal["room_bans", "room_mutes"], what: str) -> None:
    """Remove a ban or a mute (staff only); NOT_FOUND when there was none."""
    db = app[keys.DB]
    await _require_staff(db, room, actor, "do this")
    removed = await db.fetchval(f"DELETE FROM {table} WHERE room = $1 AND user_id = $2 RETURNING true",
                                room, target_id)
    if not removed:
        raise not_found(what)

async def _actor_and_target(db: Db, room: str, actor: Identity, target_id: uuid.UUID,
                            *, min_rank: int = RANK["moderator"]) -> tuple[Standing, Standing]:
    """Check that `actor` may act on `target_id` in `room`; return both standings."""
    if actor.user_id == target_id:
        raise ApiError(ErrorCode.BAD_REQUEST, "you cannot do this to yourself")
    me, _ = await standing(db, room, actor.user_id)
    if me.rank < min_rank:
        raise forbidden("only the performer or a moderator of this room may do this"
                        if min_rank <= RANK["moderator"] else "only the performer of this room may do this")
    them, exists = await standing(db, room, target_id)
    if not exists:
        raise not_found("user")
    if them.host_id == target_id:
        raise forbidden("the performer of a room cannot be moderated in it")
    if them.rank >= me.rank:
        raise forbidden("you may not act on someone of equal or higher rank in this room")
    return me, them


async def _publish(app: web.Application, room: str, type_: str, data: dict[str, Any]) -> int:
    offset: int = await app[socket_keys.HUB].publish(room, type_, data)
    return offset


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


async def add_moderator(app: web.Application, actor: Identity, room: str, target_id: uuid.UUID) -> dict[str, Any]:
    """Host or admin appoints a room moderator (idempotent)."""
    settings = app[keys.SETTINGS]
    db = app[keys.DB]
    async with db.acquire() as conn, conn.transaction():
        # Serialize appointments per room so the cap holds under concurrency.
        await conn.execute("SELECT 1 FROM rooms WHERE name = $1 FOR UPDATE", room)
        await _actor_and_target(conn, room, actor, target_id, min_rank=RANK["performer"])
        count = await conn.fetchval("SELECT count(*) FROM room_moderators WHERE room = $1", room)
        if count >= settings.room_moderators_max:
            raise ApiError(ErrorCode.CONFLICT, f"a room has at most {settings.room_moderators_max} moderators")
        await conn.execute(
            """INSERT INTO room_moderators (room, user_id, added_by) VALUES ($1, $2, $3)
               ON CONFLICT (room, user_id) DO NOTHING""", room, target_id, actor.user_id)
    data = {"user_id": str(target_id), "role": "moderator"}
    await _publish(app, room, "member.role", data)
    return data


async def remove_moderator(app: web.Application, actor: Identity, room: str,
                           target_id: uuid.UUID) -> dict[str, Any]:
    db = app[keys.DB]
    me, _ = await standing(db, room, actor.user_id)
    if me.rank < RANK["performer"]:
        raise forbidden("only the performer of this room may do this")
    removed = await db.fetchval("DELETE FROM room_moderators WHERE room = $1 AND user_id = $2 RETURNING true",
                                room, target_id)
    if not removed:
        raise not_found("moderator")
    data = {"user_id": str(target_id), "role": "viewer"}
    await _publish(app, room, "member.role", data)
    return data


# Longest ban reason kept; both adapters (REST `BanIn`, socket `room.ban`) declare this one.
BAN_REASON_MAX = 500


def _until(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.now(UTC) + timedelta(seconds=seconds)


async def ban(app: web.Application, actor: Identity, room: str, target_id: uuid.UUID, reason: str,
              duration_s: int | None) -> dict[str, Any]:
    """Ban durably (until lifted or `duration_s` passes) and remove the user from the room on every node.

    `reason` is stored trimmed, at most BAN_REASON_MAX characters (REST and socket declare the same).
    """
    reason = reason.strip()
    if len(reason) > BAN_REASON_MAX:
        raise ApiError(ErrorCode.VALIDATION_ERROR, f"reason must be at most {BAN_REASON_MAX} characters",
                       details={"errors": [{"field": "reason", "issue": f"at most {BAN_REASON_MAX} characters"}]})
    settings = app[keys.SETTINGS]
    if duration_s is not None and not 1 <= duration_s <= settings.room_ban_max_s:
        raise ApiError(ErrorCode.VALIDATION_ERROR,
                       f"duration_s must be 1-{settings.room_ban_max_s} (or omitted: permanent)")
    db = app[keys.DB]
    until = _until(duration_s)
    async with db.acquire() as conn, conn.transaction():
        await _actor_and_target(conn, room, actor, target_id)
        await conn.execute(
            """INSERT INTO room_bans (room, user_id, until, reason, banned_by) VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (room, user_id) DO UPDATE
                  SET until = EXCLUDED.until, reason = EXCLUDED.reason, banned_by = EXCLUDED.banned_by,
                      created_at = now()""",
            room, target_id, until, reason, actor.user_id)
        # A banned moderator is no longer staff when the ban lifts.
        await conn.execute("DELETE FROM room_moderators WHERE room = $1 AND user_id = $2", room, target_id)
    data = {"user_id": str(target_id), "until": _iso(until)}
    await _publish(app, room, "member.banned", data)
    return {**data, "reason": reason}


async def unban(app: web.Application, actor: Identity, room: str, target_id: uuid.UUID) -> dict[str, Any]:
    await _lift(app, actor, room, target_id, "room_bans", "ban")
    return {"user_id": str(target_id), "unbanned": True}


async def list_bans(app: web.Application, actor: Identity, room: str, page: int,
                    per_page: int) -> tuple[list[dict[str, Any]], int]:
    db = app[keys.DB]
    await _require_staff(db, room, actor, "see its bans")
    rows = await db.fetch(
        """SELECT b.user_id, u.display_name, b.until, b.reason, b.banned_by, b.created_at,
                  count(*) OVER () AS total
           FROM room_bans b JOIN users u ON u.id = b.user_id
           WHERE b.room = $1 AND (b.until IS NULL OR b.until > now())
           ORDER BY b.created_at DESC, b.user_id LIMIT $2 OFFSET $3""",
        room, per_page, (page - 1) * per_page)
    total = rows[0]["total"] if rows else 0
    if not rows and page > 1:
        total = await db.fetchval(
            "SELECT count(*) FROM room_bans WHERE room = $1 AND (until IS NULL OR until > now())", room)
    items = [{"user_id": str(r["user_id"]), "display_name": r["display_name"], "until": _iso(r["until"]),
              "reason": r["reason"], "banned_by": str(r["banned_by"]) if r["banned_by"] else None,
              "created_at": r["created_at"].isoformat()} for r in rows]
    return items, total


async def mute(app: web.Application, actor: Identity, room: str, target_id: uuid.UUID,
               duration_s: int) -> dict[str, Any]:
    settings = app[keys.SETTINGS]
    if not 1 <= duration_s <= settings.room_mute_max_s:
        raise ApiError(ErrorCode.VALIDATION_ERROR, f"duration_s must be 1-{settings.room_mute_max_s}")
    db = app[keys.DB]
    until = _until(duration_s)
    async with db.acquire() as conn, conn.transaction():
        await _actor_and_target(conn, room, actor, target_id)
        await conn.execute(
            """INSERT INTO room_mutes (room, user_id, until, muted_by) VALUES ($1, $2, $3, $4)
               ON CONFLICT (room, user_id) DO UPDATE
                  SET until = EXCLUDED.until, muted_by = EXCLUDED.muted_by, created_at = now()""",
            room, target_id, until, actor.user_id)
    data = {"user_id": str(target_id), "until": _iso(until)}
    await _publish(app, room, "member.muted", data)
    return data


async def unmute(app: web.Application, actor: Identity, room: str, target_id: uuid.UUID) -> dict[str, Any]:
    await _lift(app, actor, room, target_id, "room_mutes", "mute")
    data = {"user_id": str(target_id), "until": None}
    await _publish(app, room, "member.muted", data)
    return data


async def kick(app: web.Application, actor: Identity, room: str, target_id: uuid.UUID) -> dict[str, Any]:
    """Remove the user's connections from the room on every node; they may rejoin (unlike a ban)."""
    await _actor_and_target(app[keys.DB], room, actor, target_id)
    data = {"user_id": str(target_id)}
    await _publish(app, room, "member.kicked", data)
    return data


async def set_slow_mode(app: web.Application, actor: Identity, room: str, seconds: int) -> dict[str, Any]:
    settings = app[keys.SETTINGS]
    if not 0 <= seconds <= settings.room_slow_mode_max_s:
        raise ApiError(ErrorCode.VALIDATION_ERROR,
                       f"seconds must be 0-{settings.room_slow_mode_max_s} (0 turns it off)")
    db = app[keys.DB]
    await _require_staff(db, room, actor, "set slow mode")
    await db.execute(
        """INSERT INTO room_settings (room, slow_mode_s) VALUES ($1, $2)
           ON CONFLICT (room) DO UPDATE SET slow_mode_s = EXCLUDED.slow_mode_s""", room, seconds)
    data = {"seconds": seconds}
    await _publish(app, room, "room.slow_mode", data)
    return data
