"""Incremental WAV parsing and the streamed-WAV header.

Backends answer with WAV bytes that arrive in arbitrary pieces; the parser turns them into mono
int16 PCM as soon as whole frames exist, so transcoding can start before the body ends.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["InvalidAudio", "PcmFormat", "WavStreamParser", "read_wav", "wav_header"]

_PCM = 0x0001
_FLOAT = 0x0003
_EXTENSIBLE = 0xFFFE
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # what streaming writers put in the data size
_MAX_FMT_BYTES = 1024  # a real fmt chunk is 16, 18 or 40 bytes
MIN_RATE, MAX_RATE = 8_000, 192_000
MAX_CHANNELS = 2


class InvalidAudio(ValueError):
    """The bytes are not a WAV stream this router can read (backends map it to a failed attempt)."""


@dataclass(frozen=True)
class PcmFormat:
    """The source's format from the `fmt ` chunk; feed() output is always mono int16 whatever this says."""

    sample_rate: int
    channels: int
    sample_width: int  # bytes per sample of one channel in the source


def wav_header(sample_rate: int, channels: int = 1, data_bytes: int | None = None) -> bytes:
    """A 44-byte PCM16 header; `data_bytes=None` writes 0xFFFFFFFF sizes, as OpenAI does for streamed WAV."""
    if data_bytes is None:
        riff_size = data_size = 0xFFFFFFFF
    else:
        if not 0 <= data_bytes <= 0xFFFFFFFF - 36:
            raise ValueError(f"data_bytes out of range for a RIFF file: {data_bytes}")
        riff_size, data_size = 36 + data_bytes, data_bytes
    block_align = channels * 2
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", riff_size, b"WAVE",
        b"fmt ", 16, _PCM, channels, sample_rate, sample_rate * block_align, block_align, 16,
        b"data", data_size,
    )  # fmt: skip


