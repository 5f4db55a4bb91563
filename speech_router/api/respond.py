"""Dispatch a ``SynthesisRequest`` and stream the answer, with metrics and clean mid-stream failures."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..audio import FORMATS
from ..errors import BackendError, RequestInvalid, SpeechRouterError
from ..router.pool import PRIORITIES
from ..types import SynthesisRequest
from .middleware import StreamAborted
from .audio_out import AudioMeter, audio_body, check_format, passes_through, sse_error, sse_events

log = logging.getLogger(__name__)

ENDPOINT_HEADER = "x-speech-router-endpoint"


def check_capabilities(router: Any, sreq: SynthesisRequest) -> None:
    """Refuse what no pool on the route can do, naming the backend type (never ignore it silently)."""
    pools = router.route(sreq.model)
    caps = [(p, p.endpoints[0].backend.capabilities) for p in pools]
    if sreq.speed != 1.0 and not any(c.speed for _, c in caps):
        types = ", ".join(sorted({p.backend_type for p, _ in caps}))
        raise RequestInvalid(f"speed {sreq.speed:g} is not supported by backend type {types} "
                             f"serving model {sreq.model!r}; use speed 1.0", param="speed",
                             code="unsupported_parameter")
    if sreq.emotion.method != 0 and not any(c.emotion for _, c in caps):
        types = ", ".join(sorted({p.backend_type for p, _ in caps}))
        if sreq.emotion.method != 3 or sreq.passthrough is not None:  # instructions are a hint; others are not
            raise RequestInvalid(f"emotion control is not supported by backend type {types} serving model "
                                 f"{sreq.model!r}", param="emotion", code="unsupported_parameter")


def request_priority(request: Request, settings: Any) -> str:
    """Interactive (default) or batch, from the configured request header."""
    value = request.headers.get(settings.server.priority_header, "interactive").strip().lower() or "interactive"
    if value not in PRIORITIES:
        raise RequestInvalid(f"Invalid {settings.server.priority_header} header {value!r}: use interactive or batch.",
                             param=settings.server.priority_header)
    return value


async def synthesize_response(request: Request, sreq: SynthesisRequest, *, fmt: str, sample_rate: int | None,
                              stream: bool, sse: bool, route: str, check_voice: bool = True) -> Response:
    state = request.app.state
    router, metrics = state.router, state.metrics
    started = time.perf_counter()
    labels = {"route": route, "model": sreq.model, "pool": "", "endpoint": ""}
    try:
        check_format(fmt, sample_rate)
        if check_voice:
            router.check_voice(sreq.model, sreq.voice or "", sreq.voice_params)
        check_capabilities(router, sreq)
        priority = request_priority(request, state.settings)
        state.pm.hook.prepare_request(request=sreq, settings=state.settings)
        dispatched = await router.synthesize(sreq, priority=priority)
    except SpeechRouterError:
        raise  # counted by the error handler, with everything refused earlier
    ep, pool, resp = dispatched.endpoint, dispatched.pool, dispatched.response
    labels.update(pool=pool.name, endpoint=ep.name)
    meter = AudioMeter()
    passthrough = passes_through(resp, fmt, sample_rate)
    body = audio_body(resp, fmt, sample_rate, meter)
    if sse:
        body = sse_events(body, len(sreq.text), meter)
    headers = {ENDPOINT_HEADER: ep.name, "x-speech-router-pool": pool.name,
               "x-speech-router-attempts": str(dispatched.attempts)}
    if dispatched.fallback_reason:
        headers["x-speech-router-fallback"] = dispatched.fallback_reason
    media_type = "text/event-stream" if sse else FORMATS[fmt].content_type

    async def finished(status: str) -> None:
        elapsed = time.perf_counter() - started
        metrics.requests.labels(**labels, status=status).inc()
        metrics.request_duration.labels(**labels).observe(elapsed)
        metrics.characters.labels(sreq.model, pool.name, ep.name).inc(len(sreq.text))
        metrics.audio_seconds.labels(sreq.model, pool.name, ep.name).inc(meter.seconds)

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
        metrics.time_to_first_byte.labels(**labels).observe(time.perf_counter() - started)
        await finished("200")
        return Response(data, media_type=media_type, headers=headers)

    if passthrough and not sse and resp.content_length is not None:
        headers["content-length"] = str(resp.content_length)

    async def send() -> AsyncIterator[bytes]:
        first = True
        status = "200"
        try:
            async for chunk in body:
                if first:
                    metrics.time_to_first_byte.labels(**labels).observe(time.perf_counter() - started)
                    first = False
                yield chunk
        except BackendError as exc:
            status = "502"
            log.warning("request %s: endpoint %s failed mid-stream: %s", sreq.request_id, ep.name, exc.message)
            if sse:
                yield sse_error(exc.message)
            else:  # the chunked body ends without its terminator: the client sees a truncated response
                raise StreamAborted(exc.message) from None
        finally:
            await _close(body)
            await finished(status)

    return StreamingResponse(send(), media_type=media_type, headers=headers)


async def _close(body: AsyncIterator[bytes]) -> None:
    with contextlib.suppress(Exception):
        await body.aclose()  # type: ignore[attr-defined]


def _fix_wav_sizes(data: bytes) -> bytes:
    """A streamed WAV header says "unknown length"; a whole file gets its real sizes."""
    if len(data) < 44 or data[:4] != b"RIFF" or data[36:40] != b"data":
        return data
    size = len(data) - 44
    return data[:4] + (size + 36).to_bytes(4, "little") + data[8:40] + size.to_bytes(4, "little") + data[44:]
