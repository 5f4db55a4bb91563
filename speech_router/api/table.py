"""The route table: every route of the public API, with everything the app, OpenAPI, metrics and auth read.

A request is followed from here by reading types: a synthesis route's handler is a ``SynthesisRoute``
(``speech_router.api.synthesis``) whose ``parse`` step is named here; it plans, calls ``Router.synthesize``
and responds. ``create_app`` serves exactly these routes; ``openapi.openapi_schema`` documents exactly these;
the edge (``gate.Gate``) finds a request's access, error shape and metric label here.
"""

from __future__ import annotations

from dataclasses import replace

from . import admin, info, jobs, openapi, speech, ui, voices
from .job_schemas import JobDeleted, JobList, JobObject, JobRequest
from .openapi import ANY_OBJECT, AUDIO, SSE, VOICE_FORM, Health, ModelList, Plugin, Status, json_content, ref
from .schemas import SpeechRequest, SynthesizeRequest, TtsUrlRequest
from .spec import Access, ApiRoute, Doc, ErrorShape, RouteTable
from .stream import RealtimeRoute
from .synthesis import SynthesisRoute

CLIENT_ERRORS = (401, 429)
SYNTHESIS_ERRORS = (400, 401, 413, 429, 500, 502, 503, 504)
ADMIN_ERRORS = (401, 403)
NOT_READY = ((503, "Not ready: no model can be served."),)

_SPEECH = Doc("Create speech (OpenAI's API)", "synthesis", {**AUDIO, **SSE}, SpeechRequest, errors=SYNTHESIS_ERRORS,
              synthesis_headers=True)
_MODELS = Doc("List models (OpenAI's API)", "discovery", json_content(ModelList), errors=CLIENT_ERRORS)
_VOICES = Doc("List voices and the models that speak them", "discovery", json_content(voices.VoiceList),
              errors=CLIENT_ERRORS)
_ENDPOINTS = Doc("Every endpoint's state", "admin", json_content(ANY_OBJECT), errors=ADMIN_ERRORS)
_DRAIN = Doc("Stop sending new requests to an endpoint", "admin", json_content(ANY_OBJECT),
             errors=(*ADMIN_ERRORS, 404))
_UNDRAIN = replace(_DRAIN, summary="Send new requests to an endpoint again")
_PAGE = Doc("The fleet page and playground (off with server.ui: false)", "operations",
            {"text/html": {"schema": {"type": "string"}}}, errors=(404,))


