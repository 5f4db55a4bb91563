"""``create_app``: the Starlette application, put together declaratively.

The lifespan owns the router: backends open (and sessions start) on startup and close on shutdown.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pluggy
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..cache import AudioCache
from ..config.loader import load_settings
from ..config.models import Settings
from ..errors import SpeechRouterError
from ..metrics import Metrics
from ..plugins.manager import BackendRegistry, backend_registry, create_plugin_manager
from ..router.dispatch import Router
from ..voices.distribute import VoiceDistributor
from . import admin, openapi, routes, voices
from .access_log import AccessLogMiddleware
from .auth import Authenticator, AuthMiddleware
from .cached import ResponseCache
from .errors import error_response, openai_error
from .middleware import RequestIdMiddleware
from .reload import Reloader

log = logging.getLogger("speech_router")


def create_app(settings: Settings | None = None, *, pm: pluggy.PluginManager | None = None,
               config_path: str | None = None, env: Mapping[str, str] | None = None) -> Starlette:
    """Build the app from ``settings`` (or load them from ``config_path``, ``TTS_REMOTE_URL`` or the default).

    ``env`` (default ``os.environ``) is where client and admin keys are read from (``app.state.env``).
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
    router = Router(settings, registry, metrics, listeners=[distributor])
    router.fleet.load_signals.observer = metrics
    cache = ResponseCache(AudioCache(settings.cache, metrics), metrics)
    metrics.config_loaded_timestamp.set_to_current_time()
    metrics.config_last_reload_success.set(1)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log.info("configuration: %s (%d pools, %d endpoints, models: %s)", settings.source or "given",
                 len(router.pools), len(router.endpoints), ", ".join(settings.models))
        if settings.source == "embedded default":
            log.warning("no config file and no TTS_REMOTE_URL: serving with the embedded espeak engine only "
                        "(set TTS_REMOTE_URL or --config to route to GPU nodes)")
        await router.start()
        for result in pm.hook.startup(router=router):
            if hasattr(result, "__await__"):
                await result
        reloader.start()
        distributor.start()
        try:
            yield
        finally:
            await reloader.stop()
            await distributor.aclose()
            await router.aclose()
            await cache.aclose()

    app = Starlette(
        routes=[
            Route("/v1/audio/speech", routes.openai_speech, methods=["POST"]),
            Route("/audio/speech", routes.openai_speech, methods=["POST"]),
            Route("/synthesize", routes.synthesize, methods=["POST"]),
            Route("/tts_url", routes.tts_url, methods=["POST"]),
            Route("/v1/models", routes.list_models, methods=["GET"]),
            Route("/models", routes.list_models, methods=["GET"]),
            Route("/v1/audio/voices", voices.list_voices, methods=["GET"]),
            Route("/voices", voices.list_voices, methods=["GET"]),
            Route("/v1/audio/voices", voices.upload_voice, methods=["POST"]),
            Route("/v1/audio/voices/{name}", voices.delete_voice, methods=["DELETE"]),
            Route("/health", routes.health, methods=["GET"]),
            Route("/livez", routes.livez, methods=["GET"]),
            Route("/readyz", routes.readyz, methods=["GET"]),
            Route("/metrics", routes.metrics, methods=["GET"]),
            Route("/-/plugins", routes.plugins, methods=["GET"]),
            Route("/openapi.json", openapi.openapi_json, methods=["GET"]),
            *admin.ROUTES,
        ],
        middleware=[Middleware(RequestIdMiddleware), Middleware(AccessLogMiddleware), Middleware(AuthMiddleware)],
        exception_handlers={SpeechRouterError: _known_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.router = router
    app.state.metrics = metrics
    app.state.pm = pm
    app.state.registry = registry
    app.state.created = routes.started_at()
    app.state.tts_url_model = _tts_url_model(router)
    app.state.env = env
    app.state.auth = auth
    app.state.cache = cache
    app.state.voice_distributor = distributor
    reloader = app.state.reloader = Reloader(app, config_path, on_applied=[_refresh_state(app)])
    return app


def _refresh_state(app: Starlette) -> Any:
    """What else follows the settings after a reload."""
    async def refresh(old: Settings, new: Settings) -> None:
        app.state.tts_url_model = _tts_url_model(app.state.router)
        if new.cache != old.cache:
            await app.state.cache.store.resize(new.cache)

    return refresh


def _tts_url_model(router: Router) -> str | None:
    """The first model whose primary pool understands index-tts-vllm's ``/tts_url`` body."""
    for model in router.settings.models:
        if router.route(model)[0].endpoints[0].backend.capabilities.tts_url:
            return model
    return None


#: synthesis routes and their metric label (the OpenAI alias counts under the canonical path)
SYNTHESIS_ROUTES = {"/v1/audio/speech": "/v1/audio/speech", "/audio/speech": "/v1/audio/speech",
                    "/synthesize": "/synthesize", "/tts_url": "/tts_url"}


async def _known_error(request: Request, exc: Exception) -> JSONResponse:
    response = error_response(exc, request)
    route = SYNTHESIS_ROUTES.get(request.url.path)
    if route is not None:  # every refused synthesis counts, also those refused while parsing
        model = request.scope.get("state", {}).get("model", "")
        request.app.state.metrics.requests.labels(route=route, model=model, pool="", endpoint="",
                                                  status=str(response.status_code)).inc()
    return response


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return openai_error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", code=code,
                        headers=getattr(exc, "headers", None))


def settings_summary(settings: Settings) -> dict[str, Any]:
    return {"pools": len(settings.pools), "endpoints": sum(len(p.endpoints) or 1 for p in settings.pools.values()),
            "models": list(settings.models), "voices": len(settings.voices)}
