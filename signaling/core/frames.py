"""RFC 6455 server frames built once, so a broadcast writes the same bytes to every member.

A server never masks (RFC 6455 5.1), and the socket is opened without permessage-deflate, so a
frame is a fixed header plus the payload: it can be built once and written to any number of
transports, interleaved safely with the frames aiohttp writes itself (pings, pongs, close), which are
whole frames too.
"""

from __future__ import annotations

import struct

OPCODE_TEXT = 0x1
_FIN = 0x80
_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def frame(payload: bytes, opcode: int = OPCODE_TEXT) -> bytes:
    """One unmasked, final frame carrying `payload` (7-, 16- or 64-bit length as RFC 6455 5.2 says)."""
    n = len(payload)
    first = _FIN | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return _LEN16.pack(first, 126, n) + payload
    return _LEN64.pack(first, 127, n) + payload


def text_frame(payload: bytes) -> bytes:
    """A text frame; `payload` must be UTF-8 (orjson output is)."""
    return frame(payload, OPCODE_TEXT)

