"""The state store's interface: what router replicas (and long jobs) keep in one place, in a few operations.

Two implementations: ``MemoryStore`` (in-process: one replica, tests of the logic) and ``RedisStore`` (Valkey
or Redis, shared by every replica). Keys are logical names; each store puts its prefix in front. Values are
bytes: callers encode and decode, and treat what they cannot decode as absent (a store may hold anything).

The operations, each one round trip on Redis:

- plain values: ``get``, ``set`` (with an optional time to live), ``delete``, ``incr`` (a counter, e.g. a
  version that says "something changed");
- *entries*: a map under one key whose fields may each expire (``put_entry(..., ttl=...)``), as a holder's
  lease does when it stops renewing: every replica publishes its own field, readers see the live ones;
- *leases*: ``acquire`` takes (or renews) ``key`` for ``holder`` for ``ttl`` seconds unless another holder has
  it; ``release`` gives it back. A holder that stops renewing loses it (Kubernetes' ``Lease``);
- a *bounded space* (the audio cache's shared tier): ``put_bounded`` stores with a time to live and evicts the
  least recently used entries of the space beyond ``budget`` bytes; ``get_bounded`` reads and marks used.

Every failure to reach or use the store is a ``StoreError``; callers go through ``Guard`` (``guard.py``), which
bounds each call in time and falls back to the replica's own state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar


class StoreError(Exception):
    """The store could not be reached or refused the operation; seen by ``Guard``, never by a client."""


class StateStore(ABC):
    """See the module's docstring. All methods may raise ``StoreError``."""

    #: what kind of store this is (the ``store`` label of ``speech_router_state_store_up``)
    kind: ClassVar[str]

    @abstractmethod
    async def ping(self) -> None:
        """Raise ``StoreError`` unless the store answers."""

    # -- plain values ---------------------------------------------------------------------------------------

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value``; with ``ttl`` it is gone after that many seconds."""

    @abstractmethod
    async def delete(self, key: str) -> None: ...

    @abstractmethod
    async def incr(self, key: str) -> int:
        """Add one to the counter ``key`` (0 when absent) and return it."""

    # -- entries --------------------------------------------------------------------------------------------

    @abstractmethod
    async def put_entry(self, key: str, field: str, value: bytes, ttl: float | None = None) -> None:
        """Set ``field`` of the map ``key``; with ``ttl`` the field is gone after that many seconds unless put
        again."""

    @abstractmethod
    async def entry(self, key: str, field: str) -> bytes | None: ...

    @abstractmethod
    async def entries(self, key: str) -> dict[str, bytes]:
        """Every live field of the map ``key``."""

    @abstractmethod
    async def drop_entry(self, key: str, field: str) -> None: ...

    # -- leases ---------------------------------------------------------------------------------------------

    @abstractmethod
    async def acquire(self, key: str, holder: str, ttl: float) -> bool:
        """Take the lease ``key`` for ``holder`` (or renew it when ``holder`` has it) for ``ttl`` seconds;
        False when another holder has it."""

    @abstractmethod
    async def release(self, key: str, holder: str) -> None:
        """Give the lease back, if ``holder`` still has it."""

    # -- a bounded space ------------------------------------------------------------------------------------

    @abstractmethod
    async def put_bounded(self, space: str, key: str, value: bytes, ttl: float, budget: int) -> int:
        """Store ``value`` in ``space`` for ``ttl`` seconds, then evict its least recently used entries until it
        holds at most ``budget`` bytes; returns how many were evicted."""

    @abstractmethod
    async def get_bounded(self, space: str, key: str) -> bytes | None:
        """The value, marked as used now (so it is evicted last)."""

    async def aclose(self) -> None:  # noqa: B027 - optional: the in-process store holds none
        """Release connections."""
