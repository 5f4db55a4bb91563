"""The clients of bench/edge_attacks.py: a flood of idle connections, bodies pushed after a refusal, slow readers,
and a well-behaved victim whose status and latency are recorded while an attack runs. All on 127.0.0.1: attackers
use other loopback source addresses (127.0.0.2 and up), so the router sees them as other clients."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
MIB = 1024 * 1024


@dataclass
class Victim:
    """Requests of a client that behaves, one at a time on a new connection each: statuses and latencies."""

    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)

    def run(self, port: int, request: bytes, seconds: float, pause: float = 0.05) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.monotonic()
            status = exchange(port, request)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.latencies.append(time.monotonic() - start)
            time.sleep(pause)

    def summary(self) -> str:
        counts = ", ".join(f"{n} x {s or 'no answer'}" for s, n in sorted(self.statuses.items()))
        lat = sorted(self.latencies)
        if not lat:
            return f"{counts}; -"
        p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return f"{counts}; p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"


def exchange(port: int, request: bytes, timeout: float = 5.0) -> int:
    """Send ``request`` (which asks to close the connection), read the whole answer: its status, 0 when none."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return 0
    return int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else 0


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


def post(path: str, body: dict, key: str | None = None, *, close: bool = True) -> bytes:
    data = json.dumps(body).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    end = "Connection: close\r\n" if close else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"{end}\r\n").encode() + data


def flood(port: int, count: int, sources: list[str], *, kind: str) -> list[socket.socket]:
    """``count`` connections from ``sources`` in turn: ``keepalive`` ones after one GET /livez each, or ``silent``."""
    held = []
    for i in range(count):
        try:
            sock = socket.create_connection((HOST, port), timeout=5, source_address=(sources[i % len(sources)], 0))
            if kind == "keepalive":
                sock.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
                sock.recv(65536)
        except OSError:
            continue
        held.append(sock)
    return held


def push(port: int, source: str, seconds: float, results: Any) -> None:
    """Chunked bodies the router refuses (no key: 401), sent as fast as possible from ``source`` for ``seconds``,
    on a new connection each time the router closes one; puts (bytes pushed, connections) on ``results``.
    Run in a process of its own, so the victim's timings do not share an interpreter with it."""
    piece = b"10000\r\n" + b"x" * 65536 + b"\r\n"
    head = b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    pushed = connections = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with socket.create_connection((HOST, port), timeout=5, source_address=(source, 0)) as sock:
                connections += 1
                sock.sendall(head)
                while time.monotonic() < end:
                    sock.sendall(piece)
                    pushed += 65536
        except OSError:
            time.sleep(0.001)
    results.put((pushed, connections))


def slow_readers(port: int, request_of: list[bytes], count: int) -> list[socket.socket]:
    """``count`` clients with a 4 KB receive buffer, each sending one of ``request_of`` in turn."""
    readers = []
    for i in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((HOST, port))
        sock.sendall(request_of[i % len(request_of)])
        sock.setblocking(False)
        readers.append(sock)
    return readers


def read_slowly(readers: list[socket.socket], rate: int = 1024) -> None:
    """One second's worth (``rate`` bytes) from each reader."""
    for sock in readers:
        with contextlib.suppress(OSError):
            sock.recv(rate)


@dataclass
class Usage:
    """A process's CPU seconds and memory, read from /proc."""

    cpu_s: float
    rss: int
    hwm: int

    @classmethod
    def of(cls, pid: int) -> Usage:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
        return cls(ticks / os.sysconf("SC_CLK_TCK"), int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024)


def inflight(port: int) -> float:
    """Requests in flight on the router's endpoints (its /metrics)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("speech_router_endpoint_inflight{"))
