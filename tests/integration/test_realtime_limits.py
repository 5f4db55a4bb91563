"""Every refusal of a realtime session is an ``error`` event with a clear message and code, then a close code;
a client's mistake after a valid config is an ``error`` event and the session goes on. Real router, real client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from speech_router.emulator.index_tts_vllm import EmulatorConfig
from tests.conftest import Node, fleet_config, serve_router
from tests.integration.realtime import (
    RCVBUF,
    buffered_sentences,
    closed,
    fetch_metrics,
    next_event,
    open_session,
    send,
    send_tokens,
    spoken,
    stream_url,
    utterance,
)

pytestmark = pytest.mark.anyio

ALICE, BOB, CAROL = "alice-key", "bob-key", "carol-key"
ENV = {"SPEECH_ROUTER_API_KEYS": f"alice={ALICE},bob={BOB}", "CAROL_KEY": CAROL}
LIMITS = {"config_timeout": 0.5, "idle_timeout": 0.5, "max_sessions_per_key": 1, "max_message_bytes": 2048,
          "max_buffered_chars": 300}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """A router with client keys (carol may open one session a minute) and small realtime limits."""
    node = Node(EmulatorConfig(name="k"))
    node.server.start()
    config = fleet_config(node.url)
    config["server"] = {"realtime": LIMITS, "auth": {"keys": [
        {"name": "carol", "key_env": "CAROL_KEY", "requests_per_minute": 1}]}}
    srv = serve_router(config, env=ENV)
    try:
        yield srv.url
    finally:
        srv.stop()
        node.server.stop()


def bearer(key: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {key}"}}


async def refused(url: str, first: dict[str, Any] | str | bytes | None = None, **connect_args: Any
                  ) -> tuple[int | None, dict[str, Any]]:
    """Connect, send ``first`` (if any), and return the close code and the one error event before it."""
    async with connect(stream_url(url), **connect_args) as ws:
        if first is not None:
            with contextlib.suppress(ConnectionClosed):  # a refusal may come before the client's first message
                await ws.send(json.dumps(first) if isinstance(first, dict) else first)
        code, events = await closed(ws)
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1, events
    assert errors[0]["message"], errors[0]
    return code, errors[0]


CONFIG = {"type": "session.config", "voice": "alloy", "response_format": "wav"}


@pytest.mark.parametrize("headers", [{}, bearer("not-a-key")], ids=["no key", "unknown key"])
async def test_a_missing_or_unknown_key_is_refused(url, headers):
    code, error = await refused(url, CONFIG, **headers)
    assert (code, error["code"]) == (1008, "invalid_api_key")
    assert "not-a-key" not in error["message"]


@pytest.mark.parametrize("prefix", ["bearer.", "openai-insecure-api-key."])
async def test_a_browser_sends_its_key_as_a_subprotocol_and_gets_the_other_one_back(url, prefix, caplog):
    caplog.set_level("DEBUG")
    async with connect(stream_url(url), subprotocols=["speech-router", prefix + BOB]) as ws:
        assert ws.subprotocol == "speech-router"  # never the key
        await send(ws, CONFIG)
        await send_tokens(ws, "Hello from a browser.")
        heard = await utterance(ws)
    assert spoken(heard.sentences) == "Hello from a browser."
    for _ in range(200):  # the session's access line comes once it has ended, after the close
        if any(r.name == "speech_router.access" for r in caplog.records):
            break
        await asyncio.sleep(0.01)
    router_lines = [r for r in caplog.records if not r.name.startswith("websockets.client")]  # not the test's own
    leaked = [(r.name, r.getMessage()[:200]) for r in router_lines if BOB in r.getMessage()]
    assert router_lines and not leaked, (len(router_lines), leaked)  # the key is never logged


async def test_open_sessions_per_key_are_limited(url):
    first = await open_session(url, **bearer(ALICE))
    try:
        code, error = await refused(url, CONFIG, **bearer(ALICE))
        assert (code, error["code"]) == (1013, "too_many_sessions")
        async with await open_session(url, **bearer(BOB)) as other:  # another key is not held back
            await send_tokens(other, "Bob speaks.")
            assert (await utterance(other)).done["total_sentences"] == 1
    finally:
        await first.close()
    for _ in range(100):  # the router counts the first session out once it has ended
        async with await open_session(url, **bearer(ALICE)) as again:
            await send_tokens(again, "Alice again.")
            try:
                await utterance(again)
                return
            except AssertionError:
                await asyncio.sleep(0.05)
    raise AssertionError("alice's session was never counted out")


async def test_a_keys_rate_limit_refuses_the_next_session(url):
    async with await open_session(url, **bearer(CAROL)) as ws:
        await send(ws, {"type": "session.close"})
        assert (await closed(ws))[0] == 1000
    code, error = await refused(url, CONFIG, **bearer(CAROL))
    assert (code, error["code"]) == (1013, "rate_limit_exceeded")


async def test_no_config_in_time_is_refused(url):
    code, error = await refused(url, None, **bearer(BOB))
    assert (code, error["code"]) == (1008, "config_timeout")


async def test_an_idle_session_is_closed(url):
    code, error = await refused(url, CONFIG, **bearer(BOB))
    assert (code, error["code"]) == (1008, "idle_timeout")


@pytest.mark.parametrize("first, close, code, param", [
    ({"type": "input.text", "text": "hello"}, 1007, "config_expected", "type"),
    ("this is not JSON", 1007, "invalid_json", None),
    ({**CONFIG, "voice": "nobody"}, 1007, "voice_not_found", "voice"),
    ({**CONFIG, "ref_audio": "data:audio/wav;base64,AAAA"}, 1007, "invalid_value", "ref_audio"),
    ({**CONFIG, "speed": 1.5}, 1007, "unsupported_parameter", "speed"),  # index-tts-vllm takes no speed
    (b"\x00\x01binary", 1003, "binary_message", None),
    ({**CONFIG, "instructions": "x" * 3000}, 1009, "message_too_large", None),
], ids=["not config first", "not JSON", "unknown voice", "audio in the config", "speed", "binary", "too large"])
async def test_a_broken_first_message_is_refused_naming_the_field(url, first, close, code, param):
    got_close, error = await refused(url, first, **bearer(BOB))
    assert (got_close, error["code"], error["param"]) == (close, code, param)


async def test_a_message_over_the_limit_ends_a_running_session(url):
    async with await open_session(url, **bearer(BOB)) as ws:
        await send(ws, {"type": "input.text", "text": "word " * 500})
        code, events = await closed(ws)
    assert code == 1009 and [e["code"] for e in events if e["type"] == "error"] == ["message_too_large"]


async def test_too_much_text_waiting_ends_the_session(url):
    async with await open_session(url, {"split_granularity": "none"}, **bearer(BOB)) as ws:  # cut at input.done only
        for _ in range(4):
            await send(ws, {"type": "input.text", "text": "More words and then more words again, " * 2})
        code, events = await closed(ws)
    assert code == 1008 and [e["code"] for e in events if e["type"] == "error"] == ["buffer_full"]


async def test_a_clients_mistakes_after_its_config_get_errors_and_the_session_goes_on(url):
    async with await open_session(url, **bearer(BOB)) as ws:
        mistakes = [({"type": "speak"}, "unknown_message_type", "type"),
                    ({"type": "input.text", "text": 5}, "invalid_type", "text"),
                    ({"type": "session.config", "voice": "nobody"}, "voice_not_found", "voice"),
                    ({"type": "input.text", "text": "bad \ud800 text"}, "invalid_text", "text")]
        for message, code, param in mistakes:
            await ws.send(json.dumps(message))
            error = await next_event(ws)
            assert (error["type"], error["code"], error["param"]) == ("error", code, param), error
        await ws.send("not JSON")
        assert (await next_event(ws))["code"] == "invalid_json"
        await send_tokens(ws, "Still here.", done=False)
        await send(ws, {**CONFIG, "voice": "calm"})  # not while an utterance is open
        assert (await next_event(ws))["code"] == "utterance_in_progress"
        await send(ws, {"type": "input.done"})
        heard = await utterance(ws)
    assert spoken(heard.sentences) == "Still here."  # with the first config's voice, still in force


async def test_a_plain_get_is_told_to_use_a_websocket(url):
    request = urllib.request.Request(url + "/v1/audio/speech/stream", headers={"Authorization": f"Bearer {BOB}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
    with info.value as response:
        body = json.loads(response.read())
    assert (response.code, body["error"]["code"]) == (426, "websocket_required")


async def test_open_sessions_in_all_are_limited(nodes, router):
    node = nodes(name="m")
    config = fleet_config(node.url)
    config["server"] = {"realtime": {"max_sessions": 1}}
    url = router(config).url
    async with await open_session(url):
        code, error = await refused(url, CONFIG)
    assert (code, error["code"]) == (1013, "too_many_sessions")


async def test_a_client_that_reads_nothing_for_the_idle_timeout_is_let_go(nodes, router):
    """Slow reading is fine; reading nothing at all for ``idle_timeout`` while audio waits ends the session, and
    with it everything it held."""
    node = nodes(name="r")
    config = fleet_config(node.url)
    config["server"] = {"realtime": {"idle_timeout": 0.5}}
    url = router(config).url
    sentence = "Sentence number {} is here, and it carries enough words to make its audio long."
    count = buffered_sentences(sentence) + 10
    raw = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    async with await open_session(url, sock=raw, max_queue=1, ping_interval=None) as ws:
        await send_tokens(ws, " ".join(sentence.format(i) for i in range(count)))
        for _ in range(200):
            if 'speech_router_realtime_sessions_total{outcome="timeout"} 1.0' in await fetch_metrics(url):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the session was kept for a client that read nothing")
        code, _ = await closed(ws)
    assert code != 1000

