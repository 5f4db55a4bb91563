"""Deterministic fake speech: a tone whose pitch names the voice and whose length follows the text.

Tests can then check, from the audio alone, which voice was used (`dominant_hz`) and that the whole
text was spoken (duration), without any model.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import soundfile as sf

INDEX_TTS_RATE = 22_050
OPENAI_RATE = 24_000
SECONDS_PER_CHAR = 0.06
MIN_SECONDS = 0.3
AMPLITUDE = 0.3

# response_format -> (content type, soundfile format, soundfile subtype); pcm has no container.
FORMATS: dict[str, tuple[str, str | None, str | None]] = {
    "wav": ("audio/wav", "WAV", "PCM_16"),
    "flac": ("audio/flac", "FLAC", "PCM_16"),
    "mp3": ("audio/mpeg", "MP3", "MPEG_LAYER_III"),
    "opus": ("audio/ogg", "OGG", "OPUS"),
    "pcm": ("audio/pcm", None, None),
}


def duration_s(text: str, speed: float = 1.0) -> float:
    """Seconds of audio the emulators produce for `text`."""
    return max(MIN_SECONDS, SECONDS_PER_CHAR * len(text)) / speed


def tone_hz(voice: str) -> int:
    """Pitch for a voice (a speaker path or voice name): stable across runs, 200..799 Hz."""
    return 200 + zlib.crc32(voice.encode("utf-8", "surrogatepass")) % 600


def render(text: str, voice: str, rate: int, speed: float = 1.0) -> np.ndarray:
    """Mono int16 samples, as IndexTTS2.infer(output_path=None) returns them."""
    n = round(duration_s(text, speed) * rate)
    t = np.arange(n, dtype=np.float64) / rate
    wave = AMPLITUDE * np.sin(2 * np.pi * tone_hz(voice) * t)
    return (wave * 32767).astype(np.int16)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """Strongest frequency in `samples`, so a test can map audio back to `tone_hz(voice)`."""
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.argmax(spectrum[1:]) + 1) * rate / len(samples)


def can_encode(fmt: str) -> bool:
    """Whether the installed libsndfile writes `fmt` (mp3 needs libsndfile >= 1.1)."""
    if fmt not in FORMATS:
        return False
    _, container, subtype = FORMATS[fmt]
    if container is None:
        return True
    return container in sf.available_formats() and subtype in sf.available_subtypes(container)


def encode(samples: np.ndarray, rate: int, fmt: str = "wav") -> bytes:
    """Encode like the real servers: `sf.write(buf, wav, sr, format='WAV')`, or raw s16le for pcm."""
    _, container, subtype = FORMATS[fmt]
    if container is None:
        return samples.astype("<i2").tobytes()
    with io.BytesIO() as buf:
        sf.write(buf, samples, rate, format=container, subtype=subtype)
        return buf.getvalue()
