"""The router: what the API talks to. Model -> route (pools in order) -> endpoint.

A reader follows a request from here: ``Router.synthesize`` hands it to the attempt loop
(``attempt.AttemptLoop``), which asks each pool's scheduler (``scheduler.Scheduler``, through
``pool.Pool``) for a slot, tries the endpoint and gives the slot back with the outcome. What exists
(pools, endpoints, reloads, drains, health checks) is the fleet's business (``fleet.Fleet``); what
happened is reported to listeners that keep metrics and logs (``observers``).
"""

from __future__ import annotations

import random
import time
from typing import Any

from ..audio.validate import check_audio
from ..config.models import Settings
from ..errors import RequestInvalid
from ..metrics import Metrics
from ..types import SynthesisRequest
from .attempt import AttemptLoop, Dispatched, Validate
from .clock import Clock
from .endpoint import Endpoint
from .events import Listeners, RouterListener
from .fleet import BackendRegistry, Fleet
from .observers import LogListener, MetricsListener
from .pool import Pool


class Router:
    """Pools, endpoints and the attempt loop of one running app."""

    def __init__(self, settings: Settings, registry: BackendRegistry, metrics: Metrics | None = None,
                 clock: Clock = time.monotonic, rng: random.Random | None = None,
                 listeners: list[RouterListener] | None = None, validate: Validate | None = check_audio) -> None:
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.listener = Listeners([MetricsListener(self.metrics), LogListener(), *(listeners or [])])
        self.fleet = Fleet(settings, registry, clock, rng or random.Random(), self.listener)
        self.attempts = AttemptLoop(self.route, clock, self.listener, validate)
        self.started = False

    def __repr__(self) -> str:
        return f"Router({self.fleet!r})"

    # -- what exists ----------------------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self.fleet.settings

    @property
    def pools(self) -> dict[str, Pool]:
        return self.fleet.pools

    @property
    def endpoints(self) -> list[Endpoint]:
        return self.fleet.endpoints

    @property
    def retiring(self) -> list[Endpoint]:
        return self.fleet.retiring

    def endpoint(self, name: str) -> Endpoint | None:
        return self.fleet.endpoint(name)

    def route(self, model: str) -> list[Pool]:
        return [self.pools[name] for name in self.settings.models[model].pools]

    def model_healthy(self, model: str) -> bool:
        return any(pool.healthy for pool in self.route(model))

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open every backend and run a first health check, then keep checking in the background."""
        await self.fleet.start()
        self.started = True

    async def apply(self, settings: Settings) -> dict[str, list[str]]:
        """Switch to ``settings`` without dropping a request (see ``Fleet.apply``)."""
        return await self.fleet.apply(settings)

    def drain(self, ep: Endpoint, draining: bool = True) -> None:
        self.fleet.drain(ep, draining)

    async def aclose(self) -> None:
        await self.attempts.aclose()
        await self.fleet.aclose()

    # -- requests -------------------------------------------------------------------------------------------

    def check_voice(self, model: str, voice: str, params: dict[str, Any]) -> None:
        """Refuse a voice that no pool on the model's route can speak."""
        if not any(pool.endpoints[0].backend.supports_voice(params) for pool in self.route(model) if pool.endpoints):
            types = sorted({pool.backend_type for pool in self.route(model)})
            raise RequestInvalid(f"voice {voice!r} is not configured for model {model!r} "
                                 f"(backend type {', '.join(types)})", param="voice")

    def deadline(self, request: SynthesisRequest) -> float:
        """When the request must be answered (on ``clock``): the model's deadline, or the client's if shorter."""
        limit = self.settings.models[request.model].deadline
        if request.timeout is not None:
            limit = min(limit, request.timeout)
        return self.clock() + limit

    async def synthesize(self, request: SynthesisRequest, *, priority: str = "interactive",
                         deadline: float | None = None, whole: bool = False, spread: bool = False) -> Dispatched:
        """Start the synthesis on an endpoint along the model's route; returns once its first byte is in
        (``whole``: the whole answer, as fan-out segments need; ``spread``: a segment, spread over the fleet
        rather than gathered by voice affinity). Retries and fallback happen until then."""
        return await self.attempts.run(request, deadline=self.deadline(request) if deadline is None else deadline,
                                       priority=priority, whole=whole, spread=spread)


__all__ = ["Dispatched", "Router"]
