"""The router: model -> route (pools in order) -> endpoint, with one retry on a connection failure.

``Router.synthesize`` returns once an endpoint has produced its first audio byte, so every failure
before that point can still go to another endpoint; after it, bytes flow to the client untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import Backend, BackendContext
from ..backends.http import HttpSessions
from ..config.models import EndpointConfig, Settings
from ..errors import BackendError, BackendFailed, BackendUnavailable, NoHealthyEndpoint, RequestInvalid
from ..metrics import Metrics
from ..types import AudioResponse, SynthesisRequest
from .endpoint import Endpoint
from .health import check_once, run_checks
from .pool import Pool

log = logging.getLogger(__name__)

#: failures after which another endpoint is tried (#2: the connection never reached the endpoint)
RETRY_ON: tuple[type[BackendError], ...] = (BackendUnavailable,)
MAX_ATTEMPTS = 2


@dataclass
class Dispatched:
    """A synthesis under way: the audio, and where it is coming from."""

    response: AudioResponse
    endpoint: Endpoint
    pool: Pool
    attempts: int
    errors: list[str] = field(default_factory=list)


class Router:
    """Owns pools, endpoints and their backends for one running app."""

    def __init__(self, settings: Settings, registry: Any, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics or Metrics()
        self.sessions = HttpSessions()
        self.pools: dict[str, Pool] = {name: self._build_pool(name) for name in settings.pools}
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False

    def _build_pool(self, name: str) -> Pool:
        cfg = self.settings.pools[name]
        backend_cls: type[Backend] = self.registry.get(cfg.type)
        options = backend_cls.Options.model_validate(cfg.options)
        context = BackendContext(pool_name=name, pool=cfg, sessions=self.sessions)
        configs = cfg.endpoints or [EndpointConfig(name=f"{name}-0")]
        endpoints = []
        for ep_cfg in configs:
            backend = backend_cls(ep_cfg, options, context)
            limit = ep_cfg.max_concurrency or cfg.max_concurrency
            endpoints.append(Endpoint(backend=backend, pool=name, weight=ep_cfg.weight, max_concurrency=limit))
        return Pool(name, cfg.type, endpoints, queue_timeout=cfg.queue_timeout)

    @property
    def endpoints(self) -> list[Endpoint]:
        return [ep for pool in self.pools.values() for ep in pool.endpoints]

    def route(self, model: str) -> list[Pool]:
        return [self.pools[name] for name in self.settings.models[model].pools]

    async def start(self) -> None:
        """Open every backend and run a first health check, then keep checking in the background."""
        for ep in self.endpoints:
            try:
                await ep.backend.open()
            except Exception as exc:  # noqa: BLE001 - one broken endpoint must not stop the router
                ep.mark(False, f"failed to open: {getattr(exc, 'message', None) or exc}")
                log.error("endpoint %s in pool %s failed to open: %s", ep.name, ep.pool, exc)
            self.metrics.max_concurrency.labels(ep.pool, ep.name).set(ep.max_concurrency)
        await asyncio.gather(*(self._first_check(ep) for ep in self.endpoints))
        for ep in self.endpoints:
            hc = self.settings.pools[ep.pool].health_check
            if hc.enabled:
                self._tasks.append(asyncio.create_task(run_checks(ep, hc.interval, hc.timeout, self._health_changed)))
        self.started = True

    async def _first_check(self, ep: Endpoint) -> None:
        if ep.healthy is False:  # failed to open
            self._health_changed(ep)
            return
        hc = self.settings.pools[ep.pool].health_check
        if hc.enabled:
            await check_once(ep, hc.timeout, self._health_changed)
        else:
            ep.mark(True, "health checks disabled")
            self._health_changed(ep)

    def _health_changed(self, ep: Endpoint) -> None:
        self.metrics.up.labels(ep.pool, ep.name, ep.backend.type).set(1 if ep.available else 0)
        if ep.available:
            self.pools[ep.pool].wake()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for ep in self.endpoints:
            try:
                await ep.backend.aclose()
            except Exception:  # noqa: BLE001
                log.exception("closing endpoint %s failed", ep.name)
        await self.sessions.aclose()

    def model_healthy(self, model: str) -> bool:
        return any(pool.healthy for pool in self.route(model))

    async def synthesize(self, request: SynthesisRequest) -> Dispatched:
        """Pick an endpoint along the model's route and start the synthesis there."""
        errors: list[str] = []
        attempts = 0
        last_exc: Exception | None = None
        for pool in self.route(request.model):
            tried: set[str] = set()
            while attempts < MAX_ATTEMPTS:
                try:
                    ep = await pool.acquire(exclude=tried)
                except NoHealthyEndpoint as exc:
                    last_exc = exc
                    break  # the next pool of the route, if any
                attempts += 1
                tried.add(ep.name)
                try:
                    response = await self._attempt(ep, request)
                except BackendError as exc:
                    pool.release(ep)
                    self._record_failure(ep, exc)
                    errors.append(f"{ep.name}: {exc.message}")
                    last_exc = exc
                    if isinstance(exc, RETRY_ON) and attempts < MAX_ATTEMPTS:
                        self.metrics.retries.labels(pool.name, type(exc).__name__).inc()
                        continue
                    raise
                except BaseException:
                    pool.release(ep)
                    raise
                self.metrics.attempts.labels(pool.name, ep.name, "ok").inc()
                ep.served += 1
                return Dispatched(response=self._releasing(response, pool, ep), endpoint=ep, pool=pool,
                                  attempts=attempts, errors=errors)
        if isinstance(last_exc, BackendError):
            raise last_exc
        raise last_exc or NoHealthyEndpoint(f"model {request.model!r} has no healthy endpoint")

    async def _attempt(self, ep: Endpoint, request: SynthesisRequest) -> AudioResponse:
        """One try: start the synthesis and wait for the first byte, so a failure is still retryable."""
        self.metrics.inflight.labels(ep.pool, ep.name).set(ep.inflight)
        response = await ep.backend.synthesize(request)
        try:
            first = await response.chunks.__anext__()
        except StopAsyncIteration:
            await response.aclose()
            raise BackendFailed(f"endpoint {ep.name} sent an empty body", endpoint=ep.name) from None
        except BaseException:
            await response.aclose()
            raise
        response.chunks = _prepend(first, response.chunks)
        return response

    def _record_failure(self, ep: Endpoint, exc: BackendError) -> None:
        self.metrics.attempts.labels(ep.pool, ep.name, type(exc).__name__).inc()
        if isinstance(exc, BackendUnavailable):
            ep.mark(False, exc.message)  # passive: the next passing health check brings it back
            self._health_changed(ep)
        if exc.detail:
            log.warning("endpoint %s failed: %s\n%s", ep.name, exc.message, exc.detail)
        else:
            log.warning("endpoint %s failed: %s", ep.name, exc.message)

    def _releasing(self, response: AudioResponse, pool: Pool, ep: Endpoint) -> AudioResponse:
        """Wrap the body so the endpoint's slot is given back when the client is done (or gone)."""
        inner = response.chunks
        metrics = self.metrics

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
                pool.release(ep)
                metrics.inflight.labels(ep.pool, ep.name).set(ep.inflight)

        response.chunks = chunks()
        return response

    def check_voice(self, model: str, voice: str, params: dict[str, Any]) -> None:
        """Refuse a voice that no pool on the model's route can speak."""
        if not any(pool.endpoints[0].backend.supports_voice(params) for pool in self.route(model)):
            types = sorted({pool.backend_type for pool in self.route(model)})
            raise RequestInvalid(f"voice {voice!r} is not configured for model {model!r} "
                                 f"(backend type {', '.join(types)})", param="voice")


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        with contextlib.suppress(Exception):
            await rest.aclose()  # type: ignore[attr-defined]
