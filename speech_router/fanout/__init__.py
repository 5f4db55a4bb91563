"""Long text across the fleet: cut at sentence ends, segments synthesized side by side, audio in order."""

from __future__ import annotations

from .plan import SEGMENTING_TYPES, plan_segments
from .run import FannedOut, SegmentAudio, SegmentSynth, fan_out, segment_synthesizer

__all__ = ["SEGMENTING_TYPES", "FannedOut", "SegmentAudio", "SegmentSynth", "fan_out", "plan_segments",
           "segment_synthesizer"]
