"""ADTS AAC through PyAV (FFmpeg's native encoder); PyAV is optional, so it is imported on use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .formats import FormatUnavailable
from .sink import ByteSink
from .stream import StreamEncoder

if TYPE_CHECKING:
    import av

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


class AacEncoder(StreamEncoder):
    """Each 1024-sample AAC frame is muxed and sent as soon as it is encoded.

    ADTS has no header and no gapless info, so decoders also play the encoder's 1024 priming
    samples and the padding of the last frame. Zero samples in total give b"".
    """

    def __init__(self, content_type: str, input_rate: int, output_rate: int) -> None:
        self._av = _import_av()
        super().__init__(content_type, input_rate, output_rate)
        self._sink = ByteSink()
        # flush_packets: hand every ADTS frame to the sink now instead of filling a 32 KiB AVIO buffer.
        self._container: av.container.OutputContainer = self._av.open(
            self._sink, "w", format="adts", container_options={"flush_packets": "1"}
        )
        self._stream: av.AudioStream = self._container.add_stream("aac", rate=output_rate, layout="mono")
        self._stream.bit_rate = AAC_BIT_RATE
        self._pts = 0

    def _encode(self, samples: np.ndarray) -> None:
        frame = self._av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += samples.size
        # PyAV converts to the codec's float planar format and re-cuts 1024-sample frames itself.
        self._container.mux(self._stream.encode(frame))

    def _close(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()

    def _drain(self) -> bytes:
        return self._sink.take()
