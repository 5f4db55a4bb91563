"""Client API keys (``Authorization: Bearer``, OpenAI style), per-key rate limits and the admin key.

Keys come from three places: ``server.auth.keys`` (each names the environment variable that holds its
secret), a YAML ``keys_file`` and the ``keys_env`` variable (``key`` or ``name=key``, comma-separated).
Client authentication is on as soon as one key is known. Only the key's *name* ever reaches logs,
metrics and responses; secrets are kept as SHA-256 digests and compared in constant time.

Who may call a route is the route table's ``Access`` (``speech_router.api.spec``); the edge (``gate.Gate``)
asks ``Authenticator.check`` with it. It reads ``app.state.auth`` on every request, so a config reload swaps
in a new ``Authenticator``; ``inherit_rate_limits`` carries each client's window over by key name.

With a state store (``state.url``) a key's rate limit holds for all replicas together: ``check`` leaves the count to
``settle``, which asks the store (``SharedLimits``: ``speech_router.state.limiter``) and, while the store cannot
answer, counts in this replica's own window with its share of the limit.

Writing voices (``Access.VOICES``) needs the admin key or a client key with the ``voices`` scope
(``scopes: [voices]``); with neither configured, voice uploads are off (403), even with client auth off.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config.locations import format_loc
from ..config.messages import user_message
from ..config.models import Settings
from ..errors import ConfigError, ConfigIssue
from .spec import Access

#: the client label in logs and metrics when authentication is off (or the path is open)
ANONYMOUS = "anonymous"
#: the client label of requests made with the admin key
ADMIN = "admin"
#: every admin route's path starts so (``speech_router.api.table`` checks it)
ADMIN_PREFIX = "/admin/"
#: rate limits count requests in a sliding window of this many seconds
RATE_WINDOW_S = 60.0
#: the scope a client key needs to upload and delete voices (the admin key may too)
VOICES_SCOPE = "voices"

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$"
_NAME = re.compile(_NAME_PATTERN)


@dataclass(frozen=True)
class ClientKey:
    """A known key: its name (the only part shown anywhere), priority class and rate limit."""

    name: str
    digest: bytes
    priority: str | None = None
    requests_per_minute: int | None = None
    scopes: frozenset[str] = frozenset()

    def __repr__(self) -> str:  # never the digest
        return (f"ClientKey(name={self.name!r}, priority={self.priority!r}, rpm={self.requests_per_minute!r}, "
                f"scopes={sorted(self.scopes)!r})")


@dataclass(frozen=True)
class Decision:
    """What to do with a request: let it through as ``client``, or answer ``status`` with an error."""

    client: str
    priority: str | None = None
    status: int = 200
    reason: str = ""  # auth_rejections label, or "rate_limited"
    retry_after: float = 0.0
    #: a key whose rate limit the shared store counts: ``Authenticator.settle`` decides
    pending: ClientKey | None = None


class SharedLimits(Protocol):
    """Rate limits counted for all replicas together (``speech_router.state.limiter.SharedRateLimits``)."""

    async def admit(self, name: str, per_minute: int) -> float | None:
        """0 when admitted, seconds to wait when refused, None when the store cannot say."""

    def replicas(self) -> int:
        """How many replicas share the limits (this replica's share, while the store cannot count)."""


class _FileKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME_PATTERN)
    key: str = Field(min_length=1)
    priority: Literal["interactive", "batch"] | None = None
    requests_per_minute: int | None = Field(None, ge=1)
    scopes: list[Literal["voices"]] = Field(default_factory=list)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class Authenticator:
    """Checks keys and rate limits. Build it with ``from_settings``; the clock is injectable for tests."""

    def __init__(self, keys: list[ClientKey], *, open_paths: list[str] | None = None, admin_key: str | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.keys = keys
        self.open_paths = frozenset(open_paths or ())
        self._admin = _digest(admin_key) if admin_key else None
        self.clock = clock or time.monotonic
        self._windows: dict[str, deque[float]] = {k.name: deque() for k in keys if k.requests_per_minute}
        #: with a state store: rate limits for all replicas together (the app sets it)
        self.shared: SharedLimits | None = None

    def __repr__(self) -> str:
        return (f"Authenticator(keys={[k.name for k in self.keys]!r}, open_paths={sorted(self.open_paths)!r}, "
                f"admin={self._admin is not None})")

    @property
    def enabled(self) -> bool:
        """Client authentication is on as soon as any key is known."""
        return bool(self.keys)

    @property
    def admin_enabled(self) -> bool:
        return self._admin is not None

    @classmethod
    def from_settings(cls, settings: Settings, env: Mapping[str, str] | None = None,
                      clock: Callable[[], float] | None = None) -> Authenticator:
        """Keys from ``server.auth``: YAML entries, the keys file and the keys variable. Raises ``ConfigError``."""
        env = os.environ if env is None else env
        auth = settings.server.auth
        keys: list[ClientKey] = []
        issues: list[ConfigIssue] = []
        for i, entry in enumerate(auth.keys):
            secret = env.get(entry.key_env, "")
            if not secret:
                issues.append(ConfigIssue(f"server.auth.keys[{i}].key_env",
                                          f"environment variable {entry.key_env} is not set"))
                continue
            keys.append(ClientKey(entry.name, _digest(secret), entry.priority, entry.requests_per_minute,
                                  frozenset(entry.scopes)))
        if issues:
            raise ConfigError(issues, source=settings.source)
        if auth.keys_file:
            keys += load_keys_file(_resolve(auth.keys_file, settings.source))
        keys += parse_keys_env(env.get(auth.keys_env, ""))
        seen: dict[bytes, str] = {}
        for key in keys:
            if key.digest in seen:
                raise ConfigError([ConfigIssue("server.auth", f"keys {seen[key.digest]!r} and {key.name!r} "
                                                              "have the same secret")], source=settings.source)
            seen[key.digest] = key.name
        return cls(keys, open_paths=auth.open_paths, admin_key=env.get(auth.admin_key_env) or None, clock=clock)

    def inherit_rate_limits(self, previous: Authenticator) -> None:
        """Keep each client's recent requests across a reload, matched by key name (and the shared limits)."""
        self.shared = previous.shared
        for name in self._windows:
            if name in previous._windows:
                self._windows[name] = previous._windows[name]

    def access(self, route: Access | None, path: str) -> Access:
        """What a request needs: its route's access, with ``server.auth.open_paths`` applied (they decide which
        client routes are open, whatever the table's default; they never open admin or voice-writing routes).
        An unknown path under ``/admin/`` is the admin's (a 404 only for the admin key)."""
        if route is Access.ADMIN or route is Access.VOICES:
            return route
        if route is Access.PAGE:  # static files: the key is typed into the page, which then calls the API
            return Access.OPEN
        if route is None and path.startswith(ADMIN_PREFIX):
            return Access.ADMIN
        return Access.OPEN if path in self.open_paths else Access.CLIENT

    def check(self, access: Access, authorization: str | None) -> Decision:
        """Decide on one request from what its route needs (``access``) and its ``Authorization`` header."""
        if access is Access.ADMIN:
            return self._check_admin(authorization)
        if access is Access.VOICES:
            return self._check_voices(authorization)
        if access is Access.OPEN or not self.enabled:
            return Decision(ANONYMOUS)
        given = _bearer(authorization)
        if given is None:
            return Decision("", status=401, reason="missing_key")
        found = self._find(given)
        if found is None:
            return Decision("", status=401, reason="invalid_key")
        return self._admitted(found)

    def _find(self, given: str) -> ClientKey | None:
        digest = _digest(given)
        found: ClientKey | None = None
        for key in self.keys:  # every key is compared, so timing says nothing about which matched
            if hmac.compare_digest(key.digest, digest) and found is None:
                found = key
        return found

    def _check_voices(self, authorization: str | None) -> Decision:
        """The admin key, or a client key with the voices scope; off (403) when neither is configured."""
        given = _bearer(authorization)
        if self._admin is not None and given is not None and hmac.compare_digest(self._admin, _digest(given)):
            return Decision(ADMIN)
        if self._admin is None and not any(VOICES_SCOPE in key.scopes for key in self.keys):
            return Decision("", status=403, reason="voices_disabled")
        if given is None:
            return Decision("", status=401, reason="missing_key")
        found = self._find(given)
        if found is None:
            return Decision("", status=401, reason="invalid_key")
        if VOICES_SCOPE not in found.scopes:
            return Decision(found.name, status=403, reason="missing_scope")
        return self._admitted(found)

    def _admitted(self, found: ClientKey) -> Decision:
        if self.shared is not None and found.requests_per_minute:
            return Decision(found.name, found.priority, pending=found)
        wait = self._admit(found)
        if wait > 0:
            return Decision(found.name, found.priority, status=429, reason="rate_limited", retry_after=wait)
        return Decision(found.name, found.priority)

    def _check_admin(self, authorization: str | None) -> Decision:
        if self._admin is None:
            return Decision("", status=403, reason="admin_disabled")
        given = _bearer(authorization)
        if given is None or not hmac.compare_digest(self._admin, _digest(given)):
            return Decision("", status=401, reason="admin_key")
        return Decision(ADMIN)

    async def settle(self, decision: Decision) -> Decision:
        """A decision ``check`` left to the shared store: the key's request counted there, or (the store cannot
        say) in this replica's own window, with the limit divided among the replicas last seen."""
        key = decision.pending
        if key is None or not key.requests_per_minute or self.shared is None:
            return decision
        wait = await self.shared.admit(key.name, key.requests_per_minute)
        if wait is None:
            wait = self._admit(key, self.shared.replicas())
        if wait > 0:
            return Decision(key.name, key.priority, status=429, reason="rate_limited", retry_after=wait)
        return Decision(key.name, key.priority)

    def _admit(self, key: ClientKey, replicas: int = 1) -> float:
        """Sliding window: at most ``requests_per_minute`` (its share of ``replicas``) admitted in any 60 s. Returns
        seconds to wait, or 0."""
        limit = key.requests_per_minute
        if not limit:
            return 0.0
        limit = max(1, math.ceil(limit / max(1, replicas)))
        window = self._windows.setdefault(key.name, deque())
        now = self.clock()
        while window and window[0] <= now - RATE_WINDOW_S:
            window.popleft()
        if len(window) >= limit:
            return window[-limit] + RATE_WINDOW_S - now  # when enough old requests have left the window
        window.append(now)
        return 0.0


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _resolve(path: str, source: str) -> Path:
    """A relative keys file is found next to the config file it is named in (else in the working directory)."""
    p = Path(path)
    if not p.is_absolute() and source and Path(source).is_file():
        return Path(source).parent / p
    return p


def load_keys_file(path: Path) -> list[ClientKey]:
    """A YAML list of ``{name, key, priority?, requests_per_minute?}``; errors name the file and the entry."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read keys file: {exc.strerror or exc}")], source=str(path)) \
            from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError([ConfigIssue("", f"invalid YAML: {getattr(exc, 'problem', None) or 'parse error'}",
                                       mark.line + 1 if mark is not None else None)], source=str(path)) from None
    if not isinstance(data, list):
        raise ConfigError([ConfigIssue("", "the keys file must be a list of {name, key} entries")], source=str(path))
    keys: list[ClientKey] = []
    issues: list[ConfigIssue] = []
    for i, entry in enumerate(data):
        try:
            k = _FileKey.model_validate(entry)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                msg = user_message(err, _FileKey)
                if err["loc"][:1] == ("key",) and err["type"] != "missing":
                    msg = "a non-empty string is required"  # never echo the value
                issues.append(ConfigIssue(format_loc((i, *err["loc"])), msg))
            continue
        keys.append(ClientKey(k.name, _digest(k.key), k.priority, k.requests_per_minute, frozenset(k.scopes)))
    if issues:
        raise ConfigError(issues, source=str(path))
    return keys


def parse_keys_env(value: str) -> list[ClientKey]:
    """``key`` or ``name=key``, comma-separated; unnamed keys are called ``env-1``, ``env-2``, ..."""
    keys: list[ClientKey] = []
    for i, item in enumerate((part.strip() for part in value.split(",")), start=1):
        if not item:
            continue
        name, sep, secret = item.partition("=")
        if not sep or not secret or not _NAME.match(name):
            name, secret = f"env-{i}", item
        keys.append(ClientKey(name, _digest(secret)))
    return keys


MESSAGES = {
    "missing_key": "You didn't provide an API key. Provide it in an Authorization header using Bearer auth "
                   "(Authorization: Bearer YOUR_KEY).",
    "invalid_key": "Incorrect API key provided.",
    "admin_key": "Incorrect or missing admin key. Provide it in an Authorization header using Bearer auth.",
    "admin_disabled": "The admin API is disabled: no admin key is configured.",
    "voices_disabled": "Voice uploads are off: configure an admin key or a client key with the voices scope.",
    "missing_scope": "This API key may not upload or delete voices: that needs the admin key or a key with the "
                     "voices scope.",
}
