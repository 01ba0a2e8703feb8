"""An account's standing changed (suspended, banned, another role): its open sockets follow at once.

REST refuses the old access tokens on the node that made the change at once; every other node
learns it from the control channel (`DisconnectUser` with `revoke_before`) rather than at its next
key reload, and closes the user's sockets:

- a suspended or banned account: 4001 (`AUTH_FAILED`, "account <status>"): do not reconnect as is;
- a role change: 4003 (`TOKEN_EXPIRED`): get a fresh token (it carries the new role), reconnect.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from signaling.core import keys as socket_keys
from signaling.core.protocol import Close


async def account_revoked(app: web.Application, user_id: uuid.UUID, at: float, status: str) -> None:
    """The user's tokens issued before `at` are revoked; `status` is the account's status now."""
    if status == "active":
        code, reason = Close.TOKEN_EXPIRED, "your role changed; sign in again"
    else:
        code, reason = Close.AUTH_FAILED, f"account {status}"
    await app[socket_keys.CONTROL].disconnect(user_id, code, reason, revoke_before=at)
