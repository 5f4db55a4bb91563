"""Connection limits at the HTTP server, driven by raw sockets against a real router on 127.0.0.1.

Each limit is set tight (small sizes, sub-second timeouts) so the tests stay short; the router must answer
431/408/503 as HTTP says, close the connection, keep serving others, and not grow with what was sent.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.conftest import serve_router

LIMITS = {"max_header_bytes": 4096, "max_headers": 20, "header_timeout": 0.5, "body_timeout": 0.5,
          "keepalive_timeout": 0.5, "max_connections": 8}
WAIT_S = 10.0  # far beyond every limit above: a socket still open by then was never going to be closed


@pytest.fixture(scope="module")
def edge() -> Iterator[tuple[str, int]]:
    srv = serve_router({"server": LIMITS, "pools": {"cpu": {"type": "espeak"}}, "models": {"m": ["cpu"]}})
    try:
        yield srv.host, srv.port
    finally:
        srv.stop()


def connect(addr: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(addr, timeout=WAIT_S)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or WAIT_S passes: then the test fails)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def status_of(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1.1 "), reply[:200]
    return int(reply[9:12])


def body_of(reply: bytes) -> dict:
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])


def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send as much as the server takes; it may close the connection before all of it went."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def get(addr: tuple[str, int], path: str = "/livez", headers: str = "") -> bytes:
    with connect(addr) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
        return read_all(sock)


def test_a_request_within_the_limits_is_served(edge):
    headers = "".join(f"X-H{i}: {'v' * 100}\r\n" for i in range(15))
    assert status_of(get(edge, headers=headers)) == 200


def test_a_huge_header_is_431_and_the_server_keeps_serving(edge):
    with connect(edge) as sock:
        send_quietly(sock, b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 << 20) + b"\r\n\r\n")
        reply = read_all(sock)
    assert status_of(reply) == 431
    assert body_of(reply)["error"]["code"] == "header_too_large"
    assert b"connection: close" in reply.lower()
    assert status_of(get(edge)) == 200


def test_a_head_that_never_ends_is_refused_once_over_the_size(edge):
    """No end of head ever comes: the size limit, not the timeout, ends it (the answer comes at once)."""
    with connect(edge) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
        sock.settimeout(0.4)  # below header_timeout: only the size limit can answer this fast
        assert status_of(read_all(sock)) == 431


def test_too_many_headers_is_431(edge):
    headers = "".join(f"X-H{i}: v\r\n" for i in range(200))
    reply = get(edge, headers=headers)
    assert status_of(reply) == 431
    assert body_of(reply)["error"]["code"] == "too_many_headers"


def test_a_stalled_request_head_is_408(edge):
    with connect(edge) as sock:
        sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        reply = read_all(sock)
    assert status_of(reply) == 408
    assert body_of(reply)["error"]["code"] == "request_timeout"


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(edge):
    with connect(edge) as sock:
        assert read_all(sock) == b""


def test_a_stalled_body_is_408_in_the_routes_shape(edge):
    with connect(edge) as sock:
        sock.sendall(b"POST /tts_url HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"text\": ")
        reply = read_all(sock)
    assert status_of(reply) == 408
    assert body_of(reply)["status"] == "error"  # index-tts-vllm's error shape on /tts_url


def test_an_idle_kept_alive_connection_is_closed(edge):
    with connect(edge) as sock:
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = read_all(sock)  # returns only once the server closed the kept-alive connection
    assert status_of(reply) == 200
    assert reply.count(b"HTTP/1.1") == 1


def test_connections_over_the_limit_get_503_when_none_is_idle_and_the_rest_are_served(edge):
    held = []
    try:
        for _ in range(LIMITS["max_connections"]):
            held.append(connect(edge))
            held[-1].sendall(b"GET /livez HTTP/1.1\r\n")  # a request under way: not idle, not closed for room
        time.sleep(0.1)  # all accepted by the server
        with connect(edge) as extra:
            reply = read_all(extra)
        assert status_of(reply) == 503
        assert b"retry-after: 1" in reply.lower()
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + WAIT_S
    while True:  # the held ones are gone once the server saw them close
        try:
            assert status_of(get(edge)) == 200
            break
        except AssertionError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
