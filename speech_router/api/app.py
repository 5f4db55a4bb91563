"""``create_app``: the Starlette application, put together declaratively from the route table.

The lifespan owns the router: backends open (and sessions start) on startup and close on shutdown.
``app.state`` is an ``AppState``: every part of the app, typed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute

from ..cache import AudioCache
from ..cache.speech import SpeechCache
from ..config.loader import load_settings
from ..config.models import Settings
from ..errors import SpeechRouterError
from ..jobs.service import Jobs
from ..metrics import Metrics
from ..plugins.manager import BackendRegistry, backend_registry, create_plugin_manager
from ..router.dispatch import Router
from ..tracing.setup import build_tracing
from ..voice_sync import VoiceDistributor
from .auth import Authenticator
from .errors import error_response, openai_error
from .gate import Gate, exchange_of
from .known_series import create_known_series
from .observe import RequestMetrics
from .reload import Reloader
from .spec import ErrorShape, RouteTable
from .state import AppState
from .table import ROUTES

if TYPE_CHECKING:
    from ..state.hub import SharedState
    from ..tracing.setup import Tracing

log = logging.getLogger("speech_router")


def create_app(settings: Settings | None = None, *, pm: pluggy.PluginManager | None = None,
               config_path: str | None = None, env: Mapping[str, str] | None = None,
               routes: RouteTable = ROUTES, tracing: Tracing | None = None) -> Starlette:
    """Build the app from ``settings`` (or load them from ``config_path``, ``TTS_REMOTE_URL`` or the default).

    ``env`` (default ``os.environ``) is where client and admin keys, and the ``OTEL_*`` variables, are read from
    (``app.state.env``). ``tracing``: the app's tracing when the caller made it (tests: an in-memory exporter);
    by default it is built from ``settings.tracing`` and ``env`` (None: off).
    """
    env = os.environ if env is None else env
    pm = pm or create_plugin_manager()
    registry: BackendRegistry = backend_registry(pm)
    if settings is None:
        settings = load_settings(config_path, registry=registry, env=env)
    auth = Authenticator.from_settings(settings, env=env)
    metrics = Metrics()
    # uploaded voices onto vllm-omni nodes, including those that join or come back (upload mode)
    distributor = VoiceDistributor(lambda: router.settings, lambda: router.endpoints, metrics)
    tracing = tracing or build_tracing(settings.tracing, env)
    shared = _shared_state(settings, metrics, lambda: router)
    router = Router(settings, registry, metrics,
                    listeners=[distributor] + ([tracing.listener] if tracing is not None else [])
                    + ([shared.inflight] if shared is not None else []))
    router.fleet.load_signals.observer = metrics
    cache = SpeechCache(AudioCache(settings.cache, metrics, shared.cache if shared is not None else None), metrics)
    auth.shared = shared.limits if shared is not None else None
    jobs = Jobs(router, metrics, cache, env)
    metrics.config_loaded_timestamp.set_to_current_time()
    metrics.config_last_reload_success.set(1)
    create_known_series(metrics, router, settings, auth)  # at 0: panels and alerts have data on a fresh router

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info("configuration: %s (%d pools, %d endpoints, models: %s)", settings.source or "given",
                 len(router.pools), len(router.endpoints), ", ".join(settings.models))
        log_auth(auth, settings)
        if settings.source == "embedded default":
            log.warning("no config file and no TTS_REMOTE_URL: serving with the embedded espeak engine only "
                        "(set TTS_REMOTE_URL or --config to route to GPU nodes)")
        if tracing is not None:
            log.info("traces on: %s", tracing)
        await router.start()
        if shared is not None:  # the fleet's knowledge and voices, before the first request
            await shared.start()
        for result in pm.hook.startup(router=router):
            if hasattr(result, "__await__"):
                await result
        state.prepare_hooks = bool(pm.hook.prepare_request.get_hookimpls())  # plugins may register at startup
        reloader.start()
        distributor.start()
        jobs.start()
        try:
            yield
        finally:
            await jobs.aclose()
            await reloader.stop()
            await distributor.aclose()
            if shared is not None:
                await shared.aclose()
            await router.aclose()
            await cache.aclose()
            if tracing is not None:
                await tracing.aclose()

    app = Starlette(
        routes=[*(Route(route.path, route.handler, methods=list(route.methods), name=route.operation_id)
                  for route in routes),
                *(WebSocketRoute(route.path, route.handler, name=f"{route.operation_id}_websocket")
                  for route in routes if route.websocket)],
        middleware=[Middleware(Gate)],
        exception_handlers={SpeechRouterError: _known_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    state = app.state = AppState(
        settings=settings, router=router, metrics=metrics, request_metrics=RequestMetrics(metrics), auth=auth,
        cache=cache, pm=pm, registry=registry, routes=routes, env=env, created=int(time.time()),
        tts_url_model=_tts_url_model(router), voice_distributor=distributor, jobs=jobs,
        prepare_hooks=bool(pm.hook.prepare_request.get_hookimpls()), tracing=tracing, shared=shared)
    reloader = state.reloader = Reloader(state, config_path, on_applied=[_refresh_state(state)])
    return app


def _shared_state(settings: Settings, metrics: Metrics, router: Callable[[], Router]) -> SharedState | None:
    """What the replicas share through ``state.url`` (None without one: nothing of it is even imported)."""
    if not settings.state.url:
        return None
    from ..state.hub import SharedState

    return SharedState(settings, metrics, lambda: [*router().endpoints, *router().retiring],
                       lambda: router().fleet.load_signals, lambda: router().settings.voice_store)


def log_auth(auth: Authenticator, settings: Settings) -> None:
    """One line at start: whether clients need a key (never a key itself: their number, and the admin API's)."""
    admin = "on" if auth.admin_enabled else f"off (no {settings.server.auth.admin_key_env})"
    if auth.enabled:
        log.info("client authentication: on (%d key%s); admin API: %s", len(auth.keys),
                 "" if len(auth.keys) == 1 else "s", admin)
    else:
        log.warning("client authentication: off: anyone who can reach the port can use it (set %s to turn it on); "
                    "admin API: %s", settings.server.auth.keys_env, admin)


def _refresh_state(state: AppState) -> Callable[[Settings, Settings], Awaitable[None]]:
    """What else follows the settings after a reload: what is worked out once per configuration."""
    async def refresh(old: Settings, new: Settings) -> None:
        state.tts_url_model = _tts_url_model(state.router)
        create_known_series(state.metrics, state.router, new, state.auth)  # the pools and endpoints it added
        if new.cache != old.cache:
            await state.cache.store.resize(new.cache)
        if new.jobs.directory != old.jobs.directory:  # the store and its runner live as long as the app
            log.warning("jobs.directory changed: jobs stay in %s until the router restarts", old.jobs.directory)
        if new.state != old.state:
            log.warning("state: changed; a replica connects to its state store at start only: restart it to apply")

    return refresh


def _tts_url_model(router: Router) -> str | None:
    """The first model whose primary pool understands index-tts-vllm's ``/tts_url`` body."""
    for model in router.settings.models:
        if router.route(model)[0].endpoints[0].backend.capabilities.tts_url:
            return model
    return None


async def _known_error(request: Request, exc: Exception) -> JSONResponse:
    """A handler's refusal, in its route's error shape (counted by the edge's observer)."""
    route = exchange_of(request.scope).route
    return error_response(exc, route.errors if route is not None else ErrorShape.OPENAI)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return openai_error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", code=code,
                        headers=getattr(exc, "headers", None))


def settings_summary(settings: Settings, router: Router) -> dict[str, Any]:
    """What ``check-config`` says of a good file: the endpoints are those the router built from it."""
    return {"pools": len(settings.pools), "endpoints": len(router.endpoints),
            "models": list(settings.models), "voices": len(settings.voices)}
