"""``Periodic``: one piece of sharing work run every so many seconds in the background, never ended by its errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("speech_router.state")


class Periodic:
    """Runs ``work`` every ``interval`` seconds (after the first interval) until ``aclose``; a failure is logged
    (``what`` failed) and the next round runs as usual."""

    def __init__(self, name: str, interval: float, work: Callable[[], Awaitable[object]], what: str) -> None:
        self.name = name
        self.interval = interval
        self.work = work
        self.what = what
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Periodic(name={self.name!r}, interval={self.interval:g})"

    def start(self) -> None:
        self._task = asyncio.create_task(self._every_interval(), name=self.name)

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.work()
            except Exception:  # noqa: BLE001 - a bug here must not end the sharing silently
                log.exception("%s failed", self.what)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
