"""Benchmark of the router's audio path (issue #3): router overhead on a ~20 s clip, and transcoding speed.

    python -m bench.audio_path [--requests N] [--warmup N] [--part all|router|transcode] [--out bench/README.md]

Part 1 starts an emulated index-tts-vllm v2 node (`python -m speech_router.emulator`) and the router
(`speech-router serve --config <temp yaml>`) as separate processes on free 127.0.0.1 ports, then sends
the same requests in turn, one at a time: straight to the node (POST /tts_url), and through the router
(POST /v1/audio/speech) as wav (pass-through), mp3 and opus. Time to first byte is measured until the
first body byte is read.

Part 2 encodes 20 s of espeak speech at 22,050 Hz with `encode_all` and with `make_encoder` fed 100 ms
chunks, pinned to CPU 0, best and median of 5.

Only 127.0.0.1 is ever contacted, the children are stopped however the run ends, and every wait has a
timeout. `--out` rewrites the generated block of that file (between the audio_path markers) in place.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import _procs, transcode
from bench._readme import write_block

TEXT_CHARS = 333  # the emulator speaks 0.06 s per character: 333 -> 19.98 s at 22,050 Hz
REQUEST_TIMEOUT_S = 60.0
MAX_REQUESTS = 500
MAX_RUN_S = 300.0  # hard stop for the router part, whatever --requests says
VOICE = "bench"
SPK_AUDIO_PATH = "/data/voices/bench.wav"  # the emulator accepts any path without "missing" in it
BEGIN, END = "<!-- audio_path:begin -->", "<!-- audio_path:end -->"

ROUTER_YAML = """\
server:
  host: 127.0.0.1
  port: {port}
  log_level: warning   # no access log: one line per request would be measured too
pools:
  gpu:
    type: index-tts-vllm
    api: v2
    endpoints:
      - url: http://127.0.0.1:{node_port}
models:
  indextts2: [gpu]
voices:
  {voice}:
    spk_audio_path: {spk}
