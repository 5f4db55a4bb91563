"""Long text fanned out over emulated index-tts-vllm nodes, through a real router, over real HTTP.

The emulator speaks a tone whose length follows the text (``speech_router/emulator/audio.py``), so the audio
alone says which segment came where: voiced runs of the expected lengths, in text order, separated by
exactly ``silence_ms`` of digital silence. The nodes' request logs say what each node was asked.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import av
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from speech_router.emulator import audio as emu_audio
from speech_router.text.segment import split_segments
from tests.conftest import fleet_config

SENTENCES = [  # every pair is longer than MAX_SEGMENT: one sentence per segment, each of its own length
    "The old lighthouse keeper climbed the stairs at dusk.",
    "Gulls circled above the harbour.",
    "A violin played somewhere in the fog.",
    "Nobody on the quay could say where the music came from.",
    "Fishermen mended their nets.",
    "Later the tide turned and the boats went out to sea.",
]
TEXT = " ".join(SENTENCES)
MAX_SEGMENT, MIN_SEGMENT, SILENCE_MS = 60, 10, 200
FANOUT = {"threshold_chars": 100, "max_segment_chars": MAX_SEGMENT, "min_segment_chars": MIN_SEGMENT,
          "max_parallel": 2, "silence_ms": SILENCE_MS}
RATE = emu_audio.INDEX_TTS_RATE
VOICE_PATH = "/data/voices/alloy.wav"  # the alloy voice of fleet_config
SPEECH = "/v1/audio/speech"
#: mp3 and ADTS AAC carry encoder delay and padding that decoders play; the rest are exact
TOLERANCE_S = {"mp3": 0.1, "aac": 0.1, "opus": 0.03, "flac": 0.005, "wav": 0.005, "pcm": 0.005}


# -- helpers ----------------------------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool  # False: the body ended before its chunked terminator


def post(url: str, path: str, body: dict[str, Any]) -> Reply:
    """POST JSON and read the whole answer; a truncated chunked body comes back with complete=False."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        resp = conn.getresponse()
        try:
            data, complete = resp.read(), True
        except http.client.IncompleteRead as exc:
            data, complete = exc.partial, False
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, complete)
    finally:
        conn.close()


def get_json(url: str, path: str) -> Any:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def metric(url: str, name: str, **labels: str) -> float:
    """One sample from the router's /metrics (0 when absent)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    found = [s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


def wait_for(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def config(*urls: str, **fanout: Any) -> dict[str, Any]:
    cfg = fleet_config(*urls)
    cfg["models"]["indextts2"] = {"pools": ["gpu"], "fanout": {**FANOUT, **fanout}}
    return cfg


def speech(fmt: str = "wav", text: str = TEXT, **extra: Any) -> dict[str, Any]:
    return {"model": "indextts2", "input": text, "voice": "alloy", "response_format": fmt, **extra}


def expected_segments(text: str = TEXT) -> list[str]:
    return split_segments(text, max_chars=MAX_SEGMENT, min_chars=MIN_SEGMENT)


def node_texts(*nodes: Any) -> list[list[str]]:
    """The texts each node was asked to speak, per node."""
    return [[body["text"] for path, body in node.requests if path == "/tts_url"] for node in nodes]


def expected_seconds(segments: list[str]) -> float:
    return sum(emu_audio.duration_s(s) for s in segments) + SILENCE_MS / 1000 * (len(segments) - 1)


def wav_samples(data: bytes) -> tuple[int, np.ndarray]:
    assert data[:4] == b"RIFF" and data[36:40] == b"data", data[:44]
    return int.from_bytes(data[24:28], "little"), np.frombuffer(data[44:len(data) & ~1], dtype="<i2")


def split_on_silence(samples: np.ndarray, min_gap: int) -> tuple[list[np.ndarray], list[int]]:
    """Voiced runs and the lengths of the digital-silence gaps (at least ``min_gap`` zeros) between them."""
    zero = np.concatenate(([0], (samples == 0).astype(np.int8), [0]))
    edges = np.diff(zero)
    gaps = [(s, e) for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
            if e - s >= min_gap]
    voiced, start = [], 0
    for s, e in gaps:
        voiced.append(samples[start:s])
        start = e
    voiced.append(samples[start:])
    return voiced, [int(e - s) for s, e in gaps]


def assert_segments_in_order(samples: np.ndarray, segments: list[str]) -> None:
    """Each segment's tone, in text order, at its own length, with SILENCE_MS of zeros between."""
    voiced, gaps = split_on_silence(samples, min_gap=RATE // 20)
    lengths = [len(v) for v in voiced]
    wanted = [round(emu_audio.duration_s(s) * RATE) for s in segments]
    assert len(lengths) == len(wanted), (lengths, wanted)
    for got, want in zip(lengths, wanted, strict=True):
        assert abs(got - want) <= 3, (lengths, wanted)  # a sine starts (and may end) on a zero sample
    silence = round(RATE * SILENCE_MS / 1000)
    assert all(abs(g - silence) <= 3 for g in gaps), gaps
    tone = emu_audio.tone_hz(VOICE_PATH)
    for run in voiced:
        assert emu_audio.dominant_hz(run, RATE) == pytest.approx(tone, abs=2)


def decoded_seconds(data: bytes, fmt: str) -> float:
    if fmt == "pcm":  # raw 24 kHz s16le mono
        return len(data) / 2 / 24000
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        count = sum(frame.samples for frame in container.decode(stream))
        return count / stream.codec_context.sample_rate


def sse_events(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[len(b"data: "):]) for line in body.split(b"\n") if line.startswith(b"data: ")]


