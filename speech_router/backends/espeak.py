"""Backend type ``espeak``: libespeak-ng in process, the CPU engine the router serves with no config.

libespeak-ng keeps global state and is not thread-safe, so every call (init, voice, rate, synth) runs
on one worker thread shared by all ``EspeakBackend`` objects, never on the event loop; the engine is
initialised once per process. The worker pushes each buffer onto the request's asyncio queue as
espeak makes it, so audio streams; it never waits for the consumer, so a slow client cannot hold
the engine. Closing the stream early makes the synth callback abort at its next buffer.

Languages: a text is read run by run, each by a voice of its language (``espeak_voices``), so Chinese text
sent with an English voice is Chinese speech.

Speed: espeak's rate is ``round(175 * speed)`` words per minute. espeak cannot go below 80 wpm (it
silently plays slower requests at 80), so speeds under ~0.46 are made at 80 wpm and lengthened by
sonic, the pitch-keeping time scaler libespeak-ng embeds for its own rates above 450 wpm. Where the
library does not export sonic (the Windows DLL), such speeds are refused, never clamped.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import sys
import threading
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import BackendFailed, BackendRejected, BackendUnavailable, RequestInvalid
from ..plugins.hookspecs import RegisterBackend, hookimpl
from ..types import AudioResponse, HealthReport, SynthesisRequest
from .base import Backend, Capabilities
from .espeak_lib import EE_OK, RATE_MINIMUM, RATE_NORMAL, Engine, EngineUnavailable
from .espeak_voices import plan

DEFAULT_VOICE = "en-us"

_DONE = object()
_STARTED = object()

# Process-wide: one thread, one engine (or the reason there is none). Touched only on the worker.
_executor: ThreadPoolExecutor | None = None
_executor_pid = 0
_engine: Engine | None = None
_engine_error: str | None = None


def _worker() -> ThreadPoolExecutor:
    """The single thread that owns libespeak-ng; made lazily, and again in a forked child."""
    global _executor, _executor_pid
    if _executor is None or _executor_pid != os.getpid():
        _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="espeak")
        _executor_pid = os.getpid()
    return _executor


def _load() -> Engine | str:
    """Runs on the worker: initialise once, remember success or the reason for failure."""
    global _engine, _engine_error
    if _engine is None and _engine_error is None:
        try:
            _engine = Engine.load()
        except EngineUnavailable as exc:
            _engine_error = str(exc)
        except Exception as exc:  # a broken build (missing symbol...) must not crash the router
            _engine_error = f"{type(exc).__name__}: {exc}"
    return _engine if _engine is not None else str(_engine_error)


def unavailable_message(reason: str) -> str:
    return (
        f"the embedded espeak engine is unavailable on this platform ({sys.platform} {platform.machine()}): "
        f"{reason}; configure a remote pool instead (set TTS_REMOTE_URL or use a config file)"
    )


def plan_rate(speed: float, can_stretch: bool) -> tuple[int, float | None]:
    """The espeak rate (wpm) for ``speed`` and, below espeak's minimum, the sonic speed to apply after."""
    if not (math.isfinite(speed) and speed > 0):
        raise RequestInvalid(f"speed must be a positive number, got {speed!r}", param="speed")
    wpm = round(RATE_NORMAL * speed)
    if wpm >= RATE_MINIMUM:
        return wpm, None
    if can_stretch:
        return RATE_MINIMUM, RATE_NORMAL * speed / RATE_MINIMUM
    lowest = math.ceil((RATE_MINIMUM - 0.5) / RATE_NORMAL * 100) / 100
    raise RequestInvalid(
        f"the espeak backend supports speed {lowest} and above on this platform (espeak's minimum rate is "
        f"{RATE_MINIMUM} words per minute), got {speed}",
        param="speed",
    )


