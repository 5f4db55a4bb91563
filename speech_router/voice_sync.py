"""Uploaded voices onto vllm-omni nodes (``voice_store.vllm_omni: upload``), and kept there.

vllm-omni keeps an uploaded voice in one server process: a node that joins later, or restarts on a
fresh disk, does not have it. So the router uploads each stored voice to every node that takes
uploads (``AcceptsVoices``: the vllm-omni backend), under a name made from its content hash
(``voices.params.node_voice_name``), and checks them again:

- when an upload arrives through the API (``push``: every node in rotation, before the API answers);
- when a node turns healthy for the first time or after being down (a node that joins by a reload,
  or comes back from a restart): ``health_changed``;
- every ``sync_interval`` seconds, every node (a restart between two health checks, an upload made
  through another replica, a voice deleted elsewhere).

A sync lists the node's voices, uploads what it lacks and deletes router-made voices that no stored
voice uses any more. Failures are logged and counted (``speech_router_voice_node_uploads_total``);
the next sync tries again. In ``inline`` mode (the default) nothing is uploaded: every request
carries its reference as a ``data:`` URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, runtime_checkable

from .config.models import Settings
from .metrics import Metrics
from .router.endpoint import Endpoint
from .router.events import RouterListener
from .voices.params import is_router_voice, node_voice_name
from .voices.store import VoiceRecord, store_for

log = logging.getLogger(__name__)

#: seconds one node may take for one voice operation pushed by the API before the API answers without it
PUSH_TIMEOUT_S = 30.0


@runtime_checkable
class AcceptsVoices(Protocol):
    """A backend whose node keeps uploaded voices (``VllmOmniBackend``)."""

    async def upload_voice(self, name: str, audio: bytes, *, consent: str, filename: str = ...,
                           content_type: str = ..., ref_text: str | None = ...,
                           description: str | None = ...) -> dict[str, Any]: ...

    async def list_voices(self) -> dict[str, Any]: ...

    async def delete_voice(self, name: str) -> bool: ...


class VoiceDistributor(RouterListener):
    """Keeps every vllm-omni node's uploaded voices in step with the store (upload mode only)."""

    def __init__(self, settings: Callable[[], Settings], endpoints: Callable[[], list[Endpoint]],
                 metrics: Metrics) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.metrics = metrics
        #: node-side voice names each endpoint is known to have (by endpoint name)
        self.have: dict[str, set[str]] = {}
        self._down: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"VoiceDistributor(active={self.active}, nodes={len(self.have)})"

    @property
    def active(self) -> bool:
        config = self.settings().voice_store
        return config.enabled and config.vllm_omni == "upload"

    def nodes(self) -> list[Endpoint]:
        """Endpoints whose nodes keep uploaded voices."""
        return [ep for ep in self.endpoints() if isinstance(ep.backend, AcceptsVoices)]

    def has(self, ep: Endpoint, record: VoiceRecord) -> bool:
        return node_voice_name(record.sha256) in self.have.get(ep.name, set())

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """The periodic sync (it does nothing while the store is in inline mode; a reload may change that)."""
        self._loop = asyncio.create_task(self._every_interval(), name="voice-sync")

    async def aclose(self) -> None:
        tasks = [*self._tasks, *([self._loop] if self._loop else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.settings().voice_store.sync_interval)
            if self.active:
                await asyncio.gather(*(self.sync(ep) for ep in self.nodes() if ep.available))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- events ---------------------------------------------------------------------------------------------

    def health_changed(self, endpoint: Endpoint) -> None:
        if not isinstance(endpoint.backend, AcceptsVoices):
            return
        if not endpoint.available:
            self._down.add(endpoint.name)
            self.have.pop(endpoint.name, None)  # it may come back without them
        elif endpoint.healthy and (endpoint.name in self._down or endpoint.name not in self.have):
            self._down.discard(endpoint.name)
            if self.active:
                self._spawn(self.sync(endpoint))

    def endpoint_closed(self, endpoint: Endpoint, *, gone: bool) -> None:
        if gone:
            self.have.pop(endpoint.name, None)
            self._down.discard(endpoint.name)
            self._locks.pop(endpoint.name, None)

    # -- work -----------------------------------------------------------------------------------------------

    async def sync(self, ep: Endpoint) -> None:
        """Make ``ep``'s node hold exactly the stored voices among its router-made ones."""
        backend = ep.backend
        assert isinstance(backend, AcceptsVoices)
        store = store_for(self.settings().voice_store.directory)
        async with self._locks.setdefault(ep.name, asyncio.Lock()):
            have = self.have.setdefault(ep.name, set())  # known from now on: a failure waits for the next sync
            try:
                listing = await backend.list_voices()
            except Exception as exc:  # noqa: BLE001 - a node that cannot list is tried at the next sync
                self._failed(ep, "list the voices of", exc)
                return
            present = _uploaded_names(listing)
            wanted = {node_voice_name(r.sha256): r for r in store.all()}
            have.clear()
            have.update(present & set(wanted))
            for name, record in wanted.items():
                if name not in present and await self._upload(ep, backend, store.read_audio, record):
                    have.add(name)
            for name in sorted(present - set(wanted)):
                if is_router_voice(name):
                    await self._delete(ep, backend, name)

    async def push(self, record: VoiceRecord) -> None:
        """Upload a new voice to every node in rotation now (the API answers once they have it, or tried)."""
        if not self.active:
            return
        read = store_for(self.settings().voice_store.directory).read_audio
        name = node_voice_name(record.sha256)

        async def upload(ep: Endpoint, backend: AcceptsVoices) -> None:
            if await self._upload(ep, backend, read, record):
                self.have.setdefault(ep.name, set()).add(name)

        await self._each([ep for ep in self.nodes() if ep.available and not ep.draining], upload)

    async def remove(self, sha256: str) -> None:
        """Delete a reference no stored voice uses any more from every node that has it."""
        if not self.active:
            return
        name = node_voice_name(sha256)

        async def delete(ep: Endpoint, backend: AcceptsVoices) -> None:
            await self._delete(ep, backend, name)

        await self._each([ep for ep in self.nodes() if name in self.have.get(ep.name, set())], delete)

    async def _each(self, targets: list[Endpoint],
                    work: Callable[[Endpoint, AcceptsVoices], Coroutine[Any, Any, None]]) -> None:
        """``work`` on every target at once, one operation per node at a time, each within ``PUSH_TIMEOUT_S``."""

        async def one(ep: Endpoint) -> None:
            backend = ep.backend
            assert isinstance(backend, AcceptsVoices)
            async with self._locks.setdefault(ep.name, asyncio.Lock()):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PUSH_TIMEOUT_S):
                        await work(ep, backend)

        await asyncio.gather(*(one(ep) for ep in targets))

    async def _upload(self, ep: Endpoint, backend: AcceptsVoices, read: Callable[[str], bytes],
                      record: VoiceRecord) -> bool:
        name = node_voice_name(record.sha256)
        try:
            audio = await asyncio.to_thread(read, record.sha256)
            await backend.upload_voice(name, audio, consent=record.consent, filename=f"{name}.wav",
                                       content_type="audio/wav", ref_text=record.ref_text,
                                       description=record.description or None)
        except Exception as exc:  # noqa: BLE001 - counted and logged; the next sync tries again
            self._failed(ep, f"upload voice {record.name!r} to", exc)
            return False
        self.metrics.voice_node_uploads.labels(ep.pool, ep.name, "uploaded").inc()
        return True

    async def _delete(self, ep: Endpoint, backend: AcceptsVoices, name: str) -> None:
        try:
            await backend.delete_voice(name)
        except Exception as exc:  # noqa: BLE001
            self._failed(ep, f"delete voice {name!r} from", exc)
            return
        self.have.get(ep.name, set()).discard(name)
        self.metrics.voice_node_uploads.labels(ep.pool, ep.name, "deleted").inc()

    def _failed(self, ep: Endpoint, what: str, exc: Exception) -> None:
        self.metrics.voice_node_uploads.labels(ep.pool, ep.name, "failed").inc()
        reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        log.warning("could not %s endpoint %s in pool %s: %s (tried again at the next sync)", what, ep.name, ep.pool,
                    reason)


def _uploaded_names(listing: dict[str, Any]) -> set[str]:
    """Lower-cased names of a node's uploaded voices (vllm-omni's names are case-insensitive)."""
    names = set()
    for voice in listing.get("uploaded_voices") or []:
        if isinstance(voice, dict) and isinstance(voice.get("name"), str):
            names.add(voice["name"].lower())
    return names
