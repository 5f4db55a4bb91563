"""An endpoint as the router tracks it: backend, slots in use, health, breaker, learned model and limit.

Everything an endpoint knows changes through its own methods, each in one place: slots (``start``,
``finish``), what is learned from a try (``learn``), health (``record_check``, ``mark_down``,
``passed``), rotation (``joined``, ``drain``), exploring and stretching (``explored``, ``stretched``),
others' load on the node (``load_reported``), settings and inheritance across reloads (``configure``,
``inherit``). Only its breaker is tripped from outside: by the pool's outlier detection, which compares
the endpoint with its peers.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..backends.base import Backend
from ..config.models import BalancerConfig, BreakerConfig, HealthCheckConfig
from .breaker import Breaker
from .clock import Clock
from .latency import LatencyModel
from .limits import ConcurrencyLimit
from .model import EndpointModel
from .outlier import Outcome, OutcomeWindow

_tokens = itertools.count()
#: how many of its latest voices an endpoint remembers for voice affinity
RECENT_VOICES = 16


@dataclass
class Running:
    """A request holding one of the endpoint's slots."""

    started: float
    chars: int
    #: requests in flight on the endpoint when it started, itself included
    n: int


@dataclass
class Finished:
    """A slot given back: how long it was held, and how many were in flight when it started."""

    seconds: float
    n: int
    chars: int