def parse_fmt(body: bytes) -> tuple[PcmFormat, bool]:
    """Decode a `fmt ` chunk into the format and whether samples are float32."""
    if len(body) < 16:
        raise InvalidAudio(f"fmt chunk too short ({len(body)} bytes)")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _EXTENSIBLE:
        if len(body) < 40:
            raise InvalidAudio("WAVE_FORMAT_EXTENSIBLE fmt chunk shorter than 40 bytes")
        (tag,) = struct.unpack_from("<H", body, 24)  # first two bytes of the SubFormat GUID
    if (tag, bits) not in ((_PCM, 16), (_PCM, 24), (_PCM, 32), (_FLOAT, 32), (_FLOAT, 64)):
        kind = {_PCM: "integer PCM", _FLOAT: "float"}.get(tag, f"format tag 0x{tag:04x}")
        raise InvalidAudio(f"unsupported WAV encoding: {bits}-bit {kind}; expected 16/24/32-bit PCM or float")
    # a node controls this header: 1 Hz would make a 2 KB answer 48 MB of 24 kHz output (speech_router.audio.validate)
    if not 1 <= channels <= MAX_CHANNELS or not MIN_RATE <= rate <= MAX_RATE:
        raise InvalidAudio(f"invalid WAV format: {channels} channels at {rate} Hz; expected 1-{MAX_CHANNELS} "
                           f"channels at {MIN_RATE}-{MAX_RATE} Hz")
    if block_align != channels * bits // 8:
        raise InvalidAudio(f"invalid WAV block align {block_align} for {channels} x {bits}-bit")
    return PcmFormat(rate, channels, bits // 8), tag == _FLOAT


class WavStreamParser:
    """Feed WAV bytes in any chunking; get mono int16 little-endian PCM back, whole frames only."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._format: PcmFormat | None = None
        self._float = False
        self._state = "riff"  # riff -> chunk -> (fmt | skip)* -> data -> done
        self._need = 12  # bytes wanted by the current state, or bytes left to skip / read
        self._data_left: int | None = None  # None: unknown length, read to the end

    def __repr__(self) -> str:
        return f"WavStreamParser(format={self._format!r}, state={self._state!r})"

    @property
    def format(self) -> PcmFormat | None:
        return self._format

    @property
    def header_complete(self) -> bool:
        """True once the `data` chunk has started, i.e. feed() may return audio."""
        return self._state in ("data", "done")

    def feed(self, data: bytes) -> bytes:
        """Consume `data` and return the PCM that is complete so far (possibly b"")."""
        self._buf += data
        while self._state != "data":
            if self._state == "done":
                self._buf.clear()
                return b""
            if not self._step():
                return b""
        return self._take_frames()

    def close(self) -> None:
        """Raise InvalidAudio if the stream ended before any audio could start (truncated or empty body)."""
        if not self.header_complete:
            raise InvalidAudio(f"WAV stream ended in the header (while reading {self._state!r})")

    def _step(self) -> bool:
        """Advance one header state; False when more bytes are needed."""
        buf = self._buf
        if self._state == "skip":
            n = min(self._need, len(buf))
            del buf[:n]
            self._need -= n
            if self._need:
                return False
            self._state, self._need = "chunk", 8
            return True
        if self._state == "riff" and not b"RIFF".startswith(bytes(buf[:4])):
            raise InvalidAudio(f"not a WAV stream: starts with {bytes(buf[:4])!r}, expected b'RIFF'")
        if len(buf) < self._need:
            return False
        if self._state == "riff":
            if buf[8:12] != b"WAVE":
                raise InvalidAudio(f"not a WAV stream: RIFF type {bytes(buf[8:12])!r}, expected b'WAVE'")
            del buf[:12]
            self._state, self._need = "chunk", 8
        elif self._state == "chunk":
            chunk_id, size = bytes(buf[:4]), int.from_bytes(buf[4:8], "little")
            del buf[:8]
            if chunk_id == b"fmt ":
                if not 16 <= size <= _MAX_FMT_BYTES:
                    raise InvalidAudio(f"implausible fmt chunk size {size}")
                self._state, self._need = "fmt", size + (size & 1)
            elif chunk_id == b"data":
                if self._format is None:
                    raise InvalidAudio("WAV data chunk before fmt chunk")
                self._state = "data"
                self._data_left = None if size in _UNKNOWN_SIZES else size
            else:  # LIST, fact, PEAK, ...: not needed to play the audio
                self._state, self._need = "skip", size + (size & 1)
        elif self._state == "fmt":
            self._format, self._float = parse_fmt(bytes(buf[: self._need]))
            del buf[: self._need]
            self._state, self._need = "chunk", 8
        return True

    def _take_frames(self) -> bytes:
        assert self._format is not None
        frame = self._format.channels * self._format.sample_width
        avail = len(self._buf) if self._data_left is None else min(len(self._buf), self._data_left)
        n = avail - avail % frame
        if self._data_left is not None:
            self._data_left -= n
            if self._data_left < frame:  # a trailing partial frame can never complete
                self._state = "done"
        if not n:
            return b""
        raw = bytes(self._buf[:n])
        del self._buf[:n]
        if self._state == "done":
            self._buf.clear()
        return self._to_mono16(raw)

    def _to_mono16(self, raw: bytes) -> bytes:
        assert self._format is not None
        channels = self._format.channels
        if not self._float and channels == 1 and self._format.sample_width == 2:
            return raw  # already what we emit; the common case stays a copy-free pass-through
        import numpy as np  # only other layouts need it; the routing core reads WAV headers without numpy

        samples: np.ndarray
        width = self._format.sample_width
        if self._float:
            dtype = "<f8" if width == 8 else "<f4"
            floats = np.nan_to_num(np.frombuffer(raw, dtype=dtype), nan=0.0, posinf=1.0, neginf=-1.0)
            samples = np.clip(floats.astype(np.float64), -1.0, 1.0) * 32767.0
        elif width == 3:  # 24-bit: the top two bytes of each sample are its 16-bit value
            samples = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)[:, 1:].copy().view("<i2")[:, 0] \
                .astype(np.float64)
        elif width == 4:
            samples = np.frombuffer(raw, dtype="<i4").astype(np.float64) / 65536.0
        else:
            samples = np.frombuffer(raw, dtype="<i2").astype(np.float64)
        if channels > 1:
            samples = samples.reshape(-1, channels).mean(axis=1)
        pcm: np.ndarray = np.rint(samples).astype("<i2")
        return pcm.tobytes()


def read_wav(data: bytes) -> tuple[int, bytes]:
    """Whole WAV file -> (sample_rate, mono int16 PCM bytes)."""
    parser = WavStreamParser()
    pcm = parser.feed(data)
    parser.close()
    assert parser.format is not None
    return parser.format.sample_rate, pcm
