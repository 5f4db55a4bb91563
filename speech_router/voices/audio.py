"""An uploaded speaker reference, checked and made into the one file every backend type can read.

What comes in is whatever a client sends as ``audio_sample``; what goes out is a mono 16-bit WAV of
1-30 s (what vllm-omni and IndexTTS accept), at the file's own rate (above 48 kHz brought down to
48 kHz, so a reference stays under 3 MB). Decoding is bounded before it starts: the rate, the
channels and the length are checked while reading, one second at a time, so a small file that
claims hours of audio (or a rate of a million Hz) cannot make the router allocate them.

Every refusal is a ``RequestInvalid`` naming ``audio_sample``: the client sent it and can fix it.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from ..errors import RequestInvalid

FIELD = "audio_sample"
MIN_SECONDS, MAX_SECONDS = 1.0, 30.0
MIN_RATE, MAX_RATE = 8_000, 192_000
#: references above this rate are resampled down to it
STORED_MAX_RATE = 48_000
MAX_CHANNELS = 8
READABLE = "WAV, FLAC, OGG (Vorbis or Opus) or MP3"


@dataclass(frozen=True)
class Reference:
    """A checked reference: the WAV to store, its length and rate, and how many channels were mixed down."""

    wav: bytes
    seconds: float
    sample_rate: int
    channels: int


def refuse(message: str, code: str) -> RequestInvalid:
    return RequestInvalid(f"Invalid '{FIELD}': {message}", param=FIELD, code=code)


def normalize(data: bytes) -> Reference:
    """Check ``data`` and return it as a mono 16-bit WAV; ``RequestInvalid`` saying what is wrong with it."""
    if not data:
        raise refuse("the file is empty.", "empty_file")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels = int(f.samplerate), int(f.channels)
            _check_format(rate, channels)
            mono = _read_mono(f, rate)
    except RequestInvalid:
        raise
    except Exception:  # noqa: BLE001 - libsndfile's errors vary; any of them means "not audio we can read"
        raise refuse(f"the file could not be decoded as audio; send {READABLE}.", "invalid_audio") from None
    seconds = len(mono) / rate
    if seconds < MIN_SECONDS:
        raise refuse(f"the audio is {seconds:.2f} s long; a reference needs {MIN_SECONDS:g}-{MAX_SECONDS:g} s of "
                     "speech.", "audio_too_short")
    if not np.any(mono):
        raise refuse("the audio is silent.", "audio_silent")
    if rate > STORED_MAX_RATE:
        mono = soxr.resample(mono, rate, STORED_MAX_RATE).astype(np.float32)
        rate = STORED_MAX_RATE
    buf = io.BytesIO()
    sf.write(buf, np.clip(mono, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    return Reference(buf.getvalue(), round(seconds, 3), rate, channels)


def _check_format(rate: int, channels: int) -> None:
    if not MIN_RATE <= rate <= MAX_RATE:
        raise refuse(f"a sample rate of {rate} Hz is not supported ({MIN_RATE}-{MAX_RATE} Hz).", "invalid_sample_rate")
    if not 1 <= channels <= MAX_CHANNELS:
        raise refuse(f"{channels} channels are not supported (1-{MAX_CHANNELS}; more than one is mixed down).",
                     "invalid_channels")


def _read_mono(f: sf.SoundFile, rate: int) -> np.ndarray:
    """The whole file mixed down to mono, read a second at a time; refused as soon as it runs past the limit."""
    limit = int(MAX_SECONDS * rate)
    blocks: list[np.ndarray] = []
    frames = 0
    while True:
        block = f.read(frames=rate, dtype="float32", always_2d=True)
        if not len(block):
            break
        frames += len(block)
        if frames > limit:
            raise refuse(f"the audio is longer than {MAX_SECONDS:g} s; a reference needs {MIN_SECONDS:g}-"
                         f"{MAX_SECONDS:g} s of speech.", "audio_too_long")
        blocks.append(np.nan_to_num(block.mean(axis=1), nan=0.0, posinf=1.0, neginf=-1.0))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


#: the largest reference file read from the router's host (vllm-omni's upload limit)
MAX_REFERENCE_FILE_BYTES = 10 * 1024 * 1024


def check_reference_file(path: str, max_bytes: int = MAX_REFERENCE_FILE_BYTES) -> str:
    """A reference file on this host the router reads itself: libsndfile's format name (``WAV``, ``FLAC``...)
    when it is audio of 1-30 s within ``max_bytes``; else ``ValueError`` saying why it cannot be used."""
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise ValueError(f"{size} bytes, over the {max_bytes} byte limit")
        info = sf.info(path)
    except OSError as exc:
        raise ValueError(exc.strerror or repr(exc)) from None
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise ValueError(f"not audio libsndfile can read ({exc})") from None
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise ValueError(f"{seconds:.1f} s long; vllm-omni takes {MIN_SECONDS:g}-{MAX_SECONDS:g} s")
    return str(info.format)
