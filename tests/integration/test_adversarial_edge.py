"""Round 2 of hostile clients (issue #23) against `speech-router serve` itself, a separate process on 127.0.0.1.

One router process with tight edge limits in front of one emulated index-tts-vllm node. Each test is an attack
from the issue and fails when its defect is back: odd reference paths opening a healthy node's breaker, one
address's connections shutting others out, a refused body read without end, slow readers holding their whole
answer in memory, a stalled body counted as a 500. Clients pick their source address among 127.0.0.0/8 to be
"other clients" of the router.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from speech_router.emulator.index_tts_vllm import EmulatorConfig
from tests.conftest import Node
from tests.processes import RouterProcess, router_process

CLIENT_KEY = "sk-client-round2-5c1e"
LIMITS = {"header_timeout": 5, "body_timeout": 5, "keepalive_timeout": 60, "max_connections": 40,
          "max_connections_per_client": 24, "max_body_bytes": 64 * 1024}
WAIT_S = 20.0
#: a text whose answer is about 4 minutes of 22,050 Hz WAV (10 MB): fanned out on /v1/audio/speech, whole on /tts_url
LONG_TEXT = ("A sentence of a long text that goes on and on. " * 90)[:4000]
MIB = 1024 * 1024


@dataclass
class Edge:
    router: RouterProcess
    node: Node


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    node = Node(EmulatorConfig(name="n1"))
    node.server.start()
    config = {
        "server": LIMITS,
        "pools": {"tts": {"type": "index-tts-vllm", "endpoints": [{"url": node.url, "max_concurrency": 8}],
                          "breaker": {"consecutive_failures": 2, "min_requests": 2},
                          "queue": {"timeout": 60}, "health_check": {"interval": 0.5}}},
        "models": {"m": ["tts"]},
        "voices": {"alloy": {"spk_audio_path": "/v/alloy.wav"}},
    }
    try:
        with router_process(config, tmp_path_factory.mktemp("edge2"), {"SPEECH_ROUTER_API_KEYS": CLIENT_KEY}) as r:
            yield Edge(r, node)
    finally:
        node.server.stop()


def connect(edge: Edge, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(edge.router.addr, timeout=WAIT_S, source_address=(source, 0))


def request(path: str, body: bytes = b"", *, method: str = "POST", key: str | None = CLIENT_KEY, extra: str = "",
            length: int | None = None, chunked: bool = False) -> bytes:
    """A request's bytes: ``length`` overrides its Content-Length, ``chunked`` announces a chunked body instead."""
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    size = "Transfer-Encoding: chunked\r\n" if chunked else \
        f"Content-Length: {len(body) if length is None else length}\r\n" if method == "POST" else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n{size}{extra}\r\n"
            ).encode() + body


