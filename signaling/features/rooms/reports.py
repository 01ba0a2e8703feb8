"""Moderation reports: users report a user, a stream or a chat message; admins read them as flags.

A report on a chat message keeps a snapshot of the message (room, author, text), because the
message itself is purged after the chat retention period while the report must stay readable.
A report can only name what the reporter may see (the room access rules of `rooms.access`);
anything else is NOT_FOUND, as a target that does not exist.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import asyncpg
from aiohttp import web

from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode, not_found
from server.kernel.identity import Identity
from signaling.features.rooms import access

TargetType = Literal["user", "stream", "chat_message"]
Reason = Literal["spam", "harassment", "hate", "sexual_content", "violence", "self_harm", "underage",
                 "scam", "copyright", "other"]
ReportStatus = Literal["open", "reviewed", "dismissed"]


async def _sees_room(db: asyncpg.Pool, room: str, reporter: Identity, *, chat: bool) -> bool:
    """Whether the reporter may see this room's stream (`chat` False) or its chat (`chat` True).

    As for streams: a private room is hidden from whoever its access rule does not admit; a ticket
    or pass stream is listed for everyone, its chat only for those it admits. Bans do not hide
    what the banned saw: reporting is how they reach the platform's admins over the room's staff.
    """
    s, _ = await access.standing(db, room, reporter.user_id)
    if not chat and s.access != "private":
        return True
    return access.admits(s)


async def _snapshot(db: asyncpg.Pool, reporter: Identity, target_type: TargetType,
                    target_id: uuid.UUID) -> dict[str, Any]:
    """What the target looked like when reported; NOT_FOUND when there is no such target or the
    reporter may not see it (the answer must not tell a hidden target from a missing one)."""
    if target_type == "user":
        row = await db.fetchrow("SELECT display_name FROM users WHERE id = $1", target_id)
        if row is None:
            raise not_found("user")
        return {"display_name": row["display_name"]}
    if target_type == "stream":
        row = await db.fetchrow("SELECT host_id, title FROM streams WHERE id = $1", target_id)
        if row is None or not await _sees_room(db, access.room_name("stream", target_id), reporter, chat=False):
            raise not_found("stream")
        return {"host_id": str(row["host_id"]), "title": row["title"]}
    row = await db.fetchrow("SELECT room, author_id, text, created_at FROM chat_messages WHERE id = $1", target_id)
    if row is None or not await _sees_room(db, row["room"], reporter, chat=True):
        raise not_found("chat message")
    return {"room": row["room"], "author_id": str(row["author_id"]), "text": row["text"],
            "at": row["created_at"].isoformat()}


async def file_report(app: web.Application, reporter: Identity, *, target_type: TargetType,
                      target_id: uuid.UUID, reason: Reason, details: str) -> dict[str, Any]:
    if target_type == "user" and target_id == reporter.user_id:
        raise ApiError(ErrorCode.BAD_REQUEST, "you cannot report yourself")
    db = app[keys.DB]
    snapshot = await _snapshot(db, reporter, target_type, target_id)
    try:
        row = await db.fetchrow(
            """INSERT INTO moderation_reports (id, reporter_id, target_type, target_id, reason, details, snapshot)
               VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *""",
            uuid.uuid4(), reporter.user_id, target_type, target_id, reason, details, snapshot)
    except asyncpg.UniqueViolationError:
        raise ApiError(ErrorCode.CONFLICT, "you already have an open report on this") from None
    assert row is not None
    return _shape(row)


def _shape(row: asyncpg.Record, *, with_count: bool = False) -> dict[str, Any]:
    out = {"id": str(row["id"]), "reporter_id": str(row["reporter_id"]), "target_type": row["target_type"],
           "target_id": str(row["target_id"]), "reason": row["reason"], "details": row["details"],
           "snapshot": row["snapshot"], "status": row["status"], "created_at": row["created_at"].isoformat()}
    if with_count:
        out["open_reports_on_target"] = row["open_reports_on_target"]
    return out


async def list_flags(app: web.Application, *, status: ReportStatus | None, target_type: TargetType | None,
                     page: int, per_page: int) -> tuple[list[dict[str, Any]], int]:
    """Reports, newest first, each with how many open reports its target has (for triage)."""
    where: list[str] = ["true"]
    args: list[Any] = []
    if status is not None:
        args.append(status)
        where.append(f"r.status = ${len(args)}")
    if target_type is not None:
        args.append(target_type)
        where.append(f"r.target_type = ${len(args)}")
    clause = " AND ".join(where)
    db = app[keys.DB]
    rows = await db.fetch(
        f"""SELECT r.*, (SELECT count(*) FROM moderation_reports o
                         WHERE o.target_type = r.target_type AND o.target_id = r.target_id
                           AND o.status = 'open') AS open_reports_on_target
            FROM moderation_reports r WHERE {clause}
            ORDER BY r.created_at DESC, r.id LIMIT {int(per_page)} OFFSET {int((page - 1) * per_page)}""",
        *args)
    total = await db.fetchval(f"SELECT count(*) FROM moderation_reports r WHERE {clause}", *args)
    return [_shape(r, with_count=True) for r in rows], total
