"""A real Valkey or Redis server for the state store's tests: on a free loopback port, in a temporary directory,
with no persistence; stopped (or killed, and started again on the same port) by the test.

The tests skip, saying why, when neither ``valkey-server`` nor ``redis-server`` is installed (``.ci/run`` installs
Debian's ``redis-server`` when it can).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import free_port, stop

START_TIMEOUT_S = 10.0
BINARIES = ("valkey-server", "redis-server")


def server_binary() -> str | None:
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


class StoreServer:
    """One ``redis-server`` (or ``valkey-server``) process; ``url`` stays the same across ``kill`` and ``start``."""

    def __init__(self, binary: str, directory: Path, password: str | None = None) -> None:
        self.binary = binary
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.directory), "--protected-mode", "no", "--loglevel", "warning"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            assert self.proc.poll() is None, f"{self.binary} exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, f"{self.binary} did not answer in {START_TIMEOUT_S:.0f} s"
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def kill(self) -> None:
        """SIGKILL: what a crashed server does to its clients (connections reset, everything in it lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc)
        self.proc = None


def store_server(tmp: Path, password: str | None = None) -> Iterator[StoreServer]:
    """A started server for a fixture (skipping the test when none is installed); stopped at the end."""
    binary = server_binary()
    if binary is None:
        pytest.skip("no valkey-server or redis-server installed: the state store's tests need one "
                    "(Debian: apt-get install redis-server)")
    server = StoreServer(binary, tmp, password)
    server.start()
    try:
        yield server
    finally:
        server.stop()
