"""PostgreSQL vanishing from the network under a running node: every REST route and socket op that
needs it answers 503 / UNAVAILABLE with Retry-After (not a 500), /health says down, and the node
serves again once PostgreSQL is back, without a restart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from aiohttp.test_utils import TestClient

from server.kernel.settings import Settings
from tests.support.factories import make_user
from tests.support.socket_support import connect, eventually
from tests.support.tcp_proxy import TcpProxy


def target(dsn: str) -> tuple[str, int]:
    """Where the DSN's server listens: host and port, or the unix socket directory (`?host=/dir`)."""
    parts = urlsplit(dsn)
    query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
    return query.get("host") or parts.hostname or "127.0.0.1", int(query.get("port") or parts.port or 5432)


def through(dsn: str, proxy: TcpProxy) -> str:
    """The same database, reached over TCP through the proxy."""
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc, query=""))


async def test_a_node_answers_503_while_postgres_is_away_and_recovers(
        dsn: str, make_settings: Callable[..., Settings], aiohttp_client: Any) -> None:
    proxy = TcpProxy(*target(dsn))
    await proxy.start()
    from server.app.factory import create_app

    settings = make_settings(db_pool_min=1, db_pool_max=4, health_cache_s=0.1)
    app: web.Application = create_app(settings, through(dsn, proxy))
    client: TestClient = await aiohttp_client(app)
    host = await make_user(client.app, role="performer")
    resp = await client.post("/v1/streams", json={"title": "Before"}, headers=host.headers)
    assert resp.status == 201, await resp.text()
    room = (await resp.json())["data"]["room"]
    sock = await connect(client, token=host.token)
    await sock.ok("join", room)

    await proxy.cut()
    try:
        for method, path, body in (("GET", "/v1/streams", None), ("GET", "/v1/me", None),
                                   ("POST", "/v1/streams", {"title": "During"})):
            resp = await client.request(method, path, json=body, headers=host.headers)
            assert resp.status == 503, (path, await resp.text())
            assert (await resp.json())["error"]["code"] == "UNAVAILABLE"
            assert resp.headers["Retry-After"] == "1"
        health = await client.get("/health")
        assert health.status == 503
        refused = await sock.request("chat.send", room, text="anyone?")
        assert refused["error"]["code"] == "UNAVAILABLE", refused
        assert await sock.ok("ping")  # the socket itself stays usable
    finally:
        await proxy.restore()

    async def served() -> bool:
        return (await client.get("/v1/streams", headers=host.headers)).status == 200

    await eventually(served, within=10)
    sent = await sock.ok("chat.send", room, text="back")
    assert sent["offset"] > 0
    await proxy.cut()
