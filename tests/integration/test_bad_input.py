"""Bad input over real HTTP: a clear 4xx naming the field, in the route's own error shape.

OpenAI routes and the native ``/synthesize`` answer ``{"error": {"message", "type", "param", "code"}}``;
the ``/tts_url`` drop-in answers index-tts-vllm's ``{"status": "error", "error": "..."}``. Nothing a client
sends crashes the router or shows it a node's traceback, and a refused request never reaches a node.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.client import Reply, call
from tests.conftest import SharedFleet, fleet_config, openai_client, shared_fleet

MAX_TEXT_CHARS = 50
MAX_BODY_BYTES = 2048
SPEECH_ROUTES = ["/v1/audio/speech", "/audio/speech"]
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
GOOD_SPEECH = {"model": "indextts2", "voice": "alloy", "input": "hello there", "response_format": "wav"}
GOOD_NATIVE = {"model": "indextts2", "voice": "alloy", "text": "hello there"}
GOOD_TTS_URL = {"text": "hello there", "spk_audio_path": "/data/voices/alloy.wav"}


def call_chunked(url: str, data: bytes, chunk_size: int = 500) -> Reply:
    """POST ``data`` as a chunked body without Content-Length, written in one go (so a server that answers
    before reading it all cannot break the pipe under the client), then read the answer."""
    host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
    path = "/" + url.removeprefix("http://").split("/", 1)[1]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (data[i:i + chunk_size]
                                                               for i in range(0, len(data), chunk_size)))
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + chunks + b"0\r\n\r\n")
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        try:
            return Reply(resp.status, resp.headers, resp.read())
        finally:
            resp.close()


def openai_error(reply: Reply, status: int, param: str | None, *, code: str | None = None,
                 type_: str = "invalid_request_error") -> dict[str, Any]:
    """Assert OpenAI's error shape, naming ``param``; return the inner error object."""
    assert reply.status == status, reply.body
    body = reply.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"], err
    assert err["type"] == type_, err
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    assert b"Traceback" not in reply.body
    assert reply.headers["x-request-id"]
    return err


def index_error(reply: Reply, status: int) -> str:
    """Assert index-tts-vllm's error shape; return its message."""
    assert reply.status == status, reply.body
    body = reply.json()
    assert set(body) == {"status", "error"}, body
    assert body["status"] == "error"
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"]
    return body["error"]


@pytest.fixture(scope="module")
def fleet() -> Iterator[SharedFleet]:
    """One healthy node behind a router with small text and body limits, shared by the read-only tests."""
    with shared_fleet("good", server={"max_text_chars": MAX_TEXT_CHARS, "max_body_bytes": MAX_BODY_BYTES}) as f:
        yield f


@pytest.fixture
def untouched(fleet: SharedFleet) -> Iterator[None]:
    """The test's requests must never reach the node."""
    before = len(fleet.node.requests)
    yield
    assert fleet.node.requests[before:] == []


# --- bodies that are not JSON objects -------------------------------------------------------------


@pytest.mark.parametrize("route", [*SPEECH_ROUTES, "/synthesize"])
@pytest.mark.parametrize("raw", [b'{"model": "indextts2", "input":', b"", b"not json", b"\xff\xfe{"])
def test_malformed_json_is_400_invalid_json(fleet, untouched, route, raw):
    err = openai_error(call(fleet.url + route, raw=raw), 400, None, code="invalid_json")
    assert "JSON" in err["message"]


@pytest.mark.parametrize("route", [*SPEECH_ROUTES, "/synthesize"])
@pytest.mark.parametrize("body", [["model", "indextts2"], "hello", 42, None])
def test_json_that_is_not_an_object_is_400(fleet, untouched, route, body):
    err = openai_error(call(fleet.url + route, raw=json.dumps(body).encode()), 400, None)
    assert "JSON object" in err["message"]


def test_deeply_nested_json_is_400_not_500(fleet, untouched):
    reply = call(fleet.url + "/v1/audio/speech", raw=b"[" * 1500)
    openai_error(reply, 400, None, code="invalid_json")


# --- missing fields and wrong types ----------------------------------------------------------------


