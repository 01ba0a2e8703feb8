"""Protocol fuzzing of the room socket against a real app (PostgreSQL, the ledger, the memory broker).

Whatever arrives, the socket keeps its contract: every text frame gets exactly one reply, carrying
the frame's `ref` when the server can read a usable one (else `null`), a binary frame one reply with
`null`; no reply is ever INTERNAL_ERROR; and the socket stays usable (`ping` answers after each
example). Frames: arbitrary JSON values, non-objects, text that is not JSON, binary frames, deep
nesting, huge and odd numbers (2**64, 1e400, -0), NULs and lone surrogates in strings, unknown ops,
missing and odd refs, and for every op of the app's registry data built from its own schema with
each field either plausible or of a wrong type.

One app for the module's test; the examples share one signed-in socket (an admin joined to a room,
so moderation, chat and tips reach their domain code), reconnected if an example killed it. The
examples are derandomized so CI runs the same ones every time.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from signaling.core import keys as socket_keys
from signaling.core.protocol import MAX_REF
from tests.support.factories import TestUser, make_user
from tests.support.socket_support import Sock, connect, public_room

MakeClient = Callable[..., Awaitable[TestClient]]
WAIT_S = 10.0
# Derandomized: CI runs the same examples every time. GREENROOM_FUZZ_EXAMPLES=20000 fuzzes longer.
EXAMPLES = int(os.environ.get("GREENROOM_FUZZ_EXAMPLES", "600"))
PING_REF = MAX_REF  # the trailer's ping; fuzzed frames may use it too: replies are matched by order


@pytest.fixture
def backend() -> str:
    return "memory"


# --- values -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Raw:
    """JSON text put into a frame as is (numbers Python cannot hold, invalid tokens, deep nesting)."""

    text: str


class _Missing:
    """A key left out of the envelope."""


MISSING = _Missing()


def encode(value: Any) -> str:
    """JSON text of `value`; `json.dumps` escapes NUL and lone surrogates (as \\u0000, \\ud800), so any
    Python string travels in a valid UTF-8 frame."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{encode(v)}" for k, v in value.items()
                              if not isinstance(v, _Missing)) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value)


ODD_CHARS = ["\x00", "\ufffe", "\uffff", "\u202e", "\u2028", "\x7f", "\U0010ffff", "\t", "\\", '"']
SURROGATES = ["\ud800", "\udfff", "\ud83d"]  # lone: orjson refuses them, so such a frame is MALFORMED_JSON
# Text that reaches the schemas (NULs included), and text that may not even parse.
CLEAN_TEXT = st.text(st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(ODD_CHARS)), max_size=40)
TEXT = st.one_of(CLEAN_TEXT, st.text(st.one_of(st.characters(), st.sampled_from(ODD_CHARS + SURROGATES)), max_size=40))
EDGE_INTS = [0, -1, 1, 2**31, 2**53 - 1, 2**53, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**64 - 1, 10**30]
ODD_NUMBERS = [Raw(t) for t in ("1e400", "-1e400", "-0", "-0.0", "1E-400", "0.1e1", "18446744073709551616",
                                "-9223372036854775809", "123456789012345678901234567890", "1.0", "2e0")]
BAD_TOKENS = [Raw(t) for t in ("NaN", "Infinity", "-Infinity", "01", "+1", ".5", "0x10", "1.", "tru", "nul",
                               "'single'", "undefined")]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(EDGE_INTS),
                    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(ODD_NUMBERS), TEXT)
HOSTILE = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                       max_leaves=12)


def nested(depth: int, inner: str = "0") -> Raw:
    return Raw("[" * depth + inner + "]" * depth)


DEEP = st.one_of(st.integers(1, 40), st.integers(250, 260), st.integers(1020, 1030), st.just(4000)).map(nested)


