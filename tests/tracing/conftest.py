"""A real router whose spans go to an in-process exporter, in front of emulated nodes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="tracing tests need the OpenTelemetry SDK (the test extra has it)")

from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind  # noqa: E402

from speech_router.api.app import create_app  # noqa: E402
from speech_router.config.loader import settings_from_dict  # noqa: E402
from speech_router.config.models import TracingConfig  # noqa: E402
from speech_router.emulator.serve import ServerHandle  # noqa: E402
from speech_router.plugins.manager import backend_registry, create_plugin_manager  # noqa: E402
from speech_router.tracing.setup import Tracing  # noqa: E402


class Traced:
    """A running router and the spans it finished."""

    def __init__(self, srv: ServerHandle, exporter: InMemorySpanExporter) -> None:
        self.srv, self.exporter = srv, exporter

    @property
    def url(self) -> str:
        return self.srv.url

    def spans(self, trace_id: str | None = None) -> list[ReadableSpan]:
        found = list(self.exporter.get_finished_spans())
        if trace_id is not None:
            found = [s for s in found if format(s.context.trace_id, "032x") == trace_id]
        return found

    def servers(self, count: int = 1, timeout: float = 5.0) -> list[ReadableSpan]:
        """The first ``count`` server spans, once they ended (a request's span ends just after its last byte)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [s for s in self.spans() if s.kind == SpanKind.SERVER]
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) >= count, f"{len(found)} server spans, not {count}"
                return sorted(found, key=lambda s: s.start_time or 0)
            time.sleep(0.01)

    def trace(self, trace_id: str | None = None) -> list[ReadableSpan]:
        """Every span of the (first) request's trace, once its server span ended."""
        servers = self.servers()
        return self.spans(trace_id or trace_of(servers[0]))


def trace_of(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


def hex_id(span: ReadableSpan) -> str:
    return format(span.context.span_id, "016x")


def parent_id(span: ReadableSpan) -> str | None:
    return format(span.parent.span_id, "016x") if span.parent is not None else None


def named(spans: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.name.startswith(prefix)), key=lambda s: s.start_time or 0)


@pytest.fixture
def traced() -> Iterator[Callable[..., Traced]]:
    """Factory: ``traced(config_dict, env=..., tracing=...)`` serves a router whose spans are kept in memory."""
    started: list[ServerHandle] = []

    def start(config: dict[str, Any], env: dict[str, str] | None = None, **tracing: Any) -> Traced:
        pm = create_plugin_manager(load_entrypoints=False)
        settings = settings_from_dict(config, registry=backend_registry(pm), env=env or {})
        exporter = InMemorySpanExporter()
        spans = Tracing.from_config(TracingConfig(enabled=True, **tracing), env or {},
                                    processor=SimpleSpanProcessor(exporter))
        srv = ServerHandle(create_app(settings, pm=pm, env=env or {}, tracing=spans))
        srv.start()
        started.append(srv)
        return Traced(srv, exporter)

    yield start
    for srv in started:
        srv.stop()
