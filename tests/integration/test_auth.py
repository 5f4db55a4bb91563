"""Client keys, rate limits, the admin key, the deadline header and ``/tts_url`` path prefixes, over real HTTP.

Keys reach the router through ``create_app(..., env=...)``: the same mapping the config's ``${VAR}``
expansion reads, so nothing here touches ``os.environ``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from speech_router.emulator.serve import ServerHandle
from tests.client import Reply, call
from tests.conftest import SharedFleet, fleet_config, shared_fleet

ALICE, BOB, BATCH, ADMIN = "sk-alice-0123456789", "sk-bob-0123456789", "sk-batch-0123456789", "adm-0123456789"
ENV = {"SPEECH_ROUTER_API_KEYS": f"alice={ALICE}", "BOB_KEY": BOB, "BATCH_KEY": BATCH,
       "SPEECH_ROUTER_ADMIN_KEY": ADMIN}
KEYS = [{"name": "bob", "key_env": "BOB_KEY", "requests_per_minute": 3},
        {"name": "batchy", "key_env": "BATCH_KEY", "priority": "batch"}]
SPEECH = {"model": "indextts2", "voice": "alloy", "input": "hello there", "response_format": "wav"}
TTS_URL = {"text": "hello there", "spk_audio_path": "/data/voices/alloy.wav"}


def openai_error(reply: Reply, status: int, *, code: str, type_: str = "invalid_request_error") -> str:
    assert reply.status == status, reply.body
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert (body["error"]["type"], body["error"]["code"]) == (type_, code), body
    return body["error"]["message"]


def index_error(reply: Reply, status: int) -> str:
    assert reply.status == status, reply.body
    body = reply.json()
    assert set(body) == {"status", "error"} and body["status"] == "error", body
    return body["error"]


def metric(url: str, name: str, **labels: str) -> float:
    text = call(url + "/metrics").body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.fixture
def keyed_router(router: Callable[..., ServerHandle]) -> Callable[..., ServerHandle]:
    """Factory: ``keyed_router(config, env)`` serves a router reading its keys from ``env`` (default ``ENV``)."""
    return lambda config, env=None: router(config, env=ENV if env is None else env)


@pytest.fixture(scope="module")
def fleet() -> Iterator[SharedFleet]:
    """One node behind a router with client keys (alice, bob, batchy) and an admin key."""
    with shared_fleet("n1", server={"auth": {"keys": KEYS}}, env=ENV) as f:
        yield f


# --- client keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "sk-wrong-key-42", BOB + "x"])
def test_without_a_valid_key_synthesis_is_401_and_never_reaches_a_node(fleet, key):
    before = len(fleet.node.requests)
    reply = call(fleet.url + "/v1/audio/speech", SPEECH, key=key)
    message = openai_error(reply, 401, code="invalid_api_key")
    assert reply.headers["www-authenticate"] == "Bearer"
    assert (key or "sk-") not in reply.body.decode() and "API key" in message
    assert len(fleet.node.requests) == before


def test_the_openai_client_raises_authentication_error_for_a_wrong_key(fleet):
    with openai.OpenAI(base_url=fleet.url + "/v1", api_key="sk-wrong-key-42", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as info:
            client.audio.speech.create(model="indextts2", voice="alloy", input="hello", response_format="wav")
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    assert "sk-wrong-key-42" not in str(info.value)


def test_the_openai_client_is_served_with_a_valid_key(fleet):
    with openai.OpenAI(base_url=fleet.url + "/v1", api_key=ALICE, max_retries=0) as client:
        audio = client.audio.speech.create(model="indextts2", voice="alloy", input="hello", response_format="wav")
        assert audio.content[:4] == b"RIFF"
        assert [m.id for m in client.models.list()] == ["indextts2", "tts-1"]


def test_tts_url_refuses_in_index_tts_vllm_shape(fleet):
    assert "API key" in index_error(call(fleet.url + "/tts_url", TTS_URL), 401)
    reply = call(fleet.url + "/tts_url", TTS_URL, key=ALICE)
    assert reply.status == 200 and reply.body[:4] == b"RIFF"


def test_each_key_served_and_refusal_is_counted_by_name(fleet):
    before_ok = metric(fleet.url, "speech_router_client_requests_total", client="alice", status="200")
    before_missing = metric(fleet.url, "speech_router_auth_rejections_total", reason="missing_key")
    before_invalid = metric(fleet.url, "speech_router_auth_rejections_total", reason="invalid_key")
    assert call(fleet.url + "/v1/audio/speech", SPEECH, key=ALICE).status == 200
    assert call(fleet.url + "/v1/models", key=ALICE).status == 200
    assert call(fleet.url + "/v1/models").status == 401
    assert call(fleet.url + "/v1/models", key="nope-nope").status == 401
    assert metric(fleet.url, "speech_router_client_requests_total", client="alice", status="200") == before_ok + 2
    assert metric(fleet.url, "speech_router_auth_rejections_total", reason="missing_key") == before_missing + 1
    assert metric(fleet.url, "speech_router_auth_rejections_total", reason="invalid_key") == before_invalid + 1
    assert ALICE not in call(fleet.url + "/metrics").body.decode()


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics", "/health"])
def test_open_paths_need_no_key(fleet, path):
    assert call(fleet.url + path).status == 200


def test_open_paths_are_configurable(nodes, keyed_router):
    node = nodes()
    config = fleet_config(node.url)
    config["server"] = {"auth": {"open_paths": ["/livez"]}}
    srv = keyed_router(config)
    assert call(srv.url + "/livez").status == 200
    assert call(srv.url + "/metrics").status == 401
    assert call(srv.url + "/metrics", key=ALICE).status == 200


def test_a_keys_priority_class_wins_over_the_priority_header(fleet):
    def batch_waits() -> float:
        return metric(fleet.url, "speech_router_queue_wait_seconds_count", pool="gpu", priority="batch")

    before = batch_waits()
    reply = call(fleet.url + "/v1/audio/speech", SPEECH, key=BATCH, headers={"x-priority": "interactive"})
    assert reply.status == 200
    assert batch_waits() == before + 1
    before = batch_waits()
    assert call(fleet.url + "/v1/audio/speech", SPEECH, key=ALICE).status == 200  # no class: the header decides
    assert batch_waits() == before


def test_keys_file_is_read(nodes, keyed_router, tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text("- {name: team-a, key: sk-team-a-000111}\n")
    node = nodes()
    config = fleet_config(node.url)
    config["server"] = {"auth": {"keys_file": str(keys)}}
    srv = keyed_router(config, {})
    assert call(srv.url + "/v1/models").status == 401
    assert call(srv.url + "/v1/models", key="sk-team-a-000111").status == 200
    assert metric(srv.url, "speech_router_client_requests_total", client="team-a", status="200") == 1


def test_without_keys_auth_is_off_and_clients_count_as_anonymous(nodes, keyed_router):
    node = nodes()
    srv = keyed_router(fleet_config(node.url), {})
    assert call(srv.url + "/v1/audio/speech", SPEECH).status == 200
    assert call(srv.url + "/v1/audio/speech", SPEECH, key="anything").status == 200
    assert metric(srv.url, "speech_router_client_requests_total", client="anonymous", status="200") == 2


# --- rate limits ----------------------------------------------------------------------------------


def test_requests_over_the_per_minute_limit_get_429_with_retry_after(fleet):
    for _ in range(3):
        assert call(fleet.url + "/v1/models", key=BOB).status == 200
    reply = call(fleet.url + "/v1/models", key=BOB)
    assert "bob" in openai_error(reply, 429, code="rate_limit_exceeded", type_="rate_limit_error")
    assert 1 <= int(reply.headers["retry-after"]) <= 60
    assert call(fleet.url + "/v1/models", key=ALICE).status == 200  # other clients are not affected
    index_error(call(fleet.url + "/tts_url", TTS_URL, key=BOB), 429)
    assert metric(fleet.url, "speech_router_rate_limited_total", client="bob") == 2
    assert metric(fleet.url, "speech_router_client_requests_total", client="bob", status="429") == 2


# --- the admin key --------------------------------------------------------------------------------


def test_admin_paths_are_403_when_no_admin_key_is_set(nodes, keyed_router):
    node = nodes()
    srv = keyed_router(fleet_config(node.url), {"SPEECH_ROUTER_API_KEYS": ALICE})
    for key in (None, ALICE):
        reply = call(srv.url + "/admin/backends", key=key)
        assert "disabled" in openai_error(reply, 403, code="admin_disabled")


def test_admin_paths_need_the_admin_key(fleet):
    before = metric(fleet.url, "speech_router_auth_rejections_total", reason="admin_key")
    for key in (None, ALICE, "adm-wrong"):
        openai_error(call(fleet.url + "/admin/backends", key=key), 401, code="invalid_api_key")
    assert metric(fleet.url, "speech_router_auth_rejections_total", reason="admin_key") == before + 3
    reply = call(fleet.url + "/admin/no-such-thing", key=ADMIN)
    assert reply.status == 404  # past the key check: the route itself does not exist
    assert call(fleet.url + "/v1/models", key=ADMIN).status == 401  # the admin key is not a client key


def test_admin_endpoints_and_their_old_names_for_one_release(fleet):
    new, old = call(fleet.url + "/admin/endpoints", key=ADMIN), call(fleet.url + "/admin/backends", key=ADMIN)
    assert new.status == old.status == 200
    names = [e["name"] for e in new.json()["endpoints"]]
    assert names and names == [b["name"] for b in old.json()["backends"]]
    for base in ("/admin/endpoints", "/admin/backends"):
        assert call(f"{fleet.url}{base}/{names[0]}/drain", method="POST", key=ADMIN).json()["draining"] is True
        assert call(f"{fleet.url}{base}/{names[0]}/undrain", method="POST", key=ADMIN).json()["draining"] is False
        openai_error(call(f"{fleet.url}{base}/{names[0]}/drain", method="POST", key=ALICE), 401,
                     code="invalid_api_key")
    missing = call(fleet.url + "/admin/endpoints/nope/drain", method="POST", key=ADMIN)
    assert "No endpoint named 'nope'" in openai_error(missing, 404, code="endpoint_not_found")


# --- the deadline header --------------------------------------------------------------------------


def test_deadline_header_shortens_the_models_deadline(nodes, keyed_router):
    node = nodes(delay_s=3.0)
    srv = keyed_router(fleet_config(node.url), {})
    reply = call(srv.url + "/v1/audio/speech", SPEECH, headers={"x-request-timeout": "0.3"})
    openai_error(reply, 504, code="deadline_exceeded", type_="server_error")
    assert len(node.requests) == 1


def test_deadline_header_with_room_to_spare_is_served(fleet):
    reply = call(fleet.url + "/v1/audio/speech", SPEECH, key=ALICE, headers={"x-request-timeout": "30"})
    assert reply.status == 200 and reply.body[:4] == b"RIFF"


@pytest.mark.parametrize("value", ["soon", "0", "-2", "nan", "inf", ""])
def test_bad_deadline_header_is_400_naming_it(fleet, value):
    before = len(fleet.node.requests)
    for path, body in (("/v1/audio/speech", SPEECH), ("/synthesize", {"voice": "alloy", "text": "hello"})):
        reply = call(fleet.url + path, body, key=ALICE, headers={"x-request-timeout": value})
        assert "x-request-timeout" in openai_error(reply, 400, code="invalid_value")
        assert reply.json()["error"]["param"] == "x-request-timeout"
    assert "x-request-timeout" in index_error(call(fleet.url + "/tts_url", TTS_URL, key=ALICE,
                                                   headers={"x-request-timeout": value}), 400)
    assert len(fleet.node.requests) == before


# --- voices cannot smuggle paths; /tts_url path prefixes -----------------------------------------------


@pytest.mark.parametrize("voice", ["/etc/passwd", "../x", "..", "a/b", "alloy/../../etc/passwd", "x.wav\n"])
def test_a_voice_never_becomes_a_path_the_client_chose(nodes, keyed_router, voice):
    node = nodes()
    config = fleet_config(node.url)
    config["voice_dir"] = {"path": "/data/voices"}
    srv = keyed_router(config, {})
    for path, body in (("/v1/audio/speech", {**SPEECH, "voice": voice}),
                       ("/synthesize", {"voice": voice, "text": "hello"}),
                       ("/synthesize", {"voice": "alloy", "text": "hello", "emotion": {"audio": voice}})):
        reply = call(srv.url + path, body)
        assert reply.status == 400 and reply.json()["error"]["code"] == "voice_not_found", reply.body
    assert node.requests == []
    assert call(srv.url + "/v1/audio/speech", {**SPEECH, "voice": "bob"}).status == 200  # a plain name resolves
    assert node.requests[-1][1]["spk_audio_path"] == "/data/voices/bob.wav"


@pytest.fixture(scope="module")
def prefixed() -> Iterator[SharedFleet]:
    """/tts_url restricted to reference files under /data/voices/ (v2 node)."""
    with shared_fleet("p1", server={"tts_url_path_prefixes": ["/data/voices/"]}, env={}) as f:
        yield f


@pytest.mark.parametrize("path,forwarded", [("/data/voices/alloy.wav", "/data/voices/alloy.wav"),
                                            ("/data/voices/team/../calm.wav", "/data/voices/calm.wav"),
                                            ("/data/voices//x.wav", "/data/voices/x.wav")])
def test_tts_url_paths_under_a_prefix_are_forwarded_normalised(prefixed, path, forwarded):
    reply = call(prefixed.url + "/tts_url", {**TTS_URL, "spk_audio_path": path})
    assert reply.status == 200 and reply.body[:4] == b"RIFF"
    assert prefixed.node.requests[-1][1]["spk_audio_path"] == forwarded


@pytest.mark.parametrize("body,field", [
    ({"spk_audio_path": "/etc/passwd"}, "spk_audio_path"),
    ({"spk_audio_path": "/data/voices/../../etc/passwd"}, "spk_audio_path"),
    ({"spk_audio_path": "/data/voices/.."}, "spk_audio_path"),
    ({"spk_audio_path": "/data/voicesX/a.wav"}, "spk_audio_path"),
    ({"spk_audio_path": "data/voices/a.wav"}, "spk_audio_path"),
    ({"emo_ref_path": 42}, "emo_ref_path"),
    ({"emo_control_method": 1, "emo_ref_path": "/root/secret.wav"}, "emo_ref_path"),
    ({"spk_audio_path": None, "audio_paths": ["/data/voices/a.wav", "/tmp/b.wav"]}, "audio_paths"),
    ({"spk_audio_path": None, "audio_path": "/proc/self/environ"}, "audio_path"),
    ({"extra_prompt_path": "/etc/shadow"}, "extra_prompt_path"),
])
def test_tts_url_paths_outside_the_prefixes_are_400_naming_the_field(prefixed, body, field):
    before = len(prefixed.node.requests)
    message = index_error(call(prefixed.url + "/tts_url", {**TTS_URL, **body}), 400)
    assert f"'{field}'" in message and "/data/voices/" in message
    assert len(prefixed.node.requests) == before


def test_tts_url_without_prefixes_forwards_paths_as_the_node_would_accept_them(nodes, keyed_router):
    node = nodes()
    srv = keyed_router(fleet_config(node.url), {})
    body = {**TTS_URL, "spk_audio_path": "/srv/refs/../other/voice.wav"}
    assert call(srv.url + "/tts_url", body).status == 200
    assert node.requests[-1][1]["spk_audio_path"] == "/srv/refs/../other/voice.wav"
