"""Uploaded voices without HTTP: checking a reference, the store by content hash, parameters, cache keys."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
import soundfile as sf

from speech_router.cache.key import cache_key
from speech_router.config.models import VoiceStoreConfig
from speech_router.errors import RequestInvalid
from speech_router.types import SynthesisRequest
from speech_router.voices import store as store_module
from speech_router.voices.audio import normalize
from speech_router.voices.params import is_router_voice, node_voice_name, voice_params
from speech_router.voices.store import VoiceRecord, VoiceStore


def wav(data: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def sine(seconds: float, rate: int, hz: float = 200.0) -> np.ndarray:
    return 0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)


def test_a_stereo_reference_is_mixed_down_and_a_high_rate_brought_to_48_khz():
    left, right = sine(2.0, 96_000), np.zeros(192_000)
    ref = normalize(wav(np.stack([left, right], axis=1), 96_000))
    info = sf.info(io.BytesIO(ref.wav))
    assert (info.channels, info.samplerate, info.subtype) == (1, 48_000, "PCM_16")
    assert ref.channels == 2 and ref.seconds == pytest.approx(2.0)
    mono, _ = sf.read(io.BytesIO(ref.wav))
    assert np.max(np.abs(mono)) == pytest.approx(0.15, abs=0.01)  # the mean of the two channels


def test_a_float_reference_with_nan_and_infinities_still_makes_a_valid_file():
    data = sine(1.5, 16_000).astype(np.float32)
    data[100:110] = np.nan
    data[200] = np.inf
    ref = normalize(wav(data, 16_000, subtype="FLOAT"))
    samples, _ = sf.read(io.BytesIO(ref.wav))
    assert np.all(np.isfinite(samples)) and ref.sample_rate == 16_000


@pytest.mark.parametrize(("data", "code"), [
    (wav(np.zeros(32_000), 16_000), "audio_silent"),
    (wav(sine(0.9, 16_000), 16_000), "audio_too_short"),
    (wav(np.full(31 * 8000, 0.1), 8000, fmt="FLAC"), "audio_too_long"),
    (wav(sine(2.0, 4000), 4000), "invalid_sample_rate"),
    (b"RIFF\x00\x00\x00\x00WAVEjunk", "invalid_audio"),
    (b"", "empty_file"),
])
def test_bad_references_are_refused_naming_the_field(data, code):
    with pytest.raises(RequestInvalid) as caught:
        normalize(data)
    assert (caught.value.param, caught.value.code) == ("audio_sample", code)


def record(name: str, sha: str = "a" * 64, **kw: object) -> VoiceRecord:
    return VoiceRecord(name=name, sha256=sha, seconds=2.0, sample_rate=16_000, consent="ok", created_at=1, **kw)


def test_the_store_is_read_by_name_in_any_case_and_seen_by_another_replica(tmp_path):
    mine, theirs = VoiceStore(tmp_path), VoiceStore(tmp_path)  # two router processes on one directory
    assert theirs.get("Narrator") is None
    previous = mine.put(record("Narrator"), b"one")
    assert previous is None
    assert theirs.get("narrator") == record("Narrator") and theirs.get("NARRATOR") is not None
    assert mine.put(record("narrator", "b" * 64), b"two") == record("Narrator")  # a re-upload replaces it
    assert theirs.get("Narrator").sha256 == "b" * 64
    (tmp_path / "names" / "broken.json").write_text("{not json")  # a damaged file is skipped, not fatal
    (tmp_path / "names" / "typed.json").write_text('{"name": "typed", "sha256": "' + "b" * 64 + '", "seconds": "2", '
                                                   '"sample_rate": 1, "consent": "x", "created_at": 1}')
    (tmp_path / "names" / "other.json").write_text('{"name": "Narrator", "sha256": "' + "b" * 64 + '"}')
    assert [r.name for r in theirs.all()] == ["narrator"]
    assert theirs.get("../names/x") is None


def test_deleting_a_voice_removes_its_audio_once_unused_and_old(tmp_path, monkeypatch):
    store = VoiceStore(tmp_path)
    store.put(record("a", "a" * 64), b"A")
    store.put(record("b", "a" * 64), b"A")  # two names, one reference
    store.put(record("c", "c" * 64), b"C")
    assert store.delete("a") is not None and store.audio_path("a" * 64).exists()  # b still uses it
    assert store.delete("c") is not None and store.audio_path("c" * 64).exists()  # too new: another replica may
    monkeypatch.setattr(store_module, "GRACE_S", 0.0)                             # be writing its name now
    assert store.collect_garbage() == 1 and not store.audio_path("c" * 64).exists()
    assert store.delete("c") is None


def test_an_uploaded_voice_has_parameters_for_every_backend_type(tmp_path):
    rec = record("Narrator", "d" * 64)
    inline = voice_params(rec, VoiceStoreConfig(directory=str(tmp_path), node_directory="/mnt/v"))
    assert inline == {"spk_audio_path": "/mnt/v/audio/" + "d" * 64 + ".wav",
                      "ref_audio_file": str(tmp_path / "audio" / ("d" * 64 + ".wav"))}
    upload = voice_params(rec, VoiceStoreConfig(directory=str(tmp_path), vllm_omni="upload"))
    assert upload == {"spk_audio_path": f"{tmp_path}/audio/{'d' * 64}.wav", "uploaded_voice": "sr-" + "d" * 24}
    assert is_router_voice(node_voice_name("d" * 64)) and is_router_voice("SR-" + "D" * 24)
    assert not is_router_voice("narrator") and not is_router_voice("sr-" + "x" * 24)


def test_a_reference_edited_in_place_changes_the_cache_key(tmp_path):
    ref = tmp_path / "alloy.wav"
    ref.write_bytes(b"first version")

    def key() -> str:
        request = SynthesisRequest(text="hi", model="m", voice="alloy", voice_params={"ref_audio_file": str(ref)})
        return cache_key(request, kind="response", fmt="wav", sample_rate=None)

    first = key()
    assert key() == first
    ref.write_bytes(b"second version")
    os.utime(ref, ns=(time.time_ns(), time.time_ns() + 1000))
    assert key() != first
