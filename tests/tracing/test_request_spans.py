"""One request's trace: the server span continuing the client's traceparent, its attempts, the node call, the
transcoder, and the traceparent the node receives; the access line and the latency exemplar carry the trace id."""

from __future__ import annotations

import re

from opentelemetry.trace import SpanKind, StatusCode

from tests.client import call
from tests.conftest import fleet_config
from tests.integration.test_access_log import lines  # noqa: F401 - the fixture
from tests.tracing.conftest import hex_id, named, parent_id

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SPEECH = {"model": "indextts2", "input": "hello there", "voice": "alloy", "response_format": "mp3"}


def test_a_request_is_one_trace_from_the_client_through_the_router_to_the_node(nodes, traced, lines):  # noqa: F811
    node = nodes(name="a")
    srv = traced(fleet_config(node.url))
    reply = call(srv.url + "/v1/audio/speech", SPEECH,
                 headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "x-request-id": "traced-1"})
    assert reply.status == 200
    spans = srv.trace(CLIENT_TRACE)

    (server,) = named(spans, "POST /v1/audio/speech")
    assert server.kind == SpanKind.SERVER and parent_id(server) == CLIENT_SPAN  # continues the client's trace
    assert server.attributes["http.route"] == "/v1/audio/speech"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["speech_router.request_id"] == "traced-1"
    assert server.attributes["speech_router.model"] == "indextts2"
    assert server.attributes["speech_router.endpoint"] == node.url.removeprefix("http://")

    (attempt,) = named(spans, "attempt ")
    assert parent_id(attempt) == hex_id(server)
    assert attempt.attributes["speech_router.pool"] == "gpu"
    assert attempt.attributes["speech_router.attempt"] == 1
    assert attempt.attributes["speech_router.attempt.outcome"] == "ok"

    (call_span,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert parent_id(call_span) == hex_id(attempt)
    assert call_span.attributes["http.request.method"] == "POST"
    assert call_span.attributes["http.response.status_code"] == 200
    assert call_span.attributes["server.address"] == "127.0.0.1"

    # the node got the node call's span as its parent: its own spans join this trace
    (headers,) = node.app.state.emulator.headers
    assert headers["traceparent"] == f"00-{CLIENT_TRACE}-{hex_id(call_span)}-01"

    (transcode,) = named(spans, "transcode")  # the node's wav became mp3 in the router
    assert parent_id(transcode) == hex_id(server)
    assert (transcode.attributes["speech_router.transcode.from"], transcode.attributes["speech_router.transcode.to"]) \
        == ("wav", "mp3")
    assert transcode.attributes["speech_router.transcode.busy_s"] >= 0

    (line,) = lines.for_request("traced-1")
    assert line["trace_id"] == CLIENT_TRACE
    for span in spans:  # nothing a client must not see, and never the key
        assert all("Bearer" not in str(v) for v in span.attributes.values())


def test_the_latency_histograms_carry_the_trace_id_as_an_exemplar(nodes, traced):
    srv = traced(fleet_config(nodes(name="a").url))
    assert call(srv.url + "/v1/audio/speech", SPEECH,
                headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}).status == 200
    srv.servers()  # its histograms are observed before its span ends
    scrape = call(srv.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert scrape.headers["content-type"].startswith("application/openmetrics-text")
    text = scrape.body.decode()
    for name in ("speech_router_request_duration_seconds_bucket", "speech_router_time_to_first_byte_seconds_bucket"):
        assert re.search(rf'^{name}{{.*}} \d+(\.\d+)? # {{trace_id="{CLIENT_TRACE}"}}', text, re.M), name
    plain = call(srv.url + "/metrics").body.decode()  # the classic text format has no exemplars
    assert CLIENT_TRACE not in plain


def test_a_failed_try_and_the_fallback_are_attempts_of_the_same_trace(nodes, traced):
    bad, good = nodes(name="bad", fail=True), nodes(name="good")
    config = fleet_config(bad.url)
    config["pools"]["spare"] = {**config["pools"]["gpu"], "endpoints": [{"url": good.url}]}
    config["models"]["indextts2"] = ["gpu", "spare"]
    srv = traced(config)
    reply = call(srv.url + "/v1/audio/speech", {**SPEECH, "response_format": "wav"})
    assert reply.status == 200
    spans = srv.trace()
    (server,) = srv.servers()
    first, second = named(spans, "attempt ")
    assert first.attributes["speech_router.pool"] == "gpu"
    assert first.attributes["speech_router.attempt.outcome"] == "error"
    assert first.status.status_code == StatusCode.ERROR
    assert second.attributes["speech_router.pool"] == "spare"
    assert second.attributes["speech_router.attempt"] == 2
    assert second.attributes["speech_router.attempt.fallback"] is True
    assert server.attributes["speech_router.fallback.from_pool"] == "gpu"
    assert server.attributes["speech_router.fallback.to_pool"] == "spare"
    calls = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert [c.attributes["http.response.status_code"] for c in calls] == [500, 200]
    assert "attempt failed" in [e.name for e in server.events]
    assert not named(spans, "transcode")  # wav passes through untouched
