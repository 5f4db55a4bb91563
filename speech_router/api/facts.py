"""What a model's route can do (speed, emotion), from its pools' backends, and the check of a request against it.

Read when a request asks for more than plain speech: a backend's capabilities may change while it runs (a
vllm-omni node's version is detected by its health check), so they are not kept from one request to the next."""

from __future__ import annotations

from dataclasses import dataclass

from ..backends.base import Capabilities
from ..errors import RequestInvalid
from ..router.dispatch import Router
from ..types import SynthesisRequest


@dataclass(frozen=True)
class ModelFacts:
    """What a model's route can do, from its pools' backends as they are now."""

    backend_types: str  # comma-separated, for messages
    speed: bool
    speed_ranges: tuple[tuple[float, float], ...]
    emotion: bool

    @classmethod
    def of(cls, router: Router, model: str) -> ModelFacts:
        pools = router.route(model)
        caps: list[Capabilities] = [p.endpoints[0].backend.capabilities for p in pools if p.endpoints]
        return cls(", ".join(sorted({p.backend_type for p in pools})), any(c.speed for c in caps),
                   tuple(c.speed_range for c in caps if c.speed), any(c.emotion for c in caps))


def check_capabilities(facts: ModelFacts, sreq: SynthesisRequest) -> None:
    """Refuse what no pool on the route can do, naming the backend type (never ignore it silently)."""
    if sreq.speed != 1.0:
        if not facts.speed:
            raise RequestInvalid(f"speed {sreq.speed:g} is not supported by backend type {facts.backend_types} "
                                 f"serving model {sreq.model!r}; use speed 1.0", param="speed",
                                 code="unsupported_parameter")
        if not any(low <= sreq.speed <= high for low, high in facts.speed_ranges):
            ranges = ", ".join(sorted({f"{low:g}-{high:g}" for low, high in facts.speed_ranges}))
            raise RequestInvalid(f"speed {sreq.speed:g} is outside what model {sreq.model!r} can do ({ranges})",
                                 param="speed", code="unsupported_value")
    emotion = sreq.emotion
    if emotion.method != 0 and not facts.emotion:
        if emotion.method != 3 or sreq.passthrough is not None:  # instructions are a hint; others are not
            raise RequestInvalid(f"emotion control is not supported by backend type {facts.backend_types} serving "
                                 f"model {sreq.model!r}", param="emotion", code="unsupported_parameter")