JOB_ERRORS = (400, 401, 404, 429, 503)  # 400 while jobs are off (no jobs.directory); 503: it cannot be written
_JOB_PAGE = ({"name": "limit", "in": "query", "required": False, "description": "jobs per page (1-100)",
              "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
             {"name": "after", "in": "query", "required": False, "description": "the last id of the page before",
              "schema": {"type": "string"}})
_JOB_AUDIO = ({"name": "item", "in": "query", "required": False, "description": "one item's audio (0, 1, ...)",
               "schema": {"type": "integer", "minimum": 0}},
              {"name": "Range", "in": "header", "required": False, "description": "one byte range, e.g. bytes=0-",
               "schema": {"type": "string"}})


def _old(doc: Doc) -> Doc:
    return replace(doc, summary=doc.summary + " (the old name, kept for one release)", deprecated=True)


ROUTES = RouteTable([
    # synthesis: plan -> router -> respond (speech_router.api.synthesis)
    ApiRoute("/v1/audio/speech", ("POST",), SynthesisRoute(speech.openai_speech), "post_v1_audio_speech",
             Access.CLIENT, _SPEECH, metric="/v1/audio/speech"),
    ApiRoute("/audio/speech", ("POST",), SynthesisRoute(speech.openai_speech), "post_audio_speech", Access.CLIENT,
             replace(_SPEECH, summary="Create speech (OpenAI's API, without /v1)"), metric="/v1/audio/speech"),
    ApiRoute("/synthesize", ("POST",), SynthesisRoute(speech.native), "post_synthesize", Access.CLIENT,
             Doc("Synthesize with IndexTTS2 controls (native API)", "synthesis", AUDIO, SynthesizeRequest,
                 errors=SYNTHESIS_ERRORS, synthesis_headers=True), metric="/synthesize"),
    ApiRoute("/tts_url", ("POST",), SynthesisRoute(speech.tts_url), "post_tts_url", Access.CLIENT,
             Doc("index-tts-vllm's /tts_url, routed to a healthy node", "synthesis", {"audio/wav": {}}, TtsUrlRequest,
                 errors=SYNTHESIS_ERRORS, synthesis_headers=True), metric="/tts_url", errors=ErrorShape.TTS_URL),
    # realtime: text in, audio out, over a WebSocket (speech_router.realtime)
    ApiRoute("/v1/audio/speech/stream", ("GET",), RealtimeRoute(), "get_v1_audio_speech_stream", Access.CLIENT,
             Doc("Realtime speech over a WebSocket (vllm-omni's protocol): text streamed in, audio out per sentence",
                 "synthesis", {}, errors=(401, 426), status=(101, "Switching Protocols: the session "
                 "runs on the WebSocket (README: Realtime speech)")), websocket=True),
    # long-form jobs (speech_router.jobs): submit, poll, fetch
    ApiRoute("/v1/audio/speech/jobs", ("POST",), jobs.submit, "post_v1_audio_speech_jobs", Access.CLIENT,
             Doc("Submit a long-form job: a book, a course, a dialogue", "jobs", json_content(JobObject), JobRequest,
                 errors=(400, 401, 413, 429, 503, 507), status=(202, "Accepted: the job is queued"))),
    ApiRoute("/v1/audio/speech/jobs", ("GET",), jobs.listing, "get_v1_audio_speech_jobs", Access.CLIENT,
             Doc("Your jobs, newest first", "jobs", json_content(JobList), errors=(400, 401, 429, 503),
                 params=_JOB_PAGE)),
    ApiRoute("/v1/audio/speech/jobs/{job_id}", ("GET",), jobs.status, "get_v1_audio_speech_jobs_job_id",
             Access.CLIENT, Doc("A job's state, progress per item and time left", "jobs", json_content(JobObject),
                                errors=JOB_ERRORS)),
    ApiRoute("/v1/audio/speech/jobs/{job_id}", ("DELETE",), jobs.cancel, "delete_v1_audio_speech_jobs_job_id",
             Access.CLIENT, Doc("Cancel an open job (its slots free at once); delete an ended one and its audio",
                                "jobs", {"application/json": {"schema": {"oneOf": [ref(JobObject), ref(JobDeleted)]}}},
                                errors=JOB_ERRORS)),
    ApiRoute("/v1/audio/speech/jobs/{job_id}/content", ("GET",), jobs.content,
             "get_v1_audio_speech_jobs_job_id_content", Access.CLIENT,
             Doc("A job's audio, whole or one item's, with byte ranges", "jobs", AUDIO,
                 errors=(*JOB_ERRORS, 409, 416), also=((206, "The byte range asked for (Range)."),),
                 params=_JOB_AUDIO)),
    # discovery
    ApiRoute("/v1/models", ("GET",), info.list_models, "get_v1_models", Access.CLIENT, _MODELS),
    ApiRoute("/models", ("GET",), info.list_models, "get_models", Access.CLIENT,
             replace(_MODELS, summary="List models (without /v1)")),
    ApiRoute("/v1/audio/voices", ("GET",), voices.list_voices, "get_v1_audio_voices", Access.CLIENT, _VOICES),
    ApiRoute("/voices", ("GET",), voices.list_voices, "get_voices", Access.CLIENT,
             replace(_VOICES, summary="List voices (without /v1)")),
    ApiRoute("/v1/audio/voices", ("POST",), voices.upload_voice, "post_v1_audio_voices", Access.VOICES,
             Doc("Upload a voice for the whole fleet", "voices", json_content(voices.VoiceUploaded), form=VOICE_FORM,
                 errors=(400, 401, 403, 429, 503))),
    ApiRoute("/v1/audio/voices/{name}", ("DELETE",), voices.delete_voice, "delete_v1_audio_voices_name",
             Access.VOICES, Doc("Delete an uploaded voice", "voices", json_content(voices.VoiceDeleted),
                                errors=(400, 401, 403, 404, 503))),
    ApiRoute("/-/plugins", ("GET",), info.plugins, "get_plugins", Access.CLIENT,
             Doc("Loaded plugins and their hooks", "operations", json_content({"type": "array", "items": ref(Plugin)}),
                 errors=CLIENT_ERRORS)),
    # operations: open to probes and scrapers (server.auth.open_paths)
    ApiRoute("/health", ("GET",), info.health, "get_health", Access.OPEN,
             Doc("Every model's and endpoint's health; 503 when a model has none healthy", "operations",
                 json_content(Health), also=((503, "Some model has no healthy endpoint."),))),
    ApiRoute("/livez", ("GET",), info.livez, "get_livez", Access.OPEN,
             Doc("The process answers", "operations", json_content(Status))),
    ApiRoute("/readyz", ("GET",), info.readyz, "get_readyz", Access.OPEN,
             Doc("Started, and some model can be served; else 503", "operations", json_content(Status),
                 also=NOT_READY)),
    ApiRoute("/metrics", ("GET",), info.metrics, "get_metrics", Access.OPEN,
             Doc("Prometheus metrics", "operations", {"text/plain": {"schema": {"type": "string"}}})),
    ApiRoute("/openapi.json", ("GET",), openapi.openapi_json, "get_openapi_json", Access.OPEN,
             Doc("This document", "operations", json_content(ANY_OBJECT))),
    # the fleet page (speech_router.api.ui): static files that call the routes above with the key typed into them
    ApiRoute("/ui", ("GET",), ui.page, "get_ui", Access.PAGE, _PAGE),
    ApiRoute("/ui/{name}", ("GET",), ui.asset, "get_ui_name", Access.PAGE,
             replace(_PAGE, summary="The fleet page's scripts and style sheet",
                     ok={"text/javascript": {"schema": {"type": "string"}}, "text/css": {"schema": {"type": "string"}}},
                     errors=(404,))),
    # admin
    ApiRoute("/admin/endpoints", ("GET",), admin.endpoints, "get_admin_endpoints", Access.ADMIN, _ENDPOINTS),
    ApiRoute("/admin/endpoints/{name:path}/drain", ("POST",), admin.drain, "post_admin_endpoints_name_drain",
             Access.ADMIN, _DRAIN),
    ApiRoute("/admin/endpoints/{name:path}/undrain", ("POST",), admin.undrain, "post_admin_endpoints_name_undrain",
             Access.ADMIN, _UNDRAIN),
    ApiRoute("/admin/reload", ("POST",), admin.reload, "post_admin_reload", Access.ADMIN,
             Doc("Re-read the configuration", "admin", json_content(ANY_OBJECT), errors=ADMIN_ERRORS,
                 also=((422, "The new configuration was refused; `errors` lists every problem."),))),
    ApiRoute("/admin/config", ("GET",), admin.config, "get_admin_config", Access.ADMIN,
             Doc("The configuration in use, without secrets", "admin", json_content(ANY_OBJECT),
                 errors=ADMIN_ERRORS)),
    ApiRoute("/admin/backends", ("GET",), admin.backends, "get_admin_backends", Access.ADMIN, _old(_ENDPOINTS),
             alias_of="/admin/endpoints"),
    ApiRoute("/admin/backends/{name:path}/drain", ("POST",), admin.drain, "post_admin_backends_name_drain",
             Access.ADMIN, _old(_DRAIN), alias_of="/admin/endpoints/{name:path}/drain"),
    ApiRoute("/admin/backends/{name:path}/undrain", ("POST",), admin.undrain, "post_admin_backends_name_undrain",
             Access.ADMIN, _old(_UNDRAIN), alias_of="/admin/endpoints/{name:path}/undrain"),
])
