"""The disk tier: one file per key under a directory, kept within a byte budget, least recently used first.

Layout: ``<directory>/<key[:2]>/<key>``. A file is a magic line, a 4-byte header length, a JSON
header (labels, data size, CRC-32) and the audio. Writes go to a temporary file in the same
directory and are renamed into place, so a reader sees a whole old file or a whole new one. A file
that fails any check (truncated, wrong key, bad CRC) is a miss and is deleted.

Sizes and recency live in memory; at startup they are rebuilt by scanning the directory, with file
mtimes (touched on every hit) as the recency. One process should own a directory: two would each
keep their own accounting of it.

Every method blocks on file I/O: call them from a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import tempfile
import threading
import time
import zlib
from collections import OrderedDict
from pathlib import Path

from .entry import CachedAudio

log = logging.getLogger(__name__)

MAGIC = b"speech-router-cache 1\n"
_HEADER_LEN = struct.Struct(">I")
_MAX_HEADER = 64 * 1024
TEMP_PREFIX = ".tmp-"
#: temporary files older than this at startup were left by a crash (younger ones may still be written)
STALE_TEMP_S = 600.0
KEY_RE = re.compile(r"[0-9a-f]{16,128}\Z")


def encode(key: str, entry: CachedAudio) -> bytes:
    header = json.dumps({
        "key": key, "content_type": entry.content_type, "format": entry.format, "sample_rate": entry.sample_rate,
        "created": entry.created, "seconds": entry.seconds, "size": len(entry.data),
        "crc32": zlib.crc32(entry.data),
    }, separators=(",", ":")).encode()
    return b"".join((MAGIC, _HEADER_LEN.pack(len(header)), header, entry.data))


def decode(key: str, raw: bytes) -> CachedAudio | None:
    """The entry in ``raw``, or None when the file is not a whole, intact entry for ``key``."""
    start = len(MAGIC) + _HEADER_LEN.size
    if len(raw) < start or not raw.startswith(MAGIC):
        return None
    (header_len,) = _HEADER_LEN.unpack_from(raw, len(MAGIC))
    if header_len > _MAX_HEADER or len(raw) < start + header_len:
        return None
    try:
        header = json.loads(raw[start:start + header_len])
        data = raw[start + header_len:]
        if header["key"] != key or header["size"] != len(data) or header["crc32"] != zlib.crc32(data):
            return None
        return CachedAudio(data=data, content_type=header["content_type"], format=header["format"],
                           sample_rate=header["sample_rate"], created=float(header["created"]),
                           seconds=float(header.get("seconds", 0.0)))
    except (ValueError, KeyError, TypeError):
        return None


def _unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class DiskTier:
    """Files under ``directory``; the index (key -> file size, in recency order) is built on first use."""

    def __init__(self, directory: str | Path, budget: int, max_entry: int) -> None:
        self.directory = Path(directory)
        self.budget = budget
        self.max_entry = max_entry
        self._index: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self._loaded = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DiskTier(directory={str(self.directory)!r}, budget={self.budget}, max_entry={self.max_entry})"

    def __len__(self) -> int:
        return len(self._index)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def loaded(self) -> bool:
        return self._loaded

    def might_have(self, key: str) -> bool:
        """False when ``key`` is surely absent: lets a miss skip the thread hop. Does no I/O."""
        return not self._loaded or key in self._index

    def path_for(self, key: str) -> Path:
        if not KEY_RE.match(key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.directory / key[:2] / key

    def load(self) -> int:
        """Scan the directory once (later calls return at once); returns entries evicted to fit the budget."""
        with self._lock:
            if self._loaded:
                return 0
            self.directory.mkdir(parents=True, exist_ok=True)
            found: list[tuple[int, str, int]] = []
            stale_before = time.time() - STALE_TEMP_S
            for shard in os.scandir(self.directory):
                if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                    continue
                for item in os.scandir(shard.path):
                    if not item.is_file(follow_symlinks=False):
                        continue
                    info = item.stat(follow_symlinks=False)
                    if item.name.startswith(TEMP_PREFIX):
                        if info.st_mtime < stale_before:
                            _unlink(item.path)
                    elif KEY_RE.match(item.name) and item.name[:2] == shard.name:
                        found.append((info.st_mtime_ns, item.name, info.st_size))
            for _, key, size in sorted(found):
                self._index[key] = size
                self._bytes += size
            self._loaded = True
            return self._evict_locked()

    def get(self, key: str) -> CachedAudio | None:
        self.load()
        if key not in self._index:
            return None
        path = self.path_for(key)
        try:
            with open(path, "rb") as f:
                seen = os.fstat(f.fileno())
                raw = f.read()
        except FileNotFoundError:
            self._forget(key)
            return None
        entry = decode(key, raw)
        with self._lock:
            if entry is None:
                self._discard_locked(key, path, seen)
                return None
            if key in self._index:
                self._index.move_to_end(key)
        try:
            os.utime(path)  # recency survives a restart
        except OSError:
            pass
        return entry

    def put(self, key: str, entry: CachedAudio) -> tuple[bool, int]:
        """Write ``entry``; returns (stored, entries evicted). Larger than the limits: not stored."""
        if len(entry.data) > self.max_entry:
            return False, 0
        blob = encode(key, entry)
        if len(blob) > self.budget:
            return False, 0
        evicted = self.load()
        path = self.path_for(key)
        path.parent.mkdir(exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            with self._lock:
                old = self._index.get(key, 0)
                evicted += self._evict_locked(need=len(blob) - old, keep=key)
                if self._bytes - old + len(blob) > self.budget:  # files that could not be deleted hold the room
                    _unlink(temp)
                    return False, evicted
                os.replace(temp, path)
                self._bytes += len(blob) - self._index.pop(key, 0)
                self._index[key] = len(blob)
                return True, evicted
        except BaseException:
            _unlink(temp)
            raise

    def resize(self, budget: int, max_entry: int) -> int:
        """Apply new limits; returns entries evicted (a smaller budget deletes the least recently used files)."""
        with self._lock:
            self.budget, self.max_entry = budget, max_entry
            return self._evict_locked() if self._loaded else 0

    def _forget(self, key: str) -> None:
        with self._lock:
            self._bytes -= self._index.pop(key, 0)

    def _discard_locked(self, key: str, path: Path, seen: os.stat_result) -> None:
        """Delete a bad file, unless a writer has replaced it since it was read."""
        try:
            now = os.stat(path)
        except FileNotFoundError:
            self._bytes -= self._index.pop(key, 0)
            return
        if (now.st_ino, now.st_dev, now.st_mtime_ns) == (seen.st_ino, seen.st_dev, seen.st_mtime_ns):
            _unlink(path)
            self._bytes -= self._index.pop(key, 0)

    def _evict_locked(self, need: int = 0, keep: str | None = None) -> int:
        """Delete least recently used files until ``need`` more bytes fit the budget. A file that cannot be
        deleted stays counted (it is still on disk) and stops the eviction: then nothing new is written."""
        evicted = 0
        for key in list(self._index):
            if self._bytes + need <= self.budget:
                break
            if key == keep:  # the entry being replaced: its bytes are accounted for by the caller
                continue
            try:
                _unlink(self.path_for(key))
            except OSError as exc:
                log.warning("cache directory %s: cannot delete an entry to stay within the %d byte budget: %s",
                            self.directory, self.budget, exc.strerror or exc)
                break
            self._bytes -= self._index.pop(key)
            evicted += 1
        return evicted
