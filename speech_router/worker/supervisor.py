"""Supervise one worker process from the router: start it, watch it, restart it, stop it.

Runs in the router process and imports nothing heavy. The worker is started in its own session
(so its process group can be signalled as a whole, and a terminal's Ctrl+C reaches only the
router); it dies with the router (it sets PR_SET_PDEATHSIG and watches its parent's pid).

States: ``starting`` (spawned, no port yet) -> ``loading`` (listening, model loading) -> ``ready``;
on an exit, a load failure, a startup past ``startup_timeout`` or a hang, ``backoff`` and then a
restart, waiting ``initial`` seconds and doubling up to ``max`` while restarts keep failing (a
worker that got ready starts again from ``initial``); ``closed`` after ``aclose()``.

A hang: a synthesis is in flight (``begin()``) but no request has made progress (``progress()``,
any bytes) for ``hang_timeout`` seconds. The worker is killed, and requests that were in flight
can tell from their ``Ticket.hung``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import LISTENING, LOAD_FAILED, MARKER, READY

log = logging.getLogger(__name__)

TAIL_LINES = 40  # output lines kept for health reports
READ_CHUNK = 64 * 1024
MAX_LINE = 8 * 1024
READER_GRACE_S = 1.0  # after the process exits, for output still in the pipe
_LINE_END = re.compile(rb"[\r\n]")


@dataclass
class WorkerSpec:
    """How to run and watch one worker."""

    argv: list[str]
    env: dict[str, str] | None = None
    cwd: str | None = None
    startup_timeout: float = 600.0
    hang_timeout: float = 120.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    stop_timeout: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)


class Ticket:
    """One synthesis in flight on the worker, for hang detection. ``end()`` may be called more than once."""

    def __init__(self, supervisor: Supervisor, generation: int) -> None:
        self.supervisor = supervisor
        self.generation = generation
        self.done = False

    def progress(self) -> None:
        self.supervisor.last_progress = self.supervisor.clock()

    def end(self) -> None:
        if not self.done:
            self.done = True
            self.supervisor.inflight -= 1
            self.progress()

    @property
    def hung(self) -> bool:
        """Whether the worker serving this request was killed for a hang."""
        return self.generation in self.supervisor.hung_generations


class Supervisor:
    """One worker process and its restarts."""

    def __init__(self, name: str, spec: WorkerSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.spec = spec
        self.clock = clock
        self.state = "stopped"
        self._detail = "not started"
        self._since = clock()
        self.url: str | None = None
        self.pid: int | None = None
        self.generation = 0  # one per process started
        self.restarts = 0
        self.hung_generations: set[int] = set()
        self.last_exit: str | None = None
        self.load_error: str | None = None
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.inflight = 0
        self.last_progress = clock()
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready_once = False
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._changed = asyncio.Event()
        self._out = logging.getLogger(f"speech_router.worker.{name}")

    def __repr__(self) -> str:
        return f"Supervisor(name={self.name!r}, state={self.state!r}, pid={self.pid!r}, restarts={self.restarts})"

    @property
    def detail(self) -> str:
        if self.state in ("starting", "loading"):
            return f"{self._detail} ({self.clock() - self._since:.0f}s)"
        return self._detail

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def describe(self) -> dict[str, Any]:
        return {"state": self.state, "detail": self.detail, "pid": self.pid, "url": self.url,
                "restarts": self.restarts, "last_exit": self.last_exit, "load_error": self.load_error,
                "inflight": self.inflight, "output_tail": list(self.tail)[-10:]}

    def _set(self, state: str, detail: str) -> None:
        if state != self.state:
            level = logging.WARNING if state == "backoff" else logging.INFO
            log.log(level, "worker %s: %s: %s", self.name, state, detail)
        self.state, self._detail, self._since = state, detail, self.clock()
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[Supervisor], bool], timeout: float) -> None:
        """Wait until ``predicate(self)`` holds after a state change (tests, and tools); TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                await self._changed.wait()

    # -- requests -------------------------------------------------------------------------------------------

    def begin(self) -> Ticket:
        """A synthesis starts on the current worker; the hang clock runs while any is in flight."""
        if self.inflight == 0:
            self.last_progress = self.clock()
        self.inflight += 1
        return Ticket(self, self.generation)

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._set("starting", "starting the worker")
            self._task = asyncio.create_task(self._run(), name=f"supervisor:{self.name}")

    async def aclose(self) -> None:
        """Stop the worker (SIGTERM, then SIGKILL after ``stop_timeout``) and the supervision. Never raises."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        proc, reader = self._proc, self._reader
        if proc is not None and proc.returncode is None:
            await self._terminate(proc)
        if reader is not None:
            await self._drain(reader)
        self._proc = self._reader = None
        self._set("closed", "closed")

    async def _run(self) -> None:
        delay = self.spec.backoff_initial
        while not self._closing:
            reason, got_ready = await self._one_life()
            if self._closing:
                return
            if got_ready:
                delay = self.spec.backoff_initial
            self.restarts += 1
            self._set("backoff", f"{reason}; restart {self.restarts} in {delay:g}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.spec.backoff_max)

    async def _one_life(self) -> tuple[str, bool]:
        """Start the worker and watch it until it must be restarted; returns why, and whether it got ready."""
        self.generation += 1
        self.url = self.load_error = None
        self._ready_once = False
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.spec.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=self.spec.env, cwd=self.spec.cwd, start_new_session=True)
        except OSError as exc:
            self.last_exit = f"cannot start the worker ({self.spec.argv[0]}): {exc}"
            return self.last_exit, False
        self._proc, self.pid = proc, proc.pid
        self._set("starting", f"starting the worker (pid {proc.pid})")
        assert proc.stdout is not None
        reader = asyncio.create_task(self._read(proc.stdout))
        waiter = asyncio.create_task(proc.wait())
        started = self.clock()
        try:
            while True:
                await asyncio.wait({waiter}, timeout=self._tick())
                if waiter.done():
                    self._set("backoff", f"the worker exited (status {proc.returncode})")
                    await self._drain(reader)  # its last words explain the exit
                    self.last_exit = self._exit_reason(proc.returncode)
                    return self.last_exit, self._ready_once
                now = self.clock()
                if self.state in ("starting", "loading") and now - started > self.spec.startup_timeout:
                    self.last_exit = f"the worker did not get ready within {self.spec.startup_timeout:g}s"
                    await self._kill(proc)
                    return self.last_exit, False
                if self.ready and self.inflight > 0 and now - self.last_progress > self.spec.hang_timeout:
                    self.last_exit = (f"a synthesis made no progress for {self.spec.hang_timeout:g}s; "
                                      f"the worker (pid {proc.pid}) was killed")
                    self.hung_generations.add(self.generation)
                    self._set("backoff", self.last_exit)
                    await self._kill(proc)
                    return self.last_exit, True
        finally:
            if not waiter.done():
                waiter.cancel()
            if proc.returncode is None:  # aclose() cancelled us: it stops the process and the reader
                self._reader = reader
            else:
                await self._drain(reader)
                self._proc = None

    @staticmethod
    async def _drain(reader: asyncio.Task[None]) -> None:
        """Let the reader take what is left in the pipe, for a short while; then stop it."""
        try:
            await asyncio.wait({reader}, timeout=READER_GRACE_S)  # a cancel of the caller still propagates
        finally:
            reader.cancel()

    def _tick(self) -> float:
        return max(0.02, min(0.5, self.spec.hang_timeout / 4, self.spec.startup_timeout / 4))

    def _exit_reason(self, code: int | None) -> str:
        if self.load_error:
            return f"loading failed: {self.load_error}"
        what = f"exited with status {code}"
        if code is not None and code < 0:
            try:
                what = f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                what = f"was killed by signal {-code}"
        last = next((line for line in reversed(self.tail) if line.strip() and MARKER not in line), "")
        return f"the worker {what}" + (f" (last output: {last[-300:]})" if last and code != 0 else "")

    # -- output ---------------------------------------------------------------------------------------------

    async def _read(self, stream: asyncio.StreamReader) -> None:
        buf = b""
        while True:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                break
            *lines, buf = _LINE_END.split(buf + chunk)
            if len(buf) > MAX_LINE:
                lines.append(buf)
                buf = b""
            for raw in lines:
                self._line(raw.decode("utf-8", "replace"))
        if buf:
            self._line(buf.decode("utf-8", "replace"))

    def _line(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        self.tail.append(line)
        at = line.find(MARKER)
        if at < 0:
            noisy = any(f" {level} " in line for level in ("WARNING", "ERROR", "CRITICAL")) or "Traceback" in line
            self._out.log(logging.WARNING if noisy else logging.DEBUG, "%s", line)
            return
        self._out.info("%s", line)
        message = line[at + len(MARKER):]
        if message.startswith(LISTENING):
            self.url = message[len(LISTENING):].strip()
            self._set("loading", f"loading the model (pid {self.pid}, {self.url})")
        elif message.startswith(READY):
            self._ready_once = True
            self.last_progress = self.clock()
            self._set("ready", message)
        elif message.startswith(LOAD_FAILED):
            self.load_error = message[len(LOAD_FAILED):].strip()
            self._set("failed", f"loading failed: {self.load_error}")

    # -- signals --------------------------------------------------------------------------------------------

    @staticmethod
    def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, sig)  # the worker and anything it started (torch.compile's helpers)
            else:
                proc.send_signal(sig)

    async def _kill(self, proc: asyncio.subprocess.Process) -> None:
        self._signal(proc, getattr(signal, "SIGKILL", signal.SIGTERM))
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        self._signal(proc, signal.SIGTERM)
        try:
            async with asyncio.timeout(self.spec.stop_timeout):  # not wait_for (router/health.py)
                await proc.wait()
        except TimeoutError:
            log.warning("worker %s (pid %s) did not stop within %gs; killing it", self.name, proc.pid,
                        self.spec.stop_timeout)
            await self._kill(proc)
