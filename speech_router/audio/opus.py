"""Ogg/Opus through PyAV's libopus, used when PyAV is installed; libsndfile's writer is the fallback.

libsndfile hard-codes libopus complexity 10 with the general-audio application, which spends about
0.48 s of one core on 20 s of speech. Here libopus is told the signal is speech (`voip`) and runs at
complexity 6: on the same speech that takes about 0.12 s at 48 kbps and scores higher on PESQ-WB than
libsndfile's default 36 kbps (bench/README.md has the measurements).
"""

from __future__ import annotations

from .pyav import PyavEncoder

__all__ = [
    "OPUS_APPLICATION",
    "OPUS_BIT_RATE",
    "OPUS_COMPLEXITY",
    "OPUS_PAGE_DURATION_US",
    "PyavOpusEncoder",
    "pyav_opus_available",
]

OPUS_BIT_RATE = 48_000  # VBR target for mono speech at 24 kHz
# 0-10. 6 is the knee on speech: 7-10 take 13-30% longer for at most +0.1 PESQ, 5 and below lose 0.1 or more.
OPUS_COMPLEXITY = 6
# Tells libopus the signal is speech. With "audio" and a complexity under 7 it took our speech for music:
# CELT only, 50% over the bitrate target and lower PESQ.
OPUS_APPLICATION = "voip"
# FFmpeg's Ogg muxer closes a page every second by default; 100 ms pages let the first bytes out early.
OPUS_PAGE_DURATION_US = 100_000


def pyav_opus_available() -> bool:
    """Whether PyAV is importable and its FFmpeg has libopus (checked on every call, so tests can hide PyAV)."""
    try:
        import av
    except ImportError:
        return False
    return "libopus" in av.codecs_available


class PyavOpusEncoder(PyavEncoder):
    """Ogg/Opus, mono, at 24 kHz (or another libopus rate); each page goes out as soon as it is closed.

    The Ogg muxer writes the encoder delay as OpusHead pre-skip and trims the last packet through the
    end granule, so decoders play exactly the samples that went in. Zero samples in total give b"".
    """

    def __init__(self, content_type: str, input_rate: int, output_rate: int) -> None:
        import av

        super().__init__(av, content_type, input_rate, output_rate, container_format="ogg",
                         container_options={"page_duration": str(OPUS_PAGE_DURATION_US)}, codec="libopus",
                         bit_rate=OPUS_BIT_RATE,
                         codec_options={"application": OPUS_APPLICATION, "compression_level": str(OPUS_COMPLEXITY)})
