"""The configuration schema: pydantic models with ``extra="forbid"`` so a typo is an error.

Vocabulary: a *pool* is a named group of *endpoints* of one *backend type*; a *model* is the
name a client sends and maps to a *route*, an ordered list of pools (primary first).
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .realtime import RealtimeConfig

DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = 8000
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_TEXT_CHARS = 4096
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_READ_TIMEOUT_S = 300.0
DEFAULT_HEALTH_INTERVAL_S = 10.0
#: a down endpoint is checked this often (at most ``interval``)
DEFAULT_UNHEALTHY_INTERVAL_S = 2.0
DEFAULT_HEALTH_TIMEOUT_S = 2.0
DEFAULT_VOICE_DIR = "/data/voices"
DEFAULT_QUEUE_TIMEOUT_S = 10.0
DEFAULT_DEADLINE_S = 120.0
DEFAULT_LOAD_SIGNAL_INTERVAL_S = 1.0
DEFAULT_VOICE_UPLOAD_BYTES = 10 * 1024 * 1024
GIB = 1024 ** 3
DEFAULT_JOB_MAX_CHARS = 1_000_000
DEFAULT_JOB_MAX_BODY_BYTES = 16 * 1024 * 1024  # 1M characters of Chinese, \u-escaped as json.dumps sends them
DEFAULT_JOB_RESULT_TTL_S = 24 * 3600.0
DEFAULT_JOB_LEASE_S = 15.0
DEFAULT_WEBHOOK_SECRET_ENV = "SPEECH_ROUTER_WEBHOOK_SECRET"
#: the shared state store (``state:``): the environment variable that names it when the config does not
STATE_URL_ENV = "SPEECH_ROUTER_STATE_URL"
DEFAULT_STATE_TIMEOUT_S = 0.2
DEFAULT_STATE_LEASE_S = 3.0
DEFAULT_STATE_INFLIGHT_INTERVAL_S = 0.1
DEFAULT_STATE_KNOWLEDGE_INTERVAL_S = 1.0
DEFAULT_STATE_VOICES_INTERVAL_S = 1.0
#: the failures a retry may follow (``retry.retry_on``); by default all of them
RetryReason = Literal["connect", "timeout", "5xx", "invalid_audio", "overloaded"]
DEFAULT_RETRY_ON: tuple[RetryReason, ...] = ("connect", "timeout", "5xx", "invalid_audio", "overloaded")
DEFAULT_SHARED_CACHE_BYTES = 1024 * 1024 * 1024
DEFAULT_SHARED_CACHE_TTL_S = 24 * 3600.0
#: URL schemes a state store may have: Redis or Valkey (``redis``, ``rediss``: TLS, ``valkey``, ``valkeys``, ``unix``),
#: or ``memory`` (in-process: one replica, for trying it out and for tests)
STATE_SCHEMES = ("redis", "rediss", "valkey", "valkeys", "unix", "memory")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClientKeyConfig(_Strict):
    """A client API key: its secret comes from an environment variable, never from the YAML itself."""

    name: str = Field(description="shown in logs and metrics instead of the key")
    key_env: str = Field(description="environment variable holding the key")
    priority: Literal["interactive", "batch"] | None = Field(
        None, description="priority class of this client's requests; default: the request header decides")
    requests_per_minute: int | None = Field(None, ge=1, description="rate limit; beyond it 429")
    scopes: list[Literal["voices"]] = Field(
        default_factory=list, description="extra rights: `voices` may upload and delete voices (as the admin key may)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("invalid name: use letters, digits and _ . : / -")
        return value


class AuthConfig(_Strict):
    """Client keys (``Authorization: Bearer``, OpenAI style) and the admin key.

    Client authentication is on as soon as any key is known: listed in ``keys``, in ``keys_file`` or in
    ``keys_env``. The admin API needs its own key (``admin_key_env``); without one it answers 403.
    """

    keys: list[ClientKeyConfig] = Field(default_factory=list)
    keys_file: str | None = Field(
        None, description="YAML file with a list of {name, key, priority, requests_per_minute}; re-read on reload")
    keys_env: str = Field("SPEECH_ROUTER_API_KEYS",
                          description="environment variable with comma-separated keys, each `key` or `name=key`")
    open_paths: list[str] = Field(
        default_factory=lambda: ["/livez", "/readyz", "/metrics", "/health", "/openapi.json"],
        description="paths served without a client key")
    admin_key_env: str = Field("SPEECH_ROUTER_ADMIN_KEY", description="environment variable with the admin key")
    required: bool = Field(False, description="refuse to start when no client key is known (fail closed) "
                                              "instead of serving without authentication")


class ServerConfig(_Strict):
    """How the router listens and what it accepts from clients."""

    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, gt=0)
    max_text_chars: int = Field(DEFAULT_MAX_TEXT_CHARS, gt=0)
    # connection limits, enforced by the HTTP server before any handler runs (docs/limits.md)
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="request line and headers; beyond it 431")
    max_headers: int = Field(100, ge=8, description="header fields per request; beyond it 431")
    header_timeout: float = Field(10.0, gt=0, description="seconds for a request's head to arrive; beyond it 408")
    body_timeout: float = Field(30.0, gt=0, description="seconds for a request's body to arrive; beyond it 408")
    keepalive_timeout: float = Field(75.0, gt=0, description="seconds an idle kept-alive connection stays open")
    max_connections: int = Field(1000, ge=1, description="open client connections; at the limit the one idle the "
                                                         "longest is closed for a new one, else 503")
    max_connections_per_client: int | None = Field(
        None, ge=1, description="open connections from one client address (IPv6: one /64); at the limit its own "
                                "connection idle the longest is closed, else 503. Default: three quarters of "
                                "max_connections. Behind a load balancer its few addresses carry every client: "
                                "set it to max_connections there")
    log_level: str = "info"
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="auto: JSON lines when stderr is not a terminal, plain text on a terminal")
    priority_header: str = Field("x-priority", description="request header choosing interactive or batch")
    deadline_header: str = Field(
        "x-request-timeout", description="request header with the seconds a client will wait; it can only "
                                         "shorten the model's deadline")
    access_log: bool = Field(True, description="one JSON line per request on the speech_router.access logger")
    watch_config: bool = Field(True, description="reload when the config file changes (also on SIGHUP and "
                                                 "POST /admin/reload)")
    tts_url_path_prefixes: list[str] = Field(
        default_factory=list, description="/tts_url drop-in: reference paths a client may send must start with one "
                                          "of these; empty forwards them unchanged, as the node would accept them")
    auth: AuthConfig = Field(default_factory=lambda: AuthConfig())
    ui: bool = Field(True, description="serve the fleet page and playground at /ui (it holds no data: it asks the API "
                                       "with the key typed into it)")
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig, description="realtime speech sessions "
                                     "(WS /v1/audio/speech/stream): timeouts and limits")


class TimeoutConfig(_Strict):
    """Time limits for talking to an endpoint, in seconds."""

    connect: float = Field(DEFAULT_CONNECT_TIMEOUT_S, gt=0)
    read: float = Field(DEFAULT_READ_TIMEOUT_S, gt=0, description="longest silence while reading a response")


class DeepCheckConfig(_Strict):
    """An occasional real synthesis of a short text: catches nodes whose /health lies. Off by default."""

    enabled: bool = False
    interval: float = Field(300.0, gt=0)
    text: str = "Health check."
    voice: str | None = Field(None, description="a configured voice; default: the first one the pool can speak")


class HealthCheckConfig(_Strict):
    """Active health checks (``GET /health`` for index-tts-vllm)."""

    enabled: bool = True
    interval: float = Field(DEFAULT_HEALTH_INTERVAL_S, gt=0)
    unhealthy_interval: float = Field(DEFAULT_UNHEALTHY_INTERVAL_S, gt=0,
                                      description="seconds between checks of an endpoint that is down (or not yet "
                                                  "seen up): a node that comes back is found soon (Envoy's name)")
    timeout: float = Field(DEFAULT_HEALTH_TIMEOUT_S, gt=0)
    healthy_threshold: int = Field(1, ge=1, description="passing checks in a row to mark a down endpoint up")
    unhealthy_threshold: int = Field(2, ge=1, description="failing checks in a row to mark an endpoint down")
    jitter: float = Field(0.1, ge=0, le=1, description="random share of the interval added or removed")
    deep: DeepCheckConfig = Field(default_factory=DeepCheckConfig)


class BreakerConfig(_Strict):
    """Passive outlier detection per endpoint, with a circuit breaker; Envoy's outlier detection in spirit.

    Timeouts and errors (refused connections, 5xx, broken audio) count as failures. An endpoint is ejected
    when ``consecutive_failures`` came in a row or ``failure_rate`` of at least ``min_requests`` tries in the
    window failed, *and* its failure rate is at least ``outlier_margin`` above the median of the rest of its
    pool: a pool that slows down together is never ejected for it.
    """

    enabled: bool = True
    consecutive_failures: int = Field(5, ge=1, description="failures in a row that make the endpoint a candidate")
    failure_rate: float = Field(0.5, gt=0, le=1, description="share of failed tries in the window that does too")
    window: float = Field(30.0, gt=0, description="seconds of the rolling window for the failure rate")
    min_requests: int = Field(10, ge=1, description="tries in the window before the rate is judged")
    outlier_margin: float = Field(0.3, gt=0, le=1, description="how far its failure rate must be above the median "
                                                                "of the rest of the pool to eject it")
    base_ejection: float = Field(5.0, gt=0, description="first open period; doubles on each repeated trip")
    max_ejection: float = Field(300.0, gt=0)
    half_open_probes: int = Field(1, ge=1, description="requests let through at once while half-open")
    max_ejected_percent: float = Field(50.0, ge=0, le=100, description="cap on the share of a pool ejected at once")


class BalancerConfig(_Strict):
    """Scheduling by expected completion, from what is learned of each endpoint."""

    policy: Literal["latency", "least_outstanding", "round_robin"] = Field(
        "latency", description="latency: the full policy (expected completion); the others are plain baselines, "
                               "for comparison")
    choices: int | None = Field(None, ge=1, description="no longer used: every endpoint in rotation is considered; "
                                                        "accepted so that older files still load")
    slow_start: float = Field(10.0, ge=0, description="seconds over which a new or recovered endpoint's cap on "
                                                      "requests in flight ramps from 1 to its limit")
    latency_half_life: float = Field(30.0, gt=0, description="seconds after which a latency sample counts half")
    adaptive_concurrency: bool = Field(True, description="learn each endpoint's useful concurrency from how its "
                                                         "latency grows with it (max_concurrency stays the bound)")
    voice_affinity: bool = Field(True, description="prefer the endpoint that served the voice lately when it is "
                                                   "about as quick and has a free slot (nodes cache speakers)")


class QueueConfig(_Strict):
    """Admission control: where requests wait when waiting is expected to be quicker than any free endpoint."""

    max_size: int = Field(1000, ge=0, description="waiting requests per pool, a memory bound; beyond it 429 (or "
                                                  "the next pool)")
    timeout: float = Field(DEFAULT_QUEUE_TIMEOUT_S, ge=0, description="longest wait; a request expected to wait "
                                                                      "longer is refused at once (429), one that "
                                                                      "waited this long gets 503")
    batch_headroom: int = Field(1, ge=0, description="slots batch requests (long-form jobs, x-priority: batch) leave "
                                                     "free while interactive ones were seen in the last batch_window")
    batch_window: float = Field(30.0, gt=0, description="seconds interactive requests count as seen lately; with none "
                                                        "seen for this long, batch work takes every free slot")


class RetryConfig(_Strict):
    """Retries on another endpoint of the same pool, bounded by attempts, deadline and a budget."""

    max_attempts: int = Field(3, ge=1)
    budget_ratio: float = Field(0.2, ge=0, le=1, description="retries allowed as a share of requests in the window")
    budget_min: int = Field(3, ge=0, description="retries always allowed per window, for low traffic; the pool's "
                                                 "total max_concurrency is a floor too")
    budget_window: float = Field(10.0, gt=0)
    per_try_timeout_factor: float = Field(3.0, gt=0, description="x the endpoint's expected latency for the text at "
                                                                 "its concurrency; each timeout doubles the next try's")
    per_try_timeout_floor: float = Field(2.0, gt=0)
    per_try_timeout_cap: float = Field(60.0, gt=0)
    retry_on: list[RetryReason] = Field(default_factory=lambda: list(DEFAULT_RETRY_ON))


class HedgeConfig(_Strict):
    """Send a second try to another endpoint when the first is slow; the first answer wins."""

    enabled: bool = False
    delay: float | None = Field(None, gt=0, description="seconds before hedging; default: the per-try timeout / 2")


def _check_url(value: str) -> str:
    if "://" not in value:
        raise ValueError(f"invalid URL {value!r}: http:// (or https://) is missing, e.g. http://{value}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"invalid URL {value!r}: use http:// or https://")
    if not parts.hostname:
        raise ValueError(f"invalid URL {value!r}: no host name")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError(f"invalid URL {value!r}: the port must be a number from 0 to 65535") from None
    return value.rstrip("/")


class EndpointConfig(_Strict):
    """One running instance: a URL, or nothing for in-process engines."""

    url: str | None = None
    name: str | None = None
    weight: float = Field(1.0, gt=0)
    max_concurrency: int | None = Field(None, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    api_key_env: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError("invalid name: use letters, digits and _ . : / -")
        return value


class LoadSignalConfig(_Strict):
    """Read each endpoint's own load (vllm-omni's running + waiting requests), so several router replicas sharing
    the nodes see each other's requests. Ignored for backend types that report no load."""

    enabled: bool = Field(False, description="poll the nodes' load; turn on when several routers share nodes")
    interval: float = Field(DEFAULT_LOAD_SIGNAL_INTERVAL_S, ge=0.05, description="seconds between two reads of a "
                                                                                "node's load")


