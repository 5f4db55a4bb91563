"""One attempt loop for every request, plain or a segment of a fanned-out text.

    for each pool of the route:            (a *fallback* moves to the next pool)
        acquire a slot  ->  try  ->  classify the outcome  ->  done, retry, or fall back

A try starts the synthesis on the lease's endpoint and waits for its first byte, or for the whole
answer when it is verified (``whole``), within the per-try timeout. Its outcome is given back to the
pool at once (``Pool.finish``), which is where the scheduler learns. Then:

- a *client mistake* the node reported (``BackendRejected``: a reference file it does not have, a
  missing field, an emotion vector it refuses) never counts against the endpoint and never falls back
  to another pool; it is tried on at most one other endpoint when the node says the problem may be
  local to it (reference files may exist on some nodes only), then answered as a 4xx;
- other failures are retried on another endpoint of the pool (never one already tried) within
  ``max_attempts``, the request's deadline and the pool's retry budget; after a timeout the next try
  gets twice the time, so a fleet that slowed down is not locked out by its own timeouts;
- when the pool is used up, unhealthy or its queue refuses, the next pool of the route is tried.

A try on an endpoint under suspicion (a timeout since its last answer, or its breaker's half-open
probe) is hedged, as every try is with ``hedge.enabled`` (``hedge.Hedging``).

Cancellation (the client left, a hedge lost) and the client's own short deadline never count against
the endpoint. Nothing is retried once a byte has reached the client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..audio import InvalidAudio
from ..errors import (
    BackendError,
    BackendFailed,
    BackendOverloaded,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    DeadlineExceeded,
    QueueFull,
    QueueTimeout,
    Unavailable,
)
from ..types import AudioResponse, SynthesisRequest
from .body import ReadAhead, read_head, replay
from .clock import Clock
from .endpoint import Endpoint
from .events import RouterListener
from .hedge import Hedging
from .outlier import Outcome
from .pool import Pool
from .spoken import as_spoken_by, unreachable
from .spool import Spool
from .ticket import Lease, Ticket

log = logging.getLogger(__name__)

#: each timeout of a request doubles the time its next try gets
TIMEOUT_GROWTH = 2.0

#: a check of a whole answer (its bytes in pieces, format, the characters asked for): raises ``InvalidAudio`` when
#: it is not audio a client may have (``speech_router.audio.check_audio``)
Validate = Callable[[Iterable[bytes], str, int], None]


@dataclass
class Dispatched:
    """A synthesis under way: the audio, and where and how it was obtained."""

    response: AudioResponse
    endpoint: Endpoint | None
    pool: Pool | None
    attempts: int
    queued: float = 0.0
    fallback_reason: str | None = None
    errors: list[str] = field(default_factory=list)


def affinity_key(request: SynthesisRequest) -> str | None:
    """What identifies the request's voice for voice affinity: its name, or the drop-in's reference path."""
    if request.passthrough is not None:
        path = request.passthrough.get("spk_audio_path")
        return path if isinstance(path, str) else None
    return request.voice


def classify(exc: BackendError) -> Outcome:
    """What a backend's error says about the endpoint."""
    if isinstance(exc, BackendTimeout):
        return Outcome.TIMEOUT
    if isinstance(exc, BackendOverloaded):
        return Outcome.OVERLOADED
    if isinstance(exc, BackendRejected):
        return Outcome.REJECTED
    return Outcome.ERROR


def retry_reason(exc: BackendError) -> str | None:
    """The ``retry.on`` word for a failure, or None when no other endpoint could do better."""
    if isinstance(exc, BackendUnavailable):
        return "connect"
    if isinstance(exc, BackendTimeout):
        return "timeout"
    if isinstance(exc, BackendOverloaded):
        return "overloaded"
    if isinstance(exc, BackendFailed):
        return "5xx" if exc.status and exc.status >= 500 else "invalid_audio"
    return None


