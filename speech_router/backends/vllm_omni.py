"""Backend type ``vllm-omni``: IndexTTS-2 and IndexTTS-2.5 served by vllm-omni (github vllm-project/vllm-omni).

The endpoint ``url`` is the server's root (``http://gpu-1:8091``); the router posts OpenAI-style
``/v1/audio/speech`` bodies with IndexTTS's settings in ``extra_params`` (``vllm_omni_request``),
voices as ``ref_audio`` or uploaded voices (``vllm_omni_refs``). Pool options::

    omni:
      type: vllm-omni
      model: IndexTeam/IndexTTS-2.5   # the served name; a node serving another answers 404 (default: not sent)
      version: "2.5"                  # "2" or "2.5"; default: detected from GET /v1/models
      allowed_media_path: /data/voices  # the nodes' --allowed-local-media-path (spk_audio_path -> file://)
      stream: false                   # raw audio streaming for wav/pcm (vllm-omni is not incremental yet)

Answers: 400 is the client's (``BackendRejected``: no retry, never counted against the node); 404
means the node serves another model, a configuration problem counted against it (``BackendFailed``,
with a message saying which option to fix); 401/403 and 5xx are failures; 429/503 (a proxy's) mean
busy. Health is ``GET /health``'s status (its body may be empty), then ``GET /ready`` where the
version has it (404: not there), then ``GET /v1/models`` for the served name and the version.

For the scheduler and the voice registry: ``load()`` reads the node's own queue from ``/metrics``,
``upload_voice``/``list_voices``/``delete_voice`` speak its voice API.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ..config.models import EndpointConfig
from ..errors import BackendFailed
from ..plugins.hookspecs import RegisterBackend, hookimpl
from ..types import AudioResponse, HealthReport, SynthesisRequest
from .base import Backend, BackendContext, Capabilities
from .http import FOLLOW_REDIRECTS, iter_body, mapped_errors, raise_for_status, read_prefix, releaser, request_headers
from .http import client_timeout as read_timeout
from .indextts25 import SPEED_RANGE_25, Version, VersionOption
from .vllm_omni_refs import REFERENCE_FILES, URL_SCHEMES, node_file_url
from .vllm_omni_request import NODE_FORMATS, node_request
from .vllm_omni_sse import is_sse, sse_audio

if TYPE_CHECKING:
    from ..router.dispatch import Router

log = logging.getLogger(__name__)

SAMPLE_RATE = 22_050  # IndexTTS's output rate on vllm-omni
SPEECH_PATH = "/v1/audio/speech"
VOICES_PATH = "/v1/audio/voices"
RUNNING, WAITING = "vllm_omni:num_requests_running", "vllm_omni:num_requests_waiting"
_V25 = re.compile(r"2[._-]?5(?!\d)")
#: magic bytes of the formats a whole answer may have
_MAGIC = {"wav": (b"RIFF",), "flac": (b"fLaC",), "mp3": (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"\xff\xe3")}


async def _after(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    try:
        if first:
            yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()


@dataclass(frozen=True)
class NodeLoad:
    """A node's own queue, from its ``/metrics``: requests in the engine and requests waiting for it."""

    running: float
    waiting: float


