"""The same realtime client against an emulated vllm-omni node's own WebSocket and against the router, and a
session through the router on every backend type."""

from __future__ import annotations

from typing import Any

import pytest

from speech_router.config.loader import embedded_config
from speech_router.emulator.openai_speech import OpenAIConfig
from speech_router.emulator.openai_speech import create_app as create_openai_app
from speech_router.emulator.serve import ServerHandle
from tests.integration.omni import omni_config, reference_wav
from tests.integration.realtime import Utterance, open_session, send, send_tokens, utterance

pytestmark = pytest.mark.anyio

TEXT = "Hello there, my friend. How are you doing today? I am well."


async def speak(url: str, config: dict[str, Any] | None = None, text: str = TEXT) -> Utterance:
    """What a vllm-omni client does: config, text token by token, input.done, read the utterance, close."""
    async with await open_session(url, config) as ws:
        await send_tokens(ws, text)
        heard = await utterance(ws)
        await send(ws, {"type": "session.close"})
    return heard


async def test_one_client_speaks_to_a_vllm_omni_node_and_to_the_router_alike(omni_nodes, router, tmp_path):
    node = omni_nodes(name="o", delay_s=0.05)
    node.app.state.voices.add("alloy", "test", reference_wav(tmp_path / "alloy.wav"), "alloy.wav", "audio/wav")
    url = router(omni_config(node.url, voices={"alloy": {"uploaded_voice": "alloy"}})).url
    direct, routed = await speak(node.url), await speak(url)
    for heard in (direct, routed):
        assert [s.text for s in heard.sentences] == ["Hello there, my friend.", "How are you doing today?",
                                                     "I am well."]
        assert [s.done["error"] for s in heard.sentences] == [False] * 3
    for one, other in zip(direct.sentences, routed.sentences, strict=True):  # the same audio, however it came
        assert one.samples()[1] == other.samples()[1]
        assert abs(len(one.samples()[0]) - len(other.samples()[0])) <= 1
    assert len([b for p, b in node.requests if p == "/v1/audio/speech"]) == 3  # the router's: one per sentence


@pytest.mark.parametrize("kind", ["openai", "espeak"])
async def test_a_session_through_the_router_on_every_backend_type(kind, router):
    """index-tts-vllm and vllm-omni are above; an OpenAI-compatible server and the embedded engine here."""
    server = None
    if kind == "espeak":
        config = embedded_config()
    else:
        server = ServerHandle(create_openai_app(OpenAIConfig(name="oa")))
        server.start()
        config = {"pools": {"oa": {"type": "openai", "endpoints": [{"url": server.url + "/v1"}]}},
                  "models": {"tts-1": ["oa"]}, "voices": {"alloy": {"openai_voice": "alloy"}}}
    try:
        url = router(config).url
        heard = await speak(url, {"model": "tts-1", "response_format": "pcm"}, "One sentence here. And another one.")
    finally:
        if server is not None:
            server.stop()
    assert [s.text for s in heard.sentences] == ["One sentence here.", "And another one."]
    for sentence in heard.sentences:
        assert sentence.done["error"] is False, sentence.errors
        samples, rate = sentence.samples()
        assert rate == sentence.start["sample_rate"] == 24000 and samples.size > rate // 10
