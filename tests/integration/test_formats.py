"""All six OpenAI formats and both stream formats, decoded by an independent decoder (PyAV/ffmpeg).

The source is an emulated index-tts-vllm node (a whole 22,050 Hz WAV, transcoded by the router)
and the embedded espeak engine (raw PCM streamed while it is synthesized).
"""

from __future__ import annotations

import base64
import io
import json
import sys

import aiohttp
import av
import numpy as np
import openai
import pytest

from speech_router.audio import flac
from speech_router.emulator import audio as emu_audio
from tests.conftest import fleet_config, openai_client

FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]
#: mp3 and ADTS AAC carry encoder delay and padding that decoders play; the rest are exact
TOLERANCE_S = {"mp3": 0.1, "aac": 0.1, "opus": 0.03, "flac": 0.005, "wav": 0.005, "pcm": 0.005}
EXPECTED_RATE = {"opus": 24000, "aac": 24000, "pcm": 24000}
TEXT = "The quick brown fox jumps over the lazy dog."


def decode(data: bytes, fmt: str) -> tuple[int, int, float, np.ndarray]:
    """(sample rate, channels, seconds, samples) as ffmpeg sees the bytes."""
    if fmt == "pcm":  # raw 24 kHz s16le mono by definition: nothing to ask a decoder
        samples = np.frombuffer(data, dtype="<i2")
        return 24000, 1, len(samples) / 24000, samples.astype(np.float32) / 32768
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray() for f in container.decode(stream)]
        channels = stream.codec_context.channels
        rate = stream.codec_context.sample_rate
    samples = np.concatenate([f.reshape(-1) for f in frames]) if frames else np.zeros(0)
    if fmt == "opus":  # ffmpeg decodes Opus at 48 kHz; the stream's own rate is in its OpusHead
        head = data.find(b"OpusHead")
        rate_in_header = int.from_bytes(data[head + 12:head + 16], "little")
        return rate_in_header, channels, len(samples) / channels / rate, samples
    return rate, channels, len(samples) / channels / rate, samples


@pytest.fixture
def fleet(nodes, router):
    node = nodes(name="gpu")
    return router(fleet_config(node.url))


@pytest.fixture
def embedded(router):
    return router({"pools": {"cpu": {"type": "espeak"}}, "models": {"tts-1": ["cpu"]},
                   "voices": {"alloy": {"espeak": "en-us"}}})


def client(url: str) -> openai.OpenAI:
    return openai_client(url)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_transcoded_from_an_index_tts_node(fleet, fmt):
    resp = client(fleet.url).audio.speech.with_raw_response.create(model="indextts2", voice="alloy", input=TEXT,
                                                                   response_format=fmt)
    assert resp.headers["content-type"] == {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac",
                                            "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}[fmt]
    rate, channels, seconds, samples = decode(resp.content, fmt)
    assert rate == EXPECTED_RATE.get(fmt, 22050)
    assert channels == 1
    assert seconds == pytest.approx(emu_audio.duration_s(TEXT), abs=TOLERANCE_S[fmt])
    assert np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 0.05  # the tone survived, not silence


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_streams_from_the_embedded_engine(embedded, fmt):
    wav = client(embedded.url).audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav")
    _, _, source_seconds, _ = decode(wav.content, "wav")
    chunks = []
    with client(embedded.url).audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=TEXT, response_format=fmt) as resp:
        assert resp.headers.get("transfer-encoding") == "chunked"
        for chunk in resp.iter_bytes():
            chunks.append(chunk)
    rate, channels, seconds, _ = decode(b"".join(chunks), fmt)
    assert channels == 1 and rate == EXPECTED_RATE.get(fmt, 22050)
    # espeak's length varies by a few ms between runs of the same text; the encoders add their padding
    assert seconds == pytest.approx(source_seconds, abs=TOLERANCE_S[fmt] + 0.05)


def test_streamed_wav_has_an_unknown_length_header(embedded):
    data = client(embedded.url).audio.speech.create(model="tts-1", voice="alloy", input=TEXT,
                                                    response_format="wav").content
    assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"


def sse_events(raw: bytes) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in raw.decode().split("\n\n") if line.startswith("data: ")]


