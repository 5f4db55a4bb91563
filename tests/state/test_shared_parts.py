"""The parts that sit on the store: the cache's shared tier, uploaded voices, and rate limits, each with the store
answering, answering garbage, and failing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from speech_router.api.auth import Authenticator, ClientKey, Decision
from speech_router.cache.disk import encode
from speech_router.cache.entry import CachedAudio
from speech_router.cache.shared import SPACE, SharedTier
from speech_router.config.models import VoiceStoreConfig
from speech_router.state.guard import Guard
from speech_router.state.memory import MemoryStore
from speech_router.voices.shared import NAMES, SharedVoices, VoicesUnavailable
from speech_router.voices.store import VoiceRecord, store_for
from tests.state.fakes import FlakyStore
from tests.state.server import StoreServer

pytestmark = pytest.mark.anyio
KEY = "ab" * 16


def audio(data: bytes = b"RIFF" + b"\x00" * 60) -> CachedAudio:
    return CachedAudio(data, "audio/wav", "wav", 22050, seconds=0.5)


async def test_the_shared_tier_serves_what_another_replica_stored_and_nothing_else() -> None:
    store = MemoryStore()
    one, two = (SharedTier(Guard(store, timeout=1, where="memory"), 1000, 60, 500) for _ in range(2))
    assert await two.get(KEY) is None
    await one.put(KEY, audio())
    found = await two.get(KEY)
    assert found is not None and found.data == audio().data and found.format == "wav"
    await store.put_bounded(SPACE, KEY, b"not an entry", 60, 1000)  # anything else under the key is a miss
    assert await two.get(KEY) is None
    bad = encode(KEY, CachedAudio(b"x", "audio/wav", "exe", None))  # a CRC-whole entry with labels no format has
    await store.put_bounded(SPACE, KEY, bad, 60, 1000)
    assert await two.get(KEY) is None
    assert await one.put("cd" * 16, audio(b"y" * 501)) == 0 and await two.get("cd" * 16) is None  # over the entry bound


async def test_the_shared_tier_is_a_miss_while_the_store_fails() -> None:
    store = FlakyStore()
    tier = SharedTier(Guard(store, timeout=1, where="memory"), 1000, 60, 500)
    await tier.put(KEY, audio())
    store.down = True
    assert await tier.get(KEY) is None and await tier.put(KEY, audio()) == 0


def voices(store: MemoryStore, directory: Path, name: str) -> SharedVoices:
    config = VoiceStoreConfig(directory=str(directory))
    return SharedVoices(Guard(store, timeout=1, where="memory"), name, lambda: config, 1.0)


def record(name: str, wav: bytes) -> VoiceRecord:
    return VoiceRecord(name, hashlib.sha256(wav).hexdigest(), 2.0, 16000, "yes", 1, "a voice")


async def test_a_voice_saved_through_one_replica_reaches_the_others_and_so_does_its_deletion(tmp_path: Path) -> None:
    store = MemoryStore()
    a, b = voices(store, tmp_path / "a", "a"), voices(store, tmp_path / "b", "b")
    await a.sync()
    await b.sync()  # a store that never held voices: initialised once
    wav = b"RIFF" + b"v" * 100
    assert await a.save(record("Narrator", wav), wav) is None
    assert store_for(str(tmp_path / "b")).get("narrator") is None
    await b.ensure("narrator")  # a request names it: fetched at once
    assert store_for(str(tmp_path / "b")).read_audio(record("Narrator", wav).sha256) == wav
    assert await b.remove("Narrator") is not None
    await a.sync()
    assert store_for(str(tmp_path / "a")).get("narrator") is None
    await store.put_entry(NAMES, "ghost", b'{"name": "ghost"}')  # not a record: never mirrored
    await b.ensure("ghost")
    assert store_for(str(tmp_path / "b")).get("ghost") is None


async def test_a_store_that_never_held_voices_gets_the_directorys(tmp_path: Path) -> None:
    wav = b"RIFF" + b"w" * 100
    store_for(str(tmp_path / "a")).put(record("Old", wav), wav)  # uploaded before there was a store
    store = MemoryStore()
    await voices(store, tmp_path / "a", "a").sync()
    b = voices(store, tmp_path / "b", "b")
    await b.sync()
    assert store_for(str(tmp_path / "b")).get("old") is not None


async def test_no_upload_is_answered_while_the_store_cannot_take_it(tmp_path: Path) -> None:
    store = FlakyStore()
    shared = voices(store, tmp_path / "a", "a")
    store.down = True
    wav = b"RIFF" + b"x" * 100
    with pytest.raises(VoicesUnavailable):
        await shared.save(record("Late", wav), wav)
    assert store_for(str(tmp_path / "a")).get("late") is None  # not even in this replica's copy


async def test_a_rate_limit_holds_for_two_replicas_and_each_keeps_its_share_while_the_store_is_down(
        redis_server: StoreServer) -> None:
    from speech_router.state.limiter import SharedRateLimits
    from speech_router.state.redis_store import RedisStore

    stores = [RedisStore(redis_server.url, prefix="limits-test", timeout=2) for _ in range(2)]
    key = ClientKey("metered", b"", requests_per_minute=4)
    auths = []
    for store in stores:
        auth = Authenticator([key])
        auth.shared = SharedRateLimits(Guard(store, timeout=2, where="redis"), store, redis_server.url, lambda: 2)
        auths.append(auth)
    statuses = []
    for i in range(8):
        auth = auths[i % 2]
        statuses.append((await auth.settle(Decision(key.name, pending=key))).status)
    assert statuses.count(200) == 4 and statuses.count(429) == 4
    for store in stores:
        await store.aclose()
    gone = RedisStore("redis://127.0.0.1:1/0", prefix="t", timeout=0.2)
    auth = Authenticator([ClientKey("metered", b"", requests_per_minute=4)])
    auth.shared = SharedRateLimits(Guard(gone, timeout=0.2, where="redis"), gone, "redis://127.0.0.1:1/0", lambda: 2)
    decided = [(await auth.settle(Decision(key.name, pending=key))).status for _ in range(4)]
    assert decided == [200, 200, 429, 429]  # its share of 4 among 2 replicas, in its own window
    await gone.aclose()
