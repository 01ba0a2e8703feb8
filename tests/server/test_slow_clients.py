"""Slow clients on a real server process: a request head or body that trickles in is cut off at
its bound (`GREENROOM_HTTP_HEADER_TIMEOUT_S`, `GREENROOM_HTTP_BODY_TIMEOUT_S`), while a slow
request that stays within the bounds is served."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.support.ops_support import ServerProcess

pytestmark = pytest.mark.slow

HEAD_S = 1.0
BODY_S = 1.0
LINGER_S = 0.5
SLACK_S = 1.5  # timer granularity, scheduling on a busy machine


@pytest.fixture
def srv(tmp_path: Path, dsn: str) -> Iterator[ServerProcess]:
    server = ServerProcess({"DATABASE_URL": dsn, "GREENROOM_DATA_DIR": str(tmp_path / "data"),
                            "GREENROOM_HTTP_HEADER_TIMEOUT_S": str(HEAD_S),
                            "GREENROOM_HTTP_BODY_TIMEOUT_S": str(BODY_S),
                            "GREENROOM_HTTP_LINGER_S": str(LINGER_S),
                            "GREENROOM_RATE_AUTH_PER_MIN": "10000"},
                           drop=("REDIS_URL",), log_path=tmp_path / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


def connect(srv: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=10)


def read_until_closed(sock: socket.socket, within_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and how long that took. Fails past `within_s`."""
    started = time.monotonic()
    sock.settimeout(within_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {within_s}s; got {data!r}") from None
    except ConnectionResetError:
        pass
    return data, time.monotonic() - started


LOGIN = orjson.dumps({"email": "nobody@example.com", "password": "Wrong-Password-1"})


def head(length: int = len(LOGIN)) -> bytes:
    return (f"POST /v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


@pytest.mark.parametrize("partial", [b"GET /heal", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: "])
def test_a_stalled_request_head_is_cut_off(srv: ServerProcess, partial: bytes) -> None:
    socks = [connect(srv) for _ in range(20)]
    for s in socks:
        s.sendall(partial)
    for s in socks:
        _, waited = read_until_closed(s, HEAD_S + SLACK_S)
        assert waited <= HEAD_S + SLACK_S
        s.close()


def test_a_trickling_request_head_is_cut_off(srv: ServerProcess) -> None:
    """A byte every 0.2 s keeps the connection busy but never completes the head in time."""
    s = connect(srv)
    started = time.monotonic()
    closed = False
    for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
        try:
            s.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        s.settimeout(0.2)
        try:
            if s.recv(65536) == b"":
                closed = True
                break
        except TimeoutError:
            pass
    assert closed, "the trickling head was never cut off"
    assert time.monotonic() - started <= HEAD_S + SLACK_S
    s.close()


def test_a_trickling_body_gets_408_and_a_close(srv: ServerProcess) -> None:
    s = connect(srv)
    s.sendall(head(1000))
    started = time.monotonic()
    answer = b""
    try:
        for _ in range(40):  # one byte every 0.1 s: 1000 bytes would take 100 s
            s.sendall(b" ")
            s.settimeout(0.1)
            try:
                answer += s.recv(65536)
                if answer.endswith(b"}") or not answer:
                    break
            except TimeoutError:
                pass
    except (BrokenPipeError, ConnectionResetError):
        pass
    rest, _ = read_until_closed(s, BODY_S + LINGER_S + SLACK_S)
    answer += rest
    elapsed = time.monotonic() - started
    assert elapsed <= BODY_S + LINGER_S + SLACK_S, elapsed
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "REQUEST_TIMEOUT"
    s.close()


def test_a_slow_request_within_the_bounds_is_served(srv: ServerProcess) -> None:
    s = connect(srv)
    whole = head() + LOGIN
    cut = len(head()) // 2
    pieces = [whole[:cut], whole[cut:len(head())], LOGIN[:10], LOGIN[10:]]
    for piece in pieces:
        s.sendall(piece)
        time.sleep(HEAD_S / 4)  # head and body each arrive in about half their bound
    s.settimeout(10)
    answer = b""
    while not answer.endswith(b"}"):
        chunk = s.recv(65536)
        assert chunk, answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer  # processed: the credentials are wrong
    # The connection stays usable for the next request.
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    s.close()