@pytest.mark.parametrize("route", SPEECH_ROUTES)
@pytest.mark.parametrize("field", ["model", "input", "voice"])
def test_openai_missing_field_is_named(fleet, untouched, route, field):
    body = {k: v for k, v in GOOD_SPEECH.items() if k != field}
    err = openai_error(call(fleet.url + route, body), 400, field, code="missing_required_parameter")
    assert f"'{field}'" in err["message"]


@pytest.mark.parametrize("field", ["text", "voice"])
def test_native_missing_field_is_named(fleet, untouched, field):
    body = {k: v for k, v in GOOD_NATIVE.items() if k != field}
    err = openai_error(call(fleet.url + "/synthesize", body), 400, field, code="missing_required_parameter")
    assert f"'{field}'" in err["message"]


@pytest.mark.parametrize("route", [*SPEECH_ROUTES, "/synthesize"])
@pytest.mark.parametrize("field,value", [("text", 12345), ("speed", "fast"), ("voice", ["alloy"]), ("model", 7),
                                         ("voice", {"id": 5})])
def test_wrong_type_is_named(fleet, untouched, route, field, value):
    good = GOOD_NATIVE if route == "/synthesize" else GOOD_SPEECH
    if field == "text" and route != "/synthesize":
        field = "input"
    err = openai_error(call(fleet.url + route, {**good, field: value}), 400, field, code="invalid_type")
    assert f"'{field}'" in err["message"]


@pytest.mark.parametrize("route", SPEECH_ROUTES)
def test_unknown_response_format_lists_supported_values(fleet, untouched, route):
    err = openai_error(call(fleet.url + route, {**GOOD_SPEECH, "response_format": "xyz"}), 400, "response_format")
    assert "xyz" in err["message"]
    for fmt in FORMATS:
        assert f"'{fmt}'" in err["message"]


def test_native_unknown_format_lists_supported_values(fleet, untouched):
    err = openai_error(call(fleet.url + "/synthesize", {**GOOD_NATIVE, "format": "ogg"}), 400, "format")
    assert all(f"'{fmt}'" in err["message"] for fmt in FORMATS)


@pytest.mark.parametrize("route", [*SPEECH_ROUTES, "/synthesize"])
@pytest.mark.parametrize("speed", [0.1, 5, 1e309, float("nan")])
def test_speed_out_of_range_is_named(fleet, untouched, route, speed):
    good = GOOD_NATIVE if route == "/synthesize" else GOOD_SPEECH
    # json.dumps writes Infinity/NaN, which Python's parser (and many clients) accept
    err = openai_error(call(fleet.url + route, {**good, "speed": speed}), 400, "speed")
    assert "speed" in err["message"]


# --- text limits, unknown model and voice ----------------------------------------------------------


@pytest.mark.parametrize("route", [*SPEECH_ROUTES, "/synthesize"])
def test_text_over_max_text_chars_is_named(fleet, untouched, route):
    field = "text" if route == "/synthesize" else "input"
    good = GOOD_NATIVE if route == "/synthesize" else GOOD_SPEECH
    err = openai_error(call(fleet.url + route, {**good, field: "a" * (MAX_TEXT_CHARS + 1)}), 400, field,
                       code="string_above_max_length")
    assert str(MAX_TEXT_CHARS) in err["message"]


def test_text_at_max_text_chars_is_served(fleet):
    reply = call(fleet.url + "/v1/audio/speech", {**GOOD_SPEECH, "input": "a" * MAX_TEXT_CHARS})
    assert reply.status == 200 and reply.body[:4] == b"RIFF"


@pytest.mark.parametrize("route", [*SPEECH_ROUTES, "/synthesize"])
@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_text_is_named(fleet, untouched, route, text):
    field = "text" if route == "/synthesize" else "input"
    good = GOOD_NATIVE if route == "/synthesize" else GOOD_SPEECH
    openai_error(call(fleet.url + route, {**good, field: text}), 400, field, code="empty_input")


@pytest.mark.parametrize("route", [*SPEECH_ROUTES, "/synthesize"])
def test_unknown_model_is_named_and_lists_models(fleet, untouched, route):
    good = GOOD_NATIVE if route == "/synthesize" else GOOD_SPEECH
    err = openai_error(call(fleet.url + route, {**good, "model": "gpt-4o-mini-tts"}), 400, "model",
                       code="model_not_found")
    assert "gpt-4o-mini-tts" in err["message"] and "indextts2" in err["message"]


