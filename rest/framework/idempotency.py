"""`Idempotency-Key` for money-moving and booking POSTs.

The first request with a key runs and its response is stored; a retry with the same key and the
same body gets the stored response back (`Idempotent-Replayed: true`) and runs nothing; the same
key with a different body is refused. A request that failed with a 5xx leaves no record, so the
client may retry it. Keys are scoped per caller and route and expire after `KEY_TTL_S`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from rest.framework.responses import error, replay
from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode
from server.kernel.identity import Identity
from server.kernel.net import client_ip

KEY_TTL_S = 24 * 3600
MAX_KEY_CHARS = 255


def idempotency_key(request: web.Request) -> str | None:
    """The request's `Idempotency-Key` as `run_idempotent` scopes it (stripped); None without one."""
    return request.headers.get("Idempotency-Key", "").strip() or None


async def run_idempotent(request: web.Request, identity: Identity | None,
                         handler: Callable[[], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Run `handler` once per (caller, route, key); see the module docstring."""
    key = request.headers["Idempotency-Key"].strip()
    if not key or len(key) > MAX_KEY_CHARS:
        raise ApiError(ErrorCode.BAD_REQUEST, f"Idempotency-Key must be 1-{MAX_KEY_CHARS} characters")
    who = str(identity.user_id) if identity else client_ip(request)
    scope = f"{who} {request.method} {request.path}"
    digest = hashlib.sha256(await request.read()).digest()
    db = request.app[keys.DB]
    row = await db.fetchrow(
        """INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3)
           ON CONFLICT (scope, key) DO UPDATE
              SET request_hash = EXCLUDED.request_hash, status = NULL, body = NULL, created_at = now()
              WHERE idempotency_keys.created_at < now() - make_interval(secs => $4)
           RETURNING true AS fresh""",
        scope, key, digest, KEY_TTL_S)
    if row is None:
        prior = await db.fetchrow(
            "SELECT request_hash, status, body FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key)
        if prior is None:  # expired and removed between the two statements: treat as a conflict to retry
            raise ApiError(ErrorCode.CONFLICT, "idempotency key changed state; retry")
        if bytes(prior["request_hash"]) != digest:
            raise ApiError(ErrorCode.IDEMPOTENCY_KEY_REUSED, "this Idempotency-Key was used with a different request")
        if prior["status"] is None:
            raise ApiError(ErrorCode.CONFLICT, "a request with this Idempotency-Key is still in progress")
        return replay(prior["status"], bytes(prior["body"]))
    try:
        response = await handler()
    except ApiError as exc:
        if exc.status < 500:
            body = error(exc).body
            assert isinstance(body, bytes)
            await _store(db, scope, key, exc.status, body)
        else:
            await _forget(db, scope, key)
        raise
    except BaseException:
        await _forget(db, scope, key)
        raise
    if isinstance(response, web.Response) and response.status < 500 and response.body is not None:
        body = response.body
        assert isinstance(body, bytes | bytearray), "idempotent handlers return JSON bodies"
        await _store(db, scope, key, response.status, bytes(body))
    else:
        await _forget(db, scope, key)
    return response


async def _store(db: Any, scope: str, key: str, status: int, body: bytes) -> None:
    await db.execute("UPDATE idempotency_keys SET status = $3, body = $4 WHERE scope = $1 AND key = $2",
                     scope, key, status, body)


async def _forget(db: Any, scope: str, key: str) -> None:
    await db.execute("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key)
