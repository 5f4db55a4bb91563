"""The cache as the request path uses it: whole answers and the segments of long texts, counted and checked.

Per-model opt-in (``models.<name>.cache``): IndexTTS2 samples, so the same text sounds a little
different each time and some users want that. A whole answer is stored in the format it was sent in
(before SSE framing), only when it was sent completely (``tee``); a segment is stored as decoded PCM,
so a long text that repeats known sentences reuses them whatever format it asks for, and so do realtime
streams and long jobs, which cut text into the same segments. Only audio that passes the checks a node's
answer passes is kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable

from .. import tracing
from ..audio.validate import InvalidAudio, check_audio
from ..config.models import Settings
from ..metrics import Metrics
from ..types import AudioChunks, SynthesisRequest, aclose_chunks
from .entry import CachedAudio
from .key import cache_key
from .store import AudioCache

log = logging.getLogger(__name__)


class SpeechCache:
    """Looks answers and segments up and stores them; counts ``cache_lookups`` per model, kind and result."""

    def __init__(self, store: AudioCache, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self._writes: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"SpeechCache({self.store!r})"

    def enabled(self, settings: Settings, sreq: SynthesisRequest) -> bool:
        model = settings.models.get(sreq.model)
        return model is not None and model.cache.enabled

    def segments_enabled(self, settings: Settings, sreq: SynthesisRequest) -> bool:
        model = settings.models.get(sreq.model)
        return model is not None and model.cache.enabled and model.cache.segments

    def response_key(self, settings: Settings, sreq: SynthesisRequest, fmt: str, sample_rate: int | None) -> str:
        # the fan-out settings change the joined audio (silences, cut points): a changed config must miss
        fanout = settings.models[sreq.model].fanout.model_dump(mode="json")
        return cache_key(sreq, kind="response", fmt=fmt, sample_rate=sample_rate, extra={"fanout": fanout})

    async def lookup(self, model: str, kind: str, key: str) -> CachedAudio | None:
        trace = tracing.current()
        start = time.time_ns() if trace is not None else 0
        entry = await self.store.get(key)
        self.metrics.cache_lookups.labels(model, kind, "hit" if entry is not None else "miss").inc()
        if trace is not None:
            trace.cache_lookup(kind, entry is not None, start)
        return entry

    # -- segments -------------------------------------------------------------------------------------------

    async def segment(self, sreq: SynthesisRequest, text: str) -> tuple[bytes, int] | None:
        """A known segment of ``sreq`` as (mono int16 PCM, sample rate), or None."""
        entry = await self.lookup(sreq.model, "segment", self._segment_key(sreq, text))
        if entry is None or not entry.sample_rate:
            return None
        return entry.data, entry.sample_rate

    def keep_segment(self, sreq: SynthesisRequest, text: str, pcm: bytes, sample_rate: int) -> None:
        """Store a synthesized segment (mono int16 PCM) for the next text that has it."""
        if not sample_rate:
            return
        entry = CachedAudio(pcm, "audio/pcm", "pcm", sample_rate, seconds=len(pcm) / 2 / sample_rate)
        if _valid(entry, len(text)):
            self.store_later(self._segment_key(sreq, text), entry)

    @staticmethod
    def _segment_key(sreq: SynthesisRequest, text: str) -> str:
        return cache_key(dataclasses.replace(sreq, text=text), kind="segment", fmt="pcm", sample_rate=None)

    # -- whole answers --------------------------------------------------------------------------------------

    def tee(self, body: AsyncIterator[bytes], key: str, make_entry: Callable[[bytes], CachedAudio | None],
            chars: int = 0) -> AsyncIterator[bytes]:
        """Pass ``body`` through; once it ended normally, store what went out if it is valid audio for a text of
        ``chars`` characters (a cut-short, empty or broken body is never stored)."""

        async def teed() -> AsyncIterator[bytes]:
            parts: list[bytes] | None = []
            size, limit = 0, self.store.config.max_entry_bytes
            try:
                async for chunk in body:
                    if parts is not None:
                        size += len(chunk)
                        parts = None if size > limit else parts  # too big to cache: stop collecting
                        if parts is not None:
                            parts.append(chunk)
                    yield chunk
            finally:
                await _aclose(body)
            if parts is not None and (entry := make_entry(b"".join(parts))) is not None and _valid(entry, chars):
                self.store_later(key, entry)

        return teed()

    def store_later(self, key: str, entry: CachedAudio) -> None:
        """Store without holding up the response (a disk write may take a while)."""
        task = asyncio.create_task(self._store(key, entry))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _store(self, key: str, entry: CachedAudio) -> None:
        try:
            await self.store.put(key, entry)
        except Exception:  # noqa: BLE001 - the cache never fails a request
            log.exception("storing a cache entry failed")

    async def aclose(self) -> None:
        """Let pending writes finish, then release the store."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        self.store.close()


def _valid(entry: CachedAudio, chars: int) -> bool:
    """Only audio that passes the checks a node's answer passes is kept (an empty answer never is)."""
    try:
        check_audio(entry.data, entry.format, chars)
    except InvalidAudio as exc:
        log.warning("not caching a %s answer: %s", entry.format, exc)
        return False
    return True


async def _aclose(body: AudioChunks) -> None:
    try:
        await aclose_chunks(body)
    except Exception:  # noqa: BLE001
        pass