@pytest.mark.parametrize("route,voice", [(route, voice) for route in [*SPEECH_ROUTES, "/synthesize"]
                                         for voice in ["nosuch", "../../etc/passwd", {"id": "nosuch"}]
                                         if route != "/synthesize" or isinstance(voice, str)])
def test_unknown_voice_is_named_and_lists_voices(fleet, untouched, route, voice):
    good = GOOD_NATIVE if route == "/synthesize" else GOOD_SPEECH
    err = openai_error(call(fleet.url + route, {**good, "voice": voice}), 400, "voice", code="voice_not_found")
    assert "alloy" in err["message"] and "calm" in err["message"]


# --- body size ------------------------------------------------------------------------------------


def _big_body(route: str) -> bytes:
    field = "text" if route in ("/synthesize", "/tts_url") else "input"
    good = {"/synthesize": GOOD_NATIVE, "/tts_url": GOOD_TTS_URL}.get(route, GOOD_SPEECH)
    data = json.dumps({**good, field: "a" * (3 * MAX_BODY_BYTES)}).encode()
    assert len(data) > MAX_BODY_BYTES
    return data


@pytest.mark.parametrize("route", [*SPEECH_ROUTES, "/synthesize"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_max_body_bytes_is_413(fleet, untouched, route, chunked):
    data = _big_body(route)
    reply = call_chunked(fleet.url + route, data) if chunked else call(fleet.url + route, raw=data)
    err = openai_error(reply, 413, None, code="body_too_large")
    assert str(MAX_BODY_BYTES) in err["message"]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_tts_url_body_over_max_body_bytes_is_413_in_index_shape(fleet, untouched, chunked):
    data = _big_body("/tts_url")
    reply = call_chunked(fleet.url + "/tts_url", data) if chunked else call(fleet.url + "/tts_url", raw=data)
    assert str(MAX_BODY_BYTES) in index_error(reply, 413)


# --- the native route: unknown fields and emotion ---------------------------------------------------


@pytest.mark.parametrize("body,param", [({"bogus": 1}, "bogus"), ({"emotion": {"colour": "red"}}, "emotion.colour"),
                                        ({"spk_audio_path": "/etc/passwd"}, "spk_audio_path")])
def test_native_unknown_field_is_named(fleet, untouched, body, param):
    err = openai_error(call(fleet.url + "/synthesize", {**GOOD_NATIVE, **body}), 400, param,
                       code="unknown_parameter")
    assert f"'{param}'" in err["message"]


@pytest.mark.parametrize("vector,words", [
    ([0.5, 0.5, 0.5, 0.5], "8 values"),
    ([0.1] * 9, "8 values"),
    ([0.5] * 8, "1.5"),
    ([1.0, 1.0, 0, 0, 0, 0, 0, 0], "1.5"),
    ([2.0, 0, 0, 0, 0, 0, 0, 0], "between 0 and 1"),
    ([-0.5, 0, 0, 0, 0, 0, 0, 0], "between 0 and 1"),
])
def test_bad_emotion_vector_is_400_and_never_forwarded(fleet, untouched, vector, words):
    err = openai_error(call(fleet.url + "/synthesize", {**GOOD_NATIVE, "emotion": {"vector": vector}}), 400,
                       "emotion.vector")
    assert words in err["message"]


def test_nan_emotion_vector_is_400_and_never_forwarded(fleet):
    before = len(fleet.node.requests)
    reply = call(fleet.url + "/synthesize", {**GOOD_NATIVE, "emotion": {"vector": [float("nan")] * 8}})
    assert fleet.node.requests[before:] == []
    openai_error(reply, 400, "emotion.vector")


def test_valid_emotion_vector_is_forwarded(fleet):
    vector = [0, 0, 0.55, 0, 0, 0, 0, 0.2]
    reply = call(fleet.url + "/synthesize", {**GOOD_NATIVE, "emotion": {"vector": vector}})
    assert reply.status == 200 and reply.body[:4] == b"RIFF"
    path, sent = fleet.node.requests[-1]
    assert path == "/tts_url" and sent["emo_control_method"] == 2 and sent["emo_vec"] == vector


@pytest.mark.parametrize("emotion", [{"vector": [0.1] * 8, "text": "happy"}, {"audio": "calm", "text": "sad"},
                                     {"audio": "calm", "vector": [0.1] * 8}])
def test_two_emotion_sources_are_refused(fleet, untouched, emotion):
    err = openai_error(call(fleet.url + "/synthesize", {**GOOD_NATIVE, "emotion": emotion}), 400, "emotion")
    assert all(name in err["message"] for name in emotion)


def test_unknown_emotion_audio_voice_is_named(fleet, untouched):
    err = openai_error(call(fleet.url + "/synthesize", {**GOOD_NATIVE, "emotion": {"audio": "nosuch"}}), 400,
                       "emotion.audio")
    assert "nosuch" in err["message"]


@pytest.mark.parametrize("route", [*SPEECH_ROUTES, "/synthesize"])
@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speed_on_index_tts_vllm_only_model_names_the_backend_type(fleet, untouched, route, speed):
    good = GOOD_NATIVE if route == "/synthesize" else GOOD_SPEECH
    err = openai_error(call(fleet.url + route, {**good, "speed": speed}), 400, "speed")
    assert "index-tts-vllm" in err["message"]


# --- /tts_url: index-tts-vllm's own error shape ------------------------------------------------------


@pytest.mark.parametrize("body,field", [
    ({"spk_audio_path": "/data/voices/alloy.wav"}, "text"),
    ({"text": 12, "spk_audio_path": "/data/voices/alloy.wav"}, "text"),
    ({"text": "hello"}, "spk_audio_path"),
    ({"text": "hello", "spk_audio_path": 3}, "spk_audio_path"),
    ({}, "text"),
])
def test_tts_url_missing_field_is_400_in_index_shape(fleet, untouched, body, field):
    assert f"'{field}'" in index_error(call(fleet.url + "/tts_url", body), 400)


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b'"text"', b"", b"\xff"])
def test_tts_url_bad_json_is_400_in_index_shape(fleet, untouched, raw):
    assert "JSON" in index_error(call(fleet.url + "/tts_url", raw=raw), 400)


