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


def test_commands_that_describe_a_router_ask_the_one_on_this_host_by_default(nodes, router, capsys, monkeypatch,
                                                                              tmp_path):
    """No flags: ``endpoints`` (and the admin commands) ask the router at the default URL, never a config read
    in-process (it used to print the built-in default config's espeak endpoint, or $SPEECH_ROUTER_CONFIG's)."""
    assert cli.DEFAULT_ROUTER_URL == "http://localhost:8000"  # serve's default port, as README's examples use
    node = nodes(name="gpu-a")
    srv = router(fleet_config(node.url), env={"SPEECH_ROUTER_ADMIN_KEY": "k"})
    config = tmp_path / "cpu.yaml"
    config.write_text("pools: {cpu: {type: espeak}}\nmodels: {tts-1: [cpu]}\n")
    monkeypatch.setenv("SPEECH_ROUTER_CONFIG", str(config))  # serve's variable: not what endpoints describes
    monkeypatch.delenv("SPEECH_ROUTER_URL", raising=False)
    monkeypatch.setattr(cli, "DEFAULT_ROUTER_URL", srv.url)  # the router "on this host" (8000 may be taken here)
    assert cli.main(["endpoints"]) == 0
    table = capsys.readouterr().out
    assert node.url.removeprefix("http://") in table and "cpu-0" not in table
    monkeypatch.setenv("SPEECH_ROUTER_ADMIN_KEY", "k")
    assert cli.main(["backends"]) == 0
    assert node.url.removeprefix("http://") in capsys.readouterr().out


def test_with_no_router_there_endpoints_says_so_instead_of_describing_a_default(capsys, monkeypatch):
    monkeypatch.delenv("SPEECH_ROUTER_URL", raising=False)
    monkeypatch.delenv("SPEECH_ROUTER_CONFIG", raising=False)
    monkeypatch.setattr(cli, "DEFAULT_ROUTER_URL", "http://127.0.0.1:9")  # nothing listens there
    assert cli.main(["endpoints"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "cannot reach a router at http://127.0.0.1:9" in err and "--config" in err
