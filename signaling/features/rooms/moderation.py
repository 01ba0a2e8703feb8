"""Room moderation: moderators, bans, mutes, kicks and slow mode; the REST routes and socket ops call these.

Rank decides who may moderate whom (`access.RANK`): an actor needs a rank of at least moderator
and strictly above the target's. Kicks and bans publish `member.kicked` / `member.banned` to the
room and then ask every node (the control channel) to remove the user's sockets from it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import web

from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode, forbidden, not_found
from server.kernel.identity import Identity
from signaling.core import keys as socket_keys
from signaling.features.rooms.access import RANK, Db, Standing, standing


async def _require_staff(db: Db, room: str, actor: Identity, doing: str) -> None:
    me, _ = await standing(db, room, actor.user_id)
    if me.rank < RANK["moderator"]:
        raise forbidden(f"only the performer or a moderator of this room may {doing}")


_PLACED_BY = {"room_bans": "banned_by", "room_mutes": "muted_by"}


async def _lift(app: web.Application, actor: Identity, room: str, target_id: uuid.UUID,
                table: Literal["room_bans", "room_mutes"], what: str) -> None:
    """Remove a ban or a mute; NOT_FOUND when there was none.

    The same rank rule as placing it, both ways: the actor must outrank the target (so nobody lifts
    their own mute), and may undo only what they placed themselves or what someone they outrank
    placed (a moderator cannot lift the host's or an admin's ban).
    """
    async with app[keys.DB].acquire() as conn, conn.transaction():
        me, _ = await _actor_and_target(conn, room, actor, target_id)
        placed_by = await conn.fetchrow(
            f"SELECT {_PLACED_BY[table]} AS who FROM {table} WHERE room = $1 AND user_id = $2 FOR UPDATE",
            room, target_id)
        if placed_by is None:
            raise not_found(what)
        placer = placed_by["who"]
        if placer is not None and placer != actor.user_id:
            them, _ = await standing(conn, room, placer)
            if them.rank >= me.rank:
                raise forbidden(f"only whoever placed this {what}, or someone who outranks them, may lift it")
        await conn.execute(f"DELETE FROM {table} WHERE room = $1 AND user_id = $2", room, target_id)

async def _actor_and_target(db: Db, room: str, actor: Identity, target_id: uuid.UUID,
                            *, min_rank: int = RANK["moderator"]) -> tuple[Standing, Standing]:
    """Check that `actor` may act on `target_id` in `room`; return both standings."""
    if actor.user_id == target_id:  # the rank rule's own case (nobody outranks themselves): a 403 like it
        raise forbidden("you may not do this to yourself")
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


async def _publish(app: web.Application, room: str, type_: str, data: dict[str, Any]) -> None:
    """The change is committed: its event goes out now, or once the broker is back."""
    await app[socket_keys.HUB].publish_eventually(room, type_, data)


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
    await app[socket_keys.CONTROL].remove(target_id, room)
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
    await app[socket_keys.CONTROL].remove(target_id, room)
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
