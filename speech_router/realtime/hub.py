"""The realtime sessions open on one app: how many in all and per client key, against their limits."""

from __future__ import annotations

import weakref
from collections import Counter

from ..api.state import AppState
from ..config.realtime import RealtimeConfig
from .protocol import CloseCode, Refusal


class SessionHub:
    """Open sessions of one app (``of``); ``admit`` counts one in or refuses it, ``release`` counts it out."""

    def __init__(self) -> None:
        self.open = 0
        self.per_key: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"SessionHub(open={self.open}, keys={len(self.per_key)})"

    def admit(self, key: str | None, limits: RealtimeConfig) -> None:
        """Count a session in for ``key`` (None: no client keys are configured), or raise ``Refusal``."""
        if self.open >= limits.max_sessions:
            raise Refusal(f"Too many realtime sessions open ({limits.max_sessions}, server.realtime.max_sessions); "
                          "try again shortly.", code="too_many_sessions", close=CloseCode.TRY_AGAIN,
                          outcome="too_many_sessions")
        if key is not None and self.per_key[key] >= limits.max_sessions_per_key:
            raise Refusal(f"Too many realtime sessions open for client {key!r} ({limits.max_sessions_per_key}, "
                          "server.realtime.max_sessions_per_key); close one first.", code="too_many_sessions",
                          close=CloseCode.TRY_AGAIN, outcome="too_many_sessions")
        self.open += 1
        if key is not None:
            self.per_key[key] += 1

    def release(self, key: str | None) -> None:
        self.open -= 1
        if key is not None:
            self.per_key[key] -= 1
            if not self.per_key[key]:
                del self.per_key[key]


_HUBS: weakref.WeakKeyDictionary[AppState, SessionHub] = weakref.WeakKeyDictionary()


def hub_of(state: AppState) -> SessionHub:
    """The hub of the app whose state this is (made on first use)."""
    hub = _HUBS.get(state)
    if hub is None:
        hub = _HUBS[state] = SessionHub()
    return hub
