"""PCM in, OpenAI response formats out, progressively; plus an incremental WAV parser."""

from __future__ import annotations

from .encode import StreamEncoder, encode_all, make_encoder
from .formats import FORMATS, SUPPORTED_FORMATS, AudioFormat, FormatUnavailable, output_rate
from .wav import InvalidAudio, PcmFormat, WavStreamParser, read_wav, wav_header

__all__ = [
    "FORMATS",
    "SUPPORTED_FORMATS",
    "AudioFormat",
    "FormatUnavailable",
    "InvalidAudio",
    "PcmFormat",
    "StreamEncoder",
    "WavStreamParser",
    "encode_all",
    "make_encoder",
    "output_rate",
    "read_wav",
    "wav_header",
]
