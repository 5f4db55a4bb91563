"""The fleet's lifecycle: build pools and endpoints from the config, start them, apply reloads, drain, retire.

Requests never pass through here; this module decides what exists. Every change that can let a
waiting request go somewhere (an endpoint joins, turns healthy, is undrained, its breaker closes or
half-opens) wakes its pool's scheduler, and is reported to the listener (metrics, logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from typing import Protocol

from ..backends.base import Backend, BackendContext
from ..backends.http import HttpSessions
from ..config.models import PoolConfig, Settings
from ..types import SynthesisRequest
from .breaker import Breaker, BreakerState, Listener
from .clock import Clock
from .endpoint import Endpoint
from .events import RouterListener
from .health import check_once, run_checks
from .latency import LatencyModel
from .load import LoadSignals
from .pool import Pool

log = logging.getLogger(__name__)

#: how often a retired endpoint is checked for its last request in flight
RETIRE_POLL_S = 0.05
#: pool and endpoint settings only the router reads (its queue, scheduling, breaker, retries): a reload that changes
#: only these keeps the endpoints as they are, with everything learned of them
ROUTING_ONLY = frozenset({"queue", "balancer", "breaker", "retry", "hedge", "max_concurrency", "verify_body",
                          "load_signal", "weight"})


class BackendRegistry(Protocol):
    """What the fleet needs of the plugin manager's registry: backend classes by type name."""

    def get(self, name: str, /) -> type[Backend]: ...


