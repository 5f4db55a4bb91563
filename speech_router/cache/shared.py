"""The cache's shared tier: answers and segments in the state store, for every replica (with ``state.url``).

It sits behind each replica's own tiers (memory, then disk): a lookup that misses them asks the store, and a hit
there is kept in memory for the next one. What one replica synthesized and cached is then a hit on every other,
so the hit ratio does not fall with the number of replicas.

Bounded: the store keeps at most ``cache.shared_bytes`` of audio for all replicas together, evicting the least
recently used entries beyond it, and drops an entry ``cache.shared_ttl`` seconds after it was stored (its
eviction settings, docs/replicas.md). Entries are kept in the disk tier's format (a header with a CRC-32), so
anything else under the key is a miss, never audio sent to a client.
"""

from __future__ import annotations

import math

from ..audio.formats import FORMATS
from ..state.guard import BULK_TIMEOUT_S, Guard
from .disk import decode, encode
from .entry import CachedAudio

SPACE = "cache"


class SharedTier:
    """See the module's docstring. Every call goes through the store's ``Guard``: a store that fails is a miss."""

    def __init__(self, guard: Guard, budget: int, ttl: float, max_entry: int) -> None:
        self.guard = guard
        self.budget = budget
        self.ttl = ttl
        self.max_entry = max_entry

    def __repr__(self) -> str:
        return f"SharedTier(budget={self.budget}, ttl={self.ttl:g})"

    async def get(self, key: str) -> CachedAudio | None:
        store = self.guard.store
        raw = await self.guard.call(lambda: store.get_bounded(SPACE, key), None, timeout=BULK_TIMEOUT_S)
        if raw is None or len(raw) > self.max_entry + 64 * 1024:
            return None
        entry = decode(key, raw)
        return entry if entry is not None and _plausible(entry) else None

    async def put(self, key: str, entry: CachedAudio) -> int:
        """Store ``entry``; returns how many entries the store evicted to make room."""
        if len(entry.data) > self.max_entry or len(entry.data) > self.budget:
            return 0
        raw = encode(key, entry)
        store = self.guard.store
        return await self.guard.call(lambda: store.put_bounded(SPACE, key, raw, self.ttl, self.budget), 0,
                                     timeout=BULK_TIMEOUT_S)


def _plausible(entry: CachedAudio) -> bool:
    """Labels a response can be sent with (the CRC says the audio is what was stored; this, that the labels are)."""
    rate = entry.sample_rate
    return (math.isfinite(entry.seconds) and entry.seconds >= 0 and isinstance(entry.content_type, str)
            and entry.content_type.isascii() and len(entry.content_type) < 128 and entry.format in FORMATS
            and (rate is None or (isinstance(rate, int) and 0 < rate <= 384_000)))
