"""Helpers for the vllm-omni tests: emulated nodes, a reference file, and a router config over them."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from speech_router.emulator import audio
from speech_router.emulator.serve import ServerHandle
from speech_router.emulator.vllm_omni import VllmOmniConfig, create_app
from speech_router.emulator.vllm_omni_media import reference_key
from tests.conftest import Node


class OmniNode(Node):
    """An emulated vllm-omni node on 127.0.0.1: knobs, request log, uploaded voices (``app.state.voices``)."""

    def __init__(self, config: VllmOmniConfig) -> None:  # not super().__init__: it would build an index-tts-vllm app
        self.config = config  # type: ignore[assignment]
        self.app = create_app(config)
        self.server = ServerHandle(self.app)

    @property
    def name(self) -> str:
        return self.url.removeprefix("http://")

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """Bodies of the speech requests this node got, as sent."""
        return [body for path, body in self.requests if path == "/v1/audio/speech"]


@pytest.fixture
def omni_nodes() -> Iterator[Callable[..., OmniNode]]:
    """Factory: ``omni_nodes(name="a", version="2.5")`` starts an emulated vllm-omni node; all stop at teardown."""
    with contextlib.ExitStack() as running:

        def start(**knobs: Any) -> OmniNode:
            node = OmniNode(VllmOmniConfig(**knobs))
            running.enter_context(node.server)  # started now, stopped when the test ends
            return node

        yield start


def reference_wav(path: Path, seconds: float = 2.0, hz: float = 180.0) -> bytes:
    """Write a speaker reference (a buzz) and return its bytes."""
    rate = 16000
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (np.sign(np.sin(2 * np.pi * hz * t)) * 6000).astype(np.int16), rate, format="WAV")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def with_reference_files(text: str, directory: Path) -> str:
    """A config's text as on the host it was written for: each ``ref_audio_file`` it names (read by the router
    and checked before serving) becomes a reference WAV made in ``directory``; lines stay where they were."""
    def made(match: re.Match[str]) -> str:
        path = directory / f"reference-{abs(hash(match.group(2)))}.wav"
        reference_wav(path)
        return match.group(1) + str(path)

    return re.sub(r"(ref_audio_file:\s*)([^\s,}#]+)", made, text)


def spoken_hz(reference: bytes) -> float:
    """The pitch an emulated node speaks with this reference file."""
    return float(audio.tone_hz(reference_key(reference)))


def data_url(reference: bytes) -> str:
    return "data:audio/wav;base64," + base64.b64encode(reference).decode()


def omni_config(*urls: str, voices: dict[str, dict[str, Any]], fanout: bool = False, **pool: Any) -> dict[str, Any]:
    """One vllm-omni pool over ``urls``; model ``indextts`` (and ``tts-1``); health checked often."""
    pool = {"health_check": {"interval": 0.2, "timeout": 1}, **pool}
    model: dict[str, Any] = {"pools": ["omni"]}
    if fanout:
        model["fanout"] = {"enabled": True, "threshold_chars": 60, "max_segment_chars": 40, "min_segment_chars": 10}
    return {"pools": {"omni": {"type": "vllm-omni", "endpoints": [{"url": u} for u in urls], **pool}},
            "models": {"indextts": model, "tts-1": ["omni"]}, "voices": voices}


def wav_seconds(data: bytes) -> tuple[int, float]:
    with sf.SoundFile(io.BytesIO(data)) as f:
        return f.samplerate, f.frames / f.samplerate


def sse_events(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in data.decode().splitlines() if line.startswith("data: ")]
