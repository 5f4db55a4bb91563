"""The embedded espeak backend against the real libespeak-ng from the espeakng-loader wheel."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable

import numpy as np
import pluggy
import pytest

pytest.importorskip("espeakng_loader", reason="the espeakng-loader wheel exists only for some platforms")

from speech_router.backends import espeak, espeak_lib  # noqa: E402
from speech_router.backends.base import BackendContext  # noqa: E402
from speech_router.backends.espeak import EspeakBackend, plan_rate  # noqa: E402
from speech_router.config.models import EndpointConfig, PoolConfig  # noqa: E402
from speech_router.errors import BackendRejected, BackendUnavailable, RequestInvalid  # noqa: E402
from speech_router.plugins import hookspecs  # noqa: E402
from speech_router.types import SynthesisRequest  # noqa: E402

RATE = 22050
LONG_TEXT = "The quick brown fox jumps over the lazy dog. " * 8
#: guards the hand-offs between the worker and the test against a deadlock, not a timing assertion
HANDOFF_TIMEOUT_S = 30


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def backend() -> EspeakBackend:
    b = EspeakBackend(
        EndpointConfig(name="embedded-0"),
        EspeakBackend.Options(),
        BackendContext(pool_name="embedded", pool=PoolConfig(type="espeak")),
    )
    await b.open()
    return b


def request(text: str = "Hello from the router", **kwargs: object) -> SynthesisRequest:
    return SynthesisRequest(text=text, model="tts-1", **kwargs)  # type: ignore[arg-type]


async def speak(backend: EspeakBackend, req: SynthesisRequest) -> np.ndarray:
    response = await backend.synthesize(req)
    assert (response.format, response.sample_rate, response.content_type) == ("pcm", RATE, "audio/pcm")
    return np.frombuffer(b"".join([chunk async for chunk in response.chunks]), dtype="<i2")


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def wrap_synth(monkeypatch: pytest.MonkeyPatch, wrap: Callable[[espeak_lib.OnSamples], espeak_lib.OnSamples]) -> None:
    """Route every buffer the engine makes through ``wrap(on_samples)``, on the worker thread."""
    original = espeak_lib.Engine.synth

    def synth(self: espeak_lib.Engine, text: str, on_samples: espeak_lib.OnSamples) -> int:
        return original(self, text, wrap(on_samples))

    monkeypatch.setattr(espeak_lib.Engine, "synth", synth)


@pytest.mark.anyio
async def test_hello_is_about_a_second_of_speech(backend: EspeakBackend) -> None:
    samples = await speak(backend, request())
    assert 0.6 < len(samples) / RATE < 1.6
    assert rms(samples) > 500


@pytest.mark.anyio
async def test_mandarin(backend: EspeakBackend) -> None:
    samples = await speak(backend, request("你好，世界。", voice_params={"espeak": "cmn"}))
    assert len(samples) / RATE > 0.5
    assert rms(samples) > 500


@pytest.mark.anyio
async def test_default_voice_comes_from_the_pool_options() -> None:
    options = EspeakBackend.Options(default_voice="xx-nope")
    b = EspeakBackend(EndpointConfig(name="e"), options, BackendContext(pool_name="p", pool=PoolConfig(type="espeak")))
    with pytest.raises(BackendRejected, match="xx-nope"):
        await b.synthesize(request())
    assert b.supports_voice({})  # a voice without an ``espeak`` key falls back to the default


@pytest.mark.anyio
async def test_streams_before_synthesis_ends(backend: EspeakBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    consumer_has_first = threading.Event()

    def wrap(on_samples: espeak_lib.OnSamples) -> espeak_lib.OnSamples:
        def hold_after_first(pcm: bytes) -> bool:
            first = "worker-sent-first" not in events
            if first:  # noted before the hand-off, or the consumer could note its receipt first
                events.append("worker-sent-first")
            stop = on_samples(pcm)
            if first:
                # a backend that buffered everything would never let the consumer see this chunk
                if not consumer_has_first.wait(HANDOFF_TIMEOUT_S):
                    events.append("consumer-never-saw-first")
            return stop

        return hold_after_first

    wrap_synth(monkeypatch, wrap)
    response = await backend.synthesize(request(LONG_TEXT))
    chunks = 0
    async for _chunk in response.chunks:
        chunks += 1
        if chunks == 1:
            events.append("consumer-got-first")
            consumer_has_first.set()
    events.append("stream-ended")
    assert chunks > 1
    assert events == ["worker-sent-first", "consumer-got-first", "stream-ended"]


def close_to(lengths: list[int], expected: int) -> bool:
    """libespeak-ng carries its pitch-flutter phase from one utterance to the next, so even one
    request after another the same text differs by a few hundred samples; mixing up two requests'
    voice or rate would change the length by far more than 1%."""
    return all(abs(n - expected) < expected / 100 for n in lengths)


@pytest.mark.anyio
async def test_concurrent_requests_do_not_share_state(backend: EspeakBackend) -> None:
    same = await asyncio.gather(*(speak(backend, request(LONG_TEXT)) for _ in range(8)))
    alone = len(await speak(backend, request(LONG_TEXT)))
    assert close_to([len(s) for s in same], alone)
    assert all(rms(s) > 500 for s in same)

    variants = [
        request(LONG_TEXT),
        request(LONG_TEXT, speed=2.0),
        request("你好，世界。", voice_params={"espeak": "cmn"}),
        request(LONG_TEXT, voice_params={"espeak": "en-gb"}),
    ]
    expected = [len(await speak(backend, r)) for r in variants]
    mixed = await asyncio.gather(*(speak(backend, variants[i % 4]) for i in range(8)))
    for i, samples in enumerate(mixed):
        assert close_to([len(samples)], expected[i % 4]), i


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("speed", "low", "high"), [(2.0, 0.45, 0.58), (4.0, 0.2, 0.32), (0.5, 1.8, 2.2), (0.25, 3.4, 4.4)]
)
async def test_speed_scales_duration(backend: EspeakBackend, speed: float, low: float, high: float) -> None:
    normal = len(await speak(backend, request(LONG_TEXT)))
    scaled = await speak(backend, request(LONG_TEXT, speed=speed))
    assert low < len(scaled) / normal < high
    assert rms(scaled) > 500


def test_plan_rate() -> None:
    assert plan_rate(1.0, can_stretch=False) == (175, None)
    assert plan_rate(4.0, can_stretch=False) == (700, None)  # above 450 wpm espeak speeds up with sonic
    assert plan_rate(0.25, can_stretch=True) == (80, pytest.approx(0.546875))
    with pytest.raises(RequestInvalid, match="espeak backend supports speed 0.46") as info:
        plan_rate(0.25, can_stretch=False)
    assert info.value.param == "speed"


@pytest.mark.anyio
async def test_unknown_voice_is_rejected(backend: EspeakBackend) -> None:
    with pytest.raises(BackendRejected, match="xx-nope") as info:
        await backend.synthesize(request(voice_params={"espeak": "xx-nope"}))
    assert not info.value.counts_as_failure and not info.value.retryable
    assert len(await speak(backend, request(voice_params={"espeak": "en-us+f3"}))) > 0


@pytest.mark.anyio
@pytest.mark.parametrize("text", ["", "   \n\t"])
async def test_empty_input_is_invalid(backend: EspeakBackend, text: str) -> None:
    with pytest.raises(RequestInvalid) as info:
        await backend.synthesize(request(text))
    assert info.value.param == "input"


@pytest.mark.anyio
async def test_closing_early_stops_synthesis(backend: EspeakBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    full = len(await speak(backend, request(LONG_TEXT))) * 2
    consumer_closed = threading.Event()
    produced: list[int] = []
    answers: list[bool] = []

    def wrap(on_samples: espeak_lib.OnSamples) -> espeak_lib.OnSamples:
        def hold_until_closed(pcm: bytes) -> bool:
            stop = on_samples(pcm)
            produced.append(len(pcm))
            answers.append(stop)
            if len(produced) == 1:
                consumer_closed.wait(HANDOFF_TIMEOUT_S)
            return stop

        return hold_until_closed

    wrap_synth(monkeypatch, wrap)
    response = await backend.synthesize(request(LONG_TEXT))
    async for _chunk in response.chunks:
        break
    await response.aclose()
    consumer_closed.set()
    monkeypatch.undo()

    samples = await speak(backend, request())  # the worker is free again
    assert rms(samples) > 500
    assert answers[-1] is True  # the callback told espeak to abort
    assert sum(produced) < full


@pytest.mark.anyio
async def test_close_before_reading(backend: EspeakBackend) -> None:
    response = await backend.synthesize(request(LONG_TEXT))
    await response.aclose()
    assert len(await speak(backend, request())) > 0


@pytest.mark.anyio
async def test_health(backend: EspeakBackend) -> None:
    report = await backend.health()
    assert report.healthy
    assert report.data["engine"] == "espeak-ng"
    assert report.data["sample_rate"] == RATE
    assert report.data["version"]


@pytest.mark.anyio
async def test_unavailable_engine_is_reported(backend: EspeakBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    # forget the loaded engine for this test only, and make the wheel unimportable
    monkeypatch.setattr(espeak, "_engine", None)
    monkeypatch.setattr(espeak, "_engine_error", None)
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)
    other = EspeakBackend(EndpointConfig(name="e"), EspeakBackend.Options(), backend.context)
    with pytest.raises(BackendUnavailable, match="unavailable on this platform.*TTS_REMOTE_URL"):
        await other.open()
    with pytest.raises(BackendUnavailable):
        await other.synthesize(request())
    report = await other.health()
    assert not report.healthy
    assert "espeakng-loader" in report.detail and "TTS_REMOTE_URL" in report.detail


def test_registers_through_the_hook() -> None:
    pm = pluggy.PluginManager("speech_router")
    pm.add_hookspecs(hookspecs)
    pm.register(espeak, name="speech_router.backends.espeak")
    registered: list[type] = []
    pm.hook.register_backends(register=registered.append)
    assert registered == [EspeakBackend]
    assert EspeakBackend.type == "espeak"
    assert EspeakBackend.capabilities.formats == frozenset({"pcm"})
    assert not EspeakBackend.capabilities.needs_url
    assert EspeakBackend.Options().default_voice == "en-us"


def make(**options: object) -> EspeakBackend:
    return EspeakBackend(EndpointConfig(name="e"), EspeakBackend.Options(**options),  # type: ignore[arg-type]
                         BackendContext(pool_name="p", pool=PoolConfig(type="espeak")))


@pytest.mark.anyio
@pytest.mark.parametrize("voice", ["en-us", "en-gb+m2"])
async def test_chinese_text_with_an_english_voice_is_chinese_speech(backend: EspeakBackend, voice: str) -> None:
    """README's SDK example: Chinese text, voice ``alloy`` (``en-us``). Read as Chinese it is as long as the
    known-good Mandarin voice makes it; read by the English voice it was "Chinese letter" per character."""
    text = "你好，世界。"
    spoken = len(await speak(backend, request(text, voice_params={"espeak": voice})))
    _, plus, variant = voice.partition("+")
    mandarin = len(await speak(backend, request(text, voice_params={"espeak": "cmn" + plus + variant})))
    letters = len(await speak(make(detect_language=False), request(text, voice_params={"espeak": voice})))
    assert close_to([spoken], mandarin)
    assert letters > 2 * mandarin  # what the English voice alone says: "Chinese letter, Chinese letter, ..."


@pytest.mark.anyio
async def test_mixed_text_is_read_run_by_run_each_in_its_language(backend: EspeakBackend) -> None:
    english, chinese = "Hello there, ", "你好，世界。"
    mixed = len(await speak(backend, request(english + chinese, voice_params={"espeak": "en-us"})))
    parts = [len(await speak(backend, request(english, voice_params={"espeak": "en-us"}))),
             len(await speak(backend, request(chinese, voice_params={"espeak": "cmn"})))]
    assert close_to([mixed], sum(parts))


def test_a_configured_voice_reads_its_own_language_and_lends_its_variant_to_the_others() -> None:
    from speech_router.backends.espeak_voices import plan

    assert plan("Hello 你好，world", "en-us+f3") == [("en-us+f3", "Hello "), ("cmn+f3", "你好，"), ("en-us+f3", "world")]
    assert plan("你好 hello", "yue") == [("yue", "你好 "), ("en-us", "hello")]  # Cantonese reads Chinese as configured
    assert plan("Guten Tag 你好", "de") == [("de", "Guten Tag "), ("cmn", "你好")]
    assert plan("こんにちは世界", "en-us") == [("ja", "こんにちは世界")]  # kanji among kana are Japanese
    assert plan("2024年", "en-us") == [("cmn", "2024年")]  # digits go with the run they are in
    assert plan("你好 hello", "en-us", lang="zh") == [("cmn", "你好 hello")]  # the client named the language
    assert plan("你好 hello", "en-us", detect=False) == [("en-us", "你好 hello")]
    assert plan("Hello world.", "en-us") == [("en-us", "Hello world.")]  # one language: one call, as before
