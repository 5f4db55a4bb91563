"""Shared fixtures: a fresh plugin manager, emulated nodes and a real router on loopback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from speech_router.api.app import create_app
from speech_router.config.loader import settings_from_dict
from speech_router.edge import EdgeLimits, uvicorn_options
from speech_router.emulator.index_tts_vllm import EmulatorConfig
from speech_router.emulator.index_tts_vllm import create_app as create_node_app
from speech_router.emulator.serve import ServerHandle
from speech_router.plugins.manager import backend_registry, create_plugin_manager


def pytest_configure(config: pytest.Config) -> None:
    sys._called_from_test = True  # type: ignore[attr-defined]


_openai_clients: list[Any] = []


def openai_client(url: str) -> Any:
    """The official OpenAI SDK pointed at a router; closed after the test (no leaked sockets)."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    _openai_clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_openai_clients() -> Iterator[None]:
    yield
    while _openai_clients:
        _openai_clients.pop().close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pm():
    """A plugin manager with the built-ins only: plugins installed on this machine stay out of tests."""
    return create_plugin_manager(load_entrypoints=False)


@pytest.fixture
def registry(pm):
    return backend_registry(pm)


class Node:
    """An emulated index-tts-vllm node on 127.0.0.1: its knobs, its request log, start/stop."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.app = create_node_app(config)
        self.server = ServerHandle(self.app)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def requests(self) -> list[tuple[str, Any]]:
        return self.app.state.emulator.requests

    @property
    def served(self) -> int:
        return self.app.state.emulator.served


@pytest.fixture
def nodes() -> Iterator[Callable[..., Node]]:
    """Factory: ``nodes(name="a", api="v2", delay_s=0.1)`` starts an emulated node; all stop at teardown."""
    started: list[Node] = []

    def start(**knobs: Any) -> Node:
        node = Node(EmulatorConfig(**knobs))
        node.server.start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.server.stop()


def serve_router(config: dict[str, Any], pm: Any = None, env: dict[str, str] | None = None) -> ServerHandle:
    """A real speech-router for ``config`` on 127.0.0.1, started; the caller stops it."""
    pm = pm or create_plugin_manager(load_entrypoints=False)
    settings = settings_from_dict(config, registry=backend_registry(pm), env=env or {})
    # served as `speech-router serve` serves it: with the connection limits at the protocol
    handle = ServerHandle(create_app(settings, pm=pm, env=env),
                          options=uvicorn_options(EdgeLimits.from_settings(settings.server)))
    handle.start()
    return handle


@dataclass
class SharedFleet:
    """Emulated nodes and the router in front of them, shared by a module's tests that change no knob."""

    nodes: list[Node]
    srv: ServerHandle

    @property
    def url(self) -> str:
        return self.srv.url

    @property
    def node(self) -> Node:
        return self.nodes[0]


@contextlib.contextmanager
def shared_fleet(*names: str, server: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                 pm: Any = None, more: dict[str, Any] | None = None) -> Iterator[SharedFleet]:
    """Start nodes ``names`` and a router over them (``fleet_config`` plus ``server`` settings and ``more``
    top-level sections); stop all at the end."""
    started = [Node(EmulatorConfig(name=name)) for name in names]
    for node in started:
        node.server.start()
    try:
        config = fleet_config(*(n.url for n in started))
        config["server"] = server or {}
        config.update(more or {})
        srv = serve_router(config, pm, env=env)
        try:
            yield SharedFleet(started, srv)
        finally:
            srv.stop()
    finally:
        for node in started:
            node.server.stop()


@pytest.fixture
def router() -> Iterator[Callable[..., ServerHandle]]:
    """Factory: ``router(config_dict, pm=...)`` serves a real speech-router on 127.0.0.1; stopped at teardown."""
    started: list[ServerHandle] = []

    def start(config: dict[str, Any], pm: Any = None, env: dict[str, str] | None = None) -> ServerHandle:
        handle = serve_router(config, pm, env)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


def fleet_config(*urls: str, api: str = "v2", **pool: Any) -> dict[str, Any]:
    """A config with one index-tts-vllm pool over ``urls`` and a few voices."""
    return {
        "pools": {"gpu": {"type": "index-tts-vllm", "api": api, "endpoints": [{"url": u} for u in urls],
                          "health_check": {"interval": 0.2, "timeout": 1}, **pool}},
        "models": {"indextts2": ["gpu"], "tts-1": ["gpu"]},
        "voices": {"alloy": {"spk_audio_path": "/data/voices/alloy.wav", "character": "default"},
                   "calm": {"spk_audio_path": "/data/voices/calm.wav"}},
    }