class VllmOmniBackend(Backend):
    """One vllm-omni node serving IndexTTS-2 or IndexTTS-2.5."""

    type = "vllm-omni"
    capabilities = Capabilities(formats=NODE_FORMATS, emotion=True, speed=True,
                                voice_keys=("ref_audio_file", "ref_audio", "uploaded_voice", "spk_audio_path"),
                                request_paths=(SPEECH_PATH, VOICES_PATH, "/v1/models", "/health", "/metrics", "/v1"))

    class Options(Backend.Options):
        model: str | None = None
        version: VersionOption = "auto"
        allowed_media_path: str | None = None
        stream: bool = False

    options: Options  # this type's own keys (``Backend.options``, narrowed)

    def __init__(self, endpoint: EndpointConfig, options: Options, context: BackendContext) -> None:
        super().__init__(endpoint, options, context)
        self.url = (endpoint.url or "").rstrip("/")
        self.model = options.model
        self.allowed_media_path = options.allowed_media_path
        self.stream = options.stream
        self.version: Version | None = None if options.version == "auto" else options.version
        self._apply_version()

    def _apply_version(self) -> None:
        speed_range = SPEED_RANGE_25 if self.version == "2.5" else (0.25, 4.0)
        self.capabilities = dataclasses.replace(type(self).capabilities, streaming=self.stream,
                                                speed_range=speed_range)

    @property
    def _session(self) -> aiohttp.ClientSession:
        assert self.context.sessions is not None, "vllm-omni backends need the shared HTTP sessions"
        return self.context.sessions.get(self.context.pool_name, self.context.pool)

    def _headers(self, request_id: str = "") -> dict[str, str]:
        return request_headers(self.endpoint, self.context.pool, request_id)

    def _short_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.context.pool.health_check.timeout)

    def supports_voice(self, voice_params: dict[str, Any]) -> bool:
        if any(isinstance(voice_params.get(k), str) and voice_params[k]
               for k in ("ref_audio_file", "uploaded_voice")):
            return True
        url = voice_params.get("ref_audio")
        if isinstance(url, str) and url.startswith(URL_SCHEMES):
            return True
        return node_file_url(voice_params.get("spk_audio_path"), self.allowed_media_path) is not None

    async def synthesize(self, request: SynthesisRequest) -> AudioResponse:
        plan = await node_request(request, model=self.model, version=self.version,
                                  allowed_media_path=self.allowed_media_path, stream=self.stream)
        with mapped_errors(self.name):
            resp = await self._session.post(self.url + SPEECH_PATH, json=plan.body,
                                            headers=self._headers(request.request_id),
                                            timeout=read_timeout(self.context.pool),
                                            allow_redirects=FOLLOW_REDIRECTS)
        try:
            await self._raise_for_status(resp)
            kind = resp.headers.get("Content-Type", "")
            if plan.stream and is_sse(resp):  # a version that streams only as events
                events = sse_audio(resp, self.name)
                head = await anext(events, b"")
                kind = f"audio/{plan.format}"
                self._check_audio(kind, plan.format, head)
                chunks = _after(head, events)
            else:
                head = await read_prefix(resp, self.name, 4)
                self._check_audio(kind, plan.format, head)
                chunks = iter_body(resp, self.name, head)
        except BaseException:
            resp.release()
            raise
        return AudioResponse(format=plan.format, chunks=chunks, sample_rate=SAMPLE_RATE,
                             content_type=kind,
                             content_length=None if plan.stream else resp.content_length, close=releaser(resp))

    async def _raise_for_status(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status == 404:
            with mapped_errors(self.name):
                text = (await resp.content.read(4096)).decode("utf-8", "replace")
            served = f"model {self.model!r}" if self.model else "the speech API"
            raise BackendFailed(f"endpoint {self.name} does not serve {served} (vllm-omni answered 404); set the "
                                f"pool's `model` to the node's served name (GET {self.url}/v1/models)",
                                endpoint=self.name, detail=text, status=404)
        await raise_for_status(resp, self.name)

    def _check_audio(self, kind: str, fmt: str, head: bytes) -> None:
        magic = _MAGIC.get(fmt)
        ok = bool(head) and (head.startswith(magic) if magic else kind.startswith("audio/"))
        if not ok:
            raise BackendFailed(f"endpoint {self.name} sent a body that is not {fmt} audio ({kind or 'no type'})",
                                endpoint=self.name, detail=head[:200].decode("utf-8", "replace"))

    async def health(self) -> HealthReport:
        try:
            return await self._health()
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy", with the reason
            return HealthReport(False, getattr(exc, "message", None) or f"health check failed: {type(exc).__name__}")

    async def _health(self) -> HealthReport:
        status = await self._status("/health")
        if status != 200:
            return HealthReport(False, f"GET /health: HTTP {status}")
        ready = await self._status("/ready")
        if ready not in (200, 404, 405):
            return HealthReport(False, f"not ready (GET /ready: HTTP {ready}): warming up")
        with mapped_errors(self.name):
            async with self._session.get(self.url + "/v1/models", headers=self._headers(),
                                         timeout=self._short_timeout(),
                                         allow_redirects=FOLLOW_REDIRECTS) as resp:
                if resp.status != 200:
                    return HealthReport(False, f"GET /v1/models: HTTP {resp.status}")
                listing = await resp.json(content_type=None)
        cards = [c for c in listing.get("data", []) if isinstance(c, dict)] if isinstance(listing, dict) else []
        served = [str(c.get("id")) for c in cards]
        if self.model and self.model not in served:
            return HealthReport(False, f"serves {', '.join(served) or 'no model'}, not {self.model!r}: set the pool's "
                                       "`model` to the node's served name", {"models": served})
        if detected := self._detected(cards):
            self.version = detected
            self._apply_version()
        version = self.version or "unknown (assumed 2; set `version`)"
        return HealthReport(True, f"IndexTTS-{version} as {', '.join(served)}",
                            {"models": served, "version": self.version, "ready_endpoint": ready != 404})

    def _detected(self, cards: list[dict[str, Any]]) -> Version | None:
        """The version named by the served model (``...2.5``, ``..._2_5``), when the pool leaves it to us."""
        opts = self.options
        if opts.version != "auto" or not cards:
            return None
        names = " ".join(f"{c.get('id', '')} {c.get('root', '')}" for c in cards)
        return "2.5" if _V25.search(names) else "2"

    async def _status(self, path: str) -> int:
        with mapped_errors(self.name):
            async with self._session.get(self.url + path, headers=self._headers(),
                                         timeout=self._short_timeout(),
                                         allow_redirects=FOLLOW_REDIRECTS) as resp:
                await resp.read()
                return resp.status

    async def load(self) -> NodeLoad:
        """The node's running and waiting requests (``BackendError`` when ``/metrics`` cannot be read)."""
        with mapped_errors(self.name):
            async with self._session.get(self.url + "/metrics", headers=self._headers(),
                                         timeout=self._short_timeout(),
                                         allow_redirects=FOLLOW_REDIRECTS) as resp:
                await raise_for_status(resp, self.name)
                text = (await resp.read()).decode("utf-8", "replace")
        totals = {RUNNING: 0.0, WAITING: 0.0}
        try:
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    model = sample.labels.get("model_name")
                    if sample.name in totals and (not self.model or model in (None, self.model)):
                        totals[sample.name] += sample.value
        except ValueError as exc:
            raise BackendFailed(f"endpoint {self.name} sent unreadable metrics", endpoint=self.name,
                                detail=repr(exc)) from None
        return NodeLoad(running=totals[RUNNING], waiting=totals[WAITING])

    async def upload_voice(self, name: str, audio: bytes, *, consent: str, filename: str = "voice.wav",
                           content_type: str = "audio/wav", ref_text: str | None = None,
                           description: str | None = None) -> dict[str, Any]:
        """``POST /v1/audio/voices``: store ``audio`` on the node as voice ``name``; the node's ``voice`` record."""
        form = aiohttp.FormData()
        # a BytesIO, not bytes: aiohttp warns about large raw bodies blocking the loop
        form.add_field("audio_sample", io.BytesIO(audio), filename=filename, content_type=content_type)
        form.add_field("consent", consent)
        form.add_field("name", name)
        if ref_text:
            form.add_field("ref_text", ref_text)
        if description:
            form.add_field("speaker_description", description)
        with mapped_errors(self.name):
            async with self._session.post(self.url + VOICES_PATH, data=form, headers=self._headers(),
                                          timeout=read_timeout(self.context.pool),
                                          allow_redirects=FOLLOW_REDIRECTS) as resp:
                await raise_for_status(resp, self.name)
                data = await resp.json(content_type=None)
        voice = data.get("voice") if isinstance(data, dict) else None
        if not isinstance(voice, dict):
            raise BackendFailed(f"endpoint {self.name} answered an upload without a voice record", endpoint=self.name)
        return voice

    async def list_voices(self) -> dict[str, Any]:
        """``GET /v1/audio/voices``: ``{"voices": [...], "uploaded_voices": [...]}``."""
        with mapped_errors(self.name):
            async with self._session.get(self.url + VOICES_PATH, headers=self._headers(),
                                         timeout=self._short_timeout(),
                                         allow_redirects=FOLLOW_REDIRECTS) as resp:
                await raise_for_status(resp, self.name)
                data = await resp.json(content_type=None)
        if not isinstance(data, dict):
            raise BackendFailed(f"endpoint {self.name} sent a voice list that is not an object", endpoint=self.name)
        return data

    async def delete_voice(self, name: str) -> bool:
        """``DELETE /v1/audio/voices/{name}``; False when the node has no such voice."""
        with mapped_errors(self.name):
            async with self._session.delete(f"{self.url}{VOICES_PATH}/{name}", headers=self._headers(),
                                            timeout=self._short_timeout(),
                                            allow_redirects=FOLLOW_REDIRECTS) as resp:
                if resp.status == 404:
                    return False
                await raise_for_status(resp, self.name)
        return True


@hookimpl(trylast=True)
def register_backends(register: RegisterBackend) -> None:
    register(VllmOmniBackend)


@hookimpl
async def startup(router: Router) -> None:
    """Read every voice's ``ref_audio_file`` once when a vllm-omni pool may send it, so a bad file shows now."""
    if not any(cfg.type == VllmOmniBackend.type for cfg in router.settings.pools.values()):
        return
    for name, voice in router.settings.voices.items():
        path = voice.params().get("ref_audio_file")
        if isinstance(path, str) and path:
            try:
                await REFERENCE_FILES.data_url(path)
            except ValueError as exc:
                log.warning("voice %r: reference file %s cannot be sent to vllm-omni nodes: %s", name, path, exc)


__all__ = ["NodeLoad", "VllmOmniBackend"]
