"""One sentence's audio as the client asked for it, in frames, and the listener's clock for the gap metric.

Each sentence is a whole file of its own in the session's ``response_format`` (a WAV with its real sizes, an
mp3, ...), so any one sentence decodes alone; ``pcm`` is raw 24 kHz s16le, as OpenAI's and the router's HTTP
``pcm`` are (``audio.start`` says the rate). The bytes go out as binary frames of at most ``FRAME_BYTES``
(a client concatenates the frames between ``audio.start`` and ``audio.done``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..audio.encode import encode_all
from ..audio.formats import output_rate

#: the largest binary message sent (clients' default limits are 1 MiB; smaller frames also keep backpressure fine)
FRAME_BYTES = 64 * 1024
#: formats cheap enough to encode on the event loop
_INLINE = frozenset({"pcm", "wav"})


@dataclass(frozen=True)
class SentenceAudio:
    data: bytes
    sample_rate: int
    seconds: float

    def frames(self) -> list[bytes]:
        return [self.data[i:i + FRAME_BYTES] for i in range(0, len(self.data), FRAME_BYTES)]


async def encode_sentence(pcm: bytes, rate: int, fmt: str) -> SentenceAudio:
    """Mono int16 ``pcm`` at ``rate`` as a whole file in ``fmt`` (codecs other than pcm and wav in a thread)."""
    seconds = len(pcm) / 2 / rate
    if fmt in _INLINE:
        data = encode_all(pcm, rate, fmt)
    else:
        data = await asyncio.to_thread(encode_all, pcm, rate, fmt)
    return SentenceAudio(data, output_rate(fmt, rate, None), seconds)


class Playback:
    """Where a listener who plays each sentence as soon as it arrives, back to back, would be in the utterance.

    ``play`` returns the silence heard before a sentence (0 when it arrived before the one before it ended).
    """

    def __init__(self) -> None:
        self.end: float | None = None  # when the audio delivered so far ends playing

    def play(self, arrived: float, seconds: float) -> float:
        gap = 0.0 if self.end is None else max(0.0, arrived - self.end)
        self.end = max(arrived, self.end or arrived) + seconds
        return gap
