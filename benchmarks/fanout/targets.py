"""The servers under test: how to start each, subscribe to its room, and publish into it.

Every target is driven by the same wire client (`wire.py`) and the same payload: a chat-message
object whose `text` starts with `t=<send time, CLOCK_MONOTONIC ns>;s=<step>;q=<seq>;`, which each
subscriber reads with a byte search (no JSON parse on the hot path).

- `raw`: benchmarks/fanout/raw_server.py, the ceiling.
- `socketio`: benchmarks/fanout/socketio_server.py, python-socketio on aiohttp.
- `greenroom`: `python -m server.cli serve` with its rate limits raised; subscribers are guests in a
  public stream's room, the publisher is the stream's performer sending `chat.send` (the product's
  path: validated, stored in PostgreSQL, published through the broker with an offset and history).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks.fanout import wire
from benchmarks.fanout.latency import Histogram

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
TARGETS = ("raw", "socketio", "greenroom")
MARK = b'"t='  # where the timing fields start in every delivered payload


@dataclass(frozen=True)
class RoomInfo:
    """What a worker process needs to subscribe (picklable)."""

    target: str
    port: int
    room: str = "bench"
    token: str | None = None  # the publisher's (greenroom)
    performer_id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class Server:
    name: str
    port: int
    proc: asyncio.subprocess.Process
    log: Path  # the server's stderr
    info: RoomInfo | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pin(cpus: set[int] | None) -> Callable[[], None] | None:
    if not cpus:
        return None

    def apply() -> None:
        os.sched_setaffinity(0, cpus)

    return apply


def greenroom_env(port: int, dsn: str, data_dir: str, redis_url: str) -> dict[str, str]:
    """The server's environment for a benchmark: limits that would refuse the load are raised."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    env.update({
        "DATABASE_URL": dsn,
        "REDIS_URL": redis_url,
        "GREENROOM_HOST": HOST,
        "GREENROOM_PORT": str(port),
        "GREENROOM_DATA_DIR": data_dir,
        "GREENROOM_LOG_LEVEL": "WARNING",
        "GREENROOM_CHAT_RATE_PER_10S": "1000000000",
        "GREENROOM_WS_OPS_PER_10S": "1000000000",
        "GREENROOM_RATE_AUTH_PER_MIN": "100000",
        "GREENROOM_RATE_STREAMING_PER_MIN": "100000",
        "GREENROOM_RATE_GENERAL_PER_HOUR": "10000000",
        "GREENROOM_RATE_ANONYMOUS_PER_MIN": "10000000",
        "GREENROOM_WS_MAX_CONNS_PER_USER": "64",
        "GREENROOM_WS_MAX_GUESTS_PER_IP": "1000000",  # every benchmark guest comes from loopback
        "GREENROOM_CHAT_MAX_CHARS": "2000",
    })
    return env


