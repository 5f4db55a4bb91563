"""``GET /openapi.json``: an OpenAPI 3.1 document of the routes this app serves.

What each route answers is in the route table (``speech_router.api.table``: each ``ApiRoute``'s ``Doc``,
access and error shape), the same table the app is made from, so a route cannot be served undocumented.
Request bodies come from the pydantic models the handlers validate with, so the document and the
validation cannot drift apart. This module holds the shapes the handlers build as plain dicts and the
pieces of the document (content types, error texts, security schemes), and builds the document.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import __version__
from ..audio import FORMATS
from ..config.models import ServerConfig, Settings
from .job_schemas import JOB_MODELS, JobRequest
from .schemas import SpeechRequest, SynthesizeRequest, TtsUrlRequest
from .spec import Access, ApiRoute, Content, ErrorShape, RouteTable
from .state import app_state
from .voices import VoiceDeleted, VoiceList, VoiceUploaded

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
EXAMPLE_TEXT = "Hello from speech-router."


# --- shapes the handlers build as plain dicts; described here for clients -------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error or server_error")
    param: str | None = Field(description="the request field at fault, dotted (`emotion.vector`)")
    code: str | None = Field(description="machine-readable reason, e.g. model_not_found, queue_full")


class Error(BaseModel):
    """OpenAI's error body: on the OpenAI, native and admin routes."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


class TtsUrlError(BaseModel):
    """index-tts-vllm's error body, kept on the ``/tts_url`` drop-in (without the node's traceback)."""

    model_config = ConfigDict(extra="forbid")
    status: Literal["error"]
    error: str


class SpeechAudioDelta(BaseModel):
    type: Literal["speech.audio.delta"]
    audio: str = Field(description="base64 of the next bytes of audio in the requested response_format")


class Usage(BaseModel):
    input_tokens: int = Field(description="characters of input")
    output_tokens: int = Field(description="20 ms frames of audio")
    total_tokens: int


class SpeechAudioDone(BaseModel):
    type: Literal["speech.audio.done"]
    usage: Usage


class StreamErrorDetail(BaseModel):
    message: str
    type: str


class SpeechStreamError(BaseModel):
    """Sent in place of more audio when the endpoint fails mid-stream; the stream then ends."""

    type: Literal["error"]
    error: StreamErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ModelHealth(BaseModel):
    healthy: bool
    pools: list[str]


class Health(BaseModel):
    status: Literal["healthy", "unhealthy"]
    models: dict[str, ModelHealth]
    endpoints: list[dict[str, Any]] = Field(description="each endpoint's state, breaker and load")


class Status(BaseModel):
    status: str


class Plugin(BaseModel):
    name: str
    hooks: list[str]
    version: str | None


COMPONENT_MODELS: tuple[type[BaseModel], ...] = (
    SpeechRequest, SynthesizeRequest, TtsUrlRequest, Error, TtsUrlError, ModelList, VoiceList, Health, Status, Plugin,
    SpeechAudioDelta, SpeechAudioDone, SpeechStreamError, VoiceUploaded, VoiceDeleted, *JOB_MODELS)


# --- pieces of the document, for the route table -----------------------------------------------------


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def json_content(schema: type[BaseModel] | dict[str, Any]) -> Content:
    return {"application/json": {"schema": schema if isinstance(schema, dict) else ref(schema)}}


AUDIO: Content = {fmt.content_type: {} for fmt in FORMATS.values()}  # binary bodies: no schema (OpenAPI 3.1)
#: each event (OpenAPI 3.2's reading of an event-stream schema): JSON in `data`
SSE: Content = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"], "description": "Audio deltas, then `speech.audio.done` with usage.",
    "properties": {"event": {"type": "string"}, "data": {
        "type": "string", "contentMediaType": "application/json",
        "contentSchema": {"oneOf": [ref(SpeechAudioDelta), ref(SpeechAudioDone), ref(SpeechStreamError)]}}}}}}
ANY_OBJECT: dict[str, Any] = {"type": "object"}
#: ``POST /v1/audio/voices``: vllm-omni's upload form
VOICE_FORM: Content = {"multipart/form-data": {"schema": {
    "type": "object", "required": ["audio_sample", "name", "consent"], "properties": {
        "audio_sample": {"type": "string", "format": "binary", "description": (
            "the reference: WAV, FLAC, OGG or MP3, 1-30 s, at most `voice_store.max_bytes`; mixed down to mono")},
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", "description": (
            "the voice's name (case-insensitive); a re-upload replaces it; a configured voice's name is refused")},
        "consent": {"type": "string", "description": "the speaker's consent (a reference to it), kept with the voice"},
        "description": {"type": "string"}, "speaker_description": {"type": "string", "description": "vllm-omni's name "
                                                                                                     "for description"},
        "ref_text": {"type": "string", "description": "what the reference says (passed on to vllm-omni nodes)"}}}}}

ERROR_TEXT = {
    400: "The request is invalid; `param` names the field.",
    401: "No key, or an unknown one (`Authorization: Bearer <key>`).",
    403: "The admin API is off (no admin key), or the key may not write voices (admin key or `voices` scope).",
    404: "No endpoint (admin), uploaded voice or job of that name.",
    409: "The job has no audio yet (it has not succeeded), or none for that item.",
    413: "The body is over `server.max_body_bytes` (jobs: `jobs.max_body_bytes`).",
    416: "The Range asked for is outside the file (`Content-Range` gives its size).",
    426: "Not a WebSocket handshake: this route speaks WebSocket.",
    429: "The client's rate limit or the pool's queue is full; retry after `Retry-After` seconds.",
    500: "An unexpected error in the router (logged with the request id).",
    502: "The endpoint failed; the message says which.",
    503: "No healthy endpoint or the queue timed out; retry after `Retry-After` seconds.",
    504: "The request's deadline passed.",
    507: "The router's disk for jobs cannot take this job now; retry after `Retry-After` seconds.",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}}


