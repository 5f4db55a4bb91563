"""``AppState``: what one running app holds, typed, so a reader (and mypy) can follow a request into the router.

It is Starlette's ``app.state`` itself (a subclass of its ``State``), so ``app.state.router`` keeps working
where an untyped ``app.state`` was read; handlers and middleware read it through ``app_state``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pluggy
from starlette.datastructures import State
from starlette.requests import Request
from starlette.types import Scope

from ..cache.speech import SpeechCache
from ..config.models import Settings
from ..jobs.service import Jobs
from ..metrics import Metrics
from ..plugins.manager import BackendRegistry
from ..router.dispatch import Router
from ..voice_sync import VoiceDistributor
from .auth import Authenticator
from .observe import RequestMetrics
from .spec import RouteTable

if TYPE_CHECKING:
    from ..state.hub import SharedState
    from ..tracing.setup import Tracing


class ReloadReport(Protocol):
    """What a reload did (``reload.ReloadResult``)."""

    result: str

    def as_dict(self) -> dict[str, Any]: ...


class Reloads(Protocol):
    """What the admin API and the CLI ask of the app's reloader (``reload.Reloader``, which takes this state)."""

    async def reload(self, trigger: str) -> ReloadReport: ...

    def refresh_secrets(self, settings: Settings) -> None: ...


class AppState(State):
    """The app's parts. ``settings``, ``auth`` and ``tts_url_model`` are swapped by a reload; the rest live as long
    as the app (the router applies a new config to itself)."""

    settings: Settings
    router: Router
    metrics: Metrics
    #: ``speech_router_requests_total`` and friends, their label children resolved once
    request_metrics: RequestMetrics
    auth: Authenticator
    cache: SpeechCache
    pm: pluggy.PluginManager
    registry: BackendRegistry
    routes: RouteTable
    #: where client and admin keys are read from (``os.environ`` unless a test gives its own)
    env: Mapping[str, str]
    #: Unix time the app was made (``/v1/models``' ``created``)
    created: int
    #: the model ``/tts_url`` is served by: the first whose primary pool speaks index-tts-vllm's body
    tts_url_model: str | None
    #: whether a plugin implements ``prepare_request`` (else the hook is not called per request)
    prepare_hooks: bool
    reloader: Reloads
    voice_distributor: VoiceDistributor
    #: OpenTelemetry traces, when on (``speech_router.tracing.setup.build_tracing``); None: off, nothing is traced
    tracing: Tracing | None
    #: long-form jobs: the store, the files and the runner (off while ``jobs.directory`` is not set)
    jobs: Jobs
    #: what the replicas share through the state store (``state.url``); None: this replica keeps its own state
    shared: SharedState | None
    #: the OpenAPI document and the settings it was built for (``openapi.openapi_json``)
    openapi: tuple[Settings, dict[str, Any]] | None

    def __init__(self, **parts: Any) -> None:
        super().__init__({"openapi": None, "tts_url_model": None, "tracing": None, "shared": None, **parts})

    def __repr__(self) -> str:
        return f"AppState({', '.join(sorted(self._state))})"


def app_state(request: Request) -> AppState:
    """The state of the app serving ``request``."""
    state = request.app.state
    assert isinstance(state, AppState), "the app was not made by speech_router.api.app.create_app"
    return state


def scope_state(scope: Scope) -> AppState:
    """The same, from an ASGI scope (middleware)."""
    state = scope["app"].state
    assert isinstance(state, AppState), "the app was not made by speech_router.api.app.create_app"
    return state
