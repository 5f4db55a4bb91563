"""Helpers for tests that run `speech-router` as a real process: a free loopback port, stopping it, and a whole
router process for a config (``start_router``) with its log, its address and its memory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 30.0


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it is still there after 10 s; always reaped."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass
class RouterProcess:
    """`speech-router serve` started by ``start_router``: its process, port and log file."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def addr(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        """The process's resident memory, in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def status(self, path: str) -> int:
        """GET ``path``: its status, or 0 when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            with exc:
                return int(exc.code)
        except (urllib.error.URLError, ConnectionError):
            return 0


@contextmanager
def router_process(config: dict[str, Any], tmp: Path, env: dict[str, str] | None = None) -> Iterator[RouterProcess]:
    """`speech-router serve` for ``config`` (its ``server.port`` set here) on 127.0.0.1, its output in
    ``tmp/router.log``; yields once ``/readyz`` answers 200, stops it at the end."""
    port = free_port()
    config = {**config, "server": {"host": "127.0.0.1", "log_format": "json", "watch_config": False,
                                   **config.get("server", {}), "port": port}}
    path = tmp / "router.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    log = tmp / "router.log"
    environ = {**os.environ, **(env or {})}
    environ.pop("SPEECH_ROUTER_CONFIG", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "speech_router.cli", "serve", "--config", str(path)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=environ)
    handle = RouterProcess(proc, port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while handle.status("/readyz") != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield handle
    finally:
        stop(proc)
