"""From a backend's audio to what the client asked for: pass-through, transcoding, SSE.

A backend answers in its own format (WAV for index-tts-vllm, raw PCM for espeak, any format for
OpenAI-compatible servers). When that already is the asked format and rate, its bytes go out
untouched; otherwise WAV is parsed as it streams, PCM is resampled and encoded chunk by chunk.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..audio import FORMATS, FormatUnavailable, InvalidAudio, StreamEncoder, WavStreamParser, make_encoder, output_rate
from ..audio.validate import max_audio_seconds
from ..errors import BackendFailed, DeadlineExceeded, FormatNotAvailable, RequestInvalid
from ..types import AudioResponse, aclose_chunks

#: encoders cheap enough to run on the event loop; the others run in a worker thread
_INLINE = {"wav", "pcm"}
#: the first FAST_START_S of audio is encoded PIECE_S at a time, and each piece's bytes are sent at once;
#: after that each chunk from the backend is encoded whole, one worker-thread hop per chunk
PIECE_S = 0.1
FAST_START_S = 0.5
#: SSE usage: output tokens are counted as 20 ms audio frames (documented in README)
FRAMES_PER_SECOND = 50


@dataclass
class AudioMeter:
    """Counts the audio that went out, for metrics and SSE usage."""

    samples: int = 0
    sample_rate: int = 0
    #: samples the router encoded, at the output rate (0 when the backend's bytes passed through)
    encoded: int = 0

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate if self.sample_rate else 0.0


def check_format(fmt: str, sample_rate: int | None = None) -> None:
    """Refuse formats whose encoder is missing, or rates the format cannot carry, before any dispatch."""
    try:
        if fmt == "aac":
            import av  # noqa: F401
        output_rate(fmt, 22050, sample_rate)
    except ImportError:
        raise FormatNotAvailable(str(FormatUnavailable(
            "response_format 'aac' needs PyAV: install it with pip install 'speech-router[aac]'"))) from None
    except ValueError as exc:
        raise RequestInvalid(str(exc), param="sample_rate") from None


def passes_through(resp: AudioResponse, fmt: str, sample_rate: int | None) -> bool:
    """Whether the backend's bytes already are what the client asked for."""
    if resp.format != fmt:
        return False
    fixed = FORMATS[fmt].sample_rate
    wanted = fixed or sample_rate
    if wanted is None:
        return True
    return resp.sample_rate == wanted


async def audio_body(resp: AudioResponse, fmt: str, sample_rate: int | None, meter: AudioMeter,
                     chars: int | None = None, *, whole: bool = False) -> AsyncIterator[bytes]:
    """The client's bytes, produced as the backend's bytes arrive.

    With ``chars`` (the text's length), audio past ``max_audio_seconds(chars)`` fails the request: a node's
    header cannot make a small answer into hours of output. ``whole``: a finished file is wanted, so a
    transcoded one comes out at the end, with the length in its header (FLAC's STREAMINFO, mp3's LAME tag).
    """
    cap = max_audio_seconds(chars) if chars is not None else None
    try:
        async for out in _convert(resp, fmt, sample_rate, meter, cap, whole):
            if cap is not None and meter.seconds > cap:
                raise BackendFailed(f"backend sent more than {cap:g} s of audio for {chars} characters")
            yield out
    finally:  # give the endpoint's slot back now, also when the client went away early
        with contextlib.suppress(Exception):
            await aclose_chunks(resp.chunks)


