"""Requests in flight per endpoint, across replicas: N replicas together keep a node within its concurrency.

Each replica publishes its own requests in flight per endpoint as its entry of the map ``inflight``, a lease of
``state.lease`` seconds (renewed while it runs, dropped when it stops: a replica that dies stops counting within
the lease), at once when they change and every ``inflight_interval`` seconds; and reads the other replicas'
entries. Their sum per endpoint is the endpoint's *external* load, the same input the vllm-omni load signal
feeds (``Endpoint.load_reported``): the scheduler counts ``own + external`` against the endpoint's learned
limit and in expected times, and requests waiting in this replica are woken when the others' load falls.

Where the pool also reads the node's own load (``load_signal`` on a vllm-omni pool), the node's count is the
truth (it includes every replica's requests and anyone else's): shared counts are not applied there, so
nothing is counted twice. While the store is down the others' requests count 0 (each replica falls back on
its own count, as when a load signal cannot be read).

Changes are published in the event loop's next turn, so a slot given back and taken again by a waiting request
in the same turn is never seen as free by another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable

from ..router.endpoint import Endpoint, Finished
from ..router.events import RouterListener
from ..router.load import MAX_EXTERNAL
from ..router.outlier import Outcome
from ..router.ticket import Lease
from .guard import Guard
from .knowledge import endpoint_key

log = logging.getLogger("speech_router.state")

KEY = "inflight"
#: at most one publication per this many seconds, however often requests start and end
MIN_GAP_S = 0.01
#: a replica whose own requests changed reads the others' again once this long has passed since its last read
READ_GAP_S = 0.02


class InflightSharing(RouterListener):
    """See the module's docstring. A router listener: every pick and every finished try marks a change."""

    def __init__(self, guard: Guard, replica: str, *, lease: float, interval: float,
                 endpoints: Callable[[], list[Endpoint]], polled: Callable[[Endpoint], bool],
                 wake: Callable[[Endpoint], None], on_external: Callable[[Endpoint, int], None] | None = None) -> None:
        self.guard = guard
        self.replica = replica
        self.lease = lease
        self.interval = interval
        self.endpoints = endpoints
        self.polled = polled
        self.wake = wake
        self.on_external = on_external
        self._changed = asyncio.Event()
        self._published: dict[str, int] | None = None
        self._renewed = self._read = -math.inf
        self._task: asyncio.Task[None] | None = None
        #: endpoints whose external count this replica set (so it can set them back to 0)
        self._applied: set[str] = set()
        self._replicas = 1

    def __repr__(self) -> str:
        return f"InflightSharing(replica={self.replica!r}, lease={self.lease})"

    # -- events ---------------------------------------------------------------------------------------------

    def picked(self, pool: str, endpoint: Endpoint, lease: Lease) -> None:
        self._changed.set()

    def attempt_finished(self, endpoint: Endpoint, outcome: Outcome, finished: Finished | None) -> None:
        self._changed.set()

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="state-inflight")
        self.guard.rejoined.append(self.rejoin)

    async def rejoin(self) -> None:
        self._published = None  # publish again, whatever was published before the store went away
        self._changed.set()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # gone: the others stop counting this replica's requests now, not after the lease
        await self.guard.call(lambda: self.guard.store.drop_entry(KEY, self.replica), None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._changed.wait()
            self._changed.clear()
            try:
                await self.exchange(loop.time())
            except Exception:  # noqa: BLE001 - a bug here must not end the sharing silently
                log.exception("sharing requests in flight failed")
            await asyncio.sleep(MIN_GAP_S)

    # -- work -----------------------------------------------------------------------------------------------

    def own(self) -> dict[str, int]:
        """This replica's requests in flight per endpoint (those finishing on retired endpoints too)."""
        counts: dict[str, int] = {}
        for ep in self.endpoints():
            if ep.inflight:
                key = endpoint_key(ep)
                counts[key] = counts.get(key, 0) + ep.inflight
        return counts

    async def exchange(self, now: float) -> None:
        """Publish this replica's counts (when changed, or to renew the lease); read the others' and apply them
        (every ``interval``, or ``READ_GAP_S`` after the last read when this replica's own changed: a replica that
        is placing requests wants fresh counts, and a busy one reads no more often than that)."""
        store = self.guard.store
        own = self.own()
        changed = own != self._published
        if changed or now - self._renewed >= self.lease / 3:
            payload = json.dumps(own, separators=(",", ":")).encode()
            await self.guard.call(lambda: store.put_entry(KEY, self.replica, payload, self.lease), None)
            if self.guard.up:
                self._published, self._renewed = own, now
        if now - self._read < (min(READ_GAP_S, self.interval) if changed else self.interval) and self.guard.up:
            return
        self._read = now
        entries = await self.guard.call(lambda: store.entries(KEY), None)
        if entries is not None:
            self._replicas = len(entries.keys() | {self.replica})
        self.apply(others(entries or {}, self.replica))

    def replicas(self) -> int:
        """How many replicas (this one included) published requests in flight at the last exchange."""
        return self._replicas

    def apply(self, external: dict[str, int]) -> None:
        """Set each endpoint's external load to the others' requests on it; wake its pool when that fell."""
        for ep in self.endpoints():
            key = endpoint_key(ep)
            if self.polled(ep) or (key not in external and key not in self._applied):
                continue
            count = external.get(key, 0)
            if count:
                self._applied.add(key)
            else:
                self._applied.discard(key)
            if ep.load_reported(count):
                self.wake(ep)
            if self.on_external is not None:
                self.on_external(ep, count)


def others(entries: dict[str, bytes], replica: str) -> dict[str, int]:
    """The other replicas' requests in flight, summed per endpoint; an entry that is not counts is skipped."""
    total: dict[str, int] = {}
    for field, raw in entries.items():
        if field == replica:
            continue
        try:
            counts = json.loads(raw)
        except (ValueError, RecursionError):
            continue
        if not isinstance(counts, dict):
            continue
        for key, count in counts.items():
            if isinstance(key, str) and isinstance(count, int) and not isinstance(count, bool) and count > 0:
                total[key] = min(MAX_EXTERNAL, total.get(key, 0) + count)
    return total
