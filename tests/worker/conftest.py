"""Fixtures for the local IndexTTS2 engine: a stand-in ``indextts`` package, workers, backends.

Every worker process a test starts is stopped in a ``finally`` (SIGTERM to its process group, then
SIGKILL); backends are closed the same way, which stops theirs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from speech_router.backends import indextts2_local
from speech_router.backends.base import BackendContext
from speech_router.backends.http import HttpSessions
from speech_router.config.models import PoolConfig
from speech_router.plugins.manager import create_plugin_manager
from speech_router.worker import LISTENING, LOAD_FAILED, MARKER, READY

STANDIN = Path(__file__).parent / "standin"
STOP_TIMEOUT_S = 5.0
WAIT_S = 20.0  # upper bound for anything a test waits on; never an expectation of speed
FAST = {"hang_timeout": 1.0, "startup_timeout": 20.0, "restart_backoff": {"initial": 0.05, "max": 0.2},
        "stop_timeout": 3.0}


def plugin_manager() -> Any:
    """Built-ins plus ``indextts2-local`` (registered here until it is a default plugin)."""
    pm = create_plugin_manager(load_entrypoints=False)
    if not pm.is_registered(indextts2_local):
        pm.register(indextts2_local, name="speech_router.backends.indextts2_local")
    return pm


def write_voice(path: Path, seconds: float = 0.2) -> str:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(22050)
        out.writeframes(np.zeros(int(22050 * seconds), dtype="<i2").tobytes())
    return str(path)


class Host:
    """What a GPU host would have, made up in tmp_path: checkpoints, voices, the stand-in's knobs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.model_dir = root / "checkpoints"
        self.model_dir.mkdir()
        (self.model_dir / "config.yaml").write_text("version: 2.0\n")
        self.alloy = write_voice(root / "alloy.wav")
        self.calm = write_voice(root / "calm.wav")
        self.log = root / "standin.jsonl"
        self.gate = root / "gate"
        self.env = {"PYTHONPATH": str(STANDIN), "STANDIN_LOG": str(self.log), "STANDIN_GATE": str(self.gate)}

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in rows if event is None or r["event"] == event]

    def infer_calls(self, text: str) -> list[dict[str, Any]]:
        return [r for r in self.events("infer") if r["text"] == text]

    def open_gate(self) -> None:
        self.gate.touch()


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers; always reaps."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT_S)


def process_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie nobody reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return state in ("Z", "X")


class StandaloneWorker:
    """``python -m speech_router.worker indextts2 ...`` as an operator would run it on a GPU host."""

    def __init__(self, host: Host, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "speech_router.worker", "indextts2", "--model-dir", str(host.model_dir),
               "--device", "cpu", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **host.env, **(env or {})}, start_new_session=True)
        self.lines: list[str] = []
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            if line.startswith(MARKER + LISTENING):
                self.url = line[len(MARKER + LISTENING):]

    def wait_listening(self) -> str:
        return wait_until(lambda: self.url or (self.proc.poll() is not None and self._died()), "the worker to listen")

    def wait_loaded(self) -> bool:
        """True once ready, False once loading failed."""
        wait_until(lambda: any(line.startswith((MARKER + READY, MARKER + LOAD_FAILED)) for line in self.lines)
                   or (self.proc.poll() is not None and self._died()), "the worker to load")
        return any(line.startswith(MARKER + READY) for line in self.lines)

    def _died(self) -> bool:
        raise AssertionError("the worker exited:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        stop_process(self.proc)
        self._reader.join(STOP_TIMEOUT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def standalone() -> Iterator[Callable[..., StandaloneWorker]]:
    """Factory: ``standalone(host, "--max-queue", "1")`` starts a worker and waits until it listens."""
    started: list[StandaloneWorker] = []

    def start(host: Host, *args: str, env: dict[str, str] | None = None) -> StandaloneWorker:
        worker = StandaloneWorker(host, *args, env=env)
        started.append(worker)
        worker.wait_listening()
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


def pool_config(host: Host, **options: Any) -> dict[str, Any]:
    """A pool dict for an ``indextts2-local`` pool running the stand-in on ``cpu``."""
    env = {**host.env, **options.pop("env", {})}
    return {"type": "indextts2-local", "model_dir": str(host.model_dir), "devices": ["cpu"], "env": env,
            "warmup_text": "Warm up.", **FAST, **options}


@contextlib.asynccontextmanager
async def local_backend(host: Host, pool_name: str = "local", **options: Any
                        ) -> AsyncIterator[indextts2_local.IndexTts2LocalBackend]:
    """An opened backend for the first device of a pool; closed (worker stopped) on the way out."""
    raw = pool_config(host, **options)
    pool = PoolConfig.model_validate(raw)  # backend options land in its extra keys, as the loader leaves them
    cls = indextts2_local.IndexTts2LocalBackend
    opts = cls.Options.model_validate(pool.options)
    endpoint, ep_options = cls.expand_endpoints(pool_name, pool, opts)[0]
    sessions = HttpSessions()
    backend = cls(endpoint, ep_options, BackendContext(pool_name=pool_name, pool=pool, sessions=sessions))
    try:
        await backend.open()
        yield backend
    finally:
        try:
            await backend.aclose()
        finally:
            await sessions.aclose()
