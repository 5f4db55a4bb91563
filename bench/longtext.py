"""Long text (issue #7): one node against fan-out through the router, and repeated requests from the cache.

    python -m bench.longtext [--repeats N] [--hits N] [--part all|fanout|cache] [--out bench/README.md]

Starts an emulated fleet of 4 index-tts-vllm v2 nodes (`python -m bench.fleet`, one GPU slot each, working
through a long text piece by piece like IndexTTS2; the latency model is in `bench/_speech_model.py` and
its numbers in `REAL` below) and the router (`speech-router serve --config <temp yaml>`), on free
127.0.0.1 ports. For a 20-sentence Chinese and a 20-sentence English text (`bench/data/`), each repeat
sends, one request at a time:

- the whole text straight to one node (`POST /tts_url`): the single-node time;
- the router's first segment alone to the same node: what the router's time to first byte waits for;
- the whole text through the router (`POST /v1/audio/speech`, streamed), as wav and as mp3, and as wav
  once more through a pool of the same nodes left at the router's defaults (no max_concurrency set: the
  issue #11 target row);
- the same default pool on the previous router (`--previous-rev`, a406d86: the routing policy before issue
  #11, exported with `git archive` and started from there, see `bench._previous`), as wav.

The router's queue waits (from its /metrics) are reported too. The cache part sends a model with
`cache: true` the same long text over and over on one kept-alive connection and times the hits, then a
text made of the same sentences in another order (a new text whose segments are all cached), then the
text again on a second fleet whose audio is as long as real speech (hits send 20x the bytes). Every wait
has a timeout, the run stops after `MAX_RUN_S`, and the children are stopped however it ends. `--out`
rewrites only the block between the longtext markers.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import _longtext_report as report
from bench import _procs
from bench._previous import PREVIOUS_REV, RouterImpl, export, router_at
from bench._readme import write_block
from bench._routing_env import parse_metrics, start_fleet
from bench._speech_model import SpeechModel
from speech_router.config.models import FanoutConfig
from speech_router.text.segment import split_segments

DATA = Path(__file__).resolve().parent / "data"
NODES = 4
REQUEST_TIMEOUT_S = 60.0
MAX_RUN_S = 300.0
VOICE, SPK_AUDIO_PATH = "bench", "/data/voices/bench.wav"
CACHE_HEADER = "x-speech-router-cache"

#: A real IndexTTS2 node (index-tts-vllm, one GPU), per piece of at most 120 tokens: a fixed 0.4 s (the
#: prompt-sized s2mel and GPT work every piece repeats) plus 0.3 s per second of speech made (GPT codes
#: at 50 per second, 25 diffusion steps, BigVGAN); speech runs 0.22 s per Chinese character (~4.5 per
#: second) and 0.065 s per character of English (~155 words a minute); 200 ms of silence between pieces.
REAL = {"base_s": 0.4, "rtf": 0.3, "audio_s_per_char": 0.065, "audio_s_per_wide_char": 0.22, "gap_s": 0.2,
        "max_tokens": 120}
#: everything in time runs this many times faster than on the GPU (the audio is as much shorter), so a
#: text that takes a real node ~40 s takes ~2 s here and the whole run about a minute
SCALE = 20
JITTER_SIGMA = 0.1  # lognormal spread of each piece's time (sampling makes speech longer or shorter)
#: fan-out as configured for the run: the defaults, with the silence between segments scaled like the audio
FANOUT = FanoutConfig(silence_ms=round(1000 * REAL["gap_s"] / SCALE))


def scaled_model() -> SpeechModel:
    r = REAL
    return SpeechModel(base_s=r["base_s"] / SCALE, per_char_s=r["rtf"] * r["audio_s_per_char"] / SCALE,
                       per_wide_char_s=r["rtf"] * r["audio_s_per_wide_char"] / SCALE, max_tokens=int(r["max_tokens"]),
                       audio_s_per_char=r["audio_s_per_char"] / SCALE,
                       audio_s_per_wide_char=r["audio_s_per_wide_char"] / SCALE, gap_s=r["gap_s"] / SCALE)


def real_length_audio(model: SpeechModel) -> SpeechModel:
    """The same timing, with audio as long as real speech: what a cache hit sends in real life."""
    return dataclasses.replace(model, audio_s_per_char=REAL["audio_s_per_char"],
                               audio_s_per_wide_char=REAL["audio_s_per_wide_char"], gap_s=REAL["gap_s"])


def fleet_args(model: SpeechModel) -> list[str]:
    return ["--nodes", str(NODES), "--slots", "1", "--base-ms", f"{model.base_s * 1000:g}",
            "--per-char-ms", f"{model.per_char_s * 1000:g}", "--per-wide-char-ms", f"{model.per_wide_char_s * 1000:g}",
            "--max-tokens", str(model.max_tokens), "--audio-ms-per-char", f"{model.audio_s_per_char * 1000:g}",
            "--audio-ms-per-wide-char", f"{model.audio_s_per_wide_char * 1000:g}",
            "--gap-ms", f"{model.gap_s * 1000:g}", "--jitter-sigma", f"{JITTER_SIGMA:g}"]


def load_texts() -> dict[str, str]:
    """name -> text: the sentences of each data file, joined as they would be written."""
    zh = (DATA / "longtext_zh.txt").read_text(encoding="utf-8").split()
    en = (DATA / "longtext_en.txt").read_text(encoding="utf-8").splitlines()
    return {"Chinese": "".join(zh), "English": " ".join(line.strip() for line in en if line.strip())}


def default_pool_yaml(nodes: dict[str, str]) -> str:
    """Only the 4 nodes as pool `gpu4` at the router's defaults and its model: what the previous router gets
    (the same pool and model as in `router_yaml`, in keys both routers' schemas take)."""
    settings = yaml.safe_load(router_yaml(nodes, {}))
    settings["pools"] = {"gpu4": settings["pools"]["gpu4"]}
    settings["models"] = {"indextts2-gpu4": settings["models"]["indextts2-gpu4"]}
    return yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)


