"""Text preparation for synthesis: cutting long text into sentence segments for parallel synthesis (#7)."""

from __future__ import annotations

from .segment import DEFAULT_MAX_CHARS, DEFAULT_MIN_CHARS, split_segments
from .sentences import split_sentences

__all__ = ["DEFAULT_MAX_CHARS", "DEFAULT_MIN_CHARS", "split_segments", "split_sentences"]
