"""Tips: `send_tip`, the one domain function behind the socket op `tip.send` and `POST /v1/wallet/transfer`.

Checks, cheapest first: amount (1..`tip_max_tokens`) and message; the stream (visible to the
sender, else NOT_FOUND whatever its status; then live; the recipient is its host); not yourself;
the recipient exists and is an active performer; the sender owes no debt. A request that is well
formed but refused by these rules is 403 (yourself), 404 or 409 (the stream or the recipient is not
in a state to take it), never 422: the document states what 422 refuses. Then the ledger moves
the tip (`ledger.flows.tips`: fee split, linked legs, leg ids derived from the tip id). A tip in a
stream is then recorded (`stream_tips`, the stream's running total, top tippers; batched by
`TipRecorder`) and `tip.received` is published to the room with idempotency key `tip:{id}`.

Retries: the tip id is the key. A resubmitted id moves nothing (`exists`); the reply says
`replayed: true`. Recording and publishing run for `ok` AND `exists`: if a process died after
the ledger committed but before the record or the broadcast, the client's retry with the same id
(after its reconnect) completes them. `stream_tips.broadcast_at` remembers that the event went
out, so a later retry publishes nothing new; between publish and that mark, the broker's
idempotency key (kept 300 s) stops a duplicate. A tip whose client never retries after such a
crash keeps its money movement (ledger) but lacks its stream record and broadcast. A retry of a
tip the ledger holds is not refused for what changed since it was accepted (the stream ended, the
tipper was banned or owes, the performer stopped taking tips): it completes the record instead.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from aiohttp import web

from ledger import Result
from ledger.flows.tips import tip_applied, transfer_tip
from server.commerce import keys as money
from server.commerce.ledger_errors import ledger_call, ledger_error
from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode, forbidden, not_found
from server.kernel.identity import Identity
from signaling.core import keys as socket_keys
from signaling.features.chat.chat import clean_text
from signaling.features.rooms import access as rooms
from signaling.features.streams import streams
from signaling.features.tips.recorder import TIPS, RecorderUnavailable, StreamTip

# The schema's own cap; `tip_message_max_chars` (at most 1000) is checked after cleaning.
SCHEMA_MESSAGE_MAX = 1000




async def send_tip(app: web.Application, sender: Identity, *, tip_id: uuid.UUID, amount: int, message: str = "",
                   to_user_id: uuid.UUID | None = None, stream_id: uuid.UUID | None = None,
                   grant: rooms.RoomGrant | None = None) -> dict[str, Any]:
    """Tip a performer (`to_user_id`) or a live stream's host (`stream_id`); see the module doc.

    A tip to a stream needs the sender's right to tip in its room: `grant` from the socket's
    join, or decided here (bans and access rules apply to REST tips as well).
    """
    settings = app[keys.SETTINGS]
    if not 1 <= amount <= settings.tip_max_tokens:
        raise ApiError(ErrorCode.VALIDATION_ERROR, f"amount must be 1..{settings.tip_max_tokens} tokens",
                       details={"field": "amount", "max": settings.tip_max_tokens})
    text = clean_text(message)
    if len(text) > settings.tip_message_max_chars:
        raise ApiError(ErrorCode.VALIDATION_ERROR,
                       f"message is longer than {settings.tip_message_max_chars} characters",
                       details={"field": "message", "max_chars": settings.tip_message_max_chars})
    db = app[keys.DB]
    applied: list[bool] = []  # asked once, and only when a refusal below would apply

    async def refuse_unless_applied(refusal: ApiError) -> None:
        """Refuse, unless the ledger already moved this tip: then this is the retry of a tip accepted
        before (its process died before answering) and it goes on to be completed, whatever changed
        since (the stream ended, the tipper got banned or owes): a refusal would answer no while the
        tokens are gone, and the stream would lack the tip's record for good."""
        if not applied:
            applied.append(await tip_applied(db, tip_id))
        if not applied[0]:
            raise refusal

    if stream_id is not None:
        room = streams.room_of(stream_id)
        if grant is None:
            # Visibility first: a private stream is NOT_FOUND to whoever may not enter it, whatever
            # its status or host (a 409 or a host mismatch would tell that it exists). A socket
            # tipper joined the room, so it sees the stream.
            room = await streams.stream_room(app, sender, stream_id)
        stream = await db.fetchrow("SELECT host_id, status FROM streams WHERE id = $1", stream_id)
        if stream is None:
            raise not_found("stream")
        if to_user_id is not None and to_user_id != stream["host_id"]:
            raise ApiError(ErrorCode.CONFLICT, "to_user_id is not this stream's host", details={"field": "to_user_id"})
        if stream["status"] != "live":
            await refuse_unless_applied(
                ApiError(ErrorCode.CONFLICT, "tips go to live streams", details={"status": stream["status"]}))
        to_user_id = stream["host_id"]
        if grant is None:
            try:
                grant = await rooms.authorize_join(app, sender, room)
            except ApiError as exc:
                await refuse_unless_applied(exc)
        if grant is not None and not grant.can_tip and to_user_id != sender.user_id:
            await refuse_unless_applied(forbidden("you may not tip in this room"))
    if to_user_id is None:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "name the performer (to_user_id) or the stream",
                       details={"field": "to_user_id"})
    if to_user_id == sender.user_id:  # as in a room, where the host's grant has no tipping
        raise ApiError(ErrorCode.PERMISSION_DENIED, "you cannot tip yourself", details={"field": "to_user_id"})
    # One round trip for both users and the sender's debt (`ledger.flows.debts` owns `wallet_debts`;
    # reading it here saves a query per tip on the hot path).
    people = {r["id"]: r for r in await db.fetch(
        """SELECT u.id, u.role, u.status, u.display_name, COALESCE(d.owed, 0) AS owed
           FROM users u LEFT JOIN wallet_debts d ON d.user_id = u.id WHERE u.id = ANY($1::uuid[])""",
        [sender.user_id, to_user_id])}
    if sender.user_id not in people:
        raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED, "this account no longer exists")
    recipient = people.get(to_user_id)
    if recipient is None:
        raise not_found("user")
    if recipient["role"] != "performer" or recipient["status"] != "active":
        await refuse_unless_applied(ApiError(ErrorCode.CONFLICT, "this user cannot receive tips",
                                             details={"field": "to_user_id"}))
    owed = people[sender.user_id]["owed"]
    if owed:
        await refuse_unless_applied(ApiError(
            ErrorCode.WALLET_RESTRICTED, "your wallet owes tokens from a reversed purchase; buy tokens to settle it",
            details={"owed_tokens": owed}))
    recorder = app[TIPS]
    if stream_id is not None and not recorder.has_room():
        raise ApiError(ErrorCode.OVERLOADED, "too many tips in flight; retry shortly with the same id")
    meta: dict[str, Any] = {}
    if text:
        meta["message"] = text
    if stream_id is not None:
        meta["stream"] = str(stream_id)
    with ledger_call():
        outcome = await transfer_tip(app[money.LEDGER], app[money.ACCOUNTS], tip_id=tip_id, sender=sender.user_id,
                                     recipient=to_user_id, amount=amount, fee_bps=settings.tip_fee_bps, metadata=meta)
    if not outcome.applied:
        raise ledger_error(outcome.result)
    reply: dict[str, Any] = {
        "id": str(tip_id), "to_user_id": str(to_user_id), "stream_id": str(stream_id) if stream_id else None,
        "amount": amount, "fee": outcome.fee, "performer_share": outcome.share, "message": text,
        "outcome": outcome.result.value, "replayed": outcome.result is Result.EXISTS}
    if stream_id is not None:
        reply.update(await _announce(app, StreamTip(tip_id, stream_id, sender.user_id, to_user_id, amount, outcome.fee,
                                                    text), people[sender.user_id]["display_name"]))
    return reply


