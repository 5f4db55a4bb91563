"""The content hash of a voice's reference files, so a reference edited in place is a new voice to caches.

A voice's parameters name its reference by path; editing the file keeps the path, and a cache keyed
on the parameters alone would keep serving audio made with the old reference. The response cache
adds these hashes to its key. Only files this host can read count (``ref_audio_file``, and
``spk_audio_path`` where the router sees the same path as the nodes: a shared voice directory, a
local worker's files); a path only a node has is left out. Each file is hashed once per version (its
size and modification time), so a lookup costs one ``stat`` per reference.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping

#: voice parameters that name a reference file
REFERENCE_KEYS = ("ref_audio_file", "spk_audio_path")
#: files larger than this are not hashed (a reference is at most a few MB; this is not one)
MAX_HASHED_BYTES = 64 * 1024 * 1024
#: hashes remembered (path and version -> hash)
MAX_ENTRIES = 4096

_cache: OrderedDict[tuple[str, int, int], str] = OrderedDict()
_lock = threading.Lock()


def file_digest(path: str) -> str | None:
    """The SHA-256 of the file at ``path``, None when this host cannot read it as a regular file."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not os.path.isfile(path) or st.st_size > MAX_HASHED_BYTES:
        return None
    key = (path, st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    try:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None
    with _lock:
        _cache[key] = digest
        while len(_cache) > MAX_ENTRIES:
            _cache.popitem(last=False)
    return digest


def reference_digests(params: Mapping[str, object]) -> dict[str, str]:
    """``{key: sha256}`` for each reference file in ``params`` that this host can read."""
    out = {}
    for key in REFERENCE_KEYS:
        path = params.get(key)
        if isinstance(path, str) and os.path.isabs(path):
            digest = file_digest(path)
            if digest is not None:
                out[key] = digest
    return out
