"""What operators see, over real HTTP: health, readiness, model and voice lists, Prometheus metrics,
request ids, the plugin list and the ``speech-router endpoints`` CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from speech_router import hookimpl
from speech_router.cli import main as cli_main
from speech_router.plugins.manager import DEFAULT_PLUGINS, create_plugin_manager
from tests.client import Reply, call
from tests.conftest import SharedFleet, fleet_config, openai_client, shared_fleet

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POLL_S = 5.0  # health checks run every 0.2 s (fleet_config); a state change shows well within this
SPEECH = {"model": "indextts2", "voice": "alloy", "input": "hello there", "response_format": "wav"}


def name_of(node: Any) -> str:
    """The endpoint name the router gives a node configured by URL alone."""
    return node.url.removeprefix("http://")


def wait_for(check: Callable[[], Any], what: str, timeout: float = POLL_S) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def endpoint_states(url: str) -> tuple[int, dict[str, str]]:
    reply = call(url + "/health")
    return reply.status, {ep["name"]: ep["state"] for ep in reply.json()["endpoints"]}


def metrics(url: str) -> dict[str, list[Any]]:
    """Samples of every family, by sample name (``speech_router_requests_total``, ``..._bucket``)."""
    reply = call(url + "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float | None:
    """The value of the one sample of ``name`` whose labels include ``labels``; None when there is none."""
    found = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


class Boom:
    """A plugin whose hook fails: an unexpected error inside the router."""

    __name__ = "boom"

    @hookimpl
    def prepare_request(self, request: Any) -> None:
        raise RuntimeError("secret internal detail from /opt/app/boom.py")


@pytest.fixture(scope="module")
def fleet() -> Iterator[SharedFleet]:
    """Two healthy nodes behind one router, for the tests that change no knob; torn down once."""
    with shared_fleet("a", "b", server={"max_body_bytes": 1024}) as f:
        yield f


# --- /health, /livez, /readyz ------------------------------------------------------------------


def test_health_is_200_with_every_endpoint_up(fleet):
    a, b, srv = fleet.nodes[0], fleet.nodes[1], fleet.srv
    reply = call(srv.url + "/health")
    assert reply.status == 200
    body = reply.json()
    assert body["status"] == "healthy"
    assert {ep["name"]: ep["state"] for ep in body["endpoints"]} == {name_of(a): "up", name_of(b): "up"}
    assert all(ep["healthy"] is True and ep["pool"] == "gpu" and ep["type"] == "index-tts-vllm"
               for ep in body["endpoints"])
    assert body["models"] == {"indextts2": {"healthy": True, "pools": ["gpu"]},
                              "tts-1": {"healthy": True, "pools": ["gpu"]}}
    assert call(srv.url + "/livez").status == 200
    ready = call(srv.url + "/readyz")
    assert ready.status == 200 and ready.json()["status"] == "ready"


def test_only_node_of_a_model_going_down_makes_health_503_and_back(nodes, router):
    a = nodes(name="a")
    srv = router(fleet_config(a.url))
    assert endpoint_states(srv.url) == (200, {name_of(a): "up"})
    a.config.loaded = False  # its /health now answers 503 "TTS model not initialized"
    wait_for(lambda: endpoint_states(srv.url)[1][name_of(a)] == "down", "the endpoint to show down")
    reply = call(srv.url + "/health")
    assert reply.status == 503
    body = reply.json()
    assert body["status"] == "unhealthy"
    assert body["models"]["indextts2"]["healthy"] is False and body["models"]["tts-1"]["healthy"] is False
    (ep,) = body["endpoints"]
    assert ep["healthy"] is False and "503" in ep["detail"]
    assert call(srv.url + "/livez").status == 200  # alive, just not ready
    assert call(srv.url + "/readyz").status == 503
    assert value(metrics(srv.url), "speech_router_endpoint_up", endpoint=name_of(a)) == 0.0
    a.config.loaded = True
    wait_for(lambda: endpoint_states(srv.url) == (200, {name_of(a): "up"}), "the endpoint to come back up")
    assert call(srv.url + "/readyz").status == 200
    assert value(metrics(srv.url), "speech_router_endpoint_up", endpoint=name_of(a)) == 1.0


def test_one_node_down_with_another_up_keeps_health_200_and_traffic_off_it(nodes, router, capsys):
    a, b = nodes(name="a"), nodes(name="b")
    srv = router(fleet_config(a.url, b.url))
    # `speech-router endpoints --url` reads the running router's /health: 0 while all are up
    assert cli_main(["endpoints", "--url", srv.url]) == 0
    assert {name: cols[4] for name, cols in table_rows(capsys.readouterr().out).items()} == {
        name_of(a): "up", name_of(b): "up"}
    b.config.loaded = False
    wait_for(lambda: endpoint_states(srv.url)[1][name_of(b)] == "down", "node b to show down")
    status, states = endpoint_states(srv.url)
    assert (status, states) == (200, {name_of(a): "up", name_of(b): "down"})
    assert call(srv.url + "/readyz").status == 200
    served_by = {call(srv.url + "/v1/audio/speech", {**SPEECH, "input": f"n{i}"}).headers["x-speech-router-endpoint"]
                 for i in range(4)}
    assert served_by == {name_of(a)}
    assert b.requests == []
    samples = metrics(srv.url)
    up = {s.labels["endpoint"]: s.value for s in samples["speech_router_endpoint_up"]}
    assert up == {name_of(a): 1.0, name_of(b): 0.0}
    assert all(s.labels["type"] == "index-tts-vllm" and s.labels["pool"] == "gpu"
               for s in samples["speech_router_endpoint_up"])
    assert cli_main(["endpoints", "--url", srv.url]) == 2
    assert {name: cols[4] for name, cols in table_rows(capsys.readouterr().out).items()} == {
        name_of(a): "up", name_of(b): "down"}


# --- models and voices ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/models", "/models"])
def test_models_are_listed_in_openai_shape(fleet, path):
    reply = call(fleet.url + path)
    assert reply.status == 200
    body = reply.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["indextts2", "tts-1"]
    for model in body["data"]:
        assert model["object"] == "model"
        assert isinstance(model["created"], int) and not isinstance(model["created"], bool)
        assert model["created"] > 1_600_000_000
        assert isinstance(model["owned_by"], str) and model["owned_by"]


def test_openai_sdk_lists_the_configured_models(nodes, router):
    a = nodes(name="a")
    config = fleet_config(a.url)
    config["models"] = {"narrator": ["gpu"], "gpt-4o-mini-tts": ["gpu"], "indextts2": ["gpu"]}
    srv = router(config)
    client = openai_client(srv.url)
    models = list(client.models.list())
    assert sorted(m.id for m in models) == ["gpt-4o-mini-tts", "indextts2", "narrator"]
    assert all(m.object == "model" for m in models)


@pytest.mark.parametrize("path", ["/v1/audio/voices", "/voices"])
def test_voices_lists_the_configured_voices(fleet, path):
    reply = call(fleet.url + path)
    assert reply.status == 200
    body = reply.json()
    assert body["object"] == "list"
    assert sorted(v["id"] for v in body["data"]) == ["alloy", "calm"]
    for voice in body["data"]:
        assert sorted(voice["models"]) == ["indextts2", "tts-1"]


# --- /metrics --------------------------------------------------------------------------------------


def test_metrics_count_requests_by_route_model_pool_endpoint_and_status(nodes, router):
    a = nodes(name="a")
    srv = router(fleet_config(a.url))
    ep = name_of(a)
    for _ in range(3):
        assert call(srv.url + "/v1/audio/speech", SPEECH).status == 200
    assert call(srv.url + "/audio/speech", {**SPEECH, "model": "tts-1"}).status == 200  # same API, same label
    assert call(srv.url + "/synthesize", {"voice": "calm", "text": "native", "model": "tts-1"}).status == 200
    assert call(srv.url + "/tts_url", {"text": "drop in", "spk_audio_path": "/x.wav"}).status == 200
    assert call(srv.url + "/v1/audio/speech", {**SPEECH, "speed": 2.0}).status == 400  # refused before dispatch

    samples = metrics(srv.url)
    total = "speech_router_requests_total"
    assert value(samples, total, route="/v1/audio/speech", model="indextts2", pool="gpu", endpoint=ep,
                 status="200") == 3
    assert value(samples, total, route="/v1/audio/speech", model="tts-1", pool="gpu", endpoint=ep,
                 status="200") == 1
    assert value(samples, total, route="/synthesize", model="tts-1", pool="gpu", endpoint=ep, status="200") == 1
    assert value(samples, total, route="/tts_url", model="indextts2", pool="gpu", endpoint=ep, status="200") == 1
    assert value(samples, total, route="/v1/audio/speech", model="indextts2", status="400") == 1
    assert sum(s.value for s in samples[total]) == 7
    assert {s.labels["route"] for s in samples[total]} == {"/v1/audio/speech", "/synthesize", "/tts_url"}

    duration = "speech_router_request_duration_seconds"
    labels = dict(route="/v1/audio/speech", model="indextts2", pool="gpu", endpoint=ep)
    assert value(samples, duration + "_count", **labels) == 3
    assert value(samples, duration + "_sum", **labels) > 0
    buckets = sorted(((float(s.labels["le"]), s.value) for s in samples[duration + "_bucket"]
                      if all(s.labels.get(k) == v for k, v in labels.items())))
    assert buckets[-1] == (float("inf"), 3)
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)  # cumulative

    assert value(samples, "speech_router_endpoint_up", pool="gpu", endpoint=ep, type="index-tts-vllm") == 1
    assert value(samples, "speech_router_endpoint_inflight", pool="gpu", endpoint=ep) == 0


@pytest.mark.parametrize("path, body", [("/tts_url", {"text": "passed through", "spk_audio_path": "/x.wav"}),
                                        ("/v1/audio/speech", {**SPEECH, "input": "passed through"})])
def test_audio_passed_through_is_metered_from_its_wav_header_and_byte_count(nodes, router, path, body):
    node = nodes(name="a")
    srv = router(fleet_config(node.url))
    reply = call(srv.url + path, body)
    assert reply.status == 200 and reply.body[:4] == b"RIFF"
    data = reply.body
    pos, byte_rate, start = 12, 0, 0
    while pos + 8 <= len(data):  # the seconds the client got, from the answer itself
        kind, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if kind == b"fmt ":
            byte_rate = int.from_bytes(data[pos + 16:pos + 20], "little")
        if kind == b"data":
            start = pos + 8
            break
        pos += 8 + size
    seconds = (len(data) - start) / byte_rate
    samples = metrics(srv.url)
    labels = dict(model="indextts2", pool="gpu", endpoint=name_of(node))
    assert value(samples, "speech_router_audio_seconds_total", **labels) == pytest.approx(seconds, abs=1e-3)
    assert value(samples, "speech_router_characters_total", **labels) == len("passed through")
    assert value(samples, "speech_router_real_time_factor_count", **labels) == 1
    metric = {**labels, "route": path}
    assert value(samples, "speech_router_time_to_first_byte_seconds_count", **metric) == 1


def test_metrics_count_a_failed_attempt_against_its_endpoint(nodes, router):
    a = nodes(name="oom", fail=True)
    srv = router(fleet_config(a.url))
    assert call(srv.url + "/v1/audio/speech", SPEECH).status == 502
    samples = metrics(srv.url)
    assert value(samples, "speech_router_requests_total", route="/v1/audio/speech", model="indextts2",
                 status="502") == 1
    assert value(samples, "speech_router_endpoint_attempts_total", pool="gpu", endpoint=name_of(a),
                 outcome="error") == 1
    assert value(samples, "speech_router_endpoint_attempts_total", outcome="ok") == 0  # there from the start


def test_metrics_count_requests_refused_while_parsing(fleet):
    def refused() -> dict[str, float]:
        out: dict[str, float] = {}
        for s in metrics(fleet.url).get("speech_router_requests_total", []):
            if s.labels["route"] == "/v1/audio/speech" and s.labels["status"] in ("400", "413"):
                out[s.labels["status"]] = out.get(s.labels["status"], 0) + s.value
        return out

    before = refused()
    assert call(fleet.url + "/v1/audio/speech", raw=b"{not json").status == 400
    assert call(fleet.url + "/v1/audio/speech", {**SPEECH, "model": "nosuch"}).status == 400
    assert call(fleet.url + "/v1/audio/speech", {**SPEECH, "input": "a" * 2000}).status == 413
    after = refused()
    assert {k: after.get(k, 0) - before.get(k, 0) for k in ("400", "413")} == {"400": 2, "413": 1}


def test_inflight_gauge_follows_a_request_in_flight(nodes, router):
    a = nodes(name="stuck", hang=True)
    srv = router(fleet_config(a.url))
    ep = name_of(a)
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(call(srv.url + "/v1/audio/speech", SPEECH).status))
    worker.start()
    try:
        wait_for(lambda: value(metrics(srv.url), "speech_router_endpoint_inflight", endpoint=ep) == 1,
                 "the in-flight gauge to show the hung request")
        health = call(srv.url + "/health").json()
        assert [e["inflight"] for e in health["endpoints"]] == [1]
    finally:
        a.server.stop()  # the node dies under the hung request, which then ends
        worker.join(10)
    assert not worker.is_alive()
    assert result and result[0] >= 500
    assert value(metrics(srv.url), "speech_router_endpoint_inflight", endpoint=ep) == 0


# --- request ids and the endpoint header --------------------------------------------------------


def sent_to(fleet: SharedFleet, reply: Reply) -> dict[str, str]:
    """The headers of the last request the node that served ``reply`` received."""
    node = {name_of(fleet.nodes[0]): fleet.nodes[0], name_of(fleet.nodes[1]): fleet.nodes[1]}[reply.headers["x-speech-router-endpoint"]]
    return node.app.state.emulator.headers[-1]


def test_request_id_is_generated_echoed_and_forwarded(fleet):
    srv = fleet.srv
    first = call(srv.url + "/v1/audio/speech", SPEECH)
    assert first.status == 200
    made = first.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made), made
    # the node saw the same id, so its logs line up with the router's
    assert sent_to(fleet, first)["x-request-id"] == made
    second = call(srv.url + "/v1/audio/speech", SPEECH)
    assert second.status == 200 and second.headers["x-request-id"] != made

    mine = "client-req-42"
    reply = call(srv.url + "/v1/audio/speech", SPEECH, headers={"x-request-id": mine})
    assert reply.status == 200 and reply.headers["x-request-id"] == mine
    assert sent_to(fleet, reply)["x-request-id"] == mine
    for path, kwargs in [("/health", {}), ("/v1/models", {}), ("/metrics", {}), ("/synthesize", {"raw": b"{"}),
                         ("/v1/audio/speech", {"body": {**SPEECH, "voice": "nosuch"}}), ("/nope", {}),
                         ("/tts_url", {"body": {"text": "x"}}), ("/v1/audio/speech", {"method": "GET"})]:
        got = call(srv.url + path, headers={"x-request-id": mine}, **kwargs)
        assert got.headers["x-request-id"] == mine, (path, got.status)
        fresh = call(srv.url + path, **kwargs)
        assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"]), (path, fresh.status)


def test_an_unsafe_request_id_is_replaced(fleet):
    srv = fleet.srv
    for bad in ["has spaces in it", "x" * 200, "line\tbreak", "<script>"]:
        got = call(srv.url + "/v1/audio/speech", SPEECH, headers={"x-request-id": bad}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", got), (bad, got)


def test_audio_responses_name_the_endpoint_that_served_them(fleet):
    a, b, srv = fleet.nodes[0], fleet.nodes[1], fleet.srv
    by_name = {name_of(a): a, name_of(b): b}
    requests = [("/v1/audio/speech", SPEECH), ("/audio/speech", {**SPEECH, "response_format": "pcm"}),
                ("/synthesize", {"voice": "alloy", "text": "native"}),
                ("/synthesize", {"voice": "alloy", "text": "native stream", "stream": True}),
                ("/tts_url", {"text": "drop in", "spk_audio_path": "/x.wav"})] * 2
    for path, body in requests:
        counts = {name: len(node.requests) for name, node in by_name.items()}
        reply = call(srv.url + path, body)
        assert reply.status == 200, (path, reply.body)
        served = reply.headers["x-speech-router-endpoint"]
        assert served in by_name, served
        after = {name: len(node.requests) for name, node in by_name.items()}
        assert {n for n in by_name if after[n] != counts[n]} == {served}, path
    assert len(a.requests) and len(b.requests)


@pytest.fixture(scope="module")
def boom() -> Iterator[SharedFleet]:
    """A router whose ``prepare_request`` plugin raises, in front of one node."""
    with shared_fleet("a", pm=create_plugin_manager(load_entrypoints=False, plugins=[Boom()])) as f:
        yield f


def test_an_unexpected_error_is_a_500_in_openai_shape_without_traceback(boom):
    a, srv = boom.node, boom.srv
    reply = call(srv.url + "/v1/audio/speech", SPEECH)
    assert reply.status == 500
    assert reply.json() == {"error": {"message": "Internal server error.", "type": "server_error", "param": None,
                                      "code": "internal_error"}}
    assert b"secret" not in reply.body and b"Traceback" not in reply.body
    assert a.requests == []
    assert call(srv.url + "/health").status == 200


def test_an_unexpected_error_still_carries_the_request_id(boom):
    reply = call(boom.url + "/v1/audio/speech", SPEECH, headers={"x-request-id": "trace-me-500"})
    assert reply.status == 500
    assert reply.headers["x-request-id"] == "trace-me-500"


# --- plugins -------------------------------------------------------------------------------------


def test_plugins_lists_the_built_in_backend_plugins(fleet):
    reply = call(fleet.url + "/-/plugins")
    assert reply.status == 200
    plugins = {p["name"]: p for p in reply.json()}
    assert set(DEFAULT_PLUGINS) <= set(plugins)
    for module in ("speech_router.backends.index_tts_vllm", "speech_router.backends.openai_compat",
                   "speech_router.backends.espeak"):
        assert "register_backends" in plugins[module]["hooks"]


# --- the endpoints CLI ---------------------------------------------------------------------------


def run_endpoints_cli(config_file: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPEECH_ROUTER_LOAD_PLUGINS": ""}  # only the built-ins, as in every test
    env.pop("SPEECH_ROUTER_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "speech_router.cli", "endpoints", "--config", config_file],
                          capture_output=True, text=True, timeout=30, env=env, cwd=REPO_ROOT)


def table_rows(output: str) -> dict[str, list[str]]:
    """Table rows by endpoint name (the NAME column)."""
    lines = [line for line in output.splitlines() if line.strip()]
    header = lines[0].split()
    assert header[:5] == ["POOL", "NAME", "TYPE", "URL", "STATE"], lines[0]
    return {cols[1]: cols for cols in (line.split() for line in lines[1:])}


def test_endpoints_cli_shows_each_endpoint_and_exits_2_when_one_is_down(nodes, tmp_path):
    up, down = nodes(name="up"), nodes(name="down", loaded=False)
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump(fleet_config(up.url, down.url)))

    result = run_endpoints_cli(str(config))
    assert result.returncode == 2, result.stderr
    rows = table_rows(result.stdout)
    assert set(rows) == {name_of(up), name_of(down)}
    assert rows[name_of(up)][:5] == ["gpu", name_of(up), "index-tts-vllm", up.url, "up"]
    assert rows[name_of(down)][:5] == ["gpu", name_of(down), "index-tts-vllm", down.url, "down"]
    assert "503" in " ".join(rows[name_of(down)][5:])  # the detail says why

    down.config.loaded = True
    result = run_endpoints_cli(str(config))
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert {name: cols[4] for name, cols in table_rows(result.stdout).items()} == {name_of(up): "up",
                                                                                 name_of(down): "up"}

