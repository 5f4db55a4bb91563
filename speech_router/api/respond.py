"""Respond: a dispatched synthesis (or a cached answer) as the HTTP response the client asked for.

Audio that already is what the client wants passes through untouched: its bytes are counted, the WAV header
is read once for the seconds it holds, and each chunk goes out as it came (``AudioStream``). Other audio is
transcoded chunk by chunk (``audio_out``). A whole file (``stream: false``) is read first and sent with its
length. What happened is noted on the request's ``Exchange``; the observer counts and logs it at the end.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .. import tracing
from ..audio import FORMATS, flac
from ..audio.validate import max_audio_seconds
from ..cache import CachedAudio
from ..cache.speech import SpeechCache
from ..errors import BackendError, BackendFailed, ClientDisconnected, DeadlineExceeded
from ..fanout import FannedOut
from ..router.dispatch import Dispatched
from ..types import AudioResponse, aclose_chunks
from .audio_out import AudioMeter, audio_body, passes_through, sse_error, sse_events
from .gate import StreamAborted
from .observe import CACHE_LABEL, Exchange
from .plan import Plan
from .watch import RequestWatch

log = logging.getLogger(__name__)

ENDPOINT_HEADER = "x-speech-router-endpoint"
CACHE_HEADER = "x-speech-router-cache"
#: a WAV header is looked for in this many first bytes (a node's header is 44 bytes, with extra chunks a few more)
WAV_HEAD_BYTES = 4096


def cached_answer(hit: CachedAudio, plan: Plan, ex: Exchange) -> Response:
    """A whole answer from the cache: the same bytes as the first time, in one piece (SSE: one delta)."""
    ex.dispatched(CACHE_LABEL, CACHE_LABEL, 0, None, 0.0)
    ex.cache, ex.audio_seconds = "hit", hit.seconds
    headers = {CACHE_HEADER: "hit", ENDPOINT_HEADER: CACHE_LABEL, "x-speech-router-attempts": "0"}
    if not plan.sse:
        return Response(hit.data, media_type=hit.content_type, headers=headers)
    meter = AudioMeter(samples=round(hit.seconds * 1000), sample_rate=1000)  # only its seconds are read
    return StreamingResponse(sse_events(one_chunk(hit.data), len(plan.sreq.text), meter),
                             media_type="text/event-stream", headers=headers)


async def respond(dispatched: Dispatched, plan: Plan, ex: Exchange, cache: SpeechCache, watch: RequestWatch
                  ) -> Response | AudioStream:
    """The response for a dispatched synthesis."""
    sreq, fmt = plan.sreq, plan.fmt
    ep, pool, resp = dispatched.endpoint, dispatched.pool, dispatched.response
    ep_name = ep.name if ep is not None else CACHE_LABEL  # a fan-out's segment 1 may come from the cache
    pool_name = pool.name if pool is not None else CACHE_LABEL
    ex.dispatched(pool_name, ep_name, dispatched.attempts, dispatched.fallback_reason, dispatched.queued)
    meter = AudioMeter()
    passthrough = passes_through(resp, fmt, plan.sample_rate)
    if passthrough:
        body = passed(resp, meter, len(sreq.text))
    elif (trace := tracing.current()) is not None and trace.recording:  # in a span, with the time it worked
        body = trace.transcoding(resp, fmt, lambda: audio_body(resp, fmt, plan.sample_rate, meter,
                                                               chars=len(sreq.text), whole=not plan.stream))
    else:  # a finished file (stream: false) is encoded whole: its header says its length
        body = audio_body(resp, fmt, plan.sample_rate, meter, chars=len(sreq.text), whole=not plan.stream)
    headers = {ENDPOINT_HEADER: ep_name, "x-speech-router-pool": pool_name,
               "x-speech-router-attempts": str(dispatched.attempts)}
    if plan.cache_key is not None and dispatched.fallback_reason:  # not the model's own answer (another pool's
        plan.cache_key = None  # voice, maybe a substitute voice): never kept for requests once its pools are back
    if plan.cache_key is not None:  # stored once sent completely, in the format sent (before any SSE framing)
        headers[CACHE_HEADER] = ex.cache = "miss"
        body = cache.tee(body, plan.cache_key, lambda data: CachedAudio(
            data if passthrough else finished(data, fmt, meter), FORMATS[fmt].content_type, fmt,
            meter.sample_rate or None, seconds=meter.seconds), chars=len(sreq.text))
    if plan.sse:
        body = sse_events(body, len(sreq.text), meter)
    if dispatched.fallback_reason:
        headers["x-speech-router-fallback"] = dispatched.fallback_reason
    fanned = isinstance(dispatched, FannedOut)
    if isinstance(dispatched, FannedOut):  # endpoint and pool headers are segment 1's
        headers["x-speech-router-segments"] = str(dispatched.segments)
    media_type = "text/event-stream" if plan.sse else FORMATS[fmt].content_type

    if sreq.timeout is not None:  # the client's deadline covers the whole response, counted from the request's start
        watch.expire_in(ex.started + sreq.timeout - time.perf_counter())
    if not plan.stream:  # a finished file with its length: read it all, then answer
        try:
            data = b"".join([chunk async for chunk in body])
        except BackendError:
            ex.metric_status = "502"
            raise
        finally:
            ex.attempts = dispatched.attempts  # a fan-out's total is known only now
            ex.audio_seconds = meter.seconds
            await _close(body)
        headers["x-speech-router-attempts"] = str(dispatched.attempts)
        return Response(fix_wav_sizes(data) if fmt == "wav" and not passthrough else data, media_type=media_type,
                        headers=headers)
    if passthrough and not plan.sse and resp.content_length is not None:
        headers["content-length"] = str(resp.content_length)
    if fanned:  # its attempts are known only after the last segment: the access log has them; a header now would
        del headers["x-speech-router-attempts"]  # undercount
    return AudioStream(body, media_type, headers, plan, ex, dispatched, meter, watch)


class AudioStream(Response):
    """Streams audio as it comes, without Starlette's task group per response: the request's ``RequestWatch``
    stops it when the client leaves or the client's deadline passes."""

    def __init__(self, body: AsyncIterator[bytes], media_type: str, headers: dict[str, str], plan: Plan,
                 ex: Exchange, dispatched: Dispatched, meter: AudioMeter, watch: RequestWatch) -> None:
        self.body_iterator = body
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        self.plan, self.ex, self.dispatched, self.meter, self.watch = plan, ex, dispatched, meter, watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ex, sreq = self.ex, self.plan.sreq
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        body = self.body_iterator
        try:
            with self.watch.guard():
                async for chunk in body:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (BackendError, DeadlineExceeded) as exc:
            ex.metric_status = "502" if isinstance(exc, BackendError) else "504"
            message = exc.message if isinstance(exc, BackendError) else str(exc)
            what = f"endpoint {ex.endpoint} failed" if isinstance(exc, BackendError) else "deadline passed"
            log.warning("request %s: %s mid-stream: %s", sreq.request_id, what, message)
            if not self.plan.sse:  # the chunked body ends without its terminator: the client sees it truncated
                raise StreamAborted(message) from None
            await send({"type": "http.response.body", "body": sse_error(message), "more_body": True})
        except ClientDisconnected:
            return  # nobody to send the rest to; the node's answer is closed below
        finally:
            ex.attempts = self.dispatched.attempts  # a fan-out's total is known only now
            ex.audio_seconds = self.meter.seconds
            await _close(body)
        self.watch.stop()  # before the last message: uvicorn then says http.disconnect, which is not the client
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def passed(resp: AudioResponse, meter: AudioMeter, chars: int) -> AsyncIterator[bytes]:
    """The node's bytes as they are. Only their count is kept per chunk; a WAV's header is read once, so the seconds
    sent (metrics, SSE usage) and the length cap (``max_audio_seconds``) come from the byte count."""
    chunks = resp.chunks
    cap = max_audio_seconds(chars)
    wav = resp.format == "wav"
    head = b""
    start = 0  # where the samples begin; -1 while the header is not read yet
    per_second = 2 * resp.sample_rate if resp.format == "pcm" and resp.sample_rate else 0
    if per_second:
        meter.sample_rate = resp.sample_rate or 0
    elif wav:
        start = -1
    total = 0
    try:
        async for chunk in chunks:
            total += len(chunk)
            if start < 0 and len(head) < WAV_HEAD_BYTES:
                head += chunk[:WAV_HEAD_BYTES - len(head)]
                found = _wav_layout(head)
                if found is not None:
                    start, rate, per_second = found
                    meter.sample_rate = rate
            if per_second and start >= 0:
                meter.samples = max(0, total - start) * meter.sample_rate // per_second
                if meter.samples > cap * meter.sample_rate:
                    raise BackendFailed(f"backend sent more than {cap:g} s of audio for {chars} characters")
            yield chunk
    finally:  # give the endpoint's slot back now, also when the client went away early
        with contextlib.suppress(Exception):
            await aclose_chunks(chunks)