async def _convert(resp: AudioResponse, fmt: str, sample_rate: int | None, meter: AudioMeter,
                   cap: float | None = None, whole: bool = False) -> AsyncIterator[bytes]:
    chunks = resp.chunks
    if passes_through(resp, fmt, sample_rate):
        async for chunk in _metered(chunks, resp, meter):
            yield chunk
        return
    if resp.format not in ("wav", "pcm"):
        raise BackendFailed(f"cannot transcode {resp.format!r} audio from the backend")
    parser = WavStreamParser() if resp.format == "wav" else None
    encoder: StreamEncoder | None = None
    pending = b""
    piece = 0  # bytes of PCM per encoder.write() while the response starts
    async for chunk in chunks:
        if parser is not None:
            try:
                pcm = parser.feed(chunk)
            except InvalidAudio as exc:
                raise BackendFailed(f"backend sent invalid WAV: {exc}") from None
            if parser.format is None:
                continue
            rate = parser.format.sample_rate
        else:
            pcm, rate = pending + chunk, resp.sample_rate or 22050
            pending = b""
            if len(pcm) % 2:
                pcm, pending = pcm[:-1], pcm[-1:]
        if encoder is None:
            encoder = make_encoder(fmt, rate, output_rate(fmt, rate, sample_rate), whole=whole)
            meter.sample_rate = rate
            piece = 2 * max(1, round(rate * PIECE_S))
        if cap is not None and (meter.samples + len(pcm) // 2) / rate > cap:  # before encoding any of it
            raise BackendFailed(f"backend sent more than {cap:g} s of audio for the text")
        if fmt in _INLINE:
            meter.samples += len(pcm) // 2
            if out := encoder.write(pcm):
                yield out
            continue
        while len(pcm) > piece and meter.samples < rate * FAST_START_S:
            # A node's chunk can hold 1.5 s of audio: encode the start in pieces, send each piece's bytes.
            out, used = await asyncio.to_thread(_encode_until_output, encoder, pcm, piece)
            meter.samples += used // 2
            pcm = pcm[used:]
            if out:
                yield out
        if pcm:  # the rest of the chunk in one worker-thread call: the client already has audio to play
            meter.samples += len(pcm) // 2
            if out := await asyncio.to_thread(encoder.write, pcm):
                yield out
    if encoder is None:
        raise BackendFailed("backend sent no audio")
    tail = encoder.finish() if fmt in _INLINE else await asyncio.to_thread(encoder.finish)
    meter.encoded = encoder.samples_out
    if tail:
        yield tail


def _encode_until_output(encoder: StreamEncoder, pcm: bytes, piece: int) -> tuple[bytes, int]:
    """Write `pcm` in pieces until one gives bytes (the Ogg header, an mp3 frame); (bytes, PCM bytes used).

    Runs in a worker thread: one thread hop per piece that produced output, not per piece.
    """
    out, used = b"", 0
    while used < len(pcm):
        out = encoder.write(pcm[used:used + piece])
        used += piece
        if out:
            break
    return out, min(used, len(pcm))


async def _metered(chunks: AsyncIterator[bytes], resp: AudioResponse, meter: AudioMeter) -> AsyncIterator[bytes]:
    """Pass bytes on unchanged while counting samples (WAV headers are parsed on the side)."""
    parser = WavStreamParser() if resp.format == "wav" else None
    async for chunk in chunks:
        if parser is not None:
            with contextlib.suppress(InvalidAudio):
                meter.samples += len(parser.feed(chunk)) // 2
                if parser.format is not None:
                    meter.sample_rate = parser.format.sample_rate
        elif resp.format == "pcm" and resp.sample_rate:
            meter.sample_rate = resp.sample_rate
            meter.samples += len(chunk) // 2
        yield chunk


async def sse_events(body: AsyncIterator[bytes], input_chars: int, meter: AudioMeter) -> AsyncIterator[bytes]:
    """OpenAI's ``stream_format: sse``: base64 audio deltas, then a done event with usage."""
    async for chunk in body:
        yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode("ascii")})
    output_tokens = round(meter.seconds * FRAMES_PER_SECOND)
    usage = {"input_tokens": input_chars, "output_tokens": output_tokens, "total_tokens": input_chars + output_tokens}
    yield _event({"type": "speech.audio.done", "usage": usage})


async def within_deadline(body: AsyncIterator[bytes], deadline: float, clock: Callable[[], float]
                          ) -> AsyncIterator[bytes]:
    """Pass ``body`` on until ``deadline`` (on ``clock``); then raise ``DeadlineExceeded``, also while waiting for
    the next chunk (the client's deadline header covers the whole response, not only its start)."""
    try:
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                raise DeadlineExceeded("the request deadline passed while the answer was being sent")
            try:
                async with asyncio.timeout(remaining):
                    chunk = await anext(body)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise DeadlineExceeded("the request deadline passed while the answer was being sent") from None
            yield chunk
    finally:
        with contextlib.suppress(Exception):
            await aclose_chunks(body)


def sse_error(message: str) -> bytes:
    return _event({"type": "error", "error": {"message": message, "type": "server_error"}})


def _event(data: dict[str, object]) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
