"""Attempts the router makes besides the first: a hedge beside a slow try; and an in-process engine's try,
which makes no node call (its span is written when the slot is given back, from the time it was held)."""

from __future__ import annotations

from tests.client import call
from tests.conftest import fleet_config
from tests.tracing.conftest import hex_id, named, parent_id

SPEECH = {"model": "indextts2", "input": "hello there", "voice": "alloy", "response_format": "wav"}


def test_a_hedge_is_a_second_attempt_beside_the_first(nodes, traced):
    slow = [nodes(name=n, delay_s=0.6).url for n in ("a", "b")]
    srv = traced(fleet_config(*slow, hedge={"enabled": True, "delay": 0.1}))
    assert call(srv.url + "/v1/audio/speech", SPEECH).status == 200
    spans = srv.trace()
    (server,) = srv.servers()
    first, second = named(spans, "attempt ")
    assert "speech_router.attempt.hedge" not in first.attributes
    assert second.attributes["speech_router.attempt.hedge"] is True
    assert second.start_time < first.end_time  # side by side
    assert server.attributes["speech_router.hedge.winner"] == "first"
    assert second.attributes["speech_router.attempt.outcome"] == "cancelled"


def test_an_in_process_engine_s_attempt_spans_the_time_its_slot_was_held(traced):
    srv = traced({"pools": {"cpu": {"type": "espeak"}}, "models": {"tts-1": ["cpu"]},
                  "voices": {"alloy": {"espeak": "en-us"}}})
    assert call(srv.url + "/v1/audio/speech", {**SPEECH, "model": "tts-1"}).status == 200
    spans = srv.trace()
    (server,) = srv.servers()
    (attempt,) = named(spans, "attempt ")
    assert parent_id(attempt) == hex_id(server)
    assert attempt.attributes["speech_router.backend.type"] == "espeak"
    assert attempt.attributes["speech_router.attempt.outcome"] == "ok"
    assert server.start_time < attempt.start_time < attempt.end_time <= server.end_time
    assert not [s for s in spans if s.name == "POST"]  # no node to call
