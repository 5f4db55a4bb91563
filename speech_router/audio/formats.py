"""The six OpenAI response formats and the sample rate each one ends up at."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "FORMATS",
    "MP3_RATES",
    "OPUS_RATES",
    "SUPPORTED_FORMATS",
    "AudioFormat",
    "FormatUnavailable",
    "audio_format",
    "check_rate",
    "output_rate",
    "positive_rate",
]

# libsndfile's MP3 writer (LAME) only takes the MPEG-1/2/2.5 rates.
MP3_RATES: tuple[int, ...] = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# libopus (through PyAV or libsndfile's Ogg/Opus writer) only takes these.
OPUS_RATES: tuple[int, ...] = (8000, 12000, 16000, 24000, 48000)


@dataclass(frozen=True)
class AudioFormat:
    """One `response_format`; `sample_rate` is the rate it forces, None keeps the source rate."""

    name: str
    content_type: str
    extension: str
    sample_rate: int | None = None


FORMATS: dict[str, AudioFormat] = {
    "mp3": AudioFormat("mp3", "audio/mpeg", "mp3"),
    # OpenAI sends Ogg/Opus at 24 kHz, and libopus has no 22.05 kHz mode anyway.
    "opus": AudioFormat("opus", "audio/ogg", "opus", 24000),
    "aac": AudioFormat("aac", "audio/aac", "aac", 24000),
    "flac": AudioFormat("flac", "audio/flac", "flac"),
    "wav": AudioFormat("wav", "audio/wav", "wav"),
    # Raw PCM carries no header, so clients can only assume OpenAI's 24 kHz.
    "pcm": AudioFormat("pcm", "audio/pcm", "pcm", 24000),
}

SUPPORTED_FORMATS: tuple[str, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")


class FormatUnavailable(Exception):
    """An optional encoder is not installed; the message says which extra brings it."""


def audio_format(fmt: str) -> AudioFormat:
    """FORMATS[fmt], with a ValueError that lists the supported names."""
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown audio format {fmt!r}; expected one of {', '.join(SUPPORTED_FORMATS)}") from None


def positive_rate(rate: int) -> int:
    """Reject 0, negatives and non-integers (bool included) before they reach a C library."""
    if isinstance(rate, bool) or not isinstance(rate, int) or rate <= 0:
        raise ValueError(f"sample rate must be a positive integer, got {rate!r}")
    return rate


def check_rate(fmt: str, rate: int) -> int:
    """Raise ValueError when the encoder for `fmt` cannot write `rate`, so callers fail before streaming."""
    audio_format(fmt)
    positive_rate(rate)
    allowed = {"mp3": MP3_RATES, "opus": OPUS_RATES}.get(fmt)
    if allowed is not None and rate not in allowed:
        raise ValueError(f"{fmt} cannot be written at {rate} Hz; allowed rates: {', '.join(map(str, allowed))}")
    return rate


def output_rate(fmt: str, source_rate: int, requested: int | None) -> int:
    """The rate the encoded audio will have: a fixed format rate wins, then `requested`, then the source rate.

    For mp3 a source rate LAME cannot write (none was requested) becomes the next MPEG rate up
    (capped at 48 kHz), so an odd upstream rate never turns into a failed request.
    """
    spec = audio_format(fmt)
    if spec.sample_rate is not None:
        return spec.sample_rate
    if requested is not None:
        return check_rate(fmt, requested)
    positive_rate(source_rate)
    if fmt == "mp3" and source_rate not in MP3_RATES:
        return next((r for r in MP3_RATES if r >= source_rate), MP3_RATES[-1])
    return source_rate
