"""Logging: one format for every record (ours, uvicorn's, the access log's), with secrets redacted.

``setup_logging`` gives the root logger one handler: JSON lines (``{"ts", "level", "logger", "message"}``,
plus ``exc`` for a traceback) when stderr is not a terminal, plain text on a terminal, or what
``server.log_format`` says. uvicorn's loggers and the access log propagate to it, so the log is one
stream in one format. Access records are JSON objects already: in JSON mode their fields are the line.

``REDACTOR``, on that handler, replaces the configured secrets (API keys read from ``api_key_env``, the
pools' and endpoints' ``headers:`` values, client keys, the admin key, user and password in endpoint URLs,
query values of endpoint URLs) with ``***`` in every record, traceback included, and masks anything shaped
like URL credentials, an ``Authorization`` header value or a ``Basic``/``Bearer`` token whatever its origin.
Each secret is masked in every form the router sends it in (``credential_forms``): as written, URL-decoded,
URL-encoded, JSON-escaped, and the ``Basic`` token (base64 of ``user:password``) of URL credentials, so a node
that quotes a request back cannot pass its credentials on. ``BackendError`` and ``HealthReport`` redact what a
node said when they are made, so a client, the admin API and metrics get it masked as the log does. It is
defence in depth: errors are logged by what happened (type, endpoint, status), never by a library object's
``repr``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

__all__ = ["REDACTOR", "JsonFormatter", "Redactor", "TextFormatter", "configured_secrets", "setup_logging"]

MASK = "***"
#: shorter configured values are not redacted (they would mask ordinary words and numbers everywhere)
MIN_SECRET_CHARS = 4
ACCESS_LOGGER = "speech_router.access"

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s:/@'\"]*):(?P<pw>[^\s@/'\"]+)@")
_AUTH_VALUE = re.compile(
    r"(?P<name>(?:proxy-)?authorization|x-api-key|api[-_]key)(?P<sep>['\"]?\s*[:=]\s*['\"]?)"
    r"(?P<scheme>(?:bearer|basic|token)\s+)?(?P<value>[^'\",\s}\]]+)", re.IGNORECASE)
#: a credential after its scheme, without a header name (``b'Basic dXNl...'``), cut short or whole
_SCHEME_TOKEN = re.compile(r"\b(?P<scheme>(?i:basic|bearer))(?P<sep>\s+)(?P<token>[A-Za-z0-9+/=._~-]{8,})")
#: what tells a token from a word ("basic settings"): a digit, base64's + / =, or a capital inside it
_TOKEN_MARK = re.compile(r"[0-9+/=]|.[A-Z]")


class Redactor(logging.Filter):
    """Replaces secrets in a record's message, arguments and traceback; never drops a record."""

    def __init__(self) -> None:
        super().__init__()
        self._pattern: re.Pattern[str] | None = None

    def set_secrets(self, secrets: Iterable[str]) -> None:
        """The configured secrets to mask from now on (the set is replaced, e.g. after a reload)."""
        values = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None

    def redact(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
        text = _AUTH_VALUE.sub(lambda m: f"{m['name']}{m['sep']}{m['scheme'] or ''}{MASK}", text)
        return _SCHEME_TOKEN.sub(_mask_token, text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: keep what can be kept
            message = str(record.msg)
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
            record.exc_info = None  # the formatter uses the redacted text, never the live exception
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def _mask_token(match: re.Match[str]) -> str:
    if _TOKEN_MARK.search(match["token"]) is None:
        return match[0]
    return f"{match['scheme']}{match['sep']}{MASK}"


#: the one redaction filter; ``setup_logging`` puts it on the handler, reloads refresh its secrets
REDACTOR = Redactor()


def credential_forms(value: str) -> set[str]:
    """``value`` as a node may quote it back: as sent, URL-encoded (either way) and decoded, JSON-escaped."""
    forms = {value, unquote(value), quote(value, safe=""), quote_plus(value, safe="")}
    forms |= {json.dumps(v)[1:-1] for v in list(forms)}
    return {f for f in forms if len(f) >= MIN_SECRET_CHARS}


def basic_tokens(user: str, password: str) -> set[str]:
    """The ``Authorization: Basic`` tokens sent for URL credentials (aiohttp: latin-1; UTF-8 elsewhere)."""
    tokens = set()
    for encoding in ("latin-1", "utf-8"):
        try:
            tokens.add(base64.b64encode(f"{user}:{password}".encode(encoding)).decode("ascii"))
        except UnicodeEncodeError:
            continue
    return tokens


def url_secrets(url: str) -> set[str]:
    """What an endpoint URL sends that is secret: user and password (and their Basic token), query values."""
    parts = urlsplit(url)
    found: set[str] = set()
    if parts.password is not None:
        user, password = unquote(parts.username or ""), unquote(parts.password)
        found |= basic_tokens(user, password) | credential_forms(parts.password)
    for _, value in parse_qsl(parts.query, keep_blank_values=False):
        found |= credential_forms(value)
    return found


def configured_secrets(settings: Any, env: Mapping[str, str] | None = None, keys: Iterable[str] = ()) -> set[str]:
    """Every secret a configuration carries, in every form it is sent in (``credential_forms``): API key values,
    header values, URL credentials and query values, client and admin keys (``keys``: the client keys the
    authenticator knows)."""
    env = os.environ if env is None else env
    found: set[str] = set(keys)
    for pool in settings.pools.values():
        holders = [pool, *pool.endpoints]
        for holder in holders:
            found.update(v for v in (holder.headers or {}).values() if isinstance(v, str))
            if holder.api_key_env and env.get(holder.api_key_env):
                found.add(env[holder.api_key_env])
        for endpoint in pool.endpoints:
            if endpoint.url:
                found |= url_secrets(endpoint.url)
    state = getattr(settings, "state", None)
    if state is not None and state.url:  # the state store's password (redis://:password@host)
        found |= url_secrets(state.url)
    auth = settings.server.auth
    if env.get(auth.admin_key_env):
        found.add(env[auth.admin_key_env])
    for key in auth.keys:
        if env.get(key.key_env):
            found.add(env[key.key_env])
    raw = env.get(auth.keys_env, "")
    for item in raw.split(","):
        value = item.split("=", 1)[-1].strip()
        if value:
            found.add(value)
    if auth.keys_file:
        found.update(_keys_in_file(auth.keys_file))
    return {form for value in found for form in credential_forms(value)}


def _keys_in_file(path: str) -> list[str]:
    """The ``key`` values of a keys file (best effort: an unreadable file is the config loader's to report)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return []
    entries = data.get("keys", []) if isinstance(data, dict) else data
    return [str(e["key"]) for e in entries or [] if isinstance(e, dict) and e.get("key")]


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; access records (JSON already) keep their own fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] | None = None
        if record.name == ACCESS_LOGGER and message.startswith("{"):
            try:
                parsed = json.loads(message)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                out = {"ts": parsed.pop("ts", _timestamp(record)), "level": record.levelname.lower(),
                       "logger": record.name, **parsed}
        if out is None:
            out = {"ts": _timestamp(record), "level": record.levelname.lower(), "logger": record.name,
                   "message": message}
        request_id = getattr(record, "request_id", None)
        if request_id:
            out["request_id"] = request_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=True, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """``2026-01-01T00:00:00.000+00:00 WARNING speech_router.router: message`` (for people at a terminal)."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


def resolve_format(fmt: str, stream: Any) -> str:
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    try:
        return "text" if isatty is not None and isatty() else "json"
    except (ValueError, OSError):  # a closed stream
        return "json"


def setup_logging(level: str = "info", fmt: str = "auto", stream: Any = None,
                  secrets: Iterable[str] = ()) -> logging.Handler:
    """Route every record (root, uvicorn's, the access log) to one handler in one format, redacted."""
    stream = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt, stream) == "json" else TextFormatter())
    handler.addFilter(REDACTOR)
    REDACTOR.set_secrets(secrets)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", ACCESS_LOGGER):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    quiet_watchfiles()
    return handler


def quiet_watchfiles() -> None:
    """watchfiles logs every batch of changes at INFO: with the log file beside the config it feeds on itself."""
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
