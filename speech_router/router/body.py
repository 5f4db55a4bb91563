"""Reading a node's answer: whole before the client gets a byte (verified), or ahead of the client.

Slots follow the GPU, not the client: an endpoint's slot is given back as soon as the node's answer
is fully received, however slowly the client reads. ``read_head`` reads a verified answer within the
try (so a broken body is retried elsewhere); ``ReadAhead`` streams one while reading it as fast as the
node sends, at most ``READ_AHEAD_BYTES`` ahead of the client (beyond that the node waits for the client),
and reports the outcome the moment the node is done. Either keeps what the client has not read yet in a
``Spool``: a little in memory, the rest in a temporary file, so a slow client costs the router kilobytes of
memory, not its whole answer. Closing either early cancels the node's request (its connection is closed)
and deletes the file.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from ..errors import BackendError, BackendFailed
from ..types import AudioResponse, aclose_chunks
from .outlier import Outcome
from .spool import Spool

#: a verified body is read whole before the client gets a byte, up to this size (then it streams)
MAX_VERIFIED_BYTES = 64 * 1024 * 1024
#: how much of a streamed answer is read ahead of a slow client (spooled: memory holds ``SPOOL_MEMORY_BYTES``)
READ_AHEAD_BYTES = 64 * 1024 * 1024

OnDone = Callable[[Outcome, "BackendError | None"], None]


async def read_head(response: AudioResponse, endpoint: str, *, whole: bool) -> tuple[Spool, bool]:
    """The first chunk, or (``whole``) every chunk up to ``MAX_VERIFIED_BYTES``; and whether that was all."""
    head = Spool()
    complete = False
    try:
        iterator = aiter(response.chunks)
        while True:
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                complete = True
                break
            head.write(chunk)
            if not whole or head.size > MAX_VERIFIED_BYTES:
                break
    except BaseException:
        head.close()
        await close_quietly(response)
        raise
    if not head.size:
        await close_quietly(response)
        raise BackendFailed(f"endpoint {endpoint} sent an empty body", endpoint=endpoint)
    if complete:
        await close_quietly(response)
    return head, complete


async def close_quietly(response: AudioResponse) -> None:
    with contextlib.suppress(Exception):
        await aclose_chunks(response.chunks)
    with contextlib.suppress(Exception):
        await response.aclose()


async def replay(spool: Spool) -> AsyncIterator[bytes]:
    """A whole answer from its spool, which is deleted at the end or when the client leaves."""
    try:
        while chunk := spool.read():
            yield chunk
    finally:
        spool.close()


class ReadAhead:
    """The rest of a node's answer, read by a task of its own; iterate it like the original chunks."""

    def __init__(self, head: Spool, response: AudioResponse, on_done: OnDone,
                 limit: int = READ_AHEAD_BYTES) -> None:
        self._spool = head
        self._response = response
        self._on_done = on_done
        self._limit = limit
        self._arrived = asyncio.Event()
        self._drained = asyncio.Event()
        self._error: BackendError | None = None
        self._finished = False
        self._started = False
        self._task = asyncio.create_task(self._pump())

    def __repr__(self) -> str:
        return f"ReadAhead({self._spool!r}, finished={self._finished})"

    async def _pump(self) -> None:
        outcome = Outcome.CANCELLED
        self._started = True
        try:
            async for chunk in self._response.chunks:
                self._spool.write(chunk)
                self._arrived.set()
                while self._spool.size > self._limit:  # the client is far behind: let the node wait for it
                    self._drained.clear()
                    await self._drained.wait()
            outcome = Outcome.OK
        except BackendError as exc:
            self._error, outcome = exc, Outcome.ERROR
        finally:
            self._finished = True
            self._arrived.set()
            await close_quietly(self._response)
            self._on_done(outcome, self._error)

    def __aiter__(self) -> ReadAhead:
        return self

    async def __anext__(self) -> bytes:
        while not self._spool.size:
            if self._finished:
                self._spool.close()
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._arrived.clear()
            await self._arrived.wait()
        chunk = self._spool.read()
        self._drained.set()
        return chunk

    async def aclose(self) -> None:
        """Stop reading: the node's request is cancelled (its connection closed) if it was still running."""
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        self._spool.close()
        if not self._started:  # cancelled before its first step: its cleanup never ran
            self._finished = True
            await close_quietly(self._response)
            self._on_done(Outcome.CANCELLED, None)