def router_yaml(nodes: dict[str, str], full_nodes: dict[str, str]) -> str:
    """The 4 nodes as pool `gpu` with max_concurrency 1 (their one slot: the router never queues on a busy
    node), and again as pool `gpu4` at the router's defaults (no max_concurrency: the default 4 is the bound,
    the current router learns the rest), the issue #11 target; a model for each, and a cached one. The
    nodes that send real-length audio are pool `gpu_full`, with a cached model."""
    fanout = FANOUT.model_dump()
    full_fanout = {**fanout, "silence_ms": round(1000 * REAL["gap_s"])}

    def pool(members: dict[str, str], suffix: str, **limits: int) -> dict[str, Any]:
        endpoints = [{"url": url, "name": name + suffix} for name, url in members.items()]
        return {"type": "index-tts-vllm", "api": "v2", **limits, "endpoints": endpoints}

    settings = {
        "server": {"host": _procs.HOST, "log_level": "warning"},
        "pools": {"gpu": pool(nodes, "", max_concurrency=1), "gpu4": pool(nodes, "-c4"),
                  "gpu_full": pool(full_nodes, "-full", max_concurrency=1)},
        "models": {"indextts2": {"pools": ["gpu"], "fanout": fanout},
                   "indextts2-cached": {"pools": ["gpu"], "fanout": fanout, "cache": True},
                   "indextts2-gpu4": {"pools": ["gpu4"], "fanout": fanout},
                   "indextts2-cached-full": {"pools": ["gpu_full"], "fanout": full_fanout, "cache": True}},
        "voices": {VOICE: {"spk_audio_path": SPK_AUDIO_PATH}},
    }
    return yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)


@dataclass
class Timed:
    ttfb: float
    total: float
    body: bytes
    headers: dict[str, str]


