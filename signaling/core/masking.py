"""RFC 6455 5.1: a client masks every frame it sends, and a server that receives an unmasked one
closes the connection with 1002 (protocol error).

aiohttp's frame reader is shared by its client and its server and accepts both, with no option to
require the mask. `StrictWebSocketResponse` puts `MaskGuard` in front of it: the guard follows the
frame headers of the inbound byte stream (it reads no payload), passes everything before an unmasked
frame to aiohttp's reader unchanged, and at one fails the socket exactly as the reader fails it on its
own protocol errors (1009, bad opcodes): `receive()` sees a `WebSocketError`, answers the close frame
with its code and ends the connection. Everything else is aiohttp's behaviour, byte for byte.

It relies on two attributes of aiohttp's request handler (`_payload_parser`, the reader `data_received`
feeds; `_message_tail`, bytes that came with the handshake) and on `WebSocketResponse._post_start`;
`tests/signaling/test_socket_masking.py` fails if an aiohttp upgrade moves them.
"""

from __future__ import annotations

import struct
from typing import Any

from aiohttp import WebSocketError, web
from aiohttp.web_request import BaseRequest

from signaling.core.protocol import Close

_LEN16 = struct.Struct("!H")
_LEN64 = struct.Struct("!Q")


class MaskGuard:
    """Stands where aiohttp's protocol feeds its websocket reader; passes on masked frames only."""

    __slots__ = ("_failed", "_head", "_queue", "_reader", "_skip")

    def __init__(self, reader: Any, queue: Any) -> None:
        self._reader = reader  # aiohttp's WebSocketReader
        self._queue = queue  # its WebSocketDataQueue, where receive() looks for messages and errors
        self._head = b""  # the start of a frame header that arrived split
        self._skip = 0  # payload bytes of the current frame still to come
        self._failed = False

    def feed_data(self, data: bytes | bytearray | memoryview) -> tuple[bool, bytes]:
        if self._failed:
            return True, b""
        data = bytes(data)
        unmasked_at = self._scan(data)
        if unmasked_at is None:
            result: tuple[bool, bytes] = self._reader.feed_data(data)
            return result
        if unmasked_at > 0:
            eof, tail = self._reader.feed_data(data[:unmasked_at])  # the frames before it are delivered
            if eof:
                return eof, tail
        self._failed = True
        self._queue.set_exception(WebSocketError(Close.PROTOCOL_ERROR, "Received an unmasked client frame"))
        return True, b""  # what aiohttp's reader answers after its own protocol errors

    def feed_eof(self) -> None:
        self._reader.feed_eof()

    def _scan(self, data: bytes) -> int | None:
        """Offset in `data` where an unmasked frame's header starts (0 when it began in an earlier
        chunk), or None when every frame header in `data` has the mask bit."""
        pos, end = 0, len(data)
        while True:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
            if pos >= end:
                return None
            head = self._head + data[pos:pos + 14]  # 14: the longest header (2 + 8 + 4)
            if len(head) < 2:
                self._head, pos = head, end
                continue
            second = head[1]
            if not second & 0x80:
                return max(0, pos - len(self._head))
            length = second & 0x7F
            extra = 2 if length == 126 else 8 if length == 127 else 0
            size = 2 + extra + 4
            if len(head) < size:
                self._head, pos = head, end
                continue
            if length == 126:
                (length,) = _LEN16.unpack_from(head, 2)
            elif length == 127:
                (length,) = _LEN64.unpack_from(head, 2)
            pos += size - len(self._head)
            self._head = b""
            self._skip = length


class StrictWebSocketResponse(web.WebSocketResponse):
    """A `WebSocketResponse` that closes the connection 1002 on an unmasked client frame."""

    def _post_start(self, request: BaseRequest, protocol: str | None, writer: Any) -> None:
        handler: Any = request.protocol
        # Bytes that came with the handshake: aiohttp would feed them to its reader unseen.
        tail: bytes = handler._message_tail
        handler._message_tail = b""
        super()._post_start(request, protocol, writer)
        assert handler._payload_parser is self._parser, "aiohttp feeds its websocket reader elsewhere now"
        guard = MaskGuard(self._parser, self._reader)
        handler._payload_parser = guard
        if tail:
            eof, _ = guard.feed_data(tail)
            if eof:
                handler.close()
