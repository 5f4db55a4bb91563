"""Uploaded voices on disk, by content hash: what every router replica reading the directory sees.

Layout of ``voice_store.directory``::

    audio/<sha256>.wav    the normalised reference, named by the SHA-256 of its bytes (never changed in place)
    names/<name>.json     a voice name (lower case) -> its record: the hash, length, consent, description

A changed reference is a new file with a new hash, so anything keyed on the path (the response cache,
a node's speaker cache, a ``data:`` URL cache) can never serve the old voice under the new one. Files
are written to a temporary name and renamed into place, so a reader never sees half a file. The
index is read again when ``names/`` changes (its modification time), so an upload through another
replica is seen at the next lookup. index-tts-vllm nodes (and local workers) mount the directory and
read ``audio/`` (``node_directory`` is where they mount it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: voice names: a letter or digit, then letters, digits, - and _ (case-insensitive, as vllm-omni's)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_HASH = re.compile(r"[0-9a-f]{64}")
#: the most voices one directory holds (uploads beyond it are refused): bounds disk use and index reads
MAX_VOICES = 10_000
#: an unreferenced audio file younger than this is kept: another replica may be writing its name right now
GRACE_S = 60.0
#: an index younger than this is read again at every lookup (a file system's clock may be coarse)
RACY_S = 2.0


@dataclass(frozen=True)
class VoiceRecord:
    """One uploaded voice, as stored in ``names/<name>.json``."""

    name: str
    sha256: str
    seconds: float
    sample_rate: int
    consent: str
    created_at: int
    description: str = ""
    ref_text: str | None = None

    @property
    def key(self) -> str:
        return self.name.lower()

    @classmethod
    def from_json(cls, data: object) -> VoiceRecord | None:
        """The record in a names file, or None when it is not one (a stray or damaged file is skipped)."""
        if not isinstance(data, dict):
            return None
        try:
            record = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except TypeError:
            return None
        types: dict[str, type | tuple[type, ...]] = {
            "name": str, "sha256": str, "seconds": (int, float), "sample_rate": int, "consent": str,
            "created_at": int, "description": str, "ref_text": (str, type(None))}
        if not all(isinstance(getattr(record, k), t) and not isinstance(getattr(record, k), bool)
                   for k, t in types.items()):
            return None
        if not (NAME.fullmatch(record.name) and _HASH.fullmatch(record.sha256)):
            return None
        return record


class VoiceStore:
    """The voices in one directory. Reads are cheap (a ``stat`` when nothing changed); writes are atomic."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.root = Path(directory).expanduser().absolute()
        self.audio_dir = self.root / "audio"
        self.names_dir = self.root / "names"
        self._lock = threading.Lock()
        self._stamp: int | None = None
        self._records: dict[str, VoiceRecord] = {}

    def __repr__(self) -> str:
        return f"VoiceStore({str(self.root)!r})"

    def audio_path(self, sha256: str) -> Path:
        return self.audio_dir / f"{sha256}.wav"

    def relative_audio_path(self, sha256: str) -> str:
        """Where the reference lies under the directory (and under the nodes' mount of it)."""
        return f"audio/{sha256}.wav"

    # -- reading --------------------------------------------------------------------------------------------

    def get(self, name: str) -> VoiceRecord | None:
        if not NAME.fullmatch(name):
            return None
        return self._index().get(name.lower())

    def all(self) -> list[VoiceRecord]:
        return sorted(self._index().values(), key=lambda r: r.key)

    def read_audio(self, sha256: str) -> bytes:
        return self.audio_path(sha256).read_bytes()

    def _index(self) -> dict[str, VoiceRecord]:
        try:
            stamp = self.names_dir.stat().st_mtime_ns
        except OSError:
            return {}
        with self._lock:
            if stamp != self._stamp or time.time_ns() - stamp < RACY_S * 1e9:
                self._records = self._read_all()
                self._stamp = stamp
            return self._records

    def _read_all(self) -> dict[str, VoiceRecord]:
        records = {}
        try:
            paths = list(self.names_dir.glob("*.json"))
        except OSError:
            return {}
        for path in paths:
            try:
                record = VoiceRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                record = None
            if record is not None and record.key == path.stem and self.audio_path(record.sha256).is_file():
                records[record.key] = record
        return records

    # -- writing (blocking: call from a thread) -------------------------------------------------------------

    def put(self, record: VoiceRecord, wav: bytes) -> VoiceRecord | None:
        """Store ``wav`` by its hash and point ``record.name`` at it; returns the record it replaced, if any."""
        self.audio_dir.mkdir(parents=True, exist_ok=True)
        self.names_dir.mkdir(parents=True, exist_ok=True)
        previous = self._index().get(record.key)
        _write_atomic(self.audio_path(record.sha256), wav)  # rewritten even when there: its age protects it
        _write_atomic(self.names_dir / f"{record.key}.json", json.dumps(asdict(record), indent=1).encode())
        self._stamp = None
        return previous

    def delete(self, name: str) -> VoiceRecord | None:
        """Forget voice ``name``; its audio goes too once no voice uses it. Returns the record, None if unknown."""
        record = self.get(name)
        if record is None:
            return None
        try:
            (self.names_dir / f"{record.key}.json").unlink()
        except FileNotFoundError:
            return None
        self._stamp = None
        self.collect_garbage()
        return record

    def collect_garbage(self) -> int:
        """Remove audio no voice refers to (older than ``GRACE_S``); returns how many files went."""
        used = {r.sha256 for r in self._read_all().values()}
        removed = 0
        now = time.time()
        try:
            files = list(self.audio_dir.glob("*.wav"))
        except OSError:
            return 0
        for path in files:
            try:
                if path.stem not in used and now - path.stat().st_mtime > GRACE_S:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        return removed


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # nodes read it, possibly as another user
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


_stores: dict[Path, VoiceStore] = {}
_stores_lock = threading.Lock()


def store_for(directory: str) -> VoiceStore:
    """One ``VoiceStore`` per directory in this process, so its index is read once per change."""
    path = Path(directory).expanduser().absolute()
    with _stores_lock:
        store = _stores.get(path)
        if store is None:
            store = _stores[path] = VoiceStore(path)
        return store