class Client:
    """Sequential POSTs on one kept-alive connection, timing the first and the last body byte."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: dict[str, Any], content_type: str = "audio/") -> Timed:
        payload = json.dumps(body).encode()
        for fresh in (self.conn is None, True):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(_procs.HOST, self.port, timeout=REQUEST_TIMEOUT_S)
            started = time.perf_counter()
            try:
                self.conn.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
                resp = self.conn.getresponse()
                break
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                # the server closed the idle kept-alive connection before this request (uvicorn's default idle
                # time-out is 5 s, which the previous router keeps): once more on a new connection
                self.conn.close()
                self.conn = None
                if fresh:
                    raise
        parts, first = [], None
        while chunk := resp.read1(1 << 16):
            first = first or time.perf_counter()
            parts.append(chunk)
        parts.append(resp.read())  # marks the response done, so the connection is reused
        done = time.perf_counter()
        data = b"".join(parts)
        if resp.status != 200 or first is None or not (resp.getheader("Content-Type") or "").startswith(content_type):
            raise RuntimeError(f"POST :{self.port}{path}: HTTP {resp.status} {resp.getheader('Content-Type')}: "
                               f"{data[:300]!r}")
        return Timed(first - started, done - started, data, {k.lower(): v for k, v in resp.getheaders()})

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@dataclass
class Case:
    """One kind of request for one text, and what each repeat measured."""

    text: str
    path: str
    send: Callable[[], Timed]
    ttfb: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    #: totals of the warm-up rounds (not measured; they show what is learned)
    warm: list[float] = field(default_factory=list)
    last: Timed | None = None

    def run(self, measured: bool) -> None:
        self.last = self.send()
        if measured:
            self.ttfb.append(self.last.ttfb)
            self.total.append(self.last.total)


def speech(client: Client, model: str, text: str, fmt: str) -> Callable[[], Timed]:
    body = {"model": model, "input": text, "voice": VOICE, "response_format": fmt}
    return lambda: client.post("/v1/audio/speech", body, "audio/mpeg" if fmt == "mp3" else "audio/wav")


def direct(client: Client, text: str) -> Callable[[], Timed]:
    body = {"text": text, "spk_audio_path": SPK_AUDIO_PATH, "emo_control_method": 0}
    return lambda: client.post("/tts_url", body, "audio/wav")


#: the row of the default-config pool, the target of issue #11, and the same on the previous router
DEFAULT_ROW = "router fan-out, wav, default config (no max_concurrency set)"
PREVIOUS_ROW = "previous router ({rev}), fan-out, wav, default config"


def fanout_cases(texts: dict[str, str], node: Client, router: Client, previous: tuple[str, Client] | None = None
                 ) -> list[Case]:
    cases = []
    for name, text in texts.items():
        first = split_segments(text, max_chars=FANOUT.max_segment_chars, min_chars=FANOUT.min_segment_chars)[0]
        cases += [Case(name, "single node, whole text", direct(node, text)),
                  Case(name, "single node, router's segment 1 alone", direct(node, first)),
                  Case(name, "router fan-out, wav", speech(router, "indextts2", text, "wav")),
                  Case(name, "router fan-out, mp3", speech(router, "indextts2", text, "mp3")),
                  Case(name, DEFAULT_ROW, speech(router, "indextts2-gpu4", text, "wav"))]
        if previous is not None:
            rev, client = previous
            cases.append(Case(name, PREVIOUS_ROW.format(rev=rev), speech(client, "indextts2-gpu4", text, "wav")))
    return cases


def repeated(send: Callable[[], Timed], count: int, deadline: float) -> list[Timed]:
    """``count`` requests after 3 unmeasured ones; only 3 when those were not cache hits (each is a synthesis)."""
    warm = [send() for _ in range(3)]
    if any(t.headers.get(CACHE_HEADER) != "hit" for t in warm):
        count = 3
    timed = []
    for _ in range(count):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the run went over {MAX_RUN_S:.0f} s; use fewer --hits")
        timed.append(send())
    return timed


def run_cache(text: str, router: Client, hits: int, deadline: float) -> list[tuple[str, list[Timed]]]:
    """(what was sent, the timed answers): a long text once and repeated, as wav and then as mp3, then the
    same sentences in another order (a new text whose segments are all cached), cached and not; then the
    text on nodes that send audio as long as real speech (20x the bytes), once and repeated."""
    wav, mp3 = speech(router, "indextts2-cached", text, "wav"), speech(router, "indextts2-cached", text, "mp3")
    full = speech(router, "indextts2-cached-full", text, "wav")
    sentences = split_segments(text, max_chars=FANOUT.max_segment_chars, min_chars=FANOUT.min_segment_chars)
    reordered = " ".join(sentences[1::2] + sentences[0::2])
    return [("wav, first request", [wav()]),
            ("wav, repeated", repeated(wav, hits, deadline)),
            ("mp3 of the same text, first request (its segments are cached)", [mp3()]),
            ("mp3, repeated", repeated(mp3, hits, deadline)),
            (f"wav, the same {len(sentences)} sentences in another order (segments cached)",
             [speech(router, "indextts2-cached", reordered, "wav")()]),
            ("wav, that reordered text on model `indextts2` (no cache), for comparison",
             [speech(router, "indextts2", reordered, "wav")()]),
            ("real-length audio: wav, first request", [full()]),
            ("real-length audio: wav, repeated", repeated(full, hits, deadline))]


def endpoints_view(port: int) -> list[dict[str, Any]]:
    """What the router's /health says of each endpoint: served, learned limit and latency (what it has learned)."""
    with urllib.request.urlopen(f"http://{_procs.HOST}:{port}/health", timeout=10) as resp:
        health = json.load(resp)
    keys = ("name", "pool", "served", "concurrency_limit", "latency")
    return [{k: e.get(k) for k in keys} for e in health.get("endpoints", []) if e.get("pool") in ("gpu", "gpu4")]


