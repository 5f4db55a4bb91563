"""A write-only, seekable file object that hands out encoded bytes as soon as they exist.

libsndfile and FFmpeg want a seekable file: on close they seek back to patch headers (FLAC's
STREAMINFO, the LAME/Xing frame of MP3). When streaming, those bytes are already on the wire, so
the sink drops writes below what it has handed out. That is safe for the formats we stream this
way: FLAC with zero sample count / MD5 means "unknown", and the MP3 encoder strips LAME's
placeholder frame before it is sent. Until `take()` is called nothing is dropped, so a whole-file
encode keeps every header rewrite.
"""

from __future__ import annotations

import io

__all__ = ["ByteSink"]


class ByteSink:
    """Keeps only bytes not yet taken; `dropped` counts rewrites that arrived too late to matter."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._base = 0  # file offset of _buf[0]; everything before it was taken
        self._pos = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return f"ByteSink(taken={self._base}, pending={len(self._buf)}, dropped={self.dropped})"

    @property
    def size(self) -> int:
        return self._base + len(self._buf)

    def take(self) -> bytes:
        """Return every byte written past the last take; later writes before this point are dropped."""
        data = bytes(self._buf)
        self._base += len(data)
        self._buf.clear()
        return data

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        count = len(view)
        start, self._pos = self._pos, self._pos + count
        if start < self._base:
            skip = min(self._base - start, count)
            self.dropped += skip
            view, start = view[skip:], start + skip
        if not len(view):
            return count
        offset = start - self._base
        if offset == len(self._buf):
            self._buf += view  # the usual case: appending at the end
        else:
            end = offset + len(view)
            if end > len(self._buf):
                self._buf.extend(bytes(end - len(self._buf)))
            self._buf[offset:end] = view
        return count

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        """Encoders never read back what they wrote; report end of file."""
        return b""

    def readinto(self, buffer: bytearray | memoryview) -> int:
        return 0

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False
