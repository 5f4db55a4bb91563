"""What stops a synthesis before its answer is over: the client leaving, or the client's own deadline passing.

An ASGI server does not cancel a handler when its client goes away, so a synthesis would run to the
end on the GPU node and hold its slot for nobody. ``RequestWatch`` reads the connection's
``http.disconnect`` in one small task for the whole request, from the moment the body has been read:
while the request waits for a node (a waiting request leaves the queue, a try in flight closes its
connection to the node and never counts against the endpoint) and while its audio streams (the node's
answer is closed at once). The deadline (``x-request-timeout``) is one timer for the whole response.
Either cancels the handler's task, as ``asyncio.timeout`` does, and ``guard`` turns that cancellation
into ``ClientDisconnected`` or ``DeadlineExceeded``. One task and one timer per request, instead of a
task group per response (Starlette's ``StreamingResponse``), two tasks while dispatching and a timer per
chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import Receive

from ..errors import ClientDisconnected, DeadlineExceeded


class RequestWatch:
    """Watches one request; see the module's docstring."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._owner: asyncio.Task[object] | None = None
        self._over = False
        #: why the owner was cancelled: "left" (the client closed the connection) or "deadline"
        self.stopped: str | None = None

    def __repr__(self) -> str:
        return f"RequestWatch(watching={self._task is not None and not self._over}, stopped={self.stopped!r})"

    def start(self) -> None:
        """Watch from now on (the request's body must have been read: the watcher takes the next messages)."""
        if self._task is None:
            self._owner = asyncio.current_task()
            self._task = asyncio.get_running_loop().create_task(self._watch())

    def expire_in(self, seconds: float) -> None:
        """Stop the response ``seconds`` from now (at once when not positive)."""
        if self._timer is None and not self._over:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, seconds), self._cancel, "deadline")

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        # uvicorn also says http.disconnect once the response is complete: only earlier is it the client leaving
        self._cancel("left")

    def _cancel(self, why: str) -> None:
        if not self._over and self.stopped is None and self._owner is not None:
            self.stopped = why
            self._owner.cancel()

    def stop(self) -> None:
        """The response is over (or about to send its last message): nothing to cancel any more."""
        self._over = True
        if self._task is not None:
            self._task.cancel()
        if self._timer is not None:
            self._timer.cancel()

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Inside, the client leaving raises ``ClientDisconnected`` and the deadline ``DeadlineExceeded`` (the work
        awaited is cancelled); a cancellation from elsewhere (the server stopping) stays one."""
        try:
            yield
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.stopped is None or task is None or task.uncancel() > 0:
                raise
            if self.stopped == "left":
                raise ClientDisconnected("the client closed the connection before the answer was over") from None
            raise DeadlineExceeded("the request deadline passed while the answer was being sent") from None
