"""Uploaded voices in the state store (with ``state.url``): replicas need no shared filesystem for them.

The store holds each voice's record (the map ``voices``: name -> the record's JSON) and its reference audio
(``voice-audio:<sha256>``), written under the lease ``voices-lock`` so that two replicas writing at once cannot
leave a record without its audio; ``voices-version`` counts the changes. An upload is answered only once it is
in the store: while the store is down uploads and deletions get 503, and what was answered 200 is never lost.

Each replica mirrors the store into its own ``voice_store.directory`` (the directory store stays what requests
are resolved from, and what vllm-omni inline references and local workers read): at start, every
``state.voices_interval`` seconds when the version moved (uploads and deletions made through other replicas), and
at once when a request names a voice the mirror lacks (``ensure``). index-tts-vllm nodes read references from
their own disk, so for them ``voice_store.directory`` is still the directory the nodes mount.

The first replica to find a store that never held voices copies its directory's voices into it (moving from a
shared directory to a store); afterwards the store is the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TypeVar

from ..config.models import VoiceStoreConfig
from ..state.guard import BULK_TIMEOUT_S, Guard
from ..state.periodic import Periodic
from .store import NAME, VoiceRecord, VoiceStore, store_for

log = logging.getLogger("speech_router.state")
T = TypeVar("T")

NAMES, VERSION, LOCK = "voices", "voices-version", "voices-lock"
#: no version seen yet (a store that never held voices has none: ``None``)
NEVER = b"never"
#: seconds the write lease is held at most (a replica that dies while writing loses it)
LOCK_TTL_S = 30.0
#: tries, and seconds between them, to take the write lease while another replica writes
LOCK_TRIES, LOCK_WAIT_S = 40, 0.05
#: a stored reference larger than this is not read back (normalised WAVs of 30 s at 48 kHz are under 3 MiB)
MIN_AUDIO_BOUND = 4 * 1024 * 1024


class VoicesUnavailable(Exception):
    """The store could not take the change now (down, or busy with another replica's write): the client retries."""


def audio_key(sha256: str) -> str:
    return f"voice-audio:{sha256}"


class SharedVoices:
    """See the module's docstring."""

    def __init__(self, guard: Guard, replica: str, config: Callable[[], VoiceStoreConfig], interval: float) -> None:
        self.guard = guard
        self.replica = replica
        self.config = config
        self.interval = interval
        #: the store's version this replica's copy was last made complete at (``NEVER``: not yet)
        self._version: bytes | None = NEVER
        self._loop = Periodic("state-voices", interval, self.sync, "mirroring the stored voices")

    def __repr__(self) -> str:
        return f"SharedVoices(interval={self.interval:g})"

    @property
    def local(self) -> VoiceStore:
        return store_for(self.config().directory)

    # -- writes (the API) -----------------------------------------------------------------------------------

    async def save(self, record: VoiceRecord, wav: bytes) -> VoiceRecord | None:
        """Put the voice in the store, then in this replica's mirror; returns the record it replaced, if any.
        Raises ``VoicesUnavailable`` when the store cannot take it now."""
        store = self.guard.store

        async def write() -> VoiceRecord | None:
            await store.set(audio_key(record.sha256), wav)
            previous = _record(await store.entry(NAMES, record.key))
            await store.put_entry(NAMES, record.key, _json(record))
            await store.incr(VERSION)
            if previous is not None and previous.sha256 != record.sha256:
                await self._drop_unused(previous.sha256)
            return previous

        previous = await self._locked(write)
        await asyncio.to_thread(self.local.put, record, wav)
        return previous

    async def remove(self, name: str) -> VoiceRecord | None:
        """Delete the voice from the store, then from the mirror; None when the store has no such voice."""
        store = self.guard.store
        key = name.lower()

        async def delete() -> VoiceRecord | None:
            record = _record(await store.entry(NAMES, key))
            if record is not None:
                await store.drop_entry(NAMES, key)
                await store.incr(VERSION)
                await self._drop_unused(record.sha256)
            return record

        record = await self._locked(delete)
        await asyncio.to_thread(self.local.delete, name)
        return record

    async def _drop_unused(self, sha256: str) -> None:
        records = [_record(raw) for raw in (await self.guard.store.entries(NAMES)).values()]
        if all(r is None or r.sha256 != sha256 for r in records):
            await self.guard.store.delete(audio_key(sha256))

    async def _locked(self, work: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``work`` under the write lease, in one bounded call; ``VoicesUnavailable`` when it could not run."""
        store = self.guard.store
        for _ in range(LOCK_TRIES):
            taken = await self.guard.call(lambda: store.acquire(LOCK, self.replica, LOCK_TTL_S), None)
            if taken is None:
                raise VoicesUnavailable("the state store cannot be reached")
            if taken:
                break
            await asyncio.sleep(LOCK_WAIT_S)
        else:
            raise VoicesUnavailable("another replica is writing voices")
        try:
            done = await self.guard.call(work, None, timeout=BULK_TIMEOUT_S)
        finally:
            await self.guard.call(lambda: store.release(LOCK, self.replica), None)
        if not self.guard.up:
            raise VoicesUnavailable("the state store failed while writing")
        return done

    # -- the mirror -----------------------------------------------------------------------------------------

    async def ensure(self, name: str) -> None:
        """A voice a request names that the mirror lacks: fetch it now if the store has it."""
        if not NAME.fullmatch(name) or self.local.get(name) is not None:
            return
        raw = await self.guard.call(lambda: self.guard.store.entry(NAMES, name.lower()), None)
        record = _record(raw)
        if record is not None:
            await self._fetch(record)

    async def _fetch(self, record: VoiceRecord) -> bool:
        raw = await self.guard.call(lambda: self.guard.store.get(audio_key(record.sha256)), None,
                                    timeout=BULK_TIMEOUT_S)
        bound = max(self.config().max_bytes, MIN_AUDIO_BOUND)
        if raw is None or len(raw) > bound or hashlib.sha256(raw).hexdigest() != record.sha256:
            return False
        try:
            await asyncio.to_thread(self.local.put, record, raw)
        except OSError as exc:  # this replica's copy cannot be written: it lacks the voice, requests go on
            log.error("cannot copy voice %r from the state store into %s: %s", record.name, self.local.root, exc)
            return False
        return True

    async def sync(self) -> None:
        """Make the mirror hold exactly the store's voices, when the store's version moved."""
        store = self.guard.store
        version: bytes | None = await self.guard.call(lambda: store.get(VERSION), b"")
        if version == b"" or version == self._version:
            return
        if version is None:  # a store that never held voices: this directory's become the fleet's
            await self._import()
            return
        entries = await self.guard.call(lambda: store.entries(NAMES), None)
        if entries is None:
            return
        stored = {r.key: r for raw in entries.values() if (r := _record(raw)) is not None}
        local = {r.key: r for r in self.local.all()}
        complete = True
        for key, record in stored.items():
            if key not in local or local[key] != record:
                complete = await self._fetch(record) and complete
        for key in local.keys() - stored.keys():
            await asyncio.to_thread(self.local.delete, key)
        if complete:
            self._version = version

    async def _import(self) -> None:
        local = self.local.all()
        store = self.guard.store

        async def copy() -> None:
            if await store.get(VERSION) is not None:
                return  # another replica was first
            for record in local:
                await store.set(audio_key(record.sha256), await asyncio.to_thread(self.local.read_audio,
                                                                                   record.sha256))
                await store.put_entry(NAMES, record.key, _json(record))
            await store.incr(VERSION)

        with contextlib.suppress(VoicesUnavailable, OSError):
            await self._locked(copy)
            if local:
                log.info("copied %d uploaded voice(s) from %s into the state store", len(local), self.local.root)

    def start(self) -> None:
        self._loop.start()

    async def aclose(self) -> None:
        await self._loop.aclose()


def _json(record: VoiceRecord) -> bytes:
    return json.dumps(asdict(record), separators=(",", ":")).encode()


def _record(raw: bytes | None) -> VoiceRecord | None:
    if raw is None:
        return None
    try:
        return VoiceRecord.from_json(json.loads(raw))
    except (ValueError, RecursionError):
        return None


