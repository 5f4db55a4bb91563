"""Active health checks: one task per endpoint calling ``Backend.health()`` every interval (with
jitter), applying the healthy/unhealthy thresholds; an endpoint that is down is checked every
``unhealthy_interval`` (2 s) instead, so a node (or a whole fleet) that comes back is in rotation within
seconds, not a whole interval later; optionally a deep check that synthesizes a short text now and then,
for nodes whose ``/health`` says "healthy" while synthesis is broken.

Timeouts are ``asyncio.timeout`` blocks, never ``asyncio.wait_for``: on Python 3.11, a task cancelled just as
the awaited call finished got the call's result from ``wait_for`` and lost the cancellation, so a check loop
ran on and the router's shutdown waited for it forever (issue #22).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from ..types import SynthesisRequest
from .endpoint import Endpoint

log = logging.getLogger(__name__)

OnChange = Callable[[Endpoint], None]


async def ask(ep: Endpoint, timeout: float) -> tuple[bool, str, dict[str, Any] | None]:
    """One ``health()`` call: healthy, why, and what the node reported of itself; raising or timing out means
    unhealthy, with the reason."""
    try:
        async with asyncio.timeout(timeout):  # not wait_for: on 3.11 it can swallow a cancel (see module doc)
            report = await ep.backend.health()
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        return False, f"health check timed out after {timeout:g}s", None
    except Exception as exc:  # noqa: BLE001 - a broken check is an unhealthy endpoint, not a crash
        return False, f"health check failed: {exc!r}", None
    return report.healthy, report.detail, report.data


async def ask_deep(ep: Endpoint, request: SynthesisRequest, timeout: float) -> tuple[bool, str]:
    """Synthesize ``request`` for real and read the whole answer."""

    async def run() -> int:
        response = await ep.backend.synthesize(request)
        size = 0
        try:
            async for chunk in response.chunks:
                size += len(chunk)
        finally:
            await response.aclose()
        return size

    try:
        async with asyncio.timeout(timeout):
            size = await run()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001
        return False, f"deep check failed: {getattr(exc, 'message', None) or exc!r}"
    return (size > 0), ("deep check passed" if size else "deep check: empty audio")


def record(ep: Endpoint, healthy: bool, detail: str, on_change: OnChange | None,
           data: dict[str, Any] | None = None) -> None:
    changed = ep.record_check(healthy, detail, data)
    if changed:
        level = logging.INFO if ep.available else logging.WARNING
        log.log(level, "endpoint %s in pool %s is %s%s", ep.name, ep.pool, ep.state, f": {detail}" if detail else "")
    if on_change is not None:
        on_change(ep)


async def check_once(ep: Endpoint, on_change: OnChange | None = None) -> None:
    healthy, detail, data = await ask(ep, ep.health_check.timeout)
    record(ep, healthy, detail, on_change, data)


async def run_checks(ep: Endpoint, on_change: OnChange | None = None,
                     deep_request: SynthesisRequest | None = None) -> None:
    """Check ``ep`` until cancelled: every ``interval`` while it is up, every ``unhealthy_interval`` while it is down
    (also when it went down between two checks, refusing a request); every ``deep.interval`` the check is a real
    synthesis instead."""
    cfg = ep.health_check
    loop = asyncio.get_running_loop()
    next_deep = loop.time() + cfg.deep.interval
    due = loop.time() + _jittered(cfg.interval, cfg.jitter)
    while True:
        up = ep.available and ep.healthy is not None
        step = _jittered(min(cfg.interval, cfg.unhealthy_interval), cfg.jitter)
        await asyncio.sleep(min(step, max(0.0, due - loop.time())) if up else step)
        if ep.available and ep.healthy is not None and loop.time() < due:
            continue  # up, and not due yet
        data = None
        if deep_request is not None and cfg.deep.enabled and loop.time() >= next_deep:
            next_deep = loop.time() + cfg.deep.interval
            healthy, detail = await ask_deep(ep, deep_request, max(cfg.timeout, 30.0))
        else:
            healthy, detail, data = await ask(ep, cfg.timeout)
        record(ep, healthy, detail, on_change, data)
        due = loop.time() + _jittered(cfg.interval, cfg.jitter)


def _jittered(seconds: float, jitter: float) -> float:
    return seconds * (1 + random.uniform(-jitter, jitter))
