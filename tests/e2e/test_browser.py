"""End to end in a real browser: the web client registers, goes live, and chat round-trips over /ws.

Headless Debian Chromium driven by Playwright against the app served on a real loopback port.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from server.kernel.settings import Settings
from tests.support.wallet_support import available, fund

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)"),
]


async def register(page: Any, base: str, role: str, name: str) -> None:
    await page.goto(f"{base}/#/login")
    form = page.locator("#register-form")
    await form.locator("input[name=email]").fill(f"{uuid.uuid4().hex[:12]}@example.com")
    await form.locator("input[name=password]").fill("correct-Horse-battery-9")
    await form.locator("input[name=display_name]").fill(name)
    await form.locator("select[name=role]").select_option(role)
    await form.locator("button[type=submit]").click()


async def test_register_go_live_and_chat_round_trip(aiohttp_server: Any,
                                                    make_app: Callable[[Settings], web.Application],
                                                    make_settings: Callable[..., Settings]) -> None:
    from playwright.async_api import async_playwright, expect

    server = await aiohttp_server(make_app(make_settings()))
    base = f"http://127.0.0.1:{server.port}"
    page_errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            performer = await (await browser.new_context()).new_page()
            viewer = await (await browser.new_context()).new_page()  # separate storage: another user
            for page in (performer, viewer):
                page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            expect.set_options(timeout=10_000)

            # Performer: register, create a stream, go live in its room.
            await register(performer, base, "performer", "Stage Name")
            await expect(performer).to_have_url(re.compile(r"#/perform$"))
            await expect(performer.locator("#whoami")).to_have_text("Stage Name (performer)")
            await performer.locator("#create-stream-form input[name=title]").fill("Late show")
            await performer.locator("#create-stream-form button[type=submit]").click()
            await expect(performer).to_have_url(re.compile(r"#/watch/[0-9a-f-]{36}$"))
            await expect(performer.locator("#socket-state")).to_have_text("live")
            await performer.locator("#room-controls button", has_text="Go live").click()
            await expect(performer.locator("#room-status")).to_have_text("live")
            await expect(performer.locator("#chat-log")).to_contain_text("The stream is live.")

            # Viewer: register, find the stream in the live list, enter its room.
            await register(viewer, base, "viewer", "Fan One")
            await expect(viewer).to_have_url(re.compile(r"#/$"))
            card = viewer.locator("#stream-list a", has_text="Late show")
            await expect(card).to_contain_text("Stage Name")
            await card.click()
            await expect(viewer.locator("#room-title")).to_have_text("Late show")
            await expect(viewer.locator("#room-status")).to_have_text("live")
            await expect(viewer.locator("#video-area")).to_contain_text("not implemented yet")

            # A chat message typed by the viewer reaches the performer through the socket, and back.
            text = f"hello from the front row {uuid.uuid4().hex[:6]}"
            await viewer.locator("#chat-form input[name=text]").fill(text)
            await viewer.locator("#chat-form button[type=submit]").click()
            for page in (performer, viewer):
                entry = page.locator("#chat-log li", has_text=text)
                await expect(entry).to_have_count(1)
                await expect(entry.locator(".author")).to_have_text("Fan One")
            await expect(viewer.locator("#chat-form input[name=text]")).to_have_value("")

            # A tip over the socket: the viewer's wallet is funded through the ledger, the tip moves once
            # and both pages show it with the stream's running total and top tippers.
            viewer_id = await viewer.evaluate("JSON.parse(localStorage.getItem('greenroom.session')).user.id")
            await fund(server.app, uuid.UUID(viewer_id), 500)
            await viewer.locator("#tip-form input[name=amount]").fill("120")
            await viewer.locator("#tip-form input[name=message]").fill("bravo")
            await viewer.locator("#tip-form button[type=submit]").click()
            for page in (performer, viewer):
                await expect(page.locator("#tip-feed li", has_text="tipped 120 tokens — bravo")).to_have_count(1)
                await expect(page.locator("#room-total")).to_have_text("120 tokens")
                await expect(page.locator("#top-tippers li")).to_have_text(["Fan One 120"])
            # More than the wallet holds: a clear refusal on the page, and nothing moves.
            await viewer.locator("#tip-form input[name=amount]").fill("1000")
            await viewer.locator("#tip-form button[type=submit]").click()
            await expect(viewer.locator("#flash")).to_have_text("not enough tokens available")
            await expect(performer.locator("#room-total")).to_have_text("120 tokens")
            assert await available(server.app, uuid.UUID(viewer_id)) == 380

            # Markup in chat is shown as text, never run or rendered.
            hostile = '<img src=x onerror="window.pwned=1">'
            await performer.locator("#chat-form input[name=text]").fill(hostile)
            await performer.locator("#chat-form button[type=submit]").click()
            await expect(viewer.locator("#chat-log li", has_text=hostile)).to_have_count(1)
            assert await viewer.evaluate("window.pwned === undefined")
            assert await viewer.locator("#chat-log img").count() == 0

            # Ending the stream reaches the viewer as an event.
            await performer.locator("#room-controls button", has_text="End").click()
            await expect(viewer.locator("#room-status")).to_have_text("ended")
        finally:
            await browser.close()
            await server.close()  # before the test's database is dropped
    assert page_errors == []


async def test_socket_module_resumes_after_the_server_drops_it(aiohttp_server: Any,
                                                               make_app: Callable[[Settings], web.Application],
                                                               make_settings: Callable[..., Settings]) -> None:
    from playwright.async_api import async_playwright

    from signaling.core import keys as socket_keys
    from signaling.core.protocol import Close
    from tests.support.socket_support import eventually, public_room

    server = await aiohttp_server(make_app(make_settings()))
    base = f"http://127.0.0.1:{server.port}"
    room = await public_room(server.app)
    hub = server.app[socket_keys.HUB]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = await (await browser.new_context()).new_page()
            await page.goto(f"{base}/")
            conn_id = await page.evaluate("""async (room) => {
                const { GreenroomSocket } = await import("/static/greenroom.js");
                window.got = []; window.rejoins = [];
                const s = new GreenroomSocket("/ws", { reconnect: { baseDelayMs: 20, maxDelayMs: 100 } });
                await s.connect();
                s.on("chat.message", (ev) => window.got.push(ev.offset));
                s.on("rejoined", (r) => window.rejoins.push({ recovered: r.recovered, since: r.since.offset }));
                await s.join(room);
                window.sock = s;
                return s.identity.conn_id;
            }""", room)
            published = [await hub.publish(room, "chat.message", {"text": f"m{i}"}) for i in range(2)]

            async def page_got(n: int) -> bool:
                return len(await page.evaluate("window.got")) >= n

            await eventually(lambda: page_got(2))
            # The server drops the socket; what is published meanwhile comes back from history.
            hub.connections[conn_id].close_soon(Close.GOING_AWAY)
            await eventually(lambda: conn_id not in hub.connections)
            published += [await hub.publish(room, "chat.message", {"text": f"m{i}"}) for i in range(2, 6)]
            await eventually(lambda: page_got(6))
            published.append(await hub.publish(room, "chat.message", {"text": "live again"}))
            await eventually(lambda: page_got(7))
            assert await page.evaluate("window.got") == published
            assert await page.evaluate("window.rejoins") == [{"recovered": True, "since": published[1]}]
            assert await page.evaluate("window.sock.stats.reconnects") == 1
        finally:
            await browser.close()
            await server.close()


async def test_socket_module_orders_dedupes_fills_gaps_and_reports_epochs() -> None:
    """greenroom.js against the scripted server: the misbehaviours test_client.py gives the Python client."""
    from aiohttp.test_utils import TestServer
    from playwright.async_api import async_playwright

    from tests.support.client_support import Room, ScriptedServer
    from tests.support.socket_support import eventually

    scripted = ScriptedServer()
    server = TestServer(scripted.app)
    await server.start_server()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = await (await browser.new_context()).new_page()
            await page.goto(str(server.make_url("/")))
            await page.evaluate("""async () => {
                const { GreenroomSocket } = await import("/static/greenroom.js");
                window.got = []; window.rejoins = [];
                const s = new GreenroomSocket("/ws", { token: "good", reconnect: { baseDelayMs: 10, maxDelayMs: 50 } });
                await s.connect();
                s.on("event", (ev) => window.got.push([ev.offset, ev.type]));
                s.on("rejoined", (r) => window.rejoins.push([r.recovered, r.epoch, r.since.offset]));
                await s.join("stream:1");
                window.sock = s;
            }""")

            async def offsets_in_page() -> list[int]:
                return [o for o, _ in await page.evaluate("window.got") if o]

            async def has(n: int) -> bool:
                return len(await offsets_in_page()) >= n

            # Live, in order; a volatile event passes through without an offset.
            for i in range(3):
                await scripted.publish("stream:1", "chat.message", {"i": i})
            await scripted.volatile("stream:1", "room.viewers", {"count": 2})
            await eventually(lambda: has(3))
            # Live delivery loses offsets 5 and 6: the module leaves and rejoins with since, filling the gap.
            scripted.skip_live = {5, 6}
            for i in range(3, 8):
                await scripted.publish("stream:1", "chat.message", {"i": i})
            await eventually(lambda: has(8))
            assert await page.evaluate("window.sock.stats.gaps") == 1
            # Dropped: events published meanwhile come from history, one of them also raced live.
            await scripted.drop_all(code=4008)
            await scripted.publish("stream:1", "chat.message", {"i": 8})
            await scripted.publish("stream:1", "chat.message", {"i": 9})
            scripted.live_before_reply = True
            await eventually(lambda: has(10))
            assert await offsets_in_page() == list(range(1, 11))
            assert await page.evaluate("window.sock.stats.duplicatesDropped") >= 1
            # History lost (new epoch): the module says recovered false and follows the new stream.
            scripted.live_before_reply = False
            scripted.rooms["stream:1"] = Room(epoch="e2")
            await scripted.drop_all(code=1001)
            await eventually(lambda: page.evaluate("window.rejoins.length >= 3"))
            await scripted.publish("stream:1", "chat.message", {"i": 0})
            await eventually(lambda: has(11))
            assert (await offsets_in_page())[-1] == 1
            rejoins = await page.evaluate("window.rejoins")
            assert rejoins[0] == [True, "e1", 4]  # the gap resync
            assert rejoins[1] == [True, "e1", 8]  # the reconnect
            assert rejoins[2] == [False, "e2", 10]
            assert await page.evaluate("window.sock.position('stream:1')") == {"epoch": "e2", "offset": 1}
            # The server announces lost events with a volatile room.reset: the module rejoins with since.
            scripted.rooms["stream:1"] = Room(epoch="e3")
            await scripted.volatile("stream:1", "room.reset", {"epoch": "e3", "offset": 0})
            await eventually(lambda: page.evaluate("window.rejoins.length >= 4"))
            assert (await page.evaluate("window.rejoins"))[3] == [False, "e3", 1]
            # A refused token without a provider ends the socket instead of retrying it forever.
            scripted.refuse_tokens = True
            await scripted.drop_all(code=4001)
            await eventually(lambda: page.evaluate("window.sock.closed"))
            assert await page.evaluate("window.sock.failure.code") == "AUTH_FAILED"
        finally:
            await browser.close()
            await server.close()
