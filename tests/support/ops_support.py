"""Test support for operations tests: a plain authenticator and real server processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from server.kernel import keys
from server.kernel.errors import ApiError, ErrorCode
from server.kernel.identity import Identity
from tests.support.services import free_port

ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped) does not count."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def exits_soon(pid: int, within_s: float = 10.0) -> bool:
    """Wait (bounded) for `pid` to be gone: a process that removed its pid file may still be exiting."""
    deadline = time.monotonic() + within_s
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class PlainAuthenticator:
    """Tokens `<role>:<uuid>` name the caller outright, so rate-limit and log tests can choose users.

    Token signing is tested with the real authenticator; these tests are about what comes after.
    """

    def revoke_user_tokens(self, user_id: uuid.UUID, at: float) -> None:
        """Revocation is the real authenticator's; these tokens are for what comes after."""

    def authenticate(self, token: str) -> Identity:
        role, _, user = token.partition(":")
        if role not in ("viewer", "performer", "admin"):
            raise ApiError(ErrorCode.INVALID_TOKEN, "not a plain test token")
        try:
            return Identity(uuid.UUID(user), role, time.time() + 3600)  # type: ignore[arg-type]
        except ValueError:
            raise ApiError(ErrorCode.INVALID_TOKEN, "not a plain test token") from None


def use_plain_auth(app: web.Application) -> None:
    """Install the plain authenticator after the app's own services start (it wins)."""

    async def install(app: web.Application) -> None:
        app[keys.AUTH] = PlainAuthenticator()

    app.on_startup.append(install)


class ServerProcess:
    """`python -m server.cli serve` as a real child process, on a free port."""

    def __init__(self, env_overrides: dict[str, str], args: Sequence[str] = (), *, drop: Sequence[str] = (),
                 log_path: Path) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(env_overrides)
        env.setdefault("GREENROOM_LOG_LEVEL", "INFO")
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port), *args],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> dict[str, Any]:
        """Poll /health until it answers 200; return its data."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    data: dict[str, Any] = orjson.loads(resp.read())["data"]
                    return data
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        raise AssertionError(f"server not ready in {timeout}s:\n{self.output()}")

    def wait_for_line(self, text: str, within_s: float = 60.0) -> None:
        """Poll the log until `text` appears (the process must keep running meanwhile)."""
        deadline = time.monotonic() + within_s
        while text not in self.output():
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, f"never logged {text!r}:\n{self.output()}"
            time.sleep(0.005)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """Last-resort cleanup for a failed test: the whole session (workers included)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if not self._log.closed:
            self._log.close()
