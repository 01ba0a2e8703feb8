"""Real server processes: graceful SIGTERM with a request in flight, two workers on one port,
a dying worker stopping the pool, and the drain order seen from inside (sockets before pools)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web

from server.app import runner
from server.app.factory import create_app
from server.app.runner import serve_app, stop_bound_s
from server.kernel import keys
from server.kernel.settings import Settings
from tests.support.ops_support import ServerProcess, exits_soon
from tests.support.services import free_port

pytestmark = pytest.mark.slow

SHUTDOWN_S = 5.0


def server(tmp_path: Path, dsn: str, *args: str) -> ServerProcess:
    return ServerProcess({"DATABASE_URL": dsn, "GREENROOM_DATA_DIR": str(tmp_path / "data"),
                          "GREENROOM_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_S)},
                         args, drop=("REDIS_URL",), log_path=tmp_path / "server.log")


def get_json(url: str) -> dict:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=5) as resp:
        return orjson.loads(resp.read())["data"]  # type: ignore[no-any-return]


async def test_sigterm_finishes_the_request_in_flight_then_exits_0(tmp_path: Path, dsn: str) -> None:
    srv = server(tmp_path, dsn)
    locker = await asyncpg.connect(dsn)
    watcher = await asyncpg.connect(dsn)
    try:
        srv.wait_ready()
        # Hold the request inside its handler deterministically: it blocks on our table lock.
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        email = f"drain-{uuid.uuid4().hex[:8]}@example.com"
        body = orjson.dumps({"email": email, "password": "Drain-Test-2024", "display_name": "Drain"})
        conn = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        conn.sendall((f"POST /v1/auth/register HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        for _ in range(200):
            waiting = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND application_name = 'greenroom'")
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting == 1, srv.output()
        srv.signal(signal.SIGTERM)
        for _ in range(200):
            if "worker draining" in srv.output():
                break
            await asyncio.sleep(0.05)
        assert "worker draining" in srv.output()
        with pytest.raises(ConnectionRefusedError):  # no longer accepting
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
        await asyncio.sleep(0.5)
        assert srv.proc.poll() is None  # waiting for our request, not gone
        await tx.commit()
        response = b""
        while not response.endswith(b"}"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            response += chunk
        conn.close()
        status_line, _, rest = response.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 201 Created", response
        assert orjson.loads(rest.split(b"\r\n\r\n", 1)[1])["data"]["user"]["email"] == email
        assert srv.wait_exit(stop_bound_s(load_bound())) == 0, srv.output()
        assert await watcher.fetchval("SELECT count(*) FROM users WHERE email = $1", email) == 1
    finally:
        srv.kill()
        await locker.close()
        await watcher.close()


def load_bound() -> Settings:
    from server.kernel.settings import load_settings

    return load_settings(shutdown_timeout_s=SHUTDOWN_S)


def worker_pids(srv: ServerProcess, within_s: float = 60.0) -> list[int]:
    """Ask /v1/status on new connections until both workers answered (the second may still be
    starting when the first is ready); return the pid of each answer."""
    pids: list[int] = []
    deadline = time.monotonic() + within_s
    while len(set(pids)) < 2 or len(pids) < 10:  # the kernel spreads new connections by port hash
        assert time.monotonic() < deadline, f"one worker never answered: {set(pids)}"
        status = get_json(srv.url + "/v1/status")
        assert status["workers"] == 2
        pids.append(status["pid"])
    return pids


def test_two_workers_share_one_port_and_stop_together(tmp_path: Path, dsn: str) -> None:
    srv = server(tmp_path, dsn, "--workers", "2")
    try:
        srv.wait_ready()
        pids = worker_pids(srv)
        assert srv.proc.pid not in pids and os.getpid() not in pids
        # Both workers answered some of them, yet any worker's /metrics counts them all.
        for _ in range(6):
            with urllib.request.urlopen(srv.url + "/metrics", timeout=5) as resp:
                text = resp.read().decode()
            series = 'greenroom_http_requests_total{method="GET",route="/v1/status",status="200"}'
            counted = [line for line in text.splitlines() if line.startswith(series)]
            assert len(counted) == 1 and float(counted[0].rsplit(" ", 1)[1]) == len(pids), text
            assert "greenroom_db_pool_size" in text
        srv.signal(signal.SIGTERM)
        assert srv.wait_exit(stop_bound_s(load_bound()) + 5) == 0, srv.output()
        assert all(exits_soon(pid) for pid in set(pids))
        assert srv.output().count("worker stopped") == 2
    finally:
        srv.kill()


@pytest.mark.parametrize("moment", ["serving", "worker ready"])
def test_sigterm_while_workers_start_still_exits_0(tmp_path: Path, dsn: str, moment: str) -> None:
    """The parent forwards SIGTERM at once; a worker still importing or building its app must
    stop cleanly too (CI once saw exit 1 when the second worker was not serving yet)."""
    srv = server(tmp_path, dsn, "--workers", "2")
    try:
        srv.wait_for_line(f'"msg":"{moment}"')
        srv.signal(signal.SIGTERM)
        assert srv.wait_exit(stop_bound_s(load_bound()) + 5) == 0, srv.output()
        assert "worker exited unexpectedly" not in srv.output()
    finally:
        srv.kill()


def test_a_dying_worker_stops_the_pool_with_an_error(tmp_path: Path, dsn: str) -> None:
    srv = server(tmp_path, dsn, "--workers", "2")
    try:
        srv.wait_ready()
        victim, other = sorted(set(worker_pids(srv)))
        os.kill(victim, signal.SIGKILL)
        assert srv.wait_exit(stop_bound_s(load_bound()) + 5) == 1
        assert exits_soon(other)
        assert "worker exited unexpectedly" in srv.output()
    finally:
        srv.kill()


async def test_shutdown_closes_sockets_going_away_while_pools_are_open(
        make_settings: Callable[..., Settings], dsn: str) -> None:
    """What the socket layer relies on: `on_shutdown` runs first, with the database still usable."""
    settings = make_settings(port=free_port(), shutdown_timeout_s=SHUTDOWN_S)
    app = create_app(settings, dsn)
    sockets: set[web.WebSocketResponse] = set()
    seen_in_shutdown: list[int] = []

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sockets.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            sockets.discard(ws)
        return ws

    async def going_away(app: web.Application) -> None:
        seen_in_shutdown.append(await app[keys.DB].fetchval("SELECT 1"))
        for ws in list(sockets):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"server shutdown")

    app.router.add_get("/test-ws", ws_handler)
    app.on_shutdown.append(going_away)
    task = asyncio.create_task(serve_app(app, settings, reuse_port=False, stop_on=(signal.SIGUSR1,)))
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                ws = await session.ws_connect(f"http://127.0.0.1:{settings.port}/test-ws")
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)
        msg = await asyncio.wait_for(ws.receive(), timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == aiohttp.WSCloseCode.GOING_AWAY
        assert msg.extra == "server shutdown"
        await ws.close()
    assert await asyncio.wait_for(task, timeout=stop_bound_s(settings)) == 0
    assert seen_in_shutdown == [1]
    assert app[keys.DB].is_closing()


@pytest.mark.skipif(not Path("/usr/bin/ss").exists(), reason="iproute2's ss is not installed")
def test_listen_backlog_comes_from_settings(tmp_path: Path, dsn: str) -> None:
    import subprocess

    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    want = min(1000, somaxconn)
    srv = ServerProcess({"DATABASE_URL": dsn, "GREENROOM_DATA_DIR": str(tmp_path / "data"),
                         "GREENROOM_LISTEN_BACKLOG": str(want)}, drop=("REDIS_URL",),
                        log_path=tmp_path / "server.log")
    try:
        srv.wait_ready()
        # For a listening socket, ss reports the accept backlog in the Send-Q column.
        out = subprocess.run(["ss", "-Hltn", f"sport = :{srv.port}"], capture_output=True, text=True,
                             check=True).stdout.split()
        assert out[0] == "LISTEN" and int(out[2]) == want, out
    finally:
        srv.signal(signal.SIGTERM)
        assert srv.wait_exit(30) == 0


def test_a_stop_during_start_up_is_remembered_and_a_second_ctrl_c_aborts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "_stop_requested", False)
    runner._remember_stop(signal.SIGTERM, None)
    runner._remember_stop(signal.SIGTERM, None)  # a process manager repeating itself changes nothing
    assert runner._stop_requested is True
    monkeypatch.setattr(runner, "_stop_requested", False)
    runner._remember_stop(signal.SIGINT, None)
    assert runner._stop_requested is True
    with pytest.raises(KeyboardInterrupt):
        runner._remember_stop(signal.SIGINT, None)