async def _announce(app: web.Application, tip: StreamTip, from_name: str) -> dict[str, Any]:
    """Record the stream tip and publish `tip.received` if it has not gone out yet."""
    recorder = app[TIPS]
    try:
        recorded = await recorder.record(tip)
    except (RecorderUnavailable, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise _applied_but(exc) from None
    out: dict[str, Any] = {"stream_total": recorded.stream_total, "top_tippers": recorded.top_tippers}
    if recorded.needs_broadcast:
        event = {"id": str(tip.tip_id), "stream_id": str(tip.stream_id),
                 "from": {"user_id": str(tip.from_user_id), "display_name": from_name},
                 "amount": tip.amount, "message": tip.message, "stream_total": recorded.stream_total,
                 "top_tippers": recorded.top_tippers}
        try:
            out["offset"] = await app[socket_keys.HUB].publish(streams.room_of(tip.stream_id), "tip.received",
                                                               event, idempotency_key=f"tip:{tip.tip_id}")
        except ApiError as exc:  # the broker is unreachable: a retry with the same id broadcasts it
            raise _applied_but(exc) from None
        recorder.broadcast_done(tip.tip_id)
    return out


def _applied_but(exc: BaseException) -> ApiError:
    return ApiError(ErrorCode.UNAVAILABLE,
                    "the tip was applied but not yet shown in the stream; retry with the same id",
                    details={"applied": True, "reason": type(exc).__name__})


async def stream_tips(app: web.Application, identity: Identity | None, stream_id: uuid.UUID, *, page: int,
                      per_page: int) -> tuple[list[dict[str, Any]], int]:
    """A stream's tips, newest first, for whoever may see the stream; and the total count."""
    await streams.stream_room(app, identity, stream_id)
    db = app[keys.DB]
    rows = await db.fetch(
        """SELECT t.tip_id, t.from_user_id, u.display_name, t.to_user_id, t.amount, t.message, t.created_at
           FROM stream_tips t JOIN users u ON u.id = t.from_user_id
           WHERE t.stream_id = $1 ORDER BY t.created_at DESC, t.tip_id LIMIT $2 OFFSET $3""",
        stream_id, per_page, (page - 1) * per_page)
    total = await db.fetchval("SELECT count(*) FROM stream_tips WHERE stream_id = $1", stream_id)
    items = [{"id": str(r["tip_id"]), "stream_id": str(stream_id), "from_user_id": str(r["from_user_id"]),
              "from_display_name": r["display_name"], "to_user_id": str(r["to_user_id"]), "tokens": r["amount"],
              "message": r["message"], "is_private": False, "created_at": r["created_at"].isoformat()}
             for r in rows]
    return items, int(total)