@pytest.mark.parametrize("text", ["", "a" * (MAX_TEXT_CHARS + 1)])
def test_tts_url_text_limits_in_index_shape(fleet, untouched, text):
    assert "'text'" in index_error(call(fleet.url + "/tts_url", {**GOOD_TTS_URL, "text": text}), 400)


def test_tts_url_emotion_vector_sum_over_limit_is_400_and_never_forwarded(fleet):
    before = len(fleet.node.requests)
    body = {**GOOD_TTS_URL, "emo_control_method": 2, "emo_vec": [0.5] * 8}
    reply = call(fleet.url + "/tts_url", body)
    assert fleet.node.requests[before:] == []
    assert "emo_vec" in index_error(reply, 400)


# --- routes and methods --------------------------------------------------------------------------


@pytest.mark.parametrize("method,path", [("GET", "/nope"), ("POST", "/v1/audio/speechx"), ("GET", "/v2/models"),
                                         ("POST", "/v1/chat/completions")])
def test_unknown_route_is_404_json(fleet, untouched, method, path):
    reply = call(fleet.url + path, GOOD_SPEECH if method == "POST" else None, method=method)
    err = openai_error(reply, 404, None, code="not_found")
    assert path in err["message"]


@pytest.mark.parametrize("method,path", [("GET", "/v1/audio/speech"), ("PUT", "/audio/speech"),
                                         ("GET", "/synthesize"), ("DELETE", "/tts_url"), ("POST", "/health"),
                                         ("POST", "/v1/models")])
def test_wrong_method_is_405_json(fleet, untouched, method, path):
    reply = call(fleet.url + path, {} if method in ("POST", "PUT") else None, method=method)
    err = openai_error(reply, 405, None, code="method_not_allowed")
    assert method in err["message"] and path in err["message"]
    assert reply.headers["allow"]


# --- the official SDK ------------------------------------------------------------------------------


