"""ADTS AAC through PyAV (FFmpeg's native encoder); PyAV is optional, so it is imported on use."""

from __future__ import annotations

from typing import Any

from .formats import FormatUnavailable
from .pyav import PyavEncoder

__all__ = ["AAC_BIT_RATE", "AacEncoder"]

AAC_BIT_RATE = 64_000  # mono speech at 24 kHz; FFmpeg's default would be twice that


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise FormatUnavailable(
            "response_format 'aac' needs PyAV, which is not installed; enable it with: pip install 'speech-router[aac]'"
        ) from exc
    return av


class AacEncoder(PyavEncoder):
    """Each 1024-sample AAC frame is muxed and sent as soon as it is encoded.

    ADTS has no header and no gapless info, so decoders also play the encoder's 1024 priming
    samples and the padding of the last frame. Zero samples in total give b"".
    """

    def __init__(self, content_type: str, input_rate: int, output_rate: int) -> None:
        super().__init__(_import_av(), content_type, input_rate, output_rate, container_format="adts",
                         container_options={}, codec="aac", bit_rate=AAC_BIT_RATE)