"""


def bench_text(chars: int = TEXT_CHARS) -> str:
    sentence = "The quick brown fox jumps over the lazy dog while the router streams every byte. "
    return (sentence * (chars // len(sentence) + 1))[:chars]


@dataclass
class Case:
    name: str
    port: int
    path: str
    body: dict[str, object]
    content_type: str
    ttfb: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    size: int = 0
    audio_s: float = 0.0
    sndfile_s: float = 0.0
    conn: http.client.HTTPConnection | None = None

    def fetch(self) -> tuple[float, float, bytes]:
        """One request on a kept-alive connection: (seconds to first body byte, seconds to last, body)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(_procs.HOST, self.port, timeout=REQUEST_TIMEOUT_S)
        payload = json.dumps(self.body).encode()
        started = time.perf_counter()
        self.conn.request("POST", self.path, body=payload, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        parts = []
        first = None
        while chunk := resp.read1(1 << 16):
            if first is None:
                first = time.perf_counter()
            parts.append(chunk)
        parts.append(resp.read())  # b"", but marks the response done so the connection can be reused
        done = time.perf_counter()
        body = b"".join(parts)
        if resp.status != 200 or first is None:
            raise RuntimeError(f"{self.name}: HTTP {resp.status}: {body[:300]!r}")
        if not resp.getheader("Content-Type", "").startswith(self.content_type):
            raise RuntimeError(f"{self.name}: content type {resp.getheader('Content-Type')!r}")
        return first - started, done - started, body


def decoded_seconds(data: bytes) -> tuple[float, float]:
    """(seconds FFmpeg decodes, seconds libsndfile reads): a sanity check that the whole clip arrived.

    Both are shown because they disagree on streamed mp3: it is VBR without a Xing/LAME frame, so
    libsndfile estimates its length from the first frame's bitrate and stops reading there.
    """
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as f:
        read = sum(len(block) for block in f.blocks(blocksize=1 << 16, dtype="int16"))
        by_sndfile = read / f.samplerate
    try:
        import av
    except ImportError:
        return float("nan"), by_sndfile
    with av.open(io.BytesIO(data), "r") as container:
        stream = container.streams.audio[0]
        samples: int = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.rate, by_sndfile


def run_router_part(requests: int, warmup: int, log: Callable[[str], None]) -> list[Case]:
    text = bench_text()
    with _procs.stopped_on_exit() as (children, log_dir):
        node, node_port = _procs.start_node(log_dir)
        children.append(node)
        router_port = _procs.free_port()
        yaml = ROUTER_YAML.format(port=router_port, node_port=node_port, voice=VOICE, spk=SPK_AUDIO_PATH)
        children.append(_procs.start_router(yaml, router_port, log_dir))
        log(f"node on :{node_port}, router on :{router_port} (pid {children[-1].proc.pid})")
        speech = {"model": "indextts2", "input": text, "voice": VOICE}
        cases = [
            Case("direct to node, wav", node_port, "/tts_url",
                 {"text": text, "spk_audio_path": SPK_AUDIO_PATH, "emo_control_method": 0}, "audio/wav"),
            Case("router, wav (pass-through)", router_port, "/v1/audio/speech",
                 {**speech, "response_format": "wav"}, "audio/wav"),
            Case("router, mp3", router_port, "/v1/audio/speech", {**speech, "response_format": "mp3"}, "audio/mpeg"),
            Case("router, opus", router_port, "/v1/audio/speech", {**speech, "response_format": "opus"}, "audio/ogg"),
        ]
        deadline = time.monotonic() + MAX_RUN_S
        try:
            for i in range(warmup + requests):
                for case in cases:  # interleaved, so drift on the machine hits every case alike
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the router part ran over {MAX_RUN_S:.0f} s; use fewer --requests")
                    ttfb, total, body = case.fetch()
                    if i < warmup:
                        case.size = len(body)
                        case.audio_s, case.sndfile_s = decoded_seconds(body)
                        continue
                    case.ttfb.append(ttfb)
                    case.total.append(total)
                for child in children:
                    child.check_alive()
        finally:
            for case in cases:
                if case.conn is not None:
                    case.conn.close()
    return cases


def pct(values: Sequence[float], q: float) -> float:
    """Percentile with linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def signed_ms(seconds: float) -> str:
    return f"{seconds * 1000:+.1f}"


def router_table(cases: list[Case]) -> str:
    direct = cases[0]
    rows = [
        "| path | p50 TTFB ms | p95 TTFB ms | p50 total ms | p95 total ms | TTFB added vs direct, p50 / p95 ms "
        "| body | decoded by FFmpeg / libsndfile |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c in cases:
        added = "-" if c is direct else (f"{signed_ms(pct(c.ttfb, .5) - pct(direct.ttfb, .5))} / "
                                         f"{signed_ms(pct(c.ttfb, .95) - pct(direct.ttfb, .95))}")
        rows.append(f"| {c.name} | {ms(pct(c.ttfb, .5))} | {ms(pct(c.ttfb, .95))} | {ms(pct(c.total, .5))} "
                    f"| {ms(pct(c.total, .95))} | {added} | {c.size / 1000:.0f} kB "
                    f"| {c.audio_s:.2f} s / {c.sndfile_s:.2f} s |")
    return "\n".join(rows)


def router_verdict(cases: list[Case], target_s: float = 0.020) -> str:
    added = pct(cases[1].ttfb, .5) - pct(cases[0].ttfb, .5)
    added95 = pct(cases[1].ttfb, .95) - pct(cases[0].ttfb, .95)
    ok = added < target_s and added95 < target_s
    word = "met" if ok else "MISSED"
    return (f"Target (router adds < {target_s * 1000:.0f} ms to TTFB for pass-through): **{word}**: "
            f"{signed_ms(added)} ms at p50, {signed_ms(added95)} ms at p95.")


def machine_info() -> str:
    model = _procs.cpu_model()
    return (f"{datetime.date.today().isoformat()}; nproc {os.cpu_count()}; CPU {model}; "
            f"Python {platform.python_version()} ({platform.system()} {platform.machine()})")


def source_info() -> str:
    """The commit measured, and whether the tree had uncommitted changes (read-only git calls)."""
    import subprocess

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=_procs.REPO, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "not a git checkout"
    dirty = [line for line in git("status", "--porcelain").splitlines() if not line[3:].startswith("bench/")]
    return f"commit {commit}" + (f" with {len(dirty)} uncommitted changes" if dirty else "")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.audio_path", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=30, help=f"measured requests per case (1..{MAX_REQUESTS})")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured requests per case first (at least 1)")
    p.add_argument("--repeats", type=int, default=5, help="transcoding runs per measurement (1..50)")
    p.add_argument("--part", choices=["all", "router", "transcode"], default="all")
    p.add_argument("--out", type=Path, default=None, help="also write the results into this markdown file")
    args = p.parse_args(argv)
    if not 1 <= args.requests <= MAX_REQUESTS or not 1 <= args.warmup <= 50 or not 1 <= args.repeats <= 50:
        p.error(f"--requests must be 1..{MAX_REQUESTS}, --warmup and --repeats 1..50")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    command = "python -m bench.audio_path " + " ".join(argv if argv is not None else sys.argv[1:])
    sections = [f"Command: `{command.strip()}`  \nMachine: {machine_info()}  \nCode: {source_info()}"]
    started = time.monotonic()
    if args.part in ("all", "router"):
        log(f"router part: {args.warmup} warm-up + {args.requests} measured requests per case")
        cases = run_router_part(args.requests, args.warmup, log)
        sections.append(
            f"### Router overhead, {cases[0].audio_s:.2f} s clip ({TEXT_CHARS} characters), "
            f"{args.requests} sequential requests per case after {args.warmup} warm-ups\n\n"
            f"{router_table(cases)}\n\n{router_verdict(cases)}"
        )
    if args.part in ("all", "transcode"):
        log(f"transcode part: best and median of {args.repeats}, pinned to CPU 0")
        result = transcode.run(args.repeats)
        sections.append(transcode.table(result))
        sections.append(transcode.opus_table(args.repeats))
    sections.append(f"Wall time of the run: {time.monotonic() - started:.0f} s.")
    report = "\n\n".join(sections)
    print(report)
    if args.out is not None:
        write_block(args.out, report, begin=BEGIN, end=END, section="## Audio path (issue #3)")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
