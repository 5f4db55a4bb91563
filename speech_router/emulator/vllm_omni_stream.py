"""The emulated vllm-omni node's streaming-text WebSocket, ``/v1/audio/speech/stream`` (serving_speech_stream.py).

As the real handler does it: the first message must be ``session.config`` (within 10 s; an invalid one, a
non-JSON message or another type first gets an ``error`` and the connection closes); ``input.text`` chunks are
cut into sentences (``split_granularity``: sentence by default, clause, or none = only at ``input.done``) and
**each sentence is generated inside the reading loop**, one after another on this one node, before the next
message is read; ``input.done`` flushes the rest and ends the utterance with ``session.done`` (the connection
stays); ``session.config`` again between utterances; ``session.close`` closes. Per sentence: ``audio.start``,
the whole file in one binary frame (``stream_audio`` with pcm: the pieces as generated, and ``audio.start``
then carries the rate), ``audio.done`` with ``total_bytes`` and ``error``. After a valid config errors keep the
connection. Messages over 4 MiB (config) or 128 KiB (others) are refused; 30 s without a message closes it.
Audio is the node's 22,050 Hz, as its HTTP answers are.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from speech_router.emulator import audio
from speech_router.emulator.state import EmulatorState
from speech_router.emulator.vllm_omni_request import OmniError, SpeechFormat
from speech_router.emulator.vllm_omni_speech import RATE, EngineError, accept, generate, node_config

CONFIG_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_TEXT_BYTES = 128 * 1024
_ENDS = {"sentence": re.compile(r"[。！？]|[.!?](?=\s)"), "clause": re.compile(r"[。！？，；、]|[.!?,;:](?=\s)")}


class StreamConfig(BaseModel):
    """``StreamingSpeechSessionConfig``, the fields IndexTTS reads (unknown ones are dropped)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    voice: str | None = Field(None, validation_alias=AliasChoices("voice", "speaker"))
    ref_audio: str | None = None
    response_format: SpeechFormat = "wav"
    speed: float | None = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None
    split_granularity: Literal["none", "sentence", "clause"] = "sentence"
    stream_audio: bool = False
    word_timestamps: bool = False
    extra_params: dict[str, Any] | None = None


class _Splitter:
    def __init__(self, granularity: str) -> None:
        self.end = _ENDS.get(granularity)
        self.text = ""

    def feed(self, text: str) -> list[str]:
        self.text += text
        out: list[str] = []
        while self.end is not None and (match := self.end.search(self.text)) is not None:
            unit, self.text = self.text[:match.end()].strip(), self.text[match.end():]
            if unit:
                out.append(unit)
        return out

    def flush(self) -> list[str]:
        unit, self.text = self.text.strip(), ""
        return [unit] if unit else []


async def stream(ws: WebSocket) -> None:
    """One connection: any number of utterances, until ``session.close``, a timeout or the client leaves."""
    await ws.accept()
    session = _Session(ws)
    try:
        await session.run()
    except WebSocketDisconnect:
        return


