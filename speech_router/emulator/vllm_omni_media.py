"""Reference audio as an emulated vllm-omni node gets it: ``ref_audio`` URLs and uploaded voices.

``ref_audio`` (and ``extra_params.emo_audio``) may be a ``data:<mime>;base64,...`` URL, an
``http(s)://`` URL the node fetches (the emulator fetches loopback hosts only, so tests never reach
out), or ``file:///abs/path`` under ``--allowed-local-media-path``. The audio must decode and last
1-30 s. Uploaded voices (``POST /v1/audio/voices``) live in this process only, as on a real node.

The emulated voice is the SHA-1 of the reference file's bytes: the tone the emulator speaks is
``audio.tone_hz(reference_key(file_bytes))``, so a test can tell from the audio which file was used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import time
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import unquote, urlsplit

import aiohttp
import soundfile as sf

MIN_SECONDS = 1.0
MAX_SECONDS = 30.0
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
FETCH_TIMEOUT_S = 5.0
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
UPLOAD_MIME_TYPES = frozenset({"audio/mpeg", "audio/wav", "audio/x-wav", "audio/ogg", "audio/aac", "audio/flac",
                               "audio/webm", "audio/mp4"})
_EXTENSION_MIME = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".mpeg": "audio/mpeg", ".flac": "audio/flac",
                   ".ogg": "audio/ogg", ".aac": "audio/aac", ".webm": "audio/webm", ".mp4": "audio/mp4"}


class MediaError(ValueError):
    """A reference the node refuses; the server answers it as a 400 with this message."""


def reference_key(data: bytes) -> str:
    """The emulated speaker of a reference file: its bytes' SHA-1."""
    return hashlib.sha1(data).hexdigest()


def check_audio(data: bytes) -> float:
    """Seconds of audio in ``data``; ``MediaError`` when it does not decode or is not 1-30 s long."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - libsndfile's errors vary; the node reports them all alike
        raise MediaError(f"Could not decode audio file: {exc}") from None
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    if seconds < MIN_SECONDS:
        raise MediaError(f"Reference audio too short ({seconds:.1f}s). At least {MIN_SECONDS:.0f}s of clear speech "
                         "is required.")
    if seconds > MAX_SECONDS:
        raise MediaError(f"Reference audio too long ({seconds:.1f}s). Maximum {MAX_SECONDS:.0f}s supported — use a "
                         "shorter clip.")
    return seconds


async def fetch_reference(ref: str, allowed_path: str | None) -> bytes:
    """The file bytes a ``ref_audio`` URL names (not yet checked as audio)."""
    if ref.startswith("data:"):
        head, sep, payload = ref.partition(",")
        if not sep or not head.endswith(";base64"):
            raise MediaError("Invalid data URL: expected data:<mime>;base64,<data>")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise MediaError("Invalid data URL: the data is not valid base64") from None
    if ref.startswith("file:"):
        return _read_local(unquote(urlsplit(ref).path), allowed_path)
    if ref.startswith(("http://", "https://")):
        return await _fetch(ref)
    raise MediaError("ref_audio must be a URL (http/https), base64 data URL (data:...), or file URI (file://...)")


def _read_local(path: str, allowed_path: str | None) -> bytes:
    if allowed_path is None:
        raise MediaError("Cannot load local files without `--allowed-local-media-path`.")
    root = os.path.realpath(allowed_path)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        raise MediaError(f"The file path {path} must be a subpath of `--allowed-local-media-path` {allowed_path}.")
    try:
        with open(real, "rb") as f:
            return f.read()
    except OSError as exc:
        raise MediaError(f"Cannot read {path}: {exc.strerror}") from None


async def _fetch(url: str) -> bytes:
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK:
        raise MediaError(f"Cannot fetch {url}: this emulated node fetches loopback URLs only")
    try:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            if resp.status != 200:
                raise MediaError(f"Failed to fetch {url}: HTTP {resp.status}")
            return await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise MediaError(f"Failed to fetch {url}: {exc!r}") from None


@dataclass
class UploadedVoice:
    """A voice stored by ``POST /v1/audio/voices``."""

    name: str
    consent: str
    data: bytes
    mime_type: str
    created_at: int
    ref_text: str | None = None
    speaker_description: str | None = None

    def public(self) -> dict[str, object]:
        """The voice as the node shows it (never its file path)."""
        out: dict[str, object] = {"name": self.name, "consent": self.consent, "created_at": self.created_at,
                                  "mime_type": self.mime_type, "file_size": len(self.data)}
        if self.ref_text:
            out["ref_text"] = self.ref_text
        if self.speaker_description:
            out["speaker_description"] = self.speaker_description
        return out


class VoiceStore:
    """Uploaded voices of one node, by lower-cased name; a re-upload overwrites."""

    def __init__(self) -> None:
        self.voices: dict[str, UploadedVoice] = {}
        self._last_created = 0

    def __repr__(self) -> str:
        return f"VoiceStore({sorted(self.voices)})"

    def get(self, name: str | None) -> UploadedVoice | None:
        return self.voices.get(name.lower()) if name else None

    def add(self, name: str, consent: str, data: bytes, filename: str, content_type: str | None,
            ref_text: str | None = None, description: str | None = None) -> UploadedVoice:
        """Check and store an upload (``MediaError`` for what the node refuses)."""
        name = name.strip()
        if not name or name in (".", "..") or any(c in name for c in "/\\\x00"):
            raise MediaError(f"Invalid voice name {name!r}: must be non-empty, no path separators or NUL")
        if len(data) > MAX_UPLOAD_BYTES:
            raise MediaError(f"File size exceeds maximum limit of 10MB. Got {len(data)} bytes.")
        mime = content_type or "application/octet-stream"
        if mime == "application/octet-stream":
            mime = _EXTENSION_MIME.get(os.path.splitext(filename.lower())[1], "audio/wav")
        if mime not in UPLOAD_MIME_TYPES:
            raise MediaError(f"Unsupported MIME type: {mime}. Allowed: {sorted(UPLOAD_MIME_TYPES)}")
        check_audio(data)
        self._last_created = max(int(time.time()), self._last_created + 1)
        voice = UploadedVoice(name, consent, data, mime, self._last_created, (ref_text or "").strip() or None,
                              (description or "").strip() or None)
        self.voices[name.lower()] = voice
        return voice

    def delete(self, name: str) -> bool:
        return self.voices.pop(name.lower(), None) is not None


@dataclass
class FormFile:
    filename: str
    content_type: str | None
    data: bytes


def parse_form(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, FormFile]]:
    """``multipart/form-data`` fields and files, with the standard library's MIME parser."""
    if not content_type.startswith("multipart/form-data"):
        return {}, {}
    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") +
                                                  b"\r\n\r\n" + body)
    fields: dict[str, str] = {}
    files: dict[str, FormFile] = {}
    if not message.is_multipart():
        return fields, files
    for part in message.iter_parts():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            ctype = part.get_content_type() if part.get("Content-Type") else None
            files[name] = FormFile(filename, ctype, data)
        else:
            fields[name] = data.decode(part.get_content_charset() or "utf-8", "replace")
    return fields, files
