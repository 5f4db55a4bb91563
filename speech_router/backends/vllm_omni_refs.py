"""Speaker references for vllm-omni nodes: where a voice's reference audio comes from.

A voice names its reference in one of these keys (first match wins):

- ``ref_audio_file``: a file **on the router's host**, sent inline as a ``data:`` URL. It is read,
  checked (decodable, 1-30 s, at most 10 MiB, as vllm-omni requires) and cached as base64 once, at
  start-up (the ``startup`` hook) or on first use, and read again when its size or modification time
  changes (an edited file is picked up without a restart or reload).
- ``ref_audio``: a URL the node reads itself: ``http(s)://`` (the node fetches it), ``data:``, or
  ``file:///abs`` (a file on the node, under its ``--allowed-local-media-path``).
- ``uploaded_voice``: the name of a voice uploaded to the nodes (``POST /v1/audio/voices``).
- ``spk_audio_path`` (the index-tts-vllm key): a path on the node, sent as ``file://`` when the pool
  sets ``allowed_media_path`` and the path lies under it (a shared voice directory).

A reference that cannot be used is the operator's problem, not the client's nor the node's:
``ReferenceUnavailable`` (503, never counted against an endpoint; the next pool of the route is
tried). Its message names the voice, never the file path.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import posixpath
from dataclasses import dataclass

from ..errors import Unavailable
from ..voices.audio import MAX_REFERENCE_FILE_BYTES, check_reference_file

log = logging.getLogger(__name__)

MAX_REFERENCE_BYTES = MAX_REFERENCE_FILE_BYTES
URL_SCHEMES = ("http://", "https://", "data:", "file://")
_MIME = {"WAV": "audio/wav", "FLAC": "audio/flac", "OGG": "audio/ogg", "MP3": "audio/mpeg"}


class ReferenceUnavailable(Unavailable):
    """A configured voice's reference audio cannot be sent to vllm-omni nodes (see the router's log)."""

    code = "voice_reference_unavailable"


@dataclass(frozen=True)
class _Cached:
    stamp: tuple[int, int]  # (size, mtime_ns) when read
    url: str


class ReferenceFiles:
    """Router-host reference files as ``data:`` URLs, read once per version of the file."""

    def __init__(self, max_bytes: int = MAX_REFERENCE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"ReferenceFiles(cached={len(self._cache)})"

    async def data_url(self, path: str) -> str:
        """The file as a ``data:`` URL; ``ValueError`` saying why it cannot be used."""
        path = os.path.abspath(os.path.expanduser(path))
        cached = self._cache.get(path)
        if cached is not None and cached.stamp == _stamp(path):
            return cached.url
        lock = self._locks.setdefault(path, asyncio.Lock())
        async with lock:  # many requests for a changed file read it once
            cached = self._cache.get(path)
            stamp = _stamp(path)
            if cached is None or cached.stamp != stamp:
                cached = _Cached(stamp, await asyncio.to_thread(self._read, path))
                self._cache[path] = cached
            return cached.url

    def _read(self, path: str) -> str:
        kind = check_reference_file(path, self.max_bytes)  # the same check check-config runs
        try:
            with open(path, "rb") as f:
                data = f.read(self.max_bytes + 1)
        except OSError as exc:
            raise ValueError(exc.strerror or repr(exc)) from None
        mime = _MIME.get(kind, "application/octet-stream")
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


#: one cache for every vllm-omni endpoint of the process: a voice is read once, not once per node
REFERENCE_FILES = ReferenceFiles()


async def reference_url(voice: str, params: dict[str, object], allowed_media_path: str | None,
                        files: ReferenceFiles = REFERENCE_FILES) -> str | None:
    """The ``ref_audio`` URL of a voice's parameters, None when it names none a node can read."""
    path = params.get("ref_audio_file")
    if isinstance(path, str) and path:
        try:
            return await files.data_url(path)
        except ValueError as exc:
            log.warning("voice %r: reference file %s cannot be used: %s", voice, path, exc)
            raise ReferenceUnavailable(f"voice {voice!r} cannot be used now: its reference audio on the router "
                                       "is not usable (see the router's log)") from None
    url = params.get("ref_audio")
    if isinstance(url, str) and url:
        if not url.startswith(URL_SCHEMES):
            log.warning("voice %r: ref_audio %r is not a data:, http(s):// or file:// URL", voice, url[:80])
            raise ReferenceUnavailable(f"voice {voice!r} is misconfigured for vllm-omni: ref_audio must be a "
                                       "data:, http(s):// or file:// URL")
        return url
    return node_file_url(params.get("spk_audio_path"), allowed_media_path)


def node_file_url(path: object, allowed_media_path: str | None) -> str | None:
    """``file://path`` for a path on the node under its allowed media path, else None."""
    if not isinstance(path, str) or not path.startswith("/") or not allowed_media_path:
        return None
    normal, root = posixpath.normpath(path), posixpath.normpath(allowed_media_path)
    if root != "/" and not normal.startswith(root.rstrip("/") + "/"):
        return None
    return "file://" + normal
