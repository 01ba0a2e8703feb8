"""The socket's core ops: `auth`, `join`, `leave`, `presence`, `ping`.

Room features (chat, tips, moderation, seats, rtc) declare their own ops the same way (an `OpGroup`
in their `ops` module) and are listed in `signaling.features.registry`. Who may join a room is the
room feature's gate (`OpRegistry.gate`), not the core's.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field, StrictInt

from server.kernel import keys
from server.kernel.access import Access
from server.kernel.errors import ApiError, ErrorCode
from signaling.core import keys as socket_keys
from signaling.core.broker import StreamPosition
from signaling.core.connection import Connection, Membership
from signaling.core.ops import OpContext, OpData, OpGroup
from signaling.core.protocol import Close

OPS = OpGroup()
# In a public room every caller, a guest too (`anonymous`), may do the core's ops.
ANYONE = Access.every("ok")


class AuthData(OpData):
    token: str | None = Field(default=None, min_length=1, max_length=8192)


class Since(OpData):
    epoch: str = Field(max_length=64)
    offset: StrictInt = Field(ge=0)


class JoinData(OpData):
    since: Since | None = None


class PresenceData(OpData):
    limit: StrictInt = Field(default=100, ge=1, le=100_000)


def session_info(conn: Connection) -> dict[str, Any]:
    ident = conn.identity
    if ident is None:
        return {"conn_id": conn.conn_id, "user_id": None, "role": "guest", "expires_at": None}
    return {"conn_id": conn.conn_id, "user_id": str(ident.user_id), "role": ident.role,
            "expires_at": ident.expires_at}


@OPS.op("auth", schema=AuthData, auth="any", room="none", access=ANYONE)
async def auth(ctx: OpContext, data: AuthData) -> dict[str, Any]:
    """Sign in (first op, or a refresh before `exp`); without a token, continue as a guest.

    In the auth phase a refused token closes the socket (4001) after the error reply; on a live
    session it is only refused, and the session ends at its current token's `exp`.
    """
    conn = ctx.session
    if data.token is None:
        if conn.identity is not None:
            raise ApiError(ErrorCode.BAD_REQUEST, "a signed-in session cannot become a guest; open a new socket")
        if not ctx.app[socket_keys.HUB].admission.admit_guest(conn):
            limit = ctx.app[keys.SETTINGS].ws_max_guests_per_ip
            ctx.defer(lambda: conn.close_soon(Close.TOO_MANY_CONNECTIONS))
            raise ApiError(ErrorCode.TOO_MANY_CONNECTIONS, f"at most {limit} guest sockets per address",
                           details={"limit": limit})
        conn.admit_guest()
        return session_info(conn)
    try:
        identity = ctx.app[keys.AUTH].authenticate(data.token)
    except ApiError as exc:
        if not conn.authenticated:
            reason = exc.message  # `exc` is unbound once the except block ends
            ctx.defer(lambda: conn.close_soon(Close.AUTH_FAILED, reason))
        raise
    if conn.identity is not None and identity.user_id != conn.identity.user_id:
        raise ApiError(ErrorCode.PERMISSION_DENIED, "a session cannot change user; open a new socket")
    if not await ctx.app[socket_keys.HUB].admission.admit_user(conn, identity.user_id):
        limit = ctx.app[keys.SETTINGS].ws_max_conns_per_user
        ctx.defer(lambda: conn.close_soon(Close.TOO_MANY_CONNECTIONS))
        raise ApiError(ErrorCode.TOO_MANY_CONNECTIONS, f"at most {limit} open sockets per user",
                       details={"limit": limit})
    conn.sign_in(identity)
    return session_info(conn)


@OPS.op("join", schema=JoinData, auth="any", room="named", access=ANYONE)
async def join(ctx: OpContext, data: JoinData) -> dict[str, Any]:
    """Enter a room; with `since`, also get every event missed after that position.

    Reply: `{recovered, epoch, offset, events, grant}`. `offset` is the position the client is at
    once it has applied `events`; live events follow the reply from `offset + 1`.
    """
    conn = ctx.session
    name = ctx.room_name
    settings = ctx.app[keys.SETTINGS]
    if name in conn.rooms:
        raise ApiError(ErrorCode.ALREADY_JOINED, "already in this room; leave first to rejoin")
    if len(conn.rooms) >= settings.ws_max_rooms_per_conn:
        raise ApiError(ErrorCode.TOO_MANY_ROOMS, f"at most {settings.ws_max_rooms_per_conn} rooms per connection",
                       details={"limit": settings.ws_max_rooms_per_conn})
    grant = await ctx.app[socket_keys.OPS].gate(ctx.app, conn.identity, name)
    since = StreamPosition(data.since.offset, data.since.epoch) if data.since is not None else None
    hub = ctx.app[socket_keys.HUB]
    result = await hub.join(conn, name, Membership(grant), since)
    ctx.defer(lambda: hub.go_live(conn, name, result["offset"]))
    result["grant"] = grant.describe()
    return result


@OPS.op("leave", auth="any", room="joined", access=ANYONE)
async def leave(ctx: OpContext, data: OpData) -> None:
    await ctx.app[socket_keys.HUB].leave(ctx.session, ctx.room_name)


@OPS.op("presence", schema=PresenceData, auth="any", room="joined", access=ANYONE)
async def presence(ctx: OpContext, data: PresenceData) -> dict[str, Any]:
    """Who is in the room, across nodes: the count and up to `limit` members."""
    limit = min(data.limit, ctx.app[keys.SETTINGS].presence_members_max)
    return await ctx.app[socket_keys.HUB].presence_of(ctx.room_name, limit)


@OPS.op("ping", auth="any", room="none", access=ANYONE)
async def ping(ctx: OpContext, data: OpData) -> dict[str, Any]:
    return {"at": time.time()}
