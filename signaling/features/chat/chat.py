"""Room chat: `chat.send` and `chat.delete` over the socket.

A message is checked in the cheapest order: its text (length, blank, control characters), the
per-user-per-room flood limit (GCRA, in Redis when configured, so it holds across nodes), then
one query for the author's standing (ban, mute, slow mode), the slow-mode limit, and only then
stored in PostgreSQL (kept for moderation and reports, purged by `retention.py`) and published
to the room's ordered stream.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from typing import Any

from aiohttp import web

from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode, forbidden, not_found
from server.kernel.identity import Identity
from server.kernel.limits import Budget
from signaling.core import keys as socket_keys
from signaling.features.rooms import access as rooms

# Settings cap `chat_max_chars` at 10,000; the schema refuses anything longer before it is decoded further.
SCHEMA_MAX_CHARS = 10_000
# Bidirectional overrides and isolates (Cf) reorder the text around them: a spoofing tool in chat.
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")




def clean_text(text: str) -> str:
    """Drop control characters (newlines and tabs become spaces) and bidi overrides; trim."""
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cc")
    return _BIDI.sub("", text).strip()


async def send_message(app: web.Application, author: Identity, room: str, raw_text: str) -> dict[str, Any]:
    """Store and publish one chat message; return `{id, offset}`."""
    settings = app[keys.SETTINGS]
    text = clean_text(raw_text)
    if not text:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "message is empty", details={"field": "text"})
    if len(text) > settings.chat_max_chars:
        raise ApiError(ErrorCode.VALIDATION_ERROR, f"message is longer than {settings.chat_max_chars} characters",
                       details={"field": "text", "max_chars": settings.chat_max_chars, "chars": len(text)})
    limiter = app[keys.LIMITER]
    flood = await limiter.hit(f"chat:{room}:{author.user_id}", Budget(settings.chat_rate_per_10s, 10.0))
    if not flood.allowed:
        raise ApiError(ErrorCode.RATE_LIMIT_EXCEEDED,
                       f"at most {settings.chat_rate_per_10s} messages per 10 s in a room",
                       details={"retry_after_s": round(flood.retry_after_s, 3)})
    db = app[keys.DB]
    s, exists = await rooms.standing(db, room, author.user_id)
    if not exists:
        raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED, "this account no longer exists")
    if s.banned and s.rank < rooms.RANK["performer"]:
        raise ApiError(ErrorCode.BANNED, "you are banned from this room")
    if s.muted_until is not None:  # whoever muted them outranked them: staff muted are muted too
        raise ApiError(ErrorCode.MUTED, "you are muted in this room", details={"until": s.muted_until.isoformat()})
    if s.slow_mode_s and s.rank < rooms.RANK["moderator"]:
        # The interval is part of the key: changing slow mode starts everyone afresh.
        slow = await limiter.hit(f"slow:{room}:{s.slow_mode_s}:{author.user_id}", Budget(1, s.slow_mode_s))
        if not slow.allowed:
            raise ApiError(ErrorCode.SLOW_MODE, f"slow mode: one message every {s.slow_mode_s} s",
                           details={"seconds": s.slow_mode_s, "retry_after_s": round(slow.retry_after_s, 3)})
    message_id = uuid.uuid4()
    at = await db.fetchval(
        "INSERT INTO chat_messages (id, room, author_id, text) VALUES ($1, $2, $3, $4) RETURNING created_at",
        message_id, room, author.user_id, text)
    event = {"id": str(message_id),
             "author": {"id": str(author.user_id), "display_name": s.display_name, "role": s.role},
             "text": text, "at": at.isoformat()}
    try:
        offset = await app[socket_keys.HUB].publish(room, "chat.message", event)
    except ApiError:
        # Not delivered to anyone: not kept either, so the author's retry is the only copy.
        await db.execute("DELETE FROM chat_messages WHERE id = $1", message_id)
        raise
    return {"id": str(message_id), "offset": offset}


async def delete_message(app: web.Application, actor: Identity, room: str, message_id: uuid.UUID) -> dict[str, Any]:
    """Mark a message deleted (its author, or room staff) and publish `chat.deleted` once."""
    db = app[keys.DB]
    row = await db.fetchrow("SELECT author_id, deleted_at FROM chat_messages WHERE id = $1 AND room = $2",
                            message_id, room)
    if row is None:
        raise not_found("message")
    if row["author_id"] != actor.user_id:
        s, _ = await rooms.standing(db, room, actor.user_id)
        if s.rank < rooms.RANK["moderator"]:
            raise forbidden("only the author, the performer or a moderator may delete this message")
    deleted = await db.fetchval(
        """UPDATE chat_messages SET deleted_at = now(), deleted_by = $2
           WHERE id = $1 AND deleted_at IS NULL RETURNING true""", message_id, actor.user_id)
    if not deleted:
        return {"id": str(message_id), "deleted": True}
    offset = await app[socket_keys.HUB].publish_eventually(room, "chat.deleted", {"id": str(message_id)},
                                                          idempotency_key=f"chat.deleted:{message_id}")
    return {"id": str(message_id), "deleted": True, "offset": offset}
