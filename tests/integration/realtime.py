"""A realtime-speech client for the tests (the ``websockets`` library, as users' clients are): connect, send text
as an LLM would, and read back what the router (or a vllm-omni node) says, checked for the protocol's order."""

from __future__ import annotations

import asyncio
import io
import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from speech_router.emulator import audio

PATH = "/v1/audio/speech/stream"
#: how long a test waits for any one message before it fails (tests assert order, never time)
RECV_TIMEOUT_S = 15.0


def stream_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://", 1) + PATH


@dataclass
class Heard:
    """One sentence as received: its ``audio.start``, the bytes of its binary frames, its ``audio.done``."""

    start: dict[str, Any]
    audio: bytes = b""
    frames: int = 0
    done: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return str(self.start["sentence_text"])

    def samples(self) -> tuple[np.ndarray, int]:
        """The sentence decoded (any format soundfile reads; pcm by the rate audio.start gives)."""
        if self.start["format"] == "pcm":
            return np.frombuffer(self.audio, dtype="<i2"), int(self.start["sample_rate"])
        data, rate = sf.read(io.BytesIO(self.audio), dtype="int16")
        return data, rate


@dataclass
class Utterance:
    sentences: list[Heard]
    done: dict[str, Any]
    errors: list[dict[str, Any]]


async def open_session(url: str, config: dict[str, Any] | None = None, **connect_args: Any) -> ClientConnection:
    """A connection with its ``session.config`` sent (voice alloy, wav, unless ``config`` says otherwise)."""
    ws = await connect(stream_url(url), open_timeout=RECV_TIMEOUT_S, **connect_args)
    await send(ws, {"type": "session.config", "voice": "alloy", "response_format": "wav", **(config or {})})
    return ws


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def send_tokens(ws: ClientConnection, text: str, done: bool = True) -> None:
    """``text`` word by word, each word its own ``input.text`` (as an LLM streams tokens), then ``input.done``."""
    words = text.split(" ")
    for i, word in enumerate(words):
        await send(ws, {"type": "input.text", "text": word if i == 0 else " " + word})
    if done:
        await send(ws, {"type": "input.done"})


async def receive(ws: ClientConnection) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S)


async def next_event(ws: ClientConnection) -> dict[str, Any]:
    """The next JSON event (a binary frame here fails the test)."""
    message = await receive(ws)
    assert isinstance(message, str), f"expected an event, got {len(message)} bytes of audio"
    event: dict[str, Any] = json.loads(message)
    return event


async def next_sentence(ws: ClientConnection) -> Heard:
    """The next sentence: ``audio.start``, its frames, ``audio.done`` (nothing else in between)."""
    start = await next_event(ws)
    assert start["type"] == "audio.start", start
    heard = Heard(start)
    while isinstance(message := await receive(ws), bytes):
        heard.audio += message
        heard.frames += 1
    heard.done = json.loads(message)
    assert heard.done["type"] == "audio.done", heard.done
    return heard


async def utterance(ws: ClientConnection, heard: int = 0) -> Utterance:
    """Everything up to ``session.done``, checked for the protocol's shape: per sentence ``audio.start``, binary
    frames, ``audio.done`` (errors in between), sentences in order (``heard`` of them were read already)."""
    sentences: list[Heard] = []
    errors: list[dict[str, Any]] = []
    current: Heard | None = None
    while True:
        message = await receive(ws)
        if isinstance(message, bytes):
            assert current is not None, "audio outside audio.start ... audio.done"
            current.audio += message
            current.frames += 1
            continue
        event = json.loads(message)
        kind = event["type"]
        if kind == "audio.start":
            assert current is None, f"audio.start inside sentence {current.start}"
            assert event["sentence_index"] == heard + len(sentences), (event, [s.text for s in sentences])
            current = Heard(event)
        elif kind == "audio.done":
            assert current is not None and event["sentence_index"] == current.start["sentence_index"], event
            assert event["utterance_index"] == current.start["utterance_index"]
            current.done = event
            sentences.append(current)
            current = None
        elif kind == "error":
            (current.errors if current is not None else errors).append(event)
        elif kind == "session.done":
            assert current is None, event
            assert event["total_sentences"] == heard + len(sentences), (event, len(sentences))
            return Utterance(sentences, event, errors)
        else:
            raise AssertionError(f"unexpected event {event}")


async def closed(ws: ClientConnection) -> tuple[int | None, list[dict[str, Any]]]:
    """Read until the router closes: its close code and the events before it (audio is skipped)."""
    events: list[dict[str, Any]] = []
    try:
        while True:
            message = await receive(ws)
            if isinstance(message, str):
                events.append(json.loads(message))
    except ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd is not None else None), events


def spoken(sentences: list[Heard]) -> str:
    return " ".join(s.text for s in sentences)


#: the receive buffer of the tests' slow readers (small, so that what the kernel holds stays small)
RCVBUF = 64 * 1024


def buffered_sentences(sentence: str) -> int:
    """How many sentences like ``sentence`` (emulated index-tts-vllm WAVs) the sockets between the router and a
    reader with ``RCVBUF`` can hold, plus the two processes' buffers: the router synthesizing more than that (and
    its own ``max_buffered_segments``) ahead of a client that reads nothing would be the router's fault."""
    try:
        wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        wmem_max = 4 * 1024 * 1024
    held = wmem_max + 2 * RCVBUF + 2 * 1024 * 1024  # the router's socket, the client's (doubled), user space
    return held // (2 * round(audio.duration_s(sentence) * audio.INDEX_TTS_RATE))


async def fetch_metrics(url: str) -> str:
    def get() -> str:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
            return str(resp.read().decode())

    return await asyncio.to_thread(get)
