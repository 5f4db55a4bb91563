"""`python -m bench.loadgen`: speech requests at a router (or a node) on this machine, and what came back.

Two modes:

- `--mode poisson --rate R`: open loop. Arrivals are a Poisson process of R requests a second, sent
  whether or not earlier ones have finished (as independent clients do). Latency is measured from the
  *scheduled* arrival, so a client that falls behind cannot hide queueing (no coordinated omission).
- `--mode closed --concurrency C`: C clients, each sending its next request when the last one ends.

Requests are OpenAI `POST /v1/audio/speech` (`--api openai`, default; `--model`, `--voice`, `--format`)
or index-tts-vllm's `POST /tts_url` (`--api tts_url`, `--spk-audio-path`), with texts of uniformly random
length in [--min-chars, --max-chars] (default 20-400). A request fails on an HTTP status other than 200,
on a body that is not the asked audio, on a connection error, or when it takes longer than `--timeout`
seconds in total (the client gives up: "client_timeout").

Runs are bounded: no request is scheduled after `--duration` seconds nor beyond `--max-requests`
(default: twice the expected count), and every request is abandoned after `--timeout`. Traffic goes
only to a loopback address (127.0.0.1, ::1, localhost): run it on the router's host.

Example, against your own router config (a model and voice it serves):

    python -m bench.loadgen --url http://127.0.0.1:8000 --model indextts2 --voice alloy \\
        --mode poisson --rate 10 --duration 60 --timeout 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
WORDS = ("the quick brown fox jumps over a lazy dog while seven bright voices read long stories about "
         "rivers mountains cities and the quiet sound of rain on old windows").split()
AUDIO_MAGIC = {"wav": b"RIFF", "flac": b"fLaC", "mp3": b"", "opus": b"OggS", "aac": b"", "pcm": b""}


@dataclass
class LoadConfig:
    """One load run; every field has a command-line flag of the same name."""

    url: str
    api: str = "openai"
    mode: str = "poisson"
    rate: float = 10.0
    concurrency: int = 16
    duration: float = 60.0
    timeout: float = 30.0
    max_requests: int | None = None
    min_chars: int = 20
    max_chars: int = 400
    model: str = "indextts2"
    voice: str = "alloy"
    format: str = "wav"
    spk_audio_path: str = "/data/voices/alloy.wav"
    connections: int = 1000
    seed: int = 1

    def expected_requests(self) -> int:
        if self.mode == "poisson":
            return math.ceil(self.rate * self.duration)
        return 0

    def request_cap(self) -> int:
        if self.max_requests is not None:
            return self.max_requests
        if self.mode == "poisson":
            return 2 * self.expected_requests() + 100
        return 10_000_000

    def command(self) -> str:
        """The equivalent command line."""
        args = [f"--url {self.url}", f"--api {self.api}", f"--mode {self.mode}"]
        args.append(f"--rate {self.rate:g}" if self.mode == "poisson" else f"--concurrency {self.concurrency}")
        args += [f"--duration {self.duration:g}", f"--timeout {self.timeout:g}", f"--seed {self.seed}"]
        if (self.min_chars, self.max_chars) != (20, 400):
            args.append(f"--min-chars {self.min_chars} --max-chars {self.max_chars}")
        if self.api == "openai":
            args.append(f"--model {self.model} --voice {self.voice} --format {self.format}")
        return "python -m bench.loadgen " + " ".join(args)


@dataclass
class Sample:
    """One request: when it was due (seconds from the start), how long it took, and how it ended."""

    due: float
    latency: float
    outcome: str
    chars: int
    served_by: str = ""
    body_bytes: int = 0


@dataclass
class LoadResult:
    config: LoadConfig
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    max_lag_s: float = 0.0

    def summary(self, since: float = 0.0, until: float = math.inf) -> dict[str, Any]:
        return summarize([s for s in self.samples if since <= s.due < until], self)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def summarize(samples: Sequence[Sample], result: LoadResult | None = None) -> dict[str, Any]:
    ok = [s.latency for s in samples if s.outcome == "ok"]
    everything = [s.latency for s in samples]
    errors = Counter(s.outcome for s in samples if s.outcome != "ok")
    window = 0.0
    if samples:
        window = max(s.due + s.latency for s in samples) - min(s.due for s in samples)
    out: dict[str, Any] = {
        "count": len(samples), "ok": len(ok), "errors": sum(errors.values()), "error_kinds": dict(errors),
        "p50": percentile(ok, 50), "p90": percentile(ok, 90), "p99": percentile(ok, 99),
        "p99_all": percentile(everything, 99), "mean": sum(ok) / len(ok) if ok else math.nan,
        "rps": len(ok) / window if window > 0 else math.nan,
        "served_by": dict(Counter(s.served_by for s in samples if s.outcome == "ok")),
    }
    if result is not None:
        out.update(wall_s=result.wall_s, client_cpu_s=result.cpu_s, max_lag_s=result.max_lag_s)
    return out


class TextSource:
    """Texts of exact lengths cut from random words, reproducible from a seed."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.corpus = " ".join(rng.choice(WORDS) for _ in range(4000))

    def text(self, chars: int) -> str:
        start = self.rng.randrange(0, len(self.corpus) - chars)
        return self.corpus[start:start + chars].strip().ljust(chars, "a")


