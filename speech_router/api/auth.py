"""Client API keys (``Authorization: Bearer``, OpenAI style), per-key rate limits and the admin key.

Keys come from three places: ``server.auth.keys`` (each names the environment variable that holds its
secret), a YAML ``keys_file`` and the ``keys_env`` variable (``key`` or ``name=key``, comma-separated).
Client authentication is on as soon as one key is known. Only the key's *name* ever reaches logs,
metrics and responses; secrets are kept as SHA-256 digests and compared in constant time.

The middleware reads ``scope["app"].state.auth`` on every request, so a config reload swaps in a new
``Authenticator``; ``inherit_rate_limits`` carries each client's window over by key name.

Writing voices (``POST /v1/audio/voices``, ``DELETE /v1/audio/voices/{name}``) needs more than a
client key: the admin key, or a client key with the ``voices`` scope (``scopes: [voices]``). With
neither configured, voice uploads are off (403), even when client authentication is off.
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
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..config.loader import format_loc
from ..config.messages import user_message
from ..config.models import Settings
from ..errors import ConfigError, ConfigIssue
from .errors import openai_error

#: the client label in logs and metrics when authentication is off (or the path is open)
ANONYMOUS = "anonymous"
#: the client label of requests made with the admin key
ADMIN = "admin"
ADMIN_PREFIX = "/admin/"
#: rate limits count requests in a sliding window of this many seconds
RATE_WINDOW_S = 60.0
#: the scope a client key needs to upload and delete voices (the admin key may too)
VOICES_SCOPE = "voices"
VOICES_PATH = "/v1/audio/voices"

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
        """Keep each client's recent requests across a reload, matched by key name."""
        for name in self._windows:
            if name in previous._windows:
                self._windows[name] = previous._windows[name]

    def check(self, path: str, authorization: str | None, method: str = "GET") -> Decision:
        """Decide on one request from its path, ``Authorization`` header and method."""
        if path.startswith(ADMIN_PREFIX):
            return self._check_admin(authorization)
        if writes_voices(method, path):
            return self._check_voices(authorization)
        if path in self.open_paths or not self.enabled:
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

    def _admit(self, key: ClientKey) -> float:
        """Sliding window: at most ``requests_per_minute`` admitted in any 60 s. Returns seconds to wait, or 0."""
        limit = key.requests_per_minute
        if not limit:
            return 0.0
        window = self._windows.setdefault(key.name, deque())
        now = self.clock()
        while window and window[0] <= now - RATE_WINDOW_S:
            window.popleft()
        if len(window) >= limit:
            return window[-limit] + RATE_WINDOW_S - now  # when enough old requests have left the window
        window.append(now)
        return 0.0


def writes_voices(method: str, path: str) -> bool:
    """Whether a request uploads or deletes a voice (the admin key or the voices scope needed)."""
    return method in ("POST", "DELETE") and (path == VOICES_PATH or path.startswith(VOICES_PATH + "/"))


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


class AuthMiddleware:
    """Refuse requests without a valid key (401), over their rate limit (429) or to a disabled admin API (403).

    Puts ``client`` (the key's name) and ``client_priority`` in ``scope["state"]`` and counts
    ``auth_rejections``, ``rate_limited`` and ``client_requests``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        auth: Authenticator = state.auth
        metrics = state.metrics
        path = scope["path"]
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
        decision = auth.check(path, header, scope.get("method", "GET"))
        scope_state = scope.setdefault("state", {})
        scope_state["client"] = decision.client or None
        scope_state["client_priority"] = decision.priority
        if decision.status == 429:
            metrics.rate_limited.labels(decision.client).inc()
            metrics.client_requests.labels(decision.client, "429").inc()
            await _rate_limited(decision, path)(scope, receive, send)
            return
        if decision.status != 200:
            metrics.auth_rejections.labels(decision.reason).inc()
            await _rejected(decision, path)(scope, receive, send)
            return
        if path in auth.open_paths:  # probes and scrapes are not client traffic
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                metrics.client_requests.labels(decision.client, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def _rejected(decision: Decision, path: str) -> JSONResponse:
    message = MESSAGES[decision.reason]
    headers = {"WWW-Authenticate": "Bearer"} if decision.status == 401 else None
    if path == "/tts_url":  # the drop-in answers in index-tts-vllm's shape, as errors.error_response does
        return JSONResponse({"status": "error", "error": message}, status_code=decision.status, headers=headers)
    code = decision.reason if decision.status == 403 else "invalid_api_key"
    return openai_error(decision.status, message, code=code, headers=headers)


def _rate_limited(decision: Decision, path: str) -> JSONResponse:
    seconds = max(1, math.ceil(decision.retry_after))
    message = f"Rate limit reached for client {decision.client!r}. Try again in {seconds} s."
    headers = {"Retry-After": str(seconds)}
    if path == "/tts_url":
        return JSONResponse({"status": "error", "error": message}, status_code=429, headers=headers)
    return openai_error(429, message, type_="rate_limit_error", code="rate_limit_exceeded", headers=headers)

