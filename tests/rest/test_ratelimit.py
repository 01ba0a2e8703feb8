"""Rate limits: GCRA properties, the memory LRU bound, the shared Redis budget and 429s on real routes."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from rest.framework.responses import ok
from rest.framework.router import Call, Router, mount
from server.app.factory import create_app
from server.http.ratelimit import KEY_PREFIX, US, MemoryLimiter, RedisLimiter, gcra
from server.kernel.limits import Budget
from server.kernel.settings import Settings
from tests.support.factories import make_user
from tests.support.ops_support import use_plain_auth
from tests.support.services import RedisForTests

ClientFactory = Callable[..., Any]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- GCRA, pure -------------------------------------------------------------------------------

def test_burst_then_refill_with_headers() -> None:
    budget = Budget(5, 10.0)  # one token every 2 s
    tat, now = 0, 100 * US
    remaining = []
    for _ in range(5):
        allowed, tat, d = gcra(tat, now, budget, 1)
        assert allowed
        remaining.append(d.remaining)
    assert remaining == [4, 3, 2, 1, 0]
    assert d.reset_at == pytest.approx(110.0)  # full again one window after the burst
    allowed, same_tat, d = gcra(tat, now, budget, 1)
    assert not allowed
    assert same_tat == tat  # a refusal spends nothing
    assert d.retry_after_s == pytest.approx(2.0)
    assert d.headers() == {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "110"}
    allowed, tat, d = gcra(tat, now + 1_900_000, budget, 1)
    assert not allowed and d.retry_after_s == pytest.approx(0.1)
    allowed, tat, d = gcra(tat, now + 2 * US, budget, 1)  # one token back after one interval
    assert allowed and d.remaining == 0
    allowed, tat, d = gcra(tat, now + 100 * US, budget, 1)  # long idle: full budget, never more
    assert allowed and d.remaining == 4


def test_cost_larger_than_budget_is_never_allowed() -> None:
    allowed, _, d = gcra(0, 50 * US, Budget(3, 60.0), 4)
    assert not allowed and d.remaining == 3


@hsettings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 50), window=st.floats(0.5, 3600.0),
       gaps=st.lists(st.integers(0, 100 * US), min_size=1, max_size=80))
def test_gcra_never_exceeds_burst_plus_refill(limit: int, window: float, gaps: list[int]) -> None:
    budget = Budget(limit, window)
    interval = window * US / limit
    now, tat = 1_700_000_000 * US, 0
    allowed_at: list[int] = []
    for gap in gaps:
        now += gap
        allowed, tat, d = gcra(tat, now, budget, 1)
        assert 0 <= d.remaining <= limit
        if allowed:
            allowed_at.append(now)
        elif not allowed_at or now - allowed_at[-1] >= window * US + limit:
            pytest.fail("refused after a full idle window")
    # Over any span, at most the burst plus what refilled in it.
    for i, start in enumerate(allowed_at):
        for j in range(i, len(allowed_at)):
            assert j - i + 1 <= limit + (allowed_at[j] - start) / interval


@hsettings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 100), window=st.floats(0.5, 3600.0), spent=st.integers(0, 100))
def test_remaining_is_exactly_what_can_still_be_spent(limit: int, window: float, spent: int) -> None:
    budget = Budget(limit, window)
    tat, now = 0, 1_700_000_000 * US + 123_457
    for _ in range(spent):
        _, tat, d = gcra(tat, now, budget, 1)
    allowed, tat, d = gcra(tat, now, budget, 1)
    assert allowed == (spent < limit)
    for _ in range(d.remaining):
        allowed, tat, _ = gcra(tat, now, budget, 1)
        assert allowed
    assert not gcra(tat, now, budget, 1)[0]


# --- memory backend --------------------------------------------------------------------------

async def test_memory_limiter_is_a_bounded_lru() -> None:
    clock = Clock()
    limiter = MemoryLimiter(max_keys=100, clock=clock)
    budget = Budget(1, 3600.0)
    assert (await limiter.hit("oldest", budget)).allowed
    for i in range(99):
        assert (await limiter.hit(f"k{i}", budget)).allowed
    assert not (await limiter.hit("oldest", budget)).allowed  # still tracked at the bound...
    assert (await limiter.hit("newcomer", budget)).allowed
    assert len(limiter) == 100
    # ...and "oldest" was the least recently *allowed*, so it is what the newcomer pushed out.
    assert (await limiter.hit("oldest", budget)).allowed
    for i in range(1000):
        await limiter.hit(f"flood{i}", budget)
    assert len(limiter) == 100


async def test_memory_limiter_refills_with_time() -> None:
    clock = Clock()
    limiter = MemoryLimiter(max_keys=1000, clock=clock)
    budget = Budget(2, 60.0)
    assert (await limiter.hit("a", budget)).allowed
    assert (await limiter.hit("a", budget)).allowed
    refused = await limiter.hit("a", budget)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(30.0)
    assert (await limiter.hit("b", budget)).allowed  # keys are independent
    clock.now += 30.0
    assert (await limiter.hit("a", budget)).allowed
    assert not (await limiter.hit("a", budget)).allowed


# --- Redis backend ---------------------------------------------------------------------------

async def _limiter(url: str) -> tuple[aioredis.Redis, RedisLimiter]:
    client = aioredis.from_url(url)
    return client, RedisLimiter(client, MemoryLimiter(max_keys=1000))


async def test_redis_limiter_matches_gcra_and_expires_keys(redis_url: str) -> None:
    client, limiter = await _limiter(redis_url)
    key = f"test:{uuid.uuid4()}"
    try:
        budget = Budget(5, 10.0)
        decisions = [await limiter.hit(key, budget) for _ in range(6)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False]
        assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
        assert decisions[5].retry_after_s == pytest.approx(2.0, abs=0.2)
        assert decisions[4].reset_at == pytest.approx(time.time() + 10.0, abs=1.0)
        ttl_ms = await client.pttl(KEY_PREFIX + key)
        assert 9_000 < ttl_ms <= 10_000  # the key lives until its budget is full again
        assert await client.exists(key) == 0  # namespaced
    finally:
        await client.aclose()


async def test_redis_limiter_is_atomic_under_concurrency(redis_url: str) -> None:
    client, limiter = await _limiter(redis_url)
    try:
        budget = Budget(21, 60.0)  # 60/21 s is not a whole number of microseconds
        key = f"test:{uuid.uuid4()}"
        decisions = await asyncio.gather(*(limiter.hit(key, budget) for _ in range(60)))
        assert sum(d.allowed for d in decisions) == 21
        assert sorted(d.remaining for d in decisions if d.allowed) == list(range(21))
    finally:
        await client.aclose()


async def test_redis_outage_fails_open_to_per_process_limits(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    own = RedisForTests()
    client = aioredis.from_url(own.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    limiter = RedisLimiter(client, MemoryLimiter(max_keys=1000))
    budget = Budget(3, 60.0)
    try:
        assert (await limiter.hit("k", budget)).remaining == 2  # spent in Redis
    finally:
        own.close()
    caplog.set_level(logging.WARNING, logger="greenroom.breaker")
    decisions = [await limiter.hit("k", budget) for _ in range(4)]
    await client.aclose()
    # No error reaches the caller; the budget is now kept (afresh) in this process's memory.
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert limiter.degraded
    warnings = [r for r in caplog.records if r.name == "greenroom.breaker" and "rate limiter" in r.getMessage()]
    assert len(warnings) == 1  # one failed round trip, then memory until the retry interval passes
    assert warnings[0].levelno == logging.WARNING


# --- through real routes ---------------------------------------------------------------------

limited = Router("test-limits")


@limited.post("/v1/test/login", summary="auth category", auth="public", rate="auth")
async def _login(call: Call[None]) -> web.StreamResponse:
    return ok({"ok": True})


@limited.get("/v1/test/things", summary="general category", auth="optional", rate="general")
async def _things(call: Call[None]) -> web.StreamResponse:
    return ok({"ok": True})


@limited.post("/v1/test/tip", summary="tips category", auth="user", rate="tips")
async def _tip(call: Call[None]) -> web.StreamResponse:
    return ok({"ok": True})


@limited.get("/v1/test/boom", summary="a handler bug", auth="optional", rate="general")
async def _boom(call: Call[None]) -> web.StreamResponse:
    raise RuntimeError("a bug in a handler")


def limited_app(settings: Settings, dsn: str) -> web.Application:
    app = create_app(settings, dsn)
    mount(app, [limited])
    use_plain_auth(app)
    return app


def ip(addr: str) -> dict[str, str]:
    return {"X-Forwarded-For": addr}


def bearer(user: uuid.UUID) -> dict[str, str]:
    return {"Authorization": f"Bearer viewer:{user}"}


async def assert_429(resp: Any, limit: int) -> None:
    assert resp.status == 429
    body = await resp.json()
    assert body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert resp.headers["X-RateLimit-Limit"] == str(limit)
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    assert int(resp.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert int(resp.headers["Retry-After"]) >= 1


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    return {"redis_url": request.getfixturevalue("redis_url")}


async def test_auth_category_is_per_ip(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings],
                                       dsn: str, backend: dict[str, Any]) -> None:
    settings = make_settings(rate_auth_per_min=3, trust_forwarded_for=True, **backend)
    client = await aiohttp_client(limited_app(settings, dsn))
    addr = f"10.9.{uuid.uuid4().int % 250}.1"  # distinct per run: a shared Redis keeps budgets a minute
    remaining = []
    for _ in range(3):
        resp = await client.post("/v1/test/login", headers=ip(addr))
        assert resp.status == 200
        remaining.append(resp.headers["X-RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]
    await assert_429(await client.post("/v1/test/login", headers=ip(addr)), 3)
    # A token does not buy more auth attempts: the category counts per address.
    await assert_429(await client.post("/v1/test/login", headers={**ip(addr), **bearer(uuid.uuid4())}), 3)
    assert (await client.post("/v1/test/login", headers=ip(addr + "0"))).status == 200


async def test_anonymous_per_ip_and_users_per_user(aiohttp_client: ClientFactory,
                                                   make_settings: Callable[..., Settings], dsn: str,
                                                   backend: dict[str, Any]) -> None:
    settings = make_settings(rate_anonymous_per_min=2, rate_general_per_hour=4, rate_tips_per_min=1,
                             trust_forwarded_for=True, **backend)
    client = await aiohttp_client(limited_app(settings, dsn))
    addr = f"10.8.{uuid.uuid4().int % 250}.1"
    for _ in range(2):
        assert (await client.get("/v1/test/things", headers=ip(addr))).status == 200
    await assert_429(await client.get("/v1/test/things", headers=ip(addr)), 2)
    # Signed in from the same address: the user's own (general) budget applies.
    alice, bob = uuid.uuid4(), uuid.uuid4()
    for _ in range(4):
        resp = await client.get("/v1/test/things", headers={**ip(addr), **bearer(alice)})
        assert resp.status == 200 and resp.headers["X-RateLimit-Limit"] == "4"
    await assert_429(await client.get("/v1/test/things", headers=bearer(alice)), 4)
    assert (await client.get("/v1/test/things", headers=bearer(bob))).status == 200
    # Categories are separate budgets: alice can still tip once.
    assert (await client.post("/v1/test/tip", headers=bearer(alice))).status == 200
    await assert_429(await client.post("/v1/test/tip", headers=bearer(alice)), 1)


async def test_routes_with_rate_none_are_never_limited(aiohttp_client: ClientFactory,
                                                       make_settings: Callable[..., Settings], dsn: str) -> None:
    client = await aiohttp_client(limited_app(make_settings(rate_anonymous_per_min=1), dsn))
    for _ in range(5):
        resp = await client.get("/v1/openapi.json")
        assert resp.status == 200
        assert "X-RateLimit-Limit" not in resp.headers


async def test_two_app_instances_share_one_redis_budget(aiohttp_client: ClientFactory,
                                                        make_settings: Callable[..., Settings], dsn: str,
                                                        redis_url: str) -> None:
    settings = make_settings(rate_auth_per_min=4, trust_forwarded_for=True, redis_url=redis_url)
    one = await aiohttp_client(limited_app(settings, dsn))
    two = await aiohttp_client(limited_app(settings, dsn))
    addr = f"10.7.{uuid.uuid4().int % 250}.1"
    assert (await one.post("/v1/test/login", headers=ip(addr))).status == 200
    assert (await two.post("/v1/test/login", headers=ip(addr))).status == 200
    assert (await one.post("/v1/test/login", headers=ip(addr))).status == 200
    resp = await two.post("/v1/test/login", headers=ip(addr))
    assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == "0"
    await assert_429(await one.post("/v1/test/login", headers=ip(addr)), 4)
    await assert_429(await two.post("/v1/test/login", headers=ip(addr)), 4)


async def test_two_memory_apps_do_not_share(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings],
                                            dsn: str) -> None:
    settings = make_settings(rate_auth_per_min=1, trust_forwarded_for=True)
    one = await aiohttp_client(limited_app(settings, dsn))
    two = await aiohttp_client(limited_app(settings, dsn))
    assert (await one.post("/v1/test/login", headers=ip("10.6.0.1"))).status == 200
    assert (await two.post("/v1/test/login", headers=ip("10.6.0.1"))).status == 200


async def test_app_keeps_serving_when_redis_dies(aiohttp_client: ClientFactory,
                                                 make_settings: Callable[..., Settings], dsn: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    own = RedisForTests()
    try:
        settings = make_settings(rate_auth_per_min=2, trust_forwarded_for=True, redis_url=own.url,
                                 redis_timeout_s=0.5)
        client = await aiohttp_client(limited_app(settings, dsn))
        assert (await client.post("/v1/test/login", headers=ip("10.5.0.1"))).status == 200
    finally:
        own.close()
    statuses = [(await client.post("/v1/test/login", headers=ip("10.5.0.1"))).status for _ in range(3)]
    assert statuses == [200, 200, 429]  # limited per process now, never a 500


RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


async def test_errors_after_spending_budget_carry_the_rate_headers(aiohttp_client: ClientFactory,
                                                                   make_settings: Callable[..., Settings],
                                                                   dsn: str) -> None:
    settings = make_settings(rate_streaming_per_min=50, rate_tips_per_min=50, rate_general_per_hour=50,
                             max_body_bytes=2048)
    app = create_app(settings, dsn)
    mount(app, [limited])  # for /v1/test/boom; real tokens (no plain auth)
    client = await aiohttp_client(app)
    host_user, fan_user = await make_user(app, role="performer"), await make_user(app)
    host, fan = host_user.headers, fan_user.headers
    remaining: list[int] = []

    async def spent(resp: Any, status: int, code: str, limit: int = 50) -> None:
        body = await resp.json()
        assert resp.status == status and body["error"]["code"] == code, body
        assert resp.headers["X-RateLimit-Limit"] == str(limit), (status, dict(resp.headers))
        assert int(resp.headers["X-RateLimit-Reset"]) >= int(time.time())
        remaining.append(int(resp.headers["X-RateLimit-Remaining"]))

    # 404 (a malformed id and an unknown one), 422, 413, 409 (domain and idempotency) and 500
    await spent(await client.patch("/v1/streams/nope", json={}, headers=host), 404, "NOT_FOUND")
    await spent(await client.post(f"/v1/streams/{uuid.uuid4()}/end", headers=host), 404, "NOT_FOUND")
    await spent(await client.post("/v1/streams", json={"title": 5}, headers=host), 422, "VALIDATION_ERROR")
    await spent(await client.post("/v1/streams", json={"title": "x" * 4096}, headers=host),
                413, "PAYLOAD_TOO_LARGE")
    await spent(await client.post("/v1/streams", data=b"{", headers=host), 400, "MALFORMED_JSON")
    stream = await client.post("/v1/streams", json={"title": "t"}, headers=host)
    sid = (await stream.json())["data"]["id"]
    assert (await client.post(f"/v1/streams/{sid}/end", headers=host)).status == 200
    await spent(await client.post(f"/v1/streams/{sid}/end", headers=host), 409, "CONFLICT")
    body = {"to_user_id": str(host_user.id), "amount": 1}
    keyed = {**fan, "Idempotency-Key": "k"}
    await spent(await client.post("/v1/wallet/transfer", json=body, headers=keyed), 409, "INSUFFICIENT_BALANCE")
    # the stored 409 is not replayed for another body: the key's reuse is refused, budget spent again
    await spent(await client.post("/v1/wallet/transfer", json={**body, "amount": 2}, headers=keyed), 409,
                "IDEMPOTENCY_KEY_REUSED")
    await spent(await client.get("/v1/test/boom", headers=fan), 500, "INTERNAL_ERROR")
    # each answer spent one unit: the streaming budget counts down across successes and errors
    assert remaining[:5] == [49, 48, 47, 46, 45] and remaining[5] == 42
    assert remaining[6:] == [49, 48, 49]  # the tips budget, then the general one
    # nothing spent, nothing announced: the caller is refused before the budget is looked at
    resp = await client.patch("/v1/streams/nope", json={})
    assert resp.status == 401 and not any(h in resp.headers for h in RATE_HEADERS)
    resp = await client.post("/v1/admin/wallet/adjust", json={}, headers=fan)
    assert resp.status == 403 and not any(h in resp.headers for h in RATE_HEADERS)


async def test_unreachable_redis_at_start_stops_the_app(make_settings: Callable[..., Settings], dsn: str) -> None:
    from tests.support.services import free_port

    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.5)
    app = create_app(settings, dsn)
    runner = web.AppRunner(app)
    with pytest.raises(RuntimeError, match="REDIS_URL"):
        await runner.setup()
    await runner.cleanup()
