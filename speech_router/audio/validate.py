"""Audio from a node is checked before it is trusted: a sane WAV header, a non-empty answer, a size that
fits the text.

A node controls every byte of its answer. A WAV header that says 1 Hz or 8-bit, a data size that lies, an
empty clip or an answer far longer than the text could be spoken in must become a failed attempt (retried
elsewhere), never a 200, a cached entry, or a transcoder asked for 24,000 times the input.

- ``check_audio(data, fmt, chars)``: a whole answer, whole or in pieces (the router calls it on a verified body);
- ``AudioValidator(fmt, chars)``: the same checks as bytes arrive (``feed`` each chunk, ``finish`` at the end),
  for backends that stream their answer to the router;
- ``check_wav_header(header)``: the format chunk alone, as soon as the header is in;
- ``max_audio_seconds(chars)``: the cap on audio for a text of ``chars`` characters.

Every failure raises ``InvalidAudio`` (a ``ValueError``) with a message that says what was wrong.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from ..types import aclose_chunks
from .wav import InvalidAudio, parse_fmt

__all__ = ["MAX_SECONDS_PER_CHAR", "MIN_SECONDS_CAP", "AudioValidator", "InvalidAudio", "WavInfo", "check_audio", "check_wav_header",
           "max_audio_seconds", "max_audio_bytes", "validated_stream"]

#: generous: speech runs 0.06-0.3 s per character (Chinese is the slow end), 4x more at speed 0.25
MAX_SECONDS_PER_CHAR = 2.0
#: the cap never goes below this, for short texts (a name, "OK") said slowly with pauses
MIN_SECONDS_CAP = 30.0
#: bytes per second a compressed format (mp3, opus, aac, flac) cannot exceed: flac of 48 kHz 24-bit stereo
COMPRESSED_BYTES_PER_S = 48_000 * 2 * 3
#: raw pcm (OpenAI's): 24 kHz 16-bit mono
PCM_BYTES_PER_S = 24_000 * 2
#: the header of a WAV must be complete within this many bytes (a real one is 44 to a few hundred)
MAX_HEADER_BYTES = 64 * 1024
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


def max_audio_seconds(chars: int) -> float:
    """The most audio a text of ``chars`` characters may come back as."""
    return max(MIN_SECONDS_CAP, MAX_SECONDS_PER_CHAR * max(0, chars))


def max_audio_bytes(fmt: str, chars: int, bytes_per_second: int | None = None) -> int:
    """The largest answer in ``fmt`` for ``chars`` characters (WAV: at its header's byte rate)."""
    rate = bytes_per_second or (PCM_BYTES_PER_S if fmt == "pcm" else COMPRESSED_BYTES_PER_S)
    return int(max_audio_seconds(chars) * rate) + MAX_HEADER_BYTES


@dataclass(frozen=True)
class WavInfo:
    """What a WAV header says: the format and where the audio is."""

    sample_rate: int
    channels: int
    bits: int
    float: bool
    data_offset: int  # where the samples start
    data_size: int | None  # what the data chunk declares; None for a streamed "unknown" size

    @property
    def block_align(self) -> int:
        return self.channels * self.bits // 8

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.block_align


def _check_fmt(body: bytes) -> tuple[int, int, int, bool]:
    """(rate, channels, bits, float) of a `fmt ` chunk the stream parser accepts, whose byte rate agrees too."""
    fmt, is_float = parse_fmt(body)  # encoding, channels, rate and block align, as the transcoder reads them
    (byte_rate,) = struct.unpack_from("<I", body, 8)
    block_align = fmt.channels * fmt.sample_width
    if byte_rate != fmt.sample_rate * block_align:
        raise InvalidAudio(f"WAV byte rate {byte_rate} does not match {fmt.sample_rate} Hz x {block_align} bytes")
    return fmt.sample_rate, fmt.channels, fmt.sample_width * 8, is_float


def check_wav_header(data: bytes) -> WavInfo | None:
    """Parse and check the header at the start of ``data``; None while it is incomplete.

    Raises ``InvalidAudio`` for anything that is not a sane WAV header (or one not complete in 64 KiB).
    """
    if len(data) >= 4 and data[:4] != b"RIFF" or len(data) >= 12 and data[8:12] != b"WAVE":
        raise InvalidAudio("not a WAV file (no RIFF/WAVE header)")  # never quote a node's bytes to a client
    pos, fmt = 12, None
    while True:
        if pos + 8 > len(data):
            break
        chunk, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if chunk == b"data":
            if fmt is None:
                raise InvalidAudio("WAV data chunk before its fmt chunk")
            rate, channels, bits, is_float = fmt
            declared = None if size in _UNKNOWN_SIZES else size
            return WavInfo(rate, channels, bits, is_float, pos + 8, declared)
        end = pos + 8 + size + (size & 1)
        if chunk == b"fmt ":
            if not 16 <= size <= 1024:
                raise InvalidAudio(f"implausible WAV fmt chunk size {size}")
            if end > len(data):
                break
            fmt = _check_fmt(data[pos + 8:pos + 8 + size])
        pos = end
    if len(data) > MAX_HEADER_BYTES or pos > MAX_HEADER_BYTES:
        raise InvalidAudio(f"WAV header not complete within {MAX_HEADER_BYTES} bytes")
    return None


class AudioValidator:
    """The checks of ``check_audio``, on a body that arrives in pieces. Holds at most the header's bytes."""

    def __init__(self, fmt: str, chars: int) -> None:
        self.fmt = fmt
        self.chars = chars
        self.info: WavInfo | None = None
        self.size = 0  # bytes seen
        self._head = b""
        self._limit = max_audio_bytes(fmt, chars) if fmt != "wav" else None

    @property
    def audio_bytes(self) -> int:
        """Bytes of samples seen so far (WAV: after the header)."""
        if self.fmt != "wav":
            return self.size
        return 0 if self.info is None else max(0, self.size - self.info.data_offset)

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        self.size += len(chunk)
        if self.fmt == "wav" and self.info is None:
            self._head += chunk
            self.info = check_wav_header(self._head)
            if self.info is None:
                return
            self._head = b""
            self._limit = self.info.data_offset + int(max_audio_seconds(self.chars) * self.info.bytes_per_second)
        if self._limit is not None and self.size > self._limit:
            raise InvalidAudio(f"more audio than {max_audio_seconds(self.chars):g} s for {self.chars} characters "
                               f"({self.size} bytes of {self.fmt} and counting)")

    def finish(self) -> None:
        """The body ended: it must hold audio, and as much as its header said."""
        if self.fmt != "wav":
            if not self.size:
                raise InvalidAudio(f"empty {self.fmt} answer")
            if self.fmt == "pcm" and self.size % 2:
                raise InvalidAudio("pcm answer of an odd number of bytes (16-bit samples expected)")
            return
        if self.info is None:
            raise InvalidAudio(f"WAV answer ended in its header ({self.size} bytes)")
        info, audio = self.info, self.audio_bytes
        if info.data_size is not None:
            if audio < info.data_size:
                raise InvalidAudio(f"WAV data chunk says {info.data_size} bytes but {audio} came")
            if info.data_size % info.block_align:
                raise InvalidAudio(f"WAV data size {info.data_size} is not whole {info.block_align}-byte frames")
            audio = info.data_size  # what follows the data chunk (LIST, id3) is not audio
        if audio < info.block_align * max(1, info.sample_rate // 1000):
            raise InvalidAudio(f"WAV answer with no audio ({audio} bytes of samples)")


def check_audio(data: bytes | Iterable[bytes], fmt: str, chars: int) -> None:
    """Check a whole answer in ``fmt`` for a text of ``chars`` characters, as one ``bytes`` or in pieces (read
    back from a spool: never joined into one large copy); raise ``InvalidAudio`` if bad."""
    validator = AudioValidator(fmt, chars)
    for piece in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
        validator.feed(piece)
    validator.finish()


async def validated_stream(chunks: AsyncIterator[bytes], validator: AudioValidator,
                           on_invalid: Callable[[InvalidAudio], Exception], first: bytes = b"") -> AsyncIterator[bytes]:
    """Pass ``chunks`` on (after ``first``, already fed to ``validator``), checking each before it goes on and
    the whole at the end; a failed check raises ``on_invalid(error)`` (a backend's ``BackendFailed``)."""
    try:
        if first:
            yield first
        async for chunk in chunks:
            validator.feed(chunk)
            yield chunk
        validator.finish()
    except InvalidAudio as exc:
        raise on_invalid(exc) from None
    finally:
        await aclose_chunks(chunks)
