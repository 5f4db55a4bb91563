from __future__ import annotations

import io
from collections.abc import AsyncIterator

import av
import numpy as np
import pytest

from speech_router.api.audio_out import FAST_START_S, PIECE_S, AudioMeter, audio_body
from speech_router.audio import wav_header
from speech_router.types import AudioResponse

RATE = 22050
SECONDS = 3.0  # two 64 KiB reads from a node, or one big chunk
N_SAMPLES = int(RATE * SECONDS)
PCM = (np.sin(2 * np.pi * 440.0 * np.arange(N_SAMPLES) / RATE) * 10000).astype("<i2").tobytes()


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _body(resp: AudioResponse, fmt: str, meter: AudioMeter) -> list[bytes]:
    return [out async for out in audio_body(resp, fmt, None, meter)]


def _seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.rate


@pytest.mark.anyio
@pytest.mark.parametrize("fmt", ["mp3", "opus"])
async def test_a_big_chunk_goes_out_in_pieces_from_the_start(fmt: str) -> None:
    meter = AudioMeter()
    resp = AudioResponse(format="wav", chunks=_chunks(wav_header(RATE, 1, len(PCM)) + PCM), sample_rate=RATE)
    outputs = await _body(resp, fmt, meter)
    # The start is cut into 100 ms pieces, each sent as soon as it gives bytes; the rest of the chunk and
    # the encoder's tail follow as (at most) two more outputs.
    fast_start_pieces = round(FAST_START_S / PIECE_S)
    assert 3 <= len(outputs) <= fast_start_pieces + 2
    assert sum(map(len, outputs[:-2])) < 0.5 * sum(map(len, outputs))
    assert (meter.samples, meter.sample_rate) == (N_SAMPLES, RATE)
    assert SECONDS - 0.002 <= _seconds(b"".join(outputs)) <= SECONDS + 0.1


@pytest.mark.anyio
async def test_raw_pcm_in_odd_pieces_is_metered_exactly() -> None:
    meter = AudioMeter()
    parts = [PCM[:1], PCM[1:70001], PCM[70001:]]  # a half sample, then a chunk bigger than the fast start
    resp = AudioResponse(format="pcm", chunks=_chunks(*parts), sample_rate=RATE)
    data = b"".join(await _body(resp, "flac", meter))
    assert (meter.samples, meter.sample_rate) == (N_SAMPLES, RATE)
    assert meter.seconds == pytest.approx(SECONDS)
    assert _seconds(data) == pytest.approx(SECONDS, abs=0.002)


@pytest.mark.anyio
async def test_small_chunks_are_encoded_one_call_each() -> None:
    meter = AudioMeter()
    step = 2 * int(RATE * PIECE_S / 2)  # 50 ms: below one piece, so never cut further
    parts = [PCM[i : i + step] for i in range(0, len(PCM), step)]
    resp = AudioResponse(format="pcm", chunks=_chunks(*parts), sample_rate=RATE)
    outputs = await _body(resp, "mp3", meter)
    assert len(outputs) <= len(parts) + 1
    assert meter.samples == N_SAMPLES
    assert SECONDS - 0.002 <= _seconds(b"".join(outputs)) <= SECONDS + 0.1
