"""What IndexTTS-2.5 adds over IndexTTS-2, shared by the backends that can serve it (``vllm-omni``,
``indextts2-local``): native speed and a version option. Its other addition, a language for every
request (``lang``), is ``speech_router.text.language``'s.

Speed is native on 2.5: ``duration_factor = 1 / speed``, allowed 0.5-2.0 (vllm-omni answers 400
outside it, the local engine would stretch the audio past what the model was trained for).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator

from ..errors import RequestInvalid
from ..worker.checkpoint import Version

__all__ = ["SPEED_RANGE_25", "Version", "VersionOption", "duration_factor"]


def _version_text(value: object) -> object:
    """YAML reads ``version: 2.5`` as a number; accept it as the string it means (2 and 2.0 are "2")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "2" if value == 2 else f"{value:g}"
    return value


#: a pool option naming the IndexTTS version: "2", "2.5" (numbers too), or "auto"
VersionOption = Annotated[Literal["auto", "2", "2.5"], BeforeValidator(_version_text)]
#: speed (``1 / duration_factor``) IndexTTS-2.5 accepts
SPEED_RANGE_25 = (0.5, 2.0)


def duration_factor(speed: float, *, backend: str) -> float:
    """IndexTTS-2.5's ``duration_factor`` for ``speed``; a 400 naming ``speed`` outside 0.5-2.0."""
    low, high = SPEED_RANGE_25
    if not low <= speed <= high:
        raise RequestInvalid(f"Invalid 'speed': IndexTTS-2.5 ({backend}) speaks at {low:g} to {high:g} times normal "
                             f"speed, got {speed:g}.", param="speed", code="unsupported_value")
    return 1.0 / speed
