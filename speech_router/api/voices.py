"""``/v1/audio/voices``: list voices, upload one for the whole fleet, delete one (vllm-omni's voice API shape).

- ``GET``: the voices of the config and the uploaded ones, with the models that speak each and, for
  uploaded ones, the endpoints that can speak it now;
- ``POST`` (multipart: ``audio_sample``, ``name``, ``consent``, optional ``description`` (or
  vllm-omni's ``speaker_description``) and ``ref_text``): checked (``voices.audio``), stored by
  content hash (``voices.store``), pushed to vllm-omni nodes in upload mode (``speech_router.voice_sync``);
  a re-upload under the same name replaces the voice, as on vllm-omni;
- ``DELETE /v1/audio/voices/{name}``.

Writing needs the admin key or a client key with the ``voices`` scope (``auth``). Names share one
namespace with the config's voices, which win: an upload may not take a configured name. Errors are
OpenAI's shape and name the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..config.models import Settings
from ..errors import RequestInvalid, Unavailable
from ..router.dispatch import Router
from ..voice_sync import AcceptsVoices, VoiceDistributor
from ..voices.audio import FIELD, normalize
from ..voices.form import read_upload
from ..voices.params import node_path, voice_params
from ..voices.shared import SharedVoices, VoicesUnavailable
from ..voices.store import MAX_VOICES, NAME, VoiceRecord, VoiceStore, store_for

log = logging.getLogger(__name__)

#: uploads processed at once per process (each holds its file and decodes it); more get 429
MAX_CONCURRENT_UPLOADS = 2
MAX_TEXT_CHARS = 1000


class VoiceCard(BaseModel):
    id: str
    object: Literal["voice"]
    description: str
    models: list[str] = Field(description="models whose backends can speak this voice")
    source: Literal["config", "uploaded"] = Field("config", description="the YAML's voices, or uploaded ones")
    sha256: str | None = Field(None, description="uploaded: the SHA-256 of the stored reference (mono WAV)")
    seconds: float | None = Field(None, description="uploaded: length of the reference")
    created_at: int | None = Field(None, description="uploaded: when (Unix time)")
    endpoints: list[str] | None = Field(None, description="uploaded: endpoints that can speak it now")


class VoiceList(BaseModel):
    object: Literal["list"]
    data: list[VoiceCard]
    voice_dir: str | None = Field(None, description="other names resolve to files in this directory on the nodes")


class VoiceUploaded(BaseModel):
    success: bool
    voice: VoiceCard


class VoiceDeleted(BaseModel):
    success: bool
    message: str


class VoiceNotFound(RequestInvalid):
    status_code = 404


class UploadsOff(RequestInvalid):
    status_code = 403


class UploadsBusy(Unavailable):
    status_code = 429
    code = "uploads_busy"


class StoreUnavailable(Unavailable):
    code = "voice_store_unavailable"


def _distributor(request: Request) -> VoiceDistributor:
    distributor: VoiceDistributor = request.app.state.voice_distributor
    return distributor


def _models(settings: Settings, router: Router, params: dict[str, Any]) -> list[str]:
    return [m for m in settings.models
            if any(p.endpoints and p.endpoints[0].backend.supports_voice(params) for p in router.route(m))]


def uploaded_card(settings: Settings, router: Router, distributor: VoiceDistributor, record: VoiceRecord) -> VoiceCard:
    """An uploaded voice as listed: where it can be spoken now."""
    params = voice_params(record, settings.voice_store)
    endpoints = []
    for pool in router.pools.values():
        for ep in pool.endpoints:
            if not ep.backend.supports_voice(params):
                continue
            if distributor.active and isinstance(ep.backend, AcceptsVoices) and not distributor.has(ep, record) \
                    and not ep.backend.supports_voice({"spk_audio_path": node_path(record, settings.voice_store)}):
                continue  # upload mode: a node that does not hold it yet (and cannot read the shared directory)
            endpoints.append(ep.name)
    return VoiceCard(id=record.name, object="voice", description=record.description,
                     models=_models(settings, router, params), source="uploaded", sha256=record.sha256,
                     seconds=record.seconds, created_at=record.created_at, endpoints=endpoints)


async def list_voices(request: Request) -> JSONResponse:
    """Configured voices, then uploaded ones (an uploaded name a configured voice took is not listed)."""
    state = request.app.state
    settings: Settings = state.settings
    router: Router = state.router
    cards = [VoiceCard(id=name, object="voice", description=voice.description,
                       models=_models(settings, router, voice.params()))
             for name, voice in settings.voices.items()]
    if settings.voice_store.enabled:
        configured = {name.lower() for name in settings.voices}
        records = await asyncio.to_thread(store_for(settings.voice_store.directory).all)
        cards += [uploaded_card(settings, router, _distributor(request), r) for r in records
                  if r.key not in configured]
    listing = VoiceList(object="list", data=cards, voice_dir=settings.voice_dir.path if settings.voice_dir else None)
    return JSONResponse(listing.model_dump(exclude_none=True))


@contextlib.asynccontextmanager
async def _upload_slot(request: Request) -> AsyncIterator[None]:
    state = request.app.state
    slots: asyncio.Semaphore | None = getattr(state, "voice_upload_slots", None)
    if slots is None:
        slots = state.voice_upload_slots = asyncio.Semaphore(MAX_CONCURRENT_UPLOADS)
    if slots.locked():
        raise UploadsBusy(f"{MAX_CONCURRENT_UPLOADS} voice uploads are being processed; try again shortly.",
                          retry_after=1.0)
    async with slots:
        yield


def _text(fields: dict[str, str], name: str, *, required: bool = False) -> str:
    value = fields.get(name, "").strip()
    if required and not value:
        raise RequestInvalid(f"'{name}' is required.", param=name, code="missing_field")
    if len(value) > MAX_TEXT_CHARS:
        raise RequestInvalid(f"Invalid '{name}': at most {MAX_TEXT_CHARS} characters.", param=name,
                             code="string_above_max_length")
    return value


def _check_name(settings: Settings, name: str) -> None:
    if not NAME.fullmatch(name):
        raise RequestInvalid(f"Invalid 'name' {name[:80]!r}: use 1-64 letters, digits, - and _, starting with a "
                             "letter or digit.", param="name", code="invalid_name")
    if any(name.lower() == configured.lower() for configured in settings.voices):
        raise RequestInvalid(f"Invalid 'name': {name!r} is a voice of the router's configuration; choose another "
                             "name.", param="name", code="voice_configured")


async def upload_voice(request: Request) -> JSONResponse:
    """``POST /v1/audio/voices``: check, store by content hash, push to the nodes that need it."""
    state = request.app.state
    settings: Settings = state.settings
    config = settings.voice_store
    if not config.enabled:
        raise UploadsOff("Voice uploads are off (voice_store.enabled is false).", param=None, code="uploads_disabled")
    async with _upload_slot(request):
        form = await read_upload(request, file_field=FIELD, max_bytes=config.max_bytes)
        name = _text(form.fields, "name", required=True)
        _check_name(settings, name)
        consent = _text(form.fields, "consent", required=True)
        description = _text(form.fields, "description") or _text(form.fields, "speaker_description")
        ref_text = _text(form.fields, "ref_text") or None
        if form.file_field != FIELD:
            raise RequestInvalid(f"'{FIELD}' is required: the reference audio as a file part.", param=FIELD,
                                 code="missing_field")
        reference = await asyncio.to_thread(normalize, form.data)
    store = store_for(config.directory)
    record = VoiceRecord(name, hashlib.sha256(reference.wav).hexdigest(), reference.seconds, reference.sample_rate,
                         consent, int(time.time()), description, ref_text)
    previous = await _store(store, record, reference.wav, state.shared.voices if state.shared is not None else None)
    distributor = _distributor(request)
    await distributor.push(record)
    if previous is not None and previous.sha256 != record.sha256:
        await _forget_unused(store, distributor, previous.sha256)
    log.info("voice %r uploaded (%.1f s, sha256 %s) by %s", name, record.seconds, record.sha256[:12],
             request.scope.get("state", {}).get("client") or "anonymous")
    card = uploaded_card(settings, state.router, distributor, record)
    return JSONResponse(VoiceUploaded(success=True, voice=card).model_dump(exclude_none=True))


async def _store(store: VoiceStore, record: VoiceRecord, wav: bytes,
                 shared: SharedVoices | None = None) -> VoiceRecord | None:
    """Keep the voice: in the state store first when there is one (answered only once it is there), else in the
    directory."""
    if store.get(record.name) is None and len(store.all()) >= MAX_VOICES:
        raise RequestInvalid(f"The voice store holds {MAX_VOICES} voices; delete some first.", param="name",
                             code="too_many_voices")
    try:
        if shared is not None:
            return await shared.save(record, wav)
        return await asyncio.to_thread(store.put, record, wav)
    except VoicesUnavailable as exc:
        log.warning("cannot write voice %r to the state store: %s", record.name, exc)
        raise StoreUnavailable("The voice store cannot be written now; try again shortly.", retry_after=2.0) from None
    except OSError as exc:
        log.error("cannot write voice %r to the voice store %s: %s", record.name, store.root, exc)
        raise StoreUnavailable("The voice store cannot be written now (see the router's log).",
                               retry_after=10.0) from None


async def _forget_unused(store: VoiceStore, distributor: VoiceDistributor, sha256: str) -> None:
    """A reference no voice uses any more leaves the nodes it was uploaded to."""
    if all(r.sha256 != sha256 for r in store.all()):
        await distributor.remove(sha256)


async def delete_voice(request: Request) -> JSONResponse:
    """``DELETE /v1/audio/voices/{name}``: an uploaded voice only (configured ones live in the config)."""
    state = request.app.state
    settings: Settings = state.settings
    name = request.path_params["name"]
    if any(name.lower() == configured.lower() for configured in settings.voices):
        raise RequestInvalid(f"Voice {name!r} comes from the router's configuration; remove it there.",
                             param="name", code="voice_configured")
    store = store_for(settings.voice_store.directory)
    shared = state.shared.voices if state.shared is not None else None
    try:
        record = await shared.remove(name) if shared is not None else await asyncio.to_thread(store.delete, name)
    except VoicesUnavailable as exc:
        log.warning("cannot delete voice %r from the state store: %s", name, exc)
        raise StoreUnavailable("The voice store cannot be written now; try again shortly.", retry_after=2.0) from None
    except OSError as exc:
        log.error("cannot delete voice %r from the voice store %s: %s", name, store.root, exc)
        raise StoreUnavailable("The voice store cannot be written now (see the router's log).",
                               retry_after=10.0) from None
    if record is None:
        raise VoiceNotFound(f"Voice {name[:80]!r} not found.", param="name", code="voice_not_found")
    await _forget_unused(store, _distributor(request), record.sha256)
    log.info("voice %r deleted by %s", record.name, request.scope.get("state", {}).get("client") or "anonymous")
    return JSONResponse(VoiceDeleted(success=True, message=f"Voice '{record.name}' deleted.").model_dump())
