"""The realtime benchmark's client: an LLM's answer sent token by token at a fixed rate over one WebSocket, and
what a listener who plays each sentence as it arrives would hear (``bench.realtime``).

Tokens are words and punctuation marks (an LLM sends "today" and "." apart), each sent at its scheduled time
(open loop: a slow server does not slow the writer). For each sentence the server announces (``audio.start``'s
``sentence_text``) the client knows when the token that ended it was sent, when its audio arrived (the first
binary frame) and how long it plays (the WAV's frames), so it can say:

- time to first audio: the first sentence's audio arrived this long after its last token was sent;
- gaps: the listener starts the first sentence when it arrives and each next one when both it has arrived and
  the one before has finished playing; a gap is the silence before a sentence that arrived late.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import soundfile as sf
from websockets.asyncio.client import connect

_TOKEN = re.compile(r"\s*[\w'’-]+|\s*[^\w\s]")
TIMEOUT_S = 120.0


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


@dataclass
class Heard:
    text: str
    ended: float  # when the token that completed the sentence was sent
    arrived: float = 0.0
    seconds: float = 0.0
    error: bool = False


@dataclass
class Stream:
    """One session's result."""

    sentences: list[Heard] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def first_audio(self) -> float:
        return self.sentences[0].arrived - self.sentences[0].ended if self.sentences else float("nan")

    def gaps(self) -> list[float]:
        """The silence before each sentence after the first, for a listener playing as the audio arrives."""
        out, end = [], None
        for sentence in self.sentences:
            if end is not None:
                out.append(max(0.0, sentence.arrived - end))
            end = max(sentence.arrived, end or sentence.arrived) + sentence.seconds
        return out

    def playback_s(self) -> float:
        return sum(s.seconds for s in self.sentences)


async def stream(url: str, config: dict[str, Any], text: str, rate: float) -> Stream:
    """Send ``text`` at ``rate`` tokens a second after ``config``, then ``input.done``; read until ``session.done``."""
    parts = tokens(text)
    sent_at: list[float] = []  # send time of each token
    ends: list[int] = []  # non-space characters up to the end of each token
    count = 0
    for part in parts:
        count += len(re.sub(r"\s", "", part))
        ends.append(count)
    result = Stream()
    async with connect(url, max_size=None, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "session.config", **config}))

        async def write() -> None:
            t0 = time.perf_counter()
            for i, part in enumerate(parts):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent_at.append(time.perf_counter())
                await ws.send(json.dumps({"type": "input.text", "text": part}))
            await ws.send(json.dumps({"type": "input.done"}))

        writer = asyncio.create_task(write())
        try:
            await asyncio.wait_for(_read(ws, result, sent_at, ends), TIMEOUT_S)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        await ws.send(json.dumps({"type": "session.close"}))
    return result


async def _read(ws: Any, result: Stream, sent_at: list[float], ends: list[int]) -> None:
    spoken = 0  # non-space characters of the sentences announced so far
    current: Heard | None = None
    audio = b""
    while True:
        message = await ws.recv()
        now = time.perf_counter()
        if isinstance(message, bytes):
            assert current is not None
            if not audio:
                current.arrived = now
            audio += message
            continue
        event = json.loads(message)
        kind = event["type"]
        if kind == "audio.start":
            spoken += len(re.sub(r"\s", "", event["sentence_text"]))
            token = next((i for i, end in enumerate(ends) if end >= spoken), len(ends) - 1)
            current, audio = Heard(event["sentence_text"], sent_at[min(token, len(sent_at) - 1)]), b""
        elif kind == "audio.done":
            assert current is not None
            current.error = bool(event.get("error"))
            if audio:
                current.seconds = sf.info(io.BytesIO(audio)).duration
            else:
                current.arrived = now
            result.sentences.append(current)
            current = None
        elif kind == "error":
            result.errors.append(str(event.get("message")))
        elif kind == "session.done":
            return