@pytest.mark.parametrize("changes,param", [
    ({"voice": "nosuch"}, "voice"),
    ({"model": "nosuch"}, "model"),
    ({"speed": 5.0}, "speed"),
    ({"speed": 2.0}, "speed"),
    ({"response_format": "xyz"}, "response_format"),
    ({"input": ""}, "input"),
    ({"input": "a" * (MAX_TEXT_CHARS + 1)}, "input"),
])
def test_openai_sdk_raises_bad_request_naming_the_field(fleet, untouched, changes, param):
    client = openai_client(fleet.url)
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(**{**GOOD_SPEECH, **changes})
    exc = info.value
    assert exc.status_code == 400
    assert exc.param == param
    assert exc.body["param"] == param and exc.body["type"] == "invalid_request_error"
    assert exc.response.headers["x-request-id"]


# --- failing and misbehaving nodes ----------------------------------------------------------------


def test_node_500_is_502_naming_the_endpoint_without_its_traceback(nodes, router, caplog):
    node = nodes(name="oom", fail=True)
    srv = router(fleet_config(node.url))
    endpoint = node.url.removeprefix("http://")
    caplog.set_level(logging.WARNING)
    calls = [("/v1/audio/speech", GOOD_SPEECH), ("/audio/speech", {**GOOD_SPEECH, "response_format": "mp3"}),
             ("/synthesize", GOOD_NATIVE), ("/synthesize", {**GOOD_NATIVE, "stream": True})]
    for route, body in calls:
        reply = call(srv.url + route, body)
        err = openai_error(reply, 502, None, code="backend_error", type_="server_error")
        assert endpoint in err["message"], route
        assert b"CUDA" not in reply.body and b"OutOfMemory" not in reply.body
    message = index_error(call(srv.url + "/tts_url", GOOD_TTS_URL), 502)
    assert endpoint in message and "CUDA" not in message
    assert len(node.requests) == len(calls) + 1  # each did reach the node, once
    # the operator gets what the client does not: the node's traceback, in the router's log
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Traceback" in logged and "CUDA out of memory" in logged and endpoint in logged
    assert call(srv.url + "/livez", method="GET").status == 200  # alive; its breaker has ejected the node


def test_node_answering_garbage_is_502_not_200(nodes, router):
    node = nodes(name="html", garbage=True)
    srv = router(fleet_config(node.url))
    endpoint = node.url.removeprefix("http://")
    for fmt in ("wav", "mp3", "pcm"):
        reply = call(srv.url + "/v1/audio/speech", {**GOOD_SPEECH, "response_format": fmt})
        err = openai_error(reply, 502, None, code="backend_error", type_="server_error")
        assert endpoint in err["message"], fmt
        assert b"<html" not in reply.body
    reply = call(srv.url + "/synthesize", {**GOOD_NATIVE, "stream": True})
    assert reply.status == 502 and b"<html" not in reply.body
    assert "<html" not in index_error(call(srv.url + "/tts_url", GOOD_TTS_URL), 502)


def test_router_survives_everything_and_still_serves(fleet):
    """A barrage of bad requests on every route, then health and a real synthesis still work."""
    bad_raw = [b"", b"{", b"[" * 100, b"\x00\x01\x02", b'{"model": {"$ne": null}}', b"null", b"1e999"]
    bad_json = [{"model": "indextts2", "voice": {"id": {"id": "x"}}, "input": "x"},
                {"model": "indextts2", "voice": "alloy", "input": "x", "stream_format": "video"},
                {"text": "x", "voice": "alloy", "sample_rate": 1},
                {"text": "x", "voice": "alloy", "max_text_tokens_per_sentence": -1},
                {"text": "x", "voice": "alloy", "emotion": {"weight": 3, "text": "happy"}},
                {"text": "x", "voice": "alloy", "emotion": "happy"}]
    for route in [*SPEECH_ROUTES, "/synthesize", "/tts_url"]:
        for raw in bad_raw:
            reply = call(fleet.url + route, raw=raw)
            assert 400 <= reply.status < 500, (route, raw, reply.status, reply.body)
            assert b"Traceback" not in reply.body
        for body in bad_json:
            reply = call(fleet.url + route, body)
            assert 400 <= reply.status < 500, (route, body, reply.status, reply.body)
    health = call(fleet.url + "/health", method="GET")
    assert health.status == 200 and health.json()["status"] == "healthy"
    ok = call(fleet.url + "/v1/audio/speech", GOOD_SPEECH)
    assert ok.status == 200 and ok.body[:4] == b"RIFF"
