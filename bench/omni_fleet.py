"""`python -m bench.omni_fleet`: what load signals and voice affinity buy on a vllm-omni fleet (issue #13).

- `--part load`: two router replicas share four emulated vllm-omni nodes (`--slots` engine slots each, no
  admission control, as vllm-omni); clients pick a replica at random. Load signals off vs on (each replica
  reads the nodes' running + waiting requests every `--intervals` s), at `--load` of the fleet's capacity.
  p50/p99 latency and errors. Rounds alternate off/on on the same nodes, with fresh routers each round.
- `--part affinity`: one router, four nodes whose first use of a voice costs `--first-use` s more (speaker
  conditioning) and which keep `--speaker-cache` voices (LRU); `--voices` voices of Zipf popularity. Voice
  affinity off vs on: mean latency and the voices the nodes had to condition. Fresh nodes every round.

Loopback only, bounded (each run has a duration, each request a timeout), children always stopped.
`--out bench/README.md` rewrites the generated block there.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import yaml

from bench._omni_load import Load, load_average, node_metric, set_knobs, start_omni_nodes, summary, wait_idle
from bench._previous import RouterImpl, router_at
from bench._procs import Child, cpu_model, free_port, start_router, stopped_on_exit
from bench._readme import write_block

BEGIN, END = "<!-- omni_fleet:begin -->", "<!-- omni_fleet:end -->"
SECTION = "## vllm-omni fleet: load signals and voice affinity (issue #13)"
NODES = 4
MEAN_CHARS = 70  # texts of 20-120 characters


def reference(path: Path, hz: float) -> str:
    t = np.arange(24_000) / 16_000
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sign(np.sin(2 * np.pi * hz * t))).astype(np.float32), 16_000, format="WAV",
             subtype="PCM_16")
    path.write_bytes(buf.getvalue())
    return str(path)


def router_yaml(ports: list[int], voices: dict[str, str], *, max_concurrency: int, load_signal: dict[str, Any],
                affinity: bool = True) -> str:
    config = {
        "server": {"access_log": False, "watch_config": False, "log_level": "warning"},
        "pools": {"omni": {"type": "vllm-omni", "endpoints": [{"url": f"http://127.0.0.1:{p}"} for p in ports],
                           "max_concurrency": max_concurrency, "health_check": {"interval": 2.0, "timeout": 2.0},
                           "queue": {"timeout": 20}, "load_signal": load_signal,
                           "balancer": {"voice_affinity": affinity}}},
        "models": {"omni": {"pools": ["omni"], "fanout": {"enabled": False}}},
        "voices": {name: {"ref_audio_file": path} for name, path in voices.items()},
    }
    return yaml.safe_dump(config)


def code(args: argparse.Namespace, log_dir: Path) -> RouterImpl:
    """Which speech_router the routers and nodes run: ``--rev`` exported (a snapshot, while others edit the
    working tree), or ``--router-src``, a copy of the source tree (experiments with the scheduler)."""
    src = args.router_src
    if src is None:
        return router_at(args.rev, log_dir / "export")
    return RouterImpl(f"source copy {src}", [sys.executable, "-m", "speech_router.cli"], {"PYTHONPATH": str(src)},
                      src, str(src), "copy")


def routers(impl: RouterImpl, children: list[Child], log_dir: Path, config: str, n: int,
            tag: str) -> tuple[list[Child], list[str]]:
    """``n`` router replicas serving ``config``."""
    started, urls = [], []
    for i in range(n):
        port = free_port()
        child = start_router(config, port, log_dir, name=f"router-{tag}-{i}", command=impl.command, env=impl.env,
                             cwd=impl.cwd)
        children.append(child)
        started.append(child)
        urls.append(f"http://127.0.0.1:{port}")
    return started, urls


def capacity(args: argparse.Namespace) -> float:
    """Requests a second the fleet finishes when every slot is busy (voices already conditioned)."""
    return NODES * args.slots / (args.delay + args.delay_per_char * MEAN_CHARS)


def affinity_rate(args: argparse.Namespace) -> float:
    return args.affinity_load * capacity(args)


def measure(args: argparse.Namespace, urls: list[str], rate: float, voices: list[str], seed: int,
            weights: list[float] | None = None, ports: Sequence[int] = ()) -> tuple[list[Any], float]:
    """A warm-up run, then the measured one: its samples, and the voices the nodes conditioned meanwhile."""
    asyncio.run(Load(urls, rate, args.warmup, voices, voice_weights=weights, seed=seed + 1000).run())
    before = sum(node_metric(p, "emulator_speaker_cache_misses_total") for p in ports)
    got = asyncio.run(Load(urls, rate, args.duration, voices, voice_weights=weights, seed=seed).run())
    return got, sum(node_metric(p, "emulator_speaker_cache_misses_total") for p in ports) - before


def run_load(args: argparse.Namespace, impl: RouterImpl, children: list[Child],
             log_dir: Path) -> dict[str, dict[str, Any]]:
    rate = args.load * capacity(args)
    node_proc, ports = start_omni_nodes(log_dir, NODES, impl, slots=args.slots, delay=args.delay,
                                        delay_per_char=args.delay_per_char)
    children.append(node_proc)
    voices = {"alloy": reference(log_dir / "alloy.wav", 180)}
    variants: dict[str, dict[str, Any]] = {"off": {"enabled": False}}
    variants |= {f"on, every {iv:g} s": {"enabled": True, "interval": iv} for iv in args.intervals}
    samples: dict[str, list[Any]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for i, (name, signal) in enumerate(variants.items()):
            wait_idle(ports)
            config = router_yaml(ports, voices, max_concurrency=args.slots, load_signal=signal)
            started, urls = routers(impl, children, log_dir, config, 2, f"load{i}-{round_}")
            samples[name] += measure(args, urls, rate, list(voices), seed=round_ + 1)[0]
            for child in started:
                child.stop()
            print(f"load round {round_ + 1}/{args.rounds} signals {name}: {summary(samples[name])}", file=sys.stderr)
    node_proc.stop()
    return {name: {**summary(got), "rate": rate, "capacity": capacity(args)} for name, got in samples.items()}


def run_affinity(args: argparse.Namespace, impl: RouterImpl, children: list[Child],
                 log_dir: Path) -> dict[str, dict[str, Any]]:
    voices = [f"v{i:02d}" for i in range(args.voices)]
    files = {name: reference(log_dir / f"{name}.wav", 120 + 17 * i) for i, name in enumerate(voices)}
    weights = [1 / (i + 1) ** args.zipf for i in range(args.voices)]
    samples: dict[str, list[Any]] = {"off": [], "on": []}
    misses: dict[str, float] = {"off": 0.0, "on": 0.0}
    for round_ in range(args.rounds):
        for name in ("off", "on"):
            node_proc, ports = start_omni_nodes(log_dir, NODES, impl, name=f"aff-{name}{round_}-",
                                                slots=args.slots, delay=args.delay,
                                                delay_per_char=args.delay_per_char)
            children.append(node_proc)
            for port in ports:  # fresh nodes: every speaker cache starts empty
                set_knobs(port, speaker_first_use_s=args.first_use, speaker_cache=args.speaker_cache)
            config = router_yaml(ports, files, max_concurrency=args.slots, load_signal={"enabled": False},
                                 affinity=name == "on")
            started, urls = routers(impl, children, log_dir, config, 1, f"aff-{name}{round_}")
            got, missed = measure(args, urls, affinity_rate(args), voices, round_ + 1, weights, ports)
            samples[name] += got
            misses[name] += missed
            for child in [*started, node_proc]:
                child.stop()
            print(f"affinity round {round_ + 1}/{args.rounds} {name}: {summary(samples[name])}", file=sys.stderr)
    return {name: {**summary(got), "misses": misses[name], "rate": affinity_rate(args)}
            for name, got in samples.items()}


def ms(value: object) -> str:
    return "-" if not isinstance(value, float) or math.isnan(value) else f"{value * 1000:.0f}"


def report(args: argparse.Namespace, impl: RouterImpl, load: dict[str, Any] | None, affinity: dict[str, Any] | None,
           before: str, after: str, seconds: float) -> str:
    lines = [f"Run on {cpu_model()} ({impl.label}), load average before {before}, after {after}; {seconds:.0f} s.",
             "",
             f"Command: `{' '.join(['python -m bench.omni_fleet', *sys.argv[1:]])}`", ""]
    if load:
        rate, most = load["off"]["rate"], load["off"]["capacity"]
        lines += [f"### Load signals: 2 replicas, {NODES} nodes x {args.slots} slots, {rate:.1f} req/s "
                  f"({args.load:.0%} of {most:.1f}), {args.rounds} x {args.duration:g} s per variant",
                  "", "| load signals | requests | errors | p50 ms | p90 ms | p99 ms | max ms |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in load.items():
            lines.append(f"| {name} | {r['requests']} | {r['errors']} | {ms(r['p50'])} | {ms(r['p90'])} | "
                         f"{ms(r['p99'])} | {ms(r['max'])} |")
        lines.append("")
    if affinity:
        lines += [f"### Voice affinity: 1 router, {NODES} nodes x {args.slots} slots, {args.voices} voices "
                  f"(Zipf {args.zipf:g}), first use +{args.first_use:g} s, {args.speaker_cache} voices cached per "
                  f"node, {affinity_rate(args):.1f} req/s ({args.affinity_load:.0%}), {args.rounds} x "
                  f"{args.duration:g} s per variant", "",
                  "| voice affinity | requests | errors | mean ms | p50 ms | p99 ms | voices conditioned |",
                  "|---|---|---|---|---|---|---|"]
        for name in ("off", "on"):
            r = affinity[name]
            lines.append(f"| {name} | {r['requests']} | {r['errors']} | {ms(r['mean'])} | {ms(r['p50'])} | "
                         f"{ms(r['p99'])} | {r['misses']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.omni_fleet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "load", "affinity"], default="all")
    p.add_argument("--rounds", type=int, default=2, help="rounds per variant, alternating (default 2)")
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds per round (default 60)")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds of load before each measured round")
    p.add_argument("--slots", type=int, default=4, help="engine slots per node (vllm-omni's max_num_seqs, 4)")
    p.add_argument("--delay", type=float, default=1.0, help="node latency, fixed part (s)")
    p.add_argument("--delay-per-char", type=float, default=0.01, help="node latency per character (s)")
    p.add_argument("--load", type=float, default=0.7, help="load part: share of the fleet's capacity")
    p.add_argument("--intervals", type=lambda v: [float(x) for x in v.split(",")], default=[1.0, 0.25],
                   help="load part: seconds between load reads, one variant each (default 1,0.25)")
    p.add_argument("--voices", type=int, default=24, help="affinity part: voices in use")
    p.add_argument("--zipf", type=float, default=1.0, help="affinity part: popularity exponent")
    p.add_argument("--first-use", type=float, default=0.3, help="affinity part: extra seconds on a voice's first use")
    p.add_argument("--speaker-cache", type=int, default=8, help="affinity part: voices each node keeps")
    p.add_argument("--affinity-load", type=float, default=0.5, help="affinity part: share of the fleet's capacity")
    p.add_argument("--rev", default="HEAD", help="the commit whose code runs (exported); `worktree`: the working tree")
    p.add_argument("--router-src", type=Path, default=None,
                   help="run the routers from this copy of the source tree (experiments with the scheduler)")
    p.add_argument("--out", type=Path, default=None, help="write the results into this README")
    args = p.parse_args(argv)
    if args.duration * args.rounds > 600:
        p.error("--duration x --rounds is capped at 600 s per variant")
    before, started = load_average(), time.monotonic()
    parts: dict[str, Callable[..., dict[str, Any]]] = {"load": run_load, "affinity": run_affinity}
    results: dict[str, dict[str, Any] | None] = {"load": None, "affinity": None}
    with stopped_on_exit() as (children, log_dir):
        impl = code(args, log_dir)
        for name, run in parts.items():
            if args.part in ("all", name):
                results[name] = run(args, impl, children, log_dir)
    block = report(args, impl, results["load"], results["affinity"], before, load_average(),
                   time.monotonic() - started)
    print(block)
    if args.out is not None:
        write_block(args.out, block, begin=BEGIN, end=END, section=SECTION)


if __name__ == "__main__":
    main()
