"""Plumbing every emulated server shares: node header, lifespan, and the `/_emulator/*` control API.

The control API lets a fleet started from the command line (`python -m speech_router.emulator`) be steered
by a benchmark in another process; in-process tests just mutate the config object instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from speech_router.emulator.state import EmulatorState

NODE_HEADER = "x-emulator-node"
CONTROL_PREFIX = "/_emulator"


class NodeHeader:
    """Adds `x-emulator-node: <config.name>` to every response, so tests can see who served."""

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                name = self.state.config.name.encode("latin-1", "replace")
                message = {**message, "headers": [*message.get("headers", []), (NODE_HEADER.encode(), name)]}
            await send(message)

        await self.app(scope, receive, send_named)


def state_of(request: Request) -> EmulatorState:
    """The emulator state of the app serving `request`."""
    state: EmulatorState = request.app.state.emulator
    return state


async def _get_state(request: Request) -> Response:
    return JSONResponse(state_of(request).snapshot())


async def _set_config(request: Request) -> Response:
    state = state_of(request)
    try:
        changes = await request.json()
        state.config.update(changes)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse(state.snapshot())


async def _reset(request: Request) -> Response:
    state = state_of(request)
    state.reset()
    return JSONResponse(state.snapshot())


CONTROL_ROUTES: list[BaseRoute] = [
    Route(f"{CONTROL_PREFIX}/state", _get_state, methods=["GET"]),
    Route(f"{CONTROL_PREFIX}/config", _set_config, methods=["POST"]),
    Route(f"{CONTROL_PREFIX}/reset", _reset, methods=["POST"]),
]


def build_app(
    state: EmulatorState,
    routes: Sequence[BaseRoute],
    exception_handlers: Mapping[Any, Any] | None = None,
) -> Starlette:
    """Starlette app with the protocol's routes, the control API, the node header and a lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.open()
        try:
            yield
        finally:
            state.release()

    app = Starlette(
        routes=[*routes, *CONTROL_ROUTES],
        middleware=[Middleware(NodeHeader, state=state)],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
    app.state.emulator = state
    return app
