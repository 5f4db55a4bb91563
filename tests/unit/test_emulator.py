"""The emulated TTS servers answer with the real servers' shapes, and their knobs do what they say."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import threading
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from email.message import Message
from typing import Any

import aiohttp
import numpy as np
import pytest
import soundfile as sf

from speech_router.emulator import (
    EmulatorConfig,
    EmulatorState,
    OpenAIConfig,
    ServerHandle,
    audio,
    index_tts_vllm,
    openai_speech,
    serve_in_thread,
)
from speech_router.emulator import __main__ as cli
from speech_router.emulator.engine import node_path
from speech_router.emulator.index_tts_vllm import EMO_VEC_SUM_ERROR
from speech_router.emulator.state import Knobs

SPEAKER = "/data/voices/alice.wav"


@dataclass
class Node:
    handle: ServerHandle
    config: Any
    state: EmulatorState

    @property
    def url(self) -> str:
        return self.handle.url


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(url: str, body: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None,
            timeout: float = 5.0) -> Reply:
    """GET, or POST when a body is given; HTTP errors are returned, not raised."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Reply(err.code, err.headers, err.read())


def read_wav(body: bytes) -> tuple[wave.Wave_read, np.ndarray]:
    with wave.open(io.BytesIO(body)) as w:
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return w, samples


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def restore(config: Knobs, fresh: Knobs) -> None:
    for f in fields(fresh):
        setattr(config, f.name, getattr(fresh, f.name))


def _serve(app_factory: Callable[[Any], Any], config: Any) -> Iterator[Node]:
    app = app_factory(config)
    with serve_in_thread(app) as handle:
        yield Node(handle, config, app.state.emulator)


@pytest.fixture(scope="module")
def _v2_node() -> Iterator[Node]:
    yield from _serve(index_tts_vllm.create_app, EmulatorConfig(name="v2-node"))


@pytest.fixture(scope="module")
def _v1_node() -> Iterator[Node]:
    yield from _serve(index_tts_vllm.create_app, EmulatorConfig(api="v1", name="v1-node"))


@pytest.fixture(scope="module")
def _openai_node() -> Iterator[Node]:
    yield from _serve(openai_speech.create_app, OpenAIConfig(name="oai"))


@pytest.fixture
def v2(_v2_node: Node) -> Node:
    restore(_v2_node.config, EmulatorConfig(name="v2-node"))
    _v2_node.state.reset()
    return _v2_node


@pytest.fixture
def v1(_v1_node: Node) -> Node:
    restore(_v1_node.config, EmulatorConfig(api="v1", name="v1-node"))
    _v1_node.state.reset()
    return _v1_node


@pytest.fixture
def oai(_openai_node: Node) -> Node:
    restore(_openai_node.config, OpenAIConfig(name="oai"))
    _openai_node.state.reset()
    return _openai_node


# index-tts-vllm v2 ------------------------------------------------------------------------------------------


def test_v2_health_healthy_then_unloaded(v2: Node) -> None:
    reply = request(v2.url + "/health")
    assert reply.status == 200
    body = reply.json()
    assert body["status"] == "healthy" and body["message"] == "Service is running"
    assert isinstance(body["timestamp"], float)
    assert reply.headers["x-emulator-node"] == "v2-node"

    v2.config.loaded = False
    reply = request(v2.url + "/health")
    assert (reply.status, reply.json()) == (503, {"status": "unhealthy", "message": "TTS model not initialized"})


def test_v2_tts_url_returns_whole_wav(v2: Node) -> None:
    text = "Hello from the emulator."
    reply = request(v2.url + "/tts_url", {"text": text, "spk_audio_path": SPEAKER})
    assert reply.status == 200
    assert reply.headers["content-type"] == "audio/wav"
    assert int(reply.headers["content-length"]) == len(reply.body)
    w, samples = read_wav(reply.body)
    assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (22050, 1, 2)
    assert w.getnframes() == round(audio.duration_s(text) * 22050)
    assert abs(audio.dominant_hz(samples, 22050) - audio.tone_hz(SPEAKER)) < 2
    assert v2.state.served == 1 and v2.state.in_flight == 0


