"""Every room feature, each plugged in by one line: its `register(registry)` adds its socket ops and hooks.

A new feature is a folder under `signaling/features/` with a `register` function, and a line here.
"""

from signaling.core import core_ops
from signaling.core.ops import OpRegistry
from signaling.features import chat, rooms, tips


def build() -> OpRegistry:
    """The socket ops and feature hooks of one app: the core's ops, then every feature's."""
    registry = OpRegistry()
    registry.include(core_ops.OPS)
    rooms.register(registry)
    chat.register(registry)
    tips.register(registry)
    return registry
