"""The vllm-omni backend's node-facing calls (health, load, voice API) and the emulator's own protocol, over HTTP."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import numpy as np
import pytest
import soundfile as sf

from speech_router.backends.base import BackendContext
from speech_router.backends.http import HttpSessions
from speech_router.backends.vllm_omni import VllmOmniBackend
from speech_router.config.models import PoolConfig
from speech_router.emulator.serve import serve_in_thread
from speech_router.errors import BackendError, BackendRejected
from speech_router.types import SynthesisRequest
from tests.client import call
from tests.integration.omni import data_url, reference_wav, sse_events

pytestmark = pytest.mark.anyio


@pytest.fixture
async def backend() -> AsyncIterator:
    """Factory: ``await backend(url, version="2.5")``, a VllmOmniBackend with its own HTTP sessions."""
    sessions = HttpSessions()

    def make(url: str, **options: object) -> VllmOmniBackend:
        pool = PoolConfig.model_validate({"type": "vllm-omni", "endpoints": [{"url": url, "name": "n"}],
                                          "health_check": {"timeout": 2}, **options})
        opts = VllmOmniBackend.Options.model_validate(pool.options)
        return VllmOmniBackend(pool.endpoints[0], opts, BackendContext("omni", pool, sessions))

    yield make
    await sessions.aclose()


def wav(seconds: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, (np.sin(np.arange(int(seconds * rate)) / 5) * 9000).astype(np.int16), rate, format="WAV")
    return buf.getvalue()


async def test_health_reads_status_ready_and_models_and_detects_the_version(omni_nodes, backend):
    node = omni_nodes(name="a", version="2.5", model="IndexTeam/IndexTTS-2.5", health_body=False)
    b = backend(node.url)
    report = await b.health()
    assert report.healthy, report.detail
    assert report.data["version"] == "2.5" and b.capabilities.speed_range == (0.5, 2.0)
    node.config.ready = False
    report = await b.health()
    assert not report.healthy and "warming up" in report.detail
    node.config.ready, node.config.has_ready = True, False  # a version without /ready: 404 means "not there"
    assert (await b.health()).healthy
    node.config.dead = True
    report = await b.health()
    assert not report.healthy and "503" in report.detail


async def test_health_names_a_model_mismatch_and_a_fixed_version_is_kept(omni_nodes, backend):
    node = omni_nodes(name="a", model="IndexTeam/IndexTTS-2.5")
    report = await backend(node.url, model="other").health()
    assert not report.healthy and "not 'other'" in report.detail and "served name" in report.detail
    kept = backend(node.url, version="2")
    assert (await kept.health()).healthy and kept.version == "2" and kept.capabilities.speed_range == (0.25, 4.0)


async def test_health_of_a_node_that_is_not_there_is_unhealthy_not_an_error(backend):
    report = await backend("http://127.0.0.1:9").health()
    assert not report.healthy and report.detail


async def test_load_reads_running_and_waiting_from_metrics(omni_nodes, backend):
    node = omni_nodes(name="a", slots=1, delay_s=30)
    b = backend(node.url)
    assert (await b.load()).running == 0
    body = {"input": "wait", "ref_audio": data_url(wav(2.0))}
    loop = asyncio.get_running_loop()
    calls = [loop.run_in_executor(None, lambda: call(node.url + "/v1/audio/speech", body)) for _ in range(3)]
    state = node.app.state.emulator
    while state.in_flight < 3:  # no admission control: all three are inside the engine, one running
        await asyncio.sleep(0.01)
    load = await b.load()
    assert (load.running, load.waiting) == (1, 2)
    node.server.stop()  # cuts the waiting requests, like a node going down
    await asyncio.gather(*calls, return_exceptions=True)


async def test_voice_api_upload_list_and_delete(omni_nodes, backend):
    node = omni_nodes(name="a")
    b = backend(node.url)
    voice = await b.upload_voice("Narrator", wav(2.0), consent="rec-1", ref_text="hello",
                                 description="warm")
    assert voice["name"] == "Narrator" and voice["consent"] == "rec-1" and "file_path" not in voice
    listed = await b.list_voices()
    assert listed["voices"] == ["narrator"] and listed["uploaded_voices"][0]["speaker_description"] == "warm"
    req = SynthesisRequest(text="hi", model="m", voice="n", voice_params={"uploaded_voice": "NARRATOR"})
    resp = await b.synthesize(req)
    assert b"".join([c async for c in resp.chunks])[:4] == b"RIFF"
    assert await b.delete_voice("narrator") is True
    assert await b.delete_voice("narrator") is False


@pytest.mark.parametrize(("audio", "message"), [(wav(0.5), "too short"), (b"not audio at all", "Could not decode"),
                                                (b"\0" * (10 * 1024 * 1024 + 1), "exceeds maximum")])
async def test_bad_uploads_are_400s_the_client_owns(omni_nodes, backend, audio, message):
    node = omni_nodes(name="a")
    with pytest.raises(BackendRejected) as info:
        await backend(node.url).upload_voice("x", audio, consent="c")
    assert message in info.value.message and info.value.status == 400
    assert not info.value.counts_as_failure


async def test_an_engine_failure_is_a_counted_failure(omni_nodes, backend):
    node = omni_nodes(name="a", fail=True)
    req = SynthesisRequest(text="hi", model="m", voice="v", voice_params={"ref_audio": data_url(wav(2.0))})
    with pytest.raises(BackendError) as info:
        await backend(node.url).synthesize(req)
    assert info.value.status == 500 and info.value.counts_as_failure and info.value.retryable


# -- the emulator itself: vllm-omni's protocol, checked directly -----------------------------------------------


def test_unknown_top_level_keys_are_dropped_and_errors_have_vllms_shape(omni_nodes):
    node = omni_nodes(name="a")
    ref = data_url(wav(2.0))
    assert call(node.url + "/v1/audio/speech", {"input": "hi", "ref_audio": ref, "emo_vector": "junk"}).status == 200
    r = call(node.url + "/v1/audio/speech", {"input": "hi", "ref_audio": ref, "speed": "fast"})
    error = r.json()["error"]
    assert r.status == 400 and error["code"] == 400 and error["param"] == "body.speed"
    r = call(node.url + "/v1/audio/speech", {"input": "hi", "ref_audio": ref, "model": "nope"})
    assert r.status == 404 and r.json()["error"] == {"message": "The model `nope` does not exist.",
                                                     "type": "NotFoundError", "param": "model", "code": 404}


def test_references_the_node_refuses(omni_nodes, tmp_path):
    (tmp_path / "voices").mkdir()
    (tmp_path / "voices" / "a.wav").write_bytes(wav(2.0))
    (tmp_path / "secret.wav").write_bytes(wav(2.0))
    node = omni_nodes(name="a", allowed_media_path=str(tmp_path / "voices"))
    cases = {"/abs/a.wav": "must be a URL", f"file://{tmp_path}/secret.wav": "must be a subpath",
             "data:audio/wav;base64,%%%": "not valid base64", data_url(wav(31.0, rate=8000)): "too long",
             "http://example.com/a.wav": "loopback", data_url(b"RIFFjunk"): "Could not decode"}
    for ref, message in cases.items():
        r = call(node.url + "/v1/audio/speech", {"input": "hi", "ref_audio": ref})
        assert r.status == 400 and message in r.json()["error"]["message"], (ref[:40], r.body[:200])
    ok = call(node.url + "/v1/audio/speech", {"input": "hi", "ref_audio": f"file://{tmp_path}/voices/a.wav"})
    assert ok.status == 200


def test_http_references_are_fetched_by_the_node(omni_nodes, tmp_path):
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    data = reference_wav(tmp_path / "r.wav")
    files = Starlette(routes=[Route("/r.wav", lambda request: Response(data, media_type="audio/wav"))])
    with serve_in_thread(files) as srv:
        node = omni_nodes(name="a")
        assert call(node.url + "/v1/audio/speech", {"input": "hi", "ref_audio": srv.url + "/r.wav"}).status == 200


def test_streaming_rules_and_shapes(omni_nodes):
    ref = data_url(wav(2.0))
    v2, v25 = omni_nodes(name="a", version="2"), omni_nodes(name="b", version="2.5")
    r = call(v2.url + "/v1/audio/speech", {"input": "hi", "ref_audio": ref, "stream": True, "speed": 1.5})
    assert r.status == 400 and "speed adjustment" in r.json()["error"]["message"]
    r = call(v25.url + "/v1/audio/speech", {"input": "hi", "ref_audio": ref, "stream_format": "audio", "speed": 1.5})
    assert r.status == 200 and r.body[:4] == b"RIFF" and r.body[4:8] == b"\xff\xff\xff\xff"
    r = call(v2.url + "/v1/audio/speech", {"input": "hi", "ref_audio": ref, "stream": True, "response_format": "mp3"})
    assert r.status == 400 and r.json()["error"]["param"] == "body"
    events = sse_events(call(v2.url + "/v1/audio/speech", {"input": "hi", "ref_audio": ref, "stream": True}).body)
    assert [e["type"] for e in events] == ["speech.audio.delta", "speech.audio.delta", "speech.audio.done"]
    v2.config.fail = True
    events = sse_events(call(v2.url + "/v1/audio/speech", {"input": "hi", "ref_audio": ref, "stream": True}).body)
    assert [e["type"] for e in events] == ["speech.audio.error"] and events[0]["error"]["code"] == 500


def test_opus_fails_at_indextts_rate_as_on_a_real_node(omni_nodes):
    node = omni_nodes(name="a")
    r = call(node.url + "/v1/audio/speech", {"input": "hi", "ref_audio": data_url(wav(2.0)), "response_format": "opus"})
    assert r.status == 400 and r.json()["error"]["message"].startswith("Speech generation failed")


def test_probes_metrics_and_auth(omni_nodes):
    node = omni_nodes(name="a", api_key="k", server_load_tracking=True)
    assert call(node.url + "/health").json() == {"status": "healthy"}
    assert call(node.url + "/ready").json() == {"ready": True}
    assert call(node.url + "/load").json() == {"server_load": 0}
    assert 'vllm_omni:num_requests_waiting{model_name="IndexTeam/IndexTTS-2"} 0.0' in call(node.url + "/metrics").body.decode()
    assert call(node.url + "/v1/models").status == 401
    models = call(node.url + "/v1/models", key="k").json()
    assert models["data"][0]["id"] == "IndexTeam/IndexTTS-2"


def test_the_emulator_command_line_starts_vllm_omni_nodes():
    from speech_router.emulator.__main__ import _parser, build_apps

    args = _parser().parse_args(["--api", "vllm-omni", "--nodes", "2", "--omni-version", "2.5", "--model", "idx",
                                 "--allowed-media-path", "/srv/voices", "--slots", "3"])
    apps = build_apps(args)
    configs = [app.state.emulator.config for app in apps]
    assert [(c.name, c.version, c.model, c.allowed_media_path, c.slots) for c in configs] == \
        [("node0", "2.5", "idx", "/srv/voices", 3), ("node1", "2.5", "idx", "/srv/voices", 3)]
    with serve_in_thread(apps[0]) as srv:
        assert call(srv.url + "/v1/models").json()["data"][0]["id"] == "idx"