def reply_of(sock: socket.socket) -> bytes:
    """One whole response (by its Content-Length), leaving the connection open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


def status_of(reply: bytes) -> int:
    return int(reply[9:12]) if reply.startswith(b"HTTP/1.1 ") else 0


def closed(sock: socket.socket) -> bool:
    """Whether the router closed ``sock`` (what it sent before is read first)."""
    sock.settimeout(0.05)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:
        return True


def metric(edge: Edge, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(edge.router.url + "/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def tts_url(edge: Edge, path: str, text: str = "hello there") -> tuple[int, dict]:
    with connect(edge) as sock:
        sock.sendall(request("/tts_url", json.dumps({"text": text, "spk_audio_path": path}).encode(),
                             extra="Connection: close\r\n"))
        reply = reply_of(sock)
    status = status_of(reply)
    return status, json.loads(reply.split(b"\r\n\r\n", 1)[1]) if status != 200 else {}


# -- item 2: a missing reference path is the client's mistake whatever characters it holds --------------------


ODD_PATHS = ["/v/missing it's.wav", '/v/missing "quoted".wav', "/v/missing\\back\\slash.wav",
             "/v/missing\u200bzero-width.wav", "/v/missing ünïcode 😀.wav", "/v/missing '\"both\\.wav"]
CONTROL_PATHS = ["/v/missing\ttab.wav", "/v/missing\nnewline.wav", "/v/missing\x7fdel.wav", "/v/missing\x85nel.wav"]


def test_a_missing_reference_is_the_clients_400_whatever_its_characters_and_never_the_nodes(edge):
    for _ in range(3):  # more than the breaker's 2 consecutive failures, were they counted
        for path in ODD_PATHS:
            status, body = tts_url(edge, path)
            assert status == 400, (path, body)
            assert "reference audio" in body["error"] and "not found" in body["error"], body
    assert metric(edge, "speech_router_endpoint_attempts_total", outcome="error") == 0
    assert metric(edge, "speech_router_endpoint_attempts_total", outcome="rejected") >= 3 * len(ODD_PATHS)
    assert metric(edge, "speech_router_ejections_total") == 0
    assert tts_url(edge, "/v/alloy.wav")[0] == 200


def test_reference_paths_with_control_characters_are_refused_before_any_node(edge):
    seen = len(edge.node.requests)
    for path in CONTROL_PATHS:
        status, body = tts_url(edge, path)
        assert status == 400 and "control character" in body["error"], (path, body)
    assert len(edge.node.requests) == seen  # the node never saw them


# -- item 3: a connection flood ----------------------------------------------------------------------------


def test_idle_connections_make_room_for_clients_that_send_requests(edge):
    """One address holds its share in kept-alive connections, another the rest in connections that say nothing."""
    kept = [connect(edge, "127.0.0.2") for _ in range(LIMITS["max_connections_per_client"])]
    silent = [connect(edge, "127.0.0.3") for _ in range(LIMITS["max_connections"] - len(kept))]
    held, served = kept + silent, []
    try:
        for sock in kept:
            sock.sendall(request("/livez", method="GET", key=None))
            assert status_of(reply_of(sock)) == 200  # and it stays open, idle
        for _ in range(6):  # the edge is full: every one of these clients is served all the same
            served.append(connect(edge))
            served[-1].sendall(request("/livez", method="GET", key=None))
            assert status_of(reply_of(served[-1])) == 200
        assert sum(closed(sock) for sock in held) >= 6  # each took the place of an idle one (theirs stay open)
    finally:
        for sock in held + served:
            sock.close()


def test_one_address_gets_its_share_of_connections_and_others_are_still_served(edge):
    share = LIMITS["max_connections_per_client"]
    busy = [connect(edge, "127.0.0.4") for _ in range(share)]
    try:
        for sock in busy:  # each one a request under way (its head half sent): none idle
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        with connect(edge, "127.0.0.4") as extra:
            reply = extra.recv(65536)
        assert status_of(reply) == 503 and b"too_many_connections" in reply
        with connect(edge, "127.0.0.5") as other:
            other.sendall(request("/livez", method="GET", key=None, extra="Connection: close\r\n"))
            assert status_of(reply_of(other)) == 200
    finally:
        for sock in busy:
            sock.close()


# -- item 4: a refused body is drained only so far ---------------------------------------------------------


@pytest.mark.parametrize("key", [None, CLIENT_KEY], ids=["401", "413"])
def test_a_refused_chunked_body_is_read_only_so_far_then_the_connection_is_closed(edge, key):
    offered = 256 * MIB  # far more than the sockets' buffers hold: the rest is sent only if the router reads it
    sent = 0
    with connect(edge) as sock:
        sock.sendall(request("/v1/audio/speech", key=key, chunked=True))
        piece = b"10000\r\n" + b"x" * 65536 + b"\r\n"
        try:
            while sent < offered:
                sock.sendall(piece)
                sent += 65536
        except OSError:
            pass  # closed by the router
    assert sent < 64 * MIB, f"the router read {sent / MIB:.0f} MiB of a body it had refused"


# -- item 5: slow readers ------------------------------------------------------------------------------------


def test_slow_readers_of_long_answers_cost_little_memory_and_it_comes_back(edge):
    router = edge.router
    speech = json.dumps({"model": "m", "voice": "alloy", "input": LONG_TEXT, "response_format": "wav"}).encode()
    whole = json.dumps({"text": LONG_TEXT, "spk_audio_path": "/v/alloy.wav"}).encode()
    bodies = [("/v1/audio/speech", speech), ("/tts_url", whole)]
    for path, body in bodies:  # warm up both paths (codecs, buffers) before the baseline
        with connect(edge) as sock:
            sock.sendall(request(path, body, extra="Connection: close\r\n"))
            while sock.recv(1 << 20):
                pass
    time.sleep(1.5)
    baseline = router.rss()
    readers = []
    try:
        for i in range(12):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(router.addr)
            path, body = bodies[i % 2]
            sock.sendall(request(path, body))  # and read nothing
            readers.append(sock)
        time.sleep(1)
        deadline = time.monotonic() + 120
        while metric(edge, "speech_router_endpoint_inflight") > 0:  # every answer is in: the slots are free
            assert time.monotonic() < deadline, "the node's slots were held by slow readers"
            time.sleep(0.5)
        held = router.rss() - baseline
        assert held < 24 * MIB, f"12 slow readers of 10 MB answers hold {held / MIB:.0f} MiB"
    finally:
        for sock in readers:
            sock.close()
    time.sleep(3)  # closed, then the heap is trimmed
    left = router.rss() - baseline
    assert left < 16 * MIB, f"{left / MIB:.0f} MiB still held after the slow readers left"


# -- item 6: a body that stops arriving ----------------------------------------------------------------------


def test_a_body_that_stops_arriving_is_408_and_is_logged_and_counted_as_408(edge):
    before = metric(edge, "speech_router_requests_total", route="/v1/audio/speech", status="408")
    with connect(edge) as sock:
        sock.sendall(request("/v1/audio/speech", b'{"model": "m", ', length=100, extra="X-Request-Id: stalled-1\r\n"))
        reply = sock.recv(65536)
    assert status_of(reply) == 408
    time.sleep(0.5)
    assert metric(edge, "speech_router_requests_total", route="/v1/audio/speech", status="408") == before + 1
    assert metric(edge, "speech_router_requests_total", status="500") == 0
    lines = [json.loads(line) for line in edge.router.log.read_text().splitlines() if "stalled-1" in line]
    access = [line for line in lines if line.get("logger") == "speech_router.access"]
    assert [line["status"] for line in access] == [408], lines
