"""Cache keys: a SHA-256 over everything that changes the audio, and nothing that does not.

Two requests get the same key exactly when a backend would be asked for the same thing: the same
model, voice (name, configured parameters *and* the content hash of its reference files where this host
can read them, so editing a voice's YAML or its reference file in place misses),
text, emotion, speed, sentence size, passthrough body, stored format and sample rate, plus
``extra`` settings chosen by the caller (fan-out silence, segment size...). ``request_id`` and
``timeout`` only change how a request is handled, so they are left out.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from ..types import SynthesisRequest
from ..voices.digest import reference_digests

#: bump when the key's content or the stored layout changes, so old disk entries simply miss
KEY_VERSION = 1
KINDS = ("response", "segment")


def cache_key(request: SynthesisRequest, *, kind: str, fmt: str, sample_rate: int | None,
              extra: Mapping[str, Any] | None = None) -> str:
    """The hex SHA-256 key of ``request`` stored as ``fmt`` at ``sample_rate``.

    ``fmt`` is the format of the cached bytes, not ``request.response_format``: a segment kept in
    the backend's own format can then serve requests that end up in different formats.
    """
    if kind not in KINDS:
        raise ValueError(f"cache key kind must be one of {KINDS}, not {kind!r}")
    emotion = request.emotion
    document = {
        "v": KEY_VERSION,
        "kind": kind,
        "model": request.model,
        "voice": request.voice,
        "voice_params": request.voice_params,
        "text": request.text,
        "emotion": {
            "method": int(emotion.method),
            "ref_path": emotion.ref_path,
            "weight": float(emotion.weight),
            "vector": None if emotion.vector is None else [float(x) for x in emotion.vector],
            "text": emotion.text,
            "random": bool(emotion.random),
        },
        "speed": float(request.speed),
        "max_text_tokens_per_sentence": request.max_text_tokens_per_sentence,
        "passthrough": request.passthrough,
        "format": fmt,
        "sample_rate": sample_rate,
        "extra": dict(extra) if extra else {},
    }
    if request.lang is not None:  # added only when set, so keys stored before these fields still hit
        document["lang"] = request.lang
    if emotion.ref_params:
        document["emotion_ref_params"] = emotion.ref_params
    # a reference edited in place is another voice; added only when readable here, so other keys stay as they were
    if refs := reference_digests(request.voice_params):
        document["voice_ref_sha256"] = refs
    if emotion.ref_params and (emotion_refs := reference_digests(emotion.ref_params)):
        document["emotion_ref_sha256"] = emotion_refs
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_plain)
    # surrogatepass: a lone surrogate (refused by the routes) must never turn a key into a 500
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _plain(value: Any) -> Any:
    """JSON form of the few non-JSON values config and requests carry; anything else is a bug, not a miss."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot use a {type(value).__name__} in a cache key")
