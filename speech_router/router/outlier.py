"""Passive outlier detection: when an endpoint's answers say it is worse than its pool, eject it.

Each endpoint keeps a rolling window of its tries' outcomes (``OutcomeWindow``). A failure is
judged at once, against the pool (Envoy's outlier detection acts inline on per-host counters too):

- *errors* (refused or reset connections, 5xx, broken audio) and *timeouts* both count as failures;
- an endpoint is a candidate when ``consecutive_failures`` came in a row, or when at least
  ``min_requests`` tries in the window failed at ``failure_rate`` or more;
- and it is ejected only if it is an **outlier**: its failure rate exceeds the median of the other
  endpoints of the pool that saw traffic by at least ``outlier_margin`` (Envoy's success-rate
  detection, with the pool median instead of mean minus deviations, which means little on 2-4 hosts).

So a whole pool that slows down together (every endpoint timing out alike) is never ejected for it: its
estimates follow the slowdown instead (``EndpointModel``). An endpoint with no peers to compare with is
ejected only for errors, never for being slow. Overloaded answers (429/503), client mistakes and
cancelled tries are not failures and are not recorded here.
"""

from __future__ import annotations

import enum
import statistics
from collections import deque
from collections.abc import Sequence

from ..config.models import BreakerConfig


class Outcome(str, enum.Enum):
    """How one try ended, as the scheduler and breaker see it; values double as metric labels."""

    OK = "ok"
    TIMEOUT = "timeout"  # no answer within the per-try timeout
    ERROR = "error"  # refused or reset connection, 5xx, broken or invalid audio
    OVERLOADED = "overloaded"  # the endpoint said it is full: healthy, retry elsewhere
    REJECTED = "rejected"  # the request is at fault (a client mistake): says nothing about the endpoint
    CANCELLED = "cancelled"  # the client left, a hedge lost, or the client's own deadline ran out

    @property
    def failure(self) -> bool:
        return self in (Outcome.TIMEOUT, Outcome.ERROR)


class OutcomeWindow:
    """Outcomes of one endpoint's tries over the last ``window`` seconds, and failures in a row."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._events: deque[tuple[float, float, Outcome]] = deque()  # (finished, started, outcome)
        self.failures = 0
        self.errors = 0
        self.consecutive = 0
        #: when the first try of the current run of failures in a row started
        self.streak_since = 0.0
        #: the shortest time a try of that run was given before it timed out (inf: none timed out)
        self.streak_budget = float("inf")

    def __repr__(self) -> str:
        return f"OutcomeWindow(tries={len(self._events)}, failures={self.failures}, consecutive={self.consecutive})"

    def record(self, outcome: Outcome, now: float, started: float | None = None) -> None:
        """A try that started at ``started`` (default: now) ended at ``now`` with ``outcome``."""
        if outcome not in (Outcome.OK, Outcome.TIMEOUT, Outcome.ERROR):
            return
        started = now if started is None else started
        self._events.append((now, started, outcome))
        self.failures += outcome.failure
        self.errors += outcome == Outcome.ERROR
        if outcome.failure and not self.consecutive:
            self.streak_since, self.streak_budget = started, float("inf")
        if outcome == Outcome.TIMEOUT:
            self.streak_budget = min(self.streak_budget, now - started)
        self.consecutive = self.consecutive + 1 if outcome.failure else 0
        self.trim(now)

    def trim(self, now: float) -> None:
        horizon = now - self.window
        while self._events and self._events[0][0] < horizon:
            _, _, old = self._events.popleft()
            self.failures -= old.failure
            self.errors -= old == Outcome.ERROR

    def tries(self, now: float) -> int:
        self.trim(now)
        return len(self._events)

    def failure_ratio(self, now: float) -> float:
        self.trim(now)
        return self.failures / len(self._events) if self._events else 0.0

    def since(self, start: float, now: float, slow_after: float = float("inf")) -> tuple[int, float]:
        """(tries, failure ratio) of the tries that started at ``start`` or later and have ended; a try that
        answered but took longer than ``slow_after`` seconds counts as failed (it would have timed out there)."""
        self.trim(now)
        recent = [o.failure or finished - started > slow_after
                  for finished, started, o in self._events if started >= start]
        return len(recent), (sum(recent) / len(recent) if recent else 0.0)

    def clear(self) -> None:
        self._events.clear()
        self.failures = self.errors = self.consecutive = 0
        self.streak_budget = float("inf")


def judge(window: OutcomeWindow, peers: Sequence[OutcomeWindow], config: BreakerConfig, now: float,
          last: Outcome) -> str | None:
    """Why the endpoint behind ``window`` should be ejected after a ``last`` failure, or None.

    ``peers``: the windows of the pool's other endpoints in rotation.
    """
    tries = window.tries(now)
    rate = window.failure_ratio(now)
    if window.consecutive >= config.consecutive_failures:
        why, rate, since = f"{window.consecutive} failures in a row", 1.0, window.streak_since
        slow_after = window.streak_budget
    elif tries >= config.min_requests and rate >= config.failure_rate:
        why, since, slow_after = f"{rate:.0%} of {tries} tries failed", now - window.window, float("inf")
    else:
        return None
    # the peers' tries started over the same stretch of time: a peer that finished none of them cannot say
    # whether the trouble is shared (a pool slowing down together reports its first timeouts at once); a
    # peer's answer that took longer than this endpoint's tries were given is the same slowness, answered
    # only because it was given longer (a later try, with the timeout the slowdown taught)
    seen = [ratio for count, ratio in (peer.since(since, now, slow_after) for peer in peers) if count]
    if not seen and last == Outcome.ERROR:  # errors are the endpoint's own: the peers' window will do
        seen = [peer.failure_ratio(now) for peer in peers if peer.tries(now)]
    if not seen:  # nobody to compare with: errors say something, slowness alone does not
        return why if last == Outcome.ERROR and window.errors > 0 else None
    median = statistics.median(seen)
    if rate - median < config.outlier_margin:
        return None  # the pool shares the trouble: ejecting would only shrink it
    return f"{why}, against {median:.0%} for the rest of the pool"
