"""Every room feature module; importing this registers their socket ops (see `protocol.op`)."""

from . import chat, moderation, tips  # noqa: F401
