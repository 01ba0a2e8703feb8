"""Signaling: the room socket, protocol, hub, broker, presence and room features."""
