"""Rooms: who may enter a room and with what rights (the socket core's gate), and moderation."""

from signaling.core.ops import OpRegistry
from signaling.features.rooms import access, ops


def register(registry: OpRegistry) -> None:
    registry.include(ops.OPS)
    registry.admit_with(access.authorize_join, access.admitted)
