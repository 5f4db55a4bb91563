"""FLAC's STREAMINFO: the total sample count a player reads a file's duration from.

A streamed FLAC says 0 ("unknown"): its header left before the audio was made. A finished file carries its
length; ``with_total_samples`` writes it into a streamed file that turned out whole (one kept by the cache).
"""

from __future__ import annotations

#: "fLaC", then the STREAMINFO block's 4-byte header; the sample count is the low 36 bits of the 8 bytes
#: after the block and frame sizes (10 bytes in), below the rate (20 bits), channels (3) and bit depth (5)
_FIELD = slice(4 + 4 + 10, 4 + 4 + 18)
_MASK = (1 << 36) - 1


def total_samples(data: bytes) -> int | None:
    """STREAMINFO's total sample count (0: unknown); None when ``data`` is no FLAC stream."""
    if data[:4] != b"fLaC" or len(data) < _FIELD.stop or data[4] & 0x7F != 0:
        return None
    return int.from_bytes(data[_FIELD], "big") & _MASK


def with_total_samples(data: bytes, samples: int) -> bytes:
    """``data`` with STREAMINFO's sample count set to ``samples``; anything not FLAC comes back unchanged."""
    if total_samples(data) is None or not 0 <= samples <= _MASK:
        return data
    field = int.from_bytes(data[_FIELD], "big") & ~_MASK | samples
    return data[:_FIELD.start] + field.to_bytes(8, "big") + data[_FIELD.stop:]
