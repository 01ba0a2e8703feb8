"""A minimal websocket client for load generation: one asyncio Protocol per connection.

aiohttp's client costs more CPU per received frame than the servers under test spend sending it,
and on a 2-core machine the load client must not be the bottleneck. This one does the least a
client may: an HTTP/1.1 upgrade, unmasked server frames parsed in place (RFC 6455 5.2), pongs for
pings, and sends with an all-zero mask (RFC 6455 requires a mask; zero is a valid one and makes
masking free). Text and binary payloads go to `on_message(connection, payload, now_ns)`; fragmented messages
are not used by any server under test and are refused.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Callable
from typing import cast

OnMessage = Callable[["WsConnection", bytes, int], None]
_LEN16 = struct.Struct("!H")
_LEN64 = struct.Struct("!Q")
_ZERO_MASK = b"\x00\x00\x00\x00"
MAX_HANDSHAKE_BYTES = 16_384
MAX_FRAME_BYTES = 16 * 1024 * 1024


class ProtocolError(Exception):
    pass


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + _LEN16.pack(n)
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + _LEN64.pack(n)
    return head + _ZERO_MASK + payload


class WsConnection(asyncio.Protocol):
    def __init__(self, host: str, port: int, path: str, on_message: OnMessage) -> None:
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self._buf = b""
        self._upgraded = False
        self.bytes_received = 0

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if not self._upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_HANDSHAKE_BYTES:
                    self._fail(ProtocolError("handshake response too large"))
                self._buf = data
                return
            status = data[:data.find(b"\r\n")]
            if b" 101 " not in status:
                self._fail(ProtocolError(f"upgrade refused: {status.decode(errors='replace')}"))
                return
            self._upgraded = True
            if not self.opened.done():
                self.opened.set_result(None)
            data = data[end + 4:]
        now = time.monotonic_ns()
        i, size = 0, len(data)
        on_message = self.on_message
        while size - i >= 2:
            b0, b1 = data[i], data[i + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - i < 4:
                    break
                n = _LEN16.unpack_from(data, i + 2)[0]
                head = 4
            elif n == 127:
                if size - i < 10:
                    break
                n = _LEN64.unpack_from(data, i + 2)[0]
                head = 10
                if n > MAX_FRAME_BYTES:
                    self._fail(ProtocolError("frame too large"))
                    return
            if size - i < head + n:
                break
            opcode = b0 & 0x0F
            payload = data[i + head:i + head + n]
            i += head + n
            if not b0 & 0x80 or opcode == 0:
                self._fail(ProtocolError("fragmented messages are not supported"))
                return
            if opcode in (1, 2):
                on_message(self, payload, now)
            elif opcode == 9:
                self._send(10, payload)
            elif opcode == 8:
                self.close_code = _LEN16.unpack_from(payload)[0] if len(payload) >= 2 else None
                self._send(8, payload[:2])
                if self.transport is not None:
                    self.transport.close()
                return
        if i < size:
            self._buf = data[i:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed before the upgrade"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    # --- API ---------------------------------------------------------------------------

    def send_text(self, payload: bytes) -> None:
        self._send(1, payload)

    def close(self, code: int = 1000) -> None:
        self._send(8, _LEN16.pack(code))
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the TCP connection without a close frame, as a network failure would."""
        if self.transport is not None:
            self.transport.abort()

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_frame(opcode, payload))

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


async def connect(host: str, port: int, path: str, on_message: OnMessage, timeout_s: float = 30.0) -> WsConnection:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: WsConnection(host, port, path, on_message), host, port), timeout_s)
    await asyncio.wait_for(proto.opened, timeout_s)
    return proto
