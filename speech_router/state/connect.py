"""Which store ``state.url`` names, and how it is shown: never with its password.

``memory://`` is the in-process store (one replica: for trying it out and for tests); every other scheme is
Valkey or Redis, whose client is imported here only, so a router without a store never loads it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..config.models import StateConfig
from ..errors import ConfigError, ConfigIssue
from .store import StateStore


def where(url: str) -> str:
    """The store's address for logs: scheme, host, port and database, no user, password or query."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def open_store(config: StateConfig) -> StateStore:
    """The store ``config.url`` names. Raises ``ConfigError`` when its client is not installed."""
    assert config.url is not None
    if config.url.startswith("memory://"):
        from .memory import MemoryStore

        return MemoryStore()
    try:
        from .redis_store import RedisStore
    except ImportError:
        raise ConfigError([ConfigIssue("state.url", "a Valkey or Redis store needs the state extra: "
                                                    "pip install 'speech-router[state]'")]) from None
    return RedisStore(config.url, prefix=config.prefix, timeout=config.timeout)
