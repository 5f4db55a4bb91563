"""Pieces of the vllm-omni fleet benchmark (`bench.omni_fleet`): emulated nodes, open-loop load, summaries.

Nodes are `python -m speech_router.emulator --api vllm-omni` (one process, one thread per node), steered
through their control API. Load is an open-loop Poisson process: each request is sent at its scheduled
time whether or not earlier ones finished, to a router replica picked at random (as a Kubernetes Service
would), and its latency counts from the scheduled time. Every request has a client timeout.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench._previous import RouterImpl
from bench._procs import HOST, START_TIMEOUT_S, Child

_OMNI_LINE = re.compile(rb"^\S+ \(vllm-omni\): http://127\.0\.0\.1:(\d+)$", re.MULTILINE)
WORDS = ("the quick brown fox jumps over a lazy dog while seven bright voices read long stories about "
         "rivers mountains cities and the quiet sound of rain on old windows").split()


def start_omni_nodes(log_dir: Path, n: int, impl: RouterImpl, *, name: str = "omni", slots: int, delay: float,
                     delay_per_char: float) -> tuple[Child, list[int]]:
    """``n`` emulated vllm-omni nodes in one process (of ``impl``'s code); returns it and their ports once all
    printed their URL."""
    argv = [sys.executable, "-m", "speech_router.emulator", "--api", "vllm-omni", "--host", HOST, "--port", "0",
            "--nodes", str(n), "--slots", str(slots), "--delay", str(delay), "--delay-per-char", str(delay_per_char),
            "--name-prefix", name]
    child = Child(argv, log_dir, name, env=impl.env or None, cwd=impl.cwd)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        ports = [int(p) for p in _OMNI_LINE.findall(child.log.read_bytes())]
        if len(ports) == n:
            return child, ports
        child.check_alive()
        time.sleep(0.05)
    child.stop()
    raise RuntimeError(f"the emulated vllm-omni nodes did not start in {START_TIMEOUT_S:.0f} s:\n{child.tail()}")


def set_knobs(port: int, **knobs: object) -> None:
    req = urllib.request.Request(f"http://{HOST}:{port}/_emulator/config", data=json.dumps(knobs).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()


def node_metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name):
                return float(line.split()[-1])
    return math.nan


def wait_idle(ports: Sequence[int], timeout: float = 60.0) -> None:
    """Until no node has a request running or waiting (the previous run's stragglers are done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(node_metric(p, "vllm_omni:num_requests_running") + node_metric(p, "vllm_omni:num_requests_waiting")
               == 0 for p in ports):
            return
        time.sleep(0.2)


@dataclass
class Sample:
    due: float
    latency: float
    outcome: str


@dataclass
class Load:
    """One open-loop run: ``rate`` requests a second for ``duration`` seconds, to ``urls`` picked at random."""

    urls: list[str]
    rate: float
    duration: float
    voices: list[str]
    voice_weights: list[float] | None = None
    model: str = "omni"
    min_chars: int = 20
    max_chars: int = 120
    timeout: float = 30.0
    seed: int = 1
    samples: list[Sample] = field(default_factory=list)

    async def run(self) -> list[Sample]:
        rng = random.Random(self.seed)
        arrivals: list[tuple[float, str, str, str]] = []
        t = 0.0
        while True:
            t += rng.expovariate(self.rate)
            if t >= self.duration:
                break
            chars = rng.randint(self.min_chars, self.max_chars)
            text = " ".join(rng.choice(WORDS) for _ in range(chars // 4))[:chars] or "hello"
            voice = rng.choices(self.voices, weights=self.voice_weights)[0]
            arrivals.append((t, rng.choice(self.urls), voice, text))
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
            t0 = time.perf_counter()
            tasks = []
            for due, url, voice, text in arrivals:
                delay = t0 + due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self._one(session, url, voice, text, due, t0)))
            self.samples = list(await asyncio.gather(*tasks))
        return self.samples

    async def _one(self, session: aiohttp.ClientSession, url: str, voice: str, text: str, due: float,
                   t0: float) -> Sample:
        body = {"model": self.model, "voice": voice, "input": text, "response_format": "wav"}
        try:
            async with session.post(url + "/v1/audio/speech", json=body) as resp:
                data = await resp.read()
                outcome = "ok" if resp.status == 200 and data.startswith(b"RIFF") else f"http_{resp.status}"
        except (TimeoutError, asyncio.TimeoutError):
            outcome = "client_timeout"
        except aiohttp.ClientError as exc:
            outcome = type(exc).__name__
        return Sample(due, time.perf_counter() - t0 - due, outcome)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def summary(samples: Sequence[Sample]) -> dict[str, object]:
    ok = [s.latency for s in samples if s.outcome == "ok"]
    errors = Counter(s.outcome for s in samples if s.outcome != "ok")
    return {"requests": len(samples), "errors": sum(errors.values()), "error_kinds": dict(errors),
            "mean": sum(ok) / len(ok) if ok else math.nan, "p50": percentile(ok, 50), "p90": percentile(ok, 90),
            "p99": percentile(ok, 99), "max": max(ok) if ok else math.nan}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
