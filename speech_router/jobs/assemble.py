"""Join a finished job's segments into its audio files, streaming: a book never sits in memory whole.

Segments play in text order with the job's silence between them (items follow each other the same way), at the
rate of the job's first segment (others are resampled, as a fanned-out text is), encoded progressively into
the asked format and written under a temporary name. A WAV gets its real sizes at the end (when they fit a
RIFF header). Blocking: the runner calls it on a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .files import TMP_SUFFIX, JobFiles
from .model import DoneSegment, JobSpec

WAV_HEADER_BYTES = 44
RIFF_MAX = 0xFFFFFFFF


class SegmentLost(Exception):
    """A segment marked done has no complete file (a power cut after the store's commit): do it again."""

    def __init__(self, segment: DoneSegment) -> None:
        super().__init__(f"segment {segment.item}-{segment.index} is missing")
        self.segment = segment


@dataclass(frozen=True)
class Output:
    """One joined file: the whole job (``item`` None) or one item."""

    item: int | None
    size: int


def lost_segments(files: JobFiles, job_id: str, done: list[DoneSegment]) -> list[DoneSegment]:
    """Segments marked done whose file is missing or short (a power cut after the store's commit)."""
    return [s for s in done if files.segment_size(job_id, s.item, s.index) != s.size]


def assemble(files: JobFiles, job_id: str, spec: JobSpec, done: list[DoneSegment], items: int,
             failed: set[int]) -> list[Output]:
    """Write the whole job (when no item failed) and, for a job of several items, each item that succeeded."""
    from ..audio.formats import FORMATS

    ext = FORMATS[spec.response_format].extension
    outputs = []
    if not failed:
        outputs.append(Output(None, _write(files, job_id, spec, done, files.output_path(job_id, None, ext))))
    if items > 1:
        for item in range(items):
            if item not in failed:
                mine = [s for s in done if s.item == item]
                outputs.append(Output(item, _write(files, job_id, spec, mine, files.output_path(job_id, item, ext))))
    return outputs


def _write(files: JobFiles, job_id: str, spec: JobSpec, segments: list[DoneSegment], path: Path) -> int:
    from ..audio.encode import make_encoder
    from ..audio.pcm import resample_pcm

    rate = segments[0].rate
    silence = bytes(2 * round(rate * spec.silence_ms / 1000))
    encoder = make_encoder(spec.response_format, rate, spec.sample_rate)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as out:
        for n, pcm in enumerate(_pcm(files, job_id, segments)):
            if n and silence:
                out.write(encoder.write(silence))
            out.write(encoder.write(resample_pcm(pcm, segments[n].rate, rate)))
        out.write(encoder.finish())
        if spec.response_format == "wav":
            _fix_wav_sizes(out)
        size = out.tell()
    os.replace(tmp, path)
    return size


def _pcm(files: JobFiles, job_id: str, segments: list[DoneSegment]) -> Iterator[bytes]:
    for segment in segments:
        data = files.segment_path(job_id, segment.item, segment.index).read_bytes()
        if len(data) != segment.size:
            raise SegmentLost(segment)
        yield data


def _fix_wav_sizes(out: BinaryIO) -> None:
    """A streamed WAV header says "unknown length"; the file gets its real sizes when they fit."""
    size = out.tell() - WAV_HEADER_BYTES
    if size < 0 or size + 36 > RIFF_MAX:
        return
    out.seek(4)
    out.write((size + 36).to_bytes(4, "little"))
    out.seek(40)
    out.write(size.to_bytes(4, "little"))
    out.seek(0, os.SEEK_END)
