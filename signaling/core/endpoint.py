"""`GET /ws`: the room socket. Auth phase, then one envelope at a time, each answered by a reply.

Auth: `?token=<access token>` on the URL, `?guest=1` for a guest, or else a first `auth` op
(`{"op":"auth","ref":0,"data":{"token":"..."}}`, or `"data":{}` for a guest) within
`ws_auth_timeout_s`; otherwise the socket is closed 4001. A bad token in the auth phase closes
4001 too (after the error reply when it came as an op). The session ends with 4003 at the
token's `exp` unless an `auth` op with a fresh token for the same user came first.

Every inbound frame gets a reply with its `ref` (`null` when the frame had no usable ref):
malformed JSON, a non-object, JSON nested deeper than `json_max_depth`, a bad envelope, an
unknown op, a binary frame, an op needing a user or a joined room, and data failing the op's
schema are all error replies; the socket stays open. Only an inbound frame over
`ws_max_frame_bytes` (1009, aiohttp's reader refuses it before it is buffered) and the close
codes in `protocol.Close` end a session.

Ops of one socket run one at a time, in arrival order: a `chat.send` right after a `join` finds
the room joined.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from pydantic import ValidationError

from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode, validation_details
from server.kernel.identity import Identity
from server.kernel.inputs import may_nest_deeper, nesting_exceeds
from server.kernel.limits import budget
from server.kernel.net import client_ip
from server.kernel.outage import DEPENDENCY_DOWN, unavailable
from signaling.core import keys as socket_keys
from signaling.core.connection import Connection
from signaling.core.masking import StrictWebSocketResponse
from signaling.core.ops import OpContext, OpSpec
from signaling.core.protocol import MAX_REF, Close, Envelope, reply_error, reply_ok

log = logging.getLogger("greenroom.socket")


def mount_socket(app: web.Application) -> None:
    """The `/ws` route and the shutdown hook that closes sockets with 1001.

    The services it reads (`socket_keys.HUB`, `OPS`, ...) come from the composition root's socket
    context (`server.app.lifecycle.socket`).
    """
    app.router.add_get("/ws", websocket)
    app.on_shutdown.append(_close_all)


async def _close_all(app: web.Application) -> None:
    hub = app.get(socket_keys.HUB)
    if hub is None:
        return
    conns = list(hub.connections.values())
    if not conns:
        return
    timeout = app[keys.SETTINGS].shutdown_timeout_s
    closing = [asyncio.ensure_future(c.close(Close.GOING_AWAY)) for c in conns]
    _, late = await asyncio.wait(closing, timeout=timeout)
    for task in late:
        task.cancel()


async def websocket(request: web.Request) -> web.WebSocketResponse:
    app = request.app
    settings = app[keys.SETTINGS]
    hub = app[socket_keys.HUB]
    if hub.full:
        raise ApiError(ErrorCode.UNAVAILABLE, "this node holds as many sockets as it may; connect again shortly",
                       details={"limit": settings.ws_max_conns_per_node}, headers={"Retry-After": "1"})
    # No compression: frames are built once and written as raw bytes to every member. Strict: an
    # unmasked client frame closes the connection 1002 (RFC 6455 5.1; aiohttp alone accepts it).
    ws = StrictWebSocketResponse(heartbeat=settings.ws_heartbeat_s, max_msg_size=settings.ws_max_frame_bytes,
                               compress=False, timeout=settings.ws_close_timeout_s)
    await ws.prepare(request)
    transport = request.transport
    if transport is None:  # the peer left during the handshake
        return ws
    conn = Connection(ws, transport, settings, hub.outbox)
    conn.remote = client_ip(request)
    hub.attach(conn)
    try:
        if await _auth_from_query(request, conn):
            await _serve(app, conn)
    finally:
        await hub.detach(conn)
        if not ws.closed:
            await conn.close(Close.NORMAL)
        elif conn.close_code is not None:
            await conn.close(Close(conn.close_code))  # waits for a close already under way
    return ws


async def _auth_from_query(request: web.Request, conn: Connection) -> bool:
    """Sign in from `?token=` or admit `?guest=1`; False when the socket is being closed instead."""
    token = request.query.get("token")
    if token:
        try:
            identity = request.app[keys.AUTH].authenticate(token)
        except ApiError as exc:
            conn.close_soon(Close.AUTH_FAILED, exc.message)
            return False
        if not await request.app[socket_keys.HUB].admission.admit_user(conn, identity.user_id):
            conn.close_soon(Close.TOO_MANY_CONNECTIONS)
            return False
        conn.sign_in(identity)
    elif request.query.get("guest") in ("1", "true"):
        if not request.app[socket_keys.HUB].admission.admit_guest(conn):
            conn.close_soon(Close.TOO_MANY_CONNECTIONS)
            return False
        conn.admit_guest()
    return True


async def _serve(app: web.Application, conn: Connection) -> None:
    ws = conn.ws
    loop = asyncio.get_running_loop()
    deadline = loop.time() + app[keys.SETTINGS].ws_auth_timeout_s
    while not conn.closing:
        timeout = None if conn.authenticated else deadline - loop.time()
        if timeout is not None and timeout <= 0:
            conn.close_soon(Close.AUTH_FAILED, "authentication timeout")
            return
        try:
            msg = await ws.receive(timeout=timeout)
        except TimeoutError:
            continue  # the deadline check above closes it
        if msg.type == WSMsgType.TEXT:
            await _handle(app, conn, msg.data)
        elif msg.type == WSMsgType.BINARY:
            conn.send(reply_error(None, {"code": ErrorCode.BAD_REQUEST,
                                         "message": "binary frames are not supported; send JSON text frames"}))
        else:  # CLOSE, CLOSING, CLOSED, ERROR (aiohttp already answered a protocol error, e.g. 1009)
            return


def _ref_of(obj: Any) -> int | None:
    ref = obj.get("ref") if isinstance(obj, dict) else None
    valid = isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref <= MAX_REF
    return ref if valid else None


async def _handle(app: web.Application, conn: Connection, raw: str) -> None:
    within_rate = conn.take_op()
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        conn.send(reply_error(None, {"code": ErrorCode.MALFORMED_JSON, "message": "the frame is not valid JSON"}))
        return
    ref = _ref_of(obj)
    ctx: OpContext | None = None
    try:
        if not within_rate:
            limit = app[keys.SETTINGS].ws_ops_per_10s
            raise ApiError(ErrorCode.RATE_LIMIT_EXCEEDED, f"at most {limit} messages per 10 s on one socket",
                           details={"limit": limit, "window_s": 10})
        if not isinstance(obj, dict):
            raise ApiError(ErrorCode.BAD_REQUEST, "a message must be a JSON object")
        limit = app[keys.SETTINGS].json_max_depth
        if may_nest_deeper(raw, limit) and nesting_exceeds(obj, limit):
            raise ApiError(ErrorCode.BAD_REQUEST, f"objects and arrays nest deeper than {limit} levels",
                           details={"max_depth": limit})
        try:
            env = Envelope.model_validate(obj)
        except ValidationError as exc:
            raise ApiError(ErrorCode.BAD_REQUEST, "the message is not a valid envelope {op, ref, room?, data?}",
                           details=validation_details(exc)) from None
        spec = app[socket_keys.OPS].get(env.op)
        if spec is None:
            raise ApiError(ErrorCode.UNKNOWN_OP, f"unknown op {env.op!r}", details={"op": env.op})
        if not conn.authenticated and spec.name != "auth":
            raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED,
                           "send `auth` first (with a token, or `data: {}` as a guest)")
        if spec.auth == "user" and conn.identity is None:
            raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED, f"{spec.name!r} needs a signed-in user")
        if spec.roles and (conn.identity is None or conn.identity.role not in spec.roles):
            raise ApiError(ErrorCode.PERMISSION_DENIED, f"{spec.name!r} is for: {', '.join(spec.roles)}")
        if spec.room != "none":
            if env.room is None:
                raise ApiError(ErrorCode.BAD_REQUEST, f"{spec.name!r} needs a `room`")
            if spec.room == "joined" and env.room not in conn.rooms:
                raise ApiError(ErrorCode.NOT_JOINED, f"join {env.room} first", details={"room": env.room})
        try:
            data = spec.schema.model_validate_json(orjson.dumps(env.data), strict=True)
        except ValidationError as exc:
            raise ApiError(ErrorCode.VALIDATION_ERROR, f"invalid data for {spec.name!r}",
                           details=validation_details(exc)) from None
        await _spend(app, spec, conn.identity, conn.remote)
        ctx = OpContext(conn, env.ref, env.room, app)
        result = await spec.handler(ctx, data)
        conn.send(reply_ok(env.ref, result))
    except ApiError as exc:
        conn.send(reply_error(ref, exc.body()["error"]))
    except DEPENDENCY_DOWN as exc:
        log.warning("socket op failed: dependency unavailable: %s: %s", type(exc).__name__, exc,
                    extra={"conn_id": conn.conn_id})
        conn.send(reply_error(ref, unavailable().body()["error"]))
    except Exception:
        log.exception("socket op failed", extra={"conn_id": conn.conn_id})
        conn.send(reply_error(ref, {"code": ErrorCode.INTERNAL_ERROR, "message": "internal error"}))
    if ctx is not None:
        for callback in ctx.after_reply:
            callback()


async def _spend(app: web.Application, spec: OpSpec, identity: Identity | None, remote: str) -> None:
    """Take one unit of the op's rate category: the caller's budget, shared with REST routes of it."""
    if spec.rate == "none":
        return
    category = spec.rate if identity is not None else "anonymous"
    key = f"{category}:{identity.user_id if identity is not None else remote}"
    allowance = budget(app[keys.SETTINGS], category)
    decision = await app[keys.LIMITER].hit(key, allowance)
    if not decision.allowed:
        raise ApiError(ErrorCode.RATE_LIMIT_EXCEEDED,
                       f"at most {allowance.limit} {category} requests per {allowance.window_s:g} s",
                       details={"category": category, "retry_after_s": round(decision.retry_after_s, 3)})
