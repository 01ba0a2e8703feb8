"""Frames built once (RFC 6455 lengths) and the connection's byte budget, watermark and coalescing."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import orjson
import pytest

from server.kernel.settings import Settings
from signaling.core.connection import Connection, Outbox
from signaling.core.frames import text_frame
from signaling.core.protocol import Close, event_body, event_payload


def parse(frame: bytes) -> tuple[int, bytes, bytes]:
    """(first byte, payload, rest) of one unmasked server frame."""
    first, second = frame[0], frame[1]
    assert second & 0x80 == 0, "a server frame is never masked"
    length, pos = second & 0x7F, 2
    if length == 126:
        (length,) = struct.unpack("!H", frame[2:4])
        pos = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", frame[2:10])
        pos = 10
    return first, frame[pos:pos + length], frame[pos + length:]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_lengths(size: int) -> None:
    payload = b"a" * size
    first, body, rest = parse(text_frame(payload))
    assert first == 0x81 and body == payload and rest == b""
    header = len(text_frame(payload)) - size
    assert header == (2 if size < 126 else 4 if size < 65536 else 10)


def test_event_payload_is_the_json_a_decoder_expects() -> None:
    body = event_body("chat.message", {"text": "héllo \"quoted\"", "n": [1, 2]})
    room = orjson.dumps('stream:"odd"')
    assert orjson.loads(event_payload(room, 42, body)) == {
        "op": "event", "room": 'stream:"odd"', "offset": 42, "type": "chat.message",
        "data": {"text": "héllo \"quoted\"", "n": [1, 2]}}
    assert orjson.loads(event_payload(room, 0, body)) == {
        "op": "event", "room": 'stream:"odd"', "type": "chat.message",
        "data": {"text": "héllo \"quoted\"", "n": [1, 2]}}


class KernelTransport:
    """A transport whose kernel takes `accept` bytes per write and keeps the rest buffered."""

    def __init__(self, accept: int) -> None:
        self.accept = accept
        self.buffered = 0
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.buffered += max(0, len(data) - self.accept)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True
        self.buffered = 0


class SocketStub:
    def __init__(self) -> None:
        self.closed_with: tuple[int, bytes] | None = None

    async def close(self, *, code: int, message: bytes) -> bool:
        self.closed_with = (code, message)
        return True


def connection(transport: KernelTransport, **overrides: Any) -> tuple[Connection, SocketStub]:
    settings = Settings(ws_outbound_max_bytes=8192, ws_volatile_drop_bytes=2048, **overrides)
    ws = SocketStub()
    return Connection(ws, transport, settings, Outbox()), ws  # type: ignore[arg-type]


async def test_frames_of_one_tick_go_out_in_one_write() -> None:
    transport = KernelTransport(accept=10**9)
    conn, _ = connection(transport)
    frames = [text_frame(b'{"n":%d}' % i) for i in range(5)]
    for f in frames:
        assert conn.enqueue(f)
    assert transport.writes == []  # nothing is written inside the broadcast loop
    await asyncio.sleep(0)
    assert transport.writes == [b"".join(frames)]


async def test_over_budget_is_a_slow_consumer_but_a_burst_the_kernel_takes_is_not() -> None:
    fast = KernelTransport(accept=10**9)
    conn, _ = connection(fast)
    for _ in range(100):  # 100 KB in one tick: more than the budget, but the kernel takes it all
        assert conn.enqueue(text_frame(b"x" * 1000))
    assert not conn.closing

    stuck = KernelTransport(accept=0)
    slow, ws = connection(stuck)
    sent = 0
    while slow.enqueue(text_frame(b"x" * 1000)):
        sent += 1
    assert slow.close_code == Close.SLOW_CONSUMER
    assert stuck.buffered <= 8192 and sent == 8  # never more than the budget handed to the transport
    assert not slow.enqueue(text_frame(b"late"))
    await slow.close(Close.NORMAL)  # waits for the close under way; the first reason stands
    assert ws.closed_with == (Close.SLOW_CONSUMER, b"slow consumer")


async def test_volatile_events_are_dropped_above_the_watermark() -> None:
    stuck = KernelTransport(accept=0)
    conn, _ = connection(stuck)
    conn.enqueue(text_frame(b"x" * 3000))
    conn.flush()
    assert stuck.buffered > 2048
    assert not conn.enqueue_volatile(text_frame(b'{"count":1}'))  # dropped, not queued
    assert not conn.closing
    assert conn.enqueue(text_frame(b"ordered"))  # ordered events still go (under the budget)


async def test_an_interval_outbox_writes_at_once_after_a_quiet_spell_then_at_most_once_per_interval() -> None:
    transport = KernelTransport(accept=10**9)
    conn, _ = connection(transport)
    bulk = Outbox(interval_s=0.3)
    loop = asyncio.get_running_loop()
    conn.enqueue(text_frame(b"a"), bulk)
    await asyncio.sleep(0)
    assert transport.writes == [text_frame(b"a")]  # the first after a quiet spell goes at once
    flushed_at = loop.time()
    conn.enqueue(text_frame(b"b"), bulk)
    await asyncio.sleep(0)
    conn.enqueue(text_frame(b"c"), bulk)
    await asyncio.sleep(0.05)
    assert len(transport.writes) == 1  # b and c wait for the interval
    async with asyncio.timeout(5):
        while len(transport.writes) == 1:  # noqa: ASYNC110 - polling a fake transport
            await asyncio.sleep(0.01)
    assert loop.time() - flushed_at >= 0.29
    assert transport.writes[1] == text_frame(b"b") + text_frame(b"c")  # one write, in order


async def test_a_reply_does_not_wait_for_a_big_rooms_interval_and_keeps_the_order() -> None:
    transport = KernelTransport(accept=10**9)
    conn, _ = connection(transport)
    bulk = Outbox(interval_s=60.0)
    conn.enqueue(text_frame(b"e1"), bulk)
    await asyncio.sleep(0)  # e1 goes at once, and starts the interval
    conn.enqueue(text_frame(b"e2"), bulk)
    conn.enqueue(text_frame(b"e3"), bulk)
    await asyncio.sleep(0.02)
    assert transport.writes == [text_frame(b"e1")]
    conn.send(b'{"op":"reply"}')  # the default outbox: right after this tick
    await asyncio.sleep(0)
    queued = text_frame(b"e2") + text_frame(b"e3") + text_frame(b'{"op":"reply"}')
    assert transport.writes == [text_frame(b"e1"), queued]
    bulk.flush()  # the interval's own flush later finds nothing left to write
    assert len(transport.writes) == 2
