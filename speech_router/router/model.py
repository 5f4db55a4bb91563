"""What an endpoint will take for a text of a given length with a given number of requests in flight.

    seconds = shape(chars) x level x queueing(n)        queueing(n) = 1 + max(0, n - parallel) / parallel

- ``shape``: ``base + per_char x chars``, a decaying least-squares fit (``LatencyModel``), so long and
  short texts compare fairly.
- ``level``: how fast the endpoint is *now* against its shape, a peak-sensitive average (Finagle's peak
  EWMA): a slower answer moves it up at once, faster ones bring it down over a few answers. A try that
  timed out is an observation too (it took longer than its timeout), so a fleet that slows down is
  followed instead of being locked out by timeouts learned while it was fast.
- ``parallel``: how many requests the endpoint really works on at once (its throughput curve's knee). Up
  to that many run side by side without slowing each other; beyond it requests queue inside the node, one
  service each per turn. A node that synthesizes one request at a time has 1; an emulated node with four
  GPU slots has 4. ``n`` is the number in flight when the request started, itself included: for a node
  that works first come first served that is exact (the third of three requests sent at once waits two
  services), and it is what the scheduler knows when it decides.

``parallel`` is chosen among 1 .. ``max_concurrency`` as the value whose predictions fit recent answers
best: each candidate keeps its own ``level`` and a fading sum of its squared log errors (a bank of
models), so a node that changes speed misleads every candidate alike and only the *pattern* across
requests in flight tells them apart. ``speech_router.router.limits`` uses it as the endpoint's useful
concurrency.
"""

from __future__ import annotations

import math

from .latency import LatencyModel

#: how far one answer moves ``level`` towards itself: slower answers at once, faster ones gradually
LEVEL_UP = 0.5
LEVEL_DOWN = 0.2
#: a timed-out try took at least its timeout; it is counted as this much longer
CENSORED_MARGIN = 1.25
#: how much of its past each candidate's error keeps per informative answer
ERROR_MEMORY = 0.9
#: informative answers (started with others in flight) before ``parallel`` counts as learned
MIN_INFORMATIVE = 3
#: the largest ``parallel`` considered (larger limits are taken as configured)
MAX_CANDIDATES = 64


def queueing(n: float, parallel: float) -> float:
    """How many services a request takes that started with ``n`` in flight (itself included)."""
    return 1.0 + max(0.0, n - parallel) / parallel


class EndpointModel:
    """One endpoint's latency: shape x level x queueing beyond its parallelism."""

    def __init__(self, half_life: float = 30.0, max_parallel: int = 4) -> None:
        self.shape = LatencyModel(half_life)
        self.max_parallel = max(1, max_parallel)
        candidates = min(self.max_parallel, MAX_CANDIDATES)
        self._levels = [1.0] * candidates
        self._errors = [0.0] * candidates
        #: the parallelism assumed until learned: the configured bound (optimistic, as a fresh limit is)
        self._best = candidates - 1
        self.informative = 0

    def __repr__(self) -> str:
        return (f"EndpointModel(fit={self.shape.fit()}, level={self.level:.3f}, parallel={self.parallel:g}, "
                f"samples={self.shape.samples})")

    @property
    def level(self) -> float:
        return self._levels[self._best]

    @property
    def parallel(self) -> float:
        return float(self._best + 1)

    @property
    def known(self) -> bool:
        return self.shape.known

    @property
    def parallel_known(self) -> bool:
        return self.informative >= MIN_INFORMATIVE

    def unloaded(self, chars: int) -> float | None:
        """Expected seconds for ``chars`` alone on the endpoint, at its current speed; None before any history."""
        base = self.shape.predict(chars)
        return None if base is None else base * self.level

    def predict(self, chars: int, n: float = 1.0, prior: float | None = None, now: float = 0.0) -> float | None:
        """Expected seconds for a request that starts with ``n`` in flight, itself included.

        ``prior`` (the rest of the pool's unloaded estimate) fills in for an endpoint with no history, and
        takes over as its own estimate grows old (half of it after a half-life without an answer), so an
        endpoint once slow is tried again when it has been left alone: a stale estimate cannot keep it out.
        """
        own = self.unloaded(chars)
        if own is None:
            unloaded = prior
        elif prior is None:
            unloaded = own
        else:
            fresh = self.shape.freshness(now)
            unloaded = fresh * own + (1.0 - fresh) * prior
        return None if unloaded is None else unloaded * queueing(n, self.parallel)

    def observe(self, chars: int, seconds: float, n: int, now: float) -> None:
        """A completed try: ``seconds`` from start to the last byte; ``n`` in flight when it started."""
        if seconds <= 0:  # no time at all says nothing (a clock that did not move)
            return
        base = self.shape.predict(chars)
        if base is not None and base > 0 and seconds > 0:
            for i, level in enumerate(self._levels):
                ratio = seconds / (base * queueing(n, i + 1))
                if n > 1:
                    miss = math.log(ratio / level)
                    self._errors[i] = ERROR_MEMORY * self._errors[i] + miss * miss
                self._levels[i] = level + (LEVEL_UP if ratio > level else LEVEL_DOWN) * (ratio - level)
            if n > 1:
                self.informative += 1
                best = min(self._errors)
                # the largest parallelism among the (near) best: equal fits favour throughput
                self._best = max(i for i, e in enumerate(self._errors) if e <= best * 1.05 + 1e-9)
        self.shape.observe(chars, seconds / (self.level * queueing(n, self.parallel)), now)

    def observe_timeout(self, chars: int, timeout: float, n: int) -> None:
        """A try that did not answer within ``timeout``: the endpoint is at least that slow now."""
        base = self.shape.predict(chars)
        if base is None or base <= 0:
            return
        for i, level in enumerate(self._levels):
            ratio = CENSORED_MARGIN * timeout / (base * queueing(n, i + 1))
            if ratio > level:
                self._levels[i] = level + LEVEL_UP * (ratio - level)

    def fit(self) -> tuple[float, float] | None:
        """(base seconds, seconds per character) alone on the endpoint at its current speed, for views."""
        fit = self.shape.fit()
        return None if fit is None else (fit[0] * self.level, fit[1] * self.level)
