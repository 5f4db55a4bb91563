"""Active health checks: one task per endpoint, calling ``Backend.health()`` every interval."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from .endpoint import Endpoint

log = logging.getLogger(__name__)


async def check_once(ep: Endpoint, timeout: float, on_change: Callable[[Endpoint], None] | None = None) -> None:
    """Run one health check and record it; a check that raises or times out marks the endpoint down."""
    before = ep.healthy
    try:
        report = await asyncio.wait_for(ep.backend.health(), timeout)
        healthy, detail = report.healthy, report.detail
        ep.data = report.data
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        healthy, detail = False, f"health check timed out after {timeout:g}s"
    except Exception as exc:  # noqa: BLE001 - a broken check is an unhealthy endpoint, not a crash
        healthy, detail = False, f"health check failed: {exc!r}"
    ep.mark(healthy, detail)
    if before != healthy:
        level = logging.INFO if healthy else logging.WARNING
        log.log(level, "endpoint %s in pool %s is %s%s", ep.name, ep.pool, ep.state, f": {detail}" if detail else "")
    if on_change is not None:
        on_change(ep)


async def run_checks(ep: Endpoint, interval: float, timeout: float,
                     on_change: Callable[[Endpoint], None] | None = None) -> None:
    """Check ``ep`` forever, every ``interval`` seconds with up to 10% jitter so checks do not align."""
    while True:
        await asyncio.sleep(interval * (1 + random.uniform(-0.1, 0.1)))
        await check_once(ep, timeout, on_change)