class Endpoint:
    """One backend instance inside a pool, plus everything the router knows about it."""

    def __init__(self, backend: Backend, pool: str, *, clock: Clock, weight: float = 1.0, max_concurrency: int = 1,
                 breaker: BreakerConfig | None = None, balancer: BalancerConfig | None = None,
                 health_check: HealthCheckConfig | None = None, shape: LatencyModel | None = None) -> None:
        self.backend = backend
        self.pool = pool
        self.clock = clock
        self.weight = weight
        self.max_concurrency = max_concurrency
        self.balancer = balancer = balancer or BalancerConfig()
        self.health_check = health_check or HealthCheckConfig()
        breaker = breaker or BreakerConfig()
        self.breaker = Breaker(breaker, clock)
        self.window = OutcomeWindow(breaker.window)
        #: ``shape``: the latency shape its pool shares (one of its own when alone)
        self.model = EndpointModel(balancer.latency_half_life, max_concurrency, shape,
                                   learn_parallel=balancer.adaptive_concurrency)
        self.limit = ConcurrencyLimit(max_concurrency, adaptive=balancer.adaptive_concurrency,
                                      slow_start=balancer.slow_start)
        self.running: dict[int, Running] = {}
        #: requests on the node from elsewhere (other router replicas), as last read from the node's own load
        self.external = 0
        #: voices it served lately, newest last (voice affinity: its speaker conditioning may be cached)
        self.recent_voices: deque[str] = deque(maxlen=RECENT_VOICES)
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
    def inflight(self) -> int:
        return len(self.running)

    @property
    def busy(self) -> int:
        """Requests on the node now: the router's own, plus those of others when the node reports its load."""
        return len(self.running) + self.external

    @property
    def available(self) -> bool:
        """Healthy as far as active checks know (the breaker is separate)."""
        return self.healthy is not False

    @property
    def in_rotation(self) -> bool:
        return self.available and not self.draining and self.breaker.can_allow()

    @property
    def suspect(self) -> bool:
        """Under suspicion: a try timed out since its last answer, or its breaker is letting a probe through."""
        return self.model.suspect or self.breaker.state.value == "half_open"

    def cap(self) -> int:
        """Requests it may have in flight now: its learned limit; one probe at a time while half-open."""
        if self.breaker.state.value == "half_open":
            return 1
        return self.limit.learned(self.model, self.clock())

    def share(self, ramp: bool = True) -> int:
        """Requests it takes while other endpoints have room: its cap, ramped in slow start (``ramp``)."""
        if not ramp or self.breaker.state.value == "half_open":
            return self.cap()
        return self.limit.share(self.model, self.clock())

    def ramping(self) -> bool:
        """In its slow start window (its share is ramping up)."""
        return self.limit.ramping(self.clock())

    # -- health ---------------------------------------------------------------------------------------------

    def record_check(self, healthy: bool, detail: str = "", data: dict[str, Any] | None = None) -> bool:
        """Apply one health check result with the thresholds (``data``: what the node reported of itself); return
        whether the state changed."""
        self.last_check = time.time()
        self.detail = detail
        if data is not None:
            self.data = data
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

    def configure(self, *, weight: float, max_concurrency: int, breaker: BreakerConfig,
                  balancer: BalancerConfig) -> None:
        """New routing settings from a reload, keeping what was learned (the limit's bound, the breaker's
        thresholds, the balancer's knobs)."""
        self.weight = weight
        adaptive = balancer.adaptive_concurrency
        if max_concurrency != self.max_concurrency or adaptive != self.balancer.adaptive_concurrency:
            self.model = self.model.resized(max_concurrency, adaptive)
        self.max_concurrency = max_concurrency
        self.limit.maximum, self.limit.adaptive = max_concurrency, balancer.adaptive_concurrency
        self.limit.slow_start = balancer.slow_start
        self.model.half_life = balancer.latency_half_life
        self.breaker.config = breaker
        self.window.window = breaker.window
        self.balancer = balancer

    def inherit(self, before: Endpoint) -> None:
        """Take over what was learned of the same node under its previous configuration: its model, health and
        counts (not its breaker: the new configuration may be what fixes it)."""
        self.model = before.model.resized(self.max_concurrency, self.balancer.adaptive_concurrency)
        self.healthy, self.detail, self.last_check = before.healthy, before.detail, before.last_check
        self.served, self.picks = before.served, before.picks
        self.recent_voices.extend(before.recent_voices)

    def passed(self, detail: str) -> bool:
        """Passive: it answered a request while marked down (panic mode tried it): it is serving again."""
        if self.healthy is not False:
            return False
        return self.record_check(True, detail)

    def joined(self) -> None:
        """(Re)joined the rotation: slow start ramps its share from here."""
        self.limit.joined(self.clock())

    def drain(self, draining: bool) -> bool:
        """Takes no new requests (those in flight finish), or back with slow start; returns whether it changed."""
        if self.draining == draining:
            return False
        self.draining = draining
        if not draining:
            self.joined()
        return True

    def load_reported(self, external: int) -> bool:
        """The node's own load says ``external`` requests of others are on it; returns whether that fell."""
        fell = external < self.external
        self.external = external
        return fell

    def explored(self, now: float) -> None:
        """Sent a short text to measure it again: the next look waits for its answer (or another while)."""
        self.model.heard = now

    def stretched(self, now: float) -> None:
        """Given one request above its learned limit."""
        self.limit.stretched(now)

    # -- slots ----------------------------------------------------------------------------------------------

    def start(self, chars: int, voice: str | None = None) -> int:
        """Take a slot for a text of ``chars`` characters; returns the token to give back."""
        token = next(_tokens)
        self.picks += 1
        self.running[token] = Running(self.clock(), chars, self.busy + 1)
        if voice is not None:
            if voice in self.recent_voices:
                self.recent_voices.remove(voice)
            self.recent_voices.append(voice)
        return token

    def finish(self, token: int) -> Finished | None:
        """Give a slot back: how long it was held (None if the token is unknown)."""
        run = self.running.pop(token, None)
        if run is None:
            return None
        return Finished(self.clock() - run.started, run.n, run.chars)

    def learn(self, outcome: Outcome, done: Finished | None, now: float, timeout: float | None = None, *,
              suspect: bool = False) -> None:
        """What a finished try says: its time (an answer, or at least its timeout), an overload, its outcome;
        ``suspect``: the try went out while the endpoint was under suspicion (``EndpointModel.observe``)."""
        if done is not None:
            if outcome == Outcome.OK:
                self.model.observe(done.chars, done.seconds, done.n, now, suspect=suspect)
                self.served += 1
            elif outcome == Outcome.TIMEOUT and timeout is not None:
                self.model.observe_timeout(done.chars, timeout, done.n, now)
            elif outcome == Outcome.OVERLOADED:
                self.limit.overloaded(self.inflight + 1, now)
        self.window.record(outcome, now, now - done.seconds if done is not None else None)

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
        """The public view used by ``/health``, the admin API and ``speech-router endpoints``."""
        url = self.backend.endpoint.url
        if url:  # never show credentials embedded in a URL
            parts = urlsplit(url)
            url = parts._replace(netloc=(parts.hostname or "") + (f":{parts.port}" if parts.port else "")).geturl()
        now = self.clock()
        fit = self.model.fit()
        breaker = self.breaker
        ejected = breaker.ejected  # also moves an expired open breaker to half_open
        return {
            "name": self.name, "pool": self.pool, "type": self.backend.type, "url": url, "state": self.state,
            "healthy": self.available, "draining": self.draining, "detail": self.detail, "inflight": self.inflight,
            **({"external": self.external} if self.external else {}),
            "max_concurrency": self.max_concurrency, "concurrency_limit": self.limit.learned(self.model, now),
            "cap": self.cap(), **({"share": self.share()} if self.ramping() else {}),
            **({"suspect": True} if self.model.suspect else {}), "weight": self.weight, "served": self.served,
            "breaker": {"state": breaker.state.value, "trips": breaker.trips, "reason": breaker.reason or None,
                        "failure_ratio": round(self.window.failure_ratio(now), 3),
                        "retry_after": round(breaker.retry_after(), 1) if ejected else None},
            "latency": {"base_s": round(fit[0], 4), "per_char_s": round(fit[1], 6),
                        "level": round(self.model.level, 3), "parallel": self.model.parallel} if fit else None,
            "last_check": self.last_check, "last_error": self.last_error, **({"data": self.data} if self.data else {}),
        }
