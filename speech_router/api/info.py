"""The routes that say what this router serves and how it is: models, health, readiness, metrics, plugins."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ..metrics import CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE
from ..plugins.manager import get_plugins
from .state import app_state


async def list_models(request: Request) -> JSONResponse:
    state = app_state(request)
    data = [{"id": name, "object": "model", "created": state.created, "owned_by": "speech-router"}
            for name in state.settings.models]
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> JSONResponse:
    """200 when every model has at least one healthy endpoint, else 503; each endpoint's state."""
    router = app_state(request).router
    models = {m: {"healthy": router.model_healthy(m), "pools": [p.name for p in router.route(m)]}
              for m in router.settings.models}
    ok = all(m["healthy"] for m in models.values())
    body = {"status": "healthy" if ok else "unhealthy", "models": models,
            "endpoints": [ep.describe() for ep in router.endpoints]}
    return JSONResponse(body, status_code=200 if ok else 503)


async def livez(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Ready once started and at least one model can be served."""
    router = app_state(request).router
    ready = router.started and any(router.model_healthy(m) for m in router.settings.models)
    return JSONResponse({"status": "ready" if ready else "not ready"}, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    """The gauges that are cheaper to read at scrape time than to keep up to date (in-flight, model health)."""
    state = app_state(request)
    for ep in state.router.endpoints:
        state.metrics.inflight.labels(ep.pool, ep.name).set(ep.inflight)
    for model in state.settings.models:
        state.metrics.model_healthy.labels(model).set(1 if state.router.model_healthy(model) else 0)
    if "application/openmetrics-text" in request.headers.get("accept", ""):  # Prometheus asks for it: exemplars
        return Response(state.metrics.render(openmetrics=True), media_type=OPENMETRICS_CONTENT_TYPE)
    return PlainTextResponse(state.metrics.render(), media_type=CONTENT_TYPE)


async def plugins(request: Request) -> JSONResponse:
    return JSONResponse(get_plugins(app_state(request).pm))
