"""Helpers for room, chat and moderation tests: identities of test users, op calls, streams."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from server.kernel.identity import Identity
from signaling.core import keys as socket_keys
from signaling.core.ops import OpContext
from tests.support.factories import TestUser


def identity(user: TestUser) -> Identity:
    return Identity(user.id, user.role, time.time() + 3600)  # type: ignore[arg-type]


@dataclass
class Session:
    """The part of a socket session an op handler reads: who is calling."""

    identity: Identity | None


async def call_op(app: web.Application, name: str, user: TestUser | None, room: str | None,
                  data: dict[str, Any]) -> Any:
    """Run a registered op's handler the way the endpoint does: validate `data`, then call."""
    spec = app[socket_keys.OPS].get(name)
    assert spec is not None, f"no op {name!r} in this app"
    parsed = spec.schema.model_validate(data)
    ctx = OpContext(session=Session(identity(user) if user else None), ref=1, room=room, app=app)
    return await spec.handler(ctx, parsed)


async def new_stream(client: TestClient, host: TestUser, **fields: Any) -> dict[str, Any]:
    body = {"title": "Evening set", **fields}
    resp = await client.post("/v1/streams", json=body, headers=host.headers)
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = (await resp.json())["data"]
    return data


def room_of(stream: dict[str, Any]) -> str:
    return f"stream:{stream['id']}"


def random_room(kind: str = "show") -> tuple[str, uuid.UUID]:
    ref = uuid.uuid4()
    return f"{kind}:{ref}", ref
