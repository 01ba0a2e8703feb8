"""What the socket refuses before a handler or the database sees it: NUL (U+0000) in any string of an
envelope or of op data (PostgreSQL refuses it in text), integers a bigint cannot hold, and JSON
nested deeper than `json_max_depth`; each gets an error reply with its ref, and the socket stays."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import ValidationError

from signaling.core.protocol import Envelope
from signaling.features import registry
from tests.support.factories import make_user
from tests.support.socket_support import connect, public_room

MakeClient = Callable[..., Awaitable[TestClient]]
NUL = "a\x00b"


@pytest.fixture
def backend() -> str:
    """Input checks happen before any broker is involved: the memory broker is enough."""
    return "memory"


async def test_nul_in_op_data_and_envelope_is_refused(socket_client: MakeClient) -> None:
    client = await socket_client()
    host = await make_user(client.app, role="performer")
    viewer = await make_user(client.app)
    room = await public_room(client.app, host)
    sock = await connect(client, token=viewer.token)
    await sock.ok("join", room)

    async def refused(frame: dict[str, Any], code: str = "VALIDATION_ERROR") -> dict[str, Any]:
        await sock.send(frame)
        reply = await sock.reply(frame["ref"])
        assert reply["ok"] is False and reply["error"]["code"] == code, reply
        error: dict[str, Any] = reply["error"]
        return error

    error = await refused({"op": "chat.send", "ref": 1, "room": room, "data": {"text": NUL}})
    assert error["details"]["errors"][0]["field"] == "text"
    assert "U+0000" in error["details"]["errors"][0]["issue"]
    await refused({"op": "tip.send", "ref": 2, "room": room,
                   "data": {"id": "00000000-0000-0000-0000-000000000001", "amount": 1, "message": NUL}})
    await refused({"op": "room.ban", "ref": 3, "room": room,
                   "data": {"user_id": str(host.id), "reason": NUL}})
    await refused({"op": "join", "ref": 4, "room": room + "\x00"}, "BAD_REQUEST")
    await refused({"op": "join", "ref": 5, "room": room, "data": {"since": {"epoch": NUL, "offset": 1}}})
    await refused({"op": "auth", "ref": 6, "data": {"token": NUL}})
    await refused({"op": "presence", "ref": 7, "room": room, "data": {"limit": 2**63}})
    assert (await sock.ok("ping"))["at"] > 0


def test_every_op_schema_refuses_nul_in_its_string_fields() -> None:
    ops = registry.build()
    checked = 0
    for name in ops.names:
        spec = ops.get(name)
        assert spec is not None
        for field, prop in spec.schema.model_json_schema().get("properties", {}).items():
            branches = prop.get("anyOf", [prop])
            if not any(b.get("type") == "string" and "enum" not in b for b in branches):
                continue
            with pytest.raises(ValidationError) as caught:
                spec.schema.model_validate({field: NUL}, strict=True)
            assert any(e["loc"][:1] == (field,) for e in caught.value.errors()), (name, field)
            checked += 1
    assert checked >= 6
    with pytest.raises(ValidationError):
        Envelope.model_validate({"op": "join", "ref": 1, "room": NUL})


def frame_of_depth(depth: int, ref: int) -> str:
    """A `ping` frame nesting `depth` levels: the frame, `data`, then arrays under `data.x`."""
    arrays = depth - 2
    return f'{{"op": "ping", "ref": {ref}, "data": {{"x": ' + "[" * arrays + "]" * arrays + "}}"


async def test_deep_nesting_is_refused_before_parsing_fails(socket_client: MakeClient) -> None:
    client = await socket_client(json_max_depth=8)
    sock = await connect(client, guest=True)

    # 8 levels: within the bound, so the schema answers (`x` is no field of ping)
    await sock.ws.send_str(frame_of_depth(8, 3))
    assert (await sock.reply(3))["error"]["code"] == "VALIDATION_ERROR"
    for depth in (9, 40, 255, 256, 1000):  # 255: past orjson's encoder; 1000: near its parser's limit
        await sock.ws.send_str(frame_of_depth(depth, depth))
        reply = await sock.reply(depth)
        assert reply["ok"] is False and reply["error"]["code"] == "BAD_REQUEST", (depth, reply)
        assert reply["error"]["details"] == {"max_depth": 8}
    await sock.ws.send_str("[" * 2000 + "]" * 2000)  # past orjson's parser: not JSON it can read
    assert (await sock.reply(None))["error"]["code"] == "MALFORMED_JSON"
    assert (await sock.ok("ping"))["at"] > 0


async def test_the_default_depth_takes_ordinary_frames(socket_client: MakeClient) -> None:
    client = await socket_client()
    sock = await connect(client, guest=True)
    # brackets inside strings count toward the quick check but not toward the depth
    await sock.send({"op": "auth", "ref": 9, "data": {"token": "[" * 100}})
    assert (await sock.reply(9))["error"]["code"] == "INVALID_TOKEN"
    await sock.ws.send_str(frame_of_depth(33, 4))
    assert (await sock.reply(4))["error"]["code"] == "BAD_REQUEST"
    await sock.ws.send_str(frame_of_depth(32, 5))
    assert (await sock.reply(5))["error"]["code"] == "VALIDATION_ERROR"
    await sock.ws.send_str(frame_of_depth(260, 6))
    assert (await sock.reply(6))["error"]["code"] == "BAD_REQUEST"
    assert (await sock.ok("ping"))["at"] > 0
