"""Client rate limits across replicas: the ``limits`` library's moving window, on the shared Valkey or Redis.

A key's ``requests_per_minute`` then holds for all replicas together: every replica counts the key's requests in
one window on the store (``limits``' moving window: at most that many in any 60 seconds, refused requests not
counted). The window's times are each replica's clock, so replicas whose clocks differ by ``d`` seconds may
admit a request up to ``d`` seconds early (NTP keeps ``d`` to milliseconds). While the store is down each
replica keeps the key's window itself, with the limit divided by the number of replicas it last saw, so the
fleet stays near the limit (``Authenticator``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from .guard import Guard
from .redis_store import RedisStore, client_url
from .store import StoreError


class SharedRateLimits:
    """``admit``: a key's request counted in its fleet-wide window. ``replicas``: how many share it."""

    def __init__(self, guard: Guard, store: RedisStore, url: str, replicas: Callable[[], int]) -> None:
        self.guard = guard
        self.replicas = replicas
        # limits annotates its options as float | str | bool, yet hands them to redis-py, which takes this pool
        client: dict[str, Any] = {"connection_pool": store.pool}
        storage = RedisStorage("async+" + client_url(url), implementation="redispy",
                               key_prefix=f"{store.prefix}:limits", **client)
        self.limiter = MovingWindowRateLimiter(storage)
        self._items: dict[int, RateLimitItem] = {}

    def __repr__(self) -> str:
        return "SharedRateLimits(moving window)"

    async def admit(self, name: str, per_minute: int) -> float | None:
        """0 when the request is admitted (and counted), the seconds until it would be when refused, or None when
        the store could not say (the caller then uses its own window)."""
        item = self._items.get(per_minute)
        if item is None:
            item = self._items[per_minute] = RateLimitItemPerMinute(per_minute)

        async def hit() -> float:
            try:
                if await self.limiter.hit(item, name):
                    return 0.0
                stats = await self.limiter.get_window_stats(item, name)
            except Exception as exc:  # noqa: BLE001 - whatever the library raises, the store failed
                raise StoreError(f"rate limit: {type(exc).__name__}: {exc}") from None
            return max(0.001, float(stats.reset_time) - time.time())

        return await self.guard.call(hit, None)
