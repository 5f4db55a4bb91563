"""The memory tier: an LRU of whole entries within a byte budget."""

from __future__ import annotations

import threading
from collections import OrderedDict

from .entry import CachedAudio


class MemoryTier:
    """Least recently used entries go first. Every operation is O(1) except evicting, which is O(evicted).

    A plain lock makes it safe from threads too; uncontended, it costs far less than a microsecond.
    """

    def __init__(self, budget: int, max_entry: int) -> None:
        self.budget = budget
        self.max_entry = max_entry
        self._entries: OrderedDict[str, CachedAudio] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryTier(budget={self.budget}, max_entry={self.max_entry})"

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> CachedAudio | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, entry: CachedAudio) -> tuple[bool, int]:
        """Store ``entry``; returns (stored, entries evicted). Too large for the budget: not stored."""
        charge = entry.charge
        if len(entry.data) > self.max_entry or charge > self.budget:
            return False, 0
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.charge
            self._entries[key] = entry
            self._bytes += charge
            return True, self._evict_locked()

    def resize(self, budget: int, max_entry: int) -> int:
        """Apply new limits; returns how many entries a smaller budget evicted."""
        with self._lock:
            self.budget, self.max_entry = budget, max_entry
            return self._evict_locked()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _evict_locked(self) -> int:
        evicted = 0
        while self._bytes > self.budget and self._entries:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.charge
            evicted += 1
        return evicted