@contextlib.asynccontextmanager
async def fresh_database(admin_dsn: str | None) -> AsyncIterator[str]:
    """A new database on `admin_dsn`'s server, dropped afterwards; '' lets greenroom embed its own."""
    if not admin_dsn:
        yield ""
        return
    import asyncpg

    name = f"gr_fanout_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = admin_dsn.partition("?")
    yield base.rsplit("/", 1)[0] + "/" + name
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def run_server(target: str, *, cpus: set[int] | None, admin_dsn: str | None = None,
                     redis_url: str = "", backlog: int | None = None,
                     ready_timeout_s: float = 120.0) -> AsyncIterator[Server]:
    """Start the target in a subprocess, wait until it answers, set up its room, stop it afterwards.

    Greenroom runs as `greenroom serve` (with `backlog`: `GREENROOM_LISTEN_BACKLOG`).
    """
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        env = dict(os.environ)
        if target == "raw":
            cmd = [sys.executable, "-m", "benchmarks.fanout.raw_server", "--port", str(port)]
        elif target == "socketio":
            cmd = [sys.executable, "-m", "benchmarks.fanout.socketio_server", "--port", str(port)]
        elif target == "greenroom":
            dsn = await stack.enter_async_context(fresh_database(admin_dsn))
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="gr-fanout-"))
            env = greenroom_env(port, dsn, data_dir, redis_url)
            cmd = [sys.executable, "-m", "server.cli", "serve"]
            if backlog is not None:
                env["GREENROOM_LISTEN_BACKLOG"] = str(backlog)
        else:
            raise ValueError(f"unknown target {target!r}")
        log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="gr-fanout-log-"))
        log = Path(log_dir) / f"{target}.stderr"
        err = stack.enter_context(log.open("wb"))  # a file, not a pipe: a chatty server must never block on it
        proc = await asyncio.create_subprocess_exec(*cmd, cwd=ROOT, env=env, preexec_fn=pin(cpus),
                                                    stdout=subprocess.DEVNULL, stderr=err)
        server = Server(target, port, proc, log)
        try:
            await _wait_ready(server, ready_timeout_s)
            server.info = await _prepare(server)
            yield server
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _wait_ready(server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if server.proc.returncode is not None:
                err = server.log.read_text(errors="replace")
                raise RuntimeError(f"{server.name} exited with {server.proc.returncode}: {err[-2000:]}")
            try:
                async with http.get(f"http://{HOST}:{server.port}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{server.name} did not answer within {timeout_s:g}s")


async def _prepare(server: Server) -> RoomInfo:
    if server.name != "greenroom":
        return RoomInfo(server.name, server.port)
    base = f"http://{HOST}:{server.port}"
    async with aiohttp.ClientSession() as http:
        async def post(path: str, body: dict[str, Any] | None, token: str | None = None) -> dict[str, Any]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with http.post(base + path, json=body, headers=headers) as resp:
                payload = await resp.json()
                if resp.status >= 300:
                    raise RuntimeError(f"POST {path}: {resp.status} {payload}")
                data: dict[str, Any] = payload["data"]
                return data

        tokens = await post("/v1/auth/register", {
            "email": f"bench-{uuid.uuid4().hex[:8]}@example.com", "password": "bench-Password-1",
            "display_name": "Bench Performer", "role": "performer"})
        token = tokens["access_token"]
        stream = await post("/v1/streams", {"title": "fan-out benchmark"}, token)
        await post(f"/v1/streams/{stream['id']}/start", None, token)
        return RoomInfo("greenroom", server.port, room=stream["room"], token=token,
                        performer_id=tokens["user"]["id"])


# --- subscribing ------------------------------------------------------------------------


class Subscription:
    """One subscriber: the handshake of its target, then every payload to `on_event`."""

    def __init__(self, info: RoomInfo, on_event: wire.OnMessage) -> None:
        self.info = info
        self.on_event = on_event
        self.conn: wire.WsConnection | None = None
        self.ready: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.retries = 0

    async def open_retrying(self, attempts: int = 5) -> dict[str, Any]:
        """`open`, retried with backoff when the server resets or refuses the connection (a full backlog)."""
        for attempt in range(attempts):
            try:
                return await self.open()
            except (OSError, TimeoutError):
                if attempt == attempts - 1:
                    raise
                self.retries += 1
                await asyncio.sleep(0.1 * 2 ** attempt)
        raise AssertionError("unreachable")

    async def open(self, since: dict[str, Any] | None = None, timeout_s: float = 60.0) -> dict[str, Any]:
        """Connect and join; returns the join reply's data (greenroom) or {}."""
        info = self.info
        path = {"raw": "/ws", "socketio": "/socket.io/?EIO=4&transport=websocket", "greenroom": "/ws"}[info.target]
        handler = {"raw": self._raw, "socketio": self._socketio, "greenroom": self._greenroom}[info.target]
        self.ready = asyncio.get_running_loop().create_future()
        self.conn = await wire.connect(HOST, info.port, path, handler, timeout_s)
        if info.target == "raw":
            self.ready.set_result({})
        elif info.target == "greenroom":
            self.conn.send_text(b'{"op":"auth","ref":1,"data":{}}')
            join: dict[str, Any] = {"op": "join", "ref": 2, "room": info.room, "data": {}}
            if since is not None:
                join["data"]["since"] = since
            self.conn.send_text(orjson.dumps(join))
        return await asyncio.wait_for(self.ready, timeout_s)

    def _raw(self, conn: wire.WsConnection, payload: bytes, now: int) -> None:
        self.on_event(conn, payload, now)

    def _socketio(self, conn: wire.WsConnection, payload: bytes, now: int) -> None:
        if payload.startswith(b"42"):
            self.on_event(conn, payload, now)
        elif payload == b"2":
            conn.send_text(b"3")  # Engine.IO ping; unanswered, the server drops us
        elif payload.startswith(b"0{"):
            conn.send_text(b"40")
        elif payload.startswith(b"40"):
            conn.send_text(b'421["join"]')
        elif payload.startswith(b"431") and not self.ready.done():
            self.ready.set_result({})

    def _greenroom(self, conn: wire.WsConnection, payload: bytes, now: int) -> None:
        if payload.startswith(b'{"op":"event"'):
            self.on_event(conn, payload, now)
            return
        msg = orjson.loads(payload)
        if msg.get("op") == "reply" and not self.ready.done():
            if not msg.get("ok"):
                self.ready.set_exception(RuntimeError(f"greenroom refused ref {msg.get('ref')}: {msg.get('error')}"))
            elif msg.get("ref") == 2:
                self.ready.set_result(msg.get("data") or {})


# --- publishing -------------------------------------------------------------------------


def chat_data(info: RoomInfo, text: str) -> dict[str, Any]:
    """What Greenroom's `chat.message` carries, for the baselines to send the same bytes."""
    return {"id": str(uuid.uuid4()),
            "author": {"id": info.performer_id, "display_name": "Bench Performer", "role": "performer"},
            "text": text, "at": dt.datetime.now(dt.UTC).isoformat()}


class Publisher:
    """Sends messages into the room; greenroom's go out as `chat.send` over `sockets` sockets."""

    def __init__(self, info: RoomInfo, sockets: int = 1) -> None:
        self.info = info
        self.sockets = sockets if info.target == "greenroom" else 1
        self.conns: list[wire.WsConnection] = []
        self.sent = 0
        self.ok = 0
        self.errors: dict[str, int] = {}
        self._ref = 100
        self._sent_at: dict[int, int] = {}  # greenroom: ref -> send time, for the publish round trip
        self.rtt = Histogram()  # chat.send to its reply: the publish path (validation, PostgreSQL, broker)

    async def open(self) -> None:
        info = self.info
        for _ in range(self.sockets):
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if info.target == "raw":
                conn = await wire.connect(HOST, info.port, "/pub", lambda c, p, n: None)
                ready.set_result(None)
            elif info.target == "socketio":
                def on_sio(conn: wire.WsConnection, payload: bytes, now: int,
                           ready: asyncio.Future[None] = ready) -> None:
                    if payload == b"2":
                        conn.send_text(b"3")
                    elif payload.startswith(b"0{"):
                        conn.send_text(b"40")
                    elif payload.startswith(b"40") and not ready.done():
                        ready.set_result(None)

                conn = await wire.connect(HOST, info.port, "/socket.io/?EIO=4&transport=websocket", on_sio)
            else:
                def on_gr(conn: wire.WsConnection, payload: bytes, now: int,
                          ready: asyncio.Future[None] = ready) -> None:
                    if not payload.startswith(b'{"op":"reply"'):
                        return  # the publisher is in the room too; its copies are not measured
                    msg = orjson.loads(payload)
                    if msg.get("ref") == 2 and not ready.done():
                        ready.set_result(None) if msg["ok"] else ready.set_exception(RuntimeError(str(msg)))
                    elif msg.get("ref", 0) >= 100:
                        sent_at = self._sent_at.pop(msg["ref"], None)
                        if sent_at is not None:
                            self.rtt.add((now - sent_at) // 1000)
                        if msg["ok"]:
                            self.ok += 1
                        else:
                            code = msg["error"]["code"]
                            self.errors[code] = self.errors.get(code, 0) + 1

                conn = await wire.connect(HOST, info.port, "/ws", on_gr)
                conn.send_text(orjson.dumps({"op": "auth", "ref": 1, "data": {"token": info.token}}))
                conn.send_text(orjson.dumps({"op": "join", "ref": 2, "room": info.room, "data": {}}))
            self.conns.append(conn)
            await asyncio.wait_for(ready, 30)

    def publish(self, text: str) -> None:
        info = self.info
        conn = self.conns[self.sent % len(self.conns)]
        self.sent += 1
        if info.target == "raw":
            conn.send_text(orjson.dumps(chat_data(info, text)))
        elif info.target == "socketio":
            conn.send_text(b"42" + orjson.dumps(["publish", chat_data(info, text)]))
        else:
            self._ref += 1
            self._sent_at[self._ref] = time.monotonic_ns()
            conn.send_text(orjson.dumps({"op": "chat.send", "ref": self._ref, "room": info.room,
                                         "data": {"text": text}}))

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
