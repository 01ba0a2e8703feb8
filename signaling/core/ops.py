"""Socket ops as declarations, and the per-app registry the endpoint dispatches from.

An op is declared like a REST route: its data schema, whether it needs a signed-in user, the
account roles that may call it, whether it names a (joined) room, and the rate category it spends.
The endpoint checks all of that before the handler runs, so a handler never sees malformed input
or an unauthorised caller, and never calls a limiter by hand.

A feature module collects its ops in an `OpGroup` (`@OPS.op("chat.send", ...)`); its package's
`register(registry)` includes the group in the app's `OpRegistry` and, where the feature decides
who enters a room, installs the room gate and the access re-check. `signaling.features.registry`
lists every feature; the composition root builds one registry per app, so two apps in one process
(tests) never share ops.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, field_validator

from server.kernel.access import Access
from server.kernel.identity import Identity, Role
from server.kernel.inputs import check_value
from server.kernel.limits import Category
from signaling.core.connection import Connection, Grant

# Ids in op data are strings (JSON has no uuid); the schema checks their shape.
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


class OpData(BaseModel):
    """Base of every op's data schema: unknown fields are an error, and no field holds what
    PostgreSQL cannot store (`server.kernel.inputs`: NUL in a string, nested ones and free-form values
    included; an integer beyond 64 bits; NaN, infinities)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return check_value(value)


class NoData(OpData):
    pass


@dataclass(slots=True)
class OpContext:
    """What a handler receives besides its validated data."""

    session: Connection
    ref: int
    room: str | None
    app: web.Application
    after_reply: list[Callable[[], None]] = field(default_factory=list)

    def defer(self, callback: Callable[[], None]) -> None:
        """Run `callback` right after the reply is queued (join switches to live events there)."""
        self.after_reply.append(callback)

    @property
    def identity(self) -> Identity | None:
        return self.session.identity

    @property
    def user(self) -> Identity:
        ident = self.session.identity
        assert ident is not None, "ops declared auth='user' run only for signed-in sessions"
        return ident

    @property
    def room_name(self) -> str:
        assert self.room is not None, "ops declared with a room rule run only with a room"
        return self.room


OpHandler = Callable[[OpContext, Any], Awaitable[dict[str, Any] | None]]
OpAuth = Literal["any", "user"]
RoomRule = Literal["none", "joined", "named"]


@dataclass(frozen=True, slots=True)
class OpSpec:
    name: str
    schema: type[OpData]
    auth: OpAuth  # "user" refuses guests (AUTHENTICATION_REQUIRED); "any" admits them
    roles: tuple[Role, ...]  # account roles that may call it; empty: any
    room: RoomRule  # "joined": `room` must be joined (NOT_JOINED); "named": required; "none": ignored
    rate: Category  # budget spent per call (shared with REST routes of the category); "none": free
    handler: OpHandler
    access: Access[str] | None = None  # "ok" or the error code each kind of caller gets (server.kernel.access)


class OpGroup:
    """One module's ops, declared with `@group.op(...)`; included into a registry per app."""

    def __init__(self) -> None:
        self.specs: list[OpSpec] = []

    def op(self, name: str, *, schema: type[OpData] = NoData, auth: OpAuth = "user", roles: tuple[Role, ...] = (),
           room: RoomRule = "joined", rate: Category = "none",
           access: Access[str] | None = None) -> Callable[[OpHandler], OpHandler]:
        """Declare an op; the handler returns the reply's `data` (None for `{}`) or raises `ApiError`.

        `access`: what each kind of caller gets, in the room the op names when it names one
        (`server.kernel.access`; tests/contracts/test_access_table.py holds the op to it)."""
        assert not roles or auth == "user", f"op {name!r}: roles apply to signed-in users only"

        def declare(handler: OpHandler) -> OpHandler:
            self.specs.append(OpSpec(name, schema, auth, roles, room, rate, handler, access))
            return handler

        return declare


# Decides whether `identity` (None: a guest) may enter the room, and with what grant; raises
# ApiError (NOT_FOUND, BANNED, PERMISSION_DENIED) otherwise.
RoomGate = Callable[[web.Application, Identity | None, str], Awaitable[Grant]]
# Which of these users the room admits now, and whether guests may stay (after an access change).
AccessCheck = Callable[[web.Application, str, Collection[uuid.UUID]], Awaitable[tuple[bool, set[uuid.UUID]]]]
# Told when a socket is gone (after it left its rooms): a feature frees what it held for it.
DetachHook = Callable[[Connection], Awaitable[None]]


async def _no_gate(app: web.Application, identity: Identity | None, room: str) -> Grant:
    raise LookupError("no room feature installed a gate: nobody may join rooms")


class OpRegistry:
    """The ops of one app and the hooks room features give the core."""

    def __init__(self) -> None:
        self._ops: dict[str, OpSpec] = {}
        self.gate: RoomGate = _no_gate
        self.access_check: AccessCheck | None = None
        self.detach_hooks: list[DetachHook] = []

    def include(self, group: OpGroup) -> None:
        for spec in group.specs:
            assert spec.name not in self._ops, f"socket op {spec.name!r} declared twice"
            self._ops[spec.name] = spec

    def get(self, name: str) -> OpSpec | None:
        return self._ops.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._ops)

    def admit_with(self, gate: RoomGate, access_check: AccessCheck) -> None:
        """Install the room feature's gate (who may join) and re-check (who may stay after a change)."""
        assert self.gate is _no_gate, "one feature decides who enters rooms"
        self.gate = gate
        self.access_check = access_check

    def on_detach(self, hook: DetachHook) -> None:
        self.detach_hooks.append(hook)
