"""Span attribute names: OpenTelemetry's semantic conventions where one exists, ``speech_router.*`` for the rest.

Values are names from the config (pool, endpoint, model, client key name), fixed words (outcomes, reasons) and
numbers; never a key, a header value, the text or a query string.
"""

from __future__ import annotations

# HTTP semantic conventions (stable): https://opentelemetry.io/docs/specs/semconv/http/http-spans/
HTTP_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"
URL_PATH = "url.path"
URL_SCHEME = "url.scheme"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
CLIENT_ADDRESS = "client.address"
USER_AGENT = "user_agent.original"
PROTOCOL_VERSION = "network.protocol.version"
ERROR_TYPE = "error.type"

# speech-router's own
REQUEST_ID = "speech_router.request_id"
CLIENT = "speech_router.client"
MODEL = "speech_router.model"
VOICE = "speech_router.voice"
CHARS = "speech_router.chars"
FORMAT = "speech_router.format"
POOL = "speech_router.pool"
ENDPOINT = "speech_router.endpoint"
BACKEND_TYPE = "speech_router.backend.type"
PRIORITY = "speech_router.priority"
ATTEMPTS = "speech_router.attempts"
ATTEMPT = "speech_router.attempt"
OUTCOME = "speech_router.attempt.outcome"
RETRY_REASON = "speech_router.attempt.retry_reason"
HEDGE = "speech_router.attempt.hedge"
FALLBACK = "speech_router.attempt.fallback"
HEDGE_WINNER = "speech_router.hedge.winner"
FALLBACK_FROM = "speech_router.fallback.from_pool"
FALLBACK_TO = "speech_router.fallback.to_pool"
FALLBACK_REASON = "speech_router.fallback.reason"
QUEUE_RESULT = "speech_router.queue.result"
CACHE_KIND = "speech_router.cache.kind"
CACHE_RESULT = "speech_router.cache.result"
CACHE = "speech_router.cache"
SEGMENT_INDEX = "speech_router.segment.index"
SEGMENTS = "speech_router.segments"
SEGMENT_OUTCOME = "speech_router.segment.outcome"
TRANSCODE_FROM = "speech_router.transcode.from"
TRANSCODE_TO = "speech_router.transcode.to"
TRANSCODE_BUSY = "speech_router.transcode.busy_s"
