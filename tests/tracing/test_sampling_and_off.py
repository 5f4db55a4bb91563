"""Tracing off costs nothing and sends nothing; sampled out, a request records no span but still carries its
trace context to the node (so the node's own sampling follows the router's decision)."""

from __future__ import annotations

import subprocess
import sys

from tests.client import call
from tests.conftest import fleet_config
from tests.integration.test_access_log import lines  # noqa: F401 - the fixture
from tests.tracing.test_request_spans import SPEECH

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"  # the client's trace, not sampled


def test_importing_and_building_the_app_with_tracing_off_loads_no_opentelemetry():
    code = ("import sys; from speech_router.api.app import create_app; "
            "from speech_router.config.loader import settings_from_dict; "
            "create_app(settings_from_dict({'pools': {'cpu': {'type': 'espeak'}}, 'models': {'m': ['cpu']}}), env={}); "
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_with_tracing_off_the_node_gets_no_traceparent_and_the_log_no_trace_id(nodes, router, lines):  # noqa: F811
    node = nodes(name="a")
    srv = router(fleet_config(node.url))
    reply = call(srv.url + "/v1/audio/speech", SPEECH, headers={"traceparent": TRACEPARENT, "x-request-id": "off-1"})
    assert reply.status == 200
    (headers,) = node.app.state.emulator.headers
    assert "traceparent" not in headers
    (line,) = lines.for_request("off-1")
    assert line["trace_id"] is None


def test_sampled_out_records_nothing_but_the_node_learns_the_trace(nodes, traced, lines):  # noqa: F811
    node = nodes(name="a")
    srv = traced(fleet_config(node.url), sample_ratio=0.0)
    for request_id, given in (("s-1", {"traceparent": TRACEPARENT}), ("s-2", {})):
        reply = call(srv.url + "/v1/audio/speech", SPEECH, headers={**given, "x-request-id": request_id})
        assert reply.status == 200
    first, second = (lines.for_request(r)[0] for r in ("s-1", "s-2"))
    assert first["trace_id"] == TRACEPARENT.split("-")[1]  # the client's trace id, for finding its other spans
    assert second["trace_id"] and second["trace_id"] != first["trace_id"]  # a new trace, not sampled
    sent = [h["traceparent"].split("-") for h in node.app.state.emulator.headers]
    assert [s[1] for s in sent] == [first["trace_id"], second["trace_id"]]
    assert all(int(s[3], 16) & 1 == 0 for s in sent)  # the sampled flag is off: the node keeps nothing either
    assert srv.spans() == []
    scrape = call(srv.url + "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert "trace_id" not in scrape.body.decode()  # no exemplar points at a trace that was not kept


def test_a_malformed_traceparent_starts_a_new_trace(nodes, traced):
    srv = traced(fleet_config(nodes(name="a").url))
    for bad in ("00-xyz-abc-01", "ff-" + "0" * 32 + "-" + "0" * 16 + "-01", "\u00e9" * 40, "00-" + "1" * 500):
        assert call(srv.url + "/v1/audio/speech", SPEECH,
                    headers={"traceparent": bad.encode("utf-8").decode("latin-1")}).status == 200
    servers = srv.servers(4)
    assert all(s.parent is None for s in servers)
    assert len({s.context.trace_id for s in servers}) == 4


def test_reads_are_not_traced(traced, nodes):
    srv = traced(fleet_config(nodes(name="a").url))
    for path in ("/health", "/v1/models", "/v1/audio/voices", "/metrics", "/livez"):
        assert call(srv.url + path).status == 200
    assert call(srv.url + "/v1/audio/speech", SPEECH).status == 200
    assert [s.name for s in srv.servers()] == ["POST /v1/audio/speech"]
