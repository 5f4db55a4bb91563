"""Hedged tries: a second try elsewhere when the first is slow; the first answer wins.

Every try is hedged when a pool sets ``hedge.enabled`` (after ``hedge.delay``, by default half the per-try
timeout). A try on an endpoint under suspicion (a timeout since its last answer, or its breaker's
half-open probe) is hedged in any case, and early: when it has not answered within what its peers take for
the text, a second try starts on a trusted endpoint with a free slot, so no client waits long on a node
that may hang; when no slot is free elsewhere at that moment, it looks again as slots free. The suspect's try
then goes on without the client until it answers or times out, and that is the verdict its breaker and
estimate learn from (a probe no client waits on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from ..types import AudioResponse
from .events import RouterListener
from .pool import Pool
from .ticket import Lease, Ticket

#: when no slot is free elsewhere at the hedge's time, how often to look again (the pool's tick)
RETRY_S = 0.05

#: one try on a lease, within a timeout (``AttemptLoop.attempt`` for the request being served)
Try = Callable[[Lease, float], Coroutine[Any, Any, AudioResponse]]


class Hedging:
    """Races a first try against a second; keeps the suspects' losing tries running to their verdict."""

    def __init__(self, listener: RouterListener) -> None:
        self.listener = listener
        #: suspects' tries that lost their race and go on without the client
        self._detached: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"Hedging(detached={len(self._detached)})"

    async def race(self, pool: Pool, lease: Lease, chars: int, timeout: float, tried: set[str], left: float,
                   attempt: Try) -> tuple[AudioResponse, Lease]:
        """Start a second try elsewhere if the first is slow; keep whichever answers first. ``tried`` grows by the
        second endpoint; ``left``: seconds to the request's deadline."""
        delay = (pool.config.hedge.delay or timeout / 2) if pool.config.hedge.enabled else timeout / 2
        if lease.suspect:
            delay = min(delay, pool.suspect_hedge_delay(lease.endpoint, chars))
        started = asyncio.get_running_loop().time()
        first = asyncio.create_task(attempt(lease, timeout))
        done, _ = await asyncio.wait({first}, timeout=delay)
        second_lease = None
        while not done:  # no slot free elsewhere yet: look again as slots free, while the first has time
            second_lease = pool.try_now(Ticket(chars, exclude=frozenset(tried), allow_panic=False))
            if second_lease is not None or asyncio.get_running_loop().time() >= started + timeout:
                break
            done, _ = await asyncio.wait({first}, timeout=RETRY_S)
            delay = asyncio.get_running_loop().time() - started
        if second_lease is None:
            return await first, lease
        tried.add(second_lease.endpoint.name)
        # the second try gets its own endpoint's time (a hedge of a suspect starts early), within the deadline
        second_timeout = max(timeout - delay, pool.per_try_timeout(second_lease, chars))
        second = asyncio.create_task(attempt(second_lease, max(0.001, min(second_timeout, left - delay))))
        leases = {first: lease, second: second_lease}
        pending: set[asyncio.Task[AudioResponse]] = {first, second}
        error: BaseException | None = None
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                winners = [t for t in done if not t.cancelled() and t.exception() is None]
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        error = error or task.exception()
                if winners:
                    winner = winners[0]
                    for extra in winners[1:]:  # both answered at once: keep one, close the other
                        await extra.result().aclose()
                    self.listener.hedged(pool.name, "first" if winner is first else "second")
                    return winner.result(), leases[winner]
        finally:
            if first in pending and lease.suspect:
                pending.discard(first)
                self._detach(first)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task
        assert error is not None
        raise error

    def _detach(self, task: asyncio.Task[AudioResponse]) -> None:
        """Let a suspect's try run to its verdict (an answer, read and dropped, or its own timeout)."""

        async def verdict() -> None:
            try:
                response = await task
            except BaseException:  # noqa: BLE001 - the try recorded its own outcome
                return
            try:
                async for _ in response.chunks:
                    pass
            except Exception:  # noqa: BLE001 - a broken body is recorded by the read-ahead
                pass
            finally:
                with contextlib.suppress(Exception):
                    await response.aclose()

        detached = asyncio.create_task(verdict())
        self._detached.add(detached)
        detached.add_done_callback(self._detached.discard)

    async def aclose(self) -> None:
        """Cancel the suspects' tries still running without a client."""
        tasks = list(self._detached)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