# -- ordered streaming ------------------------------------------------------------------------------------------

def test_segments_stream_in_text_order_from_several_nodes(nodes, router):
    fleet = [nodes(name=f"n{i}", delay_per_char_s=0.002) for i in range(4)]  # long segments finish last
    srv = router(config(*(n.url for n in fleet)))
    segments = expected_segments()
    assert len(segments) == len(SENTENCES)

    reply = post(srv.url, SPEECH, speech("wav"))

    assert reply.status == 200 and reply.complete
    assert reply.headers["x-speech-router-segments"] == str(len(segments))
    rate, samples = wav_samples(reply.body)
    assert rate == RATE
    assert_segments_in_order(samples, segments)
    asked = node_texts(*fleet)
    assert sorted(t for texts in asked for t in texts) == sorted(segments)  # each segment once, nothing else
    assert sum(1 for texts in asked if texts) >= 2  # spread over the fleet
    assert metric(srv.url, "speech_router_fanout_requests_total", model="indextts2") == 1
    assert metric(srv.url, "speech_router_segments_total", model="indextts2", outcome="ok") == len(segments)
    urls = {ep["name"]: ep["url"].rstrip("/") for ep in get_json(srv.url, "/health")["endpoints"]}
    first = next(n for n in fleet if n.url.rstrip("/") == urls[reply.headers["x-speech-router-endpoint"]])
    assert segments[0] in node_texts(first)[0]  # the endpoint header names segment 1's node


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_every_format_carries_all_segments_and_silences(nodes, router, fmt):
    fleet = [nodes(name=f"n{i}") for i in range(2)]
    srv = router(config(*(n.url for n in fleet)))

    reply = post(srv.url, SPEECH, speech(fmt))

    assert reply.status == 200 and reply.complete
    assert decoded_seconds(reply.body, fmt) == pytest.approx(expected_seconds(expected_segments()),
                                                             abs=TOLERANCE_S[fmt])


def test_sse_sends_deltas_of_every_segment_then_done(nodes, router):
    fleet = [nodes(name=f"n{i}") for i in range(2)]
    srv = router(config(*(n.url for n in fleet)))

    reply = post(srv.url, SPEECH, speech("pcm", stream_format="sse"))

    assert reply.status == 200 and reply.complete
    events = sse_events(reply.body)
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) / 2 / 24000 == pytest.approx(expected_seconds(expected_segments()), abs=0.005)


