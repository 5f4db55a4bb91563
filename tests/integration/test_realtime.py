"""Realtime speech over ``WS /v1/audio/speech/stream``: text streamed in token by token, audio streamed out, with a
real WebSocket client (``websockets``) against a real router in front of emulated index-tts-vllm nodes.

Order is asserted, never time: "before input.done" means the audio was read before the test sent it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from speech_router.emulator import audio
from speech_router.emulator.index_tts_vllm import EmulatorConfig
from tests.conftest import Node, fleet_config, serve_router
from tests.integration.realtime import (
    RCVBUF,
    buffered_sentences,
    closed,
    fetch_metrics,
    next_event,
    next_sentence,
    open_session,
    send,
    send_tokens,
    spoken,
    stream_url,
    utterance,
)

pytestmark = pytest.mark.anyio

TEXT = ("Good morning, and thank you for calling. Your order left our warehouse today. It should reach you on "
        "Friday before noon. Is there anything else I can help you with? Have a lovely day.")
SENTENCES = ["Good morning, and thank you for calling.", "Your order left our warehouse today.",
             "It should reach you on Friday before noon.", "Is there anything else I can help you with?",
             "Have a lovely day."]


@pytest.fixture(scope="module")
def fleet() -> Iterator[tuple[list[Node], str]]:
    """Three emulated nodes that take a little time per sentence, one slower (later sentences may finish before
    earlier ones), and a router over them."""
    nodes = [Node(EmulatorConfig(name=f"n{i}", delay_s=delay)) for i, delay in enumerate((0.4, 0.1, 0.2))]
    for node in nodes:
        node.server.start()
    srv = serve_router(fleet_config(*(n.url for n in nodes)))
    try:
        yield nodes, srv.url
    finally:
        srv.stop()
        for node in nodes:
            node.server.stop()


def texts_served(node: Node) -> list[str]:
    return [body["text"] for path, body in node.requests if path == "/tts_url"]


async def test_a_token_stream_becomes_ordered_decodable_audio_from_several_endpoints(fleet):
    nodes, url = fleet
    before = [len(texts_served(n)) for n in nodes]
    async with await open_session(url) as ws:
        await send_tokens(ws, TEXT)
        heard = await utterance(ws)
    assert [s.text for s in heard.sentences] == SENTENCES  # cut at sentence ends, delivered in order
    for sentence in heard.sentences:
        samples, rate = sentence.samples()  # each sentence is a whole WAV of its own
        assert rate == audio.INDEX_TTS_RATE and sentence.done == {**sentence.done, "error": False}
        assert len(samples) == round(audio.duration_s(sentence.text) * rate)  # the node spoke that sentence
        assert sentence.done["total_bytes"] == len(sentence.audio)
    served = {n.config.name: texts_served(n)[b:] for n, b in zip(nodes, before, strict=True)}
    assert sorted(t for texts in served.values() for t in texts) == sorted(SENTENCES)  # each synthesized once
    assert sum(1 for texts in served.values() if texts) >= 2, served  # side by side on several endpoints


async def test_first_audio_arrives_before_input_done(fleet):
    _, url = fleet
    async with await open_session(url) as ws:
        await send_tokens(ws, "Good morning, and thank you for calling. Your", done=False)
        first = await next_sentence(ws)  # input.done was not sent: the first sentence is spoken anyway
        assert first.text == SENTENCES[0] and first.samples()[0].size
        await send_tokens(ws, " order left our warehouse today.")
        rest = await utterance(ws, heard=1)
    assert spoken(rest.sentences) == SENTENCES[1]
    assert rest.done["total_sentences"] == 2  # the utterance's count, the first sentence included


async def test_a_sentence_that_ends_the_text_so_far_is_spoken_without_more_text(fleet):
    _, url = fleet
    async with await open_session(url) as ws:
        await send_tokens(ws, "Good morning, and thank you for calling.", done=False)  # then the LLM pauses
        assert (await next_sentence(ws)).text == SENTENCES[0]
        await send(ws, {"type": "input.done"})
        assert (await next_event(ws))["type"] == "session.done"


async def test_two_utterances_on_one_connection_each_with_its_config(fleet):
    _, url = fleet
    async with await open_session(url) as ws:
        await send_tokens(ws, "Hello there, my friend. How are you doing?")
        first = await utterance(ws)
        await send(ws, {"type": "session.config", "voice": "calm", "response_format": "pcm"})  # between utterances
        await send_tokens(ws, "Very well, thank you. And you?")
        second = await utterance(ws)
    assert (first.done["utterance_index"], second.done["utterance_index"]) == (0, 1)
    assert [s.start["sentence_index"] for s in second.sentences] == [0, 1]
    assert spoken(second.sentences) == "Very well, thank you. And you?"
    assert {s.start["format"] for s in second.sentences} == {"pcm"}
    hz = {}
    for name, heard in (("alloy", first), ("calm", second)):
        samples, rate = heard.sentences[0].samples()
        assert rate == (24000 if name == "calm" else audio.INDEX_TTS_RATE)
        hz[name] = audio.dominant_hz(samples, rate)
    assert abs(hz["alloy"] - audio.tone_hz("/data/voices/alloy.wav")) < 5
    assert abs(hz["calm"] - audio.tone_hz("/data/voices/calm.wav")) < 5


async def test_a_client_that_stops_reading_holds_no_endpoint_slot_and_gets_everything_in_order(nodes, router):
    """The router synthesizes a bounded number of sentences ahead of a client that does not read; the text of the
    others waits in the router, no node request is held, and once the client reads, everything comes in order."""
    fleet = [nodes(name=f"s{i}", delay_s=0.01) for i in range(3)]
    config = fleet_config(*(n.url for n in fleet))
    config["server"] = {"realtime": {"max_buffered_segments": 2}}
    url = router(config).url
    sentence = "Sentence number {} is here, and it carries enough words to make its audio long."
    # more than the sockets and the two processes can hold were synthesized ahead only if the router kept them
    held = buffered_sentences(sentence)
    bound = held + 2 + 1  # + max_buffered_segments + the one being sent
    count = bound + 10
    if count > 150:
        pytest.skip(f"this host's TCP buffers hold {held} sentences: too much audio to see the router's own bound")
    sentences = [sentence.format(i) for i in range(count)]
    raw = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    async with await open_session(url, sock=raw, max_queue=1, ping_interval=None) as ws:
        await send_tokens(ws, " ".join(sentences))
        served = await settled(fleet)
        assert served <= bound, f"{served} of {count} sentences synthesized for a client that read nothing"
        assert all(n.app.state.emulator.in_flight == 0 for n in fleet)  # finished audio waits in the router
        heard = await utterance(ws)  # now it reads: all of it, in order
    assert [s.text for s in heard.sentences] == sentences
    assert sum(n.served for n in fleet) == count


async def settled(fleet: list[Node]) -> int:
    """The nodes' answers so far, once no new one came for a while."""
    last, quiet = -1, 0
    while quiet < 5:
        await asyncio.sleep(0.1)
        served = sum(n.served for n in fleet)
        quiet = quiet + 1 if served == last else 0
        last = served
    return last


