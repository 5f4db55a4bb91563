"""Every code block in README.md runs as written, so README cannot drift from what the router does.

Each block is preceded by ``<!-- readme-test: KIND -->``, which says how it is checked here; a block without
one fails ``test_every_block_says_how_it_is_tested``. The kinds:

- ``serve NAME``: a command that starts a router. The part after its last ``&&`` runs as written through
  ``sh``, plus ``--port`` (a free one: 8000 may be taken) and ``--host 127.0.0.1`` unless it names a host.
  What comes before (the Quickstart's venv and ``pip install``) is not repeated: the suite runs in the
  environment those steps built, and ``.ci/run`` runs them on a clean clone. GPU node URLs in it become
  emulated index-tts-vllm nodes on loopback. The routers: ``embedded`` (no config at all), ``keys``,
  ``fleet`` (``TTS_REMOTE_URL``), ``jobs`` (no config, long-form jobs on: its ``$HOME/...`` directory becomes a
  temporary one).
- ``run NAME``: a curl or Python (OpenAI SDK, or the standard library) block, run against that router with
  ``localhost:8000`` changed to its address, in an empty directory. It must exit 0, and every file it writes must
  be audio (curl writes an error body to ``-o FILE`` too, so the file is checked, not only the exit code). A
  shell block starts with curl, or with a variable set from curl's answer (``id=$(curl ...``).
- ``ci``: the test command; ``.ci/run`` must run exactly it (it is what runs this test).
- ``config``: a whole config file; ``check-config``'s checks (those ``serve`` runs) accept it, on a host that has
  the reference files it names (made for the test).
- ``pools``: a ``pools:`` fragment; accepted with a model routed to its pools.
- ``entry-point``, ``plugin``: the plugin example's TOML names the entry-point group the router loads, and its
  Python registers a backend type whose options are validated.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from speech_router.cli import prepare
from speech_router.config.loader import settings_from_dict
from speech_router.errors import ConfigError
from speech_router.plugins.manager import ENTRYPOINT_GROUP, backend_registry, create_plugin_manager

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
KINDS = re.compile(r"(serve|run) (embedded|keys|fleet|jobs)|ci|config|pools|entry-point|plugin")
#: the jobs router's directory as README writes it (replaced by a temporary one here)
JOBS_DIR = "$HOME/speech-router-jobs"
#: what the Quickstart's first command does before it serves, and nothing else
QUICKSTART_SETUP = "python3 -m venv .venv && . .venv/bin/activate && python3 -m pip install . && "
#: variables that would change which config or keys a started router uses
ROUTER_VARIABLES = ("SPEECH_ROUTER_CONFIG", "TTS_REMOTE_URL", "SPEECH_ROUTER_API_KEYS", "SPEECH_ROUTER_ADMIN_KEY",
                    "TTS_VOICE_DIR", "SPEECH_ROUTER_JOBS_DIR")


@dataclass(frozen=True)
class Block:
    line: int
    kind: str | None
    lang: str
    body: str

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.kind})"


FENCE = re.compile(r"^(?:<!-- readme-test: (?P<kind>[^>]*?) -->\n)?```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$",
                   flags=re.MULTILINE | re.DOTALL)


def blocks(path: Path = README) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start("lang")) + 1
        out.append(Block(line, m.group("kind"), m.group("lang"), m.group("body")))
    return out


def of_kind(kind: str) -> list[Block]:
    return [b for b in blocks() if b.kind == kind]


def one_of_kind(kind: str) -> Block:
    (block,) = of_kind(kind)
    return block


def test_every_block_says_how_it_is_tested():
    found = blocks()
    fences = [line for line in README.read_text().splitlines() if line.startswith("```")]
    assert len(found) >= 12 and 2 * len(found) == len(fences), "every fence belongs to a block found here"
    untested = [str(b) for b in found if b.kind is None or not KINDS.fullmatch(b.kind)]
    assert not untested, f"blocks without a known <!-- readme-test: KIND --> line: {untested}"


# --- the Quickstart's set-up ----------------------------------------------------------------------------------


def command(block: Block) -> str:
    """A shell block as one command line (backslash continuations joined)."""
    return re.sub(r"\\\n\s*", "", block.body).strip()


def test_the_quickstart_installs_into_a_venv_and_serves():
    serve = command(one_of_kind("serve embedded"))
    assert serve.startswith(QUICKSTART_SETUP), serve
    assert serve.removeprefix(QUICKSTART_SETUP) == "speech-router serve"


def test_ci_runs_the_readme_test_command():
    readme_command = command(one_of_kind("ci"))
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert readme_command in ci, ".ci/run must run README's test command verbatim"
    assert readme_command.split(" && ")[:2] == QUICKSTART_SETUP.split(" && ")[:2], "the same venv as serving"


# --- routers started by README's serve blocks ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Started:
    url: str
    proc: subprocess.Popen[bytes]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ROUTER_VARIABLES}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # this venv's speech-router
    return {**env, **extra}


def start(block: Block, replace: dict[str, str] | None = None) -> Started:
    line = command(block).split(" && ")[-1]
    for old, new in (replace or {}).items():
        assert old in line, (old, line)
        line = line.replace(old, new)
    port = free_port()
    args = f" --port {port}" + ("" if "--host" in line else " --host 127.0.0.1")
    proc = subprocess.Popen(["sh", "-c", line + args], env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1):
                return Started(url, proc)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc, close=False)
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise AssertionError(f"{block}: `{line}` did not start:\n{out}") from None
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes], close: bool = True) -> None:
    """The shell and the router it started (their own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.stdout and close:
        proc.stdout.close()


@pytest.fixture(scope="module")
def routers() -> Iterator[dict[str, Any]]:
    """Each router is started on first use, by its README block, and all stop at the module's end."""
    from speech_router.emulator.index_tts_vllm import EmulatorConfig
    from tests.conftest import Node

    started: dict[str, Started] = {}
    nodes: list[Node] = []
    jobs_dir = tempfile.mkdtemp(prefix="readme-jobs-")

    def get(name: str) -> Started:
        if name not in started:
            block = one_of_kind(f"serve {name}")
            replace = {}
            if name == "fleet":  # its GPU node URLs become emulated nodes
                for url in re.findall(r"http://[\w.-]+:6006", command(block)):
                    node = Node(EmulatorConfig(name=url.split("//")[1].split(":")[0]))
                    node.server.start()
                    nodes.append(node)
                    replace[url] = node.url
            if name == "jobs":
                replace[JOBS_DIR] = jobs_dir
            started[name] = start(block, replace)
        return started[name]

    try:
        yield get  # type: ignore[misc]
    finally:
        for router in started.values():
            stop(router.proc)
        for node in nodes:
            node.server.stop()
        shutil.rmtree(jobs_dir, ignore_errors=True)


# --- blocks run against them ------------------------------------------------------------------------------------

RUN_BLOCKS = [b for b in blocks() if b.kind and b.kind.startswith("run ")]
AUDIO_MAGIC = {".mp3": (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"), ".wav": (b"RIFF",), ".flac": (b"fLaC",),
               ".opus": (b"OggS",), ".aac": (b"\xff\xf1", b"\xff\xf9")}


def is_audio(path: Path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(AUDIO_MAGIC.get(path.suffix, (b"",)))


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[f"line{b.line}-{b.kind.split()[1]}" for b in RUN_BLOCKS])
def test_readme_block_runs_against_its_router(block: Block, routers, tmp_path):
    router = routers(block.kind.split()[1])
    address = router.url.removeprefix("http://")
    assert "localhost:8000" in block.body, block
    code = block.body.replace("localhost:8000", address)
    if block.lang == "python":
        argv = [sys.executable, "-c", code]
    else:
        assert block.lang == "sh" and re.match(r"(\w+=\$\()?curl$", shlex.split(command(block))[0]), block
        if not shutil.which("curl"):
            pytest.skip("curl is not installed")
        argv = ["sh", "-c", code]
    done = subprocess.run(argv, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{block}:\n{done.stdout}\n{done.stderr}"
    written = sorted(tmp_path.iterdir())
    assert written, f"{block} wrote no file"
    for path in written:
        assert is_audio(path), f"{block} wrote {path.name}, which is not audio: {path.read_bytes()[:200]!r}"


def wav_seconds(data: bytes) -> float:
    """A mono 16-bit WAV's length from its bytes (a streamed WAV's header says "unknown length")."""
    rate = int.from_bytes(data[24:28], "little")
    return (len(data) - data.index(b"data") - 8) / 2 / rate


def test_the_sdk_examples_chinese_text_is_chinese_speech(routers, tmp_path):
    """The SDK example sends Chinese text with voice ``alloy`` (espeak ``en-us`` on the embedded engine): its
    hello.wav is as long as the known-good Mandarin voice (``mandarin``: espeak ``cmn``) makes that text, not
    the English voice's "Chinese letter" for each character (about 2.4 times as long)."""
    (block,) = [b for b in RUN_BLOCKS if b.lang == "python" and "你好" in b.body]
    router = routers("embedded")
    code = block.body.replace("localhost:8000", router.url.removeprefix("http://"))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = re.search(r'input="([^"]*[\u4e00-\u9fff][^"]*)"', block.body).group(1)  # type: ignore[union-attr]
    body = json.dumps({"model": "indextts2", "voice": "mandarin", "input": text, "response_format": "wav"}).encode()
    request = urllib.request.Request(router.url + "/v1/audio/speech", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        mandarin = wav_seconds(resp.read())
    assert wav_seconds((tmp_path / "hello.wav").read_bytes()) == pytest.approx(mandarin, rel=0.02)


def test_the_keyed_router_refuses_a_request_without_the_key(routers):
    """README says: without a key that request gets 401."""
    router = routers("keys")
    body = b'{"model":"tts-1","input":"hello","voice":"alloy"}'
    request = urllib.request.Request(router.url + "/v1/audio/speech", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    info.value.close()
    assert info.value.code == 401


def test_the_fleet_router_routes_to_both_nodes(routers):
    """The TTS_REMOTE_URL one-liner made one pool of the nodes it names, both healthy."""
    with urllib.request.urlopen(routers("fleet").url + "/health", timeout=10) as resp:
        health = json.load(resp)
    endpoints = [e for e in health["endpoints"] if e["pool"] == "remote"]
    assert len(endpoints) == 2 and all(e["healthy"] for e in endpoints)


# --- config, plugin -------------------------------------------------------------------------------------------------


def test_the_config_blocks_pass_every_check_serve_runs(tmp_path, monkeypatch):
    for name in ROUTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert of_kind("config")
    from tests.integration.omni import with_reference_files

    for block in of_kind("config"):
        path = tmp_path / "speech-router.yaml"
        path.write_text(with_reference_files(block.body, tmp_path))  # the voice files it names exist on its host
        try:
            _, settings, _ = prepare(str(path))
        except ConfigError as exc:
            raise AssertionError(f"{block}: {exc}") from None
        assert settings.models and settings.pools


def test_the_pools_fragments_are_valid_pools(tmp_path, monkeypatch):
    for name in ROUTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for block in of_kind("pools"):
        data = yaml.safe_load(block.body)
        data["models"] = {"indextts2": list(data["pools"])}
        path = tmp_path / "pools.yaml"
        path.write_text(yaml.safe_dump(data))
        try:
            prepare(str(path))
        except ConfigError as exc:
            raise AssertionError(f"{block}: {exc}") from None


def test_the_entry_point_block_names_the_group_the_router_loads():
    declared = tomllib.loads(one_of_kind("entry-point").body)
    assert list(declared["project"]["entry-points"]) == [ENTRYPOINT_GROUP]


def test_the_plugin_block_registers_a_backend_type_with_validated_options():
    module = types.ModuleType("speech_router_mytts")
    exec(compile(one_of_kind("plugin").body, "README.md plugin block", "exec"), module.__dict__)  # noqa: S102
    pm = create_plugin_manager(load_entrypoints=False, plugins=[module])
    registry = backend_registry(pm)
    (kind,) = [name for name in registry.types if name == module.MyBackend.type]
    config = {"pools": {"mine": {"type": kind, "quality": 7, "endpoints": [{"url": "http://tts-host:9000"}]}},
              "models": {"m": ["mine"]},
              "voices": {"v": {"mytts_voice": "x"}}}
    assert settings_from_dict(config, registry=registry, env={}).pools["mine"].options == {"quality": 7}
    config["pools"]["mine"]["qualty"] = 1
    with pytest.raises(ConfigError, match="did you mean 'quality'"):
        settings_from_dict(config, registry=registry, env={})
