"""How long an emulated IndexTTS2 node works on a text, and how much audio it sends back.

A real index-tts-vllm v2 node (`IndexTTS2.infer`) tokenizes the text, cuts it at sentence ends, merges
neighbouring sentences while together they stay within `max_text_tokens_per_sentence` (120 tokens), and
then synthesizes those pieces one after another on its GPU (GPT codes, one GPT forward pass, 25 s2mel
diffusion steps over the reference prompt plus the piece, BigVGAN), joined by 200 ms of silence. So each
piece costs a fixed part (the prompt-sized work that every piece repeats) plus a part that grows with
the audio it makes, and the audio grows with the text: far more per Chinese character than per Latin one.

`SpeechModel` is that, with the numbers as parameters:

    service = sum over pieces of (base + per_char x narrow chars + per_wide_char x wide chars) x jitter

where wide characters are East Asian wide/full-width ones (Chinese) and `jitter` is drawn once per piece.
With `max_tokens` unset the whole text is one piece: the plain `base + per_char x len(text)` model.
"""

from __future__ import annotations

import math
import random
import re
import struct
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

WAV_RATE = 22_050
#: what one BPE token of Latin text spans, roughly (IndexTTS2's 12k-token SentencePiece vocabulary;
#: a Chinese character is one token of its own)
CHARS_PER_TOKEN = 4
_SENTENCE_END = re.compile(r"(?<=[.!?。！？…])\s*")
#: one period of a 220.5 Hz tone at 22,050 Hz (100 samples), 16-bit, amplitude 0.3
_TONE_PERIOD = b"".join(struct.pack("<h", round(0.3 * 32767 * math.sin(2 * math.pi * i / 100))) for i in range(100))


def is_wide(char: str) -> bool:
    return unicodedata.east_asian_width(char) in ("W", "F")


def tokens(text: str) -> int:
    """About how many text tokens IndexTTS2's tokenizer makes of ``text``."""
    wide = sum(is_wide(c) for c in text)
    return wide + math.ceil((len(text) - wide) / CHARS_PER_TOKEN)


def pieces(text: str, max_tokens: int | None) -> list[str]:
    """The pieces a node synthesizes one after another: sentences, merged up to ``max_tokens``."""
    if not max_tokens:
        return [text]
    merged: list[str] = []
    for sentence in (s for s in _SENTENCE_END.split(text) if s.strip()):
        if merged and tokens(merged[-1]) + tokens(sentence) <= max_tokens:
            merged[-1] += sentence
        else:
            merged.append(sentence)
    return merged or [text]


def keyed_jitter(seed: int, text: str, sigma: float) -> Callable[[], float]:
    """Lognormal(0, sigma) draws that depend only on ``seed`` and the text (`bench.fleet --jitter-by-text`): a
    request takes the same time on every node of equal speed, whichever serves it and in whatever order, so
    every routing policy gets the same work and its no-queueing floor can be computed without running it."""
    rng = random.Random(f"{seed}:{text}")  # a str seed is hashed with SHA-512: the same in every process
    return lambda: rng.lognormvariate(0.0, sigma) if sigma > 0 else 1.0


@dataclass(frozen=True)
class SpeechModel:
    """Service time and audio length of one node for a text (times in seconds, at speed 1)."""

    base_s: float
    per_char_s: float
    per_wide_char_s: float | None = None  # None: same as per_char_s
    max_tokens: int | None = None  # None: the whole text is one piece
    audio_s_per_char: float = 0.0  # 0: the node answers a fixed WAV instead
    audio_s_per_wide_char: float = 0.0
    gap_s: float = 0.0  # silence between pieces

    def piece_time(self, piece: str) -> float:
        wide = sum(is_wide(c) for c in piece)
        per_wide = self.per_char_s if self.per_wide_char_s is None else self.per_wide_char_s
        return self.base_s + self.per_char_s * (len(piece) - wide) + per_wide * wide

    def service_time(self, text: str, jitter: Callable[[], float]) -> float:
        return sum(self.piece_time(piece) * jitter() for piece in pieces(text, self.max_tokens))

    @property
    def makes_audio(self) -> bool:
        return self.audio_s_per_char > 0 or self.audio_s_per_wide_char > 0

    def piece_audio_s(self, piece: str) -> float:
        wide = sum(is_wide(c) for c in piece)
        return self.audio_s_per_char * (len(piece) - wide) + self.audio_s_per_wide_char * wide

    def audio_seconds(self, text: str) -> float:
        parts = pieces(text, self.max_tokens)
        return sum(self.piece_audio_s(p) for p in parts) + self.gap_s * (len(parts) - 1)

    def wav(self, text: str) -> bytes:
        """A 16-bit mono WAV as long as the node's audio for ``text``: a tone, silence between pieces."""
        gap = bytes(2 * round(self.gap_s * WAV_RATE))
        speech = [tone(max(1, round(self.piece_audio_s(p) * WAV_RATE))) for p in pieces(text, self.max_tokens)]
        return wav_file(gap.join(speech))


def tone(samples: int) -> bytes:
    repeats = samples // 100 + 1
    return (_TONE_PERIOD * repeats)[: 2 * samples]


def wav_file(pcm: bytes, rate: int = WAV_RATE) -> bytes:
    """16-bit mono PCM with a correct RIFF header."""
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE" + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
