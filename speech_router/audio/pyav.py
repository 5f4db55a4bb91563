"""The part PyAV encoders share: mono s16 frames in, muxed packets out through a ByteSink as they appear."""

from __future__ import annotations

from typing import Any

import numpy as np

from .sink import ByteSink
from .stream import StreamEncoder

__all__ = ["PyavEncoder"]


class PyavEncoder(StreamEncoder):
    """Encodes with ``codec`` into a ``container_format`` muxer; zero samples in total give b""."""

    def __init__(self, av: Any, content_type: str, input_rate: int, output_rate: int, *, container_format: str,
                 container_options: dict[str, str], codec: str, bit_rate: int,
                 codec_options: dict[str, str] | None = None) -> None:
        self._av = av
        super().__init__(content_type, input_rate, output_rate)
        self._sink = ByteSink()
        # flush_packets: hand each frame or page to the sink now instead of filling FFmpeg's 32 KiB I/O buffer
        self._container = av.open(self._sink, "w", format=container_format,
                                  container_options={"flush_packets": "1", **container_options})
        self._stream = self._container.add_stream(codec, rate=output_rate, layout="mono",
                                                  options=codec_options or {})
        self._stream.bit_rate = bit_rate
        self._pts = 0

    def _encode(self, samples: np.ndarray) -> None:
        frame = self._av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += samples.size
        # PyAV converts to the codec's sample format and re-cuts the codec's frame size itself
        self._container.mux(self._stream.encode(frame))

    def _close(self) -> None:
        if self._pts:
            self._container.mux(self._stream.encode(None))
        self._container.close()

    def _drain(self) -> bytes:
        if not self._pts:
            return b""  # a container with headers and no audio does not open in FFmpeg
        return self._sink.take()