def test_v2_duration_follows_text_and_tone_follows_speaker(v2: Node) -> None:
    short = read_wav(request(v2.url + "/tts_url", {"text": "Hi.", "spk_audio_path": "/a.wav"}).body)
    long = read_wav(request(v2.url + "/tts_url", {"text": "x" * 50, "spk_audio_path": "/b.wav"}).body)
    assert short[0].getnframes() == round(audio.MIN_SECONDS * 22050)
    assert long[0].getnframes() == round(50 * audio.SECONDS_PER_CHAR * 22050)
    assert audio.tone_hz("/a.wav") != audio.tone_hz("/b.wav")
    assert abs(audio.dominant_hz(long[1], 22050) - audio.tone_hz("/b.wav")) < 2


def test_v2_missing_text_is_500_with_keyerror_traceback(v2: Node) -> None:
    reply = request(v2.url + "/tts_url", {"spk_audio_path": SPEAKER})
    assert reply.status == 500
    body = reply.json()
    assert body["status"] == "error"
    assert body["error"].startswith("Traceback (most recent call last):\n")
    assert body["error"].rstrip().endswith("KeyError: 'text'")


def test_v2_bad_json_is_500_with_decode_traceback(v2: Node) -> None:
    reply = request(v2.url + "/tts_url", raw=b"{not json")
    assert reply.status == 500
    assert "JSONDecodeError" in reply.json()["error"]
    assert v2.state.requests == [("/tts_url", "{not json")]


def test_v2_emo_vec_sum_over_limit_is_the_chinese_error(v2: Node) -> None:
    body = {"text": "t", "spk_audio_path": SPEAKER, "emo_control_method": 2, "emo_vec": [0.8, 0.8, 0, 0, 0, 0, 0, 0]}
    reply = request(v2.url + "/tts_url", body)
    assert (reply.status, reply.json()) == (500, {"status": "error", "error": EMO_VEC_SUM_ERROR})
    assert reply.json()["error"] == "情感向量之和不能超过1.5，请调整后重试。"
    # The same vector is ignored under another method, as on the real server.
    assert request(v2.url + "/tts_url", {**body, "emo_control_method": 0}).status == 200


def test_v2_unknown_reference_path_is_file_not_found(v2: Node) -> None:
    reply = request(v2.url + "/tts_url", {"text": "t", "spk_audio_path": "/data/missing.wav"})
    assert reply.status == 500
    assert "FileNotFoundError: [Errno 2] No such file or directory: '/data/missing.wav'" in reply.json()["error"]

    v2.config.known_paths = {SPEAKER}
    assert request(v2.url + "/tts_url", {"text": "t", "spk_audio_path": SPEAKER}).status == 200
    assert request(v2.url + "/tts_url", {"text": "t", "spk_audio_path": "/data/bob.wav"}).status == 500
    emo = {"text": "t", "spk_audio_path": SPEAKER, "emo_control_method": 1, "emo_ref_path": "/data/sad.wav"}
    assert "'/data/sad.wav'" in request(v2.url + "/tts_url", emo).json()["error"]


@pytest.mark.parametrize("path", ["/data/missing it's.wav", '/data/missing "q".wav', "/data/missing\\b.wav",
                                  "/data/missing\tt.wav", "/data/missing\u200bz.wav"])
def test_v2_quotes_a_missing_path_as_the_real_server_does(v2: Node, path: str) -> None:
    """librosa -> audioread -> open(): the OSError's message holds the path as repr() writes it, on one line."""
    error = request(v2.url + "/tts_url", {"text": "t", "spk_audio_path": path}).json()["error"]
    assert error.rstrip().splitlines()[-1] == f"FileNotFoundError: [Errno 2] No such file or directory: {path!r}"


def test_v2_records_exactly_what_was_sent(v2: Node) -> None:
    body = {"text": "t", "spk_audio_path": SPEAKER, "emo_control_method": 3, "emo_text": "calm", "emo_weight": 0.6}
    request(v2.url + "/tts_url", body)
    assert v2.state.requests == [("/tts_url", body)]
    assert v2.state.headers[0]["content-type"] == "application/json"


