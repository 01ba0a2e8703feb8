"""Tips in a stream's room: the ledger moves the tokens, the recorder keeps the stream's totals."""

from signaling.core.ops import OpRegistry
from signaling.features.tips import ops


def register(registry: OpRegistry) -> None:
    registry.include(ops.OPS)
