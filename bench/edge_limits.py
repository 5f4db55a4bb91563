"""What an HTTP server does with hostile clients: a 64 MiB header, 100,000 headers, 150 slowloris connections,
a half-sent request and an idle connection (issue #12 item 1).

Each server runs the same minimal ASGI app (bench/_edge_app.py) as a child process on 127.0.0.1:

- uvicorn with httptools (uvicorn's default, what `speech-router serve` used before) and with h11;
- speech-router's edge: uvicorn's httptools protocol with `speech_router.edge`'s limits, at their defaults;
- hypercorn and granian, when `--other-python` names an interpreter that has them (they are not dependencies).

    python -m bench.edge_limits [--other-python /path/to/python] [--slow-s 15] [--out bench/README.md]

RSS is the server's peak (VmHWM, summed over its process tree) before and after each scenario. Bounded:
every scenario has a time cap and every child is stopped however the run ends.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._procs import HOST, Child, free_port
from bench._readme import publish

MIB = 1024 * 1024
BIG_HEADER = 64 * MIB
MANY_HEADERS = 100_000
SLOW_CONNECTIONS = 150
CAP_S = 60.0


def servers(other_python: str | None) -> list[tuple[str, Callable[[int], list[str]]]]:
    py = sys.executable
    found: list[tuple[str, Callable[[int], list[str]]]] = [
        ("uvicorn httptools (before)", lambda p: [py, "-m", "uvicorn", "bench._edge_app:app", "--http", "httptools",
                                                  "--port", str(p), "--log-level", "warning"]),
        ("uvicorn h11", lambda p: [py, "-m", "uvicorn", "bench._edge_app:app", "--http", "h11", "--port", str(p),
                                   "--log-level", "warning"]),
        ("speech-router edge (defaults)", lambda p: [py, "-m", "bench._edge_app", "--port", str(p)]),
    ]
    if other_python:
        found += [
            ("hypercorn (defaults)", lambda p: [other_python, "-m", "hypercorn", "bench._edge_app:app", "--bind",
                                                f"{HOST}:{p}", "--log-level", "warning"]),
            ("granian (defaults)", lambda p: [other_python, "-m", "granian", "--interface", "asgi", "--host", HOST,
                                              "--port", str(p), "--log-level", "warning", "bench._edge_app:app"]),
        ]
    return found


def tree_hwm(pid: int) -> int:
    """Peak RSS (VmHWM) of ``pid`` and its descendants, in bytes."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def status_of(reply: bytes) -> str:
    return reply[9:12].decode() if reply.startswith(b"HTTP/1.") else ("closed" if not reply else "?")


def big_header(port: int) -> tuple[str, float]:
    """Send a 64 MiB header value; (answer, seconds)."""
    start = time.monotonic()
    with socket.create_connection((HOST, port), timeout=CAP_S) as sock:
        sent = 0
        try:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
            piece = b"a" * MIB
            while sent < BIG_HEADER and time.monotonic() - start < CAP_S:
                sock.sendall(piece)
                sent += len(piece)
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass
        return status_of(read_reply(sock, start)), time.monotonic() - start


def read_reply(sock: socket.socket, start: float) -> bytes:
    reply = b""
    sock.settimeout(max(0.1, CAP_S - (time.monotonic() - start)))
    try:
        while chunk := sock.recv(65536):
            reply += chunk
            if b"\r\n\r\n" in reply:
                break
    except OSError:
        pass
    return reply


def many_headers(port: int) -> tuple[str, float]:
    start = time.monotonic()
    head = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(MANY_HEADERS)) + b"\r\n"
    with socket.create_connection((HOST, port), timeout=CAP_S) as sock:
        try:
            sock.sendall(head)
        except OSError:
            pass
        return status_of(read_reply(sock, start)), time.monotonic() - start


