"""Room chat: messages stored for moderation, published to the room's stream, purged after retention."""

from signaling.core.ops import OpRegistry
from signaling.features.chat import ops


def register(registry: OpRegistry) -> None:
    registry.include(ops.OPS)