def _request(config: LoadConfig, text: str) -> tuple[str, dict[str, Any]]:
    base = config.url.rstrip("/")
    if config.api == "tts_url":
        return base + "/tts_url", {"text": text, "spk_audio_path": config.spk_audio_path}
    return base + "/v1/audio/speech", {"model": config.model, "input": text, "voice": config.voice,
                                       "response_format": config.format}


def _classify(exc: BaseException) -> str:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, aiohttp.ServerTimeoutError)):
        return "client_timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_error"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, ConnectionError)):
        return "disconnected"
    return f"error:{type(exc).__name__}"


async def _one(session: aiohttp.ClientSession, config: LoadConfig, text: str, due: float, t0: float) -> Sample:
    url, body = _request(config, text)
    magic = AUDIO_MAGIC.get(config.format if config.api == "openai" else "wav", b"")
    served_by = ""
    size = 0
    try:
        async with session.post(url, json=body) as resp:
            data = await resp.read()
            size = len(data)
            served_by = resp.headers.get("x-speech-router-endpoint") or resp.headers.get("x-emulator-node", "")
            if resp.status != 200:
                outcome = f"http_{resp.status}"
            elif not data or not data.startswith(magic):
                outcome = "invalid_audio"
            else:
                outcome = "ok"
    except Exception as exc:  # noqa: BLE001 - every failure is a data point, classified
        outcome = _classify(exc)
    return Sample(due, time.perf_counter() - t0 - due, outcome, len(text), served_by, size)


async def run_load(config: LoadConfig) -> LoadResult:
    """Send the load described by ``config``; every request has ended (or been abandoned) on return."""
    host = urlsplit(config.url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"bench.loadgen only sends to a loopback address, not {host!r}")
    result = LoadResult(config)
    timeout = aiohttp.ClientTimeout(total=config.timeout)
    connector = aiohttp.TCPConnector(limit=config.connections, limit_per_host=config.connections)
    cpu0 = _cpu()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
        t0 = time.perf_counter()
        if config.mode == "poisson":
            await _open_loop(session, config, t0, result)
        elif config.mode == "closed":
            await _closed_loop(session, config, random.Random(config.seed), TextSource(random.Random(config.seed + 1)),
                               t0, result)
        else:
            raise ValueError(f"unknown mode {config.mode!r}; expected poisson or closed")
        result.wall_s = time.perf_counter() - t0
    result.cpu_s = _cpu() - cpu0
    result.samples.sort(key=lambda s: s.due)
    return result


def plan(config: LoadConfig) -> Iterator[tuple[float, str]]:
    """The open loop's requests as `run_load` sends them, (due seconds from the start, text): a pure function of
    the config (its seed, rate, duration and lengths), so a benchmark can know them without sending anything."""
    rng = random.Random(config.seed)
    texts = TextSource(random.Random(config.seed + 1))
    due = 0.0
    for _ in range(config.request_cap()):
        due += rng.expovariate(config.rate)
        if due >= config.duration:
            return
        yield due, texts.text(rng.randint(config.min_chars, config.max_chars))


