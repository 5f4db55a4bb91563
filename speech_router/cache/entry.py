"""What the cache holds: finished audio and the few facts needed to send it again."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

#: bytes charged per memory entry on top of its audio (key, dataclass, dict slot), so that many
#: tiny entries cannot exceed the budget unnoticed
ENTRY_OVERHEAD = 256


@dataclass(frozen=True, slots=True)
class CachedAudio:
    """One cached answer or segment: the encoded bytes exactly as they were sent, and their labels.

    ``created`` is wall-clock time (not monotonic) because disk entries outlive the process.
    """

    data: bytes
    content_type: str
    format: str
    sample_rate: int | None = None
    created: float = field(default_factory=time.time)
    #: seconds of audio, for metrics and SSE usage when the entry is sent again
    seconds: float = 0.0

    @property
    def charge(self) -> int:
        """Bytes this entry counts against the memory budget."""
        return len(self.data) + ENTRY_OVERHEAD