class AttemptLoop:
    """Runs requests along their routes; ``route_of(model)`` is the model's current route (reloads change it)."""

    def __init__(self, route_of: Callable[[str], list[Pool]], clock: Clock, listener: RouterListener,
                 validate: Validate | None = None) -> None:
        self.route_of = route_of
        self.clock = clock
        self.listener = listener
        self.validate = validate
        self.hedging = Hedging(listener)

    def __repr__(self) -> str:
        return f"AttemptLoop(validate={self.validate!r})"

    async def run(self, request: SynthesisRequest, *, deadline: float, priority: str = "interactive",
                  whole: bool = False, spread: bool = False) -> Dispatched:
        """Along the model's route until an endpoint answers; raises the last pool's error otherwise.

        ``spread``: one of several parts of a request meant to run side by side (fan-out segments): no voice
        affinity, which would gather them on the endpoint that served the voice."""
        route = list(self.route_of(request.model))
        reason: str | None = None
        errors: list[str] = []
        last: Exception | None = None
        i = -1
        while (i := i + 1) < len(route):
            pool = route[i]
            spoken = request if i == 0 else as_spoken_by(pool, request)  # router/spoken.py
            if spoken is None:
                continue
            try:
                result = await self.in_pool(pool, spoken, deadline=deadline, priority=priority, errors=errors,
                                            last_pool=i == len(route) - 1, whole=whole, spread=spread)
            except (Unavailable, BackendError) as exc:
                if isinstance(exc, DeadlineExceeded) or (isinstance(exc, BackendError) and retry_reason(exc) is None):
                    raise  # a client mistake, or no time left: no other pool can do better
                if pool.retired:  # a reload removed it meanwhile: the model's current route goes on
                    route += [p for p in self.route_of(request.model) if p not in route]
                last, reason = exc, exc.code if isinstance(exc, Unavailable) else "attempts_exhausted"
                continue
            if i > 0:
                result.fallback_reason = reason
                self.listener.fell_back(request.model, route[0].name, pool.name, reason or "")
            result.errors = errors
            return result
        if last is None:
            raise BackendRejected(f"no pool of model {request.model!r} can speak voice {request.voice!r}")
        raise last

    async def in_pool(self, pool: Pool, request: SynthesisRequest, *, deadline: float, priority: str,
                      errors: list[str], last_pool: bool = True, whole: bool = False,
                      spread: bool = False) -> Dispatched:
        """Tries on the pool's endpoints (each at most once) until one answers; a pool none of whose endpoints
        could be reached is unavailable (503), not one endpoint's failure (router/spoken.py)."""
        failures: list[BackendError] = []
        try:
            return await self._tries(pool, request, deadline=deadline, priority=priority, errors=errors,
                                     failures=failures, last_pool=last_pool, whole=whole, spread=spread)
        except BackendUnavailable as exc:
            raise unreachable(pool, failures) or exc from None

    async def _tries(self, pool: Pool, request: SynthesisRequest, *, deadline: float, priority: str,
                     errors: list[str], failures: list[BackendError], last_pool: bool, whole: bool,
                     spread: bool) -> Dispatched:
        retry = pool.config.retry
        pool.budget.request()
        chars = len(request.text)
        tried: set[str] = set()
        attempts = 0
        growth = 1.0
        elsewhere = False  # the one extra try a possibly local client mistake gets
        last: BackendError | None = None
        while attempts < retry.max_attempts:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise DeadlineExceeded(f"model {request.model!r}: no answer within the request deadline")
            ticket = Ticket(chars, priority, frozenset(tried), last_pool, remaining,
                            affinity=None if spread else affinity_key(request))
            try:
                lease = await pool.acquire(ticket)
            except Unavailable as exc:
                if last is not None and (isinstance(last, BackendRejected)
                                         or not isinstance(exc, (QueueFull, QueueTimeout))):
                    raise last from None  # every other endpoint was tried, or it is the client's mistake anyway
                raise
            attempts += 1
            tried.add(lease.endpoint.name)
            left = deadline - self.clock()
            per_try = pool.per_try_timeout(lease, chars) * growth
            timeout = min(per_try, max(0.001, left))
            try:
                if pool.config.hedge.enabled or lease.suspect:
                    response, lease = await self.hedging.race(
                        pool, lease, len(request.text), timeout, tried, left,
                        lambda other, time: self.attempt(pool, other, request, time, whole=whole))
                else:
                    response = await self.attempt(pool, lease, request, timeout, deadline_bound=left < per_try,
                                                  whole=whole)
            except BackendError as exc:
                last = exc
                failures.append(exc)
                errors.append(f"{exc.endpoint or lease.endpoint.name}: {exc.message}")
                if isinstance(exc, BackendRejected):
                    if exc.try_elsewhere and not elsewhere and attempts < retry.max_attempts:
                        elsewhere = True
                        self.listener.retried(pool.name, "client_error")
                        continue
                    raise
                reason = retry_reason(exc)
                if reason is None or reason not in retry.retry_on or attempts >= retry.max_attempts:
                    raise
                if isinstance(exc, BackendTimeout):
                    growth *= TIMEOUT_GROWTH
                if not pool.budget.try_retry():
                    self.listener.retry_denied(pool.name)
                    raise
                self.listener.retried(pool.name, reason)
                continue
            return Dispatched(response=response, endpoint=lease.endpoint, pool=pool, attempts=attempts,
                              queued=lease.queued)
        assert last is not None
        raise last

    async def attempt(self, pool: Pool, lease: Lease, request: SynthesisRequest, timeout: float, *,
                      deadline_bound: bool = False, whole: bool = False) -> AudioResponse:
        """One try: start the synthesis on the lease's endpoint and read its first byte (or all of it).

        ``deadline_bound``: the request's deadline, not the endpoint's per-try time, set ``timeout``; running
        out of it then is no failure of the endpoint (a client's short deadline must not trip breakers).
        """
        ep = lease.endpoint
        self.listener.attempt_started(pool.name, lease)  # in the request's own task (traces open its span)
        verify = whole or self._verifies(pool, ep)
        try:
            async with asyncio.timeout(timeout):  # not wait_for, which can lose a cancel on 3.11 (router/health.py)
                response, head, complete = await self._start(ep, request, verify)
            if complete and self.validate is not None:
                try:
                    self.validate(head.pieces(), response.format, len(request.text))
                except InvalidAudio as exc:  # before any byte went out: another endpoint may do better
                    head.close()
                    raise BackendFailed(f"endpoint {ep.name} sent invalid audio: {exc}", endpoint=ep.name) from None
        except TimeoutError:
            if deadline_bound:
                pool.finish(lease, Outcome.CANCELLED)
                raise DeadlineExceeded(f"model {request.model!r}: no answer within the request deadline") from None
            pool.finish(lease, Outcome.TIMEOUT, timeout=timeout)
            timed_out = BackendTimeout(f"endpoint {ep.name} did not answer within {timeout:.1f}s", endpoint=ep.name)
            self.listener.attempt_failed(ep, timed_out.message, None)
            raise timed_out from None
        except BackendError as exc:
            pool.finish(lease, classify(exc))
            self._failed(ep, exc)
            raise
        except BaseException:  # cancelled: the client left or a hedge lost; not the endpoint's fault
            pool.finish(lease, Outcome.CANCELLED)
            raise
        if complete:
            pool.finish(lease, Outcome.OK)
            response.chunks = replay(head)
            return response

        def done(outcome: Outcome, error: BackendError | None) -> None:
            pool.finish(lease, outcome)
            if error is not None:
                self._failed(ep, error)

        ahead = ReadAhead(head, response, done)
        return AudioResponse(format=response.format, chunks=ahead, sample_rate=response.sample_rate,
                             content_type=response.content_type, content_length=response.content_length,
                             close=ahead.aclose)

    def _failed(self, ep: Endpoint, exc: BackendError) -> None:
        self.listener.attempt_failed(ep, exc.message, exc.detail)
        if isinstance(exc, BackendUnavailable) and ep.mark_down(exc.message):  # refused: down until a check passes
            self.listener.health_changed(ep)

    @staticmethod
    def _verifies(pool: Pool, ep: Endpoint) -> bool:
        verify = pool.config.verify_body
        return (not ep.backend.capabilities.streaming) if verify is None else verify

    @staticmethod
    async def _start(ep: Endpoint, request: SynthesisRequest, whole: bool) -> tuple[AudioResponse, Spool, bool]:
        response = await ep.backend.synthesize(request)
        head, complete = await read_head(response, ep.name, whole=whole)
        return response, head, complete

    async def aclose(self) -> None:
        """Cancel the suspects' tries still running without a client."""
        await self.hedging.aclose()
