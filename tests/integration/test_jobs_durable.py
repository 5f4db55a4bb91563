"""Jobs outlive the router: `speech-router serve` killed with SIGKILL mid-job and started again resumes the job
and synthesizes only the segments that were not done; finished jobs are deleted with their audio once they
expire."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import yaml

from speech_router.jobs.sqlite import SqliteJobStore
from tests.client import call
from tests.integration.jobs import (
    JOBS,
    book,
    content,
    decoded_seconds,
    expected_seconds,
    jobs_config,
    segments,
    submit,
    synthesized,
    wait,
)
from tests.processes import free_port, stop

START_S = 30.0


def serve(config: Path, port: int) -> subprocess.Popen[bytes]:
    """`speech-router serve` as a process, once it answers."""
    proc = subprocess.Popen([sys.executable, "-m", "speech_router.cli", "serve", "--config", str(config),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=1):
                return proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the router did not start"
            time.sleep(0.1)


def done_texts(directory: Path, job_id: str, cut: list[str]) -> set[str]:
    """The segments the store says are done (read as the next router will read them)."""
    async def read() -> set[str]:
        store = SqliteJobStore(directory)
        try:
            return {cut[s.index] for s in await store.done(job_id)}
        finally:
            await store.aclose()

    return asyncio.run(read())


def test_a_job_survives_sigkill_and_redoes_no_finished_segment(nodes, tmp_path):
    fleet = [nodes(name=f"n{i}", delay_s=0.1) for i in range(3)]
    jobs_dir = tmp_path / "jobs"
    config = tmp_path / "speech-router.yaml"
    config.write_text(yaml.safe_dump({**jobs_config(jobs_dir, *(n.url for n in fleet)),
                                      "server": {"log_format": "json"}}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    text = book(90)
    cut = segments(text)
    proc = serve(config, port)
    try:
        job = submit(url, {"input": text, "response_format": "wav"})
        wait(url, job["id"], lambda j: j["progress"]["segments_done"] >= len(cut) // 3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        stop(proc)
    before = done_texts(jobs_dir, job["id"], cut)
    assert len(cut) // 3 <= len(before) < len(cut)
    since = {n.url: len(n.requests) for n in fleet}
    proc = serve(config, port)
    try:
        done = wait(url, job["id"])
        assert done["status"] == "succeeded", done
        reply = content(url, job["id"])
    finally:
        stop(proc)
    after = synthesized(fleet, since)
    assert after, "the restarted router did the rest"
    assert not before & set(after), "a segment done before the kill was synthesized again"
    assert set(cut) <= before | set(after)
    assert Counter(after)[cut[-1]] == 1
    assert reply.status == 200
    assert abs(decoded_seconds(reply.body)[0] - expected_seconds(cut)) < 0.01


def test_an_ended_job_expires_and_its_audio_is_deleted(nodes, router, tmp_path):
    node = nodes(name="n0")
    srv = router(jobs_config(tmp_path, node.url, jobs={"result_ttl": 1.0}))
    job = submit(srv.url, {"input": book(3), "response_format": "wav"})
    done = wait(srv.url, job["id"])
    assert done["status"] == "succeeded" and done["expires_at"] == done["finished_at"] + 1.0
    assert content(srv.url, job["id"]).status == 200 and (tmp_path / job["id"]).is_dir()
    deadline = time.monotonic() + 30
    while (tmp_path / job["id"]).exists() or call(srv.url + JOBS).json()["data"]:  # the sweep, not a lookup
        assert time.monotonic() < deadline, "the expired job was never deleted"
        time.sleep(0.1)
    assert call(f"{srv.url}{JOBS}/{job['id']}").status == 404
    assert content(srv.url, job["id"]).status == 404
