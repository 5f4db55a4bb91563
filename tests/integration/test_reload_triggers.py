"""The config watcher reacts only to its files, and SIGHUP with a file event makes one reload."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from speech_router.api import reload as reload_module
from speech_router.api.app import create_app
from speech_router.emulator.serve import ServerHandle
from speech_router.plugins.manager import create_plugin_manager
from tests.client import call

CONFIG = "pools: {cpu: {type: espeak}}\nmodels: {m: [cpu]}\nserver: {watch_config: true}\n"


def reloads(url: str) -> dict[str, float]:
    """The reloads counted so far, by labels (every trigger and result is exported from the start, at 0)."""
    out: dict[str, float] = {}
    for line in call(url + "/metrics").body.decode().splitlines():
        if line.startswith("speech_router_config_reloads_total{") and float(line.rsplit(" ", 1)[1]):
            out[line.split("{", 1)[1].split("}", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


def wait_for(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def test_only_the_config_file_triggers_a_reload_and_nothing_is_logged_for_others(tmp_path: Path, caplog):
    caplog.set_level(logging.INFO)
    path = tmp_path / "router.yaml"
    path.write_text(CONFIG)
    srv = ServerHandle(create_app(pm=create_plugin_manager(load_entrypoints=False), config_path=str(path)))
    srv.start()
    try:
        time.sleep(0.5)  # the watcher is up
        for i in range(5):  # a log file, an editor's swap file... beside the config
            (tmp_path / "router.log").write_text("line\n" * (i + 1))
            (tmp_path / ".router.yaml.swp").write_text(str(i))
        time.sleep(1.5)  # debounce and coalescing are far shorter
        assert reloads(srv.url) == {}
        noise = [r.getMessage() for r in caplog.records if r.name.startswith(("watchfiles", "speech_router.reload"))
                 and r.levelno >= logging.INFO and "watching" not in r.getMessage()]
        assert noise == []  # watchfiles logged a line per change batch, which fed on a log file beside the config
        path.write_text(CONFIG + "# a comment\n")
        wait_for(lambda: sum(reloads(srv.url).values()) >= 1)
        time.sleep(1.0)
        assert reloads(srv.url) == {'result="unchanged",trigger="file"': 1.0}
    finally:
        srv.stop()


@pytest.mark.anyio
async def test_sighup_and_a_file_event_together_make_one_reload(tmp_path: Path, monkeypatch):
    path = tmp_path / "router.yaml"
    path.write_text(CONFIG.replace("true", "false"))
    app = create_app(pm=create_plugin_manager(load_entrypoints=False), config_path=str(path))
    reloader = app.state.reloader
    done: list[str] = []
    real = reloader.reload

    async def counted(trigger: str):
        done.append(trigger)
        return await real(trigger)

    monkeypatch.setattr(reloader, "reload", counted)
    monkeypatch.setattr(reload_module, "COALESCE_S", 0.2)
    reloader._spawn("sighup")
    reloader._spawn("file")
    await asyncio.sleep(0.6)
    assert done == ["sighup"]
    reloader._spawn("file")  # the file did not change since that reload: nothing to do
    await asyncio.sleep(0.4)
    assert done == ["sighup"]
    await reloader.stop()