class PoolConfig(BaseModel):
    """A named group of endpoints of one backend type.

    Keys other than these belong to the backend type and are checked against its ``Options``
    model by the loader, so ``api: v1`` sits next to ``type: index-tts-vllm``.
    """

    model_config = ConfigDict(extra="allow")

    type: str
    endpoints: list[EndpointConfig] = Field(default_factory=list)
    max_concurrency: int = Field(DEFAULT_MAX_CONCURRENCY, ge=1, description="default for its endpoints")
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    health_check: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    headers: dict[str, str] = Field(default_factory=dict)
    api_key_env: str | None = None
    max_connections: int = Field(100, ge=1, description="aiohttp connection pool size for the whole pool")
    verify_body: bool | None = Field(
        None, description="read the whole answer before sending it, so a truncated or broken body is retried "
                          "elsewhere; default: on for backend types that do not stream (they send it all at once)")
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    balancer: BalancerConfig = Field(default_factory=BalancerConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    hedge: HedgeConfig = Field(default_factory=HedgeConfig)
    load_signal: LoadSignalConfig = Field(default_factory=LoadSignalConfig)

    @property
    def options(self) -> dict[str, Any]:
        """The backend-specific keys, as written."""
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _one_authorization(self) -> PoolConfig:
        """Credentials in an endpoint's URL (Basic auth) and an ``Authorization`` header (``api_key_env``, or one in
        ``headers``) cannot both be sent: aiohttp refuses every such request. Refused here, naming both."""
        for i, ep in enumerate(self.endpoints):
            if ep.url is None or "@" not in urlsplit(ep.url).netloc:
                continue
            given = [f"{where}api_key_env" for where, env in (("", self.api_key_env), (f"endpoints[{i}].",
                                                                                        ep.api_key_env)) if env]
            given += [f"{where}headers.{name}" for where, headers in (("", self.headers), (f"endpoints[{i}].",
                                                                                         ep.headers))
                      for name in headers if name.lower() == "authorization"]
            if given:
                raise ValueError(f"endpoints[{i}].url carries credentials (user:password@) and {', '.join(given)} "
                                 "sends an Authorization header: a request cannot carry both; keep one of them")
        return self


class FanoutConfig(_Strict):
    """Long text: cut at sentence ends, synthesize the segments in parallel across the pool, stream in order."""

    enabled: bool | None = Field(
        None, description="default: on when the model's primary pool is an IndexTTS type (index-tts-vllm, "
                          "indextts2-local), which work through long text one segment at a time")
    threshold_chars: int = Field(200, ge=1, description="texts longer than this are fanned out")
    max_segment_chars: int = Field(120, ge=10, description="longest segment; longer sentences split at clause marks")
    min_segment_chars: int = Field(20, ge=0, description="shorter sentences merge with their neighbours")
    max_parallel: int = Field(4, ge=1, description="segments of one request in flight at once (fairness)")
    silence_ms: int = Field(200, ge=0, le=5000, description="silence between segments (IndexTTS uses 200 ms)")


class ModelCacheConfig(_Strict):
    """Per-model opt-in to the response cache (IndexTTS2 sampling varies between runs: off by default)."""

    enabled: bool = False
    segments: bool = Field(True, description="also cache each segment of a fanned-out text")

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


class ModelConfig(_Strict):
    """A model name clients send, and the route (pools in order) that serves it."""

    pools: list[str] = Field(min_length=1)
    description: str = ""
    deadline: float = Field(DEFAULT_DEADLINE_S, gt=0, description="overall time for a request: queueing and tries")
    fanout: FanoutConfig = Field(default_factory=FanoutConfig)
    cache: ModelCacheConfig = Field(default_factory=ModelCacheConfig)
    fallback_voice: str | None = Field(
        None, description="a configured voice that pools of the route which cannot speak the asked voice speak "
                          "instead; default: none, so a cloned voice is never replaced (503 while its pools are down)")

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        return {"pools": value} if isinstance(value, (list, str)) else value

    @field_validator("pools", mode="before")
    @classmethod
    def _one_pool(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class VoiceConfig(BaseModel):
    """A public voice name and its parameters per backend type.

    ``spk_audio_path`` (IndexTTS2: a file on the GPU node), ``character`` (index-tts-vllm v1),
    ``espeak`` (an espeak-ng voice), ``openai_voice`` (the upstream voice name). Plugins may read
    more keys; the loader rejects keys no registered backend type declares.
    """

    model_config = ConfigDict(extra="allow")

    description: str = ""

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in (self.model_extra or {}).items() if v is not None}


class VoiceDirConfig(_Strict):
    """Voices not listed in ``voices`` resolve to ``<path>/<name><extension>`` on the nodes (seed behaviour)."""

    path: str = DEFAULT_VOICE_DIR
    extension: str = ".wav"


class VoiceStoreConfig(_Strict):
    """Voices uploaded with ``POST /v1/audio/voices``: kept by content hash in ``directory``, which every router
    replica may share, and which index-tts-vllm nodes mount to read them (``node_directory``)."""

    enabled: bool = Field(True, description="accept uploads (with the admin key or a key with the voices scope)")
    directory: str = Field("", description="where uploaded voices are kept (created on the first upload); "
                                           "empty: $SPEECH_ROUTER_DATA_DIR/voices, else the user's data directory, "
                                           "one per config (config/datadir.py); the loader fills it in")
    node_directory: str | None = Field(None, description="the same directory as the nodes (and local workers) see "
                                                         "it, for spk_audio_path; default: directory")
    max_bytes: int = Field(DEFAULT_VOICE_UPLOAD_BYTES, ge=1024, description="largest audio file accepted")
    vllm_omni: Literal["inline", "upload"] = Field(
        "inline", description="inline: each request carries the reference as a data: URL; upload: the router "
                              "uploads it to every vllm-omni node (and to nodes that join or come back)")
    sync_interval: float = Field(60.0, gt=0, description="upload: seconds between checks of each node's voices")


class CacheConfig(_Strict):
    """Where cached audio lives: memory (LRU within a byte budget), and optionally a directory on disk."""

    memory_bytes: int = Field(256 * 1024 * 1024, ge=0)
    directory: str | None = Field(None, description="also keep entries here (survives restarts)")
    disk_bytes: int = Field(2 * 1024 * 1024 * 1024, ge=0)
    max_entry_bytes: int = Field(16 * 1024 * 1024, gt=0, description="larger answers are not cached")
    shared_bytes: int = Field(DEFAULT_SHARED_CACHE_BYTES, ge=0, description="with a state store: the most bytes of "
                              "audio the replicas keep there together (oldest used first out); 0: no shared tier")
    shared_ttl: float = Field(DEFAULT_SHARED_CACHE_TTL_S, gt=0, description="with a state store: seconds an entry "
                                                                             "stays there unused")


class StateConfig(_Strict):
    """A store shared by router replicas (Valkey or Redis): client limits, requests in flight per endpoint, what is
    learned of each endpoint, the cache's shared tier and uploaded voices (docs/replicas.md). Off without a URL."""

    url: str | None = Field(None, repr=False, description="redis://[:password@]host:6379/0 (rediss:// for TLS, valkey:// too); "
                                              "default: $SPEECH_ROUTER_STATE_URL; unset: each replica keeps its "
                                              "own state")
    prefix: str = Field("speech-router", description="prefix of every key, so several fleets can share a server")
    timeout: float = Field(DEFAULT_STATE_TIMEOUT_S, gt=0, le=10, description="seconds one call may take; beyond it "
                           "(or on an error) the replica uses its own state until the store answers again")
    lease: float = Field(DEFAULT_STATE_LEASE_S, gt=0, description="seconds a replica's requests in flight count "
                                                                  "after its last word (a replica that died stops "
                                                                  "counting after this)")
    inflight_interval: float = Field(DEFAULT_STATE_INFLIGHT_INTERVAL_S, ge=0.01, le=5,
                                     description="seconds between two reads of the other replicas' requests in "
                                                 "flight (a change of this replica's is published at once)")
    knowledge_interval: float = Field(DEFAULT_STATE_KNOWLEDGE_INTERVAL_S, ge=0.1,
                                      description="seconds between two exchanges of what is learned of endpoints")
    voices_interval: float = Field(DEFAULT_STATE_VOICES_INTERVAL_S, ge=0.1,
                                   description="seconds between two checks for voices uploaded or deleted elsewhere")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        scheme = urlsplit(value).scheme if "://" in value else ""
        if scheme not in STATE_SCHEMES:
            raise ValueError("invalid state store URL: use redis://host:6379/0 (or rediss://, valkey://, unix://, "
                             "memory://)")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("invalid prefix: use letters, digits and _ . : / -")
        return value


class TracingConfig(_Strict):
    """OpenTelemetry traces (docs/tracing.md), read at start-up. Off unless ``enabled``, ``url`` or the standard
    variables ask for them (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_TRACES_EXPORTER=otlp``); ``OTEL_*`` configure
    the rest."""

    enabled: bool | None = Field(None, description="true or false; unset: on when `url`, OTEL_EXPORTER_OTLP_ENDPOINT "
                                                   "or OTEL_TRACES_EXPORTER=otlp is set")
    url: str | None = Field(None, description="the OTLP collector's base URL, e.g. http://collector:4318; default: "
                                              "OTEL_EXPORTER_OTLP_ENDPOINT, else the SDK's default")
    sample_ratio: float | None = Field(None, ge=0, le=1, description="share of new traces recorded (a client's "
                                                                     "sampled traceparent is always followed); "
                                                                     "default: OTEL_TRACES_SAMPLER, else all")
    service_name: str | None = Field(None, description="default: OTEL_SERVICE_NAME, else speech-router")


class JobWebhooksConfig(_Strict):
    """Completion webhooks: the router POSTs to a URL the client gave, so only URLs under these prefixes."""

    url_prefixes: list[str] = Field(default_factory=list, description="a job's webhook_url must start with one of "
                                                                      "these (http:// or https://); empty: no webhooks")
    secret_env: str = Field(DEFAULT_WEBHOOK_SECRET_ENV, description="environment variable with the signing secret "
                                                                    "(Standard Webhooks: HMAC-SHA256)")
    attempts: int = Field(5, ge=1, le=20, description="deliveries tried, 1 s apart doubling, until one gets a 2xx")
    timeout: float = Field(10.0, gt=0, description="seconds for the receiver to answer one delivery")

    @field_validator("url_prefixes")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            _check_url(prefix)
        return value


class JobsConfig(_Strict):
    """Long-form jobs (``POST /v1/audio/speech/jobs``): kept in ``directory`` (SQLite and audio files), worked at
    batch priority on the slots other requests leave free, resumed after a restart. Off while no directory is set."""

    directory: str | None = Field(None, description="where jobs are kept (created at the first job); none: jobs are "
                                                     "off")
    max_chars: int = Field(DEFAULT_JOB_MAX_CHARS, ge=1, description="characters of one job, all items together")
    max_items: int = Field(1000, ge=1, description="items of one job")
    max_body_bytes: int = Field(DEFAULT_JOB_MAX_BODY_BYTES, gt=0, description="larger submissions get 413")
    result_ttl: float = Field(DEFAULT_JOB_RESULT_TTL_S, gt=0, description="seconds a finished job and its audio are "
                                                                          "kept, then deleted")
    max_open_per_key: int = Field(4, ge=1, description="queued and running jobs per client key; one more gets 429")
    max_bytes_per_key: int = Field(32 * GIB, ge=0, description="bytes a client key's jobs may keep (finished ones, "
                                                               "and what open ones are expected to need); beyond: 429")
    max_disk_bytes: int = Field(64 * GIB, ge=0, description="bytes all jobs together may keep; beyond: 507")
    min_free_disk_bytes: int = Field(GIB, ge=0, description="free space jobs always leave on the disk; a job that "
                                                            "would need it gets 507, one that reaches it fails")
    max_running: int = Field(4, ge=1, description="jobs this router works at once; more wait, queued")
    lease: float = Field(DEFAULT_JOB_LEASE_S, gt=0, description="seconds a router holds a job without renewing; a "
                                                               "restarted or other router takes over after it")
    segment_tries: int = Field(3, ge=1, description="times a segment goes through the attempt loop before its item "
                                                    "fails (a client mistake fails it at once)")
    stall_timeout: float = Field(3600.0, gt=0, description="a job with no segment done for this long fails")
    min_free_slots: int = Field(0, ge=0, description="slots a job never takes, whatever the traffic (0: a job alone "
                                                     "uses the whole fleet)")
    webhooks: JobWebhooksConfig = Field(default_factory=JobWebhooksConfig)


class Settings(_Strict):
    """The whole configuration."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    pools: dict[str, PoolConfig] = Field(min_length=1)
    models: dict[str, ModelConfig] = Field(min_length=1)
    voices: dict[str, VoiceConfig] = Field(default_factory=dict)
    voice_dir: VoiceDirConfig | None = None
    cache: CacheConfig = Field(default_factory=CacheConfig)
    voice_store: VoiceStoreConfig = Field(default_factory=VoiceStoreConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    #: where the config came from, for logs ("file examples/x.yaml", "TTS_REMOTE_URL", "embedded default")
    source: str = Field("", exclude=True)

    @field_validator("pools", "models", "voices")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not _NAME.match(key):
                raise ValueError(f"invalid name {key!r}: use letters, digits and _ . : / -")
        return value
