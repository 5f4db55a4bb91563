"""Turning tracing on: which settings ask for it, and the SDK's provider, sampler and exporter for one app.

On when ``tracing.enabled: true`` or ``tracing.url`` is set, or when neither is and ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or ``OTEL_TRACES_EXPORTER=otlp|console``) is set; never with
``OTEL_SDK_DISABLED=true`` or ``enabled: false``. The standard variables configure the rest: the service
name (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), the sampler (``OTEL_TRACES_SAMPLER`` and
``_ARG``), the protocol (``OTEL_EXPORTER_OTLP_PROTOCOL``: ``http/protobuf`` or ``grpc``), the batch
(``OTEL_BSP_*``) and the exporter's headers, timeout and certificates (read by the exporter itself).

Each app has its own provider (not the global one), so several apps in one process (tests) do not mix.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..config.models import TracingConfig
from ..errors import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from starlette.types import Scope as AsgiScope

    from ..api.spec import ApiRoute
    from .server import Request

log = logging.getLogger("speech_router.tracing")

DEFAULT_SERVICE_NAME = "speech-router"
#: values of OTEL_TRACES_EXPORTER that turn tracing on by themselves
EXPORTERS = ("otlp", "console")
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
INSTALL_HINT = "tracing needs the OpenTelemetry SDK: pip install 'speech-router[tracing]'"


def wanted(config: TracingConfig, env: Mapping[str, str]) -> bool:
    """Whether the config or the environment turns tracing on (see the module's docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or config.enabled is False:
        return False
    if config.enabled or config.url:
        return True
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter in EXPORTERS
    return any(env.get(name) for name in ENDPOINT_VARIABLES)


def sampler_of(config: TracingConfig, env: Mapping[str, str]) -> Any:
    """``tracing.sample_ratio`` (parent-based: a client's sampled traceparent is followed), else the standard
    ``OTEL_TRACES_SAMPLER``/``_ARG``, else every trace (parent-based)."""
    from opentelemetry.sdk.trace import sampling

    if config.sample_ratio is not None:
        return sampling.ParentBased(sampling.TraceIdRatioBased(config.sample_ratio))
    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    try:
        ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError:
        ratio = 1.0
    ratio = min(1.0, max(0.0, ratio))
    choices = {
        "always_on": sampling.ALWAYS_ON, "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }
    if name not in choices:
        raise ConfigError([ConfigIssue("tracing", f"OTEL_TRACES_SAMPLER={name!r} is not one of "
                                                  f"{', '.join(sorted(choices))}")])
    return choices[name]


def exporter_of(config: TracingConfig, env: Mapping[str, str]) -> Any:
    """The span exporter the settings name: OTLP over HTTP (default) or gRPC, or the console."""
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    base = config.url.rstrip("/") if config.url else None
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

            return Grpc(endpoint=base) if base else Grpc()
        if protocol != "http/protobuf":
            raise ConfigError([ConfigIssue("tracing", f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use http/protobuf "
                                                      "or grpc")])
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        return Http(endpoint=f"{base}/v1/traces") if base else Http()
    except ImportError:
        extra = "grpc: pip install opentelemetry-exporter-otlp-proto-grpc" if protocol == "grpc" else INSTALL_HINT
        raise ConfigError([ConfigIssue("tracing", f"the OTLP exporter is not installed ({extra})")]) from None


class Tracing:
    """One app's tracer, its routing-core listener, and the provider to flush on shutdown."""

    def __init__(self, provider: Any, *, exporter: str = "") -> None:
        from .listener import TracingListener
        from .server import start_request

        self._start = start_request
        self.provider = provider
        self.tracer = provider.get_tracer("speech_router")
        self.listener = TracingListener()
        self.exporter = exporter

    def __repr__(self) -> str:
        return f"Tracing(exporter={self.exporter!r}, sampler={self.provider.sampler.get_description()!r})"

    @classmethod
    def from_config(cls, config: TracingConfig, env: Mapping[str, str], *, processor: Any = None) -> Tracing:
        """A provider for the settings; ``processor`` replaces the batch exporter (tests: an in-memory one)."""
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise ConfigError([ConfigIssue("tracing", INSTALL_HINT)]) from None
        name = config.service_name or env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
        provider = TracerProvider(resource=Resource.create({"service.name": name}),
                                  sampler=sampler_of(config, env))
        exporter = ""
        if processor is None:
            span_exporter = exporter_of(config, env)
            processor, exporter = BatchSpanProcessor(span_exporter), type(span_exporter).__name__
        provider.add_span_processor(processor)
        return cls(provider, exporter=exporter)

    def start(self, scope: AsgiScope, route: ApiRoute | None, request_id: str) -> Request | None:
        """The server span of a request (``server.start_request``), or None when the request is not traced."""
        return self._start(self.tracer, scope, route, request_id)

    async def aclose(self) -> None:
        """Export what is left (the batch's thread may block a while), then stop."""
        await asyncio.to_thread(self.provider.shutdown)


def build_tracing(config: TracingConfig, env: Mapping[str, str], **kwargs: Any) -> Tracing | None:
    """The app's tracing when ``config`` or the ``OTEL_*`` variables in ``env`` turn it on, else None.

    Raises ``ConfigError`` when tracing is asked for and the OpenTelemetry SDK is not installed."""
    if not wanted(config, env):
        return None
    return Tracing.from_config(config, env, **kwargs)
