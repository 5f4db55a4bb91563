"""mp3, flac and Ogg/Opus through libsndfile, writing into a ByteSink so bytes leave as they are made.

For opus this is the fallback when PyAV is not installed (see opus.py).
"""

from __future__ import annotations

import numpy as np
import soundfile as sf

from .sink import ByteSink
from .stream import StreamEncoder

__all__ = ["MP3_STREAM_KBPS", "OPUS_FALLBACK_BIT_RATE", "SNDFILE_FORMATS", "SndfileEncoder", "mp3_stream_kbps"]

# response_format -> (libsndfile major format, subtype)
SNDFILE_FORMATS: dict[str, tuple[str, str]] = {
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "flac": ("FLAC", "PCM_16"),
    "opus": ("OGG", "OPUS"),
}

# libsndfile closes an Ogg page only every 1000 ms of audio by default: a second of silence before
# the first byte. 100 ms pages cost about 5% more bytes and keep streaming responsive.
OPUS_PAGE_LATENCY_MS = 100.0
# libsndfile runs libopus at complexity 10 and lets nothing change that. At its default 36 kbps speech
# goes through SILK/hybrid, 0.48 s for 20 s on one core; from about 64 kbps libopus switches to CELT,
# which takes 0.21 s. 72 kbps keeps clear of that switch point (hysteresis included), so the 0.3 s
# target holds without PyAV, for twice the bytes of the default and a slightly better PESQ.
OPUS_FALLBACK_BIT_RATE = 72_000
# Streamed mp3 is constant bitrate: the LAME/Xing frame that gives a VBR file its length can only be
# written after the audio has left, so readers that estimate the length from the first frame's bitrate
# (libsndfile, many players) need every frame at that bitrate. These are about what LAME's default
# VBR (V4) averages on speech, per MPEG version: MPEG-1 (32-48 kHz), MPEG-2 (16-24 kHz), MPEG-2.5.
MP3_STREAM_KBPS: dict[str, int] = {"mpeg1": 96, "mpeg2": 80, "mpeg2.5": 48}

_SF_TRUE = 1
_SFC_SET_COMPRESSION_LEVEL = 0x1301  # sndfile.h
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302
_SFC_SET_BITRATE_MODE = 0x1305
_SF_BITRATE_MODE_CONSTANT = 0
_LAME_DEFAULT_VBR_LEVEL = 0.4  # libsndfile passes level * 10 to lame_set_VBR_quality: V4, LAME's default


def _command(file: sf.SoundFile, command: int, ctype: str, value: float) -> bool:
    """sf_command, which soundfile wraps only for a few commands; False if libsndfile refused it.

    Uses soundfile's internals: if they move, the encoder still works, only without the tuning.
    """
    try:
        data = sf._ffi.new(f"{ctype}*", value)
        return bool(sf._snd.sf_command(file._file, command, data, sf._ffi.sizeof(ctype)) == _SF_TRUE)
    except AttributeError:
        return False


def _set_opus_bit_rate(file: sf.SoundFile, bit_rate: int) -> bool:
    # libsndfile: bit rate = (1 - level) * 250 kbps + 6 kbps, per channel
    return _command(file, _SFC_SET_COMPRESSION_LEVEL, "double", 1 - (bit_rate - 6000) / 250_000)


def mp3_stream_kbps(sample_rate: int) -> int:
    """The constant bitrate a streamed mp3 gets at this sample rate."""
    return MP3_STREAM_KBPS["mpeg1" if sample_rate >= 32000 else "mpeg2" if sample_rate >= 16000 else "mpeg2.5"]


def _set_mp3_constant_bitrate(file: sf.SoundFile, sample_rate: int) -> bool:
    """Switch LAME to CBR at mp3_stream_kbps() (before the first write); False leaves it at its default VBR."""
    kbps = mp3_stream_kbps(sample_rate)
    # libsndfile: kbps = int(top - level * (top - bottom)), with the range of the MPEG version
    top, bottom = (320, 32) if sample_rate >= 32000 else (160, 8) if sample_rate >= 16000 else (64, 8)
    level = (top - kbps - 0.25) / (top - bottom)  # 0.25: int() truncates, so aim just above kbps
    # The level first: setting the mode re-applies it, and it fails while no level was ever set.
    if _command(file, _SFC_SET_COMPRESSION_LEVEL, "double", level) and _command(
        file, _SFC_SET_BITRATE_MODE, "int", _SF_BITRATE_MODE_CONSTANT
    ):
        return True
    _command(file, _SFC_SET_COMPRESSION_LEVEL, "double", _LAME_DEFAULT_VBR_LEVEL)  # undo the level
    return False


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
        self._fmt = fmt
        self._sink = ByteSink()
        self._file = sf.SoundFile(self._sink, "w", samplerate=output_rate, channels=1, format=major, subtype=subtype)
        if fmt == "opus":
            _command(self._file, _SFC_SET_OGG_PAGE_LATENCY_MS, "double", OPUS_PAGE_LATENCY_MS)
            _set_opus_bit_rate(self._file, OPUS_FALLBACK_BIT_RATE)
        # mp3 only: hold the first bytes until we know whether they are LAME's blank tag frame.
        self._mp3_head: bytearray | None = bytearray() if fmt == "mp3" else None
        self._wrote = False
        self.constant_bitrate = False  # mp3 only: whether the stream was switched to CBR

    def _encode(self, samples: np.ndarray) -> None:
        if not self._wrote and self._fmt == "mp3" and not self._whole:
            # Decided here, not in __init__: make_encoder sets _whole after construction. A whole file
            # keeps VBR, as its LAME/Xing frame is written and carries the length.
            self.constant_bitrate = _set_mp3_constant_bitrate(self._file, self.sample_rate)
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
