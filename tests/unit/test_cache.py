"""The response cache: keys cover every field that changes audio; memory and disk tiers keep their budgets."""

from __future__ import annotations

import asyncio
import copy
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from speech_router.cache import AudioCache, CachedAudio, cache_key
from speech_router.cache.disk import TEMP_PREFIX, DiskTier, encode
from speech_router.cache.entry import ENTRY_OVERHEAD
from speech_router.config.models import CacheConfig
from speech_router.metrics import Metrics
from speech_router.types import Emotion, EmotionMethod, SynthesisRequest

pytestmark = pytest.mark.anyio


# keys

def base_request() -> SynthesisRequest:
    return SynthesisRequest(
        text="Hello there.", model="tts-1", voice="alice", voice_params={"spk_audio_path": "/v/alice.wav", "x": 1},
        emotion=Emotion(method=EmotionMethod.VECTOR, vector=[0.1, 0.0, 0.5], weight=0.8, text="calm"),
        speed=1.0, response_format="mp3", max_text_tokens_per_sentence=120, request_id="r1",
        passthrough={"a": 1, "b": {"c": 2}}, timeout=30.0)


def key_of(request: SynthesisRequest, **overrides) -> str:
    args = {"kind": "response", "fmt": "wav", "sample_rate": 24000, "extra": {"silence_ms": 200, "segment": 300}}
    args.update(overrides)
    return cache_key(request, **args)


def test_key_is_stable_sha256_hex():
    key = key_of(base_request())
    assert key == key_of(base_request()) and len(key) == 64 and int(key, 16) >= 0


def _voice_file(r):
    r.voice_params["spk_audio_path"] = "/v/alice-v2.wav"


@pytest.mark.parametrize("change", [
    lambda r: setattr(r, "text", "Hello there!"),
    lambda r: setattr(r, "model", "tts-2"),
    lambda r: setattr(r, "voice", "bob"),
    _voice_file,
    lambda r: r.voice_params.update(y=2),
    lambda r: setattr(r.emotion, "method", EmotionMethod.TEXT),
    lambda r: setattr(r.emotion, "ref_path", "/v/angry.wav"),
    lambda r: setattr(r.emotion, "weight", 0.9),
    lambda r: setattr(r.emotion, "vector", [0.1, 0.0, 0.6]),
    lambda r: setattr(r.emotion, "text", "angry"),
    lambda r: setattr(r.emotion, "random", True),
    lambda r: setattr(r, "speed", 1.1),
    lambda r: setattr(r, "max_text_tokens_per_sentence", 60),
    lambda r: setattr(r, "max_text_tokens_per_sentence", None),
    lambda r: r.passthrough.update(a=2),
    lambda r: setattr(r, "passthrough", None),
], ids=["text", "model", "voice", "voice_file", "voice_param_added", "emo_method", "emo_ref", "emo_weight",
        "emo_vector", "emo_text", "emo_random", "speed", "tokens", "tokens_none", "passthrough", "no_passthrough"])
def test_each_request_field_changes_the_key(change):
    request = base_request()
    changed = copy.deepcopy(request)
    change(changed)
    assert key_of(changed) != key_of(request)


@pytest.mark.parametrize("override", [
    {"kind": "segment"}, {"fmt": "mp3"}, {"sample_rate": 22050}, {"sample_rate": None},
    {"extra": {"silence_ms": 250, "segment": 300}}, {"extra": None},
])
def test_each_argument_changes_the_key(override):
    assert key_of(base_request(), **override) != key_of(base_request())


def test_handling_only_fields_and_dict_order_do_not_change_the_key():
    request = base_request()
    other = replace(request, request_id="r2", timeout=5.0, response_format="opus", speed=1,
                    voice_params={"x": 1, "spk_audio_path": "/v/alice.wav"}, passthrough={"b": {"c": 2}, "a": 1})
    assert key_of(other, extra={"segment": 300, "silence_ms": 200}) == key_of(request)


def test_key_refuses_unknown_kind_and_unhashable_values():
    with pytest.raises(ValueError):
        key_of(base_request(), kind="whole")
    with pytest.raises(TypeError):
        key_of(replace(base_request(), voice_params={"x": object()}))


# memory tier

def audio(n: int, tag: bytes = b"a") -> CachedAudio:
    return CachedAudio(data=(tag * n)[:n], content_type="audio/wav", format="wav", sample_rate=24000, created=1.0)


def k(name: str) -> str:
    return name.encode().hex().ljust(64, "0")


async def test_memory_lru_evicts_least_recently_used_within_budget():
    cache = AudioCache(CacheConfig(memory_bytes=3 * (1000 + ENTRY_OVERHEAD), max_entry_bytes=5000))
    for name in "abc":
        await cache.put(k(name), audio(1000, name.encode()))
    assert (await cache.get(k("a"))).data == b"a" * 1000  # a is now the most recent
    await cache.put(k("d"), audio(1000, b"d"))
    assert await cache.get(k("b")) is None
    assert all([await cache.get(k(n)) for n in "acd"])
    stats = cache.stats()
    assert stats.memory_entries == 3 and stats.memory_bytes == 3 * (1000 + ENTRY_OVERHEAD) <= stats.memory_budget
    assert stats.memory_evictions == 1 and stats.misses == 1
    await cache.put(k("a"), audio(10, b"z"))  # replacing an entry re-counts its size
    assert cache.stats().memory_bytes == 2 * (1000 + ENTRY_OVERHEAD) + 10 + ENTRY_OVERHEAD


