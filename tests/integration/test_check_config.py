"""``check-config`` and ``serve`` agree: on every invalid file both refuse with the same errors, each once and
located; on every shipped config both accept (serve goes on to listen).

The files are ``tests/configs/invalid/*.yaml`` (each names the exact errors it must produce in ``# expect:``
lines, so a follow-on error fails the test), the example config, the compose stack's and the Kubernetes
ConfigMap's. Both commands run in-process through ``speech_router.cli.main``, as a user types them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml

from speech_router import cli
from tests.integration.omni import with_reference_files

REPO = Path(__file__).resolve().parents[2]
INVALID = sorted((REPO / "tests" / "configs" / "invalid").glob("*.yaml"))
#: variables a developer's shell may have that change which config is loaded or which keys are known
ROUTER_VARIABLES = ("SPEECH_ROUTER_CONFIG", "TTS_REMOTE_URL", "SPEECH_ROUTER_API_KEYS", "SPEECH_ROUTER_ADMIN_KEY",
                    "SPEECH_ROUTER_STATE_URL")


def expected(path: Path) -> list[str]:
    return re.findall(r"^# expect: (.*)$", path.read_text(), flags=re.MULTILINE)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):
    for name in ROUTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def apply(path: Path) -> None:
        for name, value in re.findall(r"^# env: (\w+)=(.*)$", path.read_text(), flags=re.MULTILINE):
            monkeypatch.setenv(name, value)

    return apply


@pytest.fixture
def listened(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """``serve`` runs for real up to the point where it would listen; that call is recorded instead."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    monkeypatch.setattr("speech_router.logs.setup_logging", lambda *a, **kw: None)  # the test run's logging stays
    return calls


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    """(exit code, stderr's error lines without the config's directory, stdout)."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    lines = [line.replace(f"{INVALID[0].parent}/", "") for line in err.splitlines()[1:]]
    return code, lines, out


def test_the_corpus_covers_what_the_issue_lists():
    """Each kind of mistake the issue found check-config silent or noisy about has a file here."""
    names = {p.stem for p in INVALID}
    assert {"client_key_unset", "tts_url_suffix", "misspelt_endpoints", "unset_variable", "missing_scheme",
            "typos", "keys_file_missing", "local_voice_missing"} <= names
    assert {"duplicate_key", "same_url_twice", "omni_reference_missing", "local_without_model_dir",
            "unset_variable_and_more"} <= names  # issue #22
    assert all(expected(p) for p in INVALID), "every invalid file names its errors"


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_check_config_and_serve_refuse_an_invalid_file_with_the_same_errors(path, env, listened, capsys):
    env(path)
    code, errors, _ = run(capsys, "check-config", str(path))
    assert code == 1
    assert errors == expected(path)  # exactly these: each once, with file:line, no follow-on errors

    code, serve_errors, _ = run(capsys, "serve", "--config", str(path))
    assert code == 1 and not listened
    assert serve_errors == errors


SHIPPED = [REPO / "examples" / "speech-router.yaml", REPO / "deploy" / "compose" / "router" / "config.yaml"]


CONFIGMAP = REPO / "deploy" / "kubernetes" / "configmap.yaml"


def on_this_host(path: Path, tmp_path: Path) -> Path:
    """``path`` as on the host it is deployed to: the reference files it names exist (check-config reads them)."""
    text = with_reference_files(path.read_text(), tmp_path)
    if text == path.read_text():
        return path
    copy = tmp_path / path.name
    copy.write_text(text)
    return copy


def configmap_config(tmp_path: Path) -> Path:
    configmap = yaml.safe_load(CONFIGMAP.read_text())
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    return path


@pytest.mark.parametrize("name", ["example", "compose", "configmap", "configmap-file"])
def test_check_config_and_serve_accept_the_shipped_configs(name, tmp_path, env, listened, capsys, monkeypatch):
    """With the variables their deployments set (the example's hosted key, the Deployment's client keys).
    ``configmap-file``: the ConfigMap manifest itself, as docs/deploy.md tells users to check it."""
    monkeypatch.setenv("HOSTED_TTS_API_KEY", "sk-test")
    monkeypatch.setenv("SPEECH_ROUTER_API_KEYS", "web=test-key")
    path = {"configmap": configmap_config(tmp_path), "configmap-file": CONFIGMAP}.get(name) \
        or on_this_host(SHIPPED[["example", "compose"].index(name)], tmp_path)
    code, errors, out = run(capsys, "check-config", str(path))
    assert code == 0, errors
    assert f"{path}: OK:" in out
    assert cli.main(["serve", "--config", str(path)]) == 0
    assert len(listened) == 1 and listened[0]["app"].state.settings.source == str(path)


def test_serve_and_check_config_need_the_same_environment(tmp_path, env, listened, capsys, monkeypatch):
    """The example names HOSTED_TTS_API_KEY: without it both refuse, at that line, and with it both accept."""
    example = on_this_host(SHIPPED[0], tmp_path)
    line = next(i for i, text in enumerate(example.read_text().splitlines(), 1) if "HOSTED_TTS_API_KEY" in text
                and text.strip().startswith("api_key_env"))
    monkeypatch.delenv("HOSTED_TTS_API_KEY", raising=False)
    code, errors, _ = run(capsys, "check-config", str(example))
    assert code == 1
    assert errors == [f"{example}:{line}: pools.hosted.api_key_env: environment variable HOSTED_TTS_API_KEY is not "
                      "set (the key sent to this pool's endpoints)"]
    assert cli.main(["serve", "--config", str(example)]) == 1 and not listened


def test_an_error_in_a_configmap_is_reported_at_the_configmaps_line(tmp_path, env, capsys):
    """The user edits the ConfigMap: its lines are the ones to point at, not the embedded file's."""
    text = CONFIGMAP.read_text()
    broken = text.replace("type: index-tts-vllm", "type: index-tts-vlm", 1)
    path = tmp_path / "configmap.yaml"
    path.write_text(broken)
    line = next(i for i, t in enumerate(broken.splitlines(), 1) if "index-tts-vlm" in t)
    code, errors, _ = run(capsys, "check-config", str(path))
    assert code == 1
    assert errors == [f"{path}:{line}: pools.gpu.type: unknown backend type 'index-tts-vlm' (did you mean "
                      "'index-tts-vllm'?)"]
    path.write_text(text.replace("config.yaml: |", "router.yaml: |"))
    code, errors, _ = run(capsys, "check-config", str(path))
    assert code == 1 and errors == [f"{path}: a ConfigMap without data.config.yaml, which holds the router's "
                                    "config (its data keys: router.yaml)"]


def test_check_config_counts_the_endpoints_serve_builds(tmp_path, env, capsys):
    """One endpoint per local GPU device, as serve makes them (it said 1 for two devices)."""
    path = tmp_path / "local.yaml"
    path.write_text("pools:\n  local:\n    type: indextts2-local\n    model_dir: /opt/ckpt\n"
                    "    devices: [cuda:0, cuda:1]\n  cpu:\n    type: espeak\nmodels:\n  indextts2: [local, cpu]\n")
    code, _, out = run(capsys, "check-config", str(path))
    assert code == 0
    assert "OK: 2 pools, 3 endpoints" in out
