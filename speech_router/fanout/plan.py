"""Whether a request is fanned out, and into which segments."""

from __future__ import annotations

from ..router.dispatch import Router
from ..text.segment import split_segments
from ..types import SynthesisRequest

#: backend types that work through long text one segment at a time (and IndexTTS-2.5 behind vllm-omni, which
#: squeezes or garbles single requests past ~1500 mel codes): fan-out is on by default for them
SEGMENTING_TYPES = frozenset({"index-tts-vllm", "indextts2-local", "vllm-omni"})


def plan_segments(router: Router, sreq: SynthesisRequest) -> list[str]:
    """The segments ``sreq`` is cut into, or [] when it is not fanned out."""
    model = router.settings.models.get(sreq.model)
    if model is None or sreq.passthrough is not None:  # /tts_url forwards the client's body untouched
        return []
    cfg = model.fanout
    enabled = cfg.enabled
    if enabled is None:
        enabled = router.route(sreq.model)[0].backend_type in SEGMENTING_TYPES
    if not enabled or len(sreq.text) <= cfg.threshold_chars:
        return []
    segments = split_segments(sreq.text, max_chars=cfg.max_segment_chars, min_chars=cfg.min_segment_chars)
    return segments if len(segments) > 1 else []
