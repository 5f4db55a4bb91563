"""A vllm-omni pool that streams (``stream: true``) reads a node's answer whether the node streams raw bytes
(older versions, and newer ones asked with ``stream_format: "audio"``) or only as SSE events; realtime sessions
and the HTTP API's SSE form work the same over either."""

from __future__ import annotations

import pytest

from tests.client import call
from tests.integration.omni import omni_config, reference_wav, sse_events
from tests.integration.realtime import open_session, send_tokens, utterance


@pytest.mark.parametrize("shape", ["request", "raw", "sse"])
def test_a_streaming_pool_reads_raw_and_event_streams_alike(omni_nodes, router, tmp_path, shape):
    node = omni_nodes(name="s", stream_shape=shape, chunks=3)
    voices = {"alloy": {"ref_audio_file": str(tmp_path / "alloy.wav")}}
    reference_wav(tmp_path / "alloy.wav")
    srv = router(omni_config(node.url, voices=voices, stream=True))
    wav = call(srv.url + "/v1/audio/speech", {"model": "indextts", "input": "Hello there.", "voice": "alloy",
                                              "response_format": "wav"})
    assert wav.status == 200 and wav.body.startswith(b"RIFF") and len(wav.body) > 20000
    pcm = call(srv.url + "/v1/audio/speech", {"model": "indextts", "input": "Hello there.", "voice": "alloy",
                                              "response_format": "pcm"})
    assert pcm.status == 200 and abs(len(pcm.body) / 2 - (len(wav.body) - 44) / 2 * 24000 / 22050) < 32
    sse = call(srv.url + "/v1/audio/speech", {"model": "indextts", "input": "Hello there.", "voice": "alloy",
                                              "response_format": "wav", "stream_format": "sse"})
    assert sse_events(sse.body)[-1]["type"] == "speech.audio.done"


@pytest.mark.anyio
async def test_a_realtime_session_over_a_node_that_streams_only_events(omni_nodes, router, tmp_path):
    node = omni_nodes(name="e", stream_shape="sse")
    reference_wav(tmp_path / "alloy.wav")
    srv = router(omni_config(node.url, voices={"alloy": {"ref_audio_file": str(tmp_path / "alloy.wav")}},
                             stream=True))
    async with await open_session(srv.url) as ws:
        await send_tokens(ws, "Hello there, my friend. How are you?")
        heard = await utterance(ws)
    assert [s.done["error"] for s in heard.sentences] == [False, False]
    assert all(s.samples()[0].size for s in heard.sentences)
