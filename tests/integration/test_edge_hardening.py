"""The router's own edge over real HTTP: the client's deadline covers streaming, a cut stream is logged once, a
client that leaves mid-stream ends the node's answer, and a 500 raised outside the handlers is counted."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from speech_router.audio.wav import wav_header
from speech_router.emulator.misbehaving import create_app as misbehaving_node
from speech_router.emulator.serve import ServerHandle
from speech_router.plugins.hookspecs import hookimpl
from speech_router.plugins.manager import create_plugin_manager
from tests.client import call
from tests.conftest import serve_router

SPEECH = {"model": "m", "voice": "alloy", "input": "[slow_stream] a text that streams slowly", "response_format": "wav"}


@pytest.fixture(scope="module")
def node() -> Iterator[ServerHandle]:
    with ServerHandle(misbehaving_node()) as handle:
        yield handle


def config(url: str) -> dict:
    return {"pools": {"p": {"type": "index-tts-vllm", "endpoints": [{"url": url}], "verify_body": False}},
            "models": {"m": ["p"]}, "voices": {"alloy": {"spk_audio_path": "/v/alloy.wav"}}}


def stream(url: str, headers: dict[str, str]) -> tuple[int, bool]:
    """(status, whether the body arrived whole)."""
    import json

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.request("POST", "/v1/audio/speech", json.dumps(SPEECH), {"Content-Type": "application/json", **headers})
        resp = conn.getresponse()
        try:
            resp.read()
            return resp.status, True
        except http.client.IncompleteRead:
            return resp.status, False
    finally:
        conn.close()


def test_the_deadline_header_ends_a_stream_that_outlasts_it_and_it_is_logged_once(node, router, caplog):
    srv = router(config(node.url))
    assert stream(srv.url, {}) == (200, True)  # the node's slow stream is whole without a deadline
    caplog.set_level(logging.WARNING)
    uvicorn_log = logging.getLogger("uvicorn.error")  # it does not propagate to the root logger in tests
    uvicorn_log.addHandler(caplog.handler)
    try:
        status, whole = stream(srv.url, {"x-request-timeout": "1", "x-request-id": "cut-me"})
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    assert (status, whole) == (200, False)
    lines = [r.getMessage() for r in caplog.records if "cut-me" in r.getMessage()]
    assert len(lines) == 1 and "deadline passed mid-stream" in lines[0]
    assert not any("without completing response" in r.getMessage() for r in caplog.records)


def endless_node() -> Starlette:
    """A node whose WAV never ends; ``app.state.closed`` turns true when its answer is abandoned."""

    async def speak(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            try:
                yield wav_header(22050)
                while True:  # 0.1 s of audio every 0.5 s: the text's cap (30 s of audio) is minutes away
                    yield b"\0" * 4410
                    await asyncio.sleep(0.5)
            finally:
                app.state.closed = True

        return StreamingResponse(body(), media_type="audio/wav")

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "healthy"})

    app = Starlette(routes=[Route("/tts_url", speak, methods=["POST"]), Route("/health", health)])
    app.state.closed = False
    return app


def test_a_client_that_leaves_mid_stream_ends_the_nodes_answer_and_frees_its_slot():
    with ServerHandle(endless_node()) as node:
        srv = serve_router(config(node.url))
        try:
            host, port = srv.url.removeprefix("http://").split(":")
            body = json.dumps({**SPEECH, "input": "a text whose audio never ends"}).encode()
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                head = b""
                while b"RIFF" not in head:  # the status line and the first audio are out: leave
                    head += sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200")
            endpoint = srv.app.state.router.endpoints[0]
            deadline = time.monotonic() + 20
            while not (node.app.state.closed and endpoint.inflight == 0):
                assert time.monotonic() < deadline, "the node's endless answer was never given up"
                time.sleep(0.05)
        finally:
            srv.stop()


class Boom:
    @hookimpl
    def prepare_request(self, request, settings):
        raise RuntimeError("boom")


def test_a_500_from_an_unexpected_error_is_counted(node):
    srv = serve_router(config(node.url), create_plugin_manager(load_entrypoints=False, plugins=[Boom()]))
    try:
        assert call(srv.url + "/v1/audio/speech", {**SPEECH, "input": "hello"}).status == 500
        text = call(srv.url + "/metrics").body.decode()
    finally:
        srv.stop()
    counted = [line for line in text.splitlines()
               if line.startswith("speech_router_requests_total{") and 'status="500"' in line]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) == 1.0, counted
