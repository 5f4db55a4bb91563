"""What a running emulated server knows: its knobs, the requests it got, and how busy it is.

Knobs are read on every request, so a test may flip them on a live server from its own thread.
The asyncio parts (stop signal, slot gate) are rebuilt on each start, because a restarted server runs
on a fresh event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

from starlette.requests import Request


@dataclass(kw_only=True)
class Knobs:
    """Behaviour shared by every emulated server; subclasses add their protocol's own knobs."""

    name: str = "node"  # echoed in the `x-emulator-node` response header
    hang: bool = False  # synthesis is accepted and not answered while on (off: they go on, as a node that recovers)
    hang_health: bool = False  # health/model listings never answer either: a frozen process
    fail: bool = False  # synthesis fails like the real server does under CUDA OOM
    fail_text: str | None = None  # synthesis fails like `fail`, only for texts that contain this
    delay_s: float = 0.0  # fixed synthesis latency
    delay_per_char_s: float = 0.0  # extra latency per character of text
    slowdown: float = 1.0  # latency multiplier: a GPU shared with another job (flip it at runtime)
    abort_on_disconnect: bool = False  # stop synthesizing when the client leaves (index-tts-vllm does not)
    slots: int | None = None  # concurrent syntheses; the rest queue, like the GPU stage
    truncate: bool = False  # audio is cut short and the connection closed
    garbage: bool = False  # 200 with an audio content-type, but an HTML body

    def fails(self, text: str) -> bool:
        """Whether synthesizing `text` fails (`fail`, or `fail_text` found in it)."""
        return self.fail or (self.fail_text is not None and self.fail_text in text)

    def latency_s(self, text: str) -> float:
        """Synthesis time for `text`: fixed part plus a part that grows with its length."""
        return (self.delay_s + self.delay_per_char_s * len(text)) * self.slowdown

    def update(self, changes: dict[str, Any]) -> None:
        """Apply JSON-ish changes (the control endpoint); unknown names raise KeyError."""
        types = {f.name: str(f.type) for f in fields(self)}
        unknown = set(changes) - set(types)
        if unknown:
            raise KeyError(f"unknown knobs: {sorted(unknown)}")
        for key, value in changes.items():
            if isinstance(value, list) and types[key].startswith("set["):
                value = set(value)
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe view (sets become sorted lists)."""
        return {k: sorted(v) if isinstance(v, set) else v for k, v in asdict(self).items()}


#: how often a hung request looks whether the node has recovered
HANG_POLL_S = 0.05


class NodeStopped(Exception):
    """Raised inside a request when its server stops under it; the connection is already gone."""


class EmulatorState:
    """Request log, counters, slot gate and stop signal; lives at `app.state.emulator`."""

    def __init__(self, knobs: Knobs) -> None:
        self.config = knobs
        self.requests: list[tuple[str, Any]] = []  # (path, parsed JSON body, or the raw text if not JSON)
        self.headers: list[dict[str, str]] = []  # request headers, aligned with `requests`
        self._in_flight = 0
        #: the most synthesis requests it had at once since the last reset
        self.peak = 0
        self.served = 0  # synthesis requests answered with audio
        self.disconnected = 0  # synthesis requests whose client closed the connection before the answer
        self._stopped: asyncio.Event | None = None
        self._gate: asyncio.Condition | None = None
        self._busy = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"EmulatorState(name={self.config.name!r}, in_flight={self.in_flight}, served={self.served})"

    @property
    def in_flight(self) -> int:
        """Synthesis requests being handled now."""
        return self._in_flight

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        self._in_flight = value
        self.peak = max(self.peak, value)

    @property
    def busy(self) -> int:
        """Slots held now: syntheses past the queue (`in_flight - busy` are waiting or hung)."""
        return self._busy

    def open(self) -> None:
        """Fresh asyncio primitives for the running loop; called at server start."""
        self._stopped = asyncio.Event()
        self._gate = asyncio.Condition()
        self._busy = 0

    def release(self) -> None:
        """Wake every waiting request so the server can stop; call on the server's loop."""
        if self._stopped is None:
            return
        self._stopped.set()
        task = asyncio.get_running_loop().create_task(self._wake_all())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def reset(self) -> None:
        """Forget logged requests and counters (not in-flight ones), e.g. between tests."""
        self.requests.clear()
        self.headers.clear()
        self.served = 0
        self.peak = self.in_flight

    def snapshot(self) -> dict[str, Any]:
        """State for `GET /_emulator/state`."""
        return {
            "config": self.config.as_dict(),
            "in_flight": self.in_flight,
            "peak": self.peak,
            "served": self.served,
            "disconnected": self.disconnected,
            "requests": len(self.requests),
        }

    async def record(self, request: Request) -> None:
        """Log the body as sent, so tests can assert exactly what a client (the router) forwarded."""
        raw = await request.body()
        body: Any
        try:
            body = await request.json()
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.requests.append((request.url.path, body))
        self.headers.append(dict(request.headers))

    async def pause(self, seconds: float | None) -> None:
        """Sleep `seconds` (None: forever); raise NodeStopped if the server stops meanwhile."""
        stopped = self._ensure_open()[0]
        if seconds is not None and seconds <= 0:
            if stopped.is_set():
                raise NodeStopped
            return
        try:
            async with asyncio.timeout(seconds):  # not wait_for: on 3.11 it can lose a cancel (router/health.py)
                await stopped.wait()
        except TimeoutError:
            return
        raise NodeStopped

    async def hung(self) -> None:
        """While the ``hang`` knob is on, wait (a node that froze); go on once it is switched off, as a node that
        recovers finishes what it had; raise NodeStopped if the server stops meanwhile."""
        while self.config.hang:
            await self.pause(HANG_POLL_S)

    async def until_disconnected(self, request: Request) -> None:
        """Return when the client closes the connection (counted in ``disconnected``)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self.disconnected += 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of `config.slots`; a changed limit takes effect as slots free up."""
        stopped, gate = self._ensure_open()

        def free() -> bool:
            limit = self.config.slots
            return stopped.is_set() or limit is None or self._busy < limit

        async with gate:
            await gate.wait_for(free)
        if stopped.is_set():
            raise NodeStopped
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            async with gate:
                gate.notify_all()

    def _ensure_open(self) -> tuple[asyncio.Event, asyncio.Condition]:
        # Servers started without a lifespan (a bare TestClient) open lazily.
        if self._stopped is None or self._gate is None:
            self.open()
        assert self._stopped is not None and self._gate is not None
        return self._stopped, self._gate

    async def _wake_all(self) -> None:
        if self._gate is not None:
            async with self._gate:
                self._gate.notify_all()