def test_non_stream_is_one_joined_wav_with_its_sizes_and_one_voice_and_emotion(nodes, router):
    fleet = [nodes(name=f"n{i}") for i in range(3)]
    srv = router(config(*(n.url for n in fleet)))
    vector = [0.0, 0.4, 0.0, 0.0, 0.0, 0.0, 0.2, 0.0]

    reply = post(srv.url, "/synthesize", {"model": "indextts2", "text": TEXT, "voice": "alloy", "format": "wav",
                                          "stream": False, "emotion": {"vector": vector}})

    assert reply.status == 200 and reply.complete
    data = reply.body
    assert int(reply.headers["content-length"]) == len(data)
    assert int.from_bytes(data[4:8], "little") == len(data) - 8
    assert int.from_bytes(data[40:44], "little") == len(data) - 44
    segments = expected_segments()
    assert_segments_in_order(wav_samples(data)[1], segments)
    assert reply.headers["x-speech-router-attempts"] == str(len(segments))
    bodies = [body for node in fleet for path, body in node.requests if path == "/tts_url"]
    assert len(bodies) == len(segments)
    assert {(b["spk_audio_path"], b["emo_control_method"], tuple(b["emo_vec"])) for b in bodies} == \
        {(VOICE_PATH, 2, tuple(vector))}


# -- when not to fan out ----------------------------------------------------------------------------------------

def test_short_text_is_not_fanned_out(nodes, router):
    node = nodes(name="n0")
    srv = router(config(node.url))
    short = SENTENCES[0]

    reply = post(srv.url, SPEECH, speech("wav", text=short))

    assert reply.status == 200
    assert "x-speech-router-segments" not in reply.headers
    assert node_texts(node) == [[short]]


def test_tts_url_pass_through_is_never_fanned_out(nodes, router):
    node = nodes(name="n0")
    srv = router(config(node.url))

    reply = post(srv.url, "/tts_url", {"text": TEXT, "spk_audio_path": VOICE_PATH})

    assert reply.status == 200
    assert "x-speech-router-segments" not in reply.headers
    assert node_texts(node) == [[TEXT]]


def test_fan_out_can_be_switched_off_per_model(nodes, router):
    node = nodes(name="n0")
    srv = router(config(node.url, enabled=False))

    reply = post(srv.url, SPEECH, speech("wav"))

    assert reply.status == 200
    assert "x-speech-router-segments" not in reply.headers
    assert node_texts(node) == [[TEXT]]
    assert metric(srv.url, "speech_router_fanout_requests_total", model="indextts2") == 0


