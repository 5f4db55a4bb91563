"""A stand-in for index-tts-vllm's `IndexTTS2` engine with the same `infer()` signature.

The server code calls it exactly as the real server calls the real engine, so any exception it
raises (a missing reference file, CUDA OOM) reaches the client as the same traceback-bearing 500.
"""

from __future__ import annotations

import errno
import os
import posixpath
from typing import Any

import numpy as np

from speech_router.emulator import audio
from speech_router.emulator.state import EmulatorState

NODE_ROOT = "/root/index-tts-vllm"  # where a real node's api_server.py lives; speaker.json paths are relative to it

OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.55 GiB of which "
    "1.12 GiB is free. Process 4242 has 22.42 GiB memory in use. Of the allocated memory 20.61 GiB is "
    "allocated by PyTorch, and 1.35 GiB is reserved by PyTorch but unallocated. If reserved but unallocated "
    "memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  "
    "See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"
)


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.OutOfMemoryError, so the traceback's last line reads like a real node's."""


OutOfMemoryError.__module__ = "torch"


class FakeIndexTTS2:
    """Knob-driven engine: checks reference paths, waits for a slot and the latency, returns a tone."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"FakeIndexTTS2(node={self.state.config.name!r})"

    async def infer(
        self,
        spk_audio_prompt: Any,
        text: Any,
        output_path: Any,
        emo_audio_prompt: Any = None,
        emo_alpha: Any = 1.0,
        emo_vector: Any = None,
        use_emo_text: Any = False,
        emo_text: Any = None,
        use_random: Any = False,
        interval_silence: Any = 200,
        verbose: Any = False,
        max_text_tokens_per_sentence: Any = 120,
        **generation_kwargs: Any,
    ) -> tuple[int, np.ndarray]:
        """Mirror `indextts.infer_vllm_v2.IndexTTS2.infer(output_path=None)`: `(22050, int16 samples)`."""
        if emo_vector is not None or use_emo_text:
            emo_audio_prompt = None
        if emo_audio_prompt is None:
            emo_audio_prompt = spk_audio_prompt
        self._load_reference(spk_audio_prompt)  # librosa.load(spk_audio_prompt) on the real node
        if emo_audio_prompt != spk_audio_prompt:
            self._load_reference(emo_audio_prompt)
        config = self.state.config
        await self.state.hung()
        async with self.state.slot():
            await self.state.pause(config.latency_s(str(text)))
            if config.fails(str(text)):
                raise OutOfMemoryError(OOM_MESSAGE)
            return audio.INDEX_TTS_RATE, audio.render(str(text), os.fspath(spk_audio_prompt), audio.INDEX_TTS_RATE)

    def _load_reference(self, path: Any) -> None:
        path = os.fspath(path)  # None or a number fails here just as it does in librosa.load
        known: set[str] | None = getattr(self.state.config, "known_paths", None)
        if (known is None and "missing" not in path) or (known is not None and path in known):
            return
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def node_path(path: str) -> str:
    """A speaker.json entry as the real v1 server resolves it: relative to the server's directory."""
    return posixpath.join(NODE_ROOT, path)
