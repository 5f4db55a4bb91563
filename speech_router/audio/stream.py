"""The StreamEncoder base: PCM bytes in, encoded bytes out as soon as the codec produces them."""

from __future__ import annotations

import numpy as np
import soxr

__all__ = ["StreamEncoder"]


class StreamEncoder:
    """Encode mono int16 little-endian PCM at `input_rate` progressively, resampling to `sample_rate`.

    Subclasses implement `_encode` (int16 samples at the output rate), `_drain` (bytes ready to
    send) and optionally `_close` (flush the codec). A soxr stream resampler keeps its state
    between chunks, so chunk boundaries do not click.
    """

    content_type: str
    sample_rate: int

    def __init__(self, content_type: str, input_rate: int, output_rate: int) -> None:
        if input_rate <= 0 or output_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {input_rate} -> {output_rate}")
        self.content_type = content_type
        self.input_rate = input_rate
        self.sample_rate = output_rate
        self._resampler = (
            soxr.ResampleStream(input_rate, output_rate, 1, dtype="int16") if input_rate != output_rate else None
        )
        self._odd = b""  # a half sample split across write() calls
        self.samples_out = 0  # samples encoded so far, at the output rate
        self._finished = False
        # Set by make_encoder(whole=True): output is only read at finish(), so headers can be patched in place.
        self._whole = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(input_rate={self.input_rate}, sample_rate={self.sample_rate})"

    def write(self, pcm: bytes) -> bytes:
        """Encode a chunk of PCM (any length, even an odd byte count) and return what can be sent now."""
        if self._finished:
            raise RuntimeError("write() after finish()")
        if self._odd:
            pcm = self._odd + pcm
        cut = len(pcm) & ~1
        self._odd = pcm[cut:]
        samples = np.frombuffer(pcm, dtype="<i2", count=cut // 2)
        if self._resampler is not None and samples.size:
            samples = self._resampler.resample_chunk(samples)
        if samples.size:
            self.samples_out += samples.size
            self._encode(samples)
        return b"" if self._whole else self._drain()

    def finish(self) -> bytes:
        """Flush resampler and codec and return the rest; calling it again returns b""."""
        if self._finished:
            return b""
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
            if tail.size:
                self.samples_out += tail.size
                self._encode(tail)
        self._odd = b""  # half a sample cannot be played; drop it
        self._finished = True
        self._close()
        return self._drain()

    def _encode(self, samples: np.ndarray) -> None:
        raise NotImplementedError

    def _drain(self) -> bytes:
        raise NotImplementedError

    def _close(self) -> None:
        pass
