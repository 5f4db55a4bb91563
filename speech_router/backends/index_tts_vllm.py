"""Backend type ``index-tts-vllm``: remote index-tts-vllm servers (github Ksuriuri/index-tts-vllm).

``api: v2`` speaks ``api_server_v2.py`` (IndexTTS2): ``POST /tts_url`` with the speaker reference
path and emotion controls, answered by a whole 22,050 Hz WAV. ``api: v1`` speaks ``api_server.py``
(IndexTTS 1/1.5): ``POST /tts`` with a ``character`` or ``POST /tts_url`` with ``audio_paths``.
Both answer errors as HTTP 500 ``{"status": "error", "error": "<traceback>"}`` and health as
``GET /health`` -> 200 ``{"status": "healthy"}`` or 503.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import aiohttp

from ..audio.validate import AudioValidator, InvalidAudio, validated_stream
from ..config.models import EndpointConfig, PoolConfig
from ..errors import BackendError, BackendFailed, BackendRejected, RequestInvalid
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
from .index_tts_errors import client_mistake

#: the most of a ``/health`` answer read (a node could send any amount)
HEALTH_BODY_BYTES = 64 * 1024

V1_SEED = 8  # api_server.py's default seed for /tts_url


class IndexTtsVllmBackend(Backend):
    """One index-tts-vllm node."""

    type = "index-tts-vllm"
    capabilities = Capabilities(formats=frozenset({"wav"}), emotion=True, voice_keys=("spk_audio_path", "character"),
                                tts_url=True, request_paths=("/tts_url", "/tts", "/health", "/audio/voices"))

    class Options(Backend.Options):
        api: Literal["v2", "v1"] = "v2"

    def __init__(self, endpoint: EndpointConfig, options: Options, context: BackendContext) -> None:
        super().__init__(endpoint, options, context)
        self.api = options.api
        if self.api == "v1":
            self.capabilities = dataclasses.replace(self.capabilities, emotion=False)
        self._url = endpoint.url or ""  # the config requires one (``needs_url``)

    @property
    def url(self) -> str:
        """The node's base URL (``indextts2-local``: its worker's, which changes when the worker restarts)."""
        return self._url

    @property
    def _session(self) -> aiohttp.ClientSession:
        assert self.context.sessions is not None, "index-tts-vllm backends need the shared HTTP sessions"
        return self.context.sessions.get(self.context.pool_name, self.context.pool)

    def supports_voice(self, voice_params: dict[str, Any]) -> bool:
        if self.api == "v2":
            return bool(voice_params.get("spk_audio_path"))
        return bool(voice_params.get("character") or voice_params.get("spk_audio_path"))

    def request_body(self, request: SynthesisRequest) -> tuple[str, dict[str, Any]]:
        """The path and JSON body the node expects for this request."""
        if request.passthrough is not None:
            if self.api == "v2" and not isinstance(request.passthrough.get("spk_audio_path"), str):
                # api_server_v2 reads data["spk_audio_path"] and answers a KeyError as HTTP 500
                raise BackendRejected("index-tts-vllm v2 nodes need 'spk_audio_path' (a path on the node); "
                                      "'audio_paths' is the IndexTTS 1.x form", endpoint=self.name)
            return "/tts_url", request.passthrough
        params = request.voice_params
        if self.api == "v1":
            if params.get("character"):
                return "/tts", {"text": request.text, "character": params["character"]}
            return "/tts_url", {"text": request.text, "audio_paths": [params.get("spk_audio_path")], "seed": V1_SEED}
        emo = request.emotion
        body: dict[str, Any] = {"text": request.text, "spk_audio_path": params.get("spk_audio_path"),
                                "emo_control_method": int(emo.method)}
        if emo.method == EmotionMethod.REFERENCE_AUDIO:
            if not emo.ref_path:  # the node would crash on a null path (HTTP 500): the client's mistake first
                raise RequestInvalid("This emotion voice has no spk_audio_path, which index-tts-vllm nodes need.",
                                     param="emotion.audio")
            body.update(emo_ref_path=emo.ref_path, emo_weight=emo.weight)
        elif emo.method == EmotionMethod.VECTOR:
            body["emo_vec"] = list(emo.vector or [0.0] * 8)
        elif emo.method == EmotionMethod.TEXT:
            body["emo_text"] = emo.text
        if emo.random:
            body["emo_random"] = True
        if request.max_text_tokens_per_sentence is not None:
            body["max_text_tokens_per_sentence"] = request.max_text_tokens_per_sentence
        return "/tts_url", body

    async def synthesize(self, request: SynthesisRequest) -> AudioResponse:
        path, body = self.request_body(request)
        headers = request_headers(self.endpoint, self.context.pool, request.request_id)
        with mapped_errors(self.name):
            resp = await self._session.post(self.url + path, json=body, headers=headers,
                                            timeout=client_timeout(self.context.pool),
                                            allow_redirects=FOLLOW_REDIRECTS)
        try:
            await raise_for_status(resp, self.name, lambda status, text: client_mistake(status, text, request, self.name))
            head = await read_prefix(resp, self.name, 12)
        except BaseException:
            resp.release()
            raise
        validator = AudioValidator("wav", len(request.text))  # header, size cap for the text, completeness
        try:
            if len(head) < 12:
                raise InvalidAudio(f"a body of {len(head)} bytes")
            validator.feed(head)
        except InvalidAudio as exc:
            resp.release()
            kind = resp.headers.get("Content-Type", "unknown")
            raise BackendFailed(f"endpoint {self.name} sent a body that is not WAV audio ({kind}): {exc}",
                                endpoint=self.name) from None

        def invalid(exc: InvalidAudio) -> BackendFailed:
            return BackendFailed(f"endpoint {self.name} sent invalid audio: {exc}", endpoint=self.name)

        chunks = validated_stream(iter_body(resp, self.name), validator, invalid, first=head)
        return AudioResponse(format="wav", chunks=chunks,
                             content_type=resp.headers.get("Content-Type", "audio/wav"),
                             content_length=resp.content_length, close=releaser(resp))

    async def health(self) -> HealthReport:
        """``GET /health``: healthy on 200 ``{"status": "healthy"}``. Failures are said by what happened (status,
        error type), never by an error's repr, which would carry the request's headers (the pool's secrets)."""
        pool = self.context.pool
        status = 0
        try:
            with mapped_errors(self.name):
                async with self._session.get(self.url + "/health", timeout=_health_timeout(pool),
                                             headers=request_headers(self.endpoint, pool),
                                             allow_redirects=FOLLOW_REDIRECTS) as resp:
                    status = resp.status
                    body = await resp.content.read(HEALTH_BODY_BYTES)
            data = json.loads(body) if body.strip() else None
        except BackendError as exc:
            return HealthReport(False, exc.message)
        except ValueError:  # not JSON (or not UTF-8): the status says more than the body
            return HealthReport(False, f"HTTP {status}: the answer is not JSON")
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy", said by its type
            return HealthReport(False, f"health check failed: {what_failed(exc)}")
        if status == 200 and isinstance(data, dict) and data.get("status") == "healthy":
            return HealthReport(True, str(data.get("message", "")), data)
        if 300 <= status < 400:
            return HealthReport(False, f"HTTP {status}: a redirect, not followed")
        detail = data.get("message") or data.get("error") if isinstance(data, dict) else None
        return HealthReport(False, f"HTTP {status}: {detail or 'unhealthy'}", data if isinstance(data, dict) else {})

    async def voices(self) -> dict[str, Any]:
        """The v1 node's ``GET /audio/voices`` (its speaker.json); v2 nodes have no voice list."""
        if self.api != "v1":
            raise BackendRejected("index-tts-vllm v2 nodes have no voice list", endpoint=self.name)
        with mapped_errors(self.name):
            async with self._session.get(self.url + "/audio/voices", timeout=_health_timeout(self.context.pool),
                                         allow_redirects=FOLLOW_REDIRECTS) as r:
                await raise_for_status(r, self.name)
                voices = await r.json(content_type=None)
        if not isinstance(voices, dict):
            raise BackendFailed(f"endpoint {self.name} sent a voice list that is not a JSON object", endpoint=self.name)
        return voices


def _health_timeout(pool: PoolConfig) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=pool.health_check.timeout)



@hookimpl(trylast=True)
def register_backends(register: RegisterBackend) -> None:
    register(IndexTtsVllmBackend)
