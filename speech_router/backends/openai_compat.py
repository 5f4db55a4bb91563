"""Backend type ``openai``: any server that speaks OpenAI's ``POST /audio/speech``.

The endpoint ``url`` is the API base, as the OpenAI SDK's ``base_url`` (e.g. ``http://tts:8880/v1``);
the router posts to ``<url>/audio/speech``. Speed and instructions pass through; the upstream
streams, and its bytes go to the client as they arrive.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from pydantic import Field

from ..config.models import EndpointConfig
from ..plugins.hookspecs import RegisterBackend, hookimpl
from ..types import AudioResponse, EmotionMethod, HealthReport, SynthesisRequest
from .base import Backend, BackendContext, Capabilities
from .http import (
    FOLLOW_REDIRECTS,
    client_timeout,
    iter_body,
    mapped_errors,
    raise_for_status,
    read_prefix,
    releaser,
    request_headers,
    what_failed,
)

ALL_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")


class OpenAICompatBackend(Backend):
    """One OpenAI-compatible speech server."""

    type = "openai"
    capabilities = Capabilities(formats=frozenset(ALL_FORMATS), streaming=True, speed=True, voice_keys=("openai_voice",),
                                request_paths=("/audio/speech",))

    class Options(Backend.Options):
        #: the model name to send upstream; by default the client's model name is forwarded
        model: str | None = None
        #: the formats the upstream can produce; others are asked as wav and transcoded by the router
        formats: list[str] = Field(default_factory=lambda: list(ALL_FORMATS))
        #: health check path under the base URL (``models`` -> GET <url>/models); empty disables
        health_path: str = "models"

    options: Options  # this type's own keys (``Backend.options``, narrowed)

    def __init__(self, endpoint: EndpointConfig, options: Options, context: BackendContext) -> None:
        super().__init__(endpoint, options, context)
        import dataclasses

        self.capabilities = dataclasses.replace(self.capabilities, formats=frozenset(options.formats))
        self.url = endpoint.url

    @property
    def _session(self) -> aiohttp.ClientSession:
        assert self.context.sessions is not None
        return self.context.sessions.get(self.context.pool_name, self.context.pool)

    def supports_voice(self, voice_params: dict[str, Any]) -> bool:
        return True  # the public voice name is forwarded when no ``openai_voice`` is configured

    def request_body(self, request: SynthesisRequest) -> dict[str, Any]:
        opts = self.options
        fmt = request.response_format if request.response_format in self.capabilities.formats else "wav"
        body: dict[str, Any] = {
            "model": opts.model or request.model,
            "input": request.text,
            "voice": request.voice_params.get("openai_voice") or request.voice,
            "response_format": fmt,
        }
        if request.speed != 1.0:
            body["speed"] = request.speed
        if request.emotion.method == EmotionMethod.TEXT and request.emotion.text:
            body["instructions"] = request.emotion.text
        return body

    async def synthesize(self, request: SynthesisRequest) -> AudioResponse:
        body = self.request_body(request)
        headers = request_headers(self.endpoint, self.context.pool, request.request_id)
        with mapped_errors(self.name):
            resp = await self._session.post(f"{self.url}/audio/speech", json=body, headers=headers,
                                            timeout=client_timeout(self.context.pool),
                                            allow_redirects=FOLLOW_REDIRECTS)
        try:
            await raise_for_status(resp, self.name)
            head = await read_prefix(resp, self.name, 1)
        except BaseException:
            resp.release()
            raise
        fmt = body["response_format"]
        rate = 24000 if fmt == "pcm" else None
        return AudioResponse(format=fmt, sample_rate=rate, chunks=iter_body(resp, self.name, head),
                             content_type=resp.headers.get("Content-Type"), content_length=resp.content_length,
                             close=releaser(resp))

    async def health(self) -> HealthReport:
        opts = self.options
        if not opts.health_path:
            return HealthReport(True, "health checks disabled")
        pool = self.context.pool
        try:
            with mapped_errors(self.name):
                async with self._session.get(f"{self.url}/{opts.health_path.lstrip('/')}",
                                             headers=request_headers(self.endpoint, pool),
                                             timeout=aiohttp.ClientTimeout(total=pool.health_check.timeout),
                                             allow_redirects=FOLLOW_REDIRECTS) as resp:
                    status = resp.status
        except Exception as exc:  # noqa: BLE001 - said by its type, never its repr (the request's headers)
            return HealthReport(False, getattr(exc, "message", None) or f"health check failed: {what_failed(exc)}")
        if 300 <= status < 400:
            return HealthReport(False, f"HTTP {status}: a redirect, not followed")
        return HealthReport(status < 500, f"HTTP {status}")



@hookimpl(trylast=True)
def register_backends(register: RegisterBackend) -> None:
    register(OpenAICompatBackend)
