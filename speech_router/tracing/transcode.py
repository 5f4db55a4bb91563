"""The transcoder's span: how long the client's format took to make, apart from waiting for the node's audio.

The transcoder interleaves reading the node's audio with encoding it, so its span's length alone says little;
``busy_s`` is the time spent inside the transcoder minus the time it waited for the node (``Clocked``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..types import AudioChunks, aclose_chunks
from . import attrs as a

#: ``Scope.record``: write a span of something already measured
Record = Callable[[str, int, int, dict[str, Any], "str | None"], None]


class Clocked:
    """An async iterator that adds up the time spent waiting for its source (``waited``, ns)."""

    def __init__(self, source: AudioChunks) -> None:
        self.source = source
        self.waited = 0

    def __aiter__(self) -> Clocked:
        return self

    async def __anext__(self) -> bytes:
        start = time.perf_counter_ns()
        try:
            return await anext(self.source)
        finally:
            self.waited += time.perf_counter_ns() - start

    async def aclose(self) -> None:
        await aclose_chunks(self.source)


async def transcoding(record: Record, body: AsyncIterator[bytes], source: Clocked,
                      attributes: dict[str, Any]) -> AsyncIterator[bytes]:
    """``body`` passed on; once it ends, a ``transcode`` span of its time and of the part it worked (``busy_s``:
    not waiting for ``source``), written with ``record``."""
    start, inside, error = time.time_ns(), 0, None
    iterator = aiter(body)
    try:
        while True:
            began = time.perf_counter_ns()
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                break
            except Exception as exc:
                error = type(exc).__name__
                raise
            finally:
                inside += time.perf_counter_ns() - began
            yield chunk
    finally:
        await aclose_chunks(body)
        attributes[a.TRANSCODE_BUSY] = round(max(0, inside - source.waited) / 1e9, 6)
        record("transcode", start, time.time_ns(), attributes, error)
