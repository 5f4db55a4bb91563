"""What a router that has served nothing yet says (issue #22): one log line on client authentication, and
every metric series whose labels the config determines, at 0, so dashboards and alerts have data at once.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.client import call
from tests.conftest import fleet_config

REPO = Path(__file__).resolve().parents[2]
#: families whose labels come only with traffic (an HTTP status, a client's status, a fallback's reason, a
#: route's latency): docs/metrics.md says so; every other family the dashboard or the alerts read has data
TRAFFIC_ONLY = {"speech_router_requests", "speech_router_request_duration_seconds",
                "speech_router_time_to_first_byte_seconds", "speech_router_client_requests",
                "speech_router_fallbacks", "speech_router_stream_errors"}
#: families only a router with a state store has (docs/metrics.md "Shared state"): this one has none
STORE_ONLY = {"speech_router_state_store_up"}
WEB_KEY = "s3cret-web-key"


def config(*urls: str) -> dict[str, Any]:
    cfg = fleet_config(*urls, hedge={"enabled": True})
    cfg["pools"]["cpu"] = {"type": "espeak"}
    cfg["models"]["indextts2"] = {"pools": ["gpu", "cpu"], "cache": True}
    cfg["voices"]["alloy"]["espeak"] = "en-us"
    cfg["server"] = {"auth": {"keys": [{"name": "web", "key_env": "WEB_KEY", "requests_per_minute": 60}]}}
    return cfg


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = [(s.labels, s.value) for s in family.samples]
    return out


def read_by_dashboards_and_alerts() -> set[str]:
    names = set()
    for path in (REPO / "deploy" / "grafana" / "speech-router.json", REPO / "deploy" / "prometheus" / "alerts.yml"):
        names |= set(re.findall(r"speech_router_[a-z_]+", path.read_text()))
    return {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in names}


def test_a_fresh_router_has_every_series_its_config_determines_at_0(nodes, router):
    a, b = nodes(name="a"), nodes(name="b")
    srv = router(config(a.url, b.url), env={"WEB_KEY": WEB_KEY})
    text = call(srv.url + "/metrics").body.decode()
    exported = samples(text)
    empty = {name for name in read_by_dashboards_and_alerts() if not exported.get(name)}
    assert empty == TRAFFIC_ONLY | STORE_ONLY  # the panels and alerts over the rest show 0, not "No data"

    endpoints = [a.url.removeprefix("http://"), b.url.removeprefix("http://")]
    attempts = {(s["endpoint"], s["outcome"]) for s, v in exported["speech_router_endpoint_attempts"] if v == 0}
    assert {(ep, outcome) for ep in endpoints
            for outcome in ("ok", "timeout", "error", "overloaded", "rejected", "cancelled")} <= attempts
    depth = {(s["pool"], s["priority"]) for s, v in exported["speech_router_queue_depth"] if v == 0}
    assert depth == {(pool, priority) for pool in ("gpu", "cpu") for priority in ("interactive", "batch")}
    rejections = {(s["pool"], s["reason"]) for s, v in exported["speech_router_queue_rejections"] if v == 0}
    assert ("gpu", "queue_timeout") in rejections and ("cpu", "expected_wait") in rejections
    reloads = {(s["trigger"], s["result"]) for s, v in exported["speech_router_config_reloads"] if v == 0}
    assert ("file", "invalid") in reloads and len(reloads) == 9  # the failed-reload alert reads result="invalid"
    assert {s["client"] for s, _ in exported["speech_router_rate_limited"]} == {"web"}


def test_no_created_series_are_exported(nodes, router):
    node = nodes(name="a")
    srv = router(fleet_config(node.url))
    assert call(srv.url + "/v1/audio/speech", {"model": "indextts2", "voice": "alloy", "input": "Hi."}).status == 200
    text = call(srv.url + "/metrics").body.decode()
    assert "speech_router_requests_total{" in text
    assert "_created" not in text


def auth_lines(caplog: Any) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("client authentication:")]


def test_startup_says_in_one_line_whether_clients_need_a_key(nodes, router, caplog):
    caplog.set_level(logging.INFO, logger="speech_router")
    node = nodes(name="a")
    router(fleet_config(node.url))
    (off,) = auth_lines(caplog)
    assert off.levelno == logging.WARNING and "off: anyone who can reach the port can use it" in off.getMessage()
    caplog.clear()
    router(config(node.url), env={"WEB_KEY": WEB_KEY, "SPEECH_ROUTER_ADMIN_KEY": "admin-secret"})
    (on,) = auth_lines(caplog)
    assert on.getMessage() == "client authentication: on (1 key); admin API: on"
    assert WEB_KEY not in caplog.text and "admin-secret" not in caplog.text