def test_v2_not_loaded_fails_like_tts_none(v2: Node) -> None:
    v2.config.loaded = False
    reply = request(v2.url + "/tts_url", {"text": "t", "spk_audio_path": SPEAKER})
    assert reply.status == 500
    assert "AttributeError: 'NoneType' object has no attribute 'infer'" in reply.json()["error"]


def test_v2_fail_knob_is_cuda_oom_traceback(v2: Node) -> None:
    v2.config.fail = True
    reply = request(v2.url + "/tts_url", {"text": "t", "spk_audio_path": SPEAKER})
    assert reply.status == 500
    error = reply.json()["error"]
    assert error.startswith("Traceback") and "torch.OutOfMemoryError: CUDA out of memory." in error


def test_v2_garbage_knob_is_200_but_not_audio(v2: Node) -> None:
    v2.config.garbage = True
    reply = request(v2.url + "/tts_url", {"text": "t", "spk_audio_path": SPEAKER})
    assert reply.status == 200 and reply.headers["content-type"] == "audio/wav"
    with pytest.raises(wave.Error):
        read_wav(reply.body)


def test_v2_truncate_knob_cuts_the_body_short(v2: Node) -> None:
    v2.config.truncate = True
    with pytest.raises(http.client.IncompleteRead):
        request(v2.url + "/tts_url", {"text": "some words", "spk_audio_path": SPEAKER})


def test_v2_truncate_seen_from_aiohttp(v2: Node) -> None:
    v2.config.truncate = True

    async def fetch() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.post(v2.url + "/tts_url", json={"text": "abc", "spk_audio_path": SPEAKER}) as resp:
                assert resp.status == 200
                await resp.read()

    with pytest.raises(aiohttp.ClientPayloadError):
        asyncio.run(fetch())


def test_v2_slots_queue_extra_requests(v2: Node) -> None:
    v2.config.slots = 1
    v2.config.delay_s = 0.25
    body = {"text": "t", "spk_audio_path": SPEAKER}
    replies: list[Reply] = []
    threads = [threading.Thread(target=lambda: replies.append(request(v2.url + "/tts_url", body))) for _ in range(2)]
    for t in threads:
        t.start()
    wait_until(lambda: v2.state.in_flight == 2)
    assert v2.state.busy == 1
    for t in threads:
        t.join(5)
    assert [r.status for r in replies] == [200, 200]
    assert v2.state.busy == 0 and v2.state.in_flight == 0


def test_fastapi_style_404_for_unknown_paths(v2: Node) -> None:
    reply = request(v2.url + "/tts", {"text": "t", "character": "x"})  # a v1-only route
    assert (reply.status, reply.json()) == (404, {"detail": "Not Found"})


def test_control_api_changes_knobs(v2: Node) -> None:
    reply = request(v2.url + "/_emulator/config", {"loaded": False, "name": "renamed", "known_paths": ["/a.wav"]})
    assert reply.status == 200 and reply.json()["config"]["loaded"] is False
    assert v2.config.loaded is False and v2.config.known_paths == {"/a.wav"}
    assert request(v2.url + "/health").headers["x-emulator-node"] == "renamed"
    assert request(v2.url + "/_emulator/config", {"nope": 1}).status == 400
    assert request(v2.url + "/_emulator/state").json()["in_flight"] == 0


# stop / restart ---------------------------------------------------------------------------------------------


def test_hang_does_not_prevent_stop() -> None:
    config = EmulatorConfig(hang=True)
    app = index_tts_vllm.create_app(config)
    state: EmulatorState = app.state.emulator
    outcome: list[BaseException | Reply] = []

    def call() -> None:
        try:
            outcome.append(request(handle.url + "/tts_url", {"text": "t", "spk_audio_path": SPEAKER}, timeout=10))
        except (http.client.HTTPException, OSError) as exc:
            outcome.append(exc)

    with serve_in_thread(app) as handle:
        assert request(handle.url + "/health").status == 200  # the event loop is free while synthesis hangs
        client = threading.Thread(target=call)
        client.start()
        wait_until(lambda: state.in_flight == 1)
        config.hang_health = True  # now the whole process looks frozen
        with pytest.raises(OSError):  # a socket timeout, possibly wrapped in URLError
            request(handle.url + "/health", timeout=0.2)
        handle.stop()
        client.join(5)
    assert not client.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], (http.client.HTTPException, OSError))
    assert state.in_flight == 0 and state.served == 0


