"""Who may hold a socket: a node-wide cap, sockets per user on every node, guests per address.

- The node cap (`ws_max_conns_per_node`) is checked before the websocket upgrade: a full node
  answers 503 so a load balancer or the client's backoff takes the socket elsewhere.
- Sockets of a user count on every node together (`ws_max_conns_per_user`): they are a presence
  channel of their own (`user_sockets`); a socket is added, then the channel counted. Two sockets
  arriving at once at the limit may both be refused, never both admitted over it. If presence
  fails, this node's own count still applies.
- Guest sockets count per client address on this node (`ws_max_guests_per_ip`).
"""

from __future__ import annotations

import contextlib
import logging
import uuid

from server.kernel.settings import Settings
from signaling.core.connection import Connection
from signaling.core.presence import Presence

log = logging.getLogger("greenroom.socket")


def user_sockets(user_id: uuid.UUID) -> str:
    """The presence channel that counts a user's sockets on every node (not a room)."""
    return f"user:{user_id}"


class Admission:
    def __init__(self, presence: Presence, settings: Settings) -> None:
        self._presence = presence
        self._settings = settings
        self.by_user: dict[uuid.UUID, set[Connection]] = {}
        self.guests_by_ip: dict[str, set[Connection]] = {}

    def full(self, open_sockets: int) -> bool:
        """A node holding `open_sockets` has reached `ws_max_conns_per_node`: refuse the next upgrade."""
        return open_sockets >= self._settings.ws_max_conns_per_node

    def sockets_of(self, user_id: uuid.UUID) -> set[Connection]:
        """This node's sockets signed in as the user."""
        return self.by_user.get(user_id, set())

    async def admit_user(self, conn: Connection, user_id: uuid.UUID) -> bool:
        """Count `conn` against its user's socket limit, on every node; False when over it."""
        limit = self._settings.ws_max_conns_per_user
        conns = self.by_user.setdefault(user_id, set())
        if conn in conns:
            return True
        if len(conns) >= limit:
            if not conns:
                del self.by_user[user_id]
            return False
        conns.add(conn)
        channel = user_sockets(user_id)
        try:
            await self._presence.add(channel, conn.conn_id, {"user_id": str(user_id)})
            clients, _ = await self._presence.counts(channel)
        except Exception as exc:
            log.warning("presence unavailable for the socket limit of %s: %s", user_id, exc)
            return True
        if clients <= limit and not conn.detached:
            return True
        self._forget_user_socket(conn, user_id)
        with contextlib.suppress(Exception):
            await self._presence.remove(channel, conn.conn_id)
        return False

    def admit_guest(self, conn: Connection) -> bool:
        """Count a guest `conn` against its address's per-node limit; False when over it."""
        conns = self.guests_by_ip.setdefault(conn.remote, set())
        if conn not in conns and len(conns) >= self._settings.ws_max_guests_per_ip:
            if not conns:
                del self.guests_by_ip[conn.remote]
            return False
        conns.add(conn)
        return True

    async def release(self, conn: Connection) -> None:
        """The socket is gone: it no longer counts anywhere."""
        guests = self.guests_by_ip.get(conn.remote)
        if guests is not None:
            guests.discard(conn)
            if not guests:
                del self.guests_by_ip[conn.remote]
        uid = conn.user_id
        if uid is not None and conn in self.by_user.get(uid, ()):
            self._forget_user_socket(conn, uid)
            try:
                await self._presence.remove(user_sockets(uid), conn.conn_id)
            except Exception:
                log.exception("presence remove failed for the sockets of %s", uid)  # expires with its TTL

    def _forget_user_socket(self, conn: Connection, user_id: uuid.UUID) -> None:
        conns = self.by_user.get(user_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.by_user[user_id]
