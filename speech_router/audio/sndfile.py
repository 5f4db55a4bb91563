"""mp3, flac and Ogg/Opus through libsndfile, writing into a ByteSink so bytes leave as they are made."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from .sink import ByteSink
from .stream import StreamEncoder

__all__ = ["SNDFILE_FORMATS", "SndfileEncoder"]

# response_format -> (libsndfile major format, subtype)
SNDFILE_FORMATS: dict[str, tuple[str, str]] = {
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "flac": ("FLAC", "PCM_16"),
    "opus": ("OGG", "OPUS"),
}

# libsndfile closes an Ogg page only every 1000 ms of audio by default: a second of silence before
# the first byte. 100 ms pages cost about 5% more bytes and keep streaming responsive.
OPUS_PAGE_LATENCY_MS = 100.0
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302  # sndfile.h


def _set_ogg_page_latency(file: sf.SoundFile, ms: float) -> None:
    """soundfile has no public wrapper for this command; without it we only stream in bigger pages."""
    try:
        value = sf._ffi.new("double*", ms)
        sf._snd.sf_command(file._file, _SFC_SET_OGG_PAGE_LATENCY_MS, value, sf._ffi.sizeof("double"))
    except AttributeError:  # soundfile internals moved; still correct, just less responsive
        pass


def _lame_placeholder_len(head: bytes) -> int | None:
    """Length of the empty frame LAME writes first (filled with the Xing tag on close), if `head` starts with one.

    Returns None while more bytes are needed, 0 when the first frame is real audio or a filled tag.
    """
    if len(head) < 4:
        return None
    b1, b2 = head[1], head[2]
    if head[0] != 0xFF or b1 & 0xE0 != 0xE0:
        return 0
    version = (b1 >> 3) & 3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5
    bitrate_index, rate_index, padding = b2 >> 4, (b2 >> 2) & 3, (b2 >> 1) & 1
    if (b1 >> 1) & 3 != 1 or version == 1 or rate_index == 3 or bitrate_index in (0, 15):
        return 0  # not Layer III, or a header we do not need to understand
    bitrates = (
        (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
        if version == 3
        else (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
    )
    rate = (44100, 48000, 32000)[rate_index] >> {3: 0, 2: 1, 0: 2}[version]
    length = (144 if version == 3 else 72) * bitrates[bitrate_index] * 1000 // rate + padding
    if len(head) < length:
        return None
    return length if not any(head[4:length]) else 0


class SndfileEncoder(StreamEncoder):
    """One libsndfile writer per response.

    Zero samples in total give b"": a header-only Ogg/Opus file does not open in FFmpeg, and
    libsndfile writes nothing at all for an empty mp3 or flac.
    """

    def __init__(self, fmt: str, content_type: str, input_rate: int, output_rate: int) -> None:
        super().__init__(content_type, input_rate, output_rate)
        major, subtype = SNDFILE_FORMATS[fmt]
        self._sink = ByteSink()
        self._file = sf.SoundFile(self._sink, "w", samplerate=output_rate, channels=1, format=major, subtype=subtype)
        if fmt == "opus":
            _set_ogg_page_latency(self._file, OPUS_PAGE_LATENCY_MS)
        # mp3 only: hold the first bytes until we know whether they are LAME's blank tag frame.
        self._mp3_head: bytearray | None = bytearray() if fmt == "mp3" else None
        self._wrote = False

    def _encode(self, samples: np.ndarray) -> None:
        self._wrote = True
        self._file.write(samples)

    def _close(self) -> None:
        self._file.close()

    def _drain(self) -> bytes:
        if not self._wrote:
            return b""  # headers wait for audio, so an empty response stays empty
        data = self._sink.take()
        if self._mp3_head is None:
            return data
        self._mp3_head += data
        cut = _lame_placeholder_len(bytes(self._mp3_head))
        if cut is None and not self._finished:
            return b""
        # While streaming, the tag it stands for would only be written after these bytes are sent,
        # and a blank frame is 26 ms of silence with no gapless info, so leave it out.
        out = bytes(self._mp3_head[cut or 0 :])
        self._mp3_head = None
        return out
