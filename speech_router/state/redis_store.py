"""``RedisStore``: the state store on Valkey or Redis, through redis-py's asyncio client (it speaks to both).

Imported only when ``state.url`` names such a server, so a router without one never loads ``redis``.
Each operation is one command or one Lua script (``scripts.py``): atomic, one round trip. The client never
retries by itself and its sockets time out after ``timeout``: a store that does not answer is a quick
``StoreError``, and ``Guard`` decides what the replica does meanwhile. Connections come from a bounded pool
that waits (up to ``timeout``) for a free one rather than opening without end.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from . import scripts
from .store import StateStore, StoreError

#: connections one replica holds open to the store at most (requests wait up to ``timeout`` for one beyond)
MAX_CONNECTIONS = 64

P = ParamSpec("P")
T = TypeVar("T")


def _mapped(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """The client's failures (and the socket's) become ``StoreError``, here at the boundary."""

    @functools.wraps(method)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (RedisError, OSError, ValueError) as exc:  # ValueError: an answer the client could not parse
            raise StoreError(f"{type(exc).__name__}: {exc}") from None

    return call


def client_url(url: str) -> str:
    """The URL as redis-py takes it: ``valkey://`` is ``redis://`` (the same protocol)."""
    for scheme, same in (("valkeys://", "rediss://"), ("valkey://", "redis://")):
        if url.startswith(scheme):
            return same + url[len(scheme):]
    return url


class RedisStore(StateStore):
    """See the module's docstring."""

    kind = "redis"

    def __init__(self, url: str, *, prefix: str, timeout: float) -> None:
        self.prefix = prefix
        pool = aioredis.BlockingConnectionPool.from_url(
            client_url(url), max_connections=MAX_CONNECTIONS, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
        self.pool = pool
        self.redis = aioredis.Redis(connection_pool=pool)
        register = self.redis.register_script
        self._put_entry, self._entries, self._entry = (register(scripts.PUT_ENTRY), register(scripts.ENTRIES),
                                                       register(scripts.ENTRY))
        self._acquire, self._release = register(scripts.ACQUIRE), register(scripts.RELEASE)
        self._put_bounded, self._get_bounded = register(scripts.PUT_BOUNDED), register(scripts.GET_BOUNDED)

    def __repr__(self) -> str:  # never the URL: it may carry a password
        return f"RedisStore(prefix={self.prefix!r})"

    def _key(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    def _map(self, key: str) -> list[str]:
        return [self._key(key), self._key(key) + ":expires"]

    def _space(self, space: str, key: str) -> tuple[list[str], str]:
        base = self._key(space)
        return [f"{base}:d:{key}", f"{base}:used", f"{base}:expires", f"{base}:sizes", f"{base}:bytes"], f"{base}:d:"

    @_mapped
    async def ping(self) -> None:
        await self.redis.ping()

    @_mapped
    async def get(self, key: str) -> bytes | None:
        return _bytes(await self.redis.get(self._key(key)))

    @_mapped
    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        await self.redis.set(self._key(key), value, px=_ms(ttl) if ttl is not None else None)

    @_mapped
    async def delete(self, key: str) -> None:
        await self.redis.delete(self._key(key))

    @_mapped
    async def incr(self, key: str) -> int:
        return int(await self.redis.incr(self._key(key)))

    @_mapped
    async def put_entry(self, key: str, field: str, value: bytes, ttl: float | None = None) -> None:
        await self._put_entry(keys=self._map(key), args=[field, value, "" if ttl is None else _ms(ttl)])

    @_mapped
    async def entry(self, key: str, field: str) -> bytes | None:
        return _bytes(await self._entry(keys=self._map(key), args=[field]))

    @_mapped
    async def entries(self, key: str) -> dict[str, bytes]:
        flat = await self._entries(keys=self._map(key))
        if not isinstance(flat, list) or len(flat) % 2:
            raise StoreError("the store answered something that is not a map")
        return {_text(flat[i]): _bytes(flat[i + 1]) or b"" for i in range(0, len(flat), 2)}

    @_mapped
    async def drop_entry(self, key: str, field: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            keys = self._map(key)
            pipe.hdel(keys[0], field)
            pipe.zrem(keys[1], field)
            await pipe.execute()

    @_mapped
    async def acquire(self, key: str, holder: str, ttl: float) -> bool:
        return bool(await self._acquire(keys=[self._key(key)], args=[holder, _ms(ttl)]))

    @_mapped
    async def release(self, key: str, holder: str) -> None:
        await self._release(keys=[self._key(key)], args=[holder])

    @_mapped
    async def put_bounded(self, space: str, key: str, value: bytes, ttl: float, budget: int) -> int:
        keys, prefix = self._space(space, key)
        return int(await self._put_bounded(keys=keys, args=[key, value, _ms(ttl), max(0, budget), prefix]))

    @_mapped
    async def get_bounded(self, space: str, key: str) -> bytes | None:
        keys, _ = self._space(space, key)
        return _bytes(await self._get_bounded(keys=keys[:2], args=[key]))

    async def aclose(self) -> None:
        try:
            await self.redis.aclose()
            await self.pool.aclose()
        except (RedisError, OSError):
            pass


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, (bytes, bytearray)):
        raise StoreError(f"the store answered a {type(value).__name__} where bytes were expected")
    return bytes(value)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
