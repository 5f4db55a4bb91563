"""Small command-line promises: ``--version``, and ``endpoints`` finding the router as the admin commands do."""

from __future__ import annotations

import pytest

import speech_router
from speech_router import cli
from tests.conftest import fleet_config


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"speech-router {speech_router.__version__}"


def test_endpoints_asks_the_router_named_by_speech_router_url(nodes, router, capsys, monkeypatch):
    node = nodes(name="gpu-a")
    srv = router(fleet_config(node.url))
    monkeypatch.delenv("SPEECH_ROUTER_CONFIG", raising=False)
    monkeypatch.setenv("SPEECH_ROUTER_URL", srv.url)
    assert cli.main(["endpoints"]) == 0
    table = capsys.readouterr().out
    assert node.url.removeprefix("http://") in table and "gpu" in table  # the router's fleet, not a local check


def test_an_explicit_config_wins_over_speech_router_url(tmp_path, capsys, monkeypatch):
    config = tmp_path / "cpu.yaml"
    config.write_text("pools: {cpu: {type: espeak}}\nmodels: {tts-1: [cpu]}\nvoices: {alloy: {espeak: en-us}}\n")
    monkeypatch.setenv("SPEECH_ROUTER_URL", "http://127.0.0.1:9")  # nothing listens there
    assert cli.main(["endpoints", "--config", str(config)]) == 0
    assert "cpu-0" in capsys.readouterr().out
