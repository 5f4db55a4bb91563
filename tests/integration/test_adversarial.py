"""Hostile clients and a misbehaving node against `speech-router serve` itself, a separate process on 127.0.0.1.

The router runs as operators run it (the CLI, its logging set up, the edge limits at the protocol), in front of
one node from ``speech_router.emulator.misbehaving``. Each scenario checks the status the client gets; at the end
the process must still be up, its memory must not have grown with what was sent, and no configured secret may
appear in any line it logged (every line one JSON object; no uvicorn ERROR for our own mid-stream aborts).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from speech_router.emulator.misbehaving import create_app as misbehaving_node
from speech_router.emulator.serve import ServerHandle
from tests.processes import RouterProcess, router_process

NODE_KEY = "sk-node-bearer-4f1d2a9c7e"
POOL_HEADER = "pool-header-secret-b83e61"
ENDPOINT_HEADER = "endpoint-header-secret-0c5d77"
URL_PASSWORD = "url-password-secret-9a2f"
CLIENT_KEY = "sk-client-secret-71be3c"
ADMIN_KEY = "admin-secret-e4d90b"
#: what the router sends for the URL's credentials: ``Authorization: Basic base64(user:password)``
BASIC_TOKEN = base64.b64encode(f"user:{URL_PASSWORD}".encode()).decode()
SECRETS = (NODE_KEY, POOL_HEADER, ENDPOINT_HEADER, URL_PASSWORD, CLIENT_KEY, ADMIN_KEY, BASIC_TOKEN,
           BASIC_TOKEN[:12])  # the token cut short gives the password's start away
#: RSS the router may gain over the whole module (Python's allocator keeps some); the attacks send far more
RSS_GROWTH_LIMIT = 48 * 1024 * 1024


@dataclass
class Router:
    process: RouterProcess
    node: Any

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def addr(self) -> tuple[str, int]:
        return self.process.addr

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        return self.process.proc

    @property
    def log(self) -> Path:
        return self.process.log

    def rss(self) -> int:
        return self.process.rss()


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    tmp = tmp_path_factory.mktemp("adversarial")
    node = ServerHandle(misbehaving_node())
    node.start()
    url = f"http://user:{URL_PASSWORD}@127.0.0.1:{node.port}"
    config = {
        "server": {"header_timeout": 1, "body_timeout": 1, "max_connections": 64},
        "pools": {"bad": {"type": "index-tts-vllm", "api_key_env": "NODE_KEY", "headers": {"X-Pool": POOL_HEADER},
                          "endpoints": [{"url": node.url, "headers": {"X-Endpoint": ENDPOINT_HEADER}}],
                          "breaker": {"enabled": False}, "health_check": {"interval": 0.5}},
                  # URL credentials and an Authorization header cannot go together (config refuses): their own pool
                  "creds": {"type": "index-tts-vllm", "endpoints": [{"url": url}], "breaker": {"enabled": False},
                            "health_check": {"interval": 0.5}}},
        "models": {"bad": {"pools": ["bad"]}, "cached": {"pools": ["bad"], "cache": True}, "creds": ["creds"]},
        "voices": {"alloy": {"spk_audio_path": "/data/voices/alloy.wav"}},
    }
    env = {"NODE_KEY": NODE_KEY, "SPEECH_ROUTER_API_KEYS": f"client={CLIENT_KEY}", "SPEECH_ROUTER_ADMIN_KEY": ADMIN_KEY}
    try:
        with router_process(config, tmp, env) as process:
            yield Router(process, node)
    finally:
        node.stop()


def call(router: Router, path: str, body: Any, *, key: str | None = CLIENT_KEY,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{router.port}{path}", data=data, headers=headers or {})
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()
    except (urllib.error.URLError, ConnectionError):
        return 0, {}, b""


def speak(router: Router, text: str, model: str = "bad", fmt: str = "wav") -> tuple[int, dict[str, str], bytes]:
    return call(router, "/v1/audio/speech", {"model": model, "voice": "alloy", "input": text, "response_format": fmt})


def raw(router: Router, data: bytes, *, read_timeout: float = 10.0) -> bytes:
    with socket.create_connection(router.addr, timeout=read_timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
        return reply


@pytest.fixture(scope="module")
def baseline_rss(router: Router) -> int:
    assert speak(router, "warm up the codecs")[0] == 200
    assert speak(router, "warm up the codecs", fmt="mp3")[0] == 200
    return router.rss()


@pytest.mark.parametrize("behaviour", ["redirect_loop", "empty_wav", "wav_8bit", "wav_1hz", "wav_size_lies",
                                       "huge_body"])
@pytest.mark.parametrize("fmt", ["wav", "mp3", "pcm"])
def test_a_bad_answer_is_a_502_never_a_200(router, baseline_rss, behaviour, fmt):
    status, _, body = speak(router, f"[{behaviour}] hello there", fmt=fmt)
    assert status == 502, (behaviour, fmt, body[:200])
    message = json.loads(body)["error"]["message"]
    assert not any(s in message for s in SECRETS)


def test_a_redirect_loop_with_url_credentials_is_a_502(router, baseline_rss):
    status, _, body = speak(router, "[redirect_loop] hello there", model="creds")
    assert status == 502 and URL_PASSWORD.encode() not in body


def test_an_answer_cut_mid_stream_is_never_a_whole_200(router, baseline_rss):
    status, _, body = speak(router, "[close_mid_stream] a sentence that is cut short", fmt="mp3")
    assert status in (0, 502), status  # 502 before any byte; a broken response after one


@pytest.mark.parametrize("behaviour", ["empty_wav", "wav_size_lies"])
def test_a_bad_answer_is_never_cached(router, baseline_rss, behaviour):
    before = router.node.app.state.calls.get(behaviour, 0)
    for _ in range(2):
        assert speak(router, f"[{behaviour}] cache me", model="cached")[0] == 502
    assert router.node.app.state.calls[behaviour] == before + 2  # the second one asked the node again


def test_a_nodes_4xx_words_are_summarised_not_passed_through(router, baseline_rss):
    status, _, body = speak(router, "[long_4xx] hello")
    assert status == 400
    message = json.loads(body)["error"]["message"]
    assert len(message) < 300 and "\x1b" not in message and "\u202e" not in message
    status, _, body = speak(router, "[echo_headers] hello")
    assert status == 400 and not any(s.encode() in body for s in SECRETS)


@pytest.mark.parametrize("model", ["bad", "creds"])
def test_a_node_quoting_its_credentials_bare_or_encoded_passes_none_of_them_on(router, baseline_rss, model):
    """The node quotes every header value without its name, the raw header list and the decoded Basic token."""
    status, _, body = speak(router, "[echo_credentials] hello", model=model)
    assert status == 400, body[:300]
    assert "values" in json.loads(body)["error"]["message"]  # the node's words did come through, masked
    seen = [body.decode(), call(router, "/metrics", None)[2].decode(),
            call(router, "/admin/endpoints", None, key=ADMIN_KEY)[2].decode()]
    for secret in SECRETS:
        assert not any(secret in text for text in seen), secret


def test_strict_types_and_surrogates_are_400_naming_the_field(router, baseline_rss):
    for body, param in [({"stream": "yes"}, "stream"), ({"speed": True}, "speed")]:
        status, _, reply = call(router, "/synthesize", {"text": "hi", "voice": "alloy", "model": "bad", **body})
        assert status == 400 and json.loads(reply)["error"]["param"] == param, reply
    bad_key = b'{"text": "hi", "spk_audio_path": "/a.wav", "\\ud800": 1}'
    for model_path in ("/tts_url",):
        req = urllib.request.Request(f"http://127.0.0.1:{router.port}{model_path}", data=bad_key,
                                     headers={"Authorization": f"Bearer {CLIENT_KEY}",
                                              "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 400
        assert "not text" in json.loads(err.value.read())["error"]


def test_huge_and_many_headers_are_431(router, baseline_rss):
    for _ in range(8):  # 8 x 8 MiB offered: refused after 16 KiB each
        reply = raw(router, b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 431"), reply[:100]
    many = b"".join(b"X-%d: v\r\n" % i for i in range(100_000))
    reply = raw(router, b"GET /livez HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 431"), reply[:100]


def test_stalled_requests_are_408_and_slowloris_is_dropped(router, baseline_rss):
    socks = [socket.create_connection(router.addr, timeout=10) for _ in range(40)]
    try:
        for sock in socks:
            sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for sock in socks:  # each one is answered 408 and closed within header_timeout (1 s)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
    finally:
        for sock in socks:
            sock.close()


def test_slow_readers_do_not_hold_the_router(router, baseline_rss):
    body = json.dumps({"model": "bad", "voice": "alloy", "input": "a long enough text " * 20,
                       "response_format": "pcm"}).encode()
    head = (f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    socks = []
    try:
        for _ in range(20):
            sock = socket.create_connection(router.addr, timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(head + body)  # and read nothing for now
            socks.append(sock)
        time.sleep(1)
        assert speak(router, "others are still served")[0] == 200
    finally:
        for sock in socks:
            sock.close()


def test_the_router_is_up_bounded_and_its_log_is_clean(router, baseline_rss):
    """Runs last in this module (pytest keeps file order): the whole log of every scenario above."""
    assert router.proc.poll() is None
    assert speak(router, "still here")[0] == 200
    assert router.rss() - baseline_rss < RSS_GROWTH_LIMIT, (router.rss(), baseline_rss)
    time.sleep(0.5)  # the last lines are flushed
    text = router.log.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]  # one format: every line is a JSON object
    assert all({"ts", "level", "logger"} <= set(r) for r in records)
    for secret in SECRETS:
        assert secret not in text, f"secret {secret} logged"
    assert "ASGI callable returned without completing response" not in text
    assert any("redirect (HTTP 307)" in json.dumps(r) for r in records)  # the redirect, not followed, by its status
    assert any(r["logger"].startswith("uvicorn") for r in records)  # uvicorn's own records are in the format
