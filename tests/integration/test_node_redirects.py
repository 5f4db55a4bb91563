"""A node's redirect is never followed: the pool's headers and API key must not travel to a host the node names.

A 3xx answer is that node's failure (502 for the client, said by its status in the log) and a redirecting health
check makes the endpoint unhealthy; "elsewhere", the host the node points to, must never see a request. A health
answer that is not JSON is said by what it is, never by an exception's repr.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from speech_router.emulator.serve import ServerHandle
from tests.client import call
from tests.conftest import serve_router

POOL_SECRET = "pool-header-secret-5d1e"
NODE_KEY = "sk-node-key-91f3"


def recorder() -> Starlette:
    """The other host: remembers every request's path and headers."""
    seen: list[tuple[str, dict[str, str]]] = []

    async def anything(request: Request) -> Response:
        seen.append((request.url.path, dict(request.headers)))
        return JSONResponse({"status": "healthy"})

    app = Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST"])])
    app.state.seen = seen
    return app


def redirecting_node(elsewhere: str, *, health: str = "ok") -> Starlette:
    """Answers every synthesis with a 307 to ``elsewhere``; ``/health`` as ``health`` says: ok, redirect, text."""

    async def speak(request: Request) -> Response:
        return RedirectResponse(elsewhere + request.url.path, status_code=307)

    async def check(request: Request) -> Response:
        if health == "redirect":
            return RedirectResponse(elsewhere + "/health", status_code=302)
        if health == "text":
            return PlainTextResponse("<html>proxy login page</html>")
        return JSONResponse({"status": "healthy"})

    return Starlette(routes=[Route("/tts_url", speak, methods=["POST"]), Route("/audio/speech", speak, methods=["POST"]),
                             Route("/health", check, methods=["GET"])])


@pytest.fixture
def elsewhere() -> Iterator[ServerHandle]:
    with ServerHandle(recorder()) as handle:
        yield handle


def config(kind: str, url: str) -> dict[str, Any]:
    pool: dict[str, Any] = {"type": kind, "endpoints": [{"url": url}], "api_key_env": "NODE_KEY",
                            "headers": {"X-Pool": POOL_SECRET}, "health_check": {"interval": 0.2, "timeout": 1},
                            "breaker": {"enabled": False}}
    voice = {"spk_audio_path": "/v/alloy.wav"} if kind == "index-tts-vllm" else {"openai_voice": "alloy"}
    if kind == "openai":
        pool["health_path"] = "/health"
    return {"pools": {"p": pool}, "models": {"m": ["p"]}, "voices": {"alloy": voice}}


@pytest.mark.parametrize("kind", ["index-tts-vllm", "openai"])
def test_a_synthesis_redirect_is_the_nodes_failure_and_not_followed(kind, elsewhere, caplog, monkeypatch):
    monkeypatch.setenv("NODE_KEY", NODE_KEY)
    caplog.set_level(logging.WARNING)
    with ServerHandle(redirecting_node(elsewhere.url)) as node:
        srv = serve_router(config(kind, node.url), env={"NODE_KEY": NODE_KEY})
        try:
            reply = call(srv.url + "/v1/audio/speech", {"model": "m", "voice": "alloy", "input": "hello",
                                                        "response_format": "wav"})
        finally:
            srv.stop()
    assert reply.status == 502, reply.body
    assert "redirect (HTTP 307)" in reply.json()["error"]["message"]
    assert elsewhere.app.state.seen == []  # nothing, let alone the pool's header or key, reached the other host
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "HTTP 307" in logged and POOL_SECRET not in logged and NODE_KEY not in logged


@pytest.mark.parametrize("health, said", [("redirect", "HTTP 302: a redirect, not followed"),
                                          ("text", "HTTP 200: the answer is not JSON")])
def test_a_health_check_that_redirects_or_is_not_json_is_unhealthy_and_said_plainly(health, said, elsewhere,
                                                                                     monkeypatch):
    monkeypatch.setenv("NODE_KEY", NODE_KEY)
    with ServerHandle(redirecting_node(elsewhere.url, health=health)) as node:
        srv = serve_router(config("index-tts-vllm", node.url), env={"NODE_KEY": NODE_KEY})
        try:
            reply = call(srv.url + "/health")
        finally:
            srv.stop()
    assert reply.status == 503
    (endpoint,) = reply.json()["endpoints"]
    assert endpoint["healthy"] is False and endpoint["detail"] == said, endpoint
    assert elsewhere.app.state.seen == []
