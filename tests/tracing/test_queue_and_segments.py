"""Spans of the work inside a request: the wait in a pool's queue, each segment of a fanned-out text (with its
own attempts and node calls), and cache lookups."""

from __future__ import annotations

import concurrent.futures

from opentelemetry.trace import SpanKind

from tests.client import call
from tests.conftest import fleet_config
from tests.integration.test_fanout import FANOUT, SENTENCES, TEXT
from tests.tracing.conftest import hex_id, named, parent_id, trace_of

SPEECH = {"model": "indextts2", "input": "hello there", "voice": "alloy", "response_format": "wav"}


def test_a_request_that_waits_for_a_slot_has_a_queue_span_before_its_attempt(nodes, traced):
    node = nodes(name="a", delay_s=0.4)
    srv = traced(fleet_config(node.url, max_concurrency=1, balancer={"adaptive_concurrency": False}))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda i: call(srv.url + "/v1/audio/speech", {**SPEECH, "input": f"text {i}"}),
                                range(2)))
    assert [r.status for r in replies] == [200, 200]
    waited = []
    for server in srv.servers(2):
        spans = srv.spans(trace_of(server))
        (attempt,) = named(spans, "attempt ")
        queue = named(spans, "queue gpu")
        if queue:
            (span,) = queue
            assert parent_id(span) == hex_id(server)
            assert span.attributes["speech_router.queue.result"] == "slot"
            assert span.end_time == attempt.start_time  # the wait ends when the attempt starts
            assert span.end_time - span.start_time > 0
            waited.append(server)
    assert len(waited) == 1  # one request had the slot at once, the other waited for it


def test_each_segment_of_a_long_text_is_a_span_with_its_own_attempt_and_node_call(nodes, traced):
    node = nodes(name="a")
    config = fleet_config(node.url)
    config["models"]["indextts2"] = {"pools": ["gpu"], "fanout": FANOUT}
    srv = traced(config)
    assert call(srv.url + "/v1/audio/speech", {**SPEECH, "input": TEXT}).status == 200
    spans = srv.trace()
    (server,) = srv.servers()
    segments = named(spans, "segment ")
    assert sorted(s.attributes["speech_router.segment.index"] for s in segments) == list(range(1, len(SENTENCES) + 1))
    node_parents = set()
    for segment in segments:
        assert parent_id(segment) == hex_id(server)
        assert segment.attributes["speech_router.segments"] == len(SENTENCES)
        assert segment.attributes["speech_router.segment.outcome"] == "ok"
        (attempt,) = [s for s in spans if s.name.startswith("attempt ") and parent_id(s) == hex_id(segment)]
        (node_call,) = [s for s in spans if s.kind == SpanKind.CLIENT and parent_id(s) == hex_id(attempt)]
        node_parents.add(hex_id(node_call))
    received = {h["traceparent"].split("-")[2] for h in node.app.state.emulator.headers}
    assert received == node_parents  # every segment's node call reached the node with its own span as parent


def test_cache_lookups_are_spans_with_their_result(nodes, traced):
    config = fleet_config(nodes(name="a").url)
    config["models"]["indextts2"] = {"pools": ["gpu"], "cache": True}
    srv = traced(config)
    for _ in range(2):
        assert call(srv.url + "/v1/audio/speech", SPEECH).status == 200
    first, second = srv.servers(2)
    (miss,) = named(srv.spans(trace_of(first)), "cache lookup")
    (hit,) = named(srv.spans(trace_of(second)), "cache lookup")
    assert (miss.attributes["speech_router.cache.result"], hit.attributes["speech_router.cache.result"]) \
        == ("miss", "hit")
    assert parent_id(hit) == hex_id(second)
    assert not named(srv.spans(trace_of(second)), "attempt ")  # served without a node