class _Job:
    """One synthesis: made on the event loop, run on the worker, read back through ``queue``.

    ``parts`` are ``(voice, text)`` in order (``espeak_voices.plan``): each is read by its voice, one after
    the other, into one stream.
    """

    def __init__(self, parts: list[tuple[str, str]], wpm: int, stretch: float | None, endpoint: str) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.parts, self.wpm, self.stretch, self.endpoint = parts, wpm, stretch, endpoint

    def cancel(self) -> None:
        self.cancelled.set()

    def put(self, item: object) -> bool:
        """From the worker: hand ``item`` to the loop; False once nobody is listening."""
        if self.cancelled.is_set():
            return False
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed
            self.cancelled.set()
            return False
        return True

    def run(self, engine: Engine) -> None:
        """On the worker. Never raises: failures go to the queue."""
        try:
            self._run(engine)
        except Exception as exc:
            self.put(BackendFailed("espeak synthesis failed", endpoint=self.endpoint, detail=repr(exc)))

    def _run(self, engine: Engine) -> None:
        if self.cancelled.is_set():
            return
        for voice in dict.fromkeys(voice for voice, _ in self.parts):  # every voice exists before a sample is made
            if not engine.set_voice(voice):
                message = f"espeak has no voice {voice!r} (try en-us, en-gb, cmn or a variant like en-us+f3)"
                self.put(BackendRejected(message, endpoint=self.endpoint, status=400))
                return
        self.put(_STARTED)
        stretcher = engine.stretcher(self.stretch) if self.stretch is not None else None

        def on_samples(pcm: bytes) -> bool:
            if stretcher is not None:
                pcm = stretcher.process(pcm)
            return not self.put(pcm) if pcm else self.cancelled.is_set()

        status = EE_OK
        try:
            for voice, text in self.parts:
                if status != EE_OK or self.cancelled.is_set():
                    break
                engine.set_voice(voice)
                engine.set_rate(self.wpm)
                status = engine.synth(text, on_samples)
            if stretcher is not None and not self.cancelled.is_set():
                tail = stretcher.flush()
                if tail:
                    self.put(tail)
        finally:
            if stretcher is not None:
                stretcher.close()
        if status != EE_OK and not self.cancelled.is_set():
            self.put(BackendFailed("espeak synthesis failed", endpoint=self.endpoint, detail=f"status {status}"))
        else:
            self.put(_DONE)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            while True:
                item = await self.queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                yield item
        finally:
            self.cancel()


class EspeakBackend(Backend):
    """The embedded espeak-ng engine: mono 16-bit PCM at the engine's rate (22,050 Hz)."""

    type = "espeak"
    capabilities = Capabilities(
        formats=frozenset({"pcm"}), streaming=True, speed=True, emotion=False, voice_keys=("espeak",), needs_url=False
    )

    class Options(Backend.Options):
        #: the espeak voice for requests whose voice has no ``espeak`` key
        default_voice: str = DEFAULT_VOICE
        #: read each run of Chinese, Japanese, Korean or other text with a voice of its language (the
        #: configured voice's variant kept; see ``espeak_voices``); false: the configured voice reads it all
        detect_language: bool = True

    options: Options  # this type's own keys (``Backend.options``, narrowed)

    def supports_voice(self, voice_params: dict[str, Any]) -> bool:
        """A voice with an ``espeak`` key, or one with no parameters at all (``default_voice`` reads it). A voice
        that names a speaker for another engine (a reference recording, a node's character, an upstream voice)
        is not one espeak can speak: its default voice is no fallback for a cloned voice (issue #22)."""
        return bool(voice_params.get("espeak")) or not voice_params

    async def open(self) -> None:
        await self._engine()

    async def synthesize(self, request: SynthesisRequest) -> AudioResponse:
        text = request.text.strip()
        if not text:
            raise RequestInvalid("input is empty", param="input")
        voice = request.voice_params.get("espeak") or self.options.default_voice
        if not isinstance(voice, str):
            raise BackendRejected(f"the espeak voice must be a name, got {voice!r}", endpoint=self.name, status=400)
        engine = await self._engine()
        wpm, stretch = plan_rate(request.speed, engine.can_stretch)
        parts = plan(text, voice, lang=request.lang, detect=self.options.detect_language)
        job = _Job(parts, wpm, stretch, self.name)
        _worker().submit(job.run, engine)
        try:
            first = await job.queue.get()  # voice accepted, or why not
        except BaseException:
            job.cancel()
            raise
        if isinstance(first, BaseException):
            raise first
        chunks = job.chunks()

        async def close() -> None:
            job.cancel()  # also when iteration never started, so aclose() would not run its finally
            await chunks.aclose()

        return AudioResponse(
            format="pcm", chunks=chunks, sample_rate=engine.sample_rate, content_type="audio/pcm", close=close
        )

    async def health(self) -> HealthReport:
        state = _engine if _engine is not None else await asyncio.wrap_future(_worker().submit(_load))
        if isinstance(state, str):
            return HealthReport(healthy=False, detail=unavailable_message(state))
        data = {"engine": "espeak-ng", "sample_rate": state.sample_rate, "version": state.version}
        return HealthReport(healthy=True, data=data)

    async def _engine(self) -> Engine:
        state = _engine if _engine is not None else await asyncio.wrap_future(_worker().submit(_load))
        if isinstance(state, str):
            raise BackendUnavailable(unavailable_message(state), endpoint=self.name, detail=state)
        return state

    def __repr__(self) -> str:
        voice = self.options.default_voice
        return f"EspeakBackend(name={self.name!r}, default_voice={voice!r})"


@hookimpl(trylast=True)
def register_backends(register: RegisterBackend) -> None:
    register(EspeakBackend)