def test_restart_on_same_port() -> None:
    with serve_in_thread(index_tts_vllm.create_app()) as handle:
        port = handle.port
        assert port != 0 and handle.url == f"http://127.0.0.1:{port}"
        handle.stop()
        assert not handle.running
        with pytest.raises(urllib.error.URLError):
            request(handle.url + "/health", timeout=1)
        handle.start()
        assert handle.port == port
        assert request(handle.url + "/health").status == 200
        handle.restart()
        assert request(handle.url + "/tts_url", {"text": "t", "spk_audio_path": SPEAKER}).status == 200


# index-tts-vllm v1 ------------------------------------------------------------------------------------------


def test_v1_tts_known_and_unknown_character(v1: Node) -> None:
    reply = request(v1.url + "/tts", {"text": "hello", "character": "narrator"})
    assert reply.status == 200 and reply.headers["content-type"] == "audio/wav"
    _, samples = read_wav(reply.body)
    assert abs(audio.dominant_hz(samples, 22050) - audio.tone_hz(node_path("assets/narrator.wav"))) < 2

    reply = request(v1.url + "/tts", {"text": "hello", "character": "nobody"})
    assert (reply.status, reply.json()) == (404, {"status": "error", "error": "Speaker 'nobody' not found"})


def test_v1_voices_is_the_speaker_dict(v1: Node) -> None:
    v1.config.speakers = {"ann": ["assets/ann.wav", "assets/ann2.wav"]}
    assert request(v1.url + "/audio/voices").json() == {"ann": ["assets/ann.wav", "assets/ann2.wav"]}
    assert request(v1.url + "/tts", {"text": "t", "character": "default"}).status == 404


def test_v1_audio_speech(v1: Node) -> None:
    body = {"model": "tts-1", "input": "hi there", "voice": "default", "response_format": "mp3", "speed": 2.0}
    reply = request(v1.url + "/audio/speech", body)
    assert reply.status == 200 and reply.headers["content-type"] == "audio/wav"  # format and speed ignored
    assert read_wav(reply.body)[0].getnframes() == round(audio.duration_s("hi there") * 22050)

    reply = request(v1.url + "/audio/speech", {**body, "voice": "zed"})
    assert (reply.status, reply.json()) == (404, {"status": "error", "error": "Voice 'zed' not found"})
    assert request(v1.url + "/v1/audio/speech", body).status == 404  # no /v1 prefix on the real server

    reply = request(v1.url + "/audio/speech", {"voice": "default"})
    assert reply.status == 500 and "KeyError: 'input'" in reply.json()["error"]


def test_v1_tts_url_needs_a_path(v1: Node) -> None:
    reply = request(v1.url + "/tts_url", {"text": "t", "seed": 8})
    assert (reply.status, reply.json()) == (400, {"status": "error", "error": "audio_path or audio_paths is required"})
    assert request(v1.url + "/tts_url", {"text": "t", "audio_paths": [SPEAKER], "seed": 8}).status == 200
    assert request(v1.url + "/tts_url", {"text": "t", "audio_path": SPEAKER}).status == 200


# OpenAI-compatible ------------------------------------------------------------------------------------------


def test_openai_wav_is_chunked_24k(oai: Node) -> None:
    reply = request(oai.url + "/v1/audio/speech", {"model": "tts-1", "input": "hello", "voice": "alloy",
                                                   "response_format": "wav"})
    assert reply.status == 200 and reply.headers["content-type"] == "audio/wav"
    assert reply.headers["transfer-encoding"] == "chunked"
    w, samples = read_wav(reply.body)
    assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
    assert abs(audio.dominant_hz(samples, 24000) - audio.tone_hz("alloy")) < 2
    assert oai.state.requests[0][1]["voice"] == "alloy"


