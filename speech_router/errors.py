"""Exceptions raised by speech-router.

The tree, and who sees each error::

    SpeechRouterError
    ├── ConfigError              operator: a config file is wrong (names the field path)
    ├── ClientDisconnected       client: it left before its answer (499 in logs and metrics; nothing is sent)
    ├── RequestInvalid           client: 400, names the field; never counts against an endpoint
    │   ├── RequestTooLarge      client: 413, the body is over the configured limit
    │   └── FormatNotAvailable   client: 400, an optional encoder is not installed
    ├── Unavailable              client: the router cannot serve now; with Retry-After
    │   ├── NoHealthyEndpoint    503: no endpoint of the route is healthy
    │   ├── QueueFull            429: every endpoint is at its limit and the queue is full
    │   ├── QueueTimeout         503: waited in the queue past its limit
    │   └── DeadlineExceeded     504: the request's overall deadline passed
    └── BackendError             raised by backends at their boundary; the router reads only these
        ├── BackendUnavailable   connection refused or reset: retry elsewhere, counts as a failure
        ├── BackendTimeout       no answer in time: counts as a failure
        ├── BackendOverloaded    upstream 429/503: retry elsewhere, not a failure of the endpoint
        ├── BackendFailed        upstream 5xx or a body that is not audio: counts as a failure
        └── BackendRejected      the request is at fault (upstream 4xx, or a node's 500 whose error text shows
                                 a client mistake): a 400 naming the problem, not counted, no fallback

Backends translate their client library's errors into these (as httpx maps httpcore's), so no
code above ``speech_router.backends`` imports aiohttp.
"""

from __future__ import annotations

from .logs import REDACTOR


class SpeechRouterError(Exception):
    """Base class of every error speech-router raises on purpose."""


class ConfigError(SpeechRouterError):
    """The configuration is invalid. ``issues`` holds every problem, each with its location."""

    def __init__(self, issues: list[ConfigIssue], *, source: str = "") -> None:
        self.issues = issues
        self.source = source
        super().__init__("\n".join(issue.format(source) for issue in issues))


class ConfigIssue:
    """One problem in a config: a dotted location (``pools.gpu.endpoints[1].url``), a message, a line."""

    def __init__(self, loc: str, message: str, line: int | None = None) -> None:
        self.loc = loc
        self.message = message
        self.line = line

    def format(self, source: str = "") -> str:
        where = f"{source}:{self.line}: " if source and self.line else (f"{source}: " if source else "")
        return f"{where}{self.loc}: {self.message}" if self.loc else f"{where}{self.message}"

    def __repr__(self) -> str:
        return f"ConfigIssue({self.loc!r}, {self.message!r}, line={self.line!r})"


class ClientDisconnected(SpeechRouterError):
    """The client closed the connection before its answer was ready; the work for it was cancelled."""

    status_code = 499


class RequestInvalid(SpeechRouterError):
    """The client's request is wrong. ``param`` names the field, as OpenAI's error shape does."""

    status_code = 400

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class RequestTooLarge(RequestInvalid):
    """The request body is over ``server.max_body_bytes``."""

    status_code = 413


class FormatNotAvailable(RequestInvalid):
    """The asked audio format needs an optional extra that is not installed."""

    def __init__(self, message: str, *, param: str | None = "response_format") -> None:
        super().__init__(message, param=param, code="format_unavailable")


class Unavailable(SpeechRouterError):
    """The router cannot take the request now; ``status_code`` and ``retry_after`` say how to come back."""

    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoHealthyEndpoint(Unavailable):
    """No endpoint of the pool (or route) is healthy."""

    code = "no_healthy_endpoint"


class QueueFull(Unavailable):
    """Every endpoint is at its limit and the pool's queue is full."""

    status_code = 429
    code = "queue_full"


class QueueTimeout(Unavailable):
    """The request waited in the pool's queue longer than allowed."""

    code = "queue_timeout"


class DeadlineExceeded(Unavailable):
    """The request's overall deadline passed before an endpoint answered."""

    status_code = 504
    code = "deadline_exceeded"


class BackendError(SpeechRouterError):
    """An endpoint failed to synthesize. ``detail`` is for logs only, never for clients.

    Both may quote what a node said, which may quote the request back: the configured secrets are masked here,
    once, before the error reaches a client, a log line, the admin API or a metric.
    """

    #: whether the failure says something about the endpoint's health
    counts_as_failure = True
    #: whether another endpoint may be tried for the same request
    retryable = True

    def __init__(self, message: str, *, endpoint: str = "", detail: str | None = None, status: int | None = None):
        message = REDACTOR.redact(message)
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        self.detail = REDACTOR.redact(detail) if detail else detail
        self.status = status


class BackendUnavailable(BackendError):
    """The endpoint could not be reached (refused, reset, DNS): nothing was sent to it."""


class BackendTimeout(BackendError):
    """The endpoint did not answer in time."""


class BackendOverloaded(BackendError):
    """The endpoint said it is busy (429/503); it is healthy, just full."""

    counts_as_failure = False


class BackendFailed(BackendError):
    """The endpoint answered with a server error or with a body that is not audio."""


class BackendRejected(BackendError):
    """The endpoint refused the request itself: the client's mistake, never the endpoint's.

    ``param`` names the request field at fault when known. ``try_elsewhere``: the problem may be local
    to this endpoint (a reference file present on some nodes only), so one other endpoint may be tried.
    """

    counts_as_failure = False
    retryable = False

    def __init__(self, message: str, *, endpoint: str = "", detail: str | None = None, status: int | None = None,
                 param: str | None = None, try_elsewhere: bool = False) -> None:
        super().__init__(message, endpoint=endpoint, detail=detail, status=status)
        self.param = param
        self.try_elsewhere = try_elsewhere