def slow(port: int, seconds: float) -> dict[str, Any]:
    """150 slowloris connections (a header line every 2 s), one half-sent request, one idle connection."""
    loris = [socket.create_connection((HOST, port), timeout=5) for _ in range(SLOW_CONNECTIONS)]
    half = socket.create_connection((HOST, port), timeout=5)
    idle = socket.create_connection((HOST, port), timeout=5)
    for sock in loris:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    half.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le")
    for sock in (*loris, half, idle):
        sock.setblocking(False)
    start = time.monotonic()
    closed_at: dict[str, float | None] = {"half": None, "idle": None}
    open_loris = set(range(len(loris)))
    ticks = 0
    while time.monotonic() - start < seconds:
        time.sleep(0.25)
        ticks += 1
        for name, sock in (("half", half), ("idle", idle)):
            if closed_at[name] is None and _closed(sock):
                closed_at[name] = time.monotonic() - start
        for i in list(open_loris):
            if _closed(loris[i]) or (ticks % 8 == 0 and not _send(loris[i], b"X-a: b\r\n")):
                open_loris.discard(i)
    for sock in (*loris, half, idle):
        sock.close()
    return {"loris_open": len(open_loris), "half_closed_s": closed_at["half"], "idle_closed_s": closed_at["idle"]}


def _closed(sock: socket.socket) -> bool:
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 408") or data.startswith(b"HTTP/1.1 4")


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.send(data)
        return True
    except BlockingIOError:
        return True
    except OSError:
        return False


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def measure(name: str, argv: list[str], port: int, slow_s: float, log_dir: Path) -> dict[str, Any]:
    child = Child(argv, log_dir, str(port))
    proc = child.proc
    try:
        wait_listening(port, proc)
        time.sleep(0.5)
        row: dict[str, Any] = {"server": name}
        before = tree_hwm(proc.pid)  # a peak: the smaller scenario goes first, or its growth would be hidden
        row["many_status"], row["many_s"] = many_headers(port)
        row["many_rss"] = tree_hwm(proc.pid) - before
        before = tree_hwm(proc.pid)
        row["big_status"], row["big_s"] = big_header(port)
        row["big_rss"] = tree_hwm(proc.pid) - before
        row.update(slow(port, slow_s))
        row["alive"] = proc.poll() is None
        return row
    finally:
        child.stop()


def table(rows: list[dict[str, Any]], slow_s: float) -> str:
    def mib(v: int) -> str:
        return f"{v / MIB:.1f}"

    def secs(v: float | None) -> str:
        return f"{v:.1f} s" if v is not None else f"open after {slow_s:g} s"

    lines = ["| server | 64 MiB header: answer, time, peak RSS added MiB | 100,000 headers: answer, time, peak RSS "
             f"added MiB | slowloris: of {SLOW_CONNECTIONS} still open after {slow_s:g} s | half-sent request "
             "closed after | idle connection closed after |", "|---|---|---|--:|--:|--:|"]
    for r in rows:
        lines.append(f"| {r['server']} | {r['big_status']}, {r['big_s']:.2f} s, {mib(r['big_rss'])} | "
                     f"{r['many_status']}, {r['many_s']:.2f} s, {mib(r['many_rss'])} | {r['loris_open']} | "
                     f"{secs(r['half_closed_s'])} | {secs(r['idle_closed_s'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other-python", help="an interpreter with hypercorn and granian installed")
    parser.add_argument("--slow-s", type=float, default=15.0, help="how long the slow connections are watched")
    parser.add_argument("--out", help="write the table into this README (between the edge_limits markers)")
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="edge-limits-"))
    rows = []
    try:
        for name, command in servers(args.other_python):
            port = free_port()
            print(f"measuring {name} ...", file=sys.stderr)
            rows.append(measure(name, command(port), port, args.slow_s, log_dir))
    finally:
        if not os.environ.get("BENCH_KEEP_LOGS"):
            shutil.rmtree(log_dir, ignore_errors=True)
    load = os.getloadavg()
    text = (f"Command: `python -m bench.edge_limits{' --other-python PY' if args.other_python else ''} "
            f"--slow-s {args.slow_s:g}`  \nMachine: nproc {os.cpu_count()}; Python {platform.python_version()}; "
            f"load average before the run {load[0]:.2f}\n\n" + table(rows, args.slow_s))
    publish(text, args.out, "edge_limits", "## Connection limits (issue #12)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
