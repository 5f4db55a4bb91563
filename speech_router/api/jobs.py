"""The long-form jobs API: submit a book, poll it, fetch its audio, cancel it (``speech_router.jobs`` works them).

A submission is checked as a synthesis request is, item by item (model, voice, format, speed and emotion
against the route, the ``prepare_request`` hook), so a client's mistake that can be known now is a 400
naming the field (``items[3].voice``) before anything is kept. Its texts are then cut into segments, the
unit a job is worked and kept in, and the job is answered 202 with its id and URLs.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..audio.formats import FORMATS
from ..config.models import FanoutConfig, Settings
from ..errors import RequestInvalid
from ..jobs.model import ItemSpec, JobSpec, NewJob
from ..jobs.service import Jobs, estimate_bytes
from ..jobs.view import job_urls
from ..text.segment import split_segments
from ..types import SynthesisRequest
from ..voices.resolve import resolve_voice
from .gate import exchange_of
from .job_content import file_response
from .job_schemas import JobItemRequest, JobRequest
from .plan import Plan, prepare
from .schemas import parse
from .speech import check_model, emotion_from, read_json, shared_voice
from .state import AppState, app_state

MAX_PAGE = 100
DEFAULT_PAGE = 20


def _jobs(request: Request) -> tuple[AppState, Jobs, str]:
    state = app_state(request)
    state.jobs.require()
    return state, state.jobs, exchange_of(request.scope).client or "anonymous"


async def submit(request: Request) -> Response:
    state, jobs, owner = _jobs(request)
    settings, config = state.settings, state.settings.jobs
    body = parse(JobRequest, await read_json(request, config.max_body_bytes))
    check_model(request, settings, body.model)
    items = body.items if body.items is not None else [JobItemRequest(input=body.input or "")]
    if len(items) > config.max_items:
        raise RequestInvalid(f"Invalid 'items': a job has at most {config.max_items} items, got {len(items)}.",
                             param="items", code="array_above_max_length")
    chars = sum(len(item.input) for item in items)
    if chars > config.max_chars:
        raise RequestInvalid(f"Invalid '{'items' if body.items else 'input'}': a job has at most {config.max_chars} "
                             f"characters, got {chars}.", param="items" if body.items else "input",
                             code="string_above_max_length")
    _check_webhook(settings, body.webhook_url)
    specs, texts = [], []
    for i, item in enumerate(items):
        prefix = f"items[{i}]." if body.items is not None else ""
        voice = item.voice if item.voice is not None else body.voice
        emotion = item.emotion if item.emotion is not None else body.emotion
        for name in (voice if isinstance(voice, str) else getattr(voice, "id", None),
                     emotion.audio if emotion is not None else None):
            if name:
                await shared_voice(state, name)  # a voice uploaded through another replica
        try:
            sreq = _item_request(request, state, body, item)
        except RequestInvalid as exc:
            if not prefix:
                raise
            raise RequestInvalid(f"items[{i}]: {exc.message}", param=prefix + (exc.param or "input"),
                                 code=exc.code) from None
        specs.append(ItemSpec(sreq.voice, sreq.voice_params, ItemSpec.emotion_json(sreq.emotion), sreq.speed,
                              sreq.lang))
        texts.append(sreq.text)
    exchange_of(request.scope).chars = chars
    fanout = settings.models[body.model].fanout
    segments, estimate = await asyncio.to_thread(_cut, texts, fanout, body.response_format)
    for i, cut in enumerate(segments):
        if not cut:
            where = f"items[{i}].input" if body.items is not None else "input"
            raise RequestInvalid(f"Invalid '{where}': there is nothing to speak in it.", param=where,
                                 code="empty_input")
    spec = JobSpec(body.response_format, body.sample_rate, len(items), fanout.silence_ms, body.webhook_url,
                   dict(body.metadata))
    record = await jobs.submit(NewJob(owner, body.model, spec, specs, segments, estimate))
    view = await jobs.status(owner, record.id)
    return JSONResponse(view, status_code=202, headers={"location": job_urls(record.id)["self"]})


def _item_request(request: Request, state: AppState, body: JobRequest, item: JobItemRequest) -> SynthesisRequest:
    """One item as the synthesis request its segments will be, checked as ``/v1/audio/speech`` checks one."""
    settings = state.settings
    if not item.input.strip():
        raise RequestInvalid("Invalid 'input': the text is empty.", param="input", code="empty_input")
    voice = item.voice if item.voice is not None else body.voice
    if voice is None:
        raise RequestInvalid("Missing required parameter: 'voice'.", param="voice", code="missing_required_parameter")
    name = voice if isinstance(voice, str) else voice.id
    emotion_spec = item.emotion if item.emotion is not None or item.instructions else body.emotion
    instructions = item.instructions if item.instructions is not None else body.instructions
    sreq = SynthesisRequest(text=item.input, model=body.model, voice=name, voice_params=resolve_voice(settings, name),
                            emotion=emotion_from(settings, emotion_spec, instructions),
                            speed=item.speed if item.speed is not None else body.speed,
                            response_format=body.response_format, lang=item.lang or body.lang,
                            request_id=exchange_of(request.scope).request_id)
    prepare(state, Plan(sreq, body.response_format, body.sample_rate), [], exchange_of(request.scope))
    return sreq


def _cut(texts: list[str], fanout: FanoutConfig, fmt: str) -> tuple[list[list[str]], int]:
    """Each item's segments (as long texts are cut for fan-out), and the bytes the job is expected to keep."""
    segments = [split_segments(text, max_chars=fanout.max_segment_chars, min_chars=fanout.min_segment_chars)
                for text in texts]
    return segments, estimate_bytes(segments, fmt, fanout.silence_ms)


