"""Hook specifications: how plugins extend speech-router.

Hooks take keyword arguments only; an implementation may accept fewer arguments than its spec.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Protocol

import pluggy

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..config.models import Settings
    from ..router.dispatch import Router
    from ..types import SynthesisRequest

hookspec = pluggy.HookspecMarker("speech_router")
hookimpl = pluggy.HookimplMarker("speech_router")


class RegisterBackend(Protocol):
    """``register_backends``' callback (``BackendRegistry.register``)."""

    def __call__(self, backend_cls: type[Backend], aliases: Iterable[str] = ()) -> None: ...


@hookspec
def register_backends(register: RegisterBackend) -> None:
    """Register Backend classes by calling ``register(BackendClass, aliases=())``."""


@hookspec
def prepare_request(request: SynthesisRequest, settings: Settings) -> None:
    """Modify a SynthesisRequest in place (text normalisation, voice aliases) before it is routed."""


@hookspec
def startup(router: Router) -> Awaitable[None] | None:
    """Called once after the backends opened; may return an awaitable."""
