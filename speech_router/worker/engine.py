"""The IndexTTS2 engine inside a worker process: load it once, map requests, stream segments as PCM.

Only the worker process imports ``indextts`` (github index-tts/index-tts): ``indextts/infer_v2.py``
for IndexTTS-2, ``indextts/infer_v2_5.py`` for IndexTTS-2.5 (chosen by ``version``, or detected from
the checkpoint by ``checkpoint.detect``), and torch comes in with it; this module never imports torch.
2.5's constructor takes ``use_bf16`` where 2.0 takes ``use_fp16``, and its ``infer`` takes ``lang``
(required), ``duration_factor`` (native speed) and ``text_normalization``. It finds torch in
``sys.modules`` when the engine has loaded it, for CUDA memory figures, OOM detection and
``empty_cache()``.

``IndexTTS2.infer(..., stream_return=True)`` is a generator that yields one waveform per text
segment (then a short silence): a float tensor of shape ``(1, n)`` holding int16-range values in
the official code. ``PcmConverter`` turns each into mono int16 PCM, whether it holds int16-range
floats, floats in [-1, 1] or integers.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..text.language import guess_lang
from . import DEFAULT_WARMUP_TEXT
from .checkpoint import Version, detect
from .request import V25_KEYS, RequestError

log = logging.getLogger(__name__)

SAMPLE_RATE = 22_050  # IndexTTS2's output rate (hard-coded in infer_v2.py)
OOM_MARKER = "CUDA out of memory"


@dataclass
class EngineConfig:
    """How to build ``IndexTTS2``; the worker's command line fills it."""

    model_dir: str
    cfg_path: str | None = None
    device: str = "cuda:0"
    #: "2", "2.5", or "auto": detected from the checkpoint
    version: str = "auto"
    fp16: bool = False  # 2.0's half precision (use_fp16); on 2.5 it means bf16
    bf16: bool = False  # 2.5's half precision (use_bf16)
    use_cuda_kernel: bool = False
    use_torch_compile: bool = False
    #: more constructor arguments, passed as they are (``use_deepspeed``, ``use_accel``...)
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    warmup_text: str = DEFAULT_WARMUP_TEXT
    #: a speaker reference for the warm-up; default: a synthetic one written to a temporary file
    warmup_voice: str | None = None

    @property
    def config_path(self) -> str:
        return self.cfg_path or os.path.join(self.model_dir, "config.yaml")


class PcmConverter:
    """Waveforms as the engine yields them -> mono little-endian int16 bytes, for one stream.

    Floats whose peak is above 1.0 are taken as int16-range (what IndexTTS2 yields); floats within
    [-1, 1] as unit range, unless an earlier chunk of the same stream was int16-range (then a quiet
    chunk stays quiet instead of being scaled up).
    """

    def __init__(self) -> None:
        self.int_range = False

    def __call__(self, wave_: Any) -> bytes:
        return self.to_int16(wave_).astype("<i2", copy=False).tobytes()

    def to_int16(self, wave_: Any) -> np.ndarray:
        arr = _as_numpy(wave_)
        if arr.ndim > 1:
            arr = arr.reshape(-1) if min(arr.shape) == 1 else arr.mean(axis=int(np.argmin(arr.shape)))
        if arr.dtype == np.int16:
            return np.ascontiguousarray(arr)
        if np.issubdtype(arr.dtype, np.integer):
            clipped: np.ndarray = np.clip(arr, -32768, 32767)
            return clipped.astype(np.int16)
        arr = np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(np.max(np.abs(arr))) if arr.size else 0.0
        if peak > 1.0:
            self.int_range = True
        scale = 1.0 if self.int_range else 32767.0
        return np.clip(np.rint(arr * scale), -32768, 32767).astype(np.int16)


def _as_numpy(wave_: Any) -> np.ndarray:
    """A torch tensor (duck-typed, so torch is never imported here) or anything numpy takes."""
    if hasattr(wave_, "detach") and hasattr(wave_, "cpu"):
        wave_ = wave_.detach()
        if getattr(wave_, "is_floating_point", lambda: False)():
            wave_ = wave_.float()  # bf16/fp16 -> fp32: numpy has no bfloat16
        wave_ = wave_.cpu().numpy()
    return np.asarray(wave_)


def _torch() -> Any:
    return sys.modules.get("torch")


def is_oom(exc: BaseException) -> bool:
    """A CUDA out-of-memory error: torch's own class, or any error saying so (wrapped ones too)."""
    torch = _torch()
    types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                              getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if isinstance(t, type))
    seen: BaseException | None = exc
    for _ in range(5):  # the exception, then its causes
        if seen is None:
            return False
        if (types and isinstance(seen, types)) or OOM_MARKER in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def empty_cache() -> bool:
    """``torch.cuda.empty_cache()`` when torch and CUDA are there; returns whether it ran."""
    cuda = getattr(_torch(), "cuda", None)
    try:
        if cuda is not None and cuda.is_available():
            cuda.empty_cache()
            return True
    except Exception:  # best effort after an OOM
        log.exception("torch.cuda.empty_cache() failed")
    return False


def gpu_memory(device: str) -> tuple[int, int] | None:
    """(used, total) bytes on ``device`` from ``torch.cuda.mem_get_info``, or None without CUDA."""
    torch = _torch()
    if torch is None or not device.startswith("cuda"):
        return None
    try:
        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info(torch.device(device))
    except Exception:  # noqa: BLE001 - a figure for /health, never a failure
        return None
    return int(total - free), int(total)


