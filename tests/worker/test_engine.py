"""The worker's engine adapter, in process: request mapping, PCM conversion, OOM handling, index-tts versions."""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import pytest

from speech_router.worker.engine import EngineConfig, IndexTts2Engine, PcmConverter, empty_cache, gpu_memory, is_oom
from speech_router.worker.request import RequestError, infer_kwargs
from tests.worker.conftest import STANDIN, Host


@pytest.fixture
def files(host: Host) -> Host:
    return host


def test_mapping_of_each_emo_control_method(files: Host) -> None:
    base = {"text": "Hi.", "spk_audio_path": files.alloy}
    assert infer_kwargs(base) == {"spk_audio_prompt": files.alloy, "text": "Hi."}
    assert infer_kwargs({**base, "emo_control_method": 0, "emo_ref_path": "/ignored", "emo_weight": 0.3}) == \
        {"spk_audio_prompt": files.alloy, "text": "Hi."}
    assert infer_kwargs({**base, "emo_control_method": 1, "emo_ref_path": files.calm, "emo_weight": 0.6}) == \
        {"spk_audio_prompt": files.alloy, "text": "Hi.", "emo_audio_prompt": files.calm, "emo_alpha": 0.6}
    vec = [0, 0, 0.55, 0, 0, 0, 0, 0]
    assert infer_kwargs({**base, "emo_control_method": 2, "emo_vec": vec}) == \
        {"spk_audio_prompt": files.alloy, "text": "Hi.", "emo_vector": [0.0, 0.0, 0.55, 0.0, 0.0, 0.0, 0.0, 0.0]}
    assert infer_kwargs({**base, "emo_control_method": 3, "emo_text": "so sad"}) == \
        {"spk_audio_prompt": files.alloy, "text": "Hi.", "use_emo_text": True, "emo_text": "so sad"}
    assert infer_kwargs({**base, "emo_control_method": 3})["emo_text"] is None  # the engine reads the text itself
    assert infer_kwargs({**base, "emo_random": True, "max_text_tokens_per_sentence": 80}) == \
        {"spk_audio_prompt": files.alloy, "text": "Hi.", "use_random": True, "max_text_tokens_per_segment": 80}


@pytest.mark.parametrize("change, message", [
    ({"text": ""}, "'text'"),
    ({"spk_audio_path": None}, "'spk_audio_path' is required"),
    ({"spk_audio_path": "/no/such/voice.wav"}, "no such file"),
    ({"emo_control_method": 4}, "'emo_control_method'"),
    ({"emo_control_method": True}, "'emo_control_method'"),
    ({"emo_control_method": 1}, "'emo_ref_path' is required"),
    ({"emo_control_method": 2, "emo_vec": [0.5] * 7}, "list of 8"),
    ({"emo_control_method": 2, "emo_vec": [0.5, 0.5, 0.6, 0, 0, 0, 0, 0]}, "at most 1.5"),
    ({"emo_random": "yes"}, "'emo_random'"),
    ({"max_text_tokens_per_sentence": 0}, "positive integer"),
])
def test_bad_bodies_are_request_errors(files: Host, change: dict[str, Any], message: str) -> None:
    with pytest.raises(RequestError, match=message):
        infer_kwargs({"text": "Hi.", "spk_audio_path": files.alloy, **change})


class FakeTensor:
    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def detach(self) -> FakeTensor:
        return self

    def cpu(self) -> FakeTensor:
        return self

    def float(self) -> FakeTensor:
        return FakeTensor(self.data.astype(np.float32))

    def is_floating_point(self) -> bool:
        return bool(np.issubdtype(self.data.dtype, np.floating))

    def numpy(self) -> np.ndarray:
        return self.data


def test_pcm_conversion_handles_tensors_unit_floats_int16_and_shapes() -> None:
    # what IndexTTS2 yields: a float tensor (1, n) of int16-range values
    out = PcmConverter().to_int16(FakeTensor(np.array([[0.0, 16000.4, -32767.0, 40000.0]], dtype=np.float32)))
    assert out.dtype == np.int16 and list(out) == [0, 16000, -32767, 32767]
    half = PcmConverter().to_int16(FakeTensor(np.array([[1000.0, -2000.0]], dtype=np.float16)))  # .float() first
    assert list(half) == [1000, -2000]
    assert list(PcmConverter().to_int16(np.array([0.5, -1.0, 1.0]))) == [16384, -32767, 32767]
    assert list(PcmConverter().to_int16(np.array([[1], [-2]], dtype=np.int16))) == [1, -2]
    assert list(PcmConverter().to_int16(np.array([70000, -70000], dtype=np.int32))) == [32767, -32768]
    assert list(PcmConverter().to_int16(np.array([np.nan, 0.25]))) == [0, 8192]
    # once a stream has shown int16-range values, a quiet chunk is not scaled up
    conv = PcmConverter()
    conv.to_int16(np.array([1000.0]))
    assert list(conv.to_int16(np.array([0.5]))) == [0]
    assert PcmConverter()(np.array([1.0, -1.0])) == np.array([32767, -32767], dtype="<i2").tobytes()


