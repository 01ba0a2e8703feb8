"""The socket protocol: envelopes, and the registry where room features declare their ops.

Client to server: `{"op": "...", "ref": n, "room": "...", "data": {...}}`.
Reply: `{"op": "reply", "ref": n, "ok": true, "data": {...}}` or
`{"op": "reply", "ref": n, "ok": false, "error": {"code": "...", "message": "..."}}`.
Server push: `{"op": "event", "room": "...", "offset": 42, "type": "chat.message", "data": {...}}`.

A feature module (chat, tips, seats, rtc) declares each op with `@op(...)`: its data schema, whether
it needs a signed-in user and a joined room. The socket endpoint validates the envelope and the
data against that declaration before the handler runs, so features never see malformed input, and
importing the feature module is all it takes to plug it in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

if TYPE_CHECKING:
    from aiohttp import web

    from server.identity import Identity

MAX_REF = 2**53 - 1  # refs round-trip through JavaScript numbers


class Envelope(BaseModel):
    """What every inbound frame must be; `data` is validated later against the op's schema."""

    model_config = ConfigDict(extra="forbid")

    op: str = Field(min_length=1, max_length=64)
    ref: StrictInt = Field(ge=0, le=MAX_REF)
    room: str | None = Field(default=None, min_length=1, max_length=128)
    data: dict[str, Any] = Field(default_factory=dict)


class OpData(BaseModel):
    """Base of every op's data schema: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class NoData(OpData):
    pass


@dataclass(slots=True)
class OpContext:
    session: Any  # signaling.connection.Connection; Any keeps features free of an import cycle
    ref: int
    room: str | None
    app: web.Application

    @property
    def identity(self) -> Identity | None:
        ident: Identity | None = self.session.identity
        return ident

    @property
    def user(self) -> Identity:
        ident = self.session.identity
        assert ident is not None, "ops declared auth='user' run only for signed-in sessions"
        return ident

    @property
    def room_name(self) -> str:
        assert self.room is not None, "ops declared room=True run only with a room"
        return self.room


OpHandler = Callable[[OpContext, Any], Awaitable[dict[str, Any] | None]]
OpAuth = Literal["any", "user"]


@dataclass(frozen=True, slots=True)
class OpSpec:
    name: str
    schema: type[OpData]
    auth: OpAuth
    room: Literal["none", "joined", "named"]
    handler: OpHandler


OPS: dict[str, OpSpec] = {}


def op(name: str, *, schema: type[OpData] = NoData, auth: OpAuth = "user",
       room: Literal["none", "joined", "named"] = "joined") -> Callable[[OpHandler], OpHandler]:
    """Declare a socket op.

    auth: "user" refuses guests (AUTHENTICATION_REQUIRED); "any" admits guests.
    room: "joined" requires `room` naming a room this connection joined (NOT_JOINED otherwise);
    "named" requires `room` but not membership (join itself); "none" ignores `room`.
    The handler returns the reply's `data` (None for `{}`) or raises `ApiError`.
    """

    def register(handler: OpHandler) -> OpHandler:
        assert name not in OPS, f"socket op {name!r} declared twice"
        OPS[name] = OpSpec(name, schema, auth, room, handler)
        return handler

    return register
