"""`python -m bench.replicas`: router replicas sharing a state store (issue #18), against replicas alone and one.

fleet: bench.routing's mixed fleet (4 nodes x 4 slots at speeds 1, 1, 0.5, 0.25; 50 ms + 2 ms per character at speed
   1, lognormal jitter keyed by the text), Poisson load at `--load` (70 %) of its capacity for `--duration` seconds
   through nginx round robin, in front of: one replica; three replicas, each alone; three replicas sharing a
   redis-server (the store). Each on a fresh fleet and fresh routers. Reported: requests, errors, p50 and p99 and
   the p99 over the no-queueing floor (`bench._routing_floor`), the most requests each node held at once beyond
   its 4 slots (queued inside the node, where no other node can take them). Then, on the same routers: how many
   of `4 x 30` requests of a key limited to 30 a minute were admitted (rate-limit accuracy: 1.0 is exact), and the
   cache hit ratio of 60 requests over 10 texts (model `cached`; 50 of 60 is every repeat a hit).
roll: the same load for `--roll-duration` seconds on three replicas (alone, and sharing the store); from
   `--roll-at` seconds each replica in turn is taken out of nginx, stopped (finishing what it has), started again
   and put back: errors, p99 during the roll, and how long each restart took.
hot: what the store costs on the hot path: a router without a store and one with, each in front of one node that
   answers at once, closed loop of 1 and 16 clients, alternating between the two (in a random order each round)
   for `--hot-rounds` rounds of `--hot-duration` s; with a key without a limit (no store call on the request path: what the store costs is the
   background sharing) and with the limited key, whose window is on the store (one call per request; its limit
   set out of reach). Median p50 and router CPU per request, and the median of the rounds' differences.

Every child listens on 127.0.0.1 and is stopped however the run ends; every run is bounded by its duration.

    python -m bench.replicas                  # everything, ~8 minutes; writes bench/results/replicas.md
    python -m bench.replicas --scenario hot --hot-duration 5 --out /tmp/replicas.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench._procs import Child, cpu_model, free_port, stopped_on_exit
from bench._replicas_env import (
    METERED_KEY,
    PER_MINUTE,
    PLAIN_KEY,
    Replicas,
    cache_hits,
    closed_loop,
    node_peaks,
    rate_limited,
    replica_yaml,
    start_store,
)
from bench._routing_env import FleetProc, fleet_argv, proc_cpu, start_fleet
from bench._routing_floor import floor
from bench.loadgen import LoadConfig, LoadResult, percentile, run_load
from bench.routing import FLEET, capacity

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "replicas.md"
SETUPS = {"one": (1, False), "three-alone": (3, False), "three-store": (3, True)}
CACHE_TEXTS, CACHE_REPEATS = 10, 6


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, children: list[Child], log_dir: Path) -> None:
        self.args, self.children, self.log_dir = args, children, log_dir

    def fleet(self, tag: str, spec: dict[str, Any] = FLEET) -> FleetProc:
        return start_fleet(self.children, self.log_dir, f"fleet-{tag}", fleet_argv(
            nodes=spec["nodes"], slots=spec["slots"], speeds=spec["speeds"], base_ms=spec["base_ms"],
            per_char_ms=spec["per_char_ms"], sigma=spec["sigma"], seed=self.args.seed, jitter_by_text=True))

    def replicas(self, tag: str, fleet: FleetProc, count: int, shared: bool) -> Replicas:
        store = start_store(self.children, self.log_dir) if shared else None
        directory = self.log_dir / tag
        directory.mkdir()
        replicas = Replicas(replica_yaml(fleet, store), directory, self.children)
        replicas.start(count)
        return replicas

    def load(self, url: str, duration: float) -> LoadConfig:
        return LoadConfig(url=url, rate=self.args.load * capacity(FLEET), duration=duration, timeout=30.0,
                          seed=self.args.seed)


def summary(result: LoadResult, load: LoadConfig, since: float = 0.0, until: float = float("inf")) -> dict[str, Any]:
    window = [s for s in result.samples if since <= s.due < until]
    ok = [s.latency for s in window if s.outcome == "ok"]
    bottom = floor(load, FLEET, load.seed)
    return {"count": len(window), "errors": len(window) - len(ok), "p50": percentile(ok, 50),
            "p99": percentile(ok, 99), "floor_p99": bottom["p99"],
            "error_kinds": sorted({s.outcome for s in window if s.outcome != "ok"})}


def fleet_run(bench: Bench, setup: str) -> dict[str, Any]:
    count, shared = SETUPS[setup]
    fleet = bench.fleet(setup)
    replicas = bench.replicas(setup, fleet, count, shared)
    try:
        load = bench.load(replicas.url, bench.args.duration)
        result = asyncio.run(run_load(load))
        out = summary(result, load)
        out["beyond_slots"] = node_peaks(fleet)
        out["admitted"] = asyncio.run(rate_limited(replicas.url, 4 * PER_MINUTE))
        texts = [f"Cached sentence number {i} of the replicas' benchmark." for i in range(CACHE_TEXTS)]
        order = [t for t in texts for _ in range(CACHE_REPEATS)]
        random.Random(bench.args.seed).shuffle(order)
        out["hits"], out["lookups"] = asyncio.run(cache_hits(replicas.url, order))
        out["load_command"], out["loadavg"] = load.command(), os.getloadavg()
    finally:
        for child in [*replicas.procs, replicas.nginx, fleet.child]:
            if child is not None:
                child.stop()
    log(f"  {setup}: {out['count']} requests, {out['errors']} errors, p99 {out['p99']:.2f} s "
        f"({out['p99'] / out['floor_p99']:.2f}x floor), beyond slots {out['beyond_slots']}, admitted "
        f"{out['admitted']} of {4 * PER_MINUTE} (limit {PER_MINUTE}), cache {out['hits']}/{out['lookups']}")
    return out


def roll_run(bench: Bench, shared: bool) -> dict[str, Any]:
    args = bench.args
    tag = f"roll-{'store' if shared else 'alone'}"
    fleet = bench.fleet(tag)
    replicas = bench.replicas(tag, fleet, 3, shared)
    restarts: list[float] = []
    try:
        load = bench.load(replicas.url, args.roll_duration)

        async def run() -> tuple[LoadResult, float, float]:
            async def roll() -> tuple[float, float]:
                await asyncio.sleep(args.roll_at)
                begin = time.perf_counter()
                for i in range(3):
                    restarts.append(await asyncio.to_thread(replicas.restart, i))
                return begin, time.perf_counter()

            t0 = time.perf_counter()
            result, (begin, end) = await asyncio.gather(run_load(load), roll())
            return result, begin - t0, end - t0

        result, begin, end = asyncio.run(run())
        out = {"all": summary(result, load), "during": summary(result, load, begin, end), "roll_s": end - begin,
               "restarts": restarts, "load_command": load.command(), "loadavg": os.getloadavg()}
    finally:
        for child in [*replicas.procs, replicas.nginx, fleet.child]:
            if child is not None:
                child.stop()
    log(f"  {tag}: {out['all']['count']} requests, {out['all']['errors']} errors; during the roll "
        f"({out['roll_s']:.0f} s) p99 {out['during']['p99']:.2f} s")
    return out


def hot_run(bench: Bench) -> dict[str, Any]:
    """Both routers run at once; each case alternates between them for `--hot-rounds` rounds (a shared machine's
    load moves under a measurement: alternating puts both sides under the same), reporting the median p50."""
    spec = {"nodes": 1, "slots": 0, "speeds": [1.0], "base_ms": 0.0, "per_char_ms": 0.0, "sigma": 0.0}
    fleet = bench.fleet("hot", spec)
    routers: dict[str, tuple[str, int]] = {}
    results: dict[str, Any] = {}
    rng = random.Random(bench.args.seed)
    try:
        for shared in (False, True):
            store = start_store(bench.children, bench.log_dir) if shared else None
            config = yaml.safe_load(replica_yaml(fleet, store))
            config["server"]["auth"]["keys"][1]["requests_per_minute"] = 10_000_000  # counted, never refused
            config["pools"]["gpu"]["max_concurrency"] = 64
            directory = bench.log_dir / f"hot-{'store' if shared else 'alone'}"
            directory.mkdir()
            replicas = Replicas(yaml.safe_dump(config), directory, bench.children)
            replicas.ports.append(free_port())
            replicas.procs.append(replicas.spawn(0, replicas.ports[0]))
            routers["store" if shared else "alone"] = (f"http://127.0.0.1:{replicas.ports[0]}",
                                                       replicas.procs[0].proc.pid)
        for key, label in ((PLAIN_KEY, "plain"), (METERED_KEY, "limited")):
            for concurrency in (1, 16):
                runs: dict[str, list[dict[str, float]]] = {"alone": [], "store": []}
                order = list(routers.items())
                for _ in range(bench.args.hot_rounds):
                    rng.shuffle(order)  # neither side always first after the other's load
                    for name, (url, pid) in order:
                        asyncio.run(closed_loop(url, key, concurrency, 0.5))  # warm: connections
                        cpu = proc_cpu(pid)
                        got = asyncio.run(closed_loop(url, key, concurrency, bench.args.hot_duration))
                        got["cpu_ms"] = (proc_cpu(pid) - cpu) / max(1, got["count"]) * 1000
                        runs[name].append(got)
                for name, got in runs.items():
                    results[f"{name}:{label}:{concurrency}"] = {
                        "p50": statistics.median(g["p50"] for g in got),
                        "cpu_ms": statistics.median(g["cpu_ms"] for g in got),
                        "errors": sum(g["errors"] for g in got), "count": sum(g["count"] for g in got)}
                added = sorted(b["p50"] - a["p50"] for a, b in zip(runs["alone"], runs["store"], strict=False))
                results[f"added:{label}:{concurrency}"] = {"median": statistics.median(added), "low": added[0],
                                                           "high": added[-1]}
    finally:
        fleet.child.stop()
    results["loadavg"] = os.getloadavg()
    log(f"  hot: {results}")
    return results


def report(results: dict[str, Any], args: argparse.Namespace, command: str, wall: float) -> str:
    lines = ["# Replicas sharing a state store (issue #18)", "", f"Command: `{command}`  ",
             f"Machine: {cpu_model()}, nproc {os.cpu_count()}; load average at the start {results['loadavg'][0]:.2f}, "
             f"at the end {os.getloadavg()[0]:.2f}; wall time {wall:.0f} s; store: "
             f"{results.get('store_binary', 'redis-server')}", ""]
    if "fleet" in results:
        lines += [f"## The mixed fleet at {args.load:.0%} through nginx round robin", "",
                  "| replicas | requests | errors | p50 | p99 | p99 / floor | most held beyond 4 slots, per node | "
                  f"admitted of {4 * PER_MINUTE} (limit {PER_MINUTE}/min) | cache hits (of "
                  f"{CACHE_TEXTS * CACHE_REPEATS}, best {CACHE_TEXTS * (CACHE_REPEATS - 1)}) | load avg |",
                  "|---|--:|--:|--:|--:|--:|---|--:|--:|--:|"]
        for setup, r in results["fleet"].items():
            beyond = ", ".join(f"{v}" for v in r["beyond_slots"].values())
            lines.append(f"| {setup} | {r['count']} | {r['errors']} | {r['p50']:.2f} s | {r['p99']:.2f} s | "
                         f"{r['p99'] / r['floor_p99']:.2f}x | {beyond} | {r['admitted']} "
                         f"({r['admitted'] / PER_MINUTE:.1f}x) | {r['hits']} ({r['hits'] / r['lookups']:.2f}) | "
                         f"{r['loadavg'][0]:.2f} |")
        some = next(iter(results["fleet"].values()))
        lines += ["", f"Floor p99 {some['floor_p99']:.2f} s. Load: `{some['load_command']}` (through nginx).", ""]
    if "roll" in results:
        lines += [f"## A rolling restart of three replicas under the same load (from {args.roll_at:g} s)", "",
                  "| replicas | requests | errors | p99 whole run | p99 during the roll | roll | restarts (s) | "
                  "load avg |", "|---|--:|--:|--:|--:|--:|---|--:|"]
        for key, r in results["roll"].items():
            lines.append(f"| {key} | {r['all']['count']} | {r['all']['errors']} | {r['all']['p99']:.2f} s | "
                         f"{r['during']['p99']:.2f} s | {r['roll_s']:.0f} s | "
                         f"{', '.join(f'{s:.1f}' for s in r['restarts'])} | {r['loadavg'][0]:.2f} |")
        lines.append("")
    if "hot" in results:
        hot = results["hot"]
        lines += ["## The store on the hot path: a request to a node that answers at once", "",
                  f"Median over {args.hot_rounds} alternating rounds of {args.hot_duration:g} s closed loop; "
                  "router CPU per request from /proc.", "",
                  "| key | clients | p50 alone | p50 with the store | added: median of the rounds (lowest, highest) | "
                  "CPU per request alone | with the store |", "|---|--:|--:|--:|--:|--:|--:|"]
        for label in ("plain", "limited"):
            for concurrency in (1, 16):
                a, b = hot[f"alone:{label}:{concurrency}"], hot[f"store:{label}:{concurrency}"]
                d = hot[f"added:{label}:{concurrency}"]
                lines.append(f"| {label} | {concurrency} | {a['p50'] * 1000:.2f} ms | {b['p50'] * 1000:.2f} ms | "
                             f"{d['median'] * 1000:+.2f} ms ({d['low'] * 1000:+.2f}, {d['high'] * 1000:+.2f}) | "
                             f"{a['cpu_ms']:.2f} ms | {b['cpu_ms']:.2f} ms |")
        lines += ["", f"Load average after: {hot['loadavg'][0]:.2f}.", ""]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=["all", "fleet", "roll", "hot"], default="all")
    p.add_argument("--setups", default=",".join(SETUPS), type=lambda s: [x for x in s.split(",") if x])
    p.add_argument("--duration", type=float, default=60.0, help="fleet: measured seconds per setup (default 60)")
    p.add_argument("--load", type=float, default=0.7, help="share of the fleet's capacity (default 0.7)")
    p.add_argument("--roll-duration", type=float, default=45.0)
    p.add_argument("--roll-at", type=float, default=10.0)
    p.add_argument("--hot-duration", type=float, default=2.0)
    p.add_argument("--hot-rounds", type=int, default=7)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--json", type=Path, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.monotonic()
    results: dict[str, Any] = {"loadavg": os.getloadavg()}
    with stopped_on_exit() as (children, log_dir):
        bench = Bench(args, children, log_dir)
        if args.scenario in ("all", "fleet"):
            results["fleet"] = {}
            for setup in args.setups:
                log(f"fleet, {setup}")
                results["fleet"][setup] = fleet_run(bench, setup)
        if args.scenario in ("all", "roll"):
            results["roll"] = {}
            for shared in (False, True):
                log(f"rolling restart, {'store' if shared else 'alone'}")
                results["roll"]["three-store" if shared else "three-alone"] = roll_run(bench, shared)
        if args.scenario in ("all", "hot"):
            log("hot path")
            results["hot"] = hot_run(bench)
    command = "python -m bench.replicas" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    text = report(results, args, command, time.monotonic() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