async def test_oversized_entries_are_refused_by_every_tier(tmp_path):
    cache = AudioCache(CacheConfig(memory_bytes=10_000, max_entry_bytes=2000, directory=str(tmp_path)))
    await cache.put(k("big"), audio(2001))
    assert await cache.get(k("big")) is None
    assert cache.stats().refused == 1 and not list(tmp_path.rglob(k("big")))
    # within max_entry_bytes but above the memory budget: kept on disk only
    small = AudioCache(CacheConfig(memory_bytes=500, max_entry_bytes=2000, directory=str(tmp_path)))
    await small.put(k("mid"), audio(1500))
    assert small.stats().memory_entries == 0 and small.stats().disk_entries == 1
    assert (await small.get(k("mid"))).data == audio(1500).data


async def test_memory_hit_needs_no_thread(monkeypatch, tmp_path):
    cache = AudioCache(CacheConfig(directory=str(tmp_path)))
    await cache.put(k("a"), audio(100))

    def no_threads(*args, **kwargs):
        raise AssertionError("thread hop")

    monkeypatch.setattr(asyncio, "to_thread", no_threads)
    assert (await cache.get(k("a"))).data == audio(100).data
    assert await cache.get(k("unknown")) is None  # a key the disk index lacks misses without I/O too


async def test_bad_keys_are_refused(tmp_path):
    cache = AudioCache(CacheConfig(directory=str(tmp_path)))
    for bad in ("../../etc/passwd", "ABCDEF0123456789ABCD", "short"):
        with pytest.raises(ValueError):
            await cache.get(bad)
        with pytest.raises(ValueError):
            await cache.put(bad, audio(1))


# disk tier

def disk_config(tmp_path: Path, **kw) -> CacheConfig:
    return CacheConfig(**{"memory_bytes": 0, "directory": str(tmp_path), "max_entry_bytes": 10_000, **kw})


def file_size(n: int, key: str) -> int:
    return len(encode(key, audio(n)))


async def test_disk_round_trip_across_restart_and_promotion(tmp_path):
    first = AudioCache(CacheConfig(directory=str(tmp_path)))
    entry = CachedAudio(data=b"RIFF" + bytes(range(256)) * 4, content_type="audio/mpeg", format="mp3",
                        sample_rate=None, created=1234.5)
    await first.put(k("a"), entry)
    first.close()
    assert list(tmp_path.glob(f"{k('a')[:2]}/*")) == [tmp_path / k("a")[:2] / k("a")]

    second = AudioCache(CacheConfig(directory=str(tmp_path)))
    assert await second.get(k("a")) == entry
    assert await second.get(k("a")) == entry
    stats = second.stats()
    assert (stats.disk_hits, stats.memory_hits, stats.memory_entries, stats.disk_entries) == (1, 1, 1, 1)
    assert stats.disk_bytes == (tmp_path / k("a")[:2] / k("a")).stat().st_size


async def test_disk_budget_evicts_least_recently_used(tmp_path):
    size = file_size(1000, k("a"))
    cache = AudioCache(disk_config(tmp_path, disk_bytes=2 * size))
    await cache.put(k("a"), audio(1000))
    await cache.put(k("b"), audio(1000))
    assert await cache.get(k("a"))  # from disk (memory budget 0): a becomes the most recent
    await cache.put(k("c"), audio(1000))
    assert not (tmp_path / k("b")[:2] / k("b")).exists()
    assert await cache.get(k("b")) is None and await cache.get(k("a")) and await cache.get(k("c"))
    assert cache.stats().disk_bytes == 2 * size and cache.stats().disk_evictions == 1


async def test_restart_rebuilds_recency_from_mtimes_and_fits_a_smaller_budget(tmp_path):
    size = file_size(1000, k("a"))
    cache = AudioCache(disk_config(tmp_path, disk_bytes=3 * size))
    for name in "abc":
        await cache.put(k(name), audio(1000))
    now = time.time()
    for age, name in ((30, "a"), (10, "b"), (20, "c")):  # b newest, a oldest
        os.utime(tmp_path / k(name)[:2] / k(name), (now - age, now - age))
    restarted = AudioCache(disk_config(tmp_path, disk_bytes=2 * size))
    await restarted.open()
    assert restarted.stats().disk_entries == 2 and restarted.stats().disk_evictions == 1
    assert await restarted.get(k("a")) is None and await restarted.get(k("b")) and await restarted.get(k("c"))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
async def test_corrupt_file_is_a_miss_and_removed(tmp_path, damage):
    await AudioCache(disk_config(tmp_path)).put(k("a"), audio(1000))
    path = tmp_path / k("a")[:2] / k("a")
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[:-10], "flip": raw[:-1] + bytes([raw[-1] ^ 1]), "garbage": b"x" * 500,
                      "empty": b""}[damage])
    cache = AudioCache(disk_config(tmp_path))
    assert await cache.get(k("a")) is None
    assert not path.exists() and cache.stats().disk_entries == 0 and cache.stats().disk_bytes == 0


