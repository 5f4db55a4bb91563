"""Child processes for benchmarks: an emulated node fleet and a router, on 127.0.0.1 only, always stopped.

Each child writes its output to a temporary log file (a pipe nobody reads would fill up and block the
child); on a failed start the log's tail goes into the error message.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_NODE_LINE = re.compile(rb"^\S+ \(\w+\): http://127\.0\.0\.1:(\d+)$", re.MULTILINE)


class Child:
    """One started process: `.argv`, `.log` (its stdout and stderr), `.stop()` (idempotent)."""

    def __init__(self, argv: Sequence[str], log_dir: Path, name: str, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        """``env``: variables added to this process's environment; ``cwd``: where it runs (default the repository)."""
        self.argv = list(argv)
        self.name = name
        self.log = log_dir / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.argv, cwd=cwd or REPO, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env={**os.environ, **env} if env else None)

    def __repr__(self) -> str:
        return f"Child(name={self.name!r}, pid={self.proc.pid}, running={self.proc.poll() is None})"

    def tail(self, size: int = 4000) -> str:
        return self.log.read_bytes()[-size:].decode("utf-8", "replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}:\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM (both children shut down cleanly on it), then SIGKILL if it does not exit in time."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the router needs one before it starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def router_command() -> list[str]:
    """`speech-router` from the running interpreter's environment, or the same CLI through -m."""
    script = Path(sys.executable).with_name("speech-router")
    if script.exists():
        return [str(script)]
    found = shutil.which("speech-router")
    return [found] if found else [sys.executable, "-m", "speech_router.cli"]


def start_node(log_dir: Path, extra: Sequence[str] = ()) -> tuple[Child, int]:
    """One emulated index-tts-vllm v2 node on a free port; returns it once it has printed its URL."""
    argv = [sys.executable, "-m", "speech_router.emulator", "--api", "v2", "--host", HOST, "--port", "0", "--nodes", "1",
            *extra]
    child = Child(argv, log_dir, "node")
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        match = _NODE_LINE.search(child.log.read_bytes())
        if match:
            return child, int(match.group(1))
        child.check_alive()
        time.sleep(0.05)
    child.stop()
    raise RuntimeError(f"the emulated node did not start in {START_TIMEOUT_S:.0f} s:\n{child.tail()}")


def start_router(config_yaml: str, port: int, log_dir: Path, *, name: str = "router",
                 ready: Sequence[str] = ("/readyz",), command: Sequence[str] | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> Child:
    """`speech-router serve --config <file> --port <port>`; returns once every path in `ready` answers 200.

    ``command``, ``env`` and ``cwd`` run another copy of the router (an older commit, `bench._previous`)."""
    config = log_dir / f"{name}.yaml"
    config.write_text(config_yaml, encoding="utf-8")
    child = Child([*(command or router_command()), "serve", "--config", str(config), "--host", HOST,
                   "--port", str(port)], log_dir, name, env=env, cwd=cwd)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        child.check_alive()
        if all(http_status(port, path) == 200 for path in ready):
            return child
        time.sleep(0.1)
    child.stop()
    raise RuntimeError(f"the router did not become ready in {START_TIMEOUT_S:.0f} s:\n{child.tail()}")


def http_status(port: int, path: str) -> int | None:
    """GET http://127.0.0.1:<port><path>: the status, or None when nothing answers."""
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, for benchmark reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


@contextlib.contextmanager
def stopped_on_exit() -> Iterator[tuple[list[Child], Path]]:
    """A list to append children to and a log directory; children are stopped however the block ends.

    SIGTERM is turned into SystemExit for the duration, so `kill <bench pid>` also cleans up, and SIGINT
    raises KeyboardInterrupt even where the shell started us with SIGINT ignored (a background job).
    """
    children: list[Child] = []
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    keep_logs = os.environ.get("BENCH_KEEP_LOGS") == "1"
    log_dir = Path(tempfile.mkdtemp(prefix="speech-router-bench-"))
    try:
        yield children, log_dir
    except (KeyboardInterrupt, SystemExit):
        print(f"interrupted; stopping {len(children)} child process(es)", file=sys.stderr)
        raise
    finally:
        for child in reversed(children):
            child.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        if keep_logs:
            print(f"logs kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
