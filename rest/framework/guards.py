"""Who may call a route: the caller's identity from the bearer token, roles, and the rate budget."""

from __future__ import annotations

from typing import Literal

from aiohttp import web

from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode
from server.kernel.identity import Identity, bearer_token
from server.kernel.limits import Category, budget
from server.kernel.net import client_ip

AuthMode = Literal["public", "optional", "user"]
# The X-RateLimit-* headers of a request that spent budget: every answer to it carries them, an
# error as much as a success (the error middleware adds them to the error it builds).
RATE_HEADERS = web.RequestKey("rate_limit_headers", dict)


def identify(request: web.Request, mode: AuthMode) -> Identity | None:
    token = bearer_token(request)
    if token is None:
        if mode == "user":
            raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED, "this endpoint needs a bearer access token")
        return None
    if mode == "public":
        return None
    return request.app[keys.AUTH].authenticate(token)


async def rate_limit(request: web.Request, rate: Category, identity: Identity | None) -> dict[str, str]:
    """Spend one unit of the caller's budget in `rate`; the X-RateLimit-* headers (also kept in
    `request[RATE_HEADERS]`), or 429."""
    if rate == "none":
        return {}
    settings = request.app[keys.SETTINGS]
    category: Category = rate
    if rate == "auth":
        key = f"auth:{client_ip(request)}"
    elif identity is None:
        category = "anonymous"
        key = f"anonymous:{client_ip(request)}"
    else:
        key = f"{category}:{identity.user_id}"
    decision = await request.app[keys.LIMITER].hit(key, budget(settings, category))
    headers = decision.headers()
    if not decision.allowed:
        headers["Retry-After"] = str(max(1, int(decision.retry_after_s + 0.999)))
        raise ApiError(ErrorCode.RATE_LIMIT_EXCEEDED, f"too many {category} requests; retry later",
                       details={"category": category, "retry_after_s": round(decision.retry_after_s, 3)},
                       headers=headers)
    request[RATE_HEADERS] = headers
    return headers
