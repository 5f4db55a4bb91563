"""``JobFiles``: a job's audio on disk, beside the store: finished segments as raw PCM, then the joined files.

Layout: ``<directory>/<job id>/<item>-<index>.pcm`` per segment (mono int16 little-endian, the rate is in the
store), ``audio.<ext>`` for the whole job and ``item-<n>.<ext>`` per item when there are several. A file is
written under a temporary name and renamed, so a name that exists is complete; the store marks a segment
done only after its file is in place. Only ids the store made (``valid_job_id``) ever become paths.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from .model import valid_job_id

TMP_SUFFIX = ".tmp"


class DiskFull(Exception):
    """The jobs' disk cannot take more audio (full, or at ``jobs.min_free_disk_bytes``)."""


class JobFiles:
    def __init__(self, directory: str | Path) -> None:
        self.root = Path(directory)

    def __repr__(self) -> str:
        return f"JobFiles({str(self.root)!r})"

    def job_dir(self, job_id: str) -> Path:
        if not valid_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def segment_path(self, job_id: str, item: int, index: int) -> Path:
        return self.job_dir(job_id) / f"{item}-{index}.pcm"

    def output_path(self, job_id: str, item: int | None, ext: str) -> Path:
        return self.job_dir(job_id) / (f"item-{item}.{ext}" if item is not None else f"audio.{ext}")

    def write_segment(self, job_id: str, item: int, index: int, pcm: bytes) -> None:
        """Keep a segment's PCM (blocking: call it off the event loop)."""
        path = self.segment_path(job_id, item, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + TMP_SUFFIX)
        tmp.write_bytes(pcm)
        os.replace(tmp, path)

    def segment_size(self, job_id: str, item: int, index: int) -> int | None:
        try:
            return self.segment_path(job_id, item, index).stat().st_size
        except OSError:
            return None

    def drop_segments(self, job_id: str) -> None:
        """The joined files are kept: the segments' PCM is no longer needed."""
        with contextlib.suppress(FileNotFoundError):
            for path in self.job_dir(job_id).iterdir():
                if path.suffix in (".pcm", TMP_SUFFIX):
                    path.unlink(missing_ok=True)

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def orphans(self, known: set[str]) -> list[str]:
        """Job directories whose job is gone (deleted while the router stopped half-way)."""
        if not self.root.is_dir():
            return []
        return [p.name for p in self.root.iterdir() if p.is_dir() and valid_job_id(p.name) and p.name not in known]

    def free_bytes(self) -> int:
        """Free space on the disk holding the jobs (its nearest existing parent before the first job)."""
        path = self.root
        while not path.exists() and path.parent != path:
            path = path.parent
        return shutil.disk_usage(path).free
