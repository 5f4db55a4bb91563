"""Dispatch a ``SynthesisRequest`` and stream the answer, with metrics and clean mid-stream failures."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..audio import FORMATS
from ..cache import CachedAudio
from ..errors import BackendError, DeadlineExceeded, RequestInvalid, SpeechRouterError
from ..router import fanout
from ..router.dispatch import Dispatched
from ..router.pool import PRIORITIES
from ..types import SynthesisRequest
from .audio_out import (AudioMeter, audio_body, check_format, passes_through, sse_error, sse_events,
                        within_deadline)
from .cached import CACHE_HEADER, ResponseCache, one_chunk
from .disconnect import unless_client_leaves
from .middleware import StreamAborted

log = logging.getLogger(__name__)

ENDPOINT_HEADER = "x-speech-router-endpoint"
#: the pool and endpoint label of answers served by the response cache
CACHE_LABEL = "cache"


def check_capabilities(router: Any, sreq: SynthesisRequest) -> None:
    """Refuse what no pool on the route can do, naming the backend type (never ignore it silently)."""
    pools = router.route(sreq.model)
    caps = [(p, p.endpoints[0].backend.capabilities) for p in pools]
    if sreq.speed != 1.0 and not any(c.speed for _, c in caps):
        types = ", ".join(sorted({p.backend_type for p, _ in caps}))
        raise RequestInvalid(f"speed {sreq.speed:g} is not supported by backend type {types} "
                             f"serving model {sreq.model!r}; use speed 1.0", param="speed",
                             code="unsupported_parameter")
    if sreq.speed != 1.0 and not any(c.speed and c.speed_range[0] <= sreq.speed <= c.speed_range[1]
                                     for _, c in caps):
        ranges = ", ".join(sorted({f"{c.speed_range[0]:g}-{c.speed_range[1]:g}" for _, c in caps if c.speed}))
        raise RequestInvalid(f"speed {sreq.speed:g} is outside what model {sreq.model!r} can do ({ranges})",
                             param="speed", code="unsupported_value")
    if sreq.emotion.method != 0 and not any(c.emotion for _, c in caps):
        types = ", ".join(sorted({p.backend_type for p, _ in caps}))
        if sreq.emotion.method != 3 or sreq.passthrough is not None:  # instructions are a hint; others are not
            raise RequestInvalid(f"emotion control is not supported by backend type {types} serving model "
                                 f"{sreq.model!r}", param="emotion", code="unsupported_parameter")


def request_priority(request: Request, settings: Any) -> str:
    """The client key's priority class when it has one, else the configured header (default interactive)."""
    keyed = request.scope.get("state", {}).get("client_priority")
    if keyed:
        return str(keyed)
    value = request.headers.get(settings.server.priority_header, "interactive").strip().lower() or "interactive"
    if value not in PRIORITIES:
        raise RequestInvalid(f"Invalid {settings.server.priority_header} header {value!r}: use interactive or batch.",
                             param=settings.server.priority_header)
    return value


def request_deadline(request: Request, settings: Any) -> float | None:
    """Seconds the client will wait, from the configured deadline header (a positive number), or None."""
    header = settings.server.deadline_header
    raw = request.headers.get(header)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise RequestInvalid(f"Invalid {header} header {raw[:32]!r}: give the seconds you will wait, a positive "
                             "number.", param=header)
    return value


