"""Audio kept for a slow client: a little of it in memory, the rest in an anonymous temporary file.

A node's answer is read as fast as the node sends it, so its slot is free at once however slowly the client
reads (README: "Slots follow the GPU"). Held in memory, each slow client would keep its whole answer (a 4-minute
WAV is 10 MB; 32 clients at 1 KB/s took 340 MB). ``Spool`` keeps at most ``SPOOL_MEMORY_BYTES`` of an answer in
memory and appends the rest to a ``SpillFile``: one temporary file per response, unlinked as it is made (nothing
is left behind, even by a crash), created only when needed and closed with the response. Its pages live in the
page cache, which the kernel reclaims, not in the router's heap; reads come back in pieces of at most
``READ_BYTES``, so no answer is ever one large allocation (glibc would keep such memory after the client left).

Files go to ``TMPDIR`` (``tempfile.gettempdir()``). The I/O runs on the event loop: appends and reads of a few
kilobytes against the page cache take microseconds. When the file cannot be written (a full disk), the spool
keeps everything in memory from then on, as the router did before, and says so once in the log.

Reading a node's answer still makes short-lived buffers (the connection's, a segment decoded), and glibc keeps
freed heap memory for reuse: after hundreds of slow clients left, the router held 55 MB more than before they
came. ``trim_soon`` asks glibc (``malloc_trim``) to give free memory back, once, ``TRIM_DELAY_S`` after the last
spooled answer closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

#: what one response keeps in memory before it spills to disk
SPOOL_MEMORY_BYTES = 64 * 1024
#: the largest piece read back from the file at once
READ_BYTES = 64 * 1024

#: how long after a spooled answer closed the heap is trimmed (once for a burst of closes)
TRIM_DELAY_S = 1.0

_warned = False


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None elsewhere (musl, macOS: they return memory by themselves or not at all)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()
_trim_pending = False


def trim_soon() -> None:
    """Give free heap memory back to the system ``TRIM_DELAY_S`` from now, unless that is already planned."""
    global _trim_pending
    if _TRIM is None or _trim_pending:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    _trim_pending = True
    loop.call_later(TRIM_DELAY_S, _trim_now)


def _trim_now() -> None:
    global _trim_pending
    _trim_pending = False
    if _TRIM is not None:
        _TRIM(0)


class SpillFile:
    """One anonymous temporary file, opened on first use: appended to, read at offsets, deleted on close.

    It is unlinked as soon as it is made, so only its descriptor holds it; one that is dropped unclosed (an answer
    nobody read to the end) is closed when it is collected.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self.size = 0

    def __repr__(self) -> str:
        return f"SpillFile(size={self.size}, open={self._fd is not None})"

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit os may be gone; the kernel closes it anyway
            pass

    def append(self, data: bytes | memoryview) -> int:
        """Write ``data`` at the end; returns where it starts. Raises ``OSError`` (a full disk)."""
        if self._fd is None:
            fd, path = tempfile.mkstemp(prefix="speech-router-spool-")
            os.unlink(path)
            self._fd = fd
        offset, view = self.size, memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self.size)
            self.size += written
            view = view[written:]
        return offset

    def read(self, offset: int, size: int) -> bytes:
        if self._fd is None:
            return b""
        return os.pread(self._fd, size, offset)

    def pieces(self, offset: int, size: int) -> Iterator[bytes]:
        """``size`` bytes from ``offset``, read as they are asked for, in pieces of at most ``READ_BYTES``."""
        end = offset + size
        while offset < end and (data := self.read(offset, min(READ_BYTES, end - offset))):
            offset += len(data)
            yield data

    def clear(self) -> None:
        """Forget the contents (the disk space comes back); the file stays open for more."""
        if self._fd is not None and self.size:
            os.ftruncate(self._fd, 0)
        self.size = 0

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            trim_soon()
        self.size = 0


class Spool:
    """A first-in first-out queue of bytes: up to ``memory_bytes`` in memory, what comes after in a ``SpillFile``.

    ``size`` is what was written and not read yet; ``read`` gives it back in order, in pieces of at most
    ``READ_BYTES`` once it comes from the file. ``pieces`` goes over the unread bytes without taking them (to check
    a whole answer before it is sent). ``close`` deletes the file; reading after it gives nothing.
    """

    def __init__(self, memory_bytes: int = SPOOL_MEMORY_BYTES) -> None:
        self._memory: deque[bytes] = deque()
        self._in_memory = 0
        self._memory_bytes = memory_bytes
        self._file: SpillFile | None = None
        self._read_at = 0  # the file's unread bytes start here
        self.size = 0

    def __repr__(self) -> str:
        on_disk = self._file.size - self._read_at if self._file is not None else 0
        return f"Spool(size={self.size}, in_memory={self._in_memory}, on_disk={on_disk})"

    @property
    def _on_disk(self) -> int:
        return self._file.size - self._read_at if self._file is not None else 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if not self._on_disk and (self._in_memory + len(data) <= self._memory_bytes or self._memory_bytes < 0):
            self._memory.append(data)
            self._in_memory += len(data)
            return
        try:
            if self._file is None:
                self._file = SpillFile()
            self._file.append(data)
        except OSError as exc:
            self._keep_in_memory(exc)
            self._memory.append(data)
            self._in_memory += len(data)

    def read(self) -> bytes:
        """The next piece (memory first, then the file); empty when nothing is unread."""
        if self._memory:
            data = self._memory.popleft()
            self._in_memory -= len(data)
        elif self._on_disk:
            assert self._file is not None
            data = self._file.read(self._read_at, min(READ_BYTES, self._on_disk))
            self._read_at += len(data)
            if not self._on_disk:  # all read: the disk space comes back, and new bytes may stay in memory
                self._file.clear()
                self._read_at = 0
        else:
            return b""
        self.size -= len(data)
        return data

    def pieces(self) -> Iterator[bytes]:
        """The unread bytes in order, left unread."""
        yield from list(self._memory)
        yield from self._disk_pieces()

    def close(self) -> None:
        self._memory.clear()
        self._in_memory = self.size = self._read_at = 0
        if self._file is not None:
            self._file.close()
            self._file = None

    def _disk_pieces(self) -> Iterator[bytes]:
        if self._file is not None:
            yield from self._file.pieces(self._read_at, self._file.size - self._read_at)

    def _keep_in_memory(self, exc: OSError) -> None:
        """The file cannot take more: bring what it holds back to memory and keep everything there from now on."""
        global _warned
        if not _warned:
            _warned = True
            log.warning("cannot spool answers for slow clients to %s (%s): they are kept in memory",
                        tempfile.gettempdir(), exc.strerror or type(exc).__name__)
        if self._file is not None:
            for piece in self._disk_pieces():
                self._memory.append(piece)
                self._in_memory += len(piece)
            self._file.close()
            self._file = None
        self._read_at = 0
        self._memory_bytes = -1  # no limit any more
