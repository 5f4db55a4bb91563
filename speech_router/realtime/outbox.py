"""What a realtime session sends: one outbox per connection, and the sender that delivers sentences in order.

Every send goes through ``Outbox`` (one lock; a sentence's ``audio.start``, frames and ``audio.done`` together),
which also knows since when a send has waited for a client that does not read. ``Sender`` takes the pipeline's
items in order, as soon as each and all before it are ready, and counts what the listener hears: time to first
audio per utterance, the gap before each later sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..api.errors import describe
from ..errors import SpeechRouterError
from ..fanout import SegmentAudio
from ..metrics import Metrics
from .audio import Playback, encode_sentence
from .pipeline import Pipeline, Sentence, UtteranceEnd
from .protocol import CloseCode, audio_done, audio_start, error_event, session_done
from .report import SessionReport

log = logging.getLogger("speech_router.realtime")

#: how long the last words of a refused session (its error event and close) may wait for the client
FAREWELL_TIMEOUT_S = 2.0
#: the rate ``audio.start`` gives for a failed pcm sentence (the rate pcm always has)
PCM_RATE = 24000


class ClientGone(Exception):
    """The client closed the connection (a receive said so, or a send failed)."""


class Outbox:
    """The connection's sending side."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.lock = asyncio.Lock()
        self.waiting_since: float | None = None  # a send waits for the client since then

    def __repr__(self) -> str:
        return f"Outbox(waiting_since={self.waiting_since})"

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        async with self.lock:
            yield

    async def event(self, event: dict[str, object]) -> None:
        await self.send(dumps(event))

    async def send(self, data: str | bytes) -> None:
        """One message; ``ClientGone`` when the connection is gone."""
        self.waiting_since = time.perf_counter()
        try:
            if isinstance(data, bytes):
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_text(data)
        except (WebSocketDisconnect, RuntimeError, OSError):
            raise ClientGone from None
        finally:
            self.waiting_since = None

    async def farewell(self, event: dict[str, object] | None, code: CloseCode, reason: str) -> None:
        """The last event and the close, if the client takes them within ``FAREWELL_TIMEOUT_S``."""
        with contextlib.suppress(TimeoutError, RuntimeError, WebSocketDisconnect, OSError):
            async with asyncio.timeout(FAREWELL_TIMEOUT_S):
                if event is not None:
                    await self.ws.send_text(dumps(event))
                await self.ws.close(int(code), reason)


class _Heard:
    """What the listener of one utterance has heard: for time to first audio and the gaps."""

    def __init__(self, first_complete_at: float) -> None:
        self.first_complete_at = first_complete_at
        self.playback = Playback()


class Sender:
    """The sender task's work (``run``): each item of ``pipeline`` in order."""

    def __init__(self, outbox: Outbox, pipeline: Pipeline, metrics: Metrics, report: SessionReport) -> None:
        self.outbox, self.pipeline, self.metrics, self.report = outbox, pipeline, metrics, report
        self.delivered_at = time.perf_counter()  # the last item delivered
        self._heard: dict[int, _Heard] = {}

    def __repr__(self) -> str:
        return f"Sender(utterances={sorted(self._heard)})"

    def utterance_started(self, utterance: int, first_complete_at: float) -> None:
        """The utterance's first sentence was cut (its last character arrived at ``first_complete_at``)."""
        self._heard.setdefault(utterance, _Heard(first_complete_at))

    async def run(self) -> None:
        while True:
            item = await self.pipeline.next()
            if isinstance(item, UtteranceEnd):
                self._heard.pop(item.utterance, None)
                async with self.outbox.held():
                    await self.outbox.event(session_done(item.utterance, item.sentences))
            else:
                await self._sentence(item)
            self.pipeline.delivered(item)
            self.delivered_at = time.perf_counter()

    async def _sentence(self, sentence: Sentence) -> None:
        await sentence.started.wait()
        assert sentence.task is not None
        await asyncio.wait({sentence.task})
        fmt, model, outbox = sentence.speech.fmt, sentence.speech.model, self.outbox
        try:
            segment = sentence.task.result()
            audio = await encode_sentence(segment.pcm, segment.sample_rate, fmt)
        except Exception as exc:  # noqa: BLE001 - the sentence fails, the session goes on (vllm-omni's way)
            await self._failed(sentence, exc)
            return
        self._account(sentence, segment)
        heard = self._heard.get(sentence.utterance)
        async with outbox.held():
            await outbox.event(audio_start(sentence.utterance, sentence.index, sentence.text, fmt, audio.sample_rate))
            for number, frame in enumerate(audio.frames()):
                await outbox.send(frame)
                if number == 0 and heard is not None:
                    self._heard_now(heard, model, audio.seconds)
            await outbox.event(audio_done(sentence.utterance, sentence.index, len(audio.data), False))
        self.report.bytes += len(audio.data)
        self.report.audio_seconds += audio.seconds

    async def _failed(self, sentence: Sentence, exc: Exception) -> None:
        """``audio.start``, ``error``, ``audio.done`` with ``error: true``: the reason, never a traceback."""
        self.metrics.realtime_segments.labels(sentence.speech.model, "failed").inc()
        self.report.failed += 1
        status, message, _, param, code, _ = describe(exc)
        if status >= 500 and not isinstance(exc, SpeechRouterError):
            log.error("realtime session %s: sentence %d.%d failed", self.report.request_id, sentence.utterance,
                      sentence.index, exc_info=exc)
        where = {"utterance_index": sentence.utterance, "sentence_index": sentence.index}
        async with self.outbox.held():
            await self.outbox.event(audio_start(sentence.utterance, sentence.index, sentence.text,
                                                sentence.speech.fmt, PCM_RATE))
            await self.outbox.event(error_event(message, code or "error", param, **where))
            await self.outbox.event(audio_done(sentence.utterance, sentence.index, 0, True))

    def _account(self, sentence: Sentence, segment: SegmentAudio) -> None:
        outcome = "cached" if segment.cached else "ok"
        self.metrics.realtime_segments.labels(sentence.speech.model, outcome).inc()
        self.report.sentences += 1
        self.report.attempts += segment.attempts
        if segment.endpoint is not None:
            self.report.endpoints.add(segment.endpoint.name)

    def _heard_now(self, heard: _Heard, model: str, seconds: float) -> None:
        """The first frame of a sentence went out: time to first audio, or the gap before it."""
        now = time.perf_counter()
        first = heard.playback.end is None
        gap = heard.playback.play(now, seconds)
        if first:
            waited = max(0.0, now - heard.first_complete_at)
            self.metrics.realtime_first_audio.labels(model).observe(waited)
            if self.report.first_audio_s is None:
                self.report.first_audio_s = waited
        else:
            self.metrics.realtime_gap.labels(model).observe(gap)
            self.report.max_gap_s = max(self.report.max_gap_s, gap)


def dumps(event: dict[str, object]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))
