"""One realtime session: text in from the client, sentences out to the fleet, audio back in order.

Two tasks share the connection. The reader (``run``) takes the client's messages, cuts the text into sentences
(``TextCutter``) and hands them to the ``Pipeline``, which starts each on the fleet as soon as it is cut; the
sender (``outbox.Sender``) takes them back in order and sends ``audio.start``, the audio and ``audio.done`` per
sentence and ``session.done`` per utterance. Every send goes through one ``Outbox``.

Timeouts: the first ``session.config`` within ``config_timeout``; then the session is idle, and closed, when
nothing is left to deliver and the client sent nothing for ``idle_timeout``, or when a send has waited
``idle_timeout`` for a client that does not read. A client that leaves cancels every sentence still running
(their node requests are cancelled and their endpoint slots come back).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.types import Message
from starlette.websockets import WebSocket

from ..api.speech import shared_voice
from ..api.state import AppState
from ..errors import RequestInvalid
from ..fanout import SegmentAudio, segment_synthesizer
from .outbox import ClientGone, Outbox, Sender
from .pipeline import Pipeline, Sentence, UtteranceEnd
from .protocol import CloseCode, Refusal, decode, error_event, input_text, session_config
from .report import SessionReport
from .request import SessionSpeech, session_speech
from .text import Cut, TextCutter

log = logging.getLogger("speech_router.realtime")

#: the reader looks at the timeouts at least this often
CHECK_INTERVAL_S = 1.0


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
        self.outbox = Outbox(ws)
        self.sender = Sender(self.outbox, self.pipeline, state.metrics, report)
        self._received = time.perf_counter()  # the last message in
        self._sending: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Session({self.report.request_id!r}, utterance={self.utterance}, {self.pipeline!r})"

    async def run(self) -> None:
        sending = self._sending = asyncio.ensure_future(self.sender.run())
        try:
            if await self._read():
                await self._drain(sending)
                self.report.outcome, self.report.close_code = "closed", CloseCode.NORMAL
                await self.outbox.farewell(None, CloseCode.NORMAL, "session.close")
        except Refusal as refusal:
            await self._stop(sending)
            self.report.outcome, self.report.close_code = refusal.outcome, refusal.close
            event = error_event(refusal.message, refusal.code, refusal.param)
            await self.outbox.farewell(event, refusal.close, refusal.code)
        except ClientGone:
            self.report.outcome = "client_left"
        finally:
            await self._stop(sending)

    # -- reading ---------------------------------------------------------------------------------------------

    async def _read(self) -> bool:
        """Handle messages until ``session.close`` (True); raises ``Refusal`` or ``ClientGone`` otherwise."""
        assert self._sending is not None
        opened = time.perf_counter()
        receiving: asyncio.Future[Message] | None = None
        try:
            while True:
                if receiving is None:
                    receiving = asyncio.ensure_future(self.ws.receive())
                watched: set[asyncio.Future[Any]] = {receiving, self._sending}
                done, _ = await asyncio.wait(watched, timeout=self._wait(opened), return_when=asyncio.FIRST_COMPLETED)
                if self._sending in done:
                    self._sender_ended(self._sending)
                if receiving not in done:
                    self._timeouts(opened)
                    continue
                message, receiving = receiving.result(), None
                if message["type"] == "websocket.disconnect":
                    raise ClientGone
                self._received = time.perf_counter()
                if await self._handle(message):
                    return True
        finally:
            if receiving is not None:
                receiving.cancel()

    async def _handle(self, message: Message) -> bool:
        """One message; True for ``session.close``. A client's mistake gets an error event, the session goes on."""
        try:
            data = decode(message, self.limits.max_message_bytes, configured=self.speech is not None)
            kind = data["type"]
            if kind == "session.close":
                return True
            if kind == "session.config":
                await self._configure(data)
            elif kind == "input.text":
                self._text(input_text(data))
            else:
                self._done()
        except RequestInvalid as exc:
            await self._send_error(exc)
        return False

    async def _configure(self, data: dict[str, object]) -> None:
        if self.in_utterance:
            raise RequestInvalid("session.config cannot be applied while an utterance is in progress; send "
                                 "input.done first.", param="type", code="utterance_in_progress")
        try:
            config = session_config(data)
            for name in (config.voice, config.emotion.audio if config.emotion is not None else None):
                if name:
                    await shared_voice(self.state, name)  # a voice uploaded through another replica
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
        self._check_buffer(len(text))
        self.in_utterance = True
        self.report.chars += len(text)
        self._add(self.cutter.feed(text, time.perf_counter()))

    def _check_buffer(self, more: int) -> None:
        assert self.cutter is not None
        waiting = self.pipeline.buffered_chars + self.cutter.buffered + more
        limit = self.limits.max_buffered_chars
        if waiting > limit:
            raise Refusal(f"Too much text waiting: {waiting} characters received and not yet spoken, at most "
                          f"{limit} (server.realtime.max_buffered_chars). Read the audio as it comes.",
                          code="buffer_full", close=CloseCode.POLICY, outcome="buffer_full")

    def _done(self) -> None:
        assert self.cutter is not None
        self._check_buffer(1)
        self._add(self.cutter.flush())
        self.pipeline.add(UtteranceEnd(self.utterance, self.sentences))
        self.report.utterances += 1
        self.utterance, self.sentences, self.in_utterance = self.utterance + 1, 0, False
        self.cutter = self._new_cutter()

    def _add(self, cuts: list[Cut]) -> None:
        assert self.speech is not None
        for cut in cuts:
            self.sender.utterance_started(self.utterance, cut.complete_at)
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
        return max(0.0, min(wait, CHECK_INTERVAL_S, self._quiet_since() + self.limits.idle_timeout - now))

    def _quiet_since(self) -> float:
        """The last sign of life: a message in, or an item the client took."""
        return max(self._received, self.sender.delivered_at)

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
        idle = self.outbox.waiting_since is None and self.pipeline.idle
        if idle and now - self._quiet_since() >= self.limits.idle_timeout:
            raise Refusal(f"Idle timeout: no message received for {self.limits.idle_timeout:g} s.",
                          code="idle_timeout", close=CloseCode.POLICY, outcome="timeout")

    def _check_stall(self, now: float) -> None:
        since = self.outbox.waiting_since
        if since is not None and now - since >= self.limits.idle_timeout:
            raise Refusal(f"The client read no audio for {self.limits.idle_timeout:g} s.", code="client_not_reading",
                          close=CloseCode.POLICY, outcome="timeout")

    async def _send_error(self, exc: RequestInvalid) -> None:
        """A client's mistake as an error event (sent when the client reads, within ``idle_timeout``)."""
        try:
            async with asyncio.timeout(self.limits.idle_timeout):
                async with self.outbox.held():
                    await self.outbox.event(error_event(exc.message, exc.code, exc.param))
        except TimeoutError:
            raise Refusal(f"The client read nothing for {self.limits.idle_timeout:g} s.", code="client_not_reading",
                          close=CloseCode.POLICY, outcome="timeout") from None

    # -- ending ----------------------------------------------------------------------------------------------

    async def _drain(self, sending: asyncio.Task[None]) -> None:
        """``session.close``: deliver every sentence cut so far (text not cut yet is dropped, as vllm-omni does)."""
        drained = asyncio.ensure_future(self.pipeline.drained())
        try:
            while not drained.done():
                done, _ = await asyncio.wait({drained, sending}, timeout=CHECK_INTERVAL_S,
                                             return_when=asyncio.FIRST_COMPLETED)
                if sending in done:
                    self._sender_ended(sending)
                self._check_stall(time.perf_counter())
        finally:
            drained.cancel()

    def _sender_ended(self, sending: asyncio.Task[None]) -> None:
        exc = sending.exception() if not sending.cancelled() else None
        if isinstance(exc, ClientGone):
            raise ClientGone
        log.error("realtime session %s: the sender failed", self.report.request_id, exc_info=exc)
        raise Refusal("Internal error in the router (logged with the request id).", code="internal_error",
                      close=CloseCode.INTERNAL, outcome="error")

    async def _stop(self, sending: asyncio.Task[None]) -> None:
        """Stop sending and cancel every sentence still running (idempotent)."""
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        await self.pipeline.aclose()
