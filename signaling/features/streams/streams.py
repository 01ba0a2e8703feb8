"""Streams: a performer's live broadcast, its lifecycle (created → live → ended) and its room.

Creating a stream creates its room `stream:{id}` in the same transaction, so the two never
diverge. Going live and ending are single conditional UPDATEs (a concurrent second start or end
finds nothing to change), then `stream.started` / `stream.ended` is published to the room.
`viewer_count` is read from presence while live; `total_tokens_received` is kept by the ledger.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
from aiohttp import web

from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode, forbidden, not_found
from server.kernel.identity import Identity
from server.kernel.settings import Settings
from signaling.core import keys as socket_keys
from signaling.features.rooms import access as rooms
from signaling.features.rooms.access import Access

Status = Literal["created", "live", "ended"]
SORTS: dict[str, str] = {
    "-started_at": "s.started_at DESC NULLS LAST, s.id",
    "started_at": "s.started_at ASC NULLS LAST, s.id",
    "-created_at": "s.created_at DESC, s.id",
    "created_at": "s.created_at ASC, s.id",
    "-total_tokens_received": "s.total_tokens_received DESC, s.id",
    "title": "lower(s.title), s.id",
}
EDITABLE = ("title", "description", "category", "tags", "access")
# Field limits; the REST schema declares the same numbers (so the document states them).
TITLE_MAX = 200
DESCRIPTION_MAX = 5000
CATEGORY_MAX = 64
TAGS_MAX = 20
TAG_MAX = 32
# Two-key advisory lock namespace: serializes one host's stream creations (the open-streams cap).
_HOST_LOCK_NS = 0x5354

_SELECT = """SELECT s.*, u.display_name AS host_name FROM streams s JOIN users u ON u.id = s.host_id"""


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    total: int


# --- field rules: every caller (REST, demo seeding) gets the same normalisation and limits ---

def normalize_category(value: str | None) -> str | None:
    """Categories compare case-insensitively and blank means none: stored (and filtered) trimmed, lower-case."""
    if value is None:
        return None
    return value.strip().lower() or None


def _title(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    title = value.strip()
    if not title:
        raise ValueError("title cannot be blank")
    if len(title) > TITLE_MAX:
        raise ValueError(f"must be at most {TITLE_MAX} characters")
    return title


def _description(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if len(value) > DESCRIPTION_MAX:
        raise ValueError(f"must be at most {DESCRIPTION_MAX} characters")
    return value


def _category(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError("must be a string or null")
    if value is not None and len(value.strip()) > CATEGORY_MAX:
        raise ValueError(f"must be at most {CATEGORY_MAX} characters")
    return normalize_category(value)


def _tags(value: Any) -> list[str]:
    """Trimmed, lower-case, each once, in the order given."""
    if not isinstance(value, list | tuple) or not all(isinstance(t, str) for t in value):
        raise ValueError("must be a list of strings")
    if len(value) > TAGS_MAX:
        raise ValueError(f"at most {TAGS_MAX} tags")
    seen: dict[str, None] = {}
    for tag in value:
        clean = tag.strip().lower()
        if not clean or len(clean) > TAG_MAX:
            raise ValueError(f"each tag must be 1-{TAG_MAX} non-blank characters")
        seen.setdefault(clean, None)
    return list(seen)


def _access(value: Any) -> Access:
    if value not in rooms.ACCESS:
        raise ValueError(f"must be one of {', '.join(rooms.ACCESS)}")
    access: Access = value
    return access


_RULES = {"title": _title, "description": _description, "category": _category, "tags": _tags, "access": _access}


def checked_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Stream fields as stored, or VALIDATION_ERROR naming every bad one (the error shape of a schema's)."""
    out: dict[str, Any] = {}
    errors: list[dict[str, str]] = []
    for name, value in fields.items():
        try:
            if value is None and name != "category":
                raise ValueError("cannot be null")
            out[name] = _RULES[name](value)
        except ValueError as exc:
            errors.append({"field": name, "issue": str(exc)})
    if errors:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "invalid stream fields", details={"errors": errors})
    return out


