"""Typed keys of the socket core's services (aiohttp AppKey)."""

from __future__ import annotations

from aiohttp import web

from signaling.core.broker import Broker
from signaling.core.control import Control
from signaling.core.hub import Hub
from signaling.core.ops import OpRegistry
from signaling.core.presence import Presence

BROKER = web.AppKey("broker", Broker)  # room streams between nodes (memory or Redis)
PRESENCE = web.AppKey("presence", Presence)  # who is in which room, across nodes
HUB = web.AppKey("hub", Hub)  # this node's rooms and sockets; `publish` is how features emit events
CONTROL = web.AppKey("control", Control)  # actions on a user or connection wherever it is connected
OPS = web.AppKey("socket_ops", OpRegistry)  # this app's socket ops and the room features' hooks