async def synthesize_response(request: Request, sreq: SynthesisRequest, *, fmt: str, sample_rate: int | None,
                              stream: bool, sse: bool, route: str, check_voice: bool = True) -> Response:
    state = request.app.state
    router, metrics, cache = state.router, state.metrics, state.cache
    started = time.perf_counter()
    labels = {"route": route, "model": sreq.model, "pool": "", "endpoint": ""}
    access = request.scope.setdefault("state", {}).setdefault("access", {})  # for the access log
    access.update(model=sreq.model, voice=sreq.voice, chars=len(sreq.text))
    try:
        check_format(fmt, sample_rate)
        if check_voice:
            router.check_voice(sreq.model, sreq.voice or "", sreq.voice_params)
        check_capabilities(router, sreq)
        priority = access["priority"] = request_priority(request, state.settings)
        wait = request_deadline(request, state.settings)
        if wait is not None:
            sreq.timeout = wait if sreq.timeout is None else min(wait, sreq.timeout)
        state.pm.hook.prepare_request(request=sreq, settings=state.settings)
        caching = cache.enabled(state.settings, sreq)
        key = cache.response_key(state.settings, sreq, fmt, sample_rate) if caching else None
        if key is not None and (hit := await cache.lookup(sreq.model, "response", key)) is not None:
            labels.update(pool=CACHE_LABEL, endpoint=CACHE_LABEL)
            access.update(backend=CACHE_LABEL, pool=CACHE_LABEL, attempts=0, cache="hit")
            return _cached_answer(hit, sreq, sse, metrics, labels, started)
        dispatched = await unless_client_leaves(
            request, _dispatch(router, state.settings, cache if caching else None, sreq, priority))
    except SpeechRouterError:
        raise  # counted by the error handler, with everything refused earlier
    ep, pool, resp = dispatched.endpoint, dispatched.pool, dispatched.response
    ep_name = ep.name if ep is not None else CACHE_LABEL  # a fan-out's segment 1 may come from the cache
    pool_name = pool.name if pool is not None else CACHE_LABEL
    labels.update(pool=pool_name, endpoint=ep_name)
    access.update(backend=ep_name, pool=pool_name, attempts=dispatched.attempts,
                  fallback=dispatched.fallback_reason, queue_wait_s=dispatched.queued)
    meter = AudioMeter()
    passthrough = passes_through(resp, fmt, sample_rate)
    body = audio_body(resp, fmt, sample_rate, meter, chars=len(sreq.text))
    if sreq.timeout is not None:  # the client's deadline header covers the whole response, streaming included
        body = within_deadline(body, started + sreq.timeout, time.perf_counter)
    headers = {ENDPOINT_HEADER: ep_name, "x-speech-router-pool": pool_name,
               "x-speech-router-attempts": str(dispatched.attempts)}
    if key is not None:  # stored once sent completely, in the format sent (before any SSE framing)
        headers[CACHE_HEADER] = access["cache"] = "miss"
        fix = fmt == "wav" and not passthrough
        body = cache.tee(body, key, lambda data: CachedAudio(
            _fix_wav_sizes(data) if fix else data, FORMATS[fmt].content_type, fmt, meter.sample_rate or None,
            seconds=meter.seconds), chars=len(sreq.text))
    if sse:
        body = sse_events(body, len(sreq.text), meter)
    if dispatched.fallback_reason:
        headers["x-speech-router-fallback"] = dispatched.fallback_reason
    if isinstance(dispatched, fanout.FannedOut):  # endpoint and pool headers are segment 1's
        headers["x-speech-router-segments"] = str(dispatched.segments)
    media_type = "text/event-stream" if sse else FORMATS[fmt].content_type

    async def finished(status: str) -> None:
        elapsed = time.perf_counter() - started
        metrics.requests.labels(**labels, status=status).inc()
        metrics.request_duration.labels(**labels).observe(elapsed)
        metrics.characters.labels(sreq.model, pool_name, ep_name).inc(len(sreq.text))
        metrics.audio_seconds.labels(sreq.model, pool_name, ep_name).inc(meter.seconds)
        if status == "200" and meter.seconds > 0:  # time spent per second of audio, queueing left out
            rtf = max(0.0, elapsed - dispatched.queued) / meter.seconds
            metrics.real_time_factor.labels(sreq.model, pool_name, ep_name).observe(rtf)
        access["attempts"] = dispatched.attempts  # a fan-out's total is known only now

    if not stream:  # a finished file with its length: read it all, then answer
        try:
            data = b"".join([chunk async for chunk in body])
        except BackendError:
            await finished("502")
            raise
        finally:
            await _close(body)
        if fmt == "wav" and not passthrough:
            data = _fix_wav_sizes(data)
        headers["x-speech-router-attempts"] = str(dispatched.attempts)  # a fan-out's total is known now
        metrics.time_to_first_byte.labels(**labels).observe(time.perf_counter() - started)
        await finished("200")
        return Response(data, media_type=media_type, headers=headers)

    if passthrough and not sse and resp.content_length is not None:
        headers["content-length"] = str(resp.content_length)
    if isinstance(dispatched, fanout.FannedOut):  # its attempts are known only after the last segment: the
        del headers["x-speech-router-attempts"]   # access log has them; a header now would undercount

    async def send() -> AsyncIterator[bytes]:
        first = True
        status = "200"
        try:
            async for chunk in body:
                if first:
                    metrics.time_to_first_byte.labels(**labels).observe(time.perf_counter() - started)
                    first = False
                yield chunk
        except (BackendError, DeadlineExceeded) as exc:
            status = "502" if isinstance(exc, BackendError) else "504"
            message = exc.message if isinstance(exc, BackendError) else str(exc)
            metrics.stream_errors.labels(route, sreq.model).inc()
            log.warning("request %s: %s mid-stream: %s", sreq.request_id,
                        f"endpoint {ep_name} failed" if status == "502" else "deadline passed", message)
            if sse:
                yield sse_error(message)
            else:  # the chunked body ends without its terminator: the client sees a truncated response
                raise StreamAborted(message) from None
        finally:
            await _close(body)
            await finished(status)

    return StreamingResponse(send(), media_type=media_type, headers=headers)


