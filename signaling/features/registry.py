"""Every room feature module; importing this registers their socket ops (see `protocol.op`)."""

from signaling.features.chat import chat  # noqa: F401
from signaling.features.rooms import ops  # noqa: F401
from signaling.features.tips import tips  # noqa: F401
