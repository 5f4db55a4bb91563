"""``MemoryStore``: the state store in this process. One replica needs no server, and tests of the logic need none.

It behaves as ``RedisStore`` does (the same tests run against both, ``tests/state/test_store.py``), on an
injectable monotonic clock, so a test can let leases and entries expire without sleeping.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .store import StateStore


@dataclass
class _Value:
    data: bytes
    expires: float = math.inf


class MemoryStore(StateStore):
    """See the module's docstring."""

    kind = "memory"

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock or time.monotonic
        self._values: dict[str, _Value] = {}
        self._maps: dict[str, dict[str, _Value]] = {}
        self._spaces: dict[str, OrderedDict[str, _Value]] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(values={len(self._values)}, maps={len(self._maps)})"

    async def ping(self) -> None:
        return None

    def _live(self, value: _Value | None) -> _Value | None:
        return value if value is not None and value.expires > self.clock() else None

    def _expiry(self, ttl: float | None) -> float:
        return math.inf if ttl is None else self.clock() + ttl

    async def get(self, key: str) -> bytes | None:
        value = self._live(self._values.get(key))
        return None if value is None else value.data

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._values[key] = _Value(bytes(value), self._expiry(ttl))

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

    async def incr(self, key: str) -> int:
        current = self._live(self._values.get(key))
        number = int(current.data) + 1 if current is not None else 1
        self._values[key] = _Value(str(number).encode(), current.expires if current is not None else math.inf)
        return number

    async def put_entry(self, key: str, field: str, value: bytes, ttl: float | None = None) -> None:
        self._maps.setdefault(key, {})[field] = _Value(bytes(value), self._expiry(ttl))

    async def entry(self, key: str, field: str) -> bytes | None:
        value = self._live(self._maps.get(key, {}).get(field))
        return None if value is None else value.data

    async def entries(self, key: str) -> dict[str, bytes]:
        fields = self._maps.get(key, {})
        for field in [f for f, v in fields.items() if self._live(v) is None]:
            del fields[field]
        return {f: v.data for f, v in fields.items()}

    async def drop_entry(self, key: str, field: str) -> None:
        self._maps.get(key, {}).pop(field, None)

    async def acquire(self, key: str, holder: str, ttl: float) -> bool:
        current = self._live(self._values.get(key))
        if current is not None and current.data != holder.encode():
            return False
        self._values[key] = _Value(holder.encode(), self._expiry(ttl))
        return True

    async def release(self, key: str, holder: str) -> None:
        current = self._live(self._values.get(key))
        if current is not None and current.data == holder.encode():
            del self._values[key]

    async def put_bounded(self, space: str, key: str, value: bytes, ttl: float, budget: int) -> int:
        entries = self._spaces.setdefault(space, OrderedDict())
        for dead in [k for k, v in entries.items() if self._live(v) is None]:
            del entries[dead]
        entries.pop(key, None)
        entries[key] = _Value(bytes(value), self._expiry(ttl))
        evicted = 0
        while entries and sum(len(v.data) for v in entries.values()) > budget:
            entries.popitem(last=False)
            evicted += 1
        return evicted

    async def get_bounded(self, space: str, key: str) -> bytes | None:
        entries = self._spaces.get(space)
        value = self._live(entries.get(key)) if entries is not None else None
        if value is None or entries is None:
            return None
        entries.move_to_end(key)
        return value.data