class Fleet:
    """Pools and endpoints of one running app, and their health-check and close tasks."""

    def __init__(self, settings: Settings, registry: BackendRegistry, clock: Clock, rng: random.Random,
                 listener: RouterListener) -> None:
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.rng = rng
        self.listener = listener
        self.sessions = HttpSessions()
        self._shapes: dict[tuple[str, str], LatencyModel] = {}
        #: nodes' own load, polled where a pool turns it on (``load_signal``)
        self.load_signals = LoadSignals(self._wake)
        self.pools: dict[str, Pool] = {name: self._pool(name, self._endpoints(name, cfg, {}, []))
                                       for name, cfg in settings.pools.items()}
        #: endpoints removed by a reload that still finish requests in flight
        self.retiring: list[Endpoint] = []
        self._health_tasks: dict[Endpoint, asyncio.Task[None]] = {}
        self._closers: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"Fleet(pools={list(self.pools)}, endpoints={len(self.endpoints)}, retiring={len(self.retiring)})"

    @property
    def endpoints(self) -> list[Endpoint]:
        return [ep for pool in self.pools.values() for ep in pool.endpoints]

    def endpoint(self, name: str) -> Endpoint | None:
        return next((ep for ep in self.endpoints if ep.name == name), None)

    # -- building -------------------------------------------------------------------------------------------

    def _pool(self, name: str, endpoints: list[Endpoint]) -> Pool:
        cfg = self.settings.pools[name]
        return Pool(name, cfg.type, endpoints, cfg, self.clock, self.rng, self.listener)

    def _endpoints(self, name: str, cfg: PoolConfig, reuse: dict[str, Endpoint], fresh: list[Endpoint],
                   kept: list[Endpoint] | None = None) -> list[Endpoint]:
        """The pool's endpoints: those in ``reuse`` whose backend is configured as before (their routing settings
        updated in place), new ones for the rest (appended to ``fresh``); a new one for an endpoint of the same
        name and type inherits what was learned of it (listed in ``kept`` too). Raises ``ConfigError`` before
        anything runs when the options are wrong."""
        backend_cls = self.registry.get(cfg.type)
        options = backend_cls.Options.model_validate(cfg.options)
        context = BackendContext(pool_name=name, pool=cfg, sessions=self.sessions)
        pool_part = cfg.model_dump(mode="json", exclude={"endpoints", *ROUTING_ONLY})
        endpoints = []
        for ep_cfg, ep_options in backend_cls.expand_endpoints(name, cfg, options):
            key = json.dumps([name, pool_part, ep_cfg.model_dump(mode="json", exclude=set(ROUTING_ONLY)),
                              ep_options.model_dump(mode="json")], sort_keys=True, default=str)
            ep = reuse.pop(key, None)
            if ep is not None:
                ep.backend.context.pool = cfg  # the same backend; the settings it does not read may have changed
                ep.configure(weight=ep_cfg.weight, max_concurrency=ep_cfg.max_concurrency or cfg.max_concurrency,
                             breaker=cfg.breaker, balancer=cfg.balancer)
                self.load_signals.plan(ep, cfg.load_signal)
            else:
                ep = Endpoint(backend_cls(ep_cfg, ep_options, context), name, clock=self.clock, weight=ep_cfg.weight,
                              max_concurrency=ep_cfg.max_concurrency or cfg.max_concurrency, breaker=cfg.breaker,
                              balancer=cfg.balancer, health_check=cfg.health_check, shape=self._shape(name, cfg))
                ep.key = key
                ep.breaker.on_change = self._breaker_listener(ep)
                self.load_signals.plan(ep, cfg.load_signal)
                before = next((old for old in reuse.values() if (old.pool, old.backend.type, old.name)
                               == (name, cfg.type, ep.name)), None)
                if before is not None and kept is not None:
                    ep.inherit(before)  # the same node, configured differently: what was learned of it holds
                    kept.append(ep)
                fresh.append(ep)
            endpoints.append(ep)
        return endpoints

    def _shape(self, pool: str, cfg: PoolConfig) -> LatencyModel:
        """The latency shape a pool's endpoints share; kept across reloads while its type stays the same."""
        key = (pool, cfg.type)
        if key not in self._shapes:
            self._shapes[key] = LatencyModel(cfg.balancer.latency_half_life)
        return self._shapes[key]

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self, endpoints: list[Endpoint] | None = None) -> None:
        """Open the endpoints (all by default) and check each once, then keep checking in the background."""
        endpoints = self.endpoints if endpoints is None else endpoints
        for ep in endpoints:
            try:
                await ep.backend.open()
            except Exception as exc:  # noqa: BLE001 - one broken endpoint must not stop the router
                ep.mark_down(f"failed to open: {getattr(exc, 'message', None) or type(exc).__name__}: {exc}")
                log.error("endpoint %s in pool %s failed to open: %s", ep.name, ep.pool, ep.detail)
            self.listener.endpoint_started(ep)
        await asyncio.gather(*(self._first_check(ep) for ep in endpoints))
        for ep in endpoints:
            if ep.health_check.enabled:
                task = run_checks(ep, self._health_changed, self._deep_request(ep))
                self._health_tasks[ep] = asyncio.create_task(task)
            self.load_signals.start(ep)

    async def apply(self, settings: Settings) -> dict[str, list[str]]:
        """Switch to ``settings`` without dropping a request.

        Endpoints whose backend is configured as before stay as they are (health, breaker, learned model),
        with new routing settings (``ROUTING_ONLY``: queue, balancer, breaker, retries...) applied in place;
        an endpoint of the same name and type whose backend settings changed is built anew and inherits what
        was learned of it; new ones are opened and checked before they join, then ramp up (slow start); the
        replaced and removed ones leave the rotation at once and are closed when their requests in flight are
        done. Pools keep their queues. Raises ``ConfigError`` (and changes nothing) when a backend refuses the
        new options.
        """
        reuse = {ep.key: ep for ep in self.endpoints}
        fresh: list[Endpoint] = []
        kept: list[Endpoint] = []
        planned = {name: self._endpoints(name, cfg, reuse, fresh, kept) for name, cfg in settings.pools.items()}
        removed = list(reuse.values())
        await self.start(fresh)
        self.settings = settings
        for ep in fresh:
            if ep not in kept:
                ep.joined()  # slow start for a node that is new to the router
        for name, endpoints in planned.items():
            pool = self.pools.get(name)
            if pool is None:
                self.pools[name] = self._pool(name, endpoints)
            else:
                pool.update(settings.pools[name], endpoints, settings.pools[name].type)
        for name in [n for n in self.pools if n not in settings.pools]:
            pool = self.pools.pop(name)
            pool.retire()
            pool.close()
        for ep in removed:
            self._retire(ep)
        added, gone = {ep.name for ep in fresh}, {ep.name for ep in removed}
        return {"added": sorted(added - gone), "removed": sorted(gone - added), "replaced": sorted(added & gone)}

    def drain(self, ep: Endpoint, draining: bool = True) -> None:
        """Admin drain: no new requests (those in flight finish); undrain brings it back with slow start."""
        if not ep.drain(draining):
            return
        self.listener.draining_changed(ep)
        self._wake(ep)

    def _retire(self, ep: Endpoint) -> None:
        self.drain(ep)
        ep.retired = True
        task = self._health_tasks.pop(ep, None)
        if task is not None:
            task.cancel()
        self.load_signals.stop(ep)
        self.retiring.append(ep)
        self._closers.add(asyncio.create_task(self._close_when_idle(ep)))

    async def _close_when_idle(self, ep: Endpoint) -> None:
        try:
            while ep.inflight > 0:
                await asyncio.sleep(RETIRE_POLL_S)
        finally:
            with contextlib.suppress(Exception):
                await ep.backend.aclose()
            if ep in self.retiring:
                self.retiring.remove(ep)
            if not any(other.pool == ep.pool for other in self.retiring):  # the pool's old connections are idle
                pool = self.pools.get(ep.pool)
                with contextlib.suppress(Exception):
                    await self.sessions.close_pool(ep.pool, keep_limit=pool.config.max_connections if pool else None)
            self._closers.discard(asyncio.current_task())
            self.listener.endpoint_closed(ep, gone=self.endpoint(ep.name) is None)

    async def aclose(self) -> None:
        tasks = [*self._health_tasks.values(), *self._closers]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._health_tasks.clear()
        await self.load_signals.aclose()
        for pool in self.pools.values():
            pool.close()
        for ep in [*self.endpoints, *self.retiring]:
            try:
                await ep.backend.aclose()
            except Exception:  # noqa: BLE001
                log.exception("closing endpoint %s failed", ep.name)
        await self.sessions.aclose()

    # -- health and breakers --------------------------------------------------------------------------------

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
        self.listener.health_changed(ep)
        if ep.available:
            self._wake(ep)

    def _breaker_listener(self, ep: Endpoint) -> Listener:
        def changed(breaker: Breaker, old: BreakerState, new: BreakerState) -> None:
            if new == BreakerState.CLOSED:
                ep.joined()  # slow start after recovery
            self.listener.breaker_changed(ep, old, new)
            if new != BreakerState.OPEN:
                self._wake(ep)

        return changed

    def _wake(self, ep: Endpoint) -> None:
        pool = self.pools.get(ep.pool)
        if pool is not None and ep in pool.endpoints:
            pool.wake()
