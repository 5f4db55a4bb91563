"""Helpers for the long-form job tests: a fleet config with jobs on, a text of numbered sentences whose
segments are all different (so a node's request log says which segment was synthesized when), and polling."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from speech_router.emulator import audio as emu_audio
from speech_router.text.segment import split_segments
from tests.client import Reply, call
from tests.conftest import fleet_config

JOBS = "/v1/audio/speech/jobs"
MAX_SEGMENT, MIN_SEGMENT, SILENCE_MS = 120, 20, 200
FANOUT = {"max_segment_chars": MAX_SEGMENT, "min_segment_chars": MIN_SEGMENT, "silence_ms": SILENCE_MS}
WAIT_S = 120.0


def jobs_config(directory: Path, *urls: str, jobs: dict[str, Any] | None = None, **pool: Any) -> dict[str, Any]:
    """``fleet_config`` over ``urls`` with one slot per node, jobs kept in ``directory``."""
    config = fleet_config(*urls, max_concurrency=1, **pool)
    config["models"] = {"indextts2": {"pools": ["gpu"], "fanout": FANOUT}, "tts-1": {"pools": ["gpu"],
                                                                                   "fanout": FANOUT}}
    config["jobs"] = {"directory": str(directory), "lease": 1.0, **(jobs or {})}
    return config


def book(sentences: int, start: int = 0) -> str:
    """Numbered sentences: every segment of it is a text no other segment has."""
    return " ".join(f"Sentence number {n} of this book is read aloud here." for n in range(start, start + sentences))


def segments(text: str) -> list[str]:
    return split_segments(text, max_chars=MAX_SEGMENT, min_chars=MIN_SEGMENT)


def submit(url: str, body: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    reply = call(url + JOBS, {"model": "indextts2", "voice": "alloy", **body}, key=key)
    assert reply.status == 202, (reply.status, reply.body[:500])
    assert reply.headers["location"] == f"{JOBS}/{reply.json()['id']}"
    return reply.json()


def status(url: str, job_id: str, key: str | None = None) -> dict[str, Any]:
    reply = call(f"{url}{JOBS}/{job_id}", key=key)
    assert reply.status == 200, (reply.status, reply.body[:500])
    return reply.json()


def wait(url: str, job_id: str, until: Any = None, key: str | None = None, timeout: float = WAIT_S) -> dict[str, Any]:
    """Poll until ``until(job)`` (default: the job ended); fails after ``timeout``."""
    until = until or (lambda job: job["status"] not in ("queued", "running"))
    deadline = time.monotonic() + timeout
    while True:
        try:
            job = status(url, job_id, key)
        except OSError:  # a router being restarted
            job = None
        if job is not None and until(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} never got there: {job}"
        time.sleep(0.05)


def content(url: str, job_id: str, item: int | None = None, headers: dict[str, str] | None = None,
            key: str | None = None) -> Reply:
    query = "" if item is None else f"?item={item}"
    return call(f"{url}{JOBS}/{job_id}/content{query}", headers=headers, key=key)


def expected_seconds(texts: list[str]) -> float:
    """The emulator's audio for these segments, joined with the job's silence."""
    return sum(emu_audio.duration_s(t) for t in texts) + SILENCE_MS / 1000 * (len(texts) - 1)


def decoded_seconds(data: bytes) -> tuple[float, np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    return len(samples) / rate, samples, rate


def synthesized(nodes: list[Any], since: dict[str, int] | None = None) -> list[str]:
    """Texts the nodes were asked to synthesize (after ``since``: each node's log length then)."""
    since = since or {}
    return [body["text"] for node in nodes for path, body in node.requests[since.get(node.url, 0):]
            if path == "/tts_url" and isinstance(body, dict)]
