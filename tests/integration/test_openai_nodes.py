"""A pool of ``type: openai`` over real HTTP: emulated OpenAI-compatible speech servers behind a real router, given
the broken answers index-tts-vllm pools (test_routing_policy) and vllm-omni pools (test_vllm_omni) get too."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import soundfile as sf

from speech_router.emulator.openai_speech import OpenAIConfig
from speech_router.emulator.openai_speech import create_app as create_openai_app
from speech_router.emulator.serve import ServerHandle
from tests.client import call


@pytest.fixture
def openai_nodes() -> Iterator[Callable[..., ServerHandle]]:
    """Factory: ``openai_nodes(name="a", truncate=True)`` starts an emulated OpenAI-compatible server."""
    with contextlib.ExitStack() as running:

        def start(**knobs: Any) -> ServerHandle:
            return running.enter_context(ServerHandle(create_openai_app(OpenAIConfig(**knobs))))

        yield start


def speech_requests(node: ServerHandle) -> int:
    return sum(1 for path, _ in node.app.state.emulator.requests if path == "/v1/audio/speech")


@pytest.mark.parametrize("knob", ["truncate", "garbage"])
def test_broken_bodies_are_failures_retried_on_another_node(openai_nodes, router, knob):
    """truncate: the audio cut short and the connection closed mid-body; garbage: 200 with an audio content type
    and an HTML body. With ``verify_body`` (this type streams, so it is off by default: an answer goes out as it
    comes) either is the node's failure, and the client gets the other node's whole answer."""
    bad, good = openai_nodes(name="bad", **{knob: True}), openai_nodes(name="good")
    srv = router({"pools": {"oa": {"type": "openai", "verify_body": True, "balancer": {"policy": "round_robin"},
                                   "endpoints": [{"url": bad.url + "/v1"}, {"url": good.url + "/v1"}]}},
                  "models": {"tts-1": ["oa"]}, "voices": {"alloy": {"openai_voice": "alloy"}}})
    for _ in range(3):
        r = call(srv.url + "/v1/audio/speech", {"model": "tts-1", "input": "Hello there, how are you today?",
                                                "voice": "alloy", "response_format": "wav"})
        assert r.status == 200, r.body[:300]
        info = sf.info(io.BytesIO(r.body))
        assert info.frames / info.samplerate > 0.3
    assert speech_requests(bad) >= 1  # it was tried: the answers above came from the other node
