"""``Guard``: the store failing never fails a request.

Every call to the store goes through ``Guard.call``, bounded by ``state.timeout``. The first failure (an
error, or no answer in time) marks the store down: that is logged once, ``speech_router_state_store_up`` goes
to 0, and from then on calls return their fallback at once (the replica's own state) instead of waiting on
a store that is gone. In the background the store is asked every ``retry_interval`` seconds; when it
answers again the replica rejoins: logged once, the gauge back at 1, and the ``rejoined`` callbacks run
(publish this replica's requests in flight and what it learned again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from .store import StateStore, StoreError

log = logging.getLogger("speech_router.state")

T = TypeVar("T")

#: seconds between two tries of a store that is down
RETRY_INTERVAL_S = 1.0
#: seconds a call that moves audio (a cached answer, a voice) may take at least: megabytes, not a few bytes
BULK_TIMEOUT_S = 2.0


class StoreObserver(Protocol):
    """Who hears whether the store answers (the app's ``Metrics``)."""

    def store_up(self, kind: str, up: bool) -> None: ...

    def store_failed(self, kind: str) -> None: ...


class Guard:
    """See the module's docstring."""

    def __init__(self, store: StateStore, *, timeout: float, where: str, observer: StoreObserver | None = None,
                 retry_interval: float = RETRY_INTERVAL_S) -> None:
        self.store = store
        self.timeout = timeout
        #: the store's address without credentials, for logs
        self.where = where
        self.observer = observer
        self.retry_interval = retry_interval
        self.up = True
        self.rejoined: list[Callable[[], Awaitable[None]]] = []
        self._probe: asyncio.Task[None] | None = None
        self._closed = False
        self._report()

    def __repr__(self) -> str:
        return f"Guard(store={self.store!r}, up={self.up})"

    async def call(self, op: Callable[[], Awaitable[T]], fallback: T, *, timeout: float | None = None) -> T:
        """``op()``'s answer, or ``fallback`` when the store is down, fails or does not answer within the timeout
        (``timeout``: longer, for calls that move audio)."""
        if not self.up:
            return fallback
        try:
            async with asyncio.timeout(max(self.timeout, timeout or 0.0)):
                return await op()
        except (StoreError, TimeoutError) as exc:
            self.failed(exc)
            return fallback
        except Exception as exc:  # noqa: BLE001 - whatever a client library raises, the request goes on without it
            self.failed(StoreError(f"{type(exc).__name__}: {exc}"))
            return fallback

    def failed(self, exc: BaseException) -> None:
        """A call failed: count it, and unless already down, go down (said once) and start asking again."""
        if self.observer is not None:
            self.observer.store_failed(self.store.kind)
        if not self.up or self._closed:
            return
        self.up = False
        self._report()
        reason = str(exc) or f"no answer within {self.timeout:g} s"
        log.warning("state store %s cannot be used (%s): this replica uses its own state (limits, requests in "
                    "flight, what it learns, cache, voices it knows) until the store answers again", self.where,
                    reason)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._until_back(), name="state-store-probe")

    async def connect(self) -> bool:
        """Ask the store once (at start); down means the replica starts on its own state and keeps asking."""
        await self.call(self.store.ping, None)
        if self.up:
            log.info("state store %s: shared by this replica", self.where)
        return self.up

    async def _until_back(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.retry_interval)
            try:
                async with asyncio.timeout(self.timeout):
                    await self.store.ping()
            except (StoreError, TimeoutError):
                continue
            self.up = True
            self._probe = None  # a failure while rejoining starts a new probe
            self._report()
            log.info("state store %s answers again: this replica shares its state again", self.where)
            for callback in list(self.rejoined):
                try:
                    await callback()
                except Exception:  # noqa: BLE001 - one part failing to rejoin must not stop the others
                    log.exception("rejoining the state store failed")
            return

    def _report(self) -> None:
        if self.observer is not None:
            self.observer.store_up(self.store.kind, self.up)

    async def aclose(self) -> None:
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.store.aclose()
