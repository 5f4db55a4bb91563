"""Stand-in for ``indextts.infer_v2.IndexTTS2``: the same constructor and ``infer`` signature, no model.

It makes a tone (pitch from the speaker path, length from the text) for each sentence, and yields
one waveform per sentence and a silence after it when ``stream_return=True``, as the real engine
does: float "tensors" of shape (1, n) holding int16-range values. It never imports torch.

Knobs, for tests:
- text containing ``OOM`` raises ``OutOfMemoryError`` ("CUDA out of memory...") at that sentence;
  ``FAIL`` raises a RuntimeError; ``HANG`` sleeps forever; ``CRASH`` exits the process at once;
  ``GATE`` waits, before that sentence, until the file named by ``STANDIN_GATE`` exists.
- ``STANDIN_FAIL_LOAD=1``: the constructor raises FileNotFoundError, as with missing weights;
  ``STANDIN_LOAD_HANG=1``: it never returns.
- ``STANDIN_LOG=path``: every constructor and ``infer`` call is appended there as a JSON line.
Like the real constructor, it needs ``cfg_path`` to exist.
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
import time
import zlib

import numpy as np

RATE = 22_050
SECONDS_PER_CHAR = 0.02
GATE_TIMEOUT_S = 30.0
OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.55 GiB"


class OutOfMemoryError(RuntimeError):
    """Named and placed like torch.OutOfMemoryError."""


OutOfMemoryError.__module__ = "torch"


class Tensor:
    """Just enough of torch.Tensor for the worker's duck typing: detach, is_floating_point, float, cpu, numpy."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def detach(self) -> Tensor:
        return self

    def cpu(self) -> Tensor:
        return self

    def float(self) -> Tensor:
        return Tensor(self.data.astype(np.float32))

    def is_floating_point(self) -> bool:
        return bool(np.issubdtype(self.data.dtype, np.floating))

    def numpy(self) -> np.ndarray:
        return self.data


def _log(event: str, **fields: object) -> None:
    path = os.environ.get("STANDIN_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, "pid": os.getpid(), **fields}, default=str) + "\n")


class IndexTTS2:
    def __init__(self, cfg_path="checkpoints/config.yaml", model_dir="checkpoints", use_fp16=False, device=None,
                 use_cuda_kernel=None, use_deepspeed=False, use_accel=False, use_torch_compile=False,
                 use_qwen_emo=True, aux_paths=None):
        _log("init", cfg_path=cfg_path, model_dir=model_dir, use_fp16=use_fp16, device=device,
             use_cuda_kernel=use_cuda_kernel, use_torch_compile=use_torch_compile, cwd=os.getcwd())
        _load(cfg_path, model_dir)
        self.device = device or "cpu"

    def infer(self, spk_audio_prompt, text, output_path, emo_audio_prompt=None, emo_alpha=1.0, emo_vector=None,
              use_emo_text=False, emo_text=None, use_random=False, interval_silence=200, verbose=False,
              max_text_tokens_per_segment=120, stream_return=False, more_segment_before=0, **generation_kwargs):
        _log("infer", spk_audio_prompt=spk_audio_prompt, text=text, output_path=output_path,
             emo_audio_prompt=emo_audio_prompt, emo_alpha=emo_alpha, emo_vector=emo_vector,
             use_emo_text=use_emo_text, emo_text=emo_text, use_random=use_random,
             max_text_tokens_per_segment=max_text_tokens_per_segment, stream_return=stream_return,
             generation_kwargs=generation_kwargs)
        gen = self._generate(spk_audio_prompt, text, interval_silence)
        if stream_return:
            return gen
        wav = np.concatenate([t.data for t in gen], axis=1)
        return RATE, wav.astype(np.int16).T

    def _generate(self, spk_audio_prompt, text, interval_silence, duration_factor=1.0):
        hz = 200 + zlib.crc32(str(spk_audio_prompt).encode()) % 600
        sentences = [s for s in re.split(r"(?<=[.!?。！？])\s*", text) if s.strip()]
        for i, sentence in enumerate(sentences):
            _knobs(sentence)
            n = round(max(0.1, SECONDS_PER_CHAR * len(sentence)) * RATE * duration_factor)
            t = np.arange(n) / RATE
            wav = np.clip(32767 * 0.3 * np.sin(2 * np.pi * hz * t), -32767.0, 32767.0).astype(np.float32)
            _log("segment", index=i, text=sentence, samples=n)
            yield Tensor(wav[np.newaxis, :])
            yield Tensor(np.zeros((1, int(RATE * interval_silence / 1000)), dtype=np.float32))


def _load(cfg_path: str, model_dir: str) -> None:
    """What loading does to the stand-in: the load knobs, and a missing config fails as the real one does."""
    if os.environ.get("STANDIN_LOAD_HANG") == "1":
        threading.Event().wait()
    if os.environ.get("STANDIN_FAIL_LOAD") == "1":
        path = os.path.join(model_dir, "gpt.pth")
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cfg_path)


def _knobs(sentence: str) -> None:
    if "GATE" in sentence:
        gate = os.environ["STANDIN_GATE"]
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"stand-in gate {gate} was never opened")
            time.sleep(0.01)
    if "OOM" in sentence:
        raise OutOfMemoryError(OOM_MESSAGE)
    if "FAIL" in sentence:
        raise RuntimeError("stand-in failure")
    if "CRASH" in sentence:
        os._exit(70)
    if "HANG" in sentence:
        threading.Event().wait()