SECURITY_SCHEMES = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": (
        "A client key, sent as OpenAI's SDKs do. Needed only when client keys are configured.")},
    "adminKey": {"type": "http", "scheme": "bearer", "description": "The admin key (`server.auth.admin_key_env`)."},
    "voicesKey": {"type": "http", "scheme": "bearer", "description": (
        "A client key with the `voices` scope (`scopes: [voices]`): it may upload and delete voices.")},
}


#: the schemes a route's access accepts (any one of them)
SECURITY: dict[Access, tuple[str, ...]] = {Access.OPEN: (), Access.CLIENT: ("apiKey",), Access.ADMIN: ("adminKey",),
                                           Access.VOICES: ("adminKey", "voicesKey"), Access.PAGE: ()}
#: each error shape's body
ERROR_BODIES: dict[ErrorShape, type[BaseModel]] = {ErrorShape.OPENAI: Error, ErrorShape.TTS_URL: TtsUrlError}


# --- building the document ---------------------------------------------------------------------------


def openapi_schema(routes: RouteTable, *, settings: Settings | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``; ``settings`` adds working examples and header names."""
    headers = _synthesis_headers(settings.server if settings else ServerConfig())
    examples = _examples(settings)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", route.path)
        for method in route.methods:
            paths.setdefault(path, {})[method.lower()] = _operation(path, route, headers, examples)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "speech-router", "version": __version__, "description": (
            "One stable URL in front of a fleet of text-to-speech servers.")},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": component_schemas(), "securitySchemes": SECURITY_SCHEMES},
    }


def component_schemas() -> dict[str, Any]:
    """Each model's JSON schema, with the ``$defs`` pydantic nests hoisted up to ``components.schemas``."""
    out: dict[str, Any] = {}
    for model in COMPONENT_MODELS:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return dict(sorted(out.items()))


def _operation(path: str, route: ApiRoute, headers: list[dict[str, Any]],
               examples: dict[type[BaseModel], dict[str, Any]]) -> dict[str, Any]:
    op = route.doc
    out: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "security": [{scheme: []} for scheme in SECURITY[route.access]],
    }
    if op.deprecated:
        out["deprecated"] = True
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in re.findall(r"\{(\w+)\}", path)]
    if op.synthesis_headers:
        params += headers
    params += list(op.params)
    if params:
        out["parameters"] = params
    if op.body is not None:
        media: dict[str, Any] = {"schema": ref(op.body)}
        if op.body in examples:
            media["example"] = examples[op.body]
        out["requestBody"] = {"required": True, "content": {"application/json": media}}
    if op.form is not None:
        out["requestBody"] = {"required": True, "content": op.form}
    status, described = op.status
    responses: dict[str, Any] = {str(status): {"description": described, "content": op.ok}}
    for status, why in op.also:
        responses[str(status)] = {"description": why, "content": op.ok}
    for status in op.errors:
        responses[str(status)] = {"description": ERROR_TEXT[status],
                                  "content": json_content(ERROR_BODIES[route.errors])}
        if status in (429, 503, 507):
            responses[str(status)]["headers"] = RETRY_AFTER
    out["responses"] = responses
    return out


def _synthesis_headers(server: ServerConfig) -> list[dict[str, Any]]:
    """The request headers every synthesis route reads; their names are configurable."""
    return [
        {"name": server.priority_header, "in": "header", "required": False,
         "description": "interactive requests are served before batch ones (a client key's class wins)",
         "schema": {"type": "string", "enum": ["interactive", "batch"]}},
        {"name": server.deadline_header, "in": "header", "required": False,
         "description": "seconds the client will wait; it can only shorten the model's deadline",
         "schema": {"type": "number", "exclusiveMinimum": 0}},
    ]


def _examples(settings: Settings | None) -> dict[type[BaseModel], dict[str, Any]]:
    """Bodies that work on this instance: its first model and voice."""
    if settings is None or not settings.voices:
        return {}
    model = next(iter(settings.models))
    voice, config = next(iter(settings.voices.items()))
    out: dict[type[BaseModel], dict[str, Any]] = {
        SpeechRequest: {"model": model, "input": EXAMPLE_TEXT, "voice": voice, "response_format": "wav"},
        SynthesizeRequest: {"model": model, "text": EXAMPLE_TEXT, "voice": voice},
        JobRequest: {"model": model, "input": EXAMPLE_TEXT, "voice": voice, "response_format": "wav"},
    }
    spk_audio_path = config.params().get("spk_audio_path")
    if isinstance(spk_audio_path, str):
        out[TtsUrlRequest] = {"text": EXAMPLE_TEXT, "spk_audio_path": spk_audio_path}
    return out


async def openapi_json(request: Request) -> JSONResponse:
    """The document, built once and kept on ``app.state``; built again only when a reload swapped the settings."""
    state = app_state(request)
    settings = state.settings
    cached = state.openapi
    if cached is None or cached[0] is not settings:
        cached = state.openapi = (settings, openapi_schema(state.routes, settings=settings))
    return JSONResponse(cached[1])
