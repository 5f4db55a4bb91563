"""Time and chance for the routing core, injected so tests can drive them.

Every routing decision reads ``Clock`` (monotonic seconds) and draws from a ``random.Random`` it was
given; nothing in ``speech_router.router`` calls ``time`` or the global ``random`` on its own, so a test
advances a ``FakeClock`` and seeds the rng to replay a scenario exactly.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]


class FakeClock:
    """A clock that moves only when told: ``clock.advance(0.5)``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now})"