async def test_a_client_that_vanishes_cancels_its_sentences_on_the_nodes(nodes, router):
    fleet = [nodes(name=f"h{i}", hang=True, abort_on_disconnect=True) for i in range(2)]
    url = router(fleet_config(*(n.url for n in fleet))).url
    ws = await open_session(url)
    await send_tokens(ws, TEXT, done=False)
    states = [n.app.state.emulator for n in fleet]
    while sum(s.in_flight for s in states) < 3:  # sentences are synthesizing (the nodes hang)
        await asyncio.sleep(0.02)
    ws.transport.abort()  # gone without a close frame
    await ws.wait_closed()
    deadline = time.monotonic() + 10
    while sum(s.in_flight for s in states) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert sum(s.in_flight for s in states) == 0  # each node request was cancelled (its connection closed)
    assert sum(s.disconnected for s in states) == sum(len(texts_served(n)) for n in fleet) >= 3


async def test_every_sentence_failure_is_an_error_event_and_the_session_goes_on(nodes, router):
    node = nodes(name="f", fail_text="warehouse")  # fails like an out-of-memory GPU, for one sentence only
    url = router(fleet_config(node.url, retry={"max_attempts": 1})).url
    async with await open_session(url) as ws:
        await send_tokens(ws, TEXT)
        heard = await utterance(ws)
        await send(ws, {"type": "session.close"})
        code, _ = await closed(ws)
    assert [s.text for s in heard.sentences] == SENTENCES
    failed = [s for s in heard.sentences if s.done["error"]]
    assert [s.text for s in failed] == [SENTENCES[1]] and failed[0].audio == b""
    assert failed[0].errors[0]["code"] == "backend_error" and "Traceback" not in failed[0].errors[0]["message"]
    assert code == 1000


async def test_session_close_delivers_what_was_cut_then_closes_normally(fleet):
    _, url = fleet
    async with await open_session(url) as ws:
        await send_tokens(ws, "Good morning, and thank you for calling. Your", done=False)
        await send(ws, {"type": "session.close"})
        code, events = await closed(ws)
    assert code == 1000
    assert [e["sentence_text"] for e in events if e["type"] == "audio.start"] == [SENTENCES[0]]


async def test_metrics_and_one_access_line_per_session(fleet, caplog):
    _, url = fleet
    caplog.set_level("INFO", logger="speech_router.access")
    async with await open_session(url, additional_headers={"x-request-id": "rt-session-1"}) as ws:
        assert ws.response is not None and ws.response.headers["x-request-id"] == "rt-session-1"
        await send_tokens(ws, "Hello there, my friend. How are you?")
        await utterance(ws)
        await send(ws, {"type": "session.close"})
        await closed(ws)
    lines = await access_lines(caplog, "rt-session-1")
    assert len(lines) == 1
    line = lines[0]
    assert (line["outcome"], line["close_code"], line["model"], line["voice"]) == ("closed", 1000, "indextts2", "alloy")
    assert (line["utterances"], line["sentences"], line["failed_sentences"]) == (1, 2, 0)
    assert line["first_audio_s"] is not None and line["endpoints"]
    metrics = await fetch_metrics(url)
    for family in ("speech_router_realtime_sessions_total{outcome=\"closed\"}",
                   "speech_router_realtime_segments_total{model=\"indextts2\",outcome=\"ok\"}",
                   "speech_router_realtime_first_audio_seconds_count{model=\"indextts2\"}",
                   "speech_router_realtime_gap_seconds_count{model=\"indextts2\"}",
                   "speech_router_realtime_sessions_open "):
        assert family in metrics, family


async def access_lines(caplog: Any, request_id: str) -> list[dict[str, Any]]:
    import json

    for _ in range(100):  # the line is written once the session's task ends, just after the close
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "speech_router.access"]
        mine = [line for line in lines if line["request_id"] == request_id]
        if mine:
            return mine
        await asyncio.sleep(0.02)
    return []


def test_stream_url_is_the_http_url_with_the_ws_scheme():
    assert stream_url("http://127.0.0.1:9") == "ws://127.0.0.1:9/v1/audio/speech/stream"