async def _dispatch(router: Any, settings: Any, cache: ResponseCache | None, sreq: SynthesisRequest,
                    priority: str) -> Dispatched:
    """A long text fans out across the fleet (#7), its segments cached when the model opts in (``cache``);
    else one request."""
    texts = fanout.plan_segments(router, sreq)
    if not texts:
        return await router.synthesize(sreq, priority=priority)
    synthesize = None
    if cache is not None and settings.models[sreq.model].cache.segments:
        step = fanout.segment_synthesizer(router, sreq, priority=priority,
                                          deadline=router.deadline(sreq))
        synthesize = cache.segments(settings, sreq, step)
    return await fanout.fan_out(router, sreq, priority=priority, synthesize=synthesize, texts=texts)


def _cached_answer(hit: CachedAudio, sreq: SynthesisRequest, sse: bool, metrics: Any, labels: dict[str, str],
                   started: float) -> Response:
    """A whole answer from the cache: the same bytes as the first time, in one piece (SSE: one delta)."""
    headers = {CACHE_HEADER: "hit", ENDPOINT_HEADER: CACHE_LABEL, "x-speech-router-attempts": "0"}
    elapsed = time.perf_counter() - started
    metrics.time_to_first_byte.labels(**labels).observe(elapsed)
    metrics.request_duration.labels(**labels).observe(elapsed)
    metrics.requests.labels(**labels, status="200").inc()
    metrics.audio_seconds.labels(sreq.model, CACHE_LABEL, CACHE_LABEL).inc(hit.seconds)
    if not sse:
        return Response(hit.data, media_type=hit.content_type, headers=headers)
    meter = AudioMeter(samples=round(hit.seconds * 1000), sample_rate=1000)  # only its seconds are read
    return StreamingResponse(sse_events(one_chunk(hit.data), len(sreq.text), meter), media_type="text/event-stream",
                             headers=headers)


async def _close(body: AsyncIterator[bytes]) -> None:
    with contextlib.suppress(Exception):
        await body.aclose()  # type: ignore[attr-defined]


def _fix_wav_sizes(data: bytes) -> bytes:
    """A streamed WAV header says "unknown length"; a whole file gets its real sizes."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[36:40] != b"data":
        return data
    size = len(data) - 44
    return data[:4] + (size + 36).to_bytes(4, "little") + data[8:40] + size.to_bytes(4, "little") + data[44:]