def _accepted(func: Any, kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The keyword arguments ``func`` takes, and the names it does not (older index-tts versions)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return kwargs, []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs, []
    return {k: v for k, v in kwargs.items() if k in params}, [k for k in kwargs if k not in params]


class IndexTts2Engine:
    """One ``IndexTTS2`` on one device. ``load``, ``warm_up`` and ``stream`` run on one worker thread."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.tts: Any = None
        self._streams = True
        self._segment_arg: str | None = "max_text_tokens_per_segment"
        self._v25_args: set[str] = set()  # the IndexTTS-2.5 arguments the loaded engine's infer() takes
        if config.version in ("2", "2.5"):
            self.version: Version = "2.5" if config.version == "2.5" else "2"
            self.version_reason = "configured"
        else:
            self.version, self.version_reason = detect(config.model_dir, config.cfg_path)

    def __repr__(self) -> str:
        return f"IndexTts2Engine(model_dir={self.config.model_dir!r}, device={self.config.device!r})"

    def load(self) -> None:
        """Import index-tts and build the model (minutes on a GPU). Raises what the constructor raises."""
        c = self.config
        log.info("IndexTTS-%s (%s)", self.version, self.version_reason)
        wanted: dict[str, Any] = {"cfg_path": c.config_path, "model_dir": c.model_dir, "device": c.device,
                                  "use_cuda_kernel": c.use_cuda_kernel, "use_torch_compile": c.use_torch_compile}
        if self.version == "2.5":
            from indextts.infer_v2_5 import IndexTTS2  # the official package; imports torch

            # 2.5 loads its emotion-text model only when asked; OpenAI's `instructions` need it
            wanted.update(use_bf16=c.bf16 or c.fp16, use_qwen_emo=True)
        else:
            from indextts.infer_v2 import IndexTTS2

            wanted["use_fp16"] = c.fp16
        kwargs, unknown = _accepted(IndexTTS2.__init__, wanted)
        for name in unknown:
            if wanted[name]:
                log.warning("this index-tts version's IndexTTS2() has no %r; the option is ignored", name)
        self.attach(IndexTTS2(**{**kwargs, **c.engine_kwargs}))

    def attach(self, tts: Any) -> None:
        """Use ``tts``, reading from its ``infer`` signature whether it streams and how it names segment size."""
        params = inspect.signature(tts.infer).parameters
        self._streams = "stream_return" in params
        self._v25_args = {name for name in V25_KEYS if name in params}
        self._segment_arg = next((n for n in ("max_text_tokens_per_segment", "max_text_tokens_per_sentence")
                                  if n in params), None)
        self.tts = tts

    def warm_up(self) -> None:
        """One short synthesis so the first request does not pay for lazy initialisation."""
        if not self.config.warmup_text:
            return
        if self.config.warmup_voice:
            for _ in self.stream({"spk_audio_prompt": self.config.warmup_voice, "text": self.config.warmup_text}):
                pass
            return
        fd, path = tempfile.mkstemp(prefix="speech-router-warmup-", suffix=".wav")
        os.close(fd)
        try:
            write_reference(path)
            for _ in self.stream({"spk_audio_prompt": path, "text": self.config.warmup_text}):
                pass
        finally:
            os.unlink(path)

    def stream(self, kwargs: dict[str, Any]) -> Iterator[bytes]:
        """Run ``infer`` and yield each segment as int16 PCM bytes as soon as the engine yields it."""
        assert self.tts is not None, "the engine is not loaded"
        kwargs = self.checked(kwargs)
        tokens = kwargs.pop("max_text_tokens_per_segment", None)
        if tokens is not None and self._segment_arg is not None:
            kwargs[self._segment_arg] = tokens
        convert = PcmConverter()
        if not self._streams:  # index-tts before streaming: one (rate, samples) tuple
            result = self.tts.infer(output_path=None, **kwargs)
            if result is not None:
                yield convert(result[1])
            return
        gen = self.tts.infer(output_path=None, stream_return=True, **kwargs)
        try:
            for item in gen:
                if item is None:
                    continue
                pcm = convert(item)
                if pcm:
                    yield pcm
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()


    def checked(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` fitted to the loaded engine: 2.5's arguments only where ``infer`` takes them (``lang``
        guessed from the text when missing); ``RequestError`` for what this engine cannot do."""
        kwargs = dict(kwargs)
        if "lang" in self._v25_args:
            kwargs.setdefault("lang", guess_lang(str(kwargs.get("text", ""))))
        for name in V25_KEYS:
            if name in self._v25_args:
                continue
            value = kwargs.pop(name, None)  # an IndexTTS-2 engine takes none of them
            if name == "duration_factor" and value not in (None, 1.0):
                raise RequestError("speed needs IndexTTS-2.5; this worker runs IndexTTS-2")
        if kwargs.get("use_emo_text") and self.tts is not None and getattr(self.tts, "qwen_emo", True) is None:
            raise RequestError("emotion text needs the engine's emotion model (engine_kwargs use_qwen_emo: true)")
        return kwargs

    def describe(self) -> dict[str, Any]:
        """What ``/health`` shows of the engine: its IndexTTS version and why."""
        return {"model_version": self.version, "model_version_reason": self.version_reason}


def write_reference(path: str, seconds: float = 2.0) -> None:
    """A synthetic speaker reference for the warm-up: a voiced buzz with vibrato, enough to condition on."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    signal = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2
    samples = (0.25 * envelope * signal / np.max(np.abs(signal)) * 32767).astype("<i2")
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(samples.tobytes())
