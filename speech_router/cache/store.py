"""AudioCache: finished audio by cache key, in memory and optionally on disk, and in the state store.

A lookup tries memory first, on the event loop with no thread hop (a hit is a dict lookup), then
disk in a worker thread, then (with a state store) the replicas' shared tier (``shared.SharedTier``);
a disk or shared hit is promoted into memory. ``put`` stores in every tier. Disk and store errors
are logged and count as misses: the cache never fails a request.

The store does not coalesce concurrent misses of one key. Callers that want ten identical requests
arriving together to cost one synthesis should do so themselves (one future per key in flight).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..config.models import CacheConfig
from ..metrics import Metrics
from .disk import KEY_RE, DiskTier
from .entry import CachedAudio
from .memory import MemoryTier
from .shared import SharedTier

__all__ = ["AudioCache", "CacheStats", "CachedAudio"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class CacheStats:
    """A snapshot for status pages and tests. Byte counts are what the budgets are measured against."""

    memory_entries: int
    memory_bytes: int
    memory_budget: int
    disk_entries: int
    disk_bytes: int
    disk_budget: int
    directory: str | None
    memory_hits: int
    disk_hits: int
    misses: int
    refused: int
    memory_evictions: int
    disk_evictions: int
    shared_hits: int = 0
    shared_evictions: int = 0


class AudioCache:
    """Two-tier LRU cache of ``CachedAudio``; see the module docstring."""

    def __init__(self, config: CacheConfig, metrics: Metrics | None = None, shared: SharedTier | None = None) -> None:
        self.config = config
        self._memory = MemoryTier(config.memory_bytes, config.max_entry_bytes)
        self._disk = self._disk_tier(config)
        #: the replicas' tier in the state store (None: no store, or ``cache.shared_bytes: 0``)
        self.shared = shared
        self._memory_hits = self._disk_hits = self._shared_hits = self._misses = self._refused = 0
        self._evictions = {"memory": 0, "disk": 0, "shared": 0}
        self._metrics = metrics
        self._gauges = (metrics.cache_bytes.labels(tier="memory"), metrics.cache_bytes.labels(tier="disk")) \
            if metrics is not None else None
        self._report()

    def __repr__(self) -> str:
        return f"AudioCache(config={self.config!r})"

    async def open(self) -> None:
        """Scan the disk tier now rather than on first use (optional)."""
        await self._loaded_disk()

    async def get(self, key: str) -> CachedAudio | None:
        _check(key)
        entry = self._memory.get(key)
        if entry is not None:
            self._memory_hits += 1
            return entry
        disk = self._disk
        if disk is not None and disk.might_have(key) and await self._loaded_disk() is disk:
            entry = await self._disk_call(disk.get, key)
            self._report()  # a corrupt file may have been dropped
            if entry is not None:
                self._disk_hits += 1
                self._store_in_memory(key, entry)
                return entry
        if self.shared is not None:
            entry = await self.shared.get(key)
            if entry is not None:
                self._shared_hits += 1
                self._store_in_memory(key, entry)
                return entry
        self._misses += 1
        return None

    async def put(self, key: str, entry: CachedAudio) -> None:
        """Store ``entry`` under ``key``. Awaits the disk write: off the response path, run it as a task."""
        _check(key)
        if len(entry.data) > self.config.max_entry_bytes:
            self._refused += 1
            return
        self._store_in_memory(key, entry)
        disk = await self._loaded_disk()
        if disk is not None:
            result = await self._disk_call(disk.put, key, entry)
            if result is not None:
                self._count_evictions("disk", result[1])
            self._report()
        if self.shared is not None:
            self._count_evictions("shared", await self.shared.put(key, entry))

    async def resize(self, config: CacheConfig) -> None:
        """Apply a reloaded config: smaller budgets evict now; a new directory starts a new disk tier
        (the old directory's files are left where they are)."""
        self.config = config
        self._count_evictions("memory", self._memory.resize(config.memory_bytes, config.max_entry_bytes))
        if self._disk is None or config.directory is None or Path(config.directory) != self._disk.directory:
            self._disk = self._disk_tier(config)
        else:
            disk = self._disk
            evicted = await self._disk_call(disk.resize, config.disk_bytes, config.max_entry_bytes)
            self._count_evictions("disk", evicted or 0)
        self._report()

    def stats(self) -> CacheStats:
        disk = self._disk
        return CacheStats(
            memory_entries=len(self._memory), memory_bytes=self._memory.bytes, memory_budget=self._memory.budget,
            disk_entries=len(disk) if disk else 0, disk_bytes=disk.bytes if disk else 0,
            disk_budget=disk.budget if disk else 0, directory=str(disk.directory) if disk else None,
            memory_hits=self._memory_hits, disk_hits=self._disk_hits, misses=self._misses, refused=self._refused,
            memory_evictions=self._evictions["memory"], disk_evictions=self._evictions["disk"],
            shared_hits=self._shared_hits, shared_evictions=self._evictions["shared"])

    def close(self) -> None:
        """Drop the memory tier. Disk files stay for the next start."""
        self._memory.clear()
        self._report()

    # internals

    @staticmethod
    def _disk_tier(config: CacheConfig) -> DiskTier | None:
        if config.directory is None:
            return None
        return DiskTier(config.directory, config.disk_bytes, config.max_entry_bytes)

    async def _loaded_disk(self) -> DiskTier | None:
        """The disk tier after its first scan, or None when there is none or the directory is unusable."""
        disk = self._disk
        if disk is None or disk.loaded:
            return disk
        evicted = await self._disk_call(disk.load)
        if evicted is None:
            return None
        self._count_evictions("disk", evicted)
        self._report()
        return disk

    async def _disk_call(self, func: Callable[..., T], *args: Any) -> T | None:
        try:
            return await asyncio.to_thread(func, *args)
        except OSError as exc:
            log.warning("cache directory %s: %s failed: %s", self.config.directory, func.__name__, exc)
            return None

    def _store_in_memory(self, key: str, entry: CachedAudio) -> None:
        stored, evicted = self._memory.put(key, entry)
        self._count_evictions("memory", evicted)
        if stored:
            self._report()

    def _count_evictions(self, tier: str, count: int) -> None:
        if count:
            self._evictions[tier] += count
            if self._metrics is not None:
                self._metrics.cache_evictions.labels(tier=tier).inc(count)

    def _report(self) -> None:
        if self._gauges is not None:
            self._gauges[0].set(self._memory.bytes)
            self._gauges[1].set(self._disk.bytes if self._disk else 0)


def _check(key: str) -> None:
    if not KEY_RE.match(key):
        raise ValueError(f"not a cache key (lowercase hex expected): {key!r}")