async def _open_loop(session: aiohttp.ClientSession, config: LoadConfig, t0: float, result: LoadResult) -> None:
    tasks: set[asyncio.Task[Sample]] = set()

    def done(task: asyncio.Task[Sample]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            result.samples.append(task.result())

    for due, text in plan(config):
        delay = t0 + due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            result.max_lag_s = max(result.max_lag_s, -delay)
        task = asyncio.create_task(_one(session, config, text, due, t0))
        tasks.add(task)
        task.add_done_callback(done)
    if tasks:  # each request gives up after config.timeout by itself; this wait is a second bound
        await asyncio.wait(set(tasks), timeout=config.timeout + 10)
    for task in list(tasks):
        task.cancel()


async def _closed_loop(session: aiohttp.ClientSession, config: LoadConfig, rng: random.Random, texts: TextSource,
                       t0: float, result: LoadResult) -> None:
    cap = config.request_cap()
    started = 0

    async def client() -> None:
        nonlocal started
        while time.perf_counter() - t0 < config.duration and started < cap:
            started += 1
            text = texts.text(rng.randint(config.min_chars, config.max_chars))
            result.samples.append(await _one(session, config, text, time.perf_counter() - t0, t0))

    await asyncio.gather(*(client() for _ in range(config.concurrency)))


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def format_summary(s: dict[str, Any]) -> str:
    ms = lambda v: "-" if v != v else f"{v * 1000:.1f}"  # noqa: E731 - NaN-safe milliseconds
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(s["error_kinds"].items())) or "none"
    lines = [f"requests {s['count']}  ok {s['ok']}  errors {s['errors']} ({kinds})",
             f"latency ms (ok): p50 {ms(s['p50'])}  p90 {ms(s['p90'])}  p99 {ms(s['p99'])}  "
             f"(p99 of all, failures at their time: {ms(s['p99_all'])})",
             f"throughput: {s['rps']:.1f} ok responses/s"]
    if "wall_s" in s:
        lines.append(f"wall {s['wall_s']:.1f} s, client CPU {s['client_cpu_s']:.1f} s, "
                     f"worst scheduling lag {s['max_lag_s'] * 1000:.1f} ms")
    if s["served_by"]:
        lines.append("served by: " + ", ".join(f"{k or '?'}: {v}" for k, v in sorted(s["served_by"].items())))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = LoadConfig(url="")
    p.add_argument("--url", required=True, help="base URL, e.g. http://127.0.0.1:8000 (loopback only)")
    p.add_argument("--api", choices=["openai", "tts_url"], default=d.api)
    p.add_argument("--mode", choices=["poisson", "closed"], default=d.mode)
    p.add_argument("--rate", type=float, default=d.rate, help="poisson: requests per second")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="closed: clients")
    p.add_argument("--duration", type=float, default=d.duration, help="seconds during which requests are sent")
    p.add_argument("--timeout", type=float, default=d.timeout, help="client time-out per request, seconds")
    p.add_argument("--max-requests", type=int, default=None)
    p.add_argument("--min-chars", type=int, default=d.min_chars)
    p.add_argument("--max-chars", type=int, default=d.max_chars)
    p.add_argument("--model", default=d.model)
    p.add_argument("--voice", default=d.voice)
    p.add_argument("--format", default=d.format, help="response_format (openai api)")
    p.add_argument("--spk-audio-path", default=d.spk_audio_path, help="tts_url api: reference path on the node")
    p.add_argument("--connections", type=int, default=d.connections, help="client connection pool size")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", default=None, help="also write the summary and every sample to this file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = args.__dict__.pop("json")
    config = LoadConfig(**vars(args))
    if not 0 < config.min_chars <= config.max_chars:
        raise SystemExit("need 0 < --min-chars <= --max-chars")
    try:
        result = asyncio.run(run_load(config))
    except ValueError as exc:
        print(f"bench.loadgen: {exc}", file=sys.stderr)
        return 2
    summary = result.summary()
    print(format_summary(summary))
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"config": asdict(config), "summary": summary, "samples": [asdict(s) for s in result.samples]},
                      f, indent=1)
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
