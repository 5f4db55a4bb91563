"""Hook specifications: how plugins extend speech-router.

Hooks take keyword arguments only; an implementation may accept fewer arguments than its spec.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("speech_router")
hookimpl = pluggy.HookimplMarker("speech_router")


@hookspec
def register_backends(register):  # type: ignore[no-untyped-def]
    """Register Backend classes by calling ``register(BackendClass, aliases=())``."""


@hookspec
def prepare_request(request, settings):  # type: ignore[no-untyped-def]
    """Modify a SynthesisRequest in place (text normalisation, voice aliases) before it is routed."""


@hookspec
def startup(router):  # type: ignore[no-untyped-def]
    """Called once after the backends opened; may return an awaitable."""
