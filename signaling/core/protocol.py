"""The socket protocol: envelopes, and the registry where room features declare their ops.

Client to server: `{"op": "...", "ref": n, "room": "...", "data": {...}}`.
Reply: `{"op": "reply", "ref": n, "ok": true, "data": {...}}` or
`{"op": "reply", "ref": n, "ok": false, "error": {"code": "...", "message": "..."}}`.
Server push: `{"op": "event", "room": "...", "offset": 42, "type": "chat.message", "data": {...}}`.

Ops are declared in `signaling.core.ops` (schema, auth, roles, room rule, rate category) and
collected per app in an `OpRegistry`; the endpoint validates every frame against them.

Close codes (`Close`) are the socket's only way to end a session; every other refusal is an error
reply and the socket stays open. See `docs/socket.md` for the full contract.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from server.kernel.inputs import check_value

MAX_REF = 2**53 - 1  # refs round-trip through JavaScript numbers


class Close(IntEnum):
    """Why the server closed a socket. 4xxx are ours; a client decides from the code whether to retry."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down: reconnect (elsewhere) with `since`
    PROTOCOL_ERROR = 1002  # an unmasked client frame (`masking.py`) or another RFC 6455 violation (aiohttp)
    MESSAGE_TOO_BIG = 1009  # an inbound frame exceeded `ws_max_frame_bytes` (aiohttp closes with it)
    AUTH_FAILED = 4001  # no auth within `ws_auth_timeout_s`, or a bad token in the auth phase: do not retry as-is
    TOKEN_EXPIRED = 4003  # the access token expired without a refresh: get a new token, reconnect
    SLOW_CONSUMER = 4008  # outbound bytes over `ws_outbound_max_bytes`: reconnect and resume with `since`
    TOO_MANY_CONNECTIONS = 4009  # over `ws_max_conns_per_user` on this node: do not retry at once


CLOSE_REASONS: dict[Close, str] = {
    Close.GOING_AWAY: "going away",
    Close.AUTH_FAILED: "authentication failed",
    Close.TOKEN_EXPIRED: "token expired",
    Close.SLOW_CONSUMER: "slow consumer",
    Close.TOO_MANY_CONNECTIONS: "too many connections",
}


def reply_ok(ref: int | None, data: dict[str, Any] | None) -> bytes:
    return orjson.dumps({"op": "reply", "ref": ref, "ok": True, "data": data or {}})


def reply_error(ref: int | None, error: dict[str, Any]) -> bytes:
    """`error` is the `{"code", "message", "details"?}` object of `ApiError.body()`."""
    return orjson.dumps({"op": "reply", "ref": ref, "ok": False, "error": error})


def event_body(type_: str, data: dict[str, Any]) -> bytes:
    """What the broker carries for one event: `type` first, so the hub can read it without parsing."""
    return orjson.dumps({"type": type_, "data": data})


def event_payload(room_json: bytes, offset: int, body: bytes) -> bytes:
    """The pushed event, spliced from the broker body without decoding it again.

    `room_json` is the room name already JSON-encoded; offset 0 (volatile) is left out.
    """
    assert body[:1] == b"{" and len(body) > 2, "event body must be a non-empty JSON object"
    if offset:
        return b'{"op":"event","room":%b,"offset":%d,%b' % (room_json, offset, body[1:])
    return b'{"op":"event","room":%b,%b' % (room_json, body[1:])


class Envelope(BaseModel):
    """What every inbound frame must be; `data` is validated later against the op's schema."""

    model_config = ConfigDict(extra="forbid")

    op: str = Field(min_length=1, max_length=64)
    ref: StrictInt = Field(ge=0, le=MAX_REF)
    room: str | None = Field(default=None, min_length=1, max_length=128)
    data: dict[str, Any] = Field(default_factory=dict)

    # `data` is checked by the op's schema (an `OpData`); the envelope's own strings here.
    _storable = field_validator("op", "room")(check_value)
