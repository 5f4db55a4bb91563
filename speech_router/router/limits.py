"""How many requests an endpoint should have in flight: learned, ramped after joining, never above the config.

``max_concurrency`` in YAML is an upper bound, not a guess that must be right. The useful concurrency
is the endpoint's learned parallelism (``EndpointModel.parallel``: how many requests it really works on
at once): beyond it a request only waits inside the node, where no other endpoint can take it. A node
that synthesizes one request at a time gets a limit of 1 and requests wait in the router, where any
endpoint that frees first can take them. In the spirit of Envoy's adaptive concurrency and Netflix's
concurrency limits, read off a model of the throughput curve rather than a gradient on one latency,
because texts differ in length.

The limit is re-checked now and then (a *stretch*: one request above it while requests wait), so an
endpoint that gets more capacity is noticed. A node that says it is overloaded (429/503) caps the limit
below what it had in flight for ``OVERLOAD_HOLD`` seconds (AIMD's decrease).

Slow start limits a joining or recovering endpoint's *share* of new work (Envoy's slow start scales a
host's weight; it never makes it ineligible): its ``share`` ramps from 1 to the limit over the window, and
the scheduler prefers endpoints within their share. It is never a reason to wait: a request that would
otherwise wait takes an endpoint in slow start up to its limit, and a pool whose endpoints mostly joined
together (a fleet restarted, a router started before its fleet) has nobody to protect them from, so their
ramp does not apply (``speech_router.router.choice``). Finagle goes further: a node with no history is
priced by its outstanding requests alone, with no ramp at all.
"""

from __future__ import annotations

import math

from .model import EndpointModel

#: seconds between stretches above the learned limit, per endpoint
STRETCH_INTERVAL = 5.0
#: seconds an overload signal holds the cap down
OVERLOAD_HOLD = 10.0


class ConcurrencyLimit:
    """One endpoint's cap on requests in flight."""

    def __init__(self, maximum: int, *, adaptive: bool = True, slow_start: float = 0.0) -> None:
        self.maximum = maximum
        self.adaptive = adaptive
        self.slow_start = slow_start
        self.joined_at = -math.inf
        self.next_stretch = -math.inf
        self.overload_cap: int | None = None
        self.overload_until = -math.inf

    def __repr__(self) -> str:
        return f"ConcurrencyLimit(maximum={self.maximum}, adaptive={self.adaptive}, slow_start={self.slow_start})"

    def learned(self, model: EndpointModel, now: float) -> int:
        """The useful concurrency (the configured maximum until the curve is known), overloads considered."""
        limit = self.maximum
        if self.adaptive and model.parallel_known:
            limit = max(1, min(self.maximum, math.floor(model.parallel)))
        if self.overload_cap is not None and now < self.overload_until:
            limit = min(limit, self.overload_cap)
        return limit

    def ramp(self, now: float) -> float:
        """Slow start: the share of the limit available ``now`` (1 once the window has passed)."""
        if self.slow_start <= 0:
            return 1.0
        return min(1.0, max(0.0, (now - self.joined_at) / self.slow_start))

    def ramping(self, now: float) -> bool:
        """Whether it is in its slow start window."""
        return self.ramp(now) < 1.0

    def share(self, model: EndpointModel, now: float) -> int:
        """Requests it takes in flight while others have room (slow start): the limit, ramped; at least 1."""
        limit = self.learned(model, now)
        return max(1, min(limit, math.ceil(limit * self.ramp(now) - 1e-9)))

    def joined(self, now: float) -> None:
        """The endpoint (re)joined the rotation: new, undrained, healthy again or its breaker closed."""
        self.joined_at = now

    def may_stretch(self, model: EndpointModel, now: float) -> bool:
        """Whether one request above the learned limit may go now, to re-measure the curve there."""
        return self.adaptive and self.learned(model, now) < self.maximum and self.ramp(now) >= 1.0 \
            and now >= self.next_stretch and (self.overload_cap is None or now >= self.overload_until)

    def stretched(self, now: float) -> None:
        self.next_stretch = now + STRETCH_INTERVAL

    def overloaded(self, inflight: int, now: float) -> None:
        """The endpoint said it is full with ``inflight`` requests: hold the cap below that for a while."""
        self.overload_cap = max(1, inflight - 1)
        self.overload_until = now + OVERLOAD_HOLD
