"""When tracing is on, and what the standard OTEL_* variables choose: sampler, exporter, service name."""

from __future__ import annotations

import sys

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import sampling

from speech_router.api.app import create_app
from speech_router.config.loader import settings_from_dict
from speech_router.config.models import TracingConfig
from speech_router.errors import ConfigError
from speech_router.tracing.setup import build_tracing, exporter_of, sampler_of, wanted

ON = TracingConfig(enabled=True)
UNSET = TracingConfig()


@pytest.mark.parametrize(("config", "env", "on"), [
    (UNSET, {}, False),
    (UNSET, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    (UNSET, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    (UNSET, {"OTEL_TRACES_EXPORTER": "otlp"}, True),
    (UNSET, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    (UNSET, {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
    (ON, {}, True),
    (TracingConfig(url="http://collector:4318"), {}, True),
    (ON, {"OTEL_SDK_DISABLED": "true"}, False),
    (TracingConfig(enabled=False), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
])
def test_tracing_is_off_unless_the_config_or_the_standard_variables_ask(config, env, on):
    assert wanted(config, env) is on


def test_the_sampler_follows_the_config_then_the_standard_variables():
    assert "TraceIdRatioBased{0.25}" in sampler_of(TracingConfig(sample_ratio=0.25), {}).get_description()
    assert sampler_of(UNSET, {}).get_description() == sampling.ParentBased(sampling.ALWAYS_ON).get_description()
    ratio = sampler_of(UNSET, {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"})
    assert ratio.get_description() == "TraceIdRatioBased{0.1}"
    assert sampler_of(UNSET, {"OTEL_TRACES_SAMPLER": "always_off"}) is sampling.ALWAYS_OFF
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER='sometimes'"):
        sampler_of(UNSET, {"OTEL_TRACES_SAMPLER": "sometimes"})


def test_the_exporter_is_otlp_over_http_at_the_configured_url():
    exporter = exporter_of(TracingConfig(url="http://collector:4318/"), {})
    try:
        assert isinstance(exporter, OTLPSpanExporter)
        assert exporter._endpoint == "http://collector:4318/v1/traces"
    finally:
        exporter.shutdown()
    with pytest.raises(ConfigError, match="http/protobuf or grpc"):
        exporter_of(ON, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_the_standard_endpoint_variable_turns_an_app_s_tracing_on_with_its_service_name():
    settings = settings_from_dict({"pools": {"cpu": {"type": "espeak"}}, "models": {"m": ["cpu"]}},
                                  env={})
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "tts-edge"}
    app = create_app(settings, env=env)
    tracing = app.state.tracing
    try:
        assert tracing is not None and tracing.exporter == "OTLPSpanExporter"
        assert tracing.provider.resource.attributes["service.name"] == "tts-edge"
    finally:
        tracing.provider.shutdown()
    assert create_app(settings, env={}).state.tracing is None


def test_a_tracing_block_parses_and_unknown_keys_are_refused():
    config = {"pools": {"cpu": {"type": "espeak"}}, "models": {"m": ["cpu"]},
              "tracing": {"enabled": True, "sample_ratio": 0.5, "service_name": "edge"}}
    assert settings_from_dict(config, env={}).tracing == TracingConfig(enabled=True, sample_ratio=0.5,
                                                                       service_name="edge")
    with pytest.raises(ConfigError, match="tracing.ratio"):
        settings_from_dict({**config, "tracing": {"ratio": 0.5}}, env={})


def test_without_the_sdk_tracing_asked_for_is_a_config_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(ConfigError, match=r"speech-router\[tracing\]"):
        build_tracing(ON, {})