@pytest.mark.parametrize("fmt", ["mp3", "wav", "pcm"])
def test_sse_stream_carries_base64_audio_then_usage(fleet, fmt):
    with client(fleet.url).audio.speech.with_streaming_response.create(
            model="indextts2", voice="alloy", input=TEXT, response_format=fmt, stream_format="sse") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read()
    events = sse_events(raw)
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert deltas and events[-1]["type"] == "speech.audio.done"
    usage = events[-1]["usage"]
    assert usage["input_tokens"] == len(TEXT)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] and usage["output_tokens"] > 0
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    _, channels, seconds, _ = decode(audio, fmt)
    assert channels == 1
    assert seconds == pytest.approx(emu_audio.duration_s(TEXT), abs=TOLERANCE_S[fmt])


@pytest.mark.anyio
async def test_native_synthesize_format_rate_and_stream(fleet):
    async with aiohttp.ClientSession() as session:
        body = {"text": TEXT, "voice": "alloy", "format": "flac", "sample_rate": 16000}
        async with session.post(fleet.url + "/synthesize", json=body) as resp:
            assert resp.status == 200 and resp.headers["content-type"] == "audio/flac"
            assert resp.headers.get("content-length")  # a finished file, with its length
            rate, _, seconds, _ = decode(await resp.read(), "flac")
        assert rate == 16000
        assert seconds == pytest.approx(emu_audio.duration_s(TEXT), abs=0.01)

        body = {"text": TEXT, "voice": "alloy", "format": "wav", "sample_rate": 24000, "stream": False}
        async with session.post(fleet.url + "/synthesize", json=body) as resp:
            data = await resp.read()
        size = int.from_bytes(data[40:44], "little")
        assert size == len(data) - 44  # a whole file gets its real sizes, not "unknown"
        assert decode(data, "wav")[0] == 24000

        body = {"text": TEXT, "voice": "alloy", "format": "mp3", "stream": True}
        async with session.post(fleet.url + "/synthesize", json=body) as resp:
            assert resp.headers.get("transfer-encoding") == "chunked"
            assert decode(await resp.read(), "mp3")[0] == 22050


@pytest.mark.anyio
@pytest.mark.parametrize("source", ["fleet", "embedded"])
async def test_a_finished_flac_says_its_length_and_a_streamed_one_says_unknown(source, request):
    """STREAMINFO's total_samples is what players show as the duration; 0 means unknown (a stream's header left
    before its audio was made)."""
    url = request.getfixturevalue(source).url
    model = "indextts2" if source == "fleet" else "tts-1"
    async with aiohttp.ClientSession() as session:
        answers = {}
        for stream in (False, True):
            body = {"text": TEXT, "voice": "alloy", "model": model, "format": "flac", "stream": stream}
            async with session.post(url + "/synthesize", json=body) as resp:
                assert resp.status == 200
                answers[stream] = await resp.read()
    rate, _, seconds, _ = decode(answers[False], "flac")
    assert flac.total_samples(answers[False]) == round(seconds * rate) > 0
    assert flac.total_samples(answers[True]) == 0


def test_unsupported_format_and_speed_give_400(fleet):
    c = client(fleet.url)
    with pytest.raises(openai.BadRequestError) as info:
        c.audio.speech.create(model="indextts2", voice="alloy", input="x", response_format="ogg")  # type: ignore[arg-type]
    assert info.value.body["param"] == "response_format"
    assert "mp3" in info.value.body["message"]
    for speed in (0.1, 4.5):
        with pytest.raises(openai.BadRequestError) as info:
            c.audio.speech.create(model="indextts2", voice="alloy", input="x", speed=speed)
        assert info.value.body["param"] == "speed"
    with pytest.raises(openai.BadRequestError) as info:  # index-tts-vllm cannot change speed: say so
        c.audio.speech.create(model="indextts2", voice="alloy", input="x", speed=1.5)
    assert info.value.body["param"] == "speed" and "index-tts-vllm" in info.value.body["message"]


def test_speed_is_honoured_by_the_embedded_engine(embedded):
    c = client(embedded.url)
    normal = decode(c.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav").content,
                    "wav")[2]
    fast = decode(c.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav",
                                        speed=2.0).content, "wav")[2]
    assert fast == pytest.approx(normal / 2, rel=0.15)


def test_aac_without_pyav_is_a_400_that_says_how_to_enable_it(fleet, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # as if the [aac] extra were not installed
    with pytest.raises(openai.BadRequestError) as info:
        client(fleet.url).audio.speech.create(model="indextts2", voice="alloy", input="x", response_format="aac")
    assert info.value.body["param"] == "response_format"
    assert "speech-router[aac]" in info.value.body["message"]
