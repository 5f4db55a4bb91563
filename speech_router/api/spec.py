"""The shape of one route of the public API, and the table that finds a request's route.

Every fact about a route lives in its ``ApiRoute``: path, methods, handler, operation id, who may call it
(``Access``), the shape of its errors (``ErrorShape``), its label in ``speech_router_requests_total`` and
what OpenAPI says about it (``Doc``). ``speech_router.api.table`` lists them; the app, the OpenAPI
document, the metrics and the auth check all read that one list. This module knows no handler, so the
edge middleware can match routes without importing the handlers above it.
"""

from __future__ import annotations

import enum
import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp

#: a route's handler: Starlette's request -> response, or an ASGI app (the synthesis routes stream themselves)
Handler = Callable[[Request], Awaitable[Response]] | ASGIApp
#: OpenAPI ``content``: media type -> media object
Content = dict[str, dict[str, Any]]


class Access(enum.Enum):
    """Who may call a route. Client routes need a client key once keys are configured; ``server.auth.open_paths``
    opens client routes (never admin ones) to anyone, and defaults to the ``OPEN`` routes of the table."""

    OPEN = "open"
    CLIENT = "client"
    ADMIN = "admin"  # the admin key only
    VOICES = "voices"  # the admin key, or a client key with the ``voices`` scope
    PAGE = "page"  # the fleet page's files: open to anyone whatever ``open_paths`` says (they hold no data)


class ErrorShape(enum.Enum):
    """How a route's errors look: OpenAI's ``{"error": {...}}``, or index-tts-vllm's on its ``/tts_url`` drop-in."""

    OPENAI = "openai"
    TTS_URL = "tts_url"


@dataclass(frozen=True)
class Doc:
    """What OpenAPI says about one operation (the response and request shapes, the statuses it answers)."""

    summary: str
    tag: str
    ok: Content
    body: type[BaseModel] | None = None
    form: Content | None = None  # a request body that is not JSON (the voice upload)
    errors: tuple[int, ...] = ()
    also: tuple[tuple[int, str], ...] = ()  # other statuses answered with the success body: (status, why)
    synthesis_headers: bool = False  # the priority and deadline request headers
    deprecated: bool = False
    #: the success status and its description (101 for the WebSocket route's upgrade)
    status: tuple[int, str] = (200, "OK")
    params: tuple[dict[str, Any], ...] = ()  # query and header parameters, as OpenAPI writes them


@dataclass(frozen=True)
class ApiRoute:
    """One method set on one path, with everything the edge, the docs and the metrics need to know about it."""

    path: str
    methods: tuple[str, ...]
    handler: Handler = field(repr=False)
    operation_id: str
    access: Access
    doc: Doc = field(repr=False)
    #: the ``route`` label of ``speech_router_requests_total`` (synthesis routes only; an alias counts as its
    #: canonical path); None: not counted there
    metric: str | None = None
    errors: ErrorShape = ErrorShape.OPENAI
    #: kept for one release under the name it had: the route it stands for
    alias_of: str | None = None
    #: the handler also serves WebSocket connections on this path (its GET is the handshake)
    websocket: bool = False

    @functools.cached_property
    def serves_itself(self) -> bool:
        """An ASGI app that answers its own errors (the synthesis routes): the edge calls it directly, past
        Starlette's routing and exception layers, which each chunk of audio would otherwise pass through."""
        return not (inspect.isfunction(self.handler) or inspect.ismethod(self.handler))

    @property
    def pattern(self) -> re.Pattern[str] | None:
        """Starlette's regex for a path with ``{name}`` or ``{name:path}`` parameters; None for a fixed path."""
        return compile_path(self.path)[0] if "{" in self.path else None


class RouteTable:
    """The routes, found by method and path in one dict lookup (fixed paths) or a short regex scan (parameters)."""

    def __init__(self, routes: Iterable[ApiRoute]) -> None:
        self.routes: tuple[ApiRoute, ...] = tuple(routes)
        self._fixed: dict[str, list[ApiRoute]] = {}
        self._patterns: list[tuple[re.Pattern[str], ApiRoute]] = []
        for route in self.routes:
            pattern = route.pattern
            if pattern is None:
                self._fixed.setdefault(route.path, []).append(route)
            else:
                self._patterns.append((pattern, route))
        seen = set()
        for route in self.routes:
            for method in route.methods:
                if (method, route.path) in seen:
                    raise ValueError(f"two routes for {method} {route.path}")
                seen.add((method, route.path))

    def __repr__(self) -> str:
        return f"RouteTable({len(self.routes)} routes)"

    def __iter__(self) -> Iterator[ApiRoute]:
        return iter(self.routes)

    def match(self, method: str, path: str) -> ApiRoute | None:
        """The route serving ``method`` on ``path``; for another method on a known path, that path's first route
        (so a 405 is answered in its shape and behind its auth); None for an unknown path."""
        candidates = self._fixed.get(path)
        if candidates is None:
            candidates = [route for pattern, route in self._patterns if pattern.match(path)]
            if not candidates:
                return None
        if method == "HEAD":
            method = "GET"
        for route in candidates:
            if method in route.methods:
                return route
        return candidates[0]

    def open_paths(self) -> list[str]:
        """Paths anyone may call: the default of ``server.auth.open_paths``."""
        return [route.path for route in self.routes if route.access is Access.OPEN]

    def metric_labels(self) -> set[str]:
        return {route.metric for route in self.routes if route.metric is not None}
