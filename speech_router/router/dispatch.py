"""The router: model -> route (pools in order) -> endpoint, with retries, fallback and hedging.

``Router.synthesize`` returns once an endpoint has produced its first audio byte, so every failure
before that point can still go to another endpoint (a *retry*, same pool) or the next pool of the
route (a *fallback*); after it, bytes flow to the client and are never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import Backend, BackendContext
from ..backends.http import HttpSessions
from ..config.models import PoolConfig, Settings
from ..errors import (BackendError, BackendFailed, BackendOverloaded, BackendTimeout, BackendUnavailable,
                      DeadlineExceeded, QueueFull, QueueTimeout, RequestInvalid, Unavailable)
from ..metrics import Metrics
from ..types import AudioResponse, SynthesisRequest
from .breaker import STATE_VALUE, Breaker, BreakerState
from .budget import RetryBudget
from .endpoint import Endpoint
from .health import check_once, run_checks
from .pool import Lease, Pool

log = logging.getLogger(__name__)

#: a verified body is read whole before the client gets a byte, up to this size (then it streams)
MAX_VERIFIED_BYTES = 64 * 1024 * 1024
#: how often a retired endpoint is checked for its last request in flight
RETIRE_POLL_S = 0.05


@dataclass
class Dispatched:
    """A synthesis under way: the audio, and where and how it was obtained."""

    response: AudioResponse
    endpoint: Endpoint
    pool: Pool
    attempts: int
    queued: float = 0.0
    fallback_reason: str | None = None
    errors: list[str] = field(default_factory=list)


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


class Router:
    """Owns pools, endpoints and their backends for one running app."""

    def __init__(self, settings: Settings, registry: Any, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.rng = rng or random.Random()
        self.sessions = HttpSessions()
        self.pools: dict[str, Pool] = {name: self._build_pool(name) for name in settings.pools}
        self.budgets = {name: self._budget(p) for name, p in settings.pools.items()}
        self._health_tasks: dict[Endpoint, asyncio.Task[None]] = {}
        self._closers: set[asyncio.Task[None]] = set()
        #: endpoints removed by a reload that still finish requests in flight
        self.retiring: list[Endpoint] = []
        self.started = False

    def _budget(self, cfg: PoolConfig) -> RetryBudget:
        r = cfg.retry
        return RetryBudget(r.budget_ratio, r.budget_min, r.budget_window, self.clock)

    def _build_pool(self, name: str, endpoints: list[Endpoint] | None = None) -> Pool:
        cfg = self.settings.pools[name]
        if endpoints is None:
            endpoints = self._build_endpoints(name, cfg, {}, [])
        pool = Pool(name, cfg.type, endpoints, cfg, self.clock, self.rng)
        pool.on_panic = lambda p: self.metrics.panics.labels(p.name).inc()
        return pool

    def _build_endpoints(self, name: str, cfg: PoolConfig, reuse: dict[str, Endpoint],
                         fresh: list[Endpoint]) -> list[Endpoint]:
        """The pool's endpoints: those in ``reuse`` whose configuration is unchanged, new ones for the rest
        (appended to ``fresh``). Raises ``ConfigError`` before anything runs when the options are wrong."""
        backend_cls: type[Backend] = self.registry.get(cfg.type)
        options = backend_cls.Options.model_validate(cfg.options)
        context = BackendContext(pool_name=name, pool=cfg, sessions=self.sessions)
        pool_part = cfg.model_dump(mode="json", exclude={"endpoints"})
        endpoints = []
        for ep_cfg, ep_options in backend_cls.expand_endpoints(name, cfg, options):
            key = json.dumps([name, pool_part, ep_cfg.model_dump(mode="json"), ep_options.model_dump(mode="json")],
                             sort_keys=True, default=str)
            ep = reuse.pop(key, None)
            if ep is None:
                ep = Endpoint(backend_cls(ep_cfg, ep_options, context), name, clock=self.clock, weight=ep_cfg.weight,
                              max_concurrency=ep_cfg.max_concurrency or cfg.max_concurrency, breaker=cfg.breaker,
                              balancer=cfg.balancer, health_check=cfg.health_check)
                ep.key = key
                ep.breaker.on_change = self._breaker_listener(ep)
                fresh.append(ep)
            endpoints.append(ep)
        return endpoints

    @property
    def endpoints(self) -> list[Endpoint]:
        return [ep for pool in self.pools.values() for ep in pool.endpoints]

    def endpoint(self, name: str) -> Endpoint | None:
        return next((ep for ep in self.endpoints if ep.name == name), None)

    def route(self, model: str) -> list[Pool]:
        return [self.pools[name] for name in self.settings.models[model].pools]

    def model_healthy(self, model: str) -> bool:
        return any(pool.healthy for pool in self.route(model))

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open every backend and run a first health check, then keep checking in the background."""
        await self._start_endpoints(self.endpoints)
        self.started = True

    async def _start_endpoints(self, endpoints: list[Endpoint]) -> None:
        for ep in endpoints:
            try:
                await ep.backend.open()
            except Exception as exc:  # noqa: BLE001 - one broken endpoint must not stop the router
                ep.mark_down(f"failed to open: {getattr(exc, 'message', None) or exc}")
                log.error("endpoint %s in pool %s failed to open: %s", ep.name, ep.pool, exc)
            self.metrics.max_concurrency.labels(ep.pool, ep.name).set(ep.max_concurrency)
            self.metrics.breaker_state.labels(ep.pool, ep.name).set(0)
            self.metrics.endpoint_draining.labels(ep.pool, ep.name).set(0)
        await asyncio.gather(*(self._first_check(ep) for ep in endpoints))
        for ep in endpoints:
            if ep.health_check.enabled:
                task = run_checks(ep, self._health_changed, self._deep_request(ep))
                self._health_tasks[ep] = asyncio.create_task(task)

    # -- reload and drain -----------------------------------------------------------------------------------

    async def apply(self, settings: Settings) -> dict[str, list[str]]:
        """Switch to ``settings`` without dropping a request.

        Endpoints whose configuration is unchanged keep their state (health, breaker, learned latency);
        new ones are opened and checked before they join, then ramp up (slow start); removed and changed
        ones leave the rotation at once and are closed when their requests in flight are done. Pools keep
        their queues. Raises ``ConfigError`` (and changes nothing) when a backend refuses the new options.
        """
        reuse = {ep.key: ep for ep in self.endpoints}
        fresh: list[Endpoint] = []
        planned = {name: self._build_endpoints(name, cfg, reuse, fresh) for name, cfg in settings.pools.items()}
        removed = list(reuse.values())
        await self._start_endpoints(fresh)
        old_pools = self.settings.pools
        self.settings = settings
        for name, endpoints in planned.items():
            cfg = settings.pools[name]
            pool = self.pools.get(name)
            if pool is None:
                self.pools[name] = self._build_pool(name, endpoints)
            else:
                pool.update(cfg, endpoints, cfg.type)
            if name not in old_pools or old_pools[name].retry != cfg.retry:
                self.budgets[name] = self._budget(cfg)
        for name in [n for n in self.pools if n not in settings.pools]:
            self.pools.pop(name).retire()
            self.budgets.pop(name, None)
        for ep in fresh:
            ep.joined()  # slow start
        for ep in removed:
            self._retire(ep)
        added, gone = {ep.name for ep in fresh}, {ep.name for ep in removed}
        return {"added": sorted(added - gone), "removed": sorted(gone - added), "replaced": sorted(added & gone)}

    def drain(self, ep: Endpoint, draining: bool = True) -> None:
        """Admin drain: no new requests (those in flight finish); undrain brings it back with slow start."""
        if ep.draining == draining:
            return
        ep.draining = draining
        self.metrics.endpoint_draining.labels(ep.pool, ep.name).set(1 if draining else 0)
        log.info("endpoint %s in pool %s %s", ep.name, ep.pool, "draining" if draining else "undrained")
        if not draining:
            ep.joined()
        pool = self.pools.get(ep.pool)
        if pool is not None:
            pool.wake()

    def _retire(self, ep: Endpoint) -> None:
        self.drain(ep)
        ep.retired = True
        task = self._health_tasks.pop(ep, None)
        if task is not None:
            task.cancel()
        self.retiring.append(ep)
        self._closers.add(asyncio.create_task(self._close_when_idle(ep)))

    async def _close_when_idle(self, ep: Endpoint) -> None:
        try:
            while ep.inflight > 0:
                await asyncio.sleep(RETIRE_POLL_S)
            log.info("endpoint %s (pool %s) removed by a reload: drained and closed", ep.name, ep.pool)
        finally:
            with contextlib.suppress(Exception):
                await ep.backend.aclose()
            if ep in self.retiring:
                self.retiring.remove(ep)
            self._closers.discard(asyncio.current_task())  # type: ignore[arg-type]
            if self.endpoint(ep.name) is None:  # gone for good: its label children go too (bounded cardinality)
                self.metrics.forget_endpoint(ep.pool, ep.name, ep.backend.type)

    async def _first_check(self, ep: Endpoint) -> None:
        if ep.healthy is False:  # failed to open
            self._health_changed(ep)
            return
        if ep.health_check.enabled:
            await check_once(ep, self._health_changed)
        else:
            ep.record_check(True, "health checks disabled")
            self._health_changed(ep)

    def _deep_request(self, ep: Endpoint) -> SynthesisRequest | None:
        deep = ep.health_check.deep
        if not deep.enabled:
            return None
        voices = self.settings.voices
        names = [deep.voice] if deep.voice else list(voices)
        for name in names:
            params = voices[name].params() if name in voices else {}
            if ep.backend.supports_voice(params):
                return SynthesisRequest(text=deep.text, model="", voice=name, voice_params=params,
                                        request_id="deep-health-check")
        log.warning("deep health check of pool %s has no voice it can speak; using plain checks", ep.pool)
        return None

    def _health_changed(self, ep: Endpoint) -> None:
        self.metrics.up.labels(ep.pool, ep.name, ep.backend.type).set(1 if ep.available else 0)
        if ep.available and (pool := self.pools.get(ep.pool)) is not None:
            pool.wake()

    def _breaker_listener(self, ep: Endpoint) -> Callable[[Breaker, BreakerState, BreakerState], None]:
        def changed(breaker: Breaker, old: BreakerState, new: BreakerState) -> None:
            m = self.metrics
            m.breaker_state.labels(ep.pool, ep.name).set(STATE_VALUE[new])
            m.breaker_transitions.labels(ep.pool, ep.name, old.value, new.value).inc()
            if new == BreakerState.OPEN:
                m.ejections.labels(ep.pool, ep.name).inc()
                log.warning("breaker of endpoint %s in pool %s: %s -> open for %.1fs (trip %d)", ep.name, ep.pool,
                            old.value, breaker.retry_after(), breaker.trips)
            else:
                log.info("breaker of endpoint %s in pool %s: %s -> %s", ep.name, ep.pool, old.value, new.value)
            if new == BreakerState.CLOSED:
                ep.joined()  # slow start after recovery
            if new != BreakerState.OPEN and (pool := self.pools.get(ep.pool)) is not None:
                pool.wake()

        return changed

    async def aclose(self) -> None:
        tasks = [*self._health_tasks.values(), *self._closers]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._health_tasks.clear()
        for ep in [*self.endpoints, *self.retiring]:
            try:
                await ep.backend.aclose()
            except Exception:  # noqa: BLE001
                log.exception("closing endpoint %s failed", ep.name)
        await self.sessions.aclose()

    # -- dispatch -------------------------------------------------------------------------------------------

    def check_voice(self, model: str, voice: str, params: dict[str, Any]) -> None:
        """Refuse a voice that no pool on the model's route can speak."""
        if not any(pool.endpoints[0].backend.supports_voice(params) for pool in self.route(model)):
            types = sorted({pool.backend_type for pool in self.route(model)})
            raise RequestInvalid(f"voice {voice!r} is not configured for model {model!r} "
                                 f"(backend type {', '.join(types)})", param="voice")

    async def synthesize(self, request: SynthesisRequest, *, priority: str = "interactive") -> Dispatched:
        """Pick an endpoint along the model's route and start the synthesis there."""
        route = self.route(request.model)
        limit = self.settings.models[request.model].deadline
        if request.timeout is not None:
            limit = min(limit, request.timeout)
        deadline = self.clock() + limit
        reason: str | None = None
        errors: list[str] = []
        last: Exception | None = None
        i = -1
        while (i := i + 1) < len(route):
            pool = route[i]
            if i > 0 and pool.endpoints and not pool.endpoints[0].backend.supports_voice(request.voice_params) \
                    and request.passthrough is None:
                continue
            try:
                result = await self._try_pool(pool, request, deadline, priority, errors, last_pool=i == len(route) - 1)
            except (QueueFull, QueueTimeout, Unavailable, BackendError) as exc:
                if isinstance(exc, DeadlineExceeded) or (isinstance(exc, BackendError) and retry_reason(exc) is None):
                    raise
                if pool.retired and request.model in self.settings.models:  # a reload removed it meanwhile
                    route += [p for p in self.route(request.model) if p not in route]
                last = exc
                reason = _fallback_reason(exc)
                continue
            if i > 0:
                result.fallback_reason = reason
                self.metrics.fallbacks.labels(request.model, route[0].name, pool.name, reason or "").inc()
            result.errors = errors
            return result
        assert last is not None
        raise last

    async def _try_pool(self, pool: Pool, request: SynthesisRequest, deadline: float, priority: str,
                        errors: list[str], last_pool: bool = True) -> Dispatched:
        retry = pool.config.retry
        budget = self.budgets[pool.name]
        budget.request()
        chars = len(request.text)
        tried: set[str] = set()
        attempts = 0
        last: BackendError | None = None
        while attempts < retry.max_attempts:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise DeadlineExceeded(f"model {request.model!r}: no answer within the request deadline")
            self.metrics.queue_depth.labels(pool.name, priority).set(pool.queue_depth(priority) + 1)
            try:
                lease = await pool.acquire(chars, priority=priority, exclude=tried, timeout=remaining,
                                           allow_panic=last_pool)
            except Unavailable as exc:
                if isinstance(exc, (QueueFull, QueueTimeout)):
                    self.metrics.queue_rejections.labels(pool.name, exc.code).inc()
                if last is not None and not isinstance(exc, (QueueFull, QueueTimeout)):
                    raise last from None  # every other endpoint was tried: report the real failure
                raise
            finally:
                self.metrics.queue_depth.labels(pool.name, priority).set(pool.queue_depth(priority))
            self.metrics.queue_wait.labels(pool.name, priority).observe(lease.queued)
            self.metrics.picks.labels(pool.name, lease.endpoint.name).inc()
            attempts += 1
            tried.add(lease.endpoint.name)
            per_try, left = pool.per_try_timeout(lease.endpoint, chars), deadline - self.clock()
            timeout = min(per_try, max(0.001, left))
            try:
                if pool.config.hedge.enabled:
                    response, lease = await self._hedged(pool, lease, request, timeout, tried)
                else:
                    response = await self._attempt(pool, lease, request, timeout, deadline_bound=left < per_try)
            except BackendError as exc:
                last = exc
                errors.append(f"{exc.endpoint or lease.endpoint.name}: {exc.message}")
                reason = retry_reason(exc)
                if reason is None or reason not in retry.retry_on:
                    raise
                if attempts >= retry.max_attempts:
                    break
                if not budget.try_retry():
                    self.metrics.retries_denied.labels(pool.name).inc()
                    break
                self.metrics.retries.labels(pool.name, reason).inc()
                continue
            return Dispatched(response=self._releasing(response, pool, lease), endpoint=lease.endpoint, pool=pool,
                              attempts=attempts, queued=lease.queued)
        assert last is not None
        raise last

    async def _attempt(self, pool: Pool, lease: Lease, request: SynthesisRequest, timeout: float,
                       deadline_bound: bool = False) -> AudioResponse:
        """One try: start the synthesis and wait for the first byte (within ``timeout``).

        ``deadline_bound``: the request's deadline, not the endpoint's per-try time, set ``timeout``; running
        out of it then is no failure of the endpoint (a client's short deadline must not trip breakers).
        """
        ep = lease.endpoint
        started = self.clock()
        self.metrics.inflight.labels(ep.pool, ep.name).set(ep.inflight)
        try:
            try:
                response = await asyncio.wait_for(self._first_byte(pool, ep, request), timeout)
            except TimeoutError:
                if deadline_bound:  # handled below as not the endpoint's fault, like a cancellation
                    raise DeadlineExceeded(f"model {request.model!r}: no answer within the request deadline") \
                        from None
                raise BackendTimeout(f"endpoint {ep.name} did not answer within {timeout:.1f}s",
                                     endpoint=ep.name) from None
        except BackendError as exc:
            pool.release(lease)
            self._record_failure(ep, exc, lease)
            raise
        except BaseException:  # cancelled (a hedge lost, the client left): not the endpoint's fault
            pool.release(lease)
            if not lease.panic:
                ep.breaker.release_probe()
            raise
        now = self.clock()
        ep.latency.observe(len(request.text), now - started, now)
        ep.breaker.success()
        ep.served += 1
        self.metrics.attempts.labels(ep.pool, ep.name, "ok").inc()
        return response

    async def _first_byte(self, pool: Pool, ep: Endpoint, request: SynthesisRequest) -> AudioResponse:
        """Start the synthesis and read its first bytes: all of them when the body is verified."""
        response = await ep.backend.synthesize(request)
        verify = pool.config.verify_body
        if verify is None:
            verify = not ep.backend.capabilities.streaming
        head: list[bytes] = []
        size = 0
        try:
            async for chunk in response.chunks:
                head.append(chunk)
                size += len(chunk)
                if not verify or size > MAX_VERIFIED_BYTES:
                    break
        except BaseException:
            await response.aclose()
            raise
        if not size:
            await response.aclose()
            raise BackendFailed(f"endpoint {ep.name} sent an empty body", endpoint=ep.name)
        response.chunks = _prepend(head, response.chunks)
        return response

    async def _hedged(self, pool: Pool, lease: Lease, request: SynthesisRequest, timeout: float,
                      tried: set[str]) -> tuple[AudioResponse, Lease]:
        """Start a second try elsewhere if the first is slow; keep whichever answers first."""
        delay = pool.config.hedge.delay or timeout / 2
        first = asyncio.create_task(self._attempt(pool, lease, request, timeout))
        done, _ = await asyncio.wait({first}, timeout=delay)
        second_lease = None if done else pool.try_acquire(len(request.text), exclude=tried)
        if second_lease is None:
            return await first, lease
        tried.add(second_lease.endpoint.name)
        self.metrics.picks.labels(pool.name, second_lease.endpoint.name).inc()
        remaining = max(0.001, timeout - delay)
        second = asyncio.create_task(self._attempt(pool, second_lease, request, remaining))
        leases = {first: lease, second: second_lease}
        pending: set[asyncio.Task[AudioResponse]] = {first, second}
        error: BaseException | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                winners = [t for t in done if not t.cancelled() and t.exception() is None]
                for task in done:
                    if task.cancelled() or task.exception() is not None:
                        error = error or (task.exception() if not task.cancelled() else None)
                if winners:
                    winner = winners[0]
                    for extra in winners[1:]:  # both answered at once: keep one, give the other back
                        await extra.result().aclose()
                        pool.release(leases[extra])
                    self.metrics.hedges.labels(pool.name, "first" if winner is first else "second").inc()
                    return winner.result(), leases[winner]
        finally:
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task
        assert error is not None
        raise error

    def _record_failure(self, ep: Endpoint, exc: BackendError, lease: Lease | None = None) -> None:
        self.metrics.attempts.labels(ep.pool, ep.name, type(exc).__name__).inc()
        if exc.counts_as_failure:
            ep.breaker.failure()
        elif lease is not None and not lease.panic:
            ep.breaker.release_probe()
        if isinstance(exc, BackendUnavailable) and ep.mark_down(exc.message):
            log.warning("endpoint %s in pool %s is down: %s", ep.name, ep.pool, exc.message)
            self._health_changed(ep)
        if exc.detail:
            log.warning("endpoint %s failed: %s\n%s", ep.name, exc.message, exc.detail)
        else:
            log.warning("endpoint %s failed: %s", ep.name, exc.message)

    def _releasing(self, response: AudioResponse, pool: Pool, lease: Lease) -> AudioResponse:
        """Wrap the body so the endpoint's slot is given back when the client is done (or gone)."""
        inner = response.chunks
        ep = lease.endpoint

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in inner:
                    yield chunk
            except BackendError as exc:
                self._record_failure(ep, exc)
                raise
            finally:
                with contextlib.suppress(Exception):
                    await inner.aclose()  # type: ignore[attr-defined]
                pool.release(lease)
                self.metrics.inflight.labels(ep.pool, ep.name).set(ep.inflight)

        response.chunks = chunks()
        return response


def _fallback_reason(exc: Exception) -> str:
    if isinstance(exc, Unavailable):
        return exc.code
    return "attempts_exhausted"


async def _prepend(head: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        for chunk in head:
            yield chunk
        async for chunk in rest:
            yield chunk
    finally:
        with contextlib.suppress(Exception):
            await rest.aclose()  # type: ignore[attr-defined]