def test_fan_out_is_off_by_default_for_backend_types_that_take_long_text_whole(router):
    srv = router({"pools": {"cpu": {"type": "espeak"}}, "models": {"tts-1": {"pools": ["cpu"], "fanout": FANOUT}},
                  "voices": {"alloy": {"espeak": "en-us"}}})

    reply = post(srv.url, SPEECH, {"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "pcm"})

    assert reply.status == 200 and reply.body
    assert "x-speech-router-segments" not in reply.headers


# -- fairness ---------------------------------------------------------------------------------------------------

def test_one_request_never_has_more_than_max_parallel_segments_in_flight(nodes, router):
    fleet = [nodes(name=f"n{i}", delay_s=0.25) for i in range(4)]  # 4 free nodes, 16 free router slots
    srv = router(config(*(n.url for n in fleet), max_parallel=2))
    segments = expected_segments()
    replies: list[Reply] = []
    thread = threading.Thread(target=lambda: replies.append(post(srv.url, SPEECH, speech("pcm"))))
    thread.start()
    seen: list[int] = []
    try:
        while thread.is_alive() and len(seen) < 5000:
            served = sum(n.served for n in fleet)
            asked = sum(len(n.requests) for n in fleet)
            if served == sum(n.served for n in fleet):  # nothing finished meanwhile: an exact count in flight
                seen.append(asked - served)
            time.sleep(0.002)
    finally:
        thread.join(timeout=20)
    assert replies and replies[0].status == 200 and replies[0].complete
    assert max(seen) == 2
    assert sum(len(texts) for texts in node_texts(*fleet)) == len(segments)


# -- failures ---------------------------------------------------------------------------------------------------

def test_a_segment_that_fails_on_one_node_is_retried_on_another(nodes, router):
    broken, good = nodes(name="broken", fail_text="violin"), nodes(name="good")
    cfg = config(broken.url, good.url, max_parallel=1)
    cfg["pools"]["gpu"]["balancer"] = {"policy": "least_outstanding"}
    cfg["pools"]["gpu"]["endpoints"][0]["weight"] = 100  # the broken node is asked first whenever it is free
    srv = router(cfg)
    segments = expected_segments()

    reply = post(srv.url, "/synthesize", {"model": "indextts2", "text": TEXT, "voice": "alloy", "format": "wav"})

    assert reply.status == 200 and reply.complete
    assert_segments_in_order(wav_samples(reply.body)[1], segments)
    failing = SENTENCES[2]
    assert failing in node_texts(broken)[0] and failing in node_texts(good)[0]
    assert reply.headers["x-speech-router-attempts"] == str(len(segments) + 1)
    assert metric(srv.url, "speech_router_segments_total", model="indextts2", outcome="ok") == len(segments)
    assert metric(srv.url, "speech_router_segments_total", model="indextts2", outcome="failed") == 0


def test_first_segment_failing_everywhere_fails_the_request_cleanly(nodes, router):
    fleet = [nodes(name=f"n{i}", fail_text="lighthouse") for i in range(2)]
    srv = router(config(*(n.url for n in fleet)))

    reply = post(srv.url, SPEECH, speech("wav"))

    assert reply.status == 502 and reply.complete
    assert reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body)["error"]["code"] == "backend_error"
    assert metric(srv.url, "speech_router_segments_total", model="indextts2", outcome="failed") == 1
    assert metric(srv.url, "speech_router_stream_errors_total", route=SPEECH, model="indextts2") == 0


def test_later_segment_failing_everywhere_truncates_the_audio_stream(nodes, router):
    fleet = [nodes(name=f"n{i}", fail_text="violin") for i in range(2)]
    srv = router(config(*(n.url for n in fleet), max_parallel=1))  # segment 3 starts after segment 1 is sent

    reply = post(srv.url, SPEECH, speech("wav"))

    assert reply.status == 200
    assert not reply.complete  # the chunked body never got its terminator
    voiced, _ = split_on_silence(wav_samples(reply.body)[1], min_gap=RATE // 20)
    assert len(voiced) <= 2  # segments 1 and 2 at most, never anything after the failed one
    assert len(voiced[0]) == pytest.approx(round(emu_audio.duration_s(SENTENCES[0]) * RATE), abs=3)
    wait_for(lambda: metric(srv.url, "speech_router_stream_errors_total", route=SPEECH, model="indextts2") == 1,
             "the stream error to be counted")
    assert metric(srv.url, "speech_router_segments_total", model="indextts2", outcome="failed") == 1
    assert not any(SENTENCES[3] in texts for texts in node_texts(*fleet))  # nothing after the failure was asked


def test_later_segment_failing_everywhere_ends_sse_with_an_error_event(nodes, router):
    fleet = [nodes(name=f"n{i}", fail_text="violin") for i in range(2)]
    srv = router(config(*(n.url for n in fleet), max_parallel=1))

    reply = post(srv.url, SPEECH, speech("pcm", stream_format="sse"))

    assert reply.status == 200 and reply.complete
    events = sse_events(reply.body)
    assert events[0]["type"] == "speech.audio.delta"
    assert events[-1]["type"] == "error" and "segment 3" in events[-1]["error"]["message"]
    assert "speech.audio.done" not in [e["type"] for e in events]
    wait_for(lambda: metric(srv.url, "speech_router_stream_errors_total", route=SPEECH, model="indextts2") == 1,
             "the stream error to be counted")


def test_client_leaving_mid_stream_cancels_segments_and_frees_every_slot(nodes, router):
    fleet = [nodes(name=f"n{i}", delay_s=0.6) for i in range(4)]
    srv = router(config(*(n.url for n in fleet), max_parallel=2))
    parts = urlsplit(srv.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    try:
        conn.request("POST", SPEECH, json.dumps(speech("wav")), {"content-type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read(1024)  # segment 1 arrived; segments 3 and 4 are being synthesized now
        resp.close()
    finally:
        conn.close()

    def idle() -> bool:
        return all(ep["inflight"] == 0 for ep in get_json(srv.url, "/health")["endpoints"])

    wait_for(idle, "every endpoint slot to be given back")
    wait_for(lambda: sum(n.app.state.emulator.in_flight for n in fleet) == 0, "the nodes to finish")
    assert sum(len(texts) for texts in node_texts(*fleet)) < len(expected_segments())  # the rest never started
    assert metric(srv.url, "speech_router_segments_total", model="indextts2", outcome="failed") == 0
