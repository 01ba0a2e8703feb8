"""The access table: every REST route (`rest.ROUTERS`) and every socket op (the app's registry),
called as each kind of caller, answers what its declaration says (`access=`, server.kernel.access).

The callers: anonymous, a viewer, another performer, the owner of what the operation names (the
stream's host, the payout's requester, the profile's user) and an admin. The objects are another
user's (IDOR probes: a viewer or another performer reading or changing the owner's profile,
preferences, stream, bans, payout requests). A route or op without a declaration fails, so the
table cannot go stale; so does any caller whose answer differs from the declared one.

One app, one set of users and objects for the module. A call that changes what it names (start,
end, approve, lift a ban...) gets a fresh object per caller from its recipe (`RECIPES`,
`OP_RECIPES`): how to call the operation validly, so that the answer is about who asks. A route
whose path has parameters or whose body is required needs a recipe; the test says so when one is
missing. The expectation is the declaration next to the route or op, never here.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from rest import ROUTERS
from rest.framework.openapi import build_openapi
from rest.framework.router import Route
from server.app.factory import create_app
from server.kernel import keys
from server.kernel.access import CALLERS, Caller
from server.kernel.settings import load_settings
from signaling.core import keys as socket_keys
from signaling.core.ops import OpSpec
from signaling.features import registry
from tests.support.factories import TestUser, make_user
from tests.support.openapi_check import checking_middleware
from tests.support.served import SWEEP_SETTINGS
from tests.support.services import PostgresForTests
from tests.support.socket_support import Sock, connect
from tests.support.wallet_support import STRIPE_KEY, WEBHOOK_SECRET, FakeStripe, fund, signed

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROUTES: list[Route] = [route for router in ROUTERS for route in router.routes]
OP_NAMES: list[str] = registry.build().names  # the app's registry is checked to hold the same


def route_key(route: Route) -> str:
    return f"{route.method} {route.path}"


@dataclass
class Req:
    """One call of a route: the path with its parameters filled, and what it sends. `owner` names
    the owner of what this call names when that is not the world's owner (a fresh host)."""

    path: str
    json: Any = None
    params: dict[str, str] | None = None
    data: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    owner: TestUser | None = None


