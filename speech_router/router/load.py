"""Load signals: each endpoint's own load, read from the node, so router replicas see each other's requests.

A router replica knows only its own requests in flight. When several replicas share nodes, each
thinks a node is free while the others fill it, and vllm-omni queues the excess inside the engine
without bound (it has no admission control). A node that reports its load (``load()``: vllm-omni's
``vllm_omni:num_requests_running`` + ``..._waiting`` from ``/metrics``) is polled every
``load_signal.interval`` seconds, and what it has beyond this router's own requests becomes
``Endpoint.external``; the scheduler counts ``busy = own + external`` for capacity and expected times.

Off unless the pool sets ``load_signal.enabled``, and for backend types that report no load. A read
that fails (or an endpoint that is down) sets ``external`` back to 0: the router falls back on its own
count rather than trust an old number. Reads are spread with jitter so replicas do not poll in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import weakref
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ..config.models import LoadSignalConfig
from .endpoint import Endpoint

log = logging.getLogger(__name__)

#: share of the interval added or removed at random between reads
JITTER = 0.1
#: a node claiming more requests than this is treated as this busy (a bound, not a plausible value)
MAX_EXTERNAL = 100_000


class NodeLoadReading(Protocol):
    """What a load read returns: requests in the node's engine, and requests waiting for it."""

    @property
    def running(self) -> float: ...

    @property
    def waiting(self) -> float: ...


@runtime_checkable
class ReportsLoad(Protocol):
    """A backend that can say how busy its node is (``VllmOmniBackend``); raises ``BackendError`` when it cannot."""

    async def load(self) -> NodeLoadReading: ...


class LoadObserver(Protocol):
    """Who hears of each read (the app's ``Metrics``): requests on the node from elsewhere, or a failure."""

    def load_read(self, pool: str, endpoint: str, external: int, failed: bool) -> None: ...


class _Unobserved:
    def load_read(self, pool: str, endpoint: str, external: int, failed: bool) -> None:
        pass


def external_requests(reading: NodeLoadReading, own: int) -> int:
    """The node's requests that are not this router's: ``max(0, running + waiting - own)``; ``ValueError``
    for a reading that is not a count (NaN, infinite, negative)."""
    total = float(reading.running) + float(reading.waiting)
    if not math.isfinite(total) or reading.running < 0 or reading.waiting < 0:
        raise ValueError(f"not a request count: running={reading.running!r}, waiting={reading.waiting!r}")
    return min(MAX_EXTERNAL, max(0, round(total) - own))


class LoadSignals:
    """The fleet's load pollers: one task per endpoint whose pool turned them on and whose backend reports load."""

    def __init__(self, wake: Callable[[Endpoint], None], rng: random.Random | None = None) -> None:
        self.wake = wake
        self.rng = rng or random.Random()
        #: told of every read; the app sets its metrics here
        self.observer: LoadObserver = _Unobserved()
        self._configs: weakref.WeakKeyDictionary[Endpoint, LoadSignalConfig] = weakref.WeakKeyDictionary()
        self._tasks: dict[Endpoint, asyncio.Task[None]] = {}
        #: endpoints whose last read failed (a warning is logged once per outage)
        self._failing: set[Endpoint] = set()

    def __repr__(self) -> str:
        return f"LoadSignals(polling={len(self._tasks)})"

    def plan(self, ep: Endpoint, config: LoadSignalConfig) -> None:
        """Remember the pool's setting for an endpoint being built (``start`` reads it)."""
        self._configs[ep] = config

    def start(self, ep: Endpoint) -> None:
        """Poll ``ep`` in the background if its pool asks for it and its backend can say its load."""
        config = self._configs.get(ep)
        if config is None or not config.enabled or ep in self._tasks or not isinstance(ep.backend, ReportsLoad):
            return
        self._tasks[ep] = asyncio.create_task(self._poll(ep, config.interval), name=f"load-signal {ep.name}")

    def stop(self, ep: Endpoint) -> None:
        """Stop polling ``ep`` (retired by a reload); what it knew of other replicas goes with it."""
        task = self._tasks.pop(ep, None)
        if task is not None:
            task.cancel()
        self._failing.discard(ep)
        ep.load_reported(0)

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def polled(self) -> list[Endpoint]:
        return list(self._tasks)

    async def read_once(self, ep: Endpoint) -> None:
        """One read of ``ep``'s load, applied: ``external`` set (0 when the read fails), the pool woken when it fell."""
        backend = ep.backend
        assert isinstance(backend, ReportsLoad)
        if not ep.available:  # down: nothing to read, and nothing to count
            self._set(ep, 0)
            self.observer.load_read(ep.pool, ep.name, 0, False)
            return
        before = ep.inflight
        try:
            external = external_requests(await backend.load(), max(before, ep.inflight))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a node answers, the router keeps its own count
            self._failed(ep, exc)
            self._set(ep, 0)
            self.observer.load_read(ep.pool, ep.name, 0, True)
            return
        if ep in self._failing:
            self._failing.discard(ep)
            log.info("load signal of endpoint %s in pool %s is read again", ep.name, ep.pool)
        self._set(ep, external)
        self.observer.load_read(ep.pool, ep.name, external, False)

    async def _poll(self, ep: Endpoint, interval: float) -> None:
        await asyncio.sleep(self.rng.uniform(0, interval))  # replicas and endpoints out of step from the start
        while True:
            try:
                await self.read_once(ep)
            except Exception:  # noqa: BLE001 - a bug here must not end the polling silently
                log.exception("load signal of endpoint %s: reading failed", ep.name)
            await asyncio.sleep(interval * self.rng.uniform(1 - JITTER, 1 + JITTER))

    def _set(self, ep: Endpoint, external: int) -> None:
        if ep.load_reported(external):  # capacity freed elsewhere: requests waiting in this router may go now
            self.wake(ep)

    def _failed(self, ep: Endpoint, exc: Exception) -> None:
        if ep not in self._failing:  # said once per outage, not once per read
            self._failing.add(ep)
            reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            log.warning("load signal of endpoint %s in pool %s cannot be read (%s); using this router's own "
                        "count until it can", ep.name, ep.pool, reason)
