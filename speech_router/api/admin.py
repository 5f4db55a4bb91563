"""The admin API: see and steer the fleet while traffic flows. Its key is checked by the edge (``Access.ADMIN``).

``GET /admin/endpoints``, ``POST /admin/endpoints/{name}/drain`` and ``/undrain``, ``POST /admin/reload``,
``GET /admin/config`` (secrets redacted). ``/admin/backends`` and its drain routes are the old names of the
endpoint routes, kept for one release: the same answers, with the list under ``backends``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..metrics import Metrics
from ..router.ticket import PRIORITIES
from .errors import openai_error
from .state import app_state

REDACTED = "***"


def _listing(request: Request, key: str) -> JSONResponse:
    """Every endpoint with its state, breaker, in-flight count, weights, learned latency and attempts by outcome;
    every pool with its queue by priority."""
    state = app_state(request)
    router = state.router
    attempts = attempts_by_endpoint(state.metrics)
    rows = [{**ep.describe(), "retired": False, "attempts": attempts.get((ep.pool, ep.name), {})}
            for ep in router.endpoints]
    rows += [{**ep.describe(), "retired": True, "attempts": attempts.get((ep.pool, ep.name), {})}
             for ep in router.retiring]
    pools = {name: {"type": pool.backend_type, "queue_depth": pool.queue_depth(), "healthy": pool.healthy,
                    "queue": {priority: pool.queue_depth(priority) for priority in PRIORITIES}}
             for name, pool in router.pools.items()}
    return JSONResponse({key: rows, "pools": pools})


def attempts_by_endpoint(metrics: Metrics) -> dict[tuple[str, str], dict[str, int]]:
    """``speech_router_endpoint_attempts_total`` as (pool, endpoint) -> {outcome: count} (outcomes seen), read in one
    pass."""
    found: dict[tuple[str, str], dict[str, int]] = {}
    for family in metrics.attempts.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:  # series start at 0: only outcomes seen
                labels = sample.labels
                found.setdefault((labels["pool"], labels["endpoint"]), {})[labels["outcome"]] = int(sample.value)
    return found


async def endpoints(request: Request) -> JSONResponse:
    """``GET /admin/endpoints``."""
    return _listing(request, "endpoints")


async def backends(request: Request) -> JSONResponse:
    """``GET /admin/backends``: the old name, its list under ``backends``."""
    return _listing(request, "backends")


async def drain(request: Request) -> JSONResponse:
    return _set_draining(request, True)


async def undrain(request: Request) -> JSONResponse:
    return _set_draining(request, False)


def _set_draining(request: Request, draining: bool) -> JSONResponse:
    router = app_state(request).router
    name = request.path_params["name"]
    ep = router.endpoint(name)
    if ep is None:
        known = ", ".join(e.name for e in router.endpoints)
        return openai_error(404, f"No endpoint named {name!r}. Known: {known}.", param="name",
                            code="endpoint_not_found")
    router.drain(ep, draining)
    return JSONResponse(ep.describe())


async def reload(request: Request) -> JSONResponse:
    """Reload now; 200 when applied or unchanged, 422 with every error when the new config is refused."""
    result = await app_state(request).reloader.reload("admin")
    return JSONResponse(result.as_dict(), status_code=422 if result.result == "invalid" else 200)


async def config(request: Request) -> JSONResponse:
    """The running configuration; header values and credentials in URLs are replaced by ``***``."""
    settings = app_state(request).settings
    return JSONResponse({"source": settings.source, "config": redact(settings.model_dump(mode="json"))})


def redact(value: Any, key: str = "") -> Any:
    """Headers can carry tokens and URLs can carry passwords; key *names* of env variables are kept."""
    if isinstance(value, dict):
        if key == "headers":
            return {k: REDACTED for k in value}
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str) and key == "url" and "@" in value:
        parts = urlsplit(value)
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=f"{REDACTED}@{host}").geturl()
    return value
