"""A whole answer as mono int16 PCM at a known rate, and PCM at another rate: what joining segments needs."""

from __future__ import annotations

import numpy as np
import soxr

from .wav import InvalidAudio, read_wav

#: the rate raw PCM is assumed to have when a backend does not say (OpenAI's)
DEFAULT_PCM_RATE = 24000


def decode_pcm(data: bytes, fmt: str, sample_rate: int | None = None) -> tuple[bytes, int]:
    """(mono int16 PCM, its rate) of a whole WAV or raw PCM answer; ``InvalidAudio`` for anything else."""
    if fmt == "wav":
        rate, pcm = read_wav(data)
    elif fmt == "pcm":
        rate, pcm = sample_rate or DEFAULT_PCM_RATE, data[: len(data) & ~1]
    else:
        raise InvalidAudio(f"{fmt!r} audio, not WAV or PCM")
    if not pcm:
        raise InvalidAudio("no audio")
    return pcm, rate


def resample_pcm(pcm: bytes, rate: int, to: int) -> bytes:
    """Mono int16 PCM at ``rate`` as the same at ``to``."""
    if rate == to:
        return pcm
    samples = np.frombuffer(pcm, dtype="<i2")
    return np.asarray(soxr.resample(samples, rate, to), dtype="<i2").tobytes()
