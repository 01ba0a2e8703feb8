"""`greenroom demo`: seed demo users, a live stream, a ticketed show and funded wallets.

Idempotent: a second run finds what the first made (users by email, the stream by host, grants
by deterministic transfer ids) and creates nothing twice, so `make run` may call it every time.
"""

from __future__ import annotations

import argparse
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

from ledger.flows.grants import grant_tokens
from ledger.model import Result
from server.accounts.users import create_user
from server.app.factory import create_app
from server.cli.command import command, run_async
from server.commerce import keys as money
from server.kernel import keys
from server.kernel.identity import Identity, Role
from server.kernel.settings import Settings
from signaling.features.rooms import access as rooms
from signaling.features.streams import streams

NAMESPACE = uuid.UUID("6f1d3a52-2b1e-4a53-9d0e-6b7b8f0c9a11")
PASSWORD = "greenroom-demo-2026"
GRANT_TOKENS = 5000


@dataclass(frozen=True)
class DemoUser:
    email: str
    display_name: str
    role: Role


USERS = (
    DemoUser("admin@greenroom.example", "Ada Admin", "admin"),
    DemoUser("performer@greenroom.example", "Nina Keys", "performer"),
    DemoUser("viewer@greenroom.example", "Victor Viewer", "viewer"),
    DemoUser("fan@greenroom.example", "Fiona Fan", "viewer"),
)


async def _user_id(app: web.Application, user: DemoUser) -> uuid.UUID:
    db = app[keys.DB]
    found = await db.fetchval("SELECT id FROM users WHERE lower(email) = lower($1)", user.email)
    if found is not None:
        assert isinstance(found, uuid.UUID)
        return found
    created = await create_user(db, app[keys.SETTINGS], email=user.email, password=PASSWORD,
                                display_name=user.display_name, role=user.role, email_verified=True)
    return created.id


async def seed(app: web.Application) -> dict[str, object]:
    """Create the demo data in a started app; returns what exists afterwards."""
    db = app[keys.DB]
    ids = {u.email: await _user_id(app, u) for u in USERS}
    performer = Identity(ids[USERS[1].email], "performer", time.time() + 600)

    stream_id = await db.fetchval(
        "SELECT id FROM streams WHERE host_id = $1 AND status <> 'ended' ORDER BY created_at LIMIT 1",
        performer.user_id)
    if stream_id is None:
        created = await streams.create_stream(app, performer, title="Late Night Jazz Session",
                                              description="Standards and requests, live from the studio.",
                                              category="music", tags=["jazz", "piano"], access="public")
        stream_id = uuid.UUID(str(created["id"]))
    status = await db.fetchval("SELECT status FROM streams WHERE id = $1", stream_id)
    if status == "created":
        await streams.start_stream(app, performer, stream_id)

    show_id = uuid.uuid5(NAMESPACE, "demo-show")
    show_room = await rooms.create_show_room(db, performer.user_id, show_id, access="ticket")
    await rooms.grant(db, show_room, ids[USERS[2].email], "ticket")

    engine = app[money.LEDGER]
    for user in USERS[2:]:
        result = await grant_tokens(engine, db, ids[user.email], GRANT_TOKENS, "demo wallet",
                                    uuid.uuid5(NAMESPACE, f"grant:{user.email}"))
        assert result in (Result.OK, Result.EXISTS), f"demo grant refused: {result}"
    return {"stream_room": streams.room_of(stream_id), "show_room": show_room}


async def run_seed(settings: Settings, dsn: str) -> dict[str, object]:
    app = create_app(settings, dsn)
    runner = web.AppRunner(app)
    await runner.setup()  # runs the lifecycle contexts: pools, ledger engine, hub
    try:
        return await seed(app)
    finally:
        await runner.cleanup()


@command("demo", "seed demo users, a live stream, a ticketed show and funded wallets")
def demo(settings: Settings, ns: argparse.Namespace) -> int:
    async def body(dsn: str) -> int:
        made = await run_seed(settings, dsn)
        print("Demo data ready. Log in at the web client with any of these (password "
              f"{PASSWORD!r}):")
        for u in USERS:
            print(f"  {u.role:<9} {u.email}")
        print(f"Live stream room: {made['stream_room']}   ticketed show room: {made['show_room']}")
        print(f"Viewers hold {GRANT_TOKENS} tokens each.")
        return 0

    return run_async(settings, body)
