"""The response cache through a real router: whole answers, segments of long texts, disk, opt-in per model."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

from speech_router.audio import flac
from tests.conftest import fleet_config
from tests.integration.test_fanout import SENTENCES, metric, post, sse_events

SPEECH = "/v1/audio/speech"
FANOUT = {"threshold_chars": 100, "max_segment_chars": 60, "min_segment_chars": 10, "max_parallel": 2,
          "silence_ms": 200}


def config(*urls: str, cache: Any = True, directory: Path | None = None) -> dict[str, Any]:
    data = fleet_config(*urls)
    data["models"] = {"cached": {"pools": ["gpu"], "cache": cache, "fanout": FANOUT},
                      "fresh": {"pools": ["gpu"], "fanout": FANOUT}}
    if directory is not None:
        data["cache"] = {"directory": str(directory)}
    return data


def speech(text: str = "Press one for sales.", model: str = "cached", **extra: Any) -> dict[str, Any]:
    return {"model": model, "input": text, "voice": "alloy", "response_format": "wav", **extra}


def test_a_repeated_request_is_served_from_the_cache(nodes, router):
    node = nodes()
    r = router(config(node.url))
    first = post(r.url, SPEECH, speech())
    second = post(r.url, SPEECH, speech())
    assert first.status == second.status == 200
    assert first.headers["x-speech-router-cache"] == "miss" and second.headers["x-speech-router-cache"] == "hit"
    assert second.body == first.body and len(first.body) > 44
    assert second.headers["x-speech-router-endpoint"] == "cache"
    assert node.served == 1
    assert metric(r.url, "speech_router_cache_lookups_total", model="cached", kind="response", result="hit") == 1
    assert metric(r.url, "speech_router_cache_lookups_total", model="cached", kind="response", result="miss") == 1


def test_every_parameter_and_the_format_are_part_of_the_key(nodes, router):
    node = nodes()
    r = router(config(node.url))
    variants = [speech(), speech(text="Press two for support."), speech(voice="calm"), speech(speed=1.0),
                speech(response_format="mp3"), speech(instructions="cheerful")]
    # speed 1.0 is the default: the same request as the first one
    headers = [post(r.url, SPEECH, v).headers.get("x-speech-router-cache") for v in variants]
    assert headers == ["miss", "miss", "miss", "hit", "miss", "miss"]
    assert node.served == 5


def test_models_without_the_opt_in_always_synthesize(nodes, router):
    node = nodes()
    r = router(config(node.url))
    for _ in range(2):
        reply = post(r.url, SPEECH, speech(model="fresh"))
        assert reply.status == 200 and "x-speech-router-cache" not in reply.headers
    assert node.served == 2


def test_sse_hit_sends_the_same_audio_and_usage(nodes, router):
    node = nodes()
    r = router(config(node.url))
    first, second = (post(r.url, SPEECH, speech(stream_format="sse", response_format="pcm")) for _ in range(2))
    assert second.headers["x-speech-router-cache"] == "hit"
    audio = [[e.get("audio") for e in sse_events(reply.body) if e["type"] == "speech.audio.delta"]
             for reply in (first, second)]
    assert "".join(audio[0]) and len(audio[1]) == 1  # a hit is one delta...
    assert b"".join(base64.b64decode(a) for a in audio[0]) == base64.b64decode(audio[1][0])  # ...of the same audio
    done = [[e for e in sse_events(reply.body) if e["type"] == "speech.audio.done"][0] for reply in (first, second)]
    assert done[0]["usage"] == done[1]["usage"] and done[0]["usage"]["output_tokens"] > 0


def test_a_truncated_answer_is_never_cached(nodes, router):
    node = nodes(truncate=True)
    r = router(config(node.url, cache={"enabled": True}) | {"pools": _no_retry(fleet_config(node.url))})
    broken = post(r.url, SPEECH, speech())
    assert not broken.complete or broken.status != 200
    node.config.truncate = False
    fine = post(r.url, SPEECH, speech())
    assert fine.status == 200 and fine.headers["x-speech-router-cache"] == "miss"


def test_segments_are_cached_and_reused_by_another_text(nodes, router):
    a, b = nodes(name="a"), nodes(name="b")
    r = router(config(a.url, b.url))
    first = post(r.url, SPEECH, speech(" ".join(SENTENCES[:4])))
    assert first.status == 200 and first.headers["x-speech-router-segments"] == "4"
    before = len(a.requests), len(b.requests)
    reuse = " ".join([SENTENCES[1], SENTENCES[2], SENTENCES[5]])  # two known sentences and a new one
    second = post(r.url, SPEECH, speech(reuse))
    assert second.status == 200 and second.headers["x-speech-router-cache"] == "miss"
    asked = [body["text"] for node, n in zip((a, b), before, strict=True) for _, body in node.requests[n:]]
    assert asked == [SENTENCES[5]]  # only the new sentence was synthesized
    assert metric(r.url, "speech_router_segments_total", model="cached", outcome="cached") == 2
    assert metric(r.url, "speech_router_cache_lookups_total", model="cached", kind="segment", result="hit") == 2


def test_the_disk_tier_survives_a_restart(nodes, router, tmp_path):
    node = nodes()
    first = router(config(node.url, directory=tmp_path / "cache"))
    reply = post(first.url, SPEECH, speech(response_format="flac"))
    assert reply.headers["x-speech-router-cache"] == "miss"
    first.stop()  # lets the pending write finish
    assert any((tmp_path / "cache").rglob("*"))
    second = router(config(node.url, directory=tmp_path / "cache"))
    again = post(second.url, SPEECH, speech(response_format="flac"))
    assert again.headers["x-speech-router-cache"] == "hit"
    assert flac.total_samples(reply.body) == 0  # streamed: "unknown length"
    samples = flac.total_samples(again.body)  # kept whole: a finished file says its length; the audio is the same
    assert samples and again.body == flac.with_total_samples(reply.body, samples)
    assert node.served == 1


def _no_retry(data: dict[str, Any]) -> dict[str, Any]:
    pools = copy.deepcopy(data["pools"])
    pools["gpu"]["retry"] = {"max_attempts": 1}
    pools["gpu"]["verify_body"] = False
    return pools


def test_the_fan_out_settings_are_part_of_the_response_key(registry):
    from speech_router.cache import AudioCache
    from speech_router.cache.speech import SpeechCache
    from speech_router.config.loader import settings_from_dict
    from speech_router.metrics import Metrics
    from speech_router.types import SynthesisRequest

    def key(silence_ms: int) -> str:
        data = config("http://127.0.0.1:9")
        data["models"]["cached"]["fanout"] = {**FANOUT, "silence_ms": silence_ms}
        settings = settings_from_dict(data, registry=registry, env={})
        cache = SpeechCache(AudioCache(settings.cache), Metrics())
        return cache.response_key(settings, SynthesisRequest(text="hi", model="cached", voice="alloy"), "wav", None)

    assert key(200) == key(200) != key(300)  # joined audio with other silences must not be served from the cache
