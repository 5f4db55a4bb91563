"""TracingListener on its own: events of the request whose task reports them become its spans; the core's
``attempt_started`` opens an attempt with the lease's placement; events where nothing is traced are dropped."""

from __future__ import annotations

from types import SimpleNamespace

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from speech_router.router.endpoint import Finished
from speech_router.router.outlier import Outcome
from speech_router.router.ticket import Placement
from speech_router.tracing import SCOPE
from speech_router.tracing.listener import TracingListener
from speech_router.tracing.scope import Scope
from tests.tracing.conftest import hex_id, named, parent_id

ENDPOINT = SimpleNamespace(name="gpu-1", pool="gpu", backend=SimpleNamespace(type="index-tts-vllm"))


def traced() -> tuple[InMemorySpanExporter, Scope]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    return exporter, Scope(tracer, tracer.start_span("POST /v1/audio/speech", kind=SpanKind.SERVER))


def test_attempt_started_opens_the_attempt_with_the_lease_and_the_queue_wait_ends_there():
    exporter, scope = traced()
    listener = TracingListener()
    lease = SimpleNamespace(endpoint=ENDPOINT, placement=Placement.QUEUED, probe=False, panic=False, predicted=0.8)
    token = SCOPE.set(scope)
    try:
        listener.queue_changed("gpu", "interactive", 1)  # this request entered the queue
        listener.queue_changed("gpu", "interactive", 0)  # placed (reported from wherever)
        listener.attempt_started("gpu", lease)
        headers: dict[str, str] = {}
        scope.node_call("gpu-1", "http://10.0.0.7:6006", headers)
        scope.node_status("gpu-1", 200)
        listener.attempt_finished(ENDPOINT, Outcome.OK, Finished(0.5, 1, 10))  # type: ignore[arg-type]
    finally:
        SCOPE.reset(token)
    scope.close()
    spans = list(exporter.get_finished_spans())
    (server,) = named(spans, "POST /v1")
    (attempt,) = named(spans, "attempt gpu-1")
    (queue,) = named(spans, "queue gpu")
    (node,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert attempt.attributes["speech_router.attempt.placement"] == "queued"
    assert attempt.attributes["speech_router.attempt.predicted_s"] == 0.8
    assert attempt.attributes["speech_router.attempt.probe"] is False
    assert parent_id(node) == hex_id(attempt) and parent_id(attempt) == hex_id(server)
    assert (node.attributes["server.address"], node.attributes["server.port"]) == ("10.0.0.7", 6006)
    assert headers["traceparent"].split("-")[2] == hex_id(node)
    assert queue.end_time == attempt.start_time and parent_id(queue) == hex_id(server)


def test_events_where_no_request_is_traced_are_dropped():
    exporter, scope = traced()
    listener = TracingListener()
    lease = SimpleNamespace(endpoint=ENDPOINT, placement=Placement.FREE, probe=False, panic=False, predicted=None)
    listener.queue_changed("gpu", "interactive", 1)  # a health check's or a timer's task: no scope
    listener.attempt_started("gpu", lease)
    listener.attempt_finished(ENDPOINT, Outcome.ERROR, Finished(0.1, 1, 3))  # type: ignore[arg-type]
    listener.retried("gpu", "5xx")
    listener.queue_rejected("gpu", "queue_full")
    scope.close()
    assert [s.name for s in exporter.get_finished_spans()] == ["POST /v1/audio/speech"]


def test_a_slot_given_back_unused_in_a_request_s_task_is_no_attempt_of_it():
    exporter, scope = traced()
    token = SCOPE.set(scope)
    try:  # placed for a waiter that had given up, reported while this request finished its own try
        TracingListener().attempt_finished(ENDPOINT, Outcome.CANCELLED, Finished(0.0, 1, 3))  # type: ignore[arg-type]
    finally:
        SCOPE.reset(token)
    scope.close()
    assert not named(list(exporter.get_finished_spans()), "attempt")
