"""Every room feature module; importing this registers their socket ops (see `protocol.op`)."""

from signaling import chat, moderation, tips  # noqa: F401