def room_of(stream_id: uuid.UUID) -> str:
    return rooms.room_name("stream", stream_id)


async def viewer_count(app: web.Application, room: str) -> int:
    """Distinct people in the room on every node (presence); a user with two tabs counts once,
    each guest socket counts as one."""
    _, users = await app[socket_keys.PRESENCE].counts(room)
    return users


async def _shape(app: web.Application, row: asyncpg.Record) -> dict[str, Any]:
    live = row["status"] == "live"
    room = room_of(row["id"])
    return {
        "id": str(row["id"]),
        "host_id": str(row["host_id"]),
        "host_name": row["host_name"],
        "title": row["title"],
        "description": row["description"],
        "category": row["category"],
        "tags": list(row["tags"]),
        "status": row["status"],
        "access": row["access"],
        "viewer_count": await viewer_count(app, room) if live else 0,
        "total_tokens_received": row["total_tokens_received"],
        "room": room,
        "started_at": _iso(row["started_at"]),
        "ended_at": _iso(row["ended_at"]),
        "created_at": row["created_at"].isoformat(),
    }


def _iso(t: Any) -> str | None:
    return t.isoformat() if t is not None else None


def _is_host_or_admin(identity: Identity | None, row: asyncpg.Record) -> bool:
    return identity is not None and (identity.is_admin or identity.user_id == row["host_id"])


async def _load(app: web.Application, stream_id: uuid.UUID, identity: Identity | None) -> asyncpg.Record:
    """The stream row, or NOT_FOUND; a private stream is NOT_FOUND to whoever may not enter it."""
    row = await app[keys.DB].fetchrow(_SELECT + " WHERE s.id = $1", stream_id)
    if row is None:
        raise not_found("stream")
    if row["access"] == "private" and not _is_host_or_admin(identity, row):
        s, _ = await rooms.standing(app[keys.DB], room_of(stream_id), identity.user_id if identity else None)
        if not rooms.admits(s):
            raise not_found("stream")
    return row


async def create_stream(app: web.Application, host: Identity, *, title: str, description: str = "",
                        category: str | None = None, tags: Sequence[str] = (),
                        access: Access = "public", stream_id: uuid.UUID | None = None) -> dict[str, Any]:
    """A new stream of `host` (and its room); fields per `checked_fields`, at most
    `streams_open_max_per_host` not yet ended (CONFLICT beyond).

    `stream_id` (a keyed request's, derived from its key): when `host` already has that stream,
    an earlier run of the same request made it and died before answering; it is the answer.
    """
    fields = checked_fields({"title": title, "description": description, "category": category,
                             "tags": list(tags), "access": access})
    settings = app[keys.SETTINGS]
    stream_id = stream_id or uuid.uuid4()
    async with app[keys.DB].acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2::uuid::text))", _HOST_LOCK_NS, host.user_id)
        row = await conn.fetchrow(_SELECT + " WHERE s.id = $1 AND s.host_id = $2", stream_id, host.user_id)
        if row is None:
            row = await _insert(conn, settings, host, stream_id, fields)
    return await _shape(app, row)


