"""The client's address as the server sees it (behind a trusted proxy: the first X-Forwarded-For hop)."""

from __future__ import annotations

from aiohttp import web

from server.kernel import keys


def client_ip(request: web.Request) -> str:
    if request.app[keys.SETTINGS].trust_forwarded_for:
        fwd = request.headers.get("X-Forwarded-For")
        if fwd:
            return fwd.split(",")[0].strip()
    return request.remote or "unknown"