async def test_file_of_another_key_is_a_miss(tmp_path):
    cache = AudioCache(disk_config(tmp_path))
    await cache.put(k("a"), audio(100))
    src = tmp_path / k("a")[:2] / k("a")
    dst = tmp_path / k("b")[:2] / k("b")
    dst.parent.mkdir(exist_ok=True)
    dst.write_bytes(src.read_bytes())
    assert await AudioCache(disk_config(tmp_path)).get(k("b")) is None and not dst.exists()


async def test_writes_are_atomic_and_leave_no_temp_files(tmp_path, monkeypatch):
    cache = AudioCache(disk_config(tmp_path))
    for name in "abcdef":
        await cache.put(k(name), audio(500))
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TEMP_PREFIX)]

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    await cache.put(k("g"), audio(500))  # logged, not raised
    monkeypatch.undo()
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert not (tmp_path / k("g")[:2] / k("g")).exists() and cache.stats().disk_entries == 6


async def test_stale_temp_files_are_removed_at_startup(tmp_path):
    shard = tmp_path / "ab"
    shard.mkdir()
    stale, fresh = shard / (TEMP_PREFIX + "old"), shard / (TEMP_PREFIX + "new")
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    cache = AudioCache(disk_config(tmp_path))
    await cache.open()
    assert not stale.exists() and fresh.exists() and cache.stats().disk_entries == 0


async def test_concurrent_get_and_put_of_one_key(tmp_path):
    cache = AudioCache(CacheConfig(memory_bytes=0, directory=str(tmp_path), disk_bytes=10 * file_size(3000, k("a"))))
    versions = [audio(3000, bytes([65 + i])) for i in range(4)]

    async def writer(i: int) -> None:
        await cache.put(k("a"), versions[i % 4])

    results = await asyncio.gather(*(writer(i) for i in range(20)), *(cache.get(k("a")) for _ in range(20)))
    assert all(r is None or r in versions for r in results)
    assert await cache.get(k("a")) in versions
    assert cache.stats().disk_entries == 1 and cache.stats().disk_bytes == file_size(3000, k("a"))
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def test_disk_tier_is_thread_safe(tmp_path):
    size = len(encode(k("a"), audio(2000)))
    tier = DiskTier(tmp_path, budget=3 * size, max_entry=10_000)
    keys = [k(n) for n in "abcde"]
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(30):
                key = keys[(seed + i) % len(keys)]
                if i % 2:
                    tier.put(key, audio(2000, key[:1].encode()))
                else:
                    got = tier.get(key)
                    assert got is None or got.data == audio(2000, key[:1].encode()).data
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == len(tier) <= 3 and sum(p.stat().st_size for p in files) == tier.bytes <= 3 * size


# metrics and reload

def sample(metrics: Metrics, name: str, tier: str) -> float:
    return metrics.registry.get_sample_value(name, {"tier": tier}) or 0.0


async def test_metrics_follow_bytes_and_evictions(tmp_path):
    metrics = Metrics()
    size = file_size(1000, k("a"))
    cache = AudioCache(CacheConfig(memory_bytes=2 * (1000 + ENTRY_OVERHEAD), directory=str(tmp_path),
                                   disk_bytes=2 * size, max_entry_bytes=5000), metrics)
    for name in "abc":
        await cache.put(k(name), audio(1000))
    assert sample(metrics, "speech_router_cache_bytes", "memory") == 2 * (1000 + ENTRY_OVERHEAD)
    assert sample(metrics, "speech_router_cache_bytes", "disk") == 2 * size
    assert sample(metrics, "speech_router_cache_evictions_total", "memory") == 1
    assert sample(metrics, "speech_router_cache_evictions_total", "disk") == 1
    cache.close()
    assert sample(metrics, "speech_router_cache_bytes", "memory") == 0


async def test_resize_shrinks_both_tiers(tmp_path):
    metrics = Metrics()
    size = file_size(1000, k("a"))
    config = CacheConfig(memory_bytes=4 * (1000 + ENTRY_OVERHEAD), directory=str(tmp_path), disk_bytes=4 * size,
                         max_entry_bytes=5000)
    cache = AudioCache(config, metrics)
    for name in "abcd":
        await cache.put(k(name), audio(1000))
    await cache.resize(config.model_copy(update={"memory_bytes": 1000 + ENTRY_OVERHEAD, "disk_bytes": 2 * size}))
    stats = cache.stats()
    assert (stats.memory_entries, stats.disk_entries, stats.memory_evictions, stats.disk_evictions) == (1, 2, 3, 2)
    assert sample(metrics, "speech_router_cache_bytes", "disk") == 2 * size
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted([k("c"), k("d")])
    await cache.resize(config.model_copy(update={"directory": None}))
    assert cache.stats().directory is None and sample(metrics, "speech_router_cache_bytes", "disk") == 0