async def _insert(conn: asyncpg.Connection, settings: Settings, host: Identity, stream_id: uuid.UUID,
                  fields: dict[str, Any]) -> asyncpg.Record:
    """The stream row and its room, under the host's lock (the caller's transaction)."""
    open_count = await conn.fetchval(
        "SELECT count(*) FROM streams WHERE host_id = $1 AND status <> 'ended'", host.user_id)
    if open_count >= settings.streams_open_max_per_host:
        raise ApiError(ErrorCode.CONFLICT, f"end one of your {open_count} open streams before creating another",
                       details={"limit": settings.streams_open_max_per_host})
    await conn.execute(
        """INSERT INTO streams (id, host_id, title, description, category, tags, access)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
        stream_id, host.user_id, fields["title"], fields["description"], fields["category"], fields["tags"],
        fields["access"])
    await rooms.create_room(conn, "stream", stream_id, host.user_id, fields["access"])
    row = await conn.fetchrow(_SELECT + " WHERE s.id = $1", stream_id)
    assert row is not None
    return row


async def get_stream(app: web.Application, stream_id: uuid.UUID, identity: Identity | None) -> dict[str, Any]:
    return await _shape(app, await _load(app, stream_id, identity))


async def list_streams(app: web.Application, identity: Identity | None, *, status: Status | None,
                       category: str | None, host_id: uuid.UUID | None, sort: str, page: int,
                       per_page: int) -> Page:
    """Streams visible to the caller (private ones only to their host and admins), one page."""
    where = ["(s.access <> 'private' OR s.host_id = $1 OR $2)"]
    args: list[Any] = [identity.user_id if identity else None, bool(identity and identity.is_admin)]
    if status is not None:
        args.append(status)
        where.append(f"s.status = ${len(args)}")
    category = normalize_category(category)
    if category is not None:
        args.append(category)
        where.append(f"s.category = ${len(args)}")
    if host_id is not None:
        args.append(host_id)
        where.append(f"s.host_id = ${len(args)}")
    clause = " AND ".join(where)
    db = app[keys.DB]
    rows = await db.fetch(
        f"{_SELECT} WHERE {clause} ORDER BY {SORTS[sort]} LIMIT {int(per_page)} OFFSET {int((page - 1) * per_page)}",
        *args)
    total = await db.fetchval(f"SELECT count(*) FROM streams s WHERE {clause}", *args)
    return Page([await _shape(app, r) for r in rows], total)


async def update_stream(app: web.Application, actor: Identity, stream_id: uuid.UUID,
                        changes: dict[str, Any]) -> dict[str, Any]:
    """Apply `changes` (a subset of EDITABLE; `category` None clears it) as host or admin; an ended
    stream is not editable."""
    assert set(changes) <= set(EDITABLE), changes
    changes = checked_fields(changes)
    row = await _load(app, stream_id, actor)
    if not _is_host_or_admin(actor, row):
        raise forbidden("only the stream's host or an admin may edit it")
    if changes:
        sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=2))
        access_changed = False
        async with app[keys.DB].acquire() as conn, conn.transaction():
            updated = await conn.fetchval(
                f"UPDATE streams SET {sets}, updated_at = now() WHERE id = $1 AND status <> 'ended' RETURNING id",
                stream_id, *changes.values())
            if updated is None:
                raise ApiError(ErrorCode.CONFLICT, "an ended stream cannot be edited")
            if "access" in changes:
                access_changed = await rooms.set_access(conn, room_of(stream_id), changes["access"])
        row = await _load(app, stream_id, actor)
        hub = app[socket_keys.HUB]
        await hub.publish_eventually(room_of(stream_id), "stream.updated", _public_meta(row))
        if access_changed:
            # Members learn the new rule; every node then removes those of its members it no longer admits.
            await hub.publish_eventually(room_of(stream_id), "room.access", {"access": row["access"]})
            await app[socket_keys.CONTROL].recheck_access(room_of(stream_id))
    return await _shape(app, row)


def _public_meta(row: asyncpg.Record) -> dict[str, Any]:
    return {"stream_id": str(row["id"]), "title": row["title"], "description": row["description"],
            "category": row["category"], "tags": list(row["tags"]), "access": row["access"]}


async def start_stream(app: web.Application, actor: Identity, stream_id: uuid.UUID) -> dict[str, Any]:
    """created → live, by the host only; publishes `stream.started`."""
    row = await _load(app, stream_id, actor)
    if actor.user_id != row["host_id"]:
        raise forbidden("only the stream's host may start it")
    try:
        started = await app[keys.DB].fetchrow(
            """UPDATE streams SET status = 'live', started_at = now(), updated_at = now()
               WHERE id = $1 AND status = 'created' RETURNING started_at""", stream_id)
    except asyncpg.UniqueViolationError:
        raise ApiError(ErrorCode.CONFLICT, "you are already live in another stream; end it first") from None
    if started is None:
        raise ApiError(ErrorCode.CONFLICT, f"stream is {row['status']}, only a created stream can start",
                       details={"status": row["status"]})
    await app[socket_keys.HUB].publish_eventually(
        room_of(stream_id), "stream.started",
        {"stream_id": str(stream_id), "title": row["title"], "started_at": started["started_at"].isoformat()},
        idempotency_key=f"stream.started:{stream_id}")
    return await get_stream(app, stream_id, actor)


async def end_stream(app: web.Application, actor: Identity, stream_id: uuid.UUID, *,
                     already_ended_ok: bool = False) -> dict[str, Any]:
    """created/live → ended, by the host or an admin; publishes `stream.ended`.

    An ended stream is a CONFLICT unless `already_ended_ok` (DELETE is idempotent).
    """
    row = await _load(app, stream_id, actor)
    if not _is_host_or_admin(actor, row):
        raise forbidden("only the stream's host or an admin may end it")
    ended = await app[keys.DB].fetchrow(
        """UPDATE streams SET status = 'ended', ended_at = now(), updated_at = now()
           WHERE id = $1 AND status <> 'ended' RETURNING ended_at, total_tokens_received""", stream_id)
    if ended is None:
        if already_ended_ok:
            return await get_stream(app, stream_id, actor)
        raise ApiError(ErrorCode.CONFLICT, "stream has already ended", details={"status": "ended"})
    await app[socket_keys.HUB].publish_eventually(
        room_of(stream_id), "stream.ended",
        {"stream_id": str(stream_id), "ended_at": ended["ended_at"].isoformat(),
         "total_tokens_received": ended["total_tokens_received"]},
        idempotency_key=f"stream.ended:{stream_id}")
    return await get_stream(app, stream_id, actor)


async def join_stream(app: web.Application, identity: Identity | None, stream_id: uuid.UUID) -> dict[str, Any]:
    """What a client needs to enter the stream's room over the socket, and what it may do there."""
    row = await _load(app, stream_id, identity)
    grant = await rooms.authorize_join(app, identity, room_of(stream_id))
    return {"stream": await _shape(app, row), "room": grant.room, "ws_url": "/ws", "role": grant.role,
            "can_chat": grant.can_chat, "can_tip": grant.can_tip, "can_moderate": grant.can_moderate}


async def stream_room(app: web.Application, identity: Identity | None, stream_id: uuid.UUID) -> str:
    """The room of a stream the caller may see (NOT_FOUND otherwise)."""
    await _load(app, stream_id, identity)
    return room_of(stream_id)


async def viewers(app: web.Application, identity: Identity | None, stream_id: uuid.UUID, *, page: int,
                  per_page: int) -> tuple[dict[str, Any], int]:
    """The viewer count for anyone who may see the stream; the signed-in members (one entry per
    user however many sockets, at most `presence_members_max` looked at) for its staff only.
    Returns the data and the number of listed members."""
    await _load(app, stream_id, identity)
    room = room_of(stream_id)
    data: dict[str, Any] = {"stream_id": str(stream_id), "viewer_count": await viewer_count(app, room),
                            "viewers": None}
    if identity is None:
        return data, 0
    db = app[keys.DB]
    me, _ = await rooms.standing(db, room, identity.user_id)
    if me.rank < rooms.RANK["moderator"]:
        return data, 0
    members = await app[socket_keys.PRESENCE].members(room, app[keys.SETTINGS].presence_members_max)
    user_ids = sorted({m["user_id"] for m in members.values() if m.get("user_id")})
    chosen = [uuid.UUID(u) for u in user_ids[(page - 1) * per_page:page * per_page]]
    names = {r["id"]: r["display_name"]
             for r in await db.fetch("SELECT id, display_name FROM users WHERE id = ANY($1::uuid[])", chosen)}
    data["viewers"] = [{"user_id": str(u), "display_name": names[u]} for u in chosen if u in names]
    return data, len(user_ids)
