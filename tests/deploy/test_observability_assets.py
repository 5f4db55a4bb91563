"""The Grafana dashboard, the Prometheus alerts and docs/metrics.md agree with what a running router exports.

A metric renamed in speech_router/metrics.py breaks a dashboard panel or an alert without any error in
Grafana or Prometheus (the query just returns nothing), so these tests compare the three files with the
``/metrics`` of a real router. promtool, where installed (Debian: ``apt-get install prometheus``), checks
the rules, runs their unit tests and parses every dashboard query.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import speech_router
from speech_router.config.messages import keys_at
from speech_router.config.models import PoolConfig
from speech_router.emulator.index_tts_vllm import EmulatorConfig
from speech_router.metrics import Metrics
from tests.conftest import Node, fleet_config, serve_router

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "speech-router.json"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO_ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DOCS = REPO_ROOT / "docs" / "metrics.md"

METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])speech_router_[a-z0-9_]+")
#: the series names Prometheus stores for a family, by its ``# TYPE`` (counters are typed with ``_total``)
SERIES_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
                   "summary": ("", "_sum", "_count")}
#: what Grafana puts in place of the dashboard's variables, so promtool can parse the queries
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$model": ".*", "$pool": ".*"}
PROMTOOL_TIMEOUT_S = 60


@dataclass
class Exposition:
    """What ``GET /metrics`` of a running router declares: family name (as in ``# TYPE``) -> type."""

    families: dict[str, str]
    text: str

    @property
    def series(self) -> set[str]:
        """Every series name a query may use: ``..._total``, ``..._bucket``, ``..._sum``, gauges as they are."""
        return {name + suffix for name, kind in self.families.items() for suffix in SERIES_SUFFIXES[kind]}


@pytest.fixture(scope="module")
def exposition() -> Iterator[Exposition]:
    """``/metrics`` of a real router in front of one emulated index-tts-vllm node, after one request.

    Module-scoped (the ``nodes``/``router`` fixtures are per test): one router serves every test here.
    """
    node = Node(EmulatorConfig())
    node.server.start()
    try:
        srv = serve_router(fleet_config(node.url))
        try:
            body = json.dumps({"model": "indextts2", "voice": "alloy", "input": "hello", "response_format": "wav"})
            req = urllib.request.Request(srv.url + "/v1/audio/speech", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
                resp.read()
            with urllib.request.urlopen(srv.url + "/metrics", timeout=10) as resp:
                text = resp.read().decode()
        finally:
            srv.stop()
    finally:
        node.server.stop()
    families = dict(re.findall(r"^# TYPE (speech_router_\S+) (\S+)$", text, flags=re.MULTILINE))
    # prometheus-client declares a ``_created`` gauge next to each counter and histogram that has samples
    families = {name: kind for name, kind in families.items()
                if not (name.endswith("_created") and _owner_of_created(name, families))}
    yield Exposition(families, text)


def _owner_of_created(name: str, families: dict[str, str]) -> bool:
    base = name.removesuffix("_created")
    return families.get(base + "_total") == "counter" or families.get(base) == "histogram"


def metric_names(text: str) -> set[str]:
    return set(METRIC_NAME.findall(text))


# --- the files ----------------------------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def load_alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (rows hold nothing when expanded; collapsed rows keep theirs inside)."""
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out += panel.get("panels", [])
        else:
            out.append(panel)
    return out


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    out = [(f"panel {p['id']} {p['title']!r} target {t['refId']}", t["expr"])
           for p in dashboard_panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']}", query))
    return out


def exprs_using(dashboard: dict[str, Any], metric: str) -> list[str]:
    return [expr for _, expr in dashboard_queries(dashboard) if metric in metric_names(expr)]


# --- (a) everything the dashboard and the alerts query is exported ------------------------------------------


def test_the_router_exports_every_declared_family(exposition: Exposition) -> None:
    declared = {(m._name + "_total" if m._type == "counter" else m._name) for m in declared_metrics()}
    assert declared == set(exposition.families)
    assert re.search(r'^speech_router_requests_total\{.*status="200".*\} 1\.0$', exposition.text, re.MULTILINE)


def test_every_metric_the_dashboard_queries_is_exported(exposition: Exposition) -> None:
    used = {name: where for where, expr in dashboard_queries(load_dashboard()) for name in metric_names(expr)}
    assert len(used) >= 30, sorted(used)  # the extraction itself works
    missing = {name: where for name, where in used.items() if name not in exposition.series}
    assert not missing, f"the dashboard queries metrics the router does not export: {missing}"


def test_every_metric_the_alerts_name_is_exported(exposition: Exposition) -> None:
    used = metric_names(ALERTS.read_text()) | metric_names(ALERTS_TEST.read_text())
    assert "speech_router_model_healthy" in used
    missing = sorted(used - exposition.series)
    assert not missing, f"alerts.yml or alerts_test.yml name metrics the router does not export: {missing}"


def test_the_router_exports_its_build_info_and_process_metrics(exposition: Exposition) -> None:
    version = re.escape(speech_router.__version__)
    python = re.escape(platform.python_version())
    assert re.search(rf'^speech_router_build_info\{{python="{python}",version="{version}"\}} 1\.0$', exposition.text,
                     re.MULTILINE), "one build_info series, value 1, with the running version"
    assert re.search(r"^python_info\{", exposition.text, re.MULTILINE)
    if sys.platform == "linux":  # prometheus-client reads them from /proc
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
            assert re.search(rf"^{name} \d", exposition.text, re.MULTILINE), name


# --- (b) docs/metrics.md cannot drift ------------------------------------------------------------------------


def declared_metrics() -> list[MetricWrapperBase]:
    metrics = Metrics()
    return [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]


def docs_table_rows() -> dict[str, tuple[str, set[str]]]:
    """``| `name` | type | `label`, ... | meaning |`` rows of docs/metrics.md: name -> (type, labels)."""
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and METRIC_NAME.fullmatch(cells[0].strip("`")):
            assert cells[0].strip("`") not in rows, f"{cells[0]} has two rows"
            rows[cells[0].strip("`")] = (cells[1], set(re.findall(r"`([a-z_]+)`", cells[2])))
    return rows


def test_docs_list_every_exported_family(exposition: Exposition) -> None:
    rows = docs_table_rows()
    undocumented = sorted(set(exposition.families) - set(rows))
    assert not undocumented, f"docs/metrics.md has no table row for {undocumented}"


def test_docs_name_only_exported_metrics(exposition: Exposition) -> None:
    named = metric_names(DOCS.read_text())
    assert len(named) >= len(exposition.families)
    unknown = sorted(named - exposition.series - set(exposition.families))  # histograms go by family name
    assert not unknown, f"docs/metrics.md names metrics the router does not export: {unknown}"


def test_docs_give_each_metric_its_type_and_labels(exposition: Exposition) -> None:
    rows = docs_table_rows()
    for metric in declared_metrics():
        name = metric._name + "_total" if metric._type == "counter" else metric._name
        assert rows[name][0] == exposition.families[name] == metric._type, name
        assert rows[name][1] == set(metric._labelnames), (name, rows[name][1])


# --- (c) the alerts and panels the issue asks for are there -------------------------------------------------

REQUIRED_ALERTS = {  # alert -> a metric its expression must use
    "SpeechRouterNoHealthyBackend": "speech_router_model_healthy",
    "SpeechRouterHighErrorRatio": "speech_router_requests_total",
    "SpeechRouterHighLatencyP99": "speech_router_request_duration_seconds_bucket",
    "SpeechRouterBreakerOpen": "speech_router_breaker_state",
    "SpeechRouterQueueSaturation": "speech_router_queue_rejections_total",
    "SpeechRouterConfigReloadFailed": "speech_router_config_last_reload_successful",
    "SpeechRouterEndpointDown": "speech_router_endpoint_up",
}


def test_alerts_cover_the_issue_with_severity_and_annotations() -> None:
    alerts = load_alerts()
    assert set(REQUIRED_ALERTS) <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        if name in REQUIRED_ALERTS:
            assert REQUIRED_ALERTS[name] in metric_names(rule["expr"]), name
    assert alerts["SpeechRouterNoHealthyBackend"]["labels"]["severity"] == "critical"
    assert "{{ $labels.model }}" in alerts["SpeechRouterNoHealthyBackend"]["annotations"]["summary"]
    assert "{{ $labels.endpoint }}" in alerts["SpeechRouterBreakerOpen"]["annotations"]["summary"]
    assert re.search(r"==\s*2\b", alerts["SpeechRouterBreakerOpen"]["expr"])  # 2 = open (metrics.py)


CONFIG_KEY = re.compile(r"\b([a-z_]+(?:\.[a-z_]+)+)\b")


def test_alerts_name_only_config_keys_that_exist() -> None:
    """An alert that says what to change must name a real key (one said "raise max_queue": the key is
    queue.max_size). Dotted words in the annotations that start with a pool setting must resolve in PoolConfig."""
    named = set()
    for rule in load_alerts().values():
        for text in rule["annotations"].values():
            named |= {key for key in CONFIG_KEY.findall(text) if key.split(".")[0] in PoolConfig.model_fields}
    assert "queue.max_size" in named
    for key in named:
        *path, last = key.split(".")
        assert last in (keys_at(PoolConfig, tuple(path)) or ()), f"alerts.yml names {key}, which is no pool setting"
    assert "max_queue" not in ALERTS.read_text()


def test_alert_unit_tests_cover_the_main_alerts() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    firing = {case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert {"SpeechRouterNoHealthyBackend", "SpeechRouterHighErrorRatio", "SpeechRouterBreakerOpen"} <= firing
    assert firing <= set(load_alerts())


REQUIRED_PANEL_METRICS = [
    "speech_router_requests_total", "speech_router_request_duration_seconds_bucket",
    "speech_router_time_to_first_byte_seconds_bucket", "speech_router_endpoint_up", "speech_router_model_healthy",
    "speech_router_breaker_state", "speech_router_endpoint_inflight", "speech_router_endpoint_max_concurrency",
    "speech_router_queue_depth", "speech_router_queue_wait_seconds_bucket", "speech_router_queue_rejections_total",
    "speech_router_retries_total", "speech_router_retries_denied_total", "speech_router_fallbacks_total",
    "speech_router_hedges_total", "speech_router_real_time_factor_bucket", "speech_router_audio_seconds_total",
    "speech_router_characters_total", "speech_router_segments_total", "speech_router_cache_lookups_total",
    "speech_router_config_reloads_total", "speech_router_config_last_reload_successful",
    "speech_router_auth_rejections_total", "speech_router_rate_limited_total",
]


def test_dashboard_has_a_panel_for_each_area_of_the_issue() -> None:
    dashboard = load_dashboard()
    missing = [m for m in REQUIRED_PANEL_METRICS if not exprs_using(dashboard, m)]
    assert not missing, f"no dashboard panel queries {missing}"


@pytest.mark.parametrize("metric", ["speech_router_request_duration_seconds_bucket",
                                    "speech_router_time_to_first_byte_seconds_bucket"])
def test_dashboard_shows_latency_p50_and_p99_per_model_and_per_endpoint(metric: str) -> None:
    exprs = [re.sub(r"\s+", " ", e) for e in exprs_using(load_dashboard(), metric)]
    for quantile in ("0.5", "0.99"):
        for by in (r"\bmodel\b", r"\bendpoint\b"):
            assert any(re.search(rf"histogram_quantile\({quantile}, sum by \([^)]*{by}[^)]*\)", e) for e in exprs), \
                (metric, quantile, by)


def test_latency_panels_link_traced_requests_through_exemplars() -> None:
    """The router puts a sampled request's trace id on these histograms (tests/tracing): the panels show them."""
    for panel in dashboard_panels(load_dashboard()):
        for target in panel.get("targets", []):
            if metric_names(target["expr"]) & {"speech_router_request_duration_seconds_bucket",
                                                 "speech_router_time_to_first_byte_seconds_bucket"}:
                assert target.get("exemplar") is True, (panel["title"], target["refId"])


def test_dashboard_is_importable_with_its_variables() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for name, label in (("model", "model"), ("pool", "pool")):
        query = variables[name]["query"]
        query = query["query"] if isinstance(query, dict) else query
        assert re.fullmatch(rf"label_values\(speech_router_[a-z_]+, {label}\)", query), query
    nested = [p for row in dashboard["panels"] for p in row.get("panels", [])]
    ids = [p["id"] for p in dashboard["panels"] + nested]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard_panels(dashboard):
        where = f"panel {panel['id']}"
        assert panel["title"].strip(), where
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{where} {panel['title']!r} has no unit"
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", where
        assert panel["targets"] and all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in panel["targets"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0, where
        for target in panel["targets"]:  # only variables the dashboard defines (or Grafana's own)
            for var in re.findall(r"\$\{?(\w+)", target["expr"]):
                assert var in variables or var.startswith("__"), (where, var)


# --- (d) promtool ------------------------------------------------------------------------------------------


def promtool(*args: str, cwd: Path = REPO_ROOT) -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool is not on PATH (Debian/Ubuntu: apt-get install --no-install-recommends prometheus)")
    done = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT_S)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_promtool_checks_the_alert_rules() -> None:
    output = promtool("check", "rules", str(ALERTS.relative_to(REPO_ROOT)))
    assert f"SUCCESS: {len(load_alerts())} rules found" in output


def test_promtool_runs_the_alert_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(ALERTS_TEST.relative_to(REPO_ROOT)))


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query becomes a recording rule (variables filled in as Grafana would), so a typo fails here."""
    rules = []
    for i, (where, expr) in enumerate(dashboard_queries(load_dashboard())):
        if expr.startswith("label_values("):
            continue  # Grafana's variable function, not PromQL
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, (where, expr)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", str(path))