class _Session:
    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.state: EmulatorState = ws.app.state.emulator
        self.config: StreamConfig | None = None
        self.splitter = _Splitter("sentence")
        self.utterance = self.sentence = 0
        self.open = False

    async def run(self) -> None:
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel of a stopping server
                async with asyncio.timeout(CONFIG_TIMEOUT_S if self.config is None else IDLE_TIMEOUT_S):
                    message = await self.ws.receive()
            except TimeoutError:
                await self._error("Timeout waiting for session.config" if self.config is None
                                  else "Idle timeout: no message received")
                await self.ws.close()
                return
            if message["type"] == "websocket.disconnect":
                return
            msg = await self._parse(message)
            if msg is None:
                if self.config is None:
                    await self.ws.close()
                    return
                continue
            if not await self._handle(msg):
                return

    async def _parse(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        raw = message.get("text")
        if raw is None:
            await self._error("WebSocket messages must be text")
            return None
        if len(raw) > MAX_CONFIG_BYTES:
            await self._error("WebSocket message too large")
            return None
        try:
            msg = json.loads(raw)
        except ValueError:
            await self._error("Invalid JSON message")
            return None
        if not isinstance(msg, dict):
            await self._error("WebSocket messages must be JSON objects")
            return None
        if msg.get("type") != "session.config" and len(raw) > MAX_TEXT_BYTES:
            await self._error("input.text message too large")
            return None
        return msg

    async def _handle(self, msg: dict[str, Any]) -> bool:
        """One message; False when the connection is over."""
        kind = msg.get("type")
        if kind == "session.config":
            if self.open:
                await self._error("session.config cannot be applied while an utterance is in progress; send "
                                  "input.done first")
                return True
            config = await self._config(msg)
            if config is None:
                return self.config is not None
            self.config, self.splitter = config, _Splitter(config.split_granularity)
        elif self.config is None:
            await self._error(f"Expected session.config, got: {kind}")
            await self.ws.close()
            return False
        elif kind == "input.text":
            text = msg.get("text", "")
            if not isinstance(text, str):
                await self._error("input.text requires a string value")
                return True
            self.open = self.open or bool(text)
            for unit in self.splitter.feed(text):
                await self._sentence(unit)
        elif kind == "input.done":
            for unit in self.splitter.flush():
                await self._sentence(unit)
            await self.ws.send_json({"type": "session.done", "utterance_index": self.utterance,
                                     "total_sentences": self.sentence})
            self.utterance, self.sentence, self.open = self.utterance + 1, 0, False
        elif kind == "session.close":
            await self.ws.close()
            return False
        else:
            await self._error(f"Unknown message type: {kind}")
        return True

    async def _config(self, msg: dict[str, Any]) -> StreamConfig | None:
        try:
            config = StreamConfig.model_validate({k: v for k, v in msg.items() if k != "type"})
        except ValidationError as exc:
            await self._error(f"Invalid session config: {exc}")
            return None
        if config.stream_audio and config.response_format != "pcm":
            await self._error("Invalid session config: WebSocket streaming audio (stream_audio=true) requires "
                              f"response_format='pcm'. Got response_format='{config.response_format}'.")
            return None
        served = node_config(self.state).model
        if config.model is not None and config.model != served:
            await self._error(f"The model `{config.model}` does not exist.")
            return None
        return config

    async def _sentence(self, text: str) -> None:
        """Generate one sentence and send it: ``audio.start``, the audio, ``audio.done`` (paired even on failure)."""
        config = self.config
        assert config is not None
        start = {"type": "audio.start", "utterance_index": self.utterance, "sentence_index": self.sentence,
                 "sentence_text": text, "format": config.response_format}
        streamed = config.stream_audio and config.response_format == "pcm"
        if streamed:
            start.update(sample_rate=RATE, channels=1)
        await self.ws.send_json(start)
        sent, failed = 0, False
        try:
            sent = await self._generate(config, text, streamed)
        except (OmniError, EngineError) as exc:
            failed = True
            await self._error(f"Generation failed for utterance {self.utterance}, sentence {self.sentence}: {exc}",
                              partial=sent > 0)
        await self.ws.send_json({"type": "audio.done", "utterance_index": self.utterance,
                                 "sentence_index": self.sentence, "total_bytes": sent, "error": failed})
        self.sentence += 1

    async def _generate(self, config: StreamConfig, text: str, streamed: bool) -> int:
        body = {"input": text, "model": config.model, "voice": config.voice, "ref_audio": config.ref_audio,
                "response_format": config.response_format, "speed": config.speed,
                "extra_params": config.extra_params}
        app_state = self.ws.app.state
        plan = await accept({k: v for k, v in body.items() if v is not None}, node_config(self.state),
                            app_state.voices, app_state.speakers)
        self.state.in_flight += 1
        try:
            await generate(self.state, plan)
        finally:
            self.state.in_flight -= 1
        data = audio.encode(audio.render(plan.text, plan.voice, RATE, plan.speed), RATE, plan.format)
        pieces = [data]
        if streamed:
            size = -(-len(data) // max(1, node_config(self.state).chunks))
            pieces = [data[i:i + size] for i in range(0, len(data), size)]
        for piece in pieces:
            await self.ws.send_bytes(piece)
        self.state.served += 1
        return len(data)

    async def _error(self, message: str, partial: bool = False) -> None:
        payload: dict[str, object] = {"type": "error", "message": message}
        if partial:
            payload.update(partial_audio=True, action="discard")
        await self.ws.send_json(payload)
