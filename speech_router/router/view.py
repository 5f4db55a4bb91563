"""One moment's view of a pool for the scheduler's decisions: who may be used, and when each slot frees.

``View`` is built once per pass over the queue (``Choice.view``); its ``SlotPlan`` starts as the pool's
slots now (free, or busy for the expected rest of the request in it) and fills as the waiting requests
take, in turn, the slots they wait for. A ``Decision`` is what one request does in that view.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .endpoint import Endpoint
from .ticket import Placement, Ticket

#: ``(chars, leave_out)`` -> the rest of the pool's median unloaded estimate for ``chars``
Prior = Callable[[int, "Endpoint | None"], "float | None"]


class SlotPlan:
    """When each slot of the pool's endpoints is expected to free: 0 for a free slot, else the expected
    remaining time of the request in it; requests that wait take the slot they wait for (``take``), so
    the next one's expected wait counts them."""

    def __init__(self) -> None:
        self._slots: dict[Endpoint, list[float]] = {}

    def __repr__(self) -> str:
        return f"SlotPlan({ {ep.name: [round(t, 3) for t in ts] for ep, ts in self._slots.items()} })"

    def add(self, ep: Endpoint, times: list[float]) -> None:
        self._slots[ep] = sorted(times)

    def earliest(self, ep: Endpoint) -> float:
        slots = self._slots.get(ep)
        return slots[0] if slots else math.inf

    def free(self, ep: Endpoint) -> bool:
        return self.earliest(ep) <= 0.0

    def take(self, ep: Endpoint, until: float) -> None:
        """The slot that frees first is taken until ``until`` (seconds from now)."""
        slots = self._slots.get(ep)
        if slots:
            slots.pop(0)
            bisect.insort(slots, until)

    def first_free(self) -> float:
        """Seconds until any slot frees (0: one is free now)."""
        return min((ts[0] for ts in self._slots.values() if ts), default=math.inf)


@dataclass
class View:
    """One moment's view of the pool, shared by the decisions of one pass over the queue."""

    now: float
    prior: Prior
    #: endpoints in rotation, or (no endpoint in rotation) every endpoint not draining: panic mode
    endpoints: list[Endpoint]
    panic: bool
    peers_parallel: float | None = None
    #: whether slow start ramps shares (most of the pool's capacity is out of its window)
    ramp: bool = True
    plan: SlotPlan = field(default_factory=SlotPlan)
    _costs: dict[tuple[Endpoint, int, int], float] = field(default_factory=dict)

    def candidates(self, ticket: Ticket) -> list[Endpoint]:
        """The endpoints ``ticket`` may use: outside its exclusions, panic mode only where it allows it."""
        if self.panic and not ticket.allow_panic:
            return []
        return [ep for ep in self.endpoints if ep.name not in ticket.exclude]


@dataclass
class Decision:
    """What a ticket does now: take ``endpoint`` (for ``placement``), or wait; ``wait``: the expected wait
    (None: unknown), ``until``: when the slot it waits for is expected to be done with it."""

    endpoint: Endpoint | None = None
    placement: Placement | None = None
    wait: float | None = None
    waits_for: Endpoint | None = None
    until: float = math.inf


