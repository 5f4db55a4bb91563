"""What answers when a voice's pools are down (issue #22): never another voice by surprise, and 503 when
nobody can be reached.

- A cloned voice (a reference recording) is not spoken by the embedded engine's default voice when the GPU
  pool is down: 503 with Retry-After, unless the voice has an ``espeak`` key or the model names a
  ``fallback_voice``; ``/v1/audio/voices`` does not list the espeak endpoint for it.
- With every node down, the answer is README's 503 with Retry-After, not a 502 naming one endpoint.
"""

from __future__ import annotations

from typing import Any

from tests.client import Reply, call
from tests.conftest import fleet_config
from tests.integration.voice_uploads import ENV, tone, upload, wait_until

CLONE = "/data/voices/clone.wav"


def config(url: str, store: Any, **model: Any) -> dict[str, Any]:
    cfg = fleet_config(url)
    cfg["pools"]["cpu"] = {"type": "espeak"}
    cfg["models"] = {"indextts2": {"pools": ["gpu", "cpu"], **model}}
    cfg["voices"] = {"clone": {"spk_audio_path": CLONE},  # a cloned voice only the GPU pool can speak
                     "both": {"spk_audio_path": "/data/voices/both.wav", "espeak": "en-us"}}  # an espeak stand-in
    cfg["voice_store"] = {"directory": str(store)}
    return cfg


def speak(url: str, voice: str) -> Reply:
    return call(url + "/v1/audio/speech", {"model": "indextts2", "voice": voice, "input": "Hello.",
                                           "response_format": "wav"})


def down(url: str, node: str) -> bool:
    return any(e["name"] == node and not e["healthy"] for e in call(url + "/health").json()["endpoints"])


def test_a_cloned_voice_gets_503_not_the_embedded_engines_voice_when_its_pool_is_down(nodes, router, tmp_path):
    node = nodes(name="gpu")
    srv = router(config(node.url, tmp_path / "voices"), env=ENV)
    name = node.url.removeprefix("http://")
    assert upload(srv.url, "Narrator", tone(2.0)).status == 200
    cards = {c["id"]: c for c in call(srv.url + "/v1/audio/voices").json()["data"]}
    assert cards["Narrator"]["endpoints"] == [name]  # the espeak endpoint cannot speak an uploaded voice
    assert cards["clone"]["models"] == ["indextts2"]  # through the GPU pool

    node.server.stop()
    wait_until(lambda: down(srv.url, name), what="the router to see the node down")
    for voice in ("clone", "Narrator"):
        r = speak(srv.url, voice)
        assert r.status == 503, (voice, r.body[:300])
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "no_healthy_endpoint"
    both = speak(srv.url, "both")  # its espeak key says what the embedded engine may speak for it
    assert both.status == 200 and both.headers["x-speech-router-pool"] == "cpu"
    assert both.headers["x-speech-router-fallback"]


def test_a_models_fallback_voice_is_spoken_when_the_cloned_voices_pools_are_down(nodes, router, tmp_path):
    node = nodes(name="gpu")
    srv = router(config(node.url, tmp_path / "voices", fallback_voice="both"), env=ENV)
    name = node.url.removeprefix("http://")
    node.server.stop()
    wait_until(lambda: down(srv.url, name), what="the router to see the node down")
    r = speak(srv.url, "clone")
    assert r.status == 200 and r.headers["x-speech-router-pool"] == "cpu"  # a substitute the model accepts


def test_every_node_down_is_503_with_retry_after_not_one_endpoints_502(nodes, router):
    a, b = nodes(name="a"), nodes(name="b")
    # health checks off: the router still believes in both, so each is tried and refuses the connection
    srv = router(fleet_config(a.url, b.url, health_check={"enabled": False}))
    a.server.stop()
    b.server.stop()
    r = speak(srv.url, "alloy")
    assert r.status == 503, r.body[:300]
    assert int(r.headers["retry-after"]) >= 1
    error = r.json()["error"]
    assert error["code"] == "no_healthy_endpoint" and "'gpu'" in error["message"]


def test_a_node_that_answers_badly_is_still_a_502_naming_it(nodes, router):
    node = nodes(name="a", fail=True)
    srv = router(fleet_config(node.url, health_check={"enabled": False}, retry={"max_attempts": 1}))
    r = speak(srv.url, "alloy")
    assert r.status == 502 and node.url.removeprefix("http://") in r.json()["error"]["message"]
