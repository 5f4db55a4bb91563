"""Plan: what a synthesis request asks, checked before any endpoint is bothered.

Each API's handler (``speech_router.api.routes``) turns its body into a ``SynthesisRequest`` and the output it
wants (format, rate, streaming, SSE); ``prepare`` then refuses what no pool on the model's route can do, reads
the priority and deadline headers, runs the ``prepare_request`` hook and finds the response cache's key. What
a plain request does not need (the route's capabilities, which a health check may change) is not looked at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config.models import Settings
from ..errors import RequestInvalid
from ..router.ticket import PRIORITIES
from ..types import SynthesisRequest
from .audio_out import check_format
from .facts import ModelFacts, check_capabilities
from .observe import Exchange
from .state import AppState


@dataclass(eq=False)
class Plan:
    """One synthesis as planned: the router's request and what the client gets back."""

    sreq: SynthesisRequest
    fmt: str
    sample_rate: int | None = None
    stream: bool = True
    sse: bool = False
    #: whether the route's pools must know the voice (not for ``/tts_url``, whose body names the file itself)
    check_voice: bool = True
    priority: str = "interactive"
    #: the response cache's key, when the model caches whole answers
    cache_key: str | None = None


def request_priority(header: str | None, keyed: str | None, settings: Settings) -> str:
    """The client key's priority class when it has one, else the configured header (default interactive)."""
    if keyed:
        return keyed
    value = (header or "interactive").strip().lower() or "interactive"
    if value not in PRIORITIES:
        raise RequestInvalid(f"Invalid {settings.server.priority_header} header {value!r}: use interactive or batch.",
                             param=settings.server.priority_header)
    return value


def request_deadline(raw: str | None, settings: Settings) -> float | None:
    """Seconds the client will wait, from the configured deadline header (a positive number), or None."""
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        header = settings.server.deadline_header
        raise RequestInvalid(f"Invalid {header} header {raw[:32]!r}: give the seconds you will wait, a positive "
                             "number.", param=header)
    return value


def header(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    """The first value of header ``name`` among the request's raw headers (names come lower-cased)."""
    wanted = name.lower().encode("latin-1")
    return next((v.decode("latin-1") for k, v in headers if k == wanted), None)


def prepare(state: AppState, plan: Plan, headers: list[tuple[bytes, bytes]], ex: Exchange) -> None:
    """Check the plan against the route and the request's headers; fill in priority, deadline and cache key."""
    sreq, settings = plan.sreq, state.settings
    ex.model, ex.voice, ex.chars = sreq.model, sreq.voice, len(sreq.text)
    check_format(plan.fmt, plan.sample_rate)
    if plan.check_voice:
        state.router.check_voice(sreq.model, sreq.voice or "", sreq.voice_params)
    if sreq.speed != 1.0 or sreq.emotion.method != 0:  # what a route's pools can do is read only when it matters
        check_capabilities(ModelFacts.of(state.router, sreq.model), sreq)
    server = settings.server
    plan.priority = ex.priority = request_priority(header(headers, server.priority_header), ex.priority, settings)
    wait = request_deadline(header(headers, server.deadline_header), settings)
    if wait is not None:
        sreq.timeout = wait if sreq.timeout is None else min(wait, sreq.timeout)
    if state.prepare_hooks:
        state.pm.hook.prepare_request(request=sreq, settings=settings)
    if state.cache.enabled(settings, sreq):
        plan.cache_key = state.cache.response_key(settings, sreq, plan.fmt, plan.sample_rate)
