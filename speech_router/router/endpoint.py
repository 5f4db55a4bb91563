"""An endpoint as the router tracks it: its backend, its in-flight count and its last health."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..backends.base import Backend


@dataclass
class Endpoint:
    """One backend instance inside a pool, plus the state the router keeps about it."""

    backend: Backend
    pool: str
    weight: float = 1.0
    max_concurrency: int = 1
    inflight: int = 0
    #: None until the first health check; unknown counts as healthy so a fresh router can serve
    healthy: bool | None = None
    detail: str = ""
    last_check: float | None = None
    last_error: str = ""
    served: int = 0
    data: dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def available(self) -> bool:
        return self.healthy is not False

    @property
    def has_capacity(self) -> bool:
        return self.inflight < self.max_concurrency

    def mark(self, healthy: bool, detail: str = "") -> None:
        self.healthy = healthy
        self.detail = detail
        self.last_check = time.time()
        if not healthy:
            self.last_error = detail

    @property
    def state(self) -> str:
        return {None: "unknown", True: "up", False: "down"}[self.healthy]

    def describe(self) -> dict[str, object]:
        """The public view used by ``/health`` and ``speech-router endpoints``."""
        from urllib.parse import urlsplit

        url = self.backend.endpoint.url
        if url:  # never show credentials embedded in a URL
            parts = urlsplit(url)
            url = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()
        return {
            "name": self.name, "pool": self.pool, "type": self.backend.type, "url": url, "state": self.state,
            "healthy": self.available, "detail": self.detail, "inflight": self.inflight,
            "max_concurrency": self.max_concurrency, "weight": self.weight, "served": self.served,
            "last_check": self.last_check, "last_error": self.last_error,
        }
