"""With no DATABASE_URL the server runs its own PostgreSQL: data survives Ctrl-C and a new start,
and the embedded server is stopped when the Greenroom process exits."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.ops_support import ServerProcess, alive, exits_soon

pytestmark = pytest.mark.slow

STOP_S = 30


def call(url: str, body: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postgres" / "postmaster.pid").read_text().splitlines()[0])


def start(data_dir: Path, log: Path, *args: str) -> ServerProcess:
    # The suite may run against a DATABASE_URL; this test is about running without one.
    return ServerProcess({"GREENROOM_DATA_DIR": str(data_dir)}, args, drop=("DATABASE_URL", "REDIS_URL"),
                         log_path=log)


def test_embedded_postgres_keeps_data_across_restarts_and_stops_with_the_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    email = f"persist-{uuid.uuid4().hex[:8]}@example.com"
    password = "Persist-Test-2024"

    first = start(data_dir, tmp_path / "first.log")
    try:
        health = first.wait_ready(timeout=120)  # the first start runs initdb
        assert health["services"]["postgresql"]["status"] == "healthy"
        status, body = call(first.url + "/v1/auth/register",
                            {"email": email, "password": password, "display_name": "Persist"})
        assert status == 201, body
        old_access = body["data"]["access_token"]
        pg_pid = postmaster_pid(data_dir)
        assert alive(pg_pid)
        first.signal(signal.SIGINT)  # what Ctrl-C sends
        assert first.wait_exit(STOP_S) == 0, first.output()
    finally:
        first.kill()
    assert exits_soon(pg_pid), "embedded PostgreSQL outlived the server"
    assert not (data_dir / "postgres" / "postmaster.pid").exists()

    second = start(data_dir, tmp_path / "second.log", "--workers", "2")
    try:
        second.wait_ready(timeout=120)
        status, body = call(second.url + "/v1/auth/login", {"email": email, "password": password})
        assert status == 200, body
        # The signing keys persisted too: a token from before the restart still verifies.
        status, me = call(second.url + "/v1/auth/me", token=old_access)
        assert status == 200, me
        assert me["data"]["email"] == email
        pg_pid = postmaster_pid(data_dir)
        second.signal(signal.SIGTERM)
        assert second.wait_exit(STOP_S) == 0, second.output()
    finally:
        second.kill()
    assert exits_soon(pg_pid), "embedded PostgreSQL outlived the server"
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


def test_a_stop_while_the_embedded_server_starts_is_honoured_before_serving(tmp_path: Path) -> None:
    """SIGTERM after PostgreSQL came up but before serving (database, migrations): remembered, then
    a clean exit that stops PostgreSQL too; before, it killed the process and left PostgreSQL up."""
    data_dir = tmp_path / "data"
    srv = start(data_dir, tmp_path / "server.log")
    try:
        srv.wait_for_line('"msg":"embedded postgres running"', within_s=120)
        pg_pid = postmaster_pid(data_dir)
        srv.signal(signal.SIGTERM)
        assert srv.wait_exit(STOP_S) == 0, srv.output()
    finally:
        srv.kill()
    assert '"msg":"stopped before serving"' in srv.output()
    assert '"msg":"serving"' not in srv.output()
    assert exits_soon(pg_pid), "embedded PostgreSQL outlived the server"


def test_a_killed_server_does_not_keep_postgres_up_after_the_next_clean_stop(tmp_path: Path) -> None:
    """kill -9 leaves PostgreSQL running and the dead pid in the wheel's list of handle holders
    (`.handle_pids.json`); the next server attaches, and its clean stop must still stop PostgreSQL."""
    import os

    data_dir = tmp_path / "data"
    pg_pid = 0
    try:
        first = start(data_dir, tmp_path / "first.log")
        try:
            first.wait_ready(timeout=120)
            pg_pid = postmaster_pid(data_dir)
            os.kill(first.proc.pid, signal.SIGKILL)  # the server only: PostgreSQL is left running
            assert first.wait_exit(STOP_S) == -signal.SIGKILL
        finally:
            first.kill()
        assert alive(pg_pid), "this test needs PostgreSQL to survive the kill"
        handles = json.loads((data_dir / "postgres" / ".handle_pids.json").read_text())
        assert first.proc.pid in handles

        second = start(data_dir, tmp_path / "second.log")
        try:
            second.wait_ready(timeout=120)
            assert postmaster_pid(data_dir) == pg_pid  # attached to the survivor
            assert "dropped handles of processes that died" in second.output()
            second.signal(signal.SIGTERM)
            assert second.wait_exit(STOP_S) == 0, second.output()
        finally:
            second.kill()
        assert exits_soon(pg_pid), "embedded PostgreSQL outlived a clean stop after a kill -9"
        assert not (data_dir / "postgres" / "postmaster.pid").exists()
    finally:
        if pg_pid and alive(pg_pid):  # leave no server behind when the test fails
            os.kill(pg_pid, signal.SIGTERM)
            exits_soon(pg_pid)
