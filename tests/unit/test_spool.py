"""The spool a slow client's answer waits in: order kept across memory and disk, the disk given back, a full disk
survived, and the spill file deleted."""

from __future__ import annotations

import os

import pytest

from speech_router.router import spool as spool_module
from speech_router.router.spool import READ_BYTES, SpillFile, Spool


def drain(spool: Spool) -> bytes:
    out = b""
    while piece := spool.read():
        assert len(piece) <= max(READ_BYTES, 16)
        out += piece
    return out


def test_bytes_come_back_in_order_across_memory_and_disk():
    spool = Spool(memory_bytes=16)
    pieces = [os.urandom(n) for n in (5, 7, 9, 300_000, 3)]
    for piece in pieces:
        spool.write(piece)
    assert spool.size == sum(map(len, pieces))
    assert b"".join(spool.pieces()) == b"".join(pieces)  # looked at, not taken
    first = spool.read()
    spool.write(b"late")  # written while part is still unread: it comes after everything else
    assert first + drain(spool) == b"".join(pieces) + b"late"
    assert spool.size == 0
    spool.close()


def test_a_drained_spool_gives_its_disk_back_and_keeps_small_writes_in_memory():
    spool = Spool(memory_bytes=8)
    spool.write(b"x" * 100)
    assert spool._file is not None and spool._file.size == 100
    drain(spool)
    assert spool._file.size == 0  # truncated once read
    spool.write(b"tiny")
    assert spool._file.size == 0 and drain(spool) == b"tiny"
    spool.close()


def test_the_spill_file_is_unlinked_and_closed(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    file = SpillFile()
    assert file.append(b"abc") == 0 and file.append(b"de") == 3
    assert list(tmp_path.iterdir()) == []  # nothing named on disk, even while open
    fd = file._fd
    assert b"".join(file.pieces(1, 3)) == b"bcd"
    file.close()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_full_disk_keeps_the_answer_in_memory_in_order(monkeypatch):
    spool = Spool(memory_bytes=4)
    spool.write(b"abcd")
    spool.write(b"efgh")  # on disk
    def full(self: SpillFile, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool_module.SpillFile, "append", full)
    spool.write(b"ijkl")
    assert drain(spool) == b"abcdefghijkl"
    spool.close()
