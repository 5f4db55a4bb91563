"""Pick a progressive encoder for a response_format; wav and pcm need no codec and live here."""

from __future__ import annotations

import numpy as np

from . import formats
from .aac import AacEncoder
from .opus import PyavOpusEncoder, pyav_opus_available
from .sndfile import SNDFILE_FORMATS, SndfileEncoder
from .stream import StreamEncoder
from .wav import wav_header

__all__ = ["PcmEncoder", "StreamEncoder", "WavEncoder", "encode_all", "make_encoder"]


class PcmEncoder(StreamEncoder):
    """Raw mono int16 little-endian samples, as OpenAI's `pcm`."""

    def __init__(self, content_type: str, input_rate: int, output_rate: int) -> None:
        super().__init__(content_type, input_rate, output_rate)
        self._out = bytearray()

    def _encode(self, samples: np.ndarray) -> None:
        self._out += samples.astype("<i2", copy=False).tobytes()

    def _drain(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data


class WavEncoder(PcmEncoder):
    """PCM16 WAV. Streamed: the header has 0xFFFFFFFF sizes and goes out with the first samples.

    From encode_all, or when no sample was written before finish(), the sizes are exact
    (an empty response is then a valid 44-byte WAV with no frames).
    """

    def __init__(self, content_type: str, input_rate: int, output_rate: int) -> None:
        super().__init__(content_type, input_rate, output_rate)
        self._header_sent = False

    def _drain(self) -> bytes:
        data = super()._drain()
        if self._header_sent or not (data or self._finished):
            return data
        self._header_sent = True
        return wav_header(self.sample_rate, 1, len(data) if self._finished else None) + data


def make_encoder(fmt: str, input_rate: int, output_rate: int | None = None, *, whole: bool = False) -> StreamEncoder:
    """A fresh encoder for one response.

    ``whole``: the bytes are read only at ``finish()`` (a finished file, not a stream), so the codec's headers
    come out final, as from ``encode_all``.

    `output_rate=None` resolves to `formats.output_rate(fmt, input_rate, None)`; an explicit rate is
    used as given after checking that the codec can write it (mp3 and opus only take a few rates).
    opus is encoded with PyAV's libopus when PyAV is installed, else with libsndfile's (slower per
    byte, so it runs at a higher bitrate; see sndfile.OPUS_FALLBACK_BIT_RATE).
    Raises ValueError for an unknown format or rate, FormatUnavailable for aac without PyAV.
    """
    spec = formats.audio_format(fmt)
    formats.positive_rate(input_rate)  # any positive rate can be resampled from
    rate = formats.output_rate(fmt, input_rate, None) if output_rate is None else formats.check_rate(fmt, output_rate)
    encoder: StreamEncoder
    if fmt == "pcm":
        encoder = PcmEncoder(spec.content_type, input_rate, rate)
    elif fmt == "wav":
        encoder = WavEncoder(spec.content_type, input_rate, rate)
    elif fmt == "aac":
        encoder = AacEncoder(spec.content_type, input_rate, rate)
    elif fmt == "opus" and pyav_opus_available():
        encoder = PyavOpusEncoder(spec.content_type, input_rate, rate)
    else:
        assert fmt in SNDFILE_FORMATS
        encoder = SndfileEncoder(fmt, spec.content_type, input_rate, rate)
    encoder._whole = whole
    return encoder


def encode_all(pcm: bytes, input_rate: int, fmt: str, output_rate: int | None = None) -> bytes:
    """Encode a whole buffer.

    Unlike streaming, headers come out final: exact WAV sizes, FLAC STREAMINFO with sample count
    and MD5, and the LAME/Xing frame that gives mp3 players the duration and gapless trimming (so a
    whole mp3 stays VBR, while a streamed one is CBR).
    """
    encoder = make_encoder(fmt, input_rate, output_rate, whole=True)
    encoder.write(pcm)
    return encoder.finish()