def test_openai_pcm_flac_mp3_and_speed(oai: Node) -> None:
    base = {"model": "tts-1", "input": "x" * 20, "voice": "alloy"}
    pcm = request(oai.url + "/v1/audio/speech", {**base, "response_format": "pcm"})
    assert pcm.headers["content-type"] == "audio/pcm"
    assert len(pcm.body) == 2 * round(audio.duration_s(base["input"]) * 24000)
    fast = request(oai.url + "/v1/audio/speech", {**base, "response_format": "pcm", "speed": 2.0})
    assert len(fast.body) == 2 * round(audio.duration_s(base["input"], 2.0) * 24000)

    flac = request(oai.url + "/v1/audio/speech", {**base, "response_format": "flac"})
    samples, rate = sf.read(io.BytesIO(flac.body), dtype="int16")
    assert (flac.headers["content-type"], rate, len(samples)) == ("audio/flac", 24000, len(pcm.body) // 2)

    mp3 = request(oai.url + "/v1/audio/speech", base)  # mp3 is the default
    if audio.can_encode("mp3"):
        assert mp3.status == 200 and mp3.headers["content-type"] == "audio/mpeg"
    else:
        assert mp3.status == 400 and mp3.json()["error"]["param"] == "response_format"


def test_openai_sse_events(oai: Node) -> None:
    body = {"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "pcm", "stream_format": "sse"}
    reply = request(oai.url + "/v1/audio/speech", body)
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in reply.body.decode().splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["input_tokens"] == 2
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) == 2 * round(audio.duration_s("hi") * 24000)


def test_openai_api_key(oai: Node) -> None:
    oai.config.api_key = "sk-test-1234"
    body = {"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "wav"}
    for headers in ({}, {"authorization": "Bearer sk-wrong-0000"}):
        reply = request(oai.url + "/v1/audio/speech", body, headers=headers)
        assert reply.status == 401
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    ok = request(oai.url + "/v1/audio/speech", body, headers={"authorization": "Bearer sk-test-1234"})
    assert ok.status == 200
    assert oai.state.headers[-1]["authorization"] == "Bearer sk-test-1234"


def test_openai_errors(oai: Node) -> None:
    oai.config.voices = {"alloy", "echo"}
    body = {"model": "tts-1", "input": "hi", "voice": "nova", "response_format": "wav"}
    reply = request(oai.url + "/v1/audio/speech", body)
    assert reply.status == 400
    assert reply.json()["error"] == {"message": "Invalid value: 'nova'. Supported values are: 'alloy' and 'echo'.",
                                     "type": "invalid_request_error", "param": "voice", "code": "invalid_value"}
    missing = request(oai.url + "/v1/audio/speech", {"model": "tts-1", "voice": "alloy"}).json()["error"]
    assert (missing["param"], missing["code"]) == ("input", "missing_required_parameter")

    oai.config.error_status = 429
    reply = request(oai.url + "/v1/audio/speech", {**body, "voice": "echo"})
    assert reply.status == 429 and reply.headers["retry-after"] == "1"
    oai.config.error_status = None
    oai.config.fail = True
    assert request(oai.url + "/v1/audio/speech", {**body, "voice": "echo"}).status == 500


def test_openai_truncate_and_models(oai: Node) -> None:
    oai.config.truncate = True
    with pytest.raises(http.client.IncompleteRead):
        request(oai.url + "/v1/audio/speech", {"model": "tts-1", "input": "words " * 5, "voice": "alloy"})
    models = request(oai.url + "/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tts-1", "gpt-4o-mini-tts"]
    assert oai.state.in_flight == 0


# command line -----------------------------------------------------------------------------------------------


def test_cli_builds_a_fleet() -> None:
    args = cli._parser().parse_args(["--api", "v1", "--nodes", "3", "--delay-per-char", "0.01", "--slots", "2"])
    apps = cli.build_apps(args)
    configs = [app.state.emulator.config for app in apps]
    assert [c.name for c in configs] == ["node0", "node1", "node2"]
    assert all(c.api == "v1" and c.slots == 2 and c.delay_per_char_s == 0.01 for c in configs)
