"""Long text: synthesize the segments across the fleet at once, play them in order.

One GPU node works through a long text one segment after another; the router sees every node, so it
sends each segment as its own sub-request through ``Router.synthesize``: segments are ordinary requests
of the scheduler and the attempt loop (routing, retries, fallback, a broken body dispatched again all
apply, with the request's one deadline), spread over the fleet rather than gathered by voice affinity.
Known segments come from the cache when the model opts in (``SpeechCache``), new ones are kept there.
It streams segment 1 as soon as it is ready, then each next one in text order with a short silence
between them. At most ``fanout.max_parallel`` segments of one request are in flight, so one long text
cannot take the whole fleet from other requests.

Failures: ``fan_out`` returns only once segment 1 is ready, so anything that fails before the first
byte raises the real error (the request fails cleanly, with the usual status). A segment that fails
later ends the stream with a ``BackendError`` from ``chunks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections.abc import Awaitable, Callable, Iterator

from .. import tracing
from ..audio import InvalidAudio
from ..audio.pcm import decode_pcm, resample_pcm
from ..cache.speech import SpeechCache
from ..config.models import FanoutConfig
from ..errors import BackendError, BackendFailed, Unavailable
from ..metrics import Metrics
from ..router.dispatch import Dispatched, Router
from ..router.endpoint import Endpoint
from ..router.pool import Pool
from ..router.spool import SpillFile
from ..types import AudioResponse, SynthesisRequest, aclose_chunks
from .plan import plan_segments


@dataclasses.dataclass
class SegmentAudio:
    """One segment, decoded: mono int16 PCM at ``sample_rate``, and where it came from."""

    pcm: bytes
    sample_rate: int
    endpoint: Endpoint | None  # None: served from the cache
    pool: Pool | None
    attempts: int
    #: served from a cache rather than synthesized (counted as ``segments{outcome="cached"}``)
    cached: bool = False


#: ``(index, text) -> SegmentAudio``: one segment's synthesis
SegmentSynth = Callable[[int, str], Awaitable[SegmentAudio]]


@dataclasses.dataclass
class FannedOut(Dispatched):
    """A fanned-out synthesis of ``segments`` segments.

    ``endpoint`` and ``pool`` are segment 1's: the response's endpoint and pool headers and the request
    metrics name where the first audio came from (both None when segment 1 came from the cache). ``attempts``
    grows as segments finish: a whole file's header and a streamed response's access log line count them all
    (a stream sends no attempts header).
    """

    segments: int = 0


def segment_synthesizer(router: Router, sreq: SynthesisRequest, *, priority: str, deadline: float,
                        cache: SpeechCache | None = None) -> SegmentSynth:
    """The segment step: from ``cache`` when it knows the segment, else a sub-request read whole and decoded to
    PCM (then kept in ``cache``).

    The attempt loop reads a segment's answer whole within the try, so a body that breaks is tried again
    elsewhere under the same rules as any failure, while none of it has reached the client.
    """
    fmt = _decodable_format(router, sreq.model)

    async def synthesize_segment(index: int, text: str) -> SegmentAudio:
        if cache is not None and (known := await cache.segment(sreq, text)) is not None:
            return SegmentAudio(known[0], known[1], None, None, 0, cached=True)
        rid = f"{sreq.request_id}-{index + 1}" if sreq.request_id else ""
        sub = dataclasses.replace(sreq, text=text, response_format=fmt, request_id=rid)
        dispatched = await router.synthesize(sub, priority=priority, deadline=deadline, whole=True, spread=True)
        assert dispatched.endpoint is not None
        pcm, rate = await _read_pcm(dispatched.response, dispatched.endpoint.name)
        if cache is not None:
            cache.keep_segment(sreq, text, pcm, rate)
        return SegmentAudio(pcm, rate, dispatched.endpoint, dispatched.pool, dispatched.attempts)

    return synthesize_segment


async def fan_out(router: Router, sreq: SynthesisRequest, *, priority: str = "interactive",
                  cache: SpeechCache | None = None, texts: list[str] | None = None,
                  synthesize: SegmentSynth | None = None) -> FannedOut:
    """Start every segment of ``sreq`` and return once segment 1 is ready.

    ``cache``: where known segments come from and new ones go (the model's opt-in is the caller's to check);
    ``texts``: the segments when the caller already planned them (``plan_segments``); ``synthesize`` replaces
    the segment step. The response is mono PCM at segment 1's rate; closing it early cancels the segments
    still running.
    """
    texts = texts or plan_segments(router, sreq)
    if not texts:
        raise ValueError(f"request {sreq.request_id!r} is not fanned out (check plan_segments first)")
    cfg: FanoutConfig = router.settings.models[sreq.model].fanout
    if synthesize is None:
        synthesize = segment_synthesizer(router, sreq, priority=priority, deadline=router.deadline(sreq), cache=cache)
    router.metrics.fanout_requests.labels(sreq.model).inc()
    run = _Segments(texts, synthesize, cfg.max_parallel, router.metrics, sreq.model)
    try:
        first = await run.first_ready()
    except BaseException:
        await run.aclose()
        raise
    audio = _InOrder(run, first.sample_rate, cfg.silence_ms)
    result = FannedOut(response=AudioResponse(format="pcm", chunks=audio, sample_rate=first.sample_rate,
                                              content_type="audio/pcm", close=audio.aclose),
                       endpoint=first.endpoint, pool=first.pool, attempts=run.attempts, segments=len(texts))
    run.result = result
    return result


class _Segments:
    """The segment tasks of one request, started in text order, at most ``max_parallel`` at a time."""

    def __init__(self, texts: list[str], synthesize: SegmentSynth, max_parallel: int, metrics: Metrics,
                 model: str) -> None:
        self.texts = texts
        self.attempts = 0
        self.result: FannedOut | None = None
        self._synthesize = synthesize
        self._metrics = metrics
        self._model = model
        self._gate = asyncio.Semaphore(max_parallel)  # FIFO: waiting segments start in text order
        self._parked = SpillFile()  # ready segments wait for a slow client on disk: where each one is
        self._where: dict[int, tuple[int, int]] = {}
        self.tasks = [asyncio.create_task(self._run(i, text)) for i, text in enumerate(texts)]

    def __repr__(self) -> str:
        done = sum(t.done() for t in self.tasks)
        return f"_Segments(segments={len(self.tasks)}, done={done}, model={self._model!r})"

    async def _run(self, index: int, text: str) -> SegmentAudio:
        async with self._gate:
            with tracing.segment(index, len(text), len(self.texts)) as span:  # its own span, when traced
                try:
                    segment = await self._synthesize(index, text)
                except (BackendError, Unavailable):
                    self._metrics.segments.labels(self._model, "failed").inc()
                    for later in self.tasks[index + 1:]:  # the stream ends here: free their slots for others
                        later.cancel()
                    raise
                span.done("cached" if segment.cached else "ok")
        self._metrics.segments.labels(self._model, "cached" if segment.cached else "ok").inc()
        self.attempts += segment.attempts
        if self.result is not None:
            self.result.attempts = self.attempts
        with contextlib.suppress(OSError):  # a full disk: it waits in memory
            self._where[index] = (self._parked.append(segment.pcm), len(segment.pcm))
            return dataclasses.replace(segment, pcm=b"")
        return segment

    def unpark(self, index: int, segment: SegmentAudio, rate: int) -> Iterator[bytes]:
        """Segment ``index``'s audio at ``rate``, back from the disk where it waited for a slow client: in pieces
        as the client takes them (one piece when it must be resampled)."""
        where = self._where.pop(index, None)
        if where is not None and segment.sample_rate == rate:
            return self._parked.pieces(*where)
        if where is not None:
            segment = dataclasses.replace(segment, pcm=self._parked.read(*where))
        return iter([resample_pcm(segment.pcm, segment.sample_rate, rate)])

    async def first_ready(self) -> SegmentAudio:
        """Segment 1; or the first failure of any segment before it is ready (nothing was sent yet)."""
        pending: set[asyncio.Task[SegmentAudio]] = set(self.tasks)
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in self.tasks:  # the first segment's failure, in order
                if task in done and not task.cancelled() and (error := task.exception()) is not None:
                    raise error
            if self.tasks[0] in done:
                return self.tasks[0].result()

    async def aclose(self) -> None:
        """Cancel what still runs (each task gives its endpoint slot back) and wait for them to finish."""
        for task in self.tasks:
            task.cancel()  # synchronous, so a caller cancelled during the wait below still stops them
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self._parked.close()


class _InOrder:
    """The response body: segment 1, silence, segment 2, ... each once it and all before it are ready."""

    def __init__(self, run: _Segments, sample_rate: int, silence_ms: int) -> None:
        self._run = run
        self._rate = sample_rate
        self._silence = bytes(2 * round(sample_rate * silence_ms / 1000))
        self._next = 0
        self._ready: Iterator[bytes] = iter(())
        self._closed = False

    def __repr__(self) -> str:
        return f"_InOrder(next={self._next}, of={len(self._run.tasks)}, sample_rate={self._rate})"

    def __aiter__(self) -> _InOrder:
        return self

    async def __anext__(self) -> bytes:
        while not (piece := next(self._ready, b"")):
            await self._next_segment()
        return piece

    async def _next_segment(self) -> None:
        tasks = self._run.tasks
        if self._closed or self._next >= len(tasks):
            await self.aclose()
            raise StopAsyncIteration
        index, task = self._next, tasks[self._next]
        await asyncio.wait({task})  # not `await task`: a cancelled reader must not cancel the segment
        try:
            segment = task.result()
        except (BackendError, Unavailable, asyncio.CancelledError) as exc:
            await self.aclose()
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            raise BackendError(f"segment {index + 1} of {len(tasks)} failed: {message}",
                               endpoint=getattr(exc, "endpoint", "")) from exc
        self._next += 1
        pieces = self._run.unpark(index, segment, self._rate)
        self._ready = itertools.chain([self._silence], pieces) if index and self._silence else pieces

    async def aclose(self) -> None:
        self._closed = True
        self._ready = iter(())
        await self._run.aclose()


async def _read_pcm(resp: AudioResponse, endpoint: str) -> tuple[bytes, int]:
    """The whole body as mono int16 PCM and its rate; the endpoint's slot is given back either way."""
    chunks = resp.chunks
    try:
        data = b"".join([chunk async for chunk in chunks])
    finally:
        with contextlib.suppress(Exception):
            await aclose_chunks(chunks)
    try:
        return decode_pcm(data, resp.format, resp.sample_rate)
    except InvalidAudio as exc:
        raise BackendFailed(f"endpoint {endpoint} sent invalid audio: {exc}", endpoint=endpoint) from None


def _decodable_format(router: Router, model: str) -> str:
    """Ask for audio that can be decoded: WAV, or raw PCM where the primary pool cannot send WAV."""
    endpoints = router.route(model)[0].endpoints
    formats = endpoints[0].backend.capabilities.formats if endpoints else frozenset({"wav"})
    return "pcm" if "wav" not in formats and "pcm" in formats else "wav"
