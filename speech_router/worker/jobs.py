"""One engine, one request at a time: the FIFO ``Slot`` and the ``Job`` that runs on the engine thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from typing import Any

from .engine import IndexTts2Engine, empty_cache, is_oom

DONE = object()  # the job's last item when it succeeded


class Slot:
    """The engine, held by one request at a time; the others wait in arrival order."""

    def __init__(self) -> None:
        self.busy = False
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def enter(self) -> None:
        if not self.busy and not self.waiters:
            self.busy = True
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut  # leave() hands the slot over by resolving it
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.leave()  # it was handed to us as we gave up: pass it on
            else:
                self.waiters.remove(fut)
            raise

    def leave(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.busy = False


class Job:
    """One synthesis: run on the engine thread, read on the loop through ``queue``."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.progress_at = time.monotonic()

    def cancel(self) -> None:
        self.cancelled.set()

    def _put(self, item: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def run(self, engine: IndexTts2Engine) -> None:
        """On the engine thread. Never raises: the outcome goes to the queue."""
        if self.cancelled.is_set():  # the client left while it waited
            self._put(DONE)
            return
        try:
            for pcm in engine.stream(self.kwargs):
                self.progress_at = time.monotonic()
                if self.cancelled.is_set():
                    break  # the client left: stop at this segment (stream() closes the generator)
                self._put(pcm)
            self._put(DONE)
        except BaseException as exc:  # noqa: BLE001 - every failure is the request's answer
            if is_oom(exc):
                empty_cache()
            self._put(exc)
