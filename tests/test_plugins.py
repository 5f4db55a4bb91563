"""Plugins: third-party backends route through YAML alone; entry points are discovered; every hook is tested."""

from __future__ import annotations

import importlib.metadata
import io
import sys
import wave

import pytest

from speech_router.plugins import hookspecs
from speech_router.plugins.manager import DEFAULT_PLUGINS, backend_registry, create_plugin_manager
from tests.conftest import openai_client
from tests.plugins import tone_plugin


def tone_config() -> dict:
    return {
        "pools": {"tones": {"type": "tone", "amplitude": 0.5}},
        "models": {"beep": ["tones"]},
        "voices": {"high": {"tone_hz": 880}},
    }


def test_every_hook_has_a_test():
    hooks = [name for name in dir(hookspecs) if name.startswith(("register_", "prepare_", "startup"))]
    assert hooks, "no hooks found"
    missing = [h for h in hooks if f"test_hook_{h}" not in globals()]
    assert not missing, f"hooks without a test_hook_<name>: {missing}"


def test_every_default_plugin_registers():
    pm = create_plugin_manager(load_entrypoints=False)
    names = {pm.get_name(p) for p in pm.get_plugins()}
    assert set(DEFAULT_PLUGINS) <= names
    assert {"index-tts-vllm", "openai", "espeak"} <= set(backend_registry(pm).types)


def test_hook_register_backends(router):
    """A backend type from outside the package serves a model through YAML alone."""
    pm = create_plugin_manager(load_entrypoints=False, plugins=[tone_plugin])
    assert backend_registry(pm).types["sine"] is tone_plugin.ToneBackend  # aliases register too
    srv = router(tone_config(), pm=pm)
    client = openai_client(srv.url)
    resp = client.audio.speech.with_raw_response.create(model="beep", voice="high", input="twenty characters!!",
                                                        response_format="wav")
    with wave.open(io.BytesIO(resp.content)) as w:
        assert w.getframerate() == tone_plugin.RATE
        assert w.getnframes() == int(tone_plugin.RATE * tone_plugin.SECONDS_PER_CHAR * len("twenty characters!!"))
    assert resp.headers["x-speech-router-endpoint"] == "tones-0"


def test_hook_prepare_request(router):
    pm = create_plugin_manager(load_entrypoints=False, plugins=[tone_plugin])
    srv = router(tone_config(), pm=pm)
    client = openai_client(srv.url)
    audio = client.audio.speech.create(model="beep", voice="high", input="  padded  ", response_format="wav").content
    assert "  padded  " in tone_plugin.seen["prepare_request"]
    with wave.open(io.BytesIO(audio)) as w:  # the hook stripped the text before synthesis
        assert w.getnframes() == int(tone_plugin.RATE * tone_plugin.SECONDS_PER_CHAR * len("padded"))


def test_hook_startup(router):
    tone_plugin.seen["startup"].clear()
    pm = create_plugin_manager(load_entrypoints=False, plugins=[tone_plugin])
    router(tone_config(), pm=pm)
    assert tone_plugin.seen["startup"] == [["tones"]]


def test_unknown_backend_type_without_the_plugin_is_a_config_error(pm):
    from speech_router.config.loader import settings_from_dict
    from speech_router.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        settings_from_dict(tone_config(), registry=backend_registry(pm))
    assert info.value.issues[0].loc == "pools.tones.type"


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    dist = tmp_path / "speech_router_tone-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: speech-router-tone\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[speech_router]\ntone = tests.plugins.tone_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert any(d.metadata["Name"] == "speech-router-tone" for d in importlib.metadata.distributions())

    monkeypatch.delenv("SPEECH_ROUTER_LOAD_PLUGINS", raising=False)
    assert "tone" in backend_registry(create_plugin_manager()).types

    monkeypatch.setenv("SPEECH_ROUTER_LOAD_PLUGINS", "")  # load none
    assert "tone" not in backend_registry(create_plugin_manager()).types

    monkeypatch.setenv("SPEECH_ROUTER_LOAD_PLUGINS", "speech-router-tone")
    assert "tone" in backend_registry(create_plugin_manager()).types
    assert "tests.plugins.tone_plugin" in sys.modules