def test_oom_detection_and_empty_cache_with_a_fake_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class OutOfMemoryError(RuntimeError):
        pass

    cuda = types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError, is_available=lambda: True,
                                 empty_cache=lambda: calls.append("empty_cache"),
                                 mem_get_info=lambda device: (3 * 2**30, 8 * 2**30))
    fake = types.SimpleNamespace(cuda=cuda, OutOfMemoryError=OutOfMemoryError, device=lambda name: name)
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert is_oom(OutOfMemoryError("no memory"))
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    try:
        try:
            raise OutOfMemoryError("inner")
        except OutOfMemoryError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as exc:
        assert is_oom(exc)
    assert not is_oom(RuntimeError("something else"))
    assert empty_cache() and calls == ["empty_cache"]
    assert gpu_memory("cuda:0") == (5 * 2**30, 8 * 2**30)
    assert gpu_memory("cpu") is None


def test_without_torch_nothing_breaks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert is_oom(RuntimeError("CUDA out of memory."))
    assert not empty_cache()
    assert gpu_memory("cuda:0") is None


class OldIndexTts2:
    """An index-tts before streaming: segment size still called max_text_tokens_per_sentence."""

    def __init__(self, cfg_path: str = "", model_dir: str = "", use_fp16: bool = False, device: str | None = None,
                 use_cuda_kernel: bool | None = None) -> None:
        self.init = {"cfg_path": cfg_path, "model_dir": model_dir, "use_fp16": use_fp16, "device": device,
                     "use_cuda_kernel": use_cuda_kernel}
        self.calls: list[dict[str, Any]] = []

    def infer(self, spk_audio_prompt: str, text: str, output_path: str | None, max_text_tokens_per_sentence: int = 120,
              **kwargs: Any) -> tuple[int, np.ndarray]:
        self.calls.append({"output_path": output_path, "max_text_tokens_per_sentence": max_text_tokens_per_sentence,
                           **kwargs})
        return 22050, np.array([[1], [2], [3]], dtype=np.int16)


def test_older_index_tts_is_driven_by_its_own_signature(monkeypatch: pytest.MonkeyPatch, files: Host) -> None:
    package = types.ModuleType("indextts")
    module = types.ModuleType("indextts.infer_v2")
    module.IndexTTS2 = OldIndexTts2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "indextts", package)
    monkeypatch.setitem(sys.modules, "indextts.infer_v2", module)
    engine = IndexTts2Engine(EngineConfig(model_dir=str(files.model_dir), device="cuda:1", fp16=True,
                                          use_torch_compile=True))
    engine.load()  # use_torch_compile is dropped (with a warning): this version has no such argument
    assert engine.tts.init == {"cfg_path": str(files.model_dir / "config.yaml"), "model_dir": str(files.model_dir),
                               "use_fp16": True, "device": "cuda:1", "use_cuda_kernel": False}
    chunks = list(engine.stream({"spk_audio_prompt": files.alloy, "text": "Hi.", "max_text_tokens_per_segment": 60}))
    assert chunks == [np.array([1, 2, 3], dtype="<i2").tobytes()]
    assert engine.tts.calls == [{"output_path": None, "max_text_tokens_per_sentence": 60}]


def test_stream_yields_each_segment_of_the_standin(monkeypatch: pytest.MonkeyPatch, files: Host) -> None:
    monkeypatch.syspath_prepend(str(STANDIN))
    for name in ("indextts", "indextts.infer_v2"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    engine = IndexTts2Engine(EngineConfig(model_dir=str(files.model_dir), device="cpu", warmup_text="Warm up."))
    try:
        engine.load()
        engine.warm_up()  # a synthetic reference, written and removed again
        chunks = list(engine.stream({"spk_audio_prompt": files.alloy, "text": "One. Two two."}))
    finally:
        for name in ("indextts", "indextts.infer_v2"):
            sys.modules.pop(name, None)
    assert len(chunks) == 4  # speech, silence, speech, silence
    speech = np.frombuffer(chunks[0], dtype="<i2")
    assert 0.25 * 32767 < np.abs(speech).max() <= 32767 and not any(np.frombuffer(chunks[1], dtype="<i2"))
    assert "torch" not in sys.modules or sys.modules["torch"].__name__ == "torch"