def from_schema(node: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Plausible values of a JSON Schema node (edges and just past them), for op data."""
    if "$ref" in node:
        return from_schema(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in node:
        return st.one_of(*(from_schema(branch, defs) for branch in node["anyOf"]))
    kind = node.get("type")
    if kind == "string":
        options: list[st.SearchStrategy[Any]] = [CLEAN_TEXT, CLEAN_TEXT, TEXT]
        if "enum" in node:
            options.append(st.sampled_from(node["enum"]))
        if "pattern" in node:  # the op schemas' only pattern is a uuid
            options.append(st.uuids().map(str))
        if "maxLength" in node:
            limit = node["maxLength"]
            options.append(st.sampled_from(["x" * limit, "x" * (limit + 1), "\x00" * min(limit, 8)]))
        return st.one_of(*options)
    if kind == "integer":
        low, high = node.get("minimum", -(2**63)), node.get("maximum", 2**63 - 1)
        edges = [low - 1, low, low + 1, high - 1, high, high + 1]
        return st.one_of(st.integers(low, min(high, low + 10**6)), st.sampled_from(edges + EDGE_INTS))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "object":
        return data_for(node, defs)
    return HOSTILE


def data_for(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Data for an op: its fields, each mostly plausible, else of a wrong type; one may be left out."""
    fields = {name: st.integers(0, 4).flatmap(lambda i, prop=prop: from_schema(prop, defs) if i < 4 else HOSTILE)
              for name, prop in schema.get("properties", {}).items()}
    return st.integers(0, 3).flatmap(lambda i: st.fixed_dictionaries(fields) if i < 3 else
                                     st.fixed_dictionaries({}, optional={**fields, "unexpected": HOSTILE}))


# --- frames -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Frame:
    text: str | None = None  # a text frame
    binary: bytes | None = None  # or a binary one


def frames(op_names: list[str], schemas: dict[str, dict[str, Any]], room: str) -> st.SearchStrategy[Frame]:
    ops = st.one_of(st.sampled_from(op_names), st.sampled_from(["", "PING", "ping ", "chat", "nope.nothing"]),
                    TEXT, HOSTILE)
    refs = st.one_of(st.integers(0, 1000), st.sampled_from([0, MAX_REF, MAX_REF + 1, -1, 2**63, 2**64, True]),
                     st.just(MISSING), st.sampled_from(ODD_NUMBERS), HOSTILE)
    rooms = st.one_of(st.just(MISSING), st.just(room), st.just(room.upper()), st.just(room + "\x00"),
                      st.just("stream:00000000-0000-4000-8000-000000000000"), TEXT, HOSTILE)

    @st.composite
    def op_call(draw: st.DrawFn) -> Frame:
        """A well-formed envelope of a registered op: its data is what is fuzzed."""
        op = draw(st.sampled_from(op_names))
        body: dict[str, Any] = {"op": op, "ref": draw(st.integers(0, 1000))}
        if draw(st.integers(0, 9)) < 9:  # 0 first: Hypothesis leans to it, and shrinks toward it
            body["room"] = room
        choice = draw(st.integers(0, 9))
        if choice < 7:
            body["data"] = draw(data_for(schemas[op], schemas[op].get("$defs", {})))
        elif choice == 7:
            body["data"] = draw(HOSTILE)
        elif choice == 8:
            body["data"] = {"x": draw(DEEP)}
        return Frame(text=encode(body))

    @st.composite
    def envelope(draw: st.DrawFn) -> Frame:
        """An envelope any of whose parts may be wrong."""
        op = draw(ops)
        if isinstance(op, str) and op in schemas:
            data = draw(st.one_of(st.just(MISSING), data_for(schemas[op], schemas[op].get("$defs", {})), HOSTILE,
                                  DEEP.map(lambda raw: {"x": raw})))
        else:
            data = draw(st.one_of(st.just(MISSING), HOSTILE))
        body = {"op": draw(st.one_of(st.just(op), st.just(MISSING))), "ref": draw(refs), "room": draw(rooms),
                "data": data}
        extra = draw(st.dictionaries(st.sampled_from(["extra", "Op", "REF", "\x00"]), HOSTILE, max_size=1))
        keys = draw(st.permutations(list(body) + list(extra)))
        return Frame(text=encode({k: {**body, **extra}[k] for k in keys}))

    garbage = st.one_of(
        st.text(st.characters(exclude_categories=("Cs",)), max_size=60),
        st.sampled_from(["", " ", "{", "}", "[", '{"op":', '{"op":"ping","ref":1', '{"op":"ping","ref":1}}',
                         '{"op":"ping","ref":1}{"op":"ping","ref":2}', "\ufeff{}", '"\\ud800"', "\x00"]))
    kinds: dict[str, st.SearchStrategy[Frame]] = {
        "call": op_call(),
        "envelope": envelope(),
        "json": HOSTILE.map(lambda v: Frame(text=encode(v))),
        "number": st.sampled_from(BAD_TOKENS + ODD_NUMBERS).map(
            lambda v: Frame(text=encode({"op": "ping", "ref": 7, "data": {"n": v}}))),
        "deep": DEEP.map(lambda raw: Frame(text=raw.text)),
        "garbage": garbage.map(lambda text: Frame(text=text)),
        "binary": st.binary(max_size=64).map(lambda data: Frame(binary=data)),
    }
    # Mostly calls of registered ops (their data fuzzed), where the domain code is.
    weights = ["call"] * 8 + ["envelope"] * 3 + ["json", "number", "deep", "garbage", "binary"]
    return st.sampled_from(weights).flatmap(lambda kind: kinds[kind])


def expected_ref(frame: Frame) -> int | None:
    """The ref the reply must carry: the frame's, when the server can read a usable one."""
    if frame.text is None:
        return None
    try:
        obj = orjson.loads(frame.text)
    except orjson.JSONDecodeError:
        return None
    ref = obj.get("ref") if isinstance(obj, dict) else None
    usable = isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref <= MAX_REF
    return ref if usable else None


# --- the property -----------------------------------------------------------------------------

@dataclass
class Session:
    client: TestClient
    user: TestUser
    room: str
    sock: Sock | None = None

    async def ready(self) -> Sock:
        if self.sock is None or self.sock.ws.closed:
            self.sock = await connect(self.client, token=self.user.token)
        return self.sock


async def receive_replies(sock: Sock, count: int) -> list[dict[str, Any]]:
    """The next `count` replies (events in between are skipped); fails if the socket closes."""
    replies: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT_S):
        while len(replies) < count:
            msg = await sock.ws.receive()
            assert msg.type == aiohttp.WSMsgType.TEXT, f"the socket ended: {msg.type} {msg.data!r}"
            frame = orjson.loads(msg.data)
            if frame["op"] == "reply":
                replies.append(frame)
            else:
                assert frame["op"] == "event", frame
    return replies


