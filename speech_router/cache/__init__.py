"""The response cache (#7): finished audio by a key over everything that changes it, in memory and on disk."""

from __future__ import annotations

from .key import KEY_VERSION, KINDS, cache_key
from .store import AudioCache, CachedAudio, CacheStats

__all__ = ["KEY_VERSION", "KINDS", "AudioCache", "CacheStats", "CachedAudio", "cache_key"]
