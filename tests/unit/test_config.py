"""Config loading: schema errors with locations and lines, env expansion, the env and embedded sources."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from speech_router.config.loader import expand_env, load_file, load_settings, settings_from_dict
from speech_router.errors import ConfigError
from speech_router.plugins.manager import backend_registry, create_plugin_manager


@pytest.fixture(scope="module")
def registry():
    return backend_registry(create_plugin_manager(load_entrypoints=False))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def issues_of(exc: ConfigError) -> dict[str, tuple[str, int | None]]:
    return {issue.loc: (issue.message, issue.line) for issue in exc.issues}


def test_minimal_config_loads_and_names_endpoints(tmp_path, registry):
    settings = load_file(write(tmp_path, """
        pools:
          gpu:
            type: index-tts-vllm
            endpoints:
              - url: http://gpu-1:6006
              - url: http://gpu-2:6006/
                weight: 2
        models:
          indextts2: [gpu]
        voices:
          alloy: {spk_audio_path: /data/voices/alloy.wav}
    """), registry=registry)
    eps = settings.pools["gpu"].endpoints
    assert [e.name for e in eps] == ["gpu-1:6006", "gpu-2:6006"]
    assert eps[1].url == "http://gpu-2:6006"  # trailing slash dropped, so paths join cleanly
    assert eps[1].weight == 2
    assert settings.models["indextts2"].pools == ["gpu"]
    assert settings.voices["alloy"].params() == {"spk_audio_path": "/data/voices/alloy.wav"}


def test_every_error_is_reported_with_location_and_line(tmp_path, registry):
    path = write(tmp_path, """
        server:
          port: 99999
        pools:
          gpu:
            type: index-tts-vllm
            api: v3
            endpoints:
              - url: http://gpu-1:6006
              - url: gpu-2
                wieght: 2
          other:
            type: nope
        models:
          indextts2: [gpu, missing]
        voices:
          alloy: {spk_audio_path: /a.wav, colour: red}
    """)
    with pytest.raises(ConfigError) as info:
        load_file(path, registry=registry)
    got = issues_of(info.value)
    assert got["pools.gpu.endpoints[1].url"] == ("invalid URL 'gpu-2': http:// (or https://) is missing, "
                                                 "e.g. http://gpu-2", 10)
    assert got["pools.gpu.endpoints[1].wieght"] == ("unknown key (did you mean 'weight'?)", 11)
    assert got["server.port"][1] == 3
    assert got["pools.gpu.api"][1] == 7
    assert "unknown backend type 'nope'" in got["pools.other.type"][0]
    assert got["models.indextts2[1]"] == ("unknown pool 'missing'", 15)
    assert "unknown voice parameter" in got["voices.alloy.colour"][0]
    text = str(info.value)
    assert f"{path}:10: pools.gpu.endpoints[1].url: invalid URL 'gpu-2'" in text


def test_invalid_yaml_reports_its_line(tmp_path, registry):
    path = write(tmp_path, "pools:\n  gpu: [\n")
    with pytest.raises(ConfigError) as info:
        load_file(path, registry=registry)
    assert info.value.issues[0].message.startswith("invalid YAML")
    assert info.value.issues[0].line is not None


def test_url_endpoints_are_required_for_remote_types(registry):
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"pools": {"gpu": {"type": "index-tts-vllm", "endpoints": [{"weight": 1}]}},
                            "models": {"m": ["gpu"]}}, registry=registry)
    assert "pools.gpu.endpoints[0].url" in issues_of(info.value)


@pytest.mark.parametrize("pool, endpoint, named", [
    ({"api_key_env": "KEY"}, {}, "api_key_env"),
    ({}, {"api_key_env": "KEY"}, "endpoints[0].api_key_env"),
    ({"headers": {"authorization": "Bearer x"}}, {}, "headers.authorization"),
])
def test_url_credentials_and_an_authorization_header_are_refused_together(registry, pool, endpoint, named):
    config = {"pools": {"gpu": {"type": "index-tts-vllm", **pool,
                                "endpoints": [{"url": "http://user:pw@gpu:6006", **endpoint}]}},
              "models": {"m": ["gpu"]}}
    with pytest.raises(ConfigError) as info:
        settings_from_dict(config, registry=registry)
    (message, _), = [issues_of(info.value)["pools.gpu"]]
    assert "endpoints[0].url carries credentials" in message and f" {named} sends" in message
    assert "pw" not in message  # the password is never repeated
    config["pools"]["gpu"]["endpoints"][0]["url"] = "http://gpu:6006"  # either one alone is fine
    settings_from_dict(config, registry=registry)


def test_env_expansion_with_defaults_and_missing_variables():
    issues: list = []
    out = expand_env({"a": "${HOST}:${PORT:-6006}", "b": ["$${literal}", "${NOPE}"]}, {"HOST": "gpu"}, (), issues)
    assert out == {"a": "gpu:6006", "b": ["${literal}", ""]}
    assert issues == [(("b", 1), "environment variable NOPE is not set")]


def test_env_expansion_applies_to_config_values(registry):
    settings = settings_from_dict({
        "server": {"port": "${PORT:-9000}"},
        "pools": {"gpu": {"type": "index-tts-vllm", "endpoints": [{"url": "http://${GPU_HOST}:6006"}]}},
        "models": {"m": ["gpu"]},
    }, registry=registry, env={"GPU_HOST": "10.0.0.7"})
    assert settings.server.port == 9000
    assert settings.pools["gpu"].endpoints[0].url == "http://10.0.0.7:6006"


def test_tts_remote_url_builds_one_pool(registry):
    env = {"TTS_REMOTE_URL": "http://a:6006, http://b:6006", "TTS_VOICE_DIR": "/voices"}
    settings = load_settings(None, registry=registry, env=env)
    assert settings.source == "TTS_REMOTE_URL"
    assert [e.url for e in settings.pools["remote"].endpoints] == ["http://a:6006", "http://b:6006"]
    assert settings.pools["remote"].type == "index-tts-vllm"
    assert "tts-1" in settings.models and "indextts2" in settings.models
    assert settings.voice_dir is not None and settings.voice_dir.path == "/voices"


def test_no_config_gives_the_embedded_espeak_default(registry):
    settings = load_settings(None, registry=registry, env={})
    assert settings.source == "embedded default"
    assert [p.type for p in settings.pools.values()] == ["espeak"]
    # the model names README's examples and TTS_REMOTE_URL mode use
    assert {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "indextts2"} <= set(settings.models)
    assert settings.voices["alloy"].params()["espeak"]


def test_duplicate_endpoint_names_are_rejected(registry):
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"pools": {"gpu": {"type": "index-tts-vllm", "endpoints": [
            {"url": "http://a:1", "name": "x"}, {"url": "http://b:1", "name": "x"}]}},
            "models": {"m": ["gpu"]}}, registry=registry)
    assert "duplicate endpoint name" in issues_of(info.value)["pools.gpu.endpoints[1].name"][0]


def test_shipped_example_is_valid(registry):
    example = Path(__file__).parents[2] / "examples" / "speech-router.yaml"
    settings = load_file(example, registry=registry, env={})
    assert {"gpu", "cpu"} <= set(settings.pools)
