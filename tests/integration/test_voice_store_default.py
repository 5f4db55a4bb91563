"""Where uploaded voices go when the config does not say: a directory the user running the router can write,
one per config, checked before serving (issue #22: the old default, /var/lib/speech-router/voices, worked
only for root, and every router on a host shared it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from speech_router import cli
from speech_router.api.app import create_app
from speech_router.config.datadir import default_voice_directory
from speech_router.emulator.serve import ServerHandle
from speech_router.plugins.manager import create_plugin_manager
from tests.client import call
from tests.integration.voice_uploads import ADMIN_KEY, tone, upload

CONFIG = "pools:\n  cpu:\n    type: espeak\nmodels:\n  tts-1: [cpu]\n"


def listed(url: str) -> set[str]:
    return {v["id"] for v in call(url + "/v1/audio/voices").json()["data"]}


def test_routers_of_different_configs_keep_their_uploads_apart_and_a_restart_finds_its_own(tmp_path):
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "HOME": str(tmp_path / "home"),
           "SPEECH_ROUTER_ADMIN_KEY": ADMIN_KEY}
    first, other = tmp_path / "a" / "speech-router.yaml", tmp_path / "b" / "speech-router.yaml"
    for path in (first, other):
        path.parent.mkdir()
        path.write_text(CONFIG)

    def serve(path: Path) -> ServerHandle:
        handle = ServerHandle(create_app(pm=create_plugin_manager(load_entrypoints=False), config_path=str(path),
                                         env=env))
        handle.start()
        return handle

    a, b = serve(first), serve(other)
    try:
        assert upload(a.url, "Narrator", tone(2.0)).status == 200
        assert "Narrator" in listed(a.url)
        assert "Narrator" not in listed(b.url)  # another router of this user, on this host: not its voice
    finally:
        a.stop()
        b.stop()
    again = serve(first)  # the same config again (a restart, or a replica): its voices are there
    try:
        assert "Narrator" in listed(again.url)
    finally:
        again.stop()
    stored = list((tmp_path / "data" / "speech-router" / "voices").iterdir())
    assert len(stored) == 1 and stored[0].name.startswith("speech-router-")  # the first config's directory


def test_the_default_follows_the_data_directory_the_operator_names():
    env = {"SPEECH_ROUTER_DATA_DIR": "/srv/tts", "XDG_DATA_HOME": "/x", "HOME": "/home/u"}
    assert default_voice_directory("/etc/speech-router/config.yaml", env) == "/srv/tts/voices"
    env = {"HOME": "/home/u"}
    assert default_voice_directory("", env) == "/home/u/.local/share/speech-router/voices/embedded"
    assert default_voice_directory("TTS_REMOTE_URL", {**env, "TTS_REMOTE_URL": "http://a:6006"}) \
        != default_voice_directory("TTS_REMOTE_URL", {**env, "TTS_REMOTE_URL": "http://b:6006"})


def check(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, list[str]]:
    code = cli.main(["check-config", str(path)])
    return code, capsys.readouterr().err.splitlines()[1:]


def test_a_default_store_this_user_cannot_write_is_refused_at_start(tmp_path, capsys, monkeypatch):
    """Said before serving, by check-config and serve alike, not as 503s on the first upload."""
    path = tmp_path / "speech-router.yaml"
    path.write_text(CONFIG)
    monkeypatch.delenv("SPEECH_ROUTER_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", os.devnull)  # a data directory inside a file: nothing can be made there
    code, errors = check(capsys, path)
    assert code == 1
    directory = default_voice_directory(str(path), os.environ)
    assert errors == [f"{path}:1: voice_store.directory: the default voice store {directory}: {os.devnull} is not a "
                      "directory, so uploaded voices cannot be kept; set voice_store.directory (or "
                      "SPEECH_ROUTER_DATA_DIR) to a directory this user can write, or voice_store.enabled: false"]
    assert cli.main(["serve", "--config", str(path), "--port", "0"]) == 1
    capsys.readouterr()
    path.write_text(CONFIG + "voice_store: {enabled: false}\n")  # no uploads: nothing to keep, nothing to check
    assert check(capsys, path)[0] == 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_a_store_directory_without_write_permission_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    path = tmp_path / "speech-router.yaml"
    path.write_text(CONFIG + f"voice_store: {{directory: {locked}/voices}}\n")
    code, errors = check(capsys, path)
    assert code == 1 and "is not writable by this user" in errors[0]
