"""The JSON access log over real HTTP: exactly one line per request, with the synthesis details."""

from __future__ import annotations

import http.client
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.client import call
from tests.conftest import fleet_config, serve_router
from tests.integration.test_auth import ALICE, SPEECH

FIELDS = {"ts", "request_id", "method", "path", "status", "outcome", "client", "priority", "model", "voice", "chars",
          "endpoint", "backend", "pool", "attempts", "fallback", "queue_wait_s", "ttfb_s", "total_s", "bytes",
          "trace_id"}


class Lines(logging.Handler):
    """Collects what the access logger emits, as (level, parsed JSON), from the router's thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[int, dict[str, Any]]] = []
        self.guard = threading.Lock()  # not `lock`: logging.Handler has its own

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        assert "\n" not in text and "\r" not in text
        with self.guard:
            self.records.append((record.levelno, json.loads(text)))

    def for_request(self, request_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The lines of one request, once at least one is there (the line follows the response's last byte)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.guard:
                found = [line for _, line in self.records if line["request_id"] == request_id]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.01)


@pytest.fixture
def lines() -> Iterator[Lines]:
    logger = logging.getLogger("speech_router.access")
    handler = Lines()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture
def fleet(nodes, request) -> Iterator[Any]:
    """A node behind a keyed router (``alice``); parametrize indirectly with extra ``server`` settings."""
    node = nodes(name="n1")
    config = fleet_config(node.url)
    config["voices"]["v" * 100] = {"spk_audio_path": "/data/voices/long.wav"}
    config["server"] = getattr(request, "param", {})
    srv = serve_router(config, env={"SPEECH_ROUTER_API_KEYS": f"alice={ALICE}"})
    try:
        yield srv, node
    finally:
        srv.stop()


def only_line(lines: Lines, reply: Any) -> dict[str, Any]:
    found = lines.for_request(reply.headers["x-request-id"])
    time.sleep(0.05)  # a second line, were there one, would follow at once
    found = lines.for_request(reply.headers["x-request-id"])
    assert len(found) == 1, found
    assert set(found[0]) == FIELDS
    return found[0]


def test_a_streamed_synthesis_logs_one_line_with_its_details(fleet, lines):
    srv, node = fleet
    reply = call(srv.url + "/v1/audio/speech", SPEECH, key=ALICE, headers={"x-request-id": "req-stream-1"})
    assert reply.status == 200
    line = only_line(lines, reply)
    assert line["request_id"] == "req-stream-1"
    assert (line["method"], line["path"], line["status"], line["outcome"]) == ("POST", "/v1/audio/speech", 200,
                                                                              "complete")
    assert (line["client"], line["priority"], line["model"], line["voice"]) == ("alice", "interactive", "indextts2",
                                                                                "alloy")
    assert line["chars"] == len(SPEECH["input"])
    assert (line["backend"], line["pool"], line["attempts"], line["fallback"]) == (
        node.url.removeprefix("http://"), "gpu", 1, None)
    assert line["bytes"] == len(reply.body)
    assert line["queue_wait_s"] >= 0 and 0 < line["ttfb_s"] <= line["total_s"]
    assert line["ts"].endswith("+00:00")


def test_a_whole_file_synthesis_and_a_client_error_each_log_one_line(fleet, lines):
    srv, _ = fleet
    whole = call(srv.url + "/synthesize", {"voice": "calm", "text": "hi", "stream": False}, key=ALICE)
    line = only_line(lines, whole)
    assert (line["status"], line["voice"], line["chars"], line["attempts"]) == (200, "calm", 2, 1)
    assert line["bytes"] == len(whole.body)

    bad = call(srv.url + "/v1/audio/speech", {**SPEECH, "model": "nope"}, key=ALICE)
    line = only_line(lines, bad)
    assert (bad.status, line["status"], line["client"], line["model"], line["backend"]) == (400, 400, "alice",
                                                                                            None, None)
    assert line["bytes"] == len(bad.body)


def test_a_refused_key_is_logged_without_a_client_name(fleet, lines):
    srv, _ = fleet
    reply = call(srv.url + "/v1/audio/speech", SPEECH, key="sk-not-a-key")
    line = only_line(lines, reply)
    assert (line["status"], line["client"], line["path"]) == (401, None, "/v1/audio/speech")
    assert all("sk-not-a-key" not in json.dumps(record) for _, record in lines.records)


def test_an_endpoint_failure_after_the_first_byte_is_logged_as_an_error(nodes, lines):
    node = nodes(name="cut", truncate=True)
    srv = serve_router(fleet_config(node.url, verify_body=False), env={})
    try:
        with pytest.raises(http.client.IncompleteRead):  # the body ends early: the client sees a broken response
            call(srv.url + "/v1/audio/speech", SPEECH, headers={"x-request-id": "req-cut"})
        [line] = lines.for_request("req-cut")
    finally:
        srv.stop()
    assert (line["status"], line["outcome"], line["client"]) == (200, "error", "anonymous")
    assert line["bytes"] > 0


def test_client_strings_cannot_forge_lines_and_voices_are_clipped(fleet, lines):
    srv, _ = fleet
    reply = call(srv.url + "/x%0A%7B%22status%22%3A%20200%7D", key=ALICE)  # a newline and a fake record
    line = only_line(lines, reply)  # the handler also asserts each record is one line of JSON
    assert line["path"] == '/x\n{"status": 200}' and line["status"] == 404
    long_voice = call(srv.url + "/v1/audio/speech", {**SPEECH, "voice": "v" * 100}, key=ALICE)
    assert long_voice.status == 200
    assert only_line(lines, long_voice)["voice"] == "v" * 64


def test_probes_are_logged_at_debug_and_requests_at_info(fleet, lines):
    srv, _ = fleet
    probe = call(srv.url + "/livez")
    models = call(srv.url + "/v1/models", key=ALICE)
    only_line(lines, probe)
    only_line(lines, models)
    levels = {line["path"]: level for level, line in lines.records if line["request_id"] in
              (probe.headers["x-request-id"], models.headers["x-request-id"])}
    assert levels == {"/livez": logging.DEBUG, "/v1/models": logging.INFO}


@pytest.mark.parametrize("fleet", [{"access_log": False}], indirect=True)
def test_no_lines_when_the_access_log_is_off(fleet, lines):
    srv, _ = fleet
    reply = call(srv.url + "/v1/audio/speech", SPEECH, key=ALICE)
    assert reply.status == 200
    assert lines.for_request(reply.headers["x-request-id"], timeout=0.3) == []


@pytest.mark.parametrize("access_log", [True, False])
def test_serve_turns_uvicorns_access_log_off_when_ours_is_on(tmp_path, monkeypatch, access_log):
    """Ours or uvicorn's, never both; either way the line goes to the one root handler, in its format."""
    import uvicorn

    from speech_router import logs
    from speech_router.cli import main

    config = tmp_path / "router.yaml"
    config.write_text(f"pools: {{cpu: {{type: espeak}}}}\nmodels: {{m: [cpu]}}\n"
                      f"server: {{access_log: {str(access_log).lower()}, log_format: json}}\n")
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    stream = io.StringIO()
    setup = logs.setup_logging
    monkeypatch.setattr(logs, "setup_logging", lambda level, fmt: setup(level, fmt, stream=stream))
    root, access = logging.getLogger(), logging.getLogger("speech_router.access")
    saved = root.handlers[:], root.level, access.handlers[:], access.propagate
    try:
        assert main(["serve", "--config", str(config), "--port", "0"]) == 0
        access.info(json.dumps({"ts": "t", "request_id": "r1", "status": 200}))
    finally:
        root.handlers[:], access.handlers[:], access.propagate = saved[0], saved[2], saved[3]
        root.setLevel(saved[1])
    assert calls[0]["access_log"] is (not access_log)
    assert calls[0]["log_config"] is None  # uvicorn's records keep our handler and format
    assert json.loads(stream.getvalue().splitlines()[-1]) == {
        "ts": "t", "level": "info", "logger": "speech_router.access", "request_id": "r1", "status": 200}
