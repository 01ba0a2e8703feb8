"""/health, /v1/monitoring/health, /metrics, /v1/status and the access log, on real services."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from rest.framework.params import text_param
from rest.framework.responses import ok
from rest.framework.router import Call, Router, mount
from server import __version__
from server.app.logs import JsonFormatter
from server.kernel import keys
from server.kernel.settings import Settings
from tests.support.ops_support import use_plain_auth
from tests.support.services import PostgresForTests, RedisForTests

ClientFactory = Callable[..., Any]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


@pytest.mark.parametrize("path", ["/health", "/v1/monitoring/health"])
async def test_health_single_node(client: TestClient, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert data["status"] == "ok"
    assert data["version"] == __version__
    assert data["uptime_s"] >= 0
    assert data["timestamp"].endswith("Z")
    pg = data["services"]["postgresql"]
    assert pg["status"] == "healthy" and pg["latency_ms"] >= 0
    assert data["services"]["redis"] == {"status": "disabled"}
    assert "X-RateLimit-Limit" not in resp.headers  # rate "none": probes are never throttled


async def test_health_and_status_with_redis(aiohttp_client: ClientFactory, make_app: Callable[..., web.Application],
                                            make_settings: Callable[..., Settings], redis_url: str) -> None:
    client = await aiohttp_client(make_app(make_settings(redis_url=redis_url)))
    data = (await (await client.get("/health")).json())["data"]
    assert data["status"] == "ok"
    assert data["services"]["redis"]["status"] == "healthy"
    status = (await (await client.get("/v1/status")).json())["data"]
    assert status["mode"] == "redis"


async def test_health_is_503_while_postgres_refuses_and_recovers(aiohttp_client: ClientFactory,
                                                                 make_app: Callable[..., web.Application],
                                                                 make_settings: Callable[..., Settings],
                                                                 postgres: PostgresForTests, dsn: str) -> None:
    client = await aiohttp_client(make_app(make_settings(health_cache_s=0)))  # every call checks
    name = dsn.split("?")[0].rsplit("/", 1)[1]
    assert (await client.get("/health")).status == 200
    admin = await asyncpg.connect(postgres.admin_uri)
    try:
        # Real outage of this database: its sessions are killed and new ones refused.
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        for path in ("/health", "/v1/monitoring/health"):
            resp = await client.get(path)
            assert resp.status == 503
            data = (await resp.json())["data"]
            assert data["status"] == "down"
            assert data["services"]["postgresql"]["status"] == "unhealthy"
            assert data["services"]["postgresql"]["error"]
        # The rest of the server still answers while the database is away.
        assert (await client.get("/v1/status")).status == 200
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    resp = await client.get("/health")
    assert resp.status == 200, await resp.text()


async def test_redis_outage_is_degraded_not_down(aiohttp_client: ClientFactory,
                                                 make_app: Callable[..., web.Application],
                                                 make_settings: Callable[..., Settings],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    own = RedisForTests()  # a server of this test's own, so stopping it disturbs no one
    try:
        client = await aiohttp_client(make_app(make_settings(redis_url=own.url, redis_timeout_s=0.5, health_cache_s=0)))
        assert (await (await client.get("/health")).json())["data"]["status"] == "ok"
    finally:
        own.close()
    resp = await client.get("/health")
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert data["status"] == "degraded"
    assert data["services"]["redis"]["status"] == "unhealthy"
    assert data["services"]["postgresql"]["status"] == "healthy"


async def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    for _ in range(3):
        assert (await client.get("/v1/openapi.json")).status == 200
    assert (await client.get("/v1/no/such/thing")).status == 404
    assert (await client.get("/v1/another/missing/path")).status == 404
    assert (await client.request("PROPFIND", "/health")).status == 405  # hostile method: one label, not one each
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert sample(text, "greenroom_http_requests_total", method="GET", route="/v1/openapi.json", status="200") == 3
    assert sample(text, "greenroom_http_request_duration_seconds_count",
                  method="GET", route="/v1/openapi.json", status="200") == 3
    # Unmatched paths share one label value, so scanning for URLs cannot grow the series.
    assert sample(text, "greenroom_http_requests_total", method="GET", route="unmatched", status="404") == 2
    assert sample(text, "greenroom_http_requests_total", method="OTHER", route="unmatched", status="405") == 1
    assert "/v1/no/such/thing" not in text
    size = sample(text, "greenroom_db_pool_size")
    assert size is not None and size >= 1
    assert 0 <= sample(text, "greenroom_db_pool_in_use") <= size  # type: ignore[operator]
    assert sample(text, "greenroom_db_pool_max") == client.app[keys.SETTINGS].db_pool_max  # type: ignore[index]
    assert sample(text, "greenroom_websockets_open") == 0


async def test_metrics_registries_are_per_app(aiohttp_client: ClientFactory, make_app: Callable[..., web.Application],
                                              settings: Settings) -> None:
    one = await aiohttp_client(make_app(settings))
    two = await aiohttp_client(make_app(settings))
    await one.get("/v1/openapi.json")
    text = await (await two.get("/metrics")).text()
    assert sample(text, "greenroom_http_requests_total", method="GET", route="/v1/openapi.json", status="200") is None


async def test_status_reports_live_counts(client: TestClient) -> None:
    data = (await (await client.get("/v1/status")).json())["data"]
    assert data["pid"] == os.getpid()
    assert data["mode"] == "single-node"
    assert data["workers"] == 1
    assert data["version"] == __version__
    counts = data["counts"]
    assert counts["open_sockets"] == 0 and counts["ledger_queue_depth"] == 0
    assert 1 <= counts["db_pool_size"] <= client.app[keys.SETTINGS].db_pool_max  # type: ignore[index]
    assert 0 <= counts["db_pool_in_use"] <= counts["db_pool_size"]  # background tasks may hold one
    metrics = client.app[keys.METRICS]  # type: ignore[index]
    metrics.ws_opened()
    metrics.ws_opened()
    metrics.ws_closed()
    metrics.set_ledger_queue_depth(42)
    counts = (await (await client.get("/v1/status")).json())["data"]["counts"]
    assert counts["open_sockets"] == 1
    assert counts["ledger_queue_depth"] == 42
    text = await (await client.get("/metrics")).text()
    assert sample(text, "greenroom_websockets_open") == 1
    assert sample(text, "greenroom_ledger_queue_depth") == 42


def test_ws_closed_more_than_opened_is_a_bug() -> None:
    from server.kernel.metrics import Metrics

    with pytest.raises(AssertionError):
        Metrics(lambda: None).ws_closed()


whoami = Router("test-whoami")


@whoami.get("/v1/test/whoami/{thing}", summary="test route", auth="user", rate="none",
            params={"thing": text_param("thing")})
async def _whoami(call: Call[None]) -> web.StreamResponse:
    return ok({"user_id": str(call.user.user_id)})


async def test_access_log_is_one_json_line_per_request(aiohttp_client: ClientFactory,
                                                       make_app: Callable[..., web.Application],
                                                       settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(settings)
    mount(app, [whoami])
    use_plain_auth(app)
    client = await aiohttp_client(app)
    user = uuid.uuid4()
    caplog.set_level(logging.INFO, logger="greenroom.access")
    resp = await client.get("/v1/test/whoami/42", headers={"Authorization": f"Bearer viewer:{user}",
                                                           "X-Request-Id": "req-abc"})
    assert resp.status == 200
    refused = await client.get("/v1/test/whoami/43")  # no token: 401, no user
    records = [r for r in caplog.records if r.name == "greenroom.access"]
    assert len(records) == 2
    line = JsonFormatter().format(records[0])
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["request_id"] == "req-abc"
    assert entry["user_id"] == str(user)
    assert entry["route"] == "/v1/test/whoami/{thing}"
    assert entry["path"] == "/v1/test/whoami/42"
    assert entry["method"] == "GET"
    assert entry["status"] == 200
    assert entry["latency_ms"] >= 0
    anonymous = orjson.loads(JsonFormatter().format(records[1]))
    assert anonymous["status"] == 401
    assert anonymous["user_id"] is None
    assert anonymous["request_id"] == refused.headers["X-Request-Id"]  # generated when the client sent none
    assert anonymous["route"] == "/v1/test/whoami/{thing}"


async def test_access_log_can_be_turned_off(aiohttp_client: ClientFactory, make_app: Callable[..., web.Application],
                                            make_settings: Callable[..., Settings],
                                            caplog: pytest.LogCaptureFixture) -> None:
    client = await aiohttp_client(make_app(make_settings(access_log=False)))
    caplog.set_level(logging.INFO, logger="greenroom.access")
    await client.get("/health")
    assert not [r for r in caplog.records if r.name == "greenroom.access"]
    text = await (await client.get("/metrics")).text()
    assert sample(text, "greenroom_http_requests_total", method="GET", route="/health", status="200") == 1


async def test_health_reuses_its_dependency_check_within_the_cache_period(
        aiohttp_client: ClientFactory, make_app: Callable[..., web.Application],
        make_settings: Callable[..., Settings], postgres: PostgresForTests, dsn: str) -> None:
    """Anonymous /health floods cost one database probe per `health_cache_s`: calls within it
    (and concurrent ones) share the last check. Shown by a real outage the cached answer does not
    see yet, and by the probe counter."""
    client = await aiohttp_client(make_app(make_settings(health_cache_s=1.0)))
    name = dsn.split("?")[0].rsplit("/", 1)[1]

    def probes(text: str) -> float:
        return sample(text, "greenroom_health_probes_total", service="postgresql") or 0.0

    first = await client.get("/health")
    assert first.status == 200
    before = probes(await (await client.get("/metrics")).text())
    assert before == 1
    resps = await asyncio.gather(*(client.get(p) for p in ["/health", "/v1/monitoring/health"] * 10))
    assert {r.status for r in resps} == {200}
    assert probes(await (await client.get("/metrics")).text()) == before
    checked = {(await r.json())["data"]["checked_at"] for r in [first, *resps]}
    assert len(checked) == 1
    admin = await asyncpg.connect(postgres.admin_uri)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        # Within the period the last check stands (no new probe); after it, the outage shows.
        assert (await client.get("/health")).status == 200
        await asyncio.sleep(1.1)
        resp = await client.get("/health")
        assert resp.status == 503, await resp.text()
        assert probes(await (await client.get("/metrics")).text()) == before + 1
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_metrics_and_status_are_for_loopback_or_the_token(
        aiohttp_client: ClientFactory, make_app: Callable[..., web.Application],
        make_settings: Callable[..., Settings]) -> None:
    # By default the test client, on loopback, may read them (see the tests above); elsewhere not.
    token = "scrape-" + uuid.uuid4().hex
    client = await aiohttp_client(make_app(make_settings(metrics_token=token, trust_forwarded_for=True)))
    outside = {"X-Forwarded-For": "203.0.113.7"}
    for path in ("/metrics", "/v1/status"):
        assert (await client.get(path)).status == 200
        resp = await client.get(path, headers=outside)
        assert resp.status == 403, await resp.text()
        body = await resp.json()
        assert body["error"]["code"] == "PERMISSION_DENIED" and "pid" not in await resp.text()
        for wrong in ("Bearer nope", f"Bearer {token}x", token, ""):
            assert (await client.get(path, headers={**outside, "Authorization": wrong})).status == 403
        resp = await client.get(path, headers={**outside, "Authorization": f"Bearer {token}"})
        assert resp.status == 200
    assert (await client.get("/health", headers=outside)).status == 200  # load balancers probe freely
    # An allow list without loopback, and no token: nobody.
    closed = await aiohttp_client(make_app(make_settings(metrics_allow="192.0.2.0/24")))
    assert (await closed.get("/metrics")).status == 403
    assert (await closed.get("/v1/status", headers={"Authorization": "Bearer "})).status == 403


@pytest.mark.parametrize("value", ["not-an-address", "10.0.0.0/33", "127.0.0.1,example.test"])
def test_metrics_allow_is_checked_at_start(value: str) -> None:
    from server.kernel.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="METRICS_ALLOW"):
        load_settings(metrics_allow=value)