class World:
    """The app, the callers and the owner's objects."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.app = client.app
        self.callers: dict[Caller, TestUser | None] = {}
        self.doc = build_openapi(ROUTERS, self.app[keys.SETTINGS])
        self.access = "public"  # of the streams the recipes name (`private_streams` switches it)

    async def setup(self) -> None:
        app = self.app
        self.viewer, self.performer = await make_user(app), await make_user(app, role="performer")
        self.owner, self.admin = await make_user(app, role="performer"), await make_user(app, role="admin")
        self.callers = {"anonymous": None, "viewer": self.viewer, "performer": self.performer, "owner": self.owner,
                        "admin": self.admin}
        self.target = await make_user(app)  # whom moderation acts on
        self.author = await make_user(app)  # who writes the chat messages that get deleted
        self.account = await make_user(app)  # whose credentials log in
        for user in (self.viewer, self.performer, self.owner, self.admin, self.author):
            await fund(app, user.id, 100_000)
        for performer in (self.performer, self.owner):  # earnings, for payout requests
            await self.call("POST", "/v1/wallet/transfer", self.viewer, {"to_user_id": str(performer.id),
                                                                         "amount": 20_000}, 201)
        self.stream = await self.live_stream(self.owner)
        self.room = self.stream["room"]
        self.private_stream = await self.new_stream(self.owner, access="private")

    @contextlib.contextmanager
    def private_streams(self) -> Iterator[None]:
        """Recipes name the owner's private stream, and the streams they make are private."""
        public = self.stream
        self.stream, self.access = self.private_stream, "private"
        try:
            yield
        finally:
            self.stream, self.access = public, "public"

    async def call(self, method: str, path: str, user: TestUser | None, body: Any, expect: int) -> Any:
        """A setup call that must succeed with `expect`; its data."""
        resp = await self.client.request(method, path, json=body, headers=user.headers if user else {})
        data = await resp.json()
        assert resp.status == expect, (method, path, data)
        return data["data"]

    async def new_stream(self, host: TestUser, **fields: Any) -> dict[str, Any]:
        body = {"title": "t", "access": self.access, **fields}
        stream: dict[str, Any] = await self.call("POST", "/v1/streams", host, body, 201)
        return stream

    async def live_stream(self, host: TestUser) -> dict[str, Any]:
        stream = await self.new_stream(host)
        await self.call("POST", f"/v1/streams/{stream['id']}/start", host, None, 200)
        return stream

    async def pending_payout(self) -> str:
        payout: dict[str, Any] = await self.call("POST", "/v1/payouts/request", self.owner, {"amount": 1000}, 201)
        return str(payout["id"])

    async def refresh_token(self) -> str:
        body = {"email": self.account.email, "password": self.account.password}
        tokens: dict[str, Any] = await self.call("POST", "/v1/auth/login", None, body, 200)
        return str(tokens["refresh_token"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(postgres: PostgresForTests, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    fake = FakeStripe()
    stripe_api = web.Application()
    stripe_api.router.add_post("/v1/checkout/sessions", fake.create_session)
    stripe_server = TestServer(stripe_api, host="127.0.0.1")
    await stripe_server.start_server()
    dsn = await postgres.fresh_database()
    settings = load_settings(
        data_dir=Path(tmp_path_factory.mktemp("access")), database_url=dsn, port=0, **SWEEP_SETTINGS,
        metrics_allow="",  # operators by address: none, so a caller's token is all that counts
        stripe_secret_key=STRIPE_KEY, stripe_webhook_secret=WEBHOOK_SECRET, stripe_max_network_retries=0,
        stripe_api_base=str(stripe_server.make_url("")).rstrip("/"), streams_open_max_per_host=1000,
        ws_max_conns_per_user=100, chat_rate_per_10s=1000)
    app = create_app(settings, dsn)
    client = TestClient(TestServer(app), middlewares=(checking_middleware(app),))
    await client.start_server()
    try:
        world = World(client)
        await world.setup()
        yield world
    finally:
        await client.close()
        await stripe_server.close()
        await postgres.drop_database(dsn)


# --- how to call each route validly -----------------------------------------------------------

Recipe = Callable[[World, Caller], Awaitable[Req]]
RECIPES: dict[str, Recipe] = {}


def recipe(key: str) -> Callable[[Recipe], Recipe]:
    def register(fn: Recipe) -> Recipe:
        RECIPES[key] = fn
        return fn

    return register


@recipe("POST /v1/auth/register")
async def _register(w: World, who: Caller) -> Req:
    return Req("/v1/auth/register", {"email": f"new-{uuid.uuid4().hex[:12]}@example.test",
                                     "password": "Correct-Horse-Battery-9", "display_name": "New"})


@recipe("POST /v1/auth/login")
async def _login(w: World, who: Caller) -> Req:
    return Req("/v1/auth/login", {"email": w.account.email, "password": w.account.password})


@recipe("POST /v1/auth/refresh")
async def _refresh(w: World, who: Caller) -> Req:
    return Req("/v1/auth/refresh", {"refresh_token": await w.refresh_token()})


@recipe("POST /v1/auth/logout")
async def _logout(w: World, who: Caller) -> Req:
    return Req("/v1/auth/logout", {"refresh_token": await w.refresh_token()})


@recipe("PATCH /v1/me")
async def _patch_me(w: World, who: Caller) -> Req:
    return Req("/v1/me", {"bio": "hello"})


@recipe("GET /v1/users/{id}")
async def _get_user(w: World, who: Caller) -> Req:
    return Req(f"/v1/users/{w.owner.id}")


@recipe("PATCH /v1/users/{id}")
async def _patch_user(w: World, who: Caller) -> Req:
    return Req(f"/v1/users/{w.owner.id}", {"bio": "edited"})


@recipe("GET /v1/users/{id}/preferences")
async def _get_prefs(w: World, who: Caller) -> Req:
    return Req(f"/v1/users/{w.owner.id}/preferences")


@recipe("PATCH /v1/users/{id}/preferences")
async def _patch_prefs(w: World, who: Caller) -> Req:
    return Req(f"/v1/users/{w.owner.id}/preferences", {"theme": "dark"})


@recipe("POST /v1/streams")
async def _create_stream(w: World, who: Caller) -> Req:
    return Req("/v1/streams", {"title": "new"})


@recipe("GET /v1/streams/{id}")
async def _get_stream(w: World, who: Caller) -> Req:
    return Req(f"/v1/streams/{w.stream['id']}")


@recipe("PATCH /v1/streams/{id}")
async def _patch_stream(w: World, who: Caller) -> Req:
    return Req(f"/v1/streams/{w.stream['id']}", {"description": "edited"})


@recipe("DELETE /v1/streams/{id}")
async def _delete_stream(w: World, who: Caller) -> Req:
    return Req(f"/v1/streams/{(await w.new_stream(w.owner))['id']}")


@recipe("POST /v1/streams/{id}/start")
async def _start_stream(w: World, who: Caller) -> Req:
    # a host goes live once at a time, and the owner is live: the owner of this call is a new host
    host = await make_user(w.app, role="performer") if who == "owner" else w.owner
    return Req(f"/v1/streams/{(await w.new_stream(host))['id']}/start", owner=host)


@recipe("POST /v1/streams/{id}/end")
async def _end_stream(w: World, who: Caller) -> Req:
    return Req(f"/v1/streams/{(await w.new_stream(w.owner))['id']}/end")


@recipe("POST /v1/streams/{id}/join")
async def _join_stream(w: World, who: Caller) -> Req:
    return Req(f"/v1/streams/{w.stream['id']}/join")


@recipe("GET /v1/streams/{id}/viewers")
async def _viewers(w: World, who: Caller) -> Req:
    return Req(f"/v1/streams/{w.stream['id']}/viewers")


@recipe("POST /v1/streams/{id}/moderators")
async def _add_moderator(w: World, who: Caller) -> Req:
    return Req(f"/v1/streams/{w.stream['id']}/moderators", {"user_id": str(w.target.id)})


@recipe("DELETE /v1/streams/{id}/moderators/{user_id}")
async def _remove_moderator(w: World, who: Caller) -> Req:
    await w.call("POST", f"/v1/streams/{w.stream['id']}/moderators", w.owner, {"user_id": str(w.target.id)}, 201)
    return Req(f"/v1/streams/{w.stream['id']}/moderators/{w.target.id}")


@recipe("GET /v1/streams/{id}/bans")
async def _bans(w: World, who: Caller) -> Req:
    return Req(f"/v1/streams/{w.stream['id']}/bans")


@recipe("POST /v1/streams/{id}/bans")
async def _ban(w: World, who: Caller) -> Req:
    return Req(f"/v1/streams/{w.stream['id']}/bans", {"user_id": str(w.target.id), "duration_s": 60})


@recipe("DELETE /v1/streams/{id}/bans/{user_id}")
async def _unban(w: World, who: Caller) -> Req:
    await w.call("POST", f"/v1/streams/{w.stream['id']}/bans", w.owner, {"user_id": str(w.target.id)}, 201)
    return Req(f"/v1/streams/{w.stream['id']}/bans/{w.target.id}")


@recipe("POST /v1/moderation/report")
async def _report(w: World, who: Caller) -> Req:
    return Req("/v1/moderation/report", {"target_type": "stream", "target_id": w.stream["id"], "reason": "spam"})


@recipe("POST /v1/wallet/transfer")
async def _transfer(w: World, who: Caller) -> Req:
    return Req("/v1/wallet/transfer", {"to_user_id": str(w.owner.id), "amount": 5})


@recipe("POST /v1/wallet/buy")
async def _buy(w: World, who: Caller) -> Req:
    return Req("/v1/wallet/buy", {"pack_tokens": min(w.app[keys.SETTINGS].packs)})


@recipe("GET /v1/streams/{id}/tips")
async def _stream_tips(w: World, who: Caller) -> Req:
    return Req(f"/v1/streams/{w.stream['id']}/tips")


@recipe("POST /v1/payouts/request")
async def _request_payout(w: World, who: Caller) -> Req:
    return Req("/v1/payouts/request", {"amount": 1000})


@recipe("GET /v1/payouts/requests")
async def _payouts(w: World, who: Caller) -> Req:
    return Req("/v1/payouts/requests", params={"user_id": str(w.owner.id)})


@recipe("POST /v1/admin/payouts/{id}/approve")
async def _approve(w: World, who: Caller) -> Req:
    return Req(f"/v1/admin/payouts/{await w.pending_payout()}/approve", {})


@recipe("POST /v1/admin/payouts/{id}/reject")
async def _reject(w: World, who: Caller) -> Req:
    return Req(f"/v1/admin/payouts/{await w.pending_payout()}/reject", {})


@recipe("POST /v1/admin/wallet/adjust")
async def _adjust(w: World, who: Caller) -> Req:
    return Req("/v1/admin/wallet/adjust", {"user_id": str(w.target.id), "amount": 5, "reason": "grant"})


@recipe("POST /v1/webhooks/stripe")
async def _webhook(w: World, who: Caller) -> Req:
    payload, signature = signed({"id": f"evt_{uuid.uuid4().hex}", "type": "test.event", "data": {"object": {}}})
    return Req("/v1/webhooks/stripe", data=payload,
               headers={"Stripe-Signature": signature, "Content-Type": "application/json"})


async def _plain(route: Route) -> Req:
    """A route that names nothing and needs no body is called as it is."""
    required_body = route.body is not None and not route.raw_body and route.body.model_fields and any(
        f.is_required() for f in route.body.model_fields.values())
    assert not route.params and not required_body and not route.raw_body, \
        f"{route_key(route)} needs a recipe in RECIPES: how to call it validly"
    return Req(route.path)


# --- the tests --------------------------------------------------------------------------------

def _table(observed: dict[str, Any], declared: dict[str, Any]) -> str:
    rows = [f"  {c:<10} declared {declared[c]!s:<24} answered {observed[c]}"
            + ("" if observed[c] == declared[c] else "   <-- differs") for c in CALLERS]
    return "\n".join(rows)


def _missing(what: str, observed: dict[str, Any]) -> str:
    answers = ", ".join(f"{c}={observed[c]!r}" for c in CALLERS)
    return (f"{what} declares no access= (who gets what: server.kernel.access). Today it answers "
            f"Access({answers}): declare what it should answer.")


@pytest.mark.parametrize("route", ROUTES, ids=route_key)
async def test_route_answers_as_declared(world: World, route: Route) -> None:
    key = route_key(route)
    make = RECIPES.get(key)
    observed: dict[str, Any] = {}
    for caller in CALLERS:
        req = await make(world, caller) if make is not None else await _plain(route)
        user = (req.owner or world.owner) if caller == "owner" else world.callers[caller]
        headers = {**(user.headers if user else {}), **req.headers}
        resp = await world.client.request(route.method, req.path, json=req.json, data=req.data, params=req.params,
                                          headers=headers)
        observed[caller] = resp.status
        await resp.read()
    assert route.access is not None, _missing(key, observed)
    declared: dict[str, Any] = route.access.table()
    documented = set(world.doc["paths"][route.path][route.method.lower()]["responses"])
    undocumented = {c: s for c, s in declared.items() if str(s) not in documented}
    assert not undocumented, f"{key}: declared statuses the document does not list: {undocumented}"
    assert observed == declared, f"{key} answers differently from its access declaration:\n" + _table(
        observed, declared)


STREAM_ROUTES = [r for r in ROUTES if "id" in r.params and r.params["id"].names == "stream"]


@pytest.mark.parametrize("route", STREAM_ROUTES, ids=route_key)
async def test_another_performers_private_stream_is_not_found(world: World, route: Route) -> None:
    """The IDOR probe behind every route naming a stream: the owner's private stream does not exist
    for callers who may not enter it (404, as an unknown id; 401 first where the route needs a
    token), whatever the route does to a public one."""
    observed: dict[str, int] = {}
    with world.private_streams():
        for caller in ("anonymous", "viewer", "performer"):
            req = await RECIPES[route_key(route)](world, caller)
            user = world.callers[caller]
            resp = await world.client.request(route.method, req.path, json=req.json, params=req.params,
                                              headers=user.headers if user else {})
            observed[caller] = resp.status
            await resp.read()
    anonymous = 401 if route.auth == "user" else 404
    assert observed == {"anonymous": anonymous, "viewer": 404, "performer": 404}, (route_key(route), observed)


async def test_every_recipe_names_a_route() -> None:
    assert set(RECIPES) <= {route_key(r) for r in ROUTES}, set(RECIPES) - {route_key(r) for r in ROUTES}


# --- socket ops -------------------------------------------------------------------------------

OpRecipe = Callable[[World, Caller], Awaitable[dict[str, Any]]]
OP_RECIPES: dict[str, OpRecipe] = {}


def op_recipe(name: str) -> Callable[[OpRecipe], OpRecipe]:
    def register(fn: OpRecipe) -> OpRecipe:
        OP_RECIPES[name] = fn
        return fn

    return register


@op_recipe("auth")
async def _op_auth(w: World, who: Caller) -> dict[str, Any]:
    user = w.callers[who]
    return {"token": user.token} if user is not None else {}


@op_recipe("chat.send")
async def _op_chat_send(w: World, who: Caller) -> dict[str, Any]:
    return {"text": "hello"}


@op_recipe("chat.delete")
async def _op_chat_delete(w: World, who: Caller) -> dict[str, Any]:
    sock = await connect(w.client, token=w.author.token)
    try:
        await sock.ok("join", w.room)
        sent = await sock.ok("chat.send", w.room, text="to delete")
    finally:
        await sock.close()
    return {"id": sent["id"]}


@op_recipe("presence")
async def _op_presence(w: World, who: Caller) -> dict[str, Any]:
    return {"limit": 10}


async def _moderate(w: World, op: str, **data: Any) -> None:
    """The owner, in its room, does `op` to the target (so that lifting it can be tried)."""
    sock = await connect(w.client, token=w.owner.token)
    try:
        await sock.ok("join", w.room)
        await sock.ok(op, w.room, user_id=str(w.target.id), **data)
    finally:
        await sock.close()


@op_recipe("room.ban")
async def _op_ban(w: World, who: Caller) -> dict[str, Any]:
    return {"user_id": str(w.target.id), "duration_s": 60}


@op_recipe("room.unban")
async def _op_unban(w: World, who: Caller) -> dict[str, Any]:
    await _moderate(w, "room.ban", duration_s=60)
    return {"user_id": str(w.target.id)}


@op_recipe("room.mute")
async def _op_mute(w: World, who: Caller) -> dict[str, Any]:
    return {"user_id": str(w.target.id), "duration_s": 60}


@op_recipe("room.unmute")
async def _op_unmute(w: World, who: Caller) -> dict[str, Any]:
    await _moderate(w, "room.mute", duration_s=60)
    return {"user_id": str(w.target.id)}


@op_recipe("room.kick")
async def _op_kick(w: World, who: Caller) -> dict[str, Any]:
    return {"user_id": str(w.target.id)}


@op_recipe("room.slow_mode")
async def _op_slow_mode(w: World, who: Caller) -> dict[str, Any]:
    return {"seconds": 0}


@op_recipe("tip.send")
async def _op_tip(w: World, who: Caller) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "amount": 1}


async def _session(w: World, caller: Caller, spec: OpSpec) -> Sock:
    """A socket of `caller` (a guest when anonymous) ready for `spec`: signed in unless the op is
    `auth`, in the owner's room when the op needs a joined room."""
    user = w.callers[caller]
    if spec.name == "auth":
        return await connect(w.client)
    sock = await connect(w.client, token=user.token if user else None, guest=user is None)
    if spec.room == "joined":
        await sock.ok("join", w.room)
    return sock


@pytest.mark.parametrize("name", OP_NAMES)
async def test_op_answers_as_declared(world: World, name: str) -> None:
    spec = world.app[socket_keys.OPS].get(name)
    assert spec is not None, f"{name} is not in the app's op registry"
    make = OP_RECIPES.get(name)
    assert make is not None or spec.schema.model_json_schema().get("required") is None, \
        f"socket op {name!r} needs a recipe in OP_RECIPES: how to call it validly"
    observed: dict[str, Any] = {}
    for caller in CALLERS:
        data = await make(world, caller) if make is not None else {}
        sock = await _session(world, caller, spec)
        try:
            frame = await sock.request(name, world.room if spec.room != "none" else None, **data)
        finally:
            await sock.close()
        observed[caller] = "ok" if frame["ok"] else frame["error"]["code"]
    assert spec.access is not None, _missing(f"socket op {name!r}", observed)
    declared: dict[str, Any] = spec.access.table()
    assert observed == declared, f"socket op {name!r} answers differently from its access declaration:\n" + _table(
        observed, declared)


async def test_the_tested_ops_are_the_apps() -> None:
    """The ops tested are the registry's: the app builds its own, from the same features."""
    assert sorted(OP_NAMES) == sorted(registry.build().names)
    assert set(OP_RECIPES) <= set(OP_NAMES), set(OP_RECIPES) - set(OP_NAMES)


async def test_the_apps_registry_is_the_tested_one(world: World) -> None:
    assert world.app[socket_keys.OPS].names == OP_NAMES


@pytest.mark.parametrize("name", [n for n in OP_NAMES if n not in ("auth", "join", "ping")])
async def test_a_room_op_outside_its_room_is_not_joined(world: World, name: str) -> None:
    """Every op declared room='joined' refuses a signed-in caller who has not joined the room."""
    spec = world.app[socket_keys.OPS].get(name)
    assert spec is not None and spec.room == "joined"
    sock = await connect(world.client, token=world.viewer.token)
    try:
        data = await OP_RECIPES[name](world, "viewer") if name in OP_RECIPES else {}
        assert await sock.error(name, world.room, **data) == "NOT_JOINED"
    finally:
        await sock.close()


async def test_the_document_publishes_each_routes_table(world: World) -> None:
    for route in ROUTES:
        assert route.access is not None, route_key(route)
        assert world.doc["paths"][route.path][route.method.lower()]["x-access"] == route.access.table()

