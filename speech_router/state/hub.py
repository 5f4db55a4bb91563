"""``SharedState``: everything one replica shares through the store, built from ``state:`` and run by the app.

The app builds it only when ``state.url`` is set (``speech_router.api.app``), so a router without a store imports
none of this, nor ``redis`` or ``limits``. Its parts, each in its own module:

- ``guard.Guard``: every call bounded in time; a store that fails is left alone until it answers again;
- ``inflight.InflightSharing``: requests in flight per endpoint, as the others' external load (a router listener);
- ``knowledge.KnowledgeSharing``: what is learned of each endpoint, published and blended;
- ``limiter.SharedRateLimits``: client rate limits for all replicas together (Valkey or Redis only);
- ``cache.shared.SharedTier``: the cache's shared tier; ``voices.shared.SharedVoices``: uploaded voices.

``start`` runs before the replica serves: it reads the fleet's knowledge and voices, so the first request is
routed with what the other replicas learned. ``aclose`` withdraws this replica's requests in flight at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..cache.shared import SharedTier
from ..config.models import Settings, VoiceStoreConfig
from ..metrics import Metrics
from ..router.endpoint import Endpoint
from ..router.load import LoadSignals
from ..voices.shared import SharedVoices
from .connect import open_store, where
from .guard import Guard
from .inflight import InflightSharing
from .knowledge import KnowledgeSharing

if TYPE_CHECKING:
    from .limiter import SharedRateLimits

log = logging.getLogger("speech_router.state")


def replica_id() -> str:
    """This process's name among the replicas: host, process id and a random part (a restart is a new replica)."""
    return f"{socket.gethostname()[:48]}-{os.getpid()}-{secrets.token_hex(3)}"


class SharedState:
    """See the module's docstring."""

    def __init__(self, settings: Settings, metrics: Metrics, endpoints: Callable[[], list[Endpoint]],
                 load_signals: Callable[[], LoadSignals], voice_store: Callable[[], VoiceStoreConfig]) -> None:
        config = settings.state
        assert config.url is not None
        self.replica = replica_id()
        self.store = open_store(config)
        self.where = where(config.url)
        self.guard = Guard(self.store, timeout=config.timeout, where=self.where, observer=metrics)

        def external(ep: Endpoint, count: int) -> None:
            metrics.endpoint_external.labels(ep.pool, ep.name).set(count)

        self.inflight = InflightSharing(
            self.guard, self.replica, lease=config.lease, interval=config.inflight_interval, endpoints=endpoints,
            polled=lambda ep: ep in load_signals().polled, wake=lambda ep: load_signals().wake(ep),
            on_external=external)
        self.knowledge = KnowledgeSharing(self.guard, self.replica, endpoints, config.knowledge_interval,
                                          time.monotonic)
        self.limits: SharedRateLimits | None = None
        if self.store.kind == "redis":
            from .limiter import SharedRateLimits
            from .redis_store import RedisStore

            assert isinstance(self.store, RedisStore)
            self.limits = SharedRateLimits(self.guard, self.store, config.url, self.inflight.replicas)
        cache = settings.cache
        self.cache = SharedTier(self.guard, cache.shared_bytes, cache.shared_ttl, cache.max_entry_bytes) \
            if cache.shared_bytes else None
        self.voices = SharedVoices(self.guard, self.replica, voice_store, config.voices_interval)

    def __repr__(self) -> str:
        return f"SharedState(store={self.where!r}, replica={self.replica!r}, up={self.guard.up})"

    async def start(self) -> None:
        """Connect, take in the fleet's knowledge and voices, then keep sharing in the background."""
        if await self.guard.connect():
            replicas = await self.knowledge.pull()
            await self.voices.sync()
            log.info("replica %s joins %d other replica(s) on the state store", self.replica, replicas)
        self.guard.rejoined.append(self.knowledge.exchange)
        self.guard.rejoined.append(self.voices.sync)
        self.inflight.start()
        self.knowledge.start()
        self.voices.start()

    async def aclose(self) -> None:
        await self.voices.aclose()
        await self.knowledge.aclose()
        if self.guard.up:
            await self.knowledge.publish()
        await self.inflight.aclose()
        await self.guard.aclose()