async def run_example(session: Session, batch: list[Frame]) -> None:
    sock = await session.ready()
    for frame in batch:
        if frame.binary is not None:
            await sock.ws.send_bytes(frame.binary)
        else:
            assert frame.text is not None
            await sock.ws.send_str(frame.text)
    # a `leave` may have come: rejoin (or ALREADY_JOINED), then the ping that must answer
    await sock.send({"op": "join", "ref": PING_REF, "room": session.room})
    await sock.send({"op": "ping", "ref": PING_REF})
    replies = await receive_replies(sock, len(batch) + 2)
    for frame, reply in zip(batch, replies, strict=False):
        assert reply["ref"] == expected_ref(frame), (frame, reply)
        assert reply["ok"] or reply["error"]["code"] != "INTERNAL_ERROR", (frame, reply)
        assert reply["ok"] or isinstance(reply["error"]["message"], str), (frame, reply)
    rejoin, ping = replies[-2:]
    assert rejoin["ok"] or rejoin["error"]["code"] == "ALREADY_JOINED", rejoin
    assert ping["ok"] is True and ping["ref"] == PING_REF and ping["data"]["at"] > 0, ping


@pytest.mark.timeout(300)  # the examples take well under a minute; shrinking a failure takes longer
async def test_the_socket_survives_hostile_frames(socket_client: MakeClient) -> None:
    client = await socket_client(ws_ops_per_10s=1_000_000, chat_rate_per_10s=1_000_000, rate_tips_per_min=1_000_000,
                                 rate_general_per_hour=1_000_000)
    registry = client.app[socket_keys.OPS]
    schemas = {}
    for name in registry.names:
        spec = registry.get(name)
        assert spec is not None
        schemas[name] = spec.schema.model_json_schema()
    admin = await make_user(client.app, role="admin")  # staff in every room: moderation ops reach their domain
    room = await public_room(client.app)
    session = Session(client, admin, room)
    await (await session.ready()).ok("join", room)
    loop = asyncio.get_running_loop()

    @hsettings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batch=st.lists(frames(registry.names, schemas, room), min_size=1, max_size=4))
    def check(batch: list[Frame]) -> None:
        asyncio.run_coroutine_threadsafe(run_example(session, batch), loop).result(WAIT_S * 2)

    # Hypothesis drives synchronous examples: in a thread, each example runs on the app's loop.
    await asyncio.to_thread(check)
    assert session.sock is not None and not session.sock.ws.closed


def test_the_encoder_writes_what_the_server_reads() -> None:
    assert encode({"a": "\x00\ud800", "n": Raw("1e400"), "skip": MISSING}) == '{"a":"\\u0000\\ud800","n":1e400}'
    assert expected_ref(Frame(text='{"op":"ping","ref":-0}')) == 0
    assert expected_ref(Frame(text='{"op":"ping","ref":18446744073709551616}')) is None
    assert expected_ref(Frame(text='{"op":"ping","ref":1,"s":"\\ud800"}')) is None  # orjson refuses lone surrogates
    assert encode([2**64, -0.0, None, True]) == "[18446744073709551616,-0.0,null,true]"