def _wav_layout(head: bytes) -> tuple[int, int, int] | None:
    """(offset of the samples, sample rate, bytes per second) of a WAV header once ``head`` holds it; else None."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None if len(head) < 12 else (len(head), 0, 0)  # not WAV: nothing to count
    pos, rate, per_second = 12, 0, 0
    while pos + 8 <= len(head):
        kind, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if kind == b"fmt " and pos + 16 <= len(head):
            rate = int.from_bytes(head[pos + 12:pos + 16], "little")
            per_second = int.from_bytes(head[pos + 16:pos + 20], "little") if pos + 20 <= len(head) else 0
        if kind == b"data":
            return pos + 8, rate, per_second
        pos += 8 + size + (size & 1)
    return None


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _close(body: AsyncIterator[bytes]) -> None:
    with contextlib.suppress(Exception):
        await aclose_chunks(body)


def finished(data: bytes, fmt: str, meter: AudioMeter) -> bytes:
    """A streamed answer kept whole (by the cache) as a finished file: its header says its length."""
    if fmt == "wav":
        return fix_wav_sizes(data)
    if fmt == "flac":
        return flac.with_total_samples(data, meter.encoded)
    return data


def fix_wav_sizes(data: bytes) -> bytes:
    """A streamed WAV header says "unknown length"; a whole file gets its real sizes."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[36:40] != b"data":
        return data
    size = len(data) - 44
    return data[:4] + (size + 36).to_bytes(4, "little") + data[8:40] + size.to_bytes(4, "little") + data[44:]
