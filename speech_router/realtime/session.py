"""One realtime session: text in from the client, sentences out to the fleet, audio back in order.

Two tasks share the connection. The reader (``run``) takes the client's messages, cuts the text into sentences
(``TextCutter``) and hands them to the ``Pipeline``, which starts each on the fleet as soon as it is cut; the
sender (``_deliver``) takes them back in order and sends ``audio.start``, the audio and ``audio.done`` per
sentence and ``session.done`` per utterance. Every send goes through one lock, a sentence's messages together.

Timeouts: the first ``session.config`` within ``config_timeout``; then the session is idle, and closed, when
nothing is left to deliver and the client sent nothing for ``idle_timeout``, or when a send has waited
``idle_timeout`` for a client that does not read. A client that leaves cancels every sentence still running
(their node requests are cancelled and their endpoint slots come back).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..api.errors import describe
from ..api.state import AppState
from ..errors import RequestInvalid, SpeechRouterError
from ..fanout import SegmentAudio, segment_synthesizer
from .audio import Playback, encode_sentence
from .pipeline import Pipeline, Sentence, UtteranceEnd
from .protocol import (CloseCode, Refusal, audio_done, audio_start, decode, error_event, input_text, session_config,
                       session_done)
from .report import SessionReport
from .request import SessionSpeech, session_speech
from .text import Cut, TextCutter

log = logging.getLogger("speech_router.realtime")

#: how long the last words of a refused session (its error event and close) may wait for the client
FAREWELL_TIMEOUT_S = 2.0
#: the reader looks at the timeouts at least this often
CHECK_INTERVAL_S = 1.0


class ClientGone(Exception):
    """The client closed the connection (a receive said so, or a send failed)."""


class Session:
    """See the module's docstring. ``run`` returns when the session is over; ``report`` says how it went."""

    def __init__(self, ws: WebSocket, state: AppState, report: SessionReport, priority: str) -> None:
        self.ws, self.state, self.report, self.priority = ws, state, report, priority
        self.limits = state.settings.server.realtime
        self.speech: SessionSpeech | None = None
        self.cutter: TextCutter | None = None
        self.utterance = 0  # index of the utterance being written
        self.sentences = 0  # sentences cut from it so far
        self.in_utterance = False  # text came since the last input.done
        self.pipeline = Pipeline(self._synthesize, max_ahead=self.limits.max_buffered_segments)
        self._heard: dict[int, _Heard] = {}  # per utterance: what its listener has heard
        self._lock = asyncio.Lock()
        self._touched = time.perf_counter()  # the last message in, or item delivered
        self._send_since: float | None = None  # a send waits for the client since then
        self._sender: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Session({self.report.request_id!r}, utterance={self.utterance}, {self.pipeline!r})"

    async def run(self) -> None:
        sender = self._sender = asyncio.ensure_future(self._deliver())
        try:
            if await self._read():
                await self._drain(sender)
                self.report.outcome, self.report.close_code = "closed", CloseCode.NORMAL
                await self._farewell(None, CloseCode.NORMAL, "session.close")
        except Refusal as refusal:
            await self._stop(sender)
            self.report.outcome, self.report.close_code = refusal.outcome, refusal.close
            event = error_event(refusal.message, refusal.code, refusal.param)
            await self._farewell(event, refusal.close, refusal.code)
        except ClientGone:
            self.report.outcome = "client_left"
        finally:
            await self._stop(sender)

    # -- reading ---------------------------------------------------------------------------------------------

    async def _read(self) -> bool:
        """Handle messages until ``session.close`` (True); raises ``Refusal`` or ``ClientGone`` otherwise."""
        assert self._sender is not None
        opened = time.perf_counter()
        receiving: asyncio.Future[dict[str, object]] | None = None
        try:
            while True:
                if receiving is None:
                    receiving = asyncio.ensure_future(self.ws.receive())
                done, _ = await asyncio.wait({receiving, self._sender}, timeout=self._wait(opened),
                                             return_when=asyncio.FIRST_COMPLETED)
                if self._sender in done:
                    self._sender_ended(self._sender)
                if receiving not in done:
                    self._timeouts(opened)
                    continue
                message, receiving = receiving.result(), None
                if message["type"] == "websocket.disconnect":
                    raise ClientGone
                self._touched = time.perf_counter()
                if await self._handle(message):
                    return True
        finally:
            if receiving is not None:
                receiving.cancel()

    async def _handle(self, message: dict[str, object]) -> bool:
        """One message; True for ``session.close``. A client's mistake gets an error event, the session goes on."""
        try:
            data = decode(message, self.limits.max_message_bytes, configured=self.speech is not None)
            kind = data["type"]
            if kind == "session.close":
                return True
            if kind == "session.config":
                self._configure(data)
            elif kind == "input.text":
                self._text(input_text(data))
            else:
                self._done()
        except RequestInvalid as exc:
            await self._send_error(exc)
        return False

    def _configure(self, data: dict[str, object]) -> None:
        if self.in_utterance:
            raise RequestInvalid("session.config cannot be applied while an utterance is in progress; send "
                                 "input.done first.", param="type", code="utterance_in_progress")
        try:
            config = session_config(data)
            speech = session_speech(self.state, config, priority=self.priority, request_id=self.report.request_id)
        except RequestInvalid as exc:
            if self.speech is None:  # no valid config yet: nothing to keep the session for
                raise Refusal(f"Invalid session.config: {exc.message}", code=exc.code, param=exc.param,
                              close=CloseCode.INVALID, outcome="invalid_config") from None
            raise
        self.speech = speech
        self.cutter = self._new_cutter()
        self.report.model, self.report.voice = speech.model, speech.sreq.voice

    def _new_cutter(self) -> TextCutter:
        speech = self.speech
        assert speech is not None
        return TextCutter(max_chars=speech.max_chars, min_chars=speech.min_chars, granularity=speech.granularity,
                          hold_s=self.limits.sentence_hold_ms / 1000)

    def _text(self, text: str) -> None:
        assert self.cutter is not None
        if not text:
            return
        waiting = self.pipeline.buffered_chars + self.cutter.buffered + len(text)
        limit = self.limits.max_buffered_chars
        if waiting > limit:
            raise Refusal(f"Too much text waiting: {waiting} characters received and not yet spoken, at most "
                          f"{limit} (server.realtime.max_buffered_chars). Read the audio as it comes.",
                          code="buffer_full", close=CloseCode.POLICY, outcome="buffer_full")
        self.in_utterance = True
        self.report.chars += len(text)
        self._add(self.cutter.feed(text, time.perf_counter()))

    def _done(self) -> None:
        assert self.cutter is not None
        self._add(self.cutter.flush())
        self.pipeline.add(UtteranceEnd(self.utterance, self.sentences))
        self.report.utterances += 1
        self.utterance, self.sentences, self.in_utterance = self.utterance + 1, 0, False
        self.cutter = self._new_cutter()

    def _add(self, cuts: list[Cut]) -> None:
        assert self.speech is not None
        for cut in cuts:
            if self.utterance not in self._heard:
                self._heard[self.utterance] = _Heard(cut.complete_at)
            self.pipeline.add(Sentence(self.utterance, self.sentences, cut.text, cut.complete_at, self.speech))
            self.sentences += 1

    async def _synthesize(self, sentence: Sentence) -> SegmentAudio:
        """One sentence through the routing core, as a fan-out segment (retries, fallback, the segment cache)."""
        state, speech = self.state, sentence.speech
        if speech.model not in state.settings.models:  # a reload removed it
            raise RequestInvalid(f"Model {speech.model!r} is no longer configured; send a new session.config.",
                                 param="model", code="model_not_found")
        sreq = speech.sentence(sentence.text, f"{self.report.request_id}-{sentence.utterance + 1}")
        if state.prepare_hooks:
            state.pm.hook.prepare_request(request=sreq, settings=state.settings)
        router = state.router
        step = segment_synthesizer(router, sreq, priority=speech.priority, deadline=router.deadline(sreq),
                                   cache=speech.cache)
        return await step(sentence.index, sentence.text)

    # -- timeouts --------------------------------------------------------------------------------------------

    def _wait(self, opened: float) -> float:
        """Seconds until the next timeout may be due (at most ``CHECK_INTERVAL_S``)."""
        now = time.perf_counter()
        if self.speech is None:
            return max(0.0, opened + self.limits.config_timeout - now)
        due = self.cutter.due() if self.cutter is not None else None
        wait = CHECK_INTERVAL_S if due is None else due - now
        return max(0.0, min(wait, CHECK_INTERVAL_S, self._touched + self.limits.idle_timeout - now))

    def _timeouts(self, opened: float) -> None:
        now = time.perf_counter()
        if self.speech is None:
            if now >= opened + self.limits.config_timeout:
                raise Refusal(f"Timeout waiting for session.config ({self.limits.config_timeout:g} s).",
                              code="config_timeout", close=CloseCode.POLICY, outcome="timeout")
            return
        assert self.cutter is not None
        due = self.cutter.due()
        if due is not None and now >= due:
            self._add(self.cutter.cut_held())
        self._check_stall(now)
        if self._send_since is None and self.pipeline.idle and now - self._touched >= self.limits.idle_timeout:
            raise Refusal(f"Idle timeout: no message received for {self.limits.idle_timeout:g} s.",
                          code="idle_timeout", close=CloseCode.POLICY, outcome="timeout")

    def _check_stall(self, now: float) -> None:
        if self._send_since is not None and now - self._send_since >= self.limits.idle_timeout:
            raise Refusal(f"The client read no audio for {self.limits.idle_timeout:g} s.", code="client_not_reading",
                          close=CloseCode.POLICY, outcome="timeout")

    # -- sending ---------------------------------------------------------------------------------------------

    async def _deliver(self) -> None:
        """The sender: each item in order, as soon as it and all before it are ready."""
        while True:
            item = await self.pipeline.next()
            if isinstance(item, UtteranceEnd):
                self._heard.pop(item.utterance, None)
                async with self._lock:
                    await self._send_json(session_done(item.utterance, item.sentences))
            else:
                await self._deliver_sentence(item)
            self.pipeline.delivered(item)
            self._touched = time.perf_counter()

    async def _deliver_sentence(self, sentence: Sentence) -> None:
        await sentence.started.wait()
        assert sentence.task is not None
        await asyncio.wait({sentence.task})
        speech, model, metrics = sentence.speech, sentence.speech.model, self.state.metrics
        where = {"utterance_index": sentence.utterance, "sentence_index": sentence.index}
        try:
            segment = sentence.task.result()
            audio = await encode_sentence(segment.pcm, segment.sample_rate, speech.fmt)
        except Exception as exc:  # noqa: BLE001 - the sentence fails, the session goes on (vllm-omni's way)
            metrics.realtime_segments.labels(model, "failed").inc()
            self.report.failed += 1
            status, message, _, param, code, _ = describe(exc)
            if status >= 500 and not isinstance(exc, SpeechRouterError):
                log.error("realtime session %s: sentence %d.%d failed", self.report.request_id, sentence.utterance,
                          sentence.index, exc_info=exc)
            async with self._lock:
                await self._send_json(audio_start(sentence.utterance, sentence.index, sentence.text, speech.fmt,
                                                  24000))
                await self._send_json(error_event(message, code or "error", param, **where))
                await self._send_json(audio_done(sentence.utterance, sentence.index, 0, True))
            return
        self._account(sentence, segment)
        heard = self._heard.get(sentence.utterance)
        async with self._lock:
            await self._send_json(audio_start(sentence.utterance, sentence.index, sentence.text, speech.fmt,
                                              audio.sample_rate))
            for number, frame in enumerate(audio.frames()):
                await self._send(frame)
                if number == 0 and heard is not None:
                    self._heard_now(heard, model, audio.seconds)
            await self._send_json(audio_done(sentence.utterance, sentence.index, len(audio.data), False))
        self.report.bytes += len(audio.data)
        self.report.audio_seconds += audio.seconds

    def _account(self, sentence: Sentence, segment: SegmentAudio) -> None:
        outcome = "cached" if segment.cached else "ok"
        self.state.metrics.realtime_segments.labels(sentence.speech.model, outcome).inc()
        self.report.sentences += 1
        self.report.attempts += segment.attempts
        if segment.endpoint is not None:
            self.report.endpoints.add(segment.endpoint.name)

    def _heard_now(self, heard: _Heard, model: str, seconds: float) -> None:
        """The first frame of a sentence went out: time to first audio, or the gap before it."""
        now = time.perf_counter()
        metrics = self.state.metrics
        first = heard.playback.end is None
        gap = heard.playback.play(now, seconds)
        if first:
            waited = max(0.0, now - heard.first_complete_at)
            metrics.realtime_first_audio.labels(model).observe(waited)
            if self.report.first_audio_s is None:
                self.report.first_audio_s = waited
        else:
            metrics.realtime_gap.labels(model).observe(gap)
            self.report.max_gap_s = max(self.report.max_gap_s, gap)

    async def _send_error(self, exc: RequestInvalid) -> None:
        """A client's mistake as an error event (sent when the client reads, within ``idle_timeout``)."""
        try:
            async with asyncio.timeout(self.limits.idle_timeout):
                async with self._lock:
                    await self._send_json(error_event(exc.message, exc.code, exc.param))
        except TimeoutError:
            raise Refusal(f"The client read nothing for {self.limits.idle_timeout:g} s.", code="client_not_reading",
                          close=CloseCode.POLICY, outcome="timeout") from None

    async def _send_json(self, event: dict[str, object]) -> None:
        await self._send(dumps(event))

    async def _send(self, data: str | bytes) -> None:
        self._send_since = time.perf_counter()
        try:
            if isinstance(data, bytes):
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_text(data)
        except (WebSocketDisconnect, RuntimeError, OSError):
            raise ClientGone from None
        finally:
            self._send_since = None

    # -- ending ----------------------------------------------------------------------------------------------

    async def _drain(self, sender: asyncio.Task[None]) -> None:
        """``session.close``: deliver every sentence cut so far (text not cut yet is dropped, as vllm-omni does)."""
        drained = asyncio.ensure_future(self.pipeline.drained())
        try:
            while not drained.done():
                done, _ = await asyncio.wait({drained, sender}, timeout=CHECK_INTERVAL_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                if sender in done:
                    self._sender_ended(sender)
                self._check_stall(time.perf_counter())
        finally:
            drained.cancel()

    def _sender_ended(self, sender: asyncio.Task[None]) -> None:
        exc = sender.exception() if not sender.cancelled() else None
        if isinstance(exc, ClientGone):
            raise ClientGone
        log.error("realtime session %s: the sender failed", self.report.request_id, exc_info=exc)
        raise Refusal("Internal error in the router (logged with the request id).", code="internal_error",
                      close=CloseCode.INTERNAL, outcome="error")

    async def _stop(self, sender: asyncio.Task[None]) -> None:
        """Stop sending and cancel every sentence still running (idempotent)."""
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await self.pipeline.aclose()

    async def _farewell(self, event: dict[str, object] | None, code: CloseCode, reason: str) -> None:
        await farewell(self.ws, event, code, reason)


async def farewell(ws: WebSocket, event: dict[str, object] | None, code: CloseCode, reason: str) -> None:
    """The last event and the close, if the client takes them within ``FAREWELL_TIMEOUT_S``."""
    with contextlib.suppress(TimeoutError, RuntimeError, WebSocketDisconnect, OSError):
        async with asyncio.timeout(FAREWELL_TIMEOUT_S):
            if event is not None:
                await ws.send_text(dumps(event))
            await ws.close(int(code), reason)


def dumps(event: dict[str, object]) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


class _Heard:
    """What the listener of one utterance has heard: for time to first audio and the gaps."""

    def __init__(self, first_complete_at: float) -> None:
        self.first_complete_at = first_complete_at
        self.playback = Playback()
