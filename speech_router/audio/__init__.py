"""PCM in, OpenAI response formats out, progressively; plus an incremental WAV parser.

Names load on first use (PEP 562): the routing core checks audio (``validate``, ``wav``) without pulling in
numpy, soxr and the encoders, which only the response path needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .encode import StreamEncoder, encode_all, make_encoder
    from .formats import FORMATS, SUPPORTED_FORMATS, AudioFormat, FormatUnavailable, output_rate
    from .wav import InvalidAudio, PcmFormat, WavStreamParser, read_wav, wav_header

_WHERE = {
    "StreamEncoder": "encode", "encode_all": "encode", "make_encoder": "encode",
    "FORMATS": "formats", "SUPPORTED_FORMATS": "formats", "AudioFormat": "formats", "FormatUnavailable": "formats",
    "output_rate": "formats",
    "InvalidAudio": "wav", "PcmFormat": "wav", "WavStreamParser": "wav", "read_wav": "wav", "wav_header": "wav",
}

#: spelt out (``_WHERE``'s keys) so type checkers and linters see what is exported
__all__ = ["AudioFormat", "FORMATS", "FormatUnavailable", "InvalidAudio", "PcmFormat", "SUPPORTED_FORMATS",
           "StreamEncoder", "WavStreamParser", "encode_all", "make_encoder", "output_rate", "read_wav", "wav_header"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