def _check_webhook(settings: Settings, url: str | None) -> None:
    if url is None:
        return
    prefixes = settings.jobs.webhooks.url_prefixes
    if not prefixes:
        raise RequestInvalid("Invalid 'webhook_url': webhooks are off on this router (jobs.webhooks.url_prefixes "
                             "is empty).", param="webhook_url", code="not_configured")
    if not any(url.startswith(prefix) for prefix in prefixes):
        raise RequestInvalid(f"Invalid 'webhook_url': it must start with one of {', '.join(prefixes)}.",
                             param="webhook_url", code="url_not_allowed")


async def status(request: Request) -> Response:
    _, jobs, owner = _jobs(request)
    return JSONResponse(await jobs.status(owner, request.path_params["job_id"]))


async def listing(request: Request) -> Response:
    _, jobs, owner = _jobs(request)
    raw = request.query_params.get("limit", str(DEFAULT_PAGE))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise RequestInvalid(f"Invalid 'limit': give a number from 1 to {MAX_PAGE}, got {raw[:32]!r}.",
                             param="limit")
    return JSONResponse(await jobs.listing(owner, int(raw), request.query_params.get("after")))


async def cancel(request: Request) -> Response:
    _, jobs, owner = _jobs(request)
    return JSONResponse(await jobs.cancel_or_delete(owner, request.path_params["job_id"]))


async def content(request: Request) -> Response:
    _, jobs, owner = _jobs(request)
    job_id = request.path_params["job_id"]
    raw = request.query_params.get("item")
    if raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) < 7):
        raise RequestInvalid(f"Invalid 'item': give an item's index (0, 1, ...), got {raw[:32]!r}.", param="item")
    item = int(raw) if raw is not None else None
    path, record = await jobs.content(owner, job_id, item)
    fmt = FORMATS[record.spec.response_format]
    name = f"{job_id}{'' if item is None else f'-{item}'}.{fmt.extension}"
    response = file_response(request, path, fmt.content_type, f'"{job_id}-{item}-{record.finished}"')
    response.headers["content-disposition"] = f'attachment; filename="{name}"'
    return response
