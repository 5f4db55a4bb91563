"""An endpoint as the router tracks it: backend, slots in use, health, breaker, learned latency."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ..backends.base import Backend
from ..config.models import BalancerConfig, BreakerConfig, HealthCheckConfig
from .breaker import Breaker
from .latency import LatencyModel

Clock = Callable[[], float]
_tokens = itertools.count()


class Endpoint:
    """One backend instance inside a pool, plus everything the router knows about it."""

    def __init__(self, backend: Backend, pool: str, *, clock: Clock, weight: float = 1.0, max_concurrency: int = 1,
                 breaker: BreakerConfig | None = None, balancer: BalancerConfig | None = None,
                 health_check: HealthCheckConfig | None = None) -> None:
        self.backend = backend
        self.pool = pool
        self.clock = clock
        self.weight = weight
        self.max_concurrency = max_concurrency
        self.balancer = balancer or BalancerConfig()
        self.health_check = health_check or HealthCheckConfig()
        self.breaker = Breaker(breaker or BreakerConfig(), clock)
        self.latency = LatencyModel(self.balancer.latency_half_life)
        self.inflight = 0
        #: None until the first health check; unknown counts as healthy so a fresh router can serve
        self.healthy: bool | None = None
        self.detail = ""
        self.last_check: float | None = None
        self.last_error = ""
        self.served = 0
        self.picks = 0
        self.data: dict[str, Any] = {}
        self._passes = 0
        self._fails = 0
        #: when the endpoint last joined the rotation; slow start ramps its weight from there
        self.available_since = -math.inf
        self._running: dict[int, float] = {}
        #: identity of the configuration this endpoint was built from; a reload keeps it when unchanged
        self.key = ""
        #: takes no new requests and finishes those in flight (admin drain, or removed by a reload)
        self.draining = False
        #: removed by a reload: closed once idle
        self.retired = False

    def __repr__(self) -> str:
        return f"Endpoint(name={self.name!r}, pool={self.pool!r}, state={self.state!r}, inflight={self.inflight})"

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def available(self) -> bool:
        """Healthy as far as active checks know (the breaker is separate)."""
        return self.healthy is not False

    @property
    def in_rotation(self) -> bool:
        return self.available and not self.draining and self.breaker.can_allow()

    @property
    def has_capacity(self) -> bool:
        return self.inflight < self.max_concurrency

    # -- health ---------------------------------------------------------------------------------------------

    def record_check(self, healthy: bool, detail: str = "") -> bool:
        """Apply one health check result with the thresholds; return whether the state changed."""
        import time

        self.last_check = time.time()
        self.detail = detail
        if healthy:
            self._passes, self._fails = self._passes + 1, 0
        else:
            self._fails, self._passes = self._fails + 1, 0
            self.last_error = detail
        before = self.healthy
        if before is None:
            self.healthy = healthy
        elif before and self._fails >= self.health_check.unhealthy_threshold:
            self.healthy = False
        elif not before and self._passes >= self.health_check.healthy_threshold:
            self.healthy = True
            self.joined()
        return before != self.healthy

    def mark_down(self, detail: str) -> bool:
        """Passive: the endpoint refused a connection. The next passing health check brings it back."""
        changed = self.healthy is not False
        self.healthy, self.detail, self.last_error = False, detail, detail
        self._passes = 0
        return changed

    def joined(self) -> None:
        self.available_since = self.clock()

    # -- balancing ------------------------------------------------------------------------------------------

    def slow_start_factor(self) -> float:
        ramp = self.balancer.slow_start
        if ramp <= 0:
            return 1.0
        return min(1.0, max(0.1, (self.clock() - self.available_since) / ramp))

    def success_factor(self) -> float:
        return max(0.05, 1.0 - self.breaker.failure_ratio())

    def effective_weight(self) -> float:
        """Configured weight x health (success rate) x slow start."""
        return self.weight * self.success_factor() * self.slow_start_factor()

    def start(self, predicted: float | None) -> int:
        """Take a slot; remember when this request should finish (for estimating waits)."""
        self.inflight += 1
        token = next(_tokens)
        self._running[token] = self.clock() + (predicted or 0.0)
        return token

    def finish(self, token: int) -> None:
        self.inflight = max(0, self.inflight - 1)
        self._running.pop(token, None)

    def free_in(self) -> float:
        """Seconds until a slot is expected to free up (0 when one is free now)."""
        if self.has_capacity or not self._running:
            return 0.0
        return max(0.0, min(self._running.values()) - self.clock())

    # -- views ----------------------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.draining:
            return "draining"
        if self.healthy is False:
            return "down"
        if self.breaker.ejected:
            return "ejected"
        return "up" if self.healthy else "unknown"

    def describe(self) -> dict[str, object]:
        """The public view used by ``/health`` and ``speech-router endpoints``."""
        url = self.backend.endpoint.url
        if url:  # never show credentials embedded in a URL
            parts = urlsplit(url)
            url = parts._replace(netloc=(parts.hostname or "") + (f":{parts.port}" if parts.port else "")).geturl()
        fit = self.latency.fit()
        breaker = self.breaker
        ejected = breaker.ejected  # also moves an expired open breaker to half_open
        return {
            "name": self.name, "pool": self.pool, "type": self.backend.type, "url": url, "state": self.state,
            "healthy": self.available, "draining": self.draining, "detail": self.detail, "inflight": self.inflight,
            "max_concurrency": self.max_concurrency, "weight": self.weight,
            "effective_weight": round(self.effective_weight(), 3), "served": self.served,
            "breaker": {"state": breaker.state.value, "trips": breaker.trips,
                        "failure_ratio": round(breaker.failure_ratio(), 3),
                        "retry_after": round(breaker.retry_after(), 1) if ejected else None},
            "latency": {"base_s": round(fit[0], 4), "per_char_s": round(fit[1], 6)} if fit else None,
            "last_check": self.last_check, "last_error": self.last_error, **({"data": self.data} if self.data else {}),
        }
