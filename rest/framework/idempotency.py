"""`Idempotency-Key` for money-moving and booking POSTs.

The first request with a key runs and its response is stored; a retry with the same key and the
same body gets the stored response back (`Idempotent-Replayed: true`) and runs nothing; the same
key with a different body is refused. A request that failed with a 5xx leaves no record, so the
client may retry it. Keys are scoped per caller and route and expire after `KEY_TTL_S`.

A run in progress holds its key under a lease (`idempotency_lease_s`, longer than any request
runs) in the name of its worker (`server.kernel.instance`). A retry meanwhile gets 409 CONFLICT
with Retry-After; a retry that finds the lease expired, or its worker gone (killed while running
it: no answer was stored, and some of the request may have happened), takes the key over and runs
the request again. That is why every keyed handler must be safe to run again: what it creates
carries an id derived from the key (`router.idempotent_id`), so the ledger answers `exists` and the
handler completes what the first run left undone. Two retries racing for a takeover: one
conditional UPDATE wins, the other finds a live lease. Each run holds a `run_id`; a run that lost
its key to a takeover stores nothing and releases nothing.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from rest.framework.responses import error, replay
from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode
from server.kernel.identity import Identity
from server.kernel.instance import gone_sql
from server.kernel.net import client_ip

log = logging.getLogger("greenroom.idempotency")

KEY_TTL_S = 24 * 3600
MAX_KEY_CHARS = 255
# A run in progress usually answers within a second; its retry should come back about then (a run
# that hangs is taken over once its lease ends, which the retry after that finds).
IN_PROGRESS_RETRY_S = 1

# A new key, or one whose record expired: this run holds it.
_CLAIM = """
INSERT INTO idempotency_keys (scope, key, request_hash, locked_until, owner, run_id)
VALUES ($1, $2, $3, now() + make_interval(secs => $5), $6, $7)
ON CONFLICT (scope, key) DO UPDATE
   SET request_hash = EXCLUDED.request_hash, status = NULL, body = NULL, created_at = now(),
       locked_until = EXCLUDED.locked_until, owner = EXCLUDED.owner, run_id = EXCLUDED.run_id
   WHERE idempotency_keys.created_at < now() - make_interval(secs => $4)
RETURNING true AS fresh"""

# The same request in progress, whose run is over: its lease ended, its worker is gone (or it has no
# lease: a row from before leases). The row lock makes this the one takeover: a concurrent one waits,
# then finds this run's live lease and takes nothing.
_TAKE_OVER = f"""
UPDATE idempotency_keys
   SET locked_until = now() + make_interval(secs => $4), owner = $5, run_id = $6
 WHERE scope = $1 AND key = $2 AND request_hash = $3 AND status IS NULL
   AND (locked_until IS NULL OR locked_until <= now() OR (owner IS NOT NULL AND {gone_sql("idempotency_keys.owner")}))
RETURNING true AS taken"""


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
    lease_s = request.app[keys.SETTINGS].idempotency_lease_s
    worker = request.app.get(keys.INSTANCE)
    # Without a held lock this worker cannot vouch for its runs: others go by the lease alone.
    owner = worker.id if worker is not None and worker.holding else None
    run_id = uuid.uuid4()
    fresh = await db.fetchval(_CLAIM, scope, key, digest, KEY_TTL_S, lease_s, owner, run_id)
    if fresh is None:
        prior = await db.fetchrow(
            "SELECT request_hash, status, body FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key)
        if prior is None:  # expired and removed between the two statements: treat as a conflict to retry
            raise ApiError(ErrorCode.CONFLICT, "idempotency key changed state; retry")
        if bytes(prior["request_hash"]) != digest:
            raise ApiError(ErrorCode.IDEMPOTENCY_KEY_REUSED, "this Idempotency-Key was used with a different request")
        if prior["status"] is not None:
            return replay(prior["status"], bytes(prior["body"]))
        if await db.fetchval(_TAKE_OVER, scope, key, digest, lease_s, owner, run_id) is None:
            raise ApiError(ErrorCode.CONFLICT, "a request with this Idempotency-Key is still in progress",
                           headers={"Retry-After": str(IN_PROGRESS_RETRY_S)})
        # Its first run ended without an answer (its process died): run it again.
        log.warning("idempotency key taken over from a run that ended without an answer",
                    extra={"scope": scope, "run_id": str(run_id)})
    try:
        response = await handler()
    except ApiError as exc:
        if exc.status < 500:
            body = error(exc).body
            assert isinstance(body, bytes)
            await _store(db, scope, key, run_id, exc.status, body)
        else:
            await _forget(db, scope, key, run_id)
        raise
    except BaseException:
        await _forget(db, scope, key, run_id)
        raise
    if isinstance(response, web.Response) and response.status < 500 and response.body is not None:
        body = response.body
        assert isinstance(body, bytes | bytearray), "idempotent handlers return JSON bodies"
        await _store(db, scope, key, run_id, response.status, bytes(body))
    else:
        await _forget(db, scope, key, run_id)
    return response


# Only the run holding the key writes its outcome: a run whose key was taken over (its lease ended
# while it still ran) leaves the key to the run that took it.

async def _store(db: Any, scope: str, key: str, run_id: uuid.UUID, status: int, body: bytes) -> None:
    await db.execute("""UPDATE idempotency_keys SET status = $4, body = $5, locked_until = NULL
                        WHERE scope = $1 AND key = $2 AND run_id = $3""",
                     scope, key, run_id, status, body)


async def _forget(db: Any, scope: str, key: str, run_id: uuid.UUID) -> None:
    await db.execute("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND run_id = $3",
                     scope, key, run_id)