def queue_waits(port: int) -> dict[str, tuple[float, float, float]]:
    """Per pool, from the router's metrics: (segments that got a slot, those that waited over 5 ms, seconds waited)."""
    with urllib.request.urlopen(f"http://{_procs.HOST}:{port}/metrics", timeout=10) as resp:
        samples = parse_metrics(resp.read().decode())
    waits: dict[str, tuple[float, float, float]] = {}
    for (name, labels), value in samples.items():
        pool = dict(labels).get("pool", "")
        if name == "speech_router_queue_wait_seconds_count":
            quick = samples.get(("speech_router_queue_wait_seconds_bucket", tuple(sorted({**dict(labels),
                                                                                          "le": "0.005"}.items()))), 0)
            total = samples.get(("speech_router_queue_wait_seconds_sum", labels), 0.0)
            waits[pool] = (value, value - quick, total)
    return waits


def run(repeats: int, hits: int, part: str, log: Callable[[str], None], *, warmup: int = 1,
        previous_rev: str | None = PREVIOUS_REV, current_rev: str = "HEAD") -> dict[str, Any]:
    texts = load_texts()
    model = scaled_model()
    results: dict[str, Any] = {"texts": texts, "model": model, "repeats": repeats, "hits": hits, "warmup": warmup}
    deadline = time.monotonic() + MAX_RUN_S
    with _procs.stopped_on_exit() as (children, log_dir):
        fleet = start_fleet(children, log_dir, "fleet", fleet_args(model))
        full = start_fleet(children, log_dir, "fleet-full", fleet_args(real_length_audio(model)) + ["--seed", "11"])
        port = _procs.free_port()
        config = router_yaml(fleet.nodes, full.nodes)
        current: RouterImpl = router_at(current_rev, log_dir / "current-router")
        results["current"] = {"label": current.label, "package": current.package}
        children.append(_procs.start_router(config, port, log_dir, ready=("/readyz", "/health"),
                                            command=current.command, env=current.env or None, cwd=current.cwd))
        node_port = int(next(iter(fleet.nodes.values())).rsplit(":", 1)[1])
        log(f"fleet {list(fleet.nodes)} and router ({current.label}, speech_router from {current.package}) on :{port}")
        node, router = Client(node_port), Client(port)
        previous: tuple[str, Client] | None = None
        if previous_rev and part in ("all", "fanout"):
            impl: RouterImpl = export(previous_rev, log_dir / "previous-router")
            prev_port = _procs.free_port()
            children.append(_procs.start_router(default_pool_yaml(fleet.nodes), prev_port, log_dir,
                                                name="router-previous", ready=("/readyz", "/health"),
                                                command=impl.command, env=impl.env, cwd=impl.cwd))
            previous = (impl.rev, Client(prev_port))
            results["previous"] = {"rev": impl.rev, "package": impl.package, "port": prev_port}
            log(f"previous router ({impl.label}, speech_router from {impl.package}) on :{prev_port}")
        try:
            if part in ("all", "fanout"):
                cases = fanout_cases(texts, node, router, previous)
                for i in range(warmup + repeats):  # warm-up rounds: connections, the router's latency estimates
                    if i == warmup:
                        before = queue_waits(port)
                    for case in cases:  # interleaved, so drift on the machine hits every case alike
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"the run went over {MAX_RUN_S:.0f} s; use fewer --repeats")
                        case.run(measured=i >= warmup)
                        if i < warmup and case.last is not None:
                            case.warm.append(case.last.total)
                    for child in children:
                        child.check_alive()
                    log(f"fan-out: round {i + 1} of {warmup + repeats} done" + (" (warm-up)" if i < warmup else ""))
                results["cases"] = cases
                results["learned"] = {"current": endpoints_view(port)}
                if previous is not None:
                    results["learned"]["previous"] = endpoints_view(results["previous"]["port"])
                after = queue_waits(port)
                results["queue"] = {pool: [a - b for a, b in zip(after[pool], before.get(pool, (0, 0, 0)), strict=True)]
                                    for pool in after}
            if part in ("all", "cache"):
                results["cache"] = run_cache(texts["English"], router, hits, deadline)
                log("cache: done")
        finally:
            node.close()
            router.close()
            if previous is not None:
                previous[1].close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.longtext", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="measured rounds of the fan-out part (1..20)")
    p.add_argument("--hits", type=int, default=200, help="measured cache hits (10..2000)")
    p.add_argument("--part", choices=["all", "fanout", "cache"], default="all")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured rounds of the fan-out part first (0..5, default 1)")
    p.add_argument("--current-rev", default="HEAD",
                   help="the commit whose router runs (exported with git archive: one version for the whole run, "
                        "whatever happens in the working tree meanwhile; default HEAD); 'worktree': the installed one")
    p.add_argument("--previous-rev", default=PREVIOUS_REV,
                   help=f"also run the default-config row on the router of this commit (default {PREVIOUS_REV}); "
                        "'none': do not")
    p.add_argument("--out", type=Path, default=None, help="also write the results into this markdown file")
    args = p.parse_args(argv)
    if not 1 <= args.repeats <= 20 or not 10 <= args.hits <= 2000 or not 0 <= args.warmup <= 5:
        p.error("--repeats must be 1..20, --hits 10..2000 and --warmup 0..5")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.monotonic()
    results = run(args.repeats, args.hits, args.part, log, warmup=args.warmup,
                  previous_rev=None if args.previous_rev == "none" else args.previous_rev,
                  current_rev=args.current_rev)
    command = "python -m bench.longtext " + " ".join(argv if argv is not None else sys.argv[1:])
    block = report.render(results, command=command.strip(), wall_s=time.monotonic() - started, real=REAL,
                          scale=SCALE, sigma=JITTER_SIGMA, fanout=FANOUT, nodes=NODES)
    print(block)
    if args.out is not None:
        write_block(args.out, block, begin=report.BEGIN, end=report.END, section=report.SECTION)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
