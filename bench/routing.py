"""`python -m bench.routing`: the routing benchmark of issue #4, three scenarios, one markdown report.

a. Heterogeneous fleet: 4 nodes x 4 slots at speeds 1, 1, 0.5, 0.25; service time (50 ms + 2 ms x chars)
   / speed x lognormal(0, 0.3); texts of 20-400 characters; Poisson load at 70% of the fleet's capacity
   for 60 s, 30 s client time-out; policies round_robin, least_outstanding and full (the `latency` policy).
b. Failover at 50% load: one node goes down (connection refused) at a third of the run, another hangs
   (accepts, never answers) at two thirds; full policy and least_outstanding.
c. Router overhead: one instant node answering a 240 KB WAV; direct, through nginx and through the
   router, closed loop at concurrency 1, 16 and 64.

Each run gets a fresh fleet (`python -m bench.fleet`) and a fresh router (`speech-router serve --config
<temp yaml>`), on 127.0.0.1 only; the load generator (`bench.loadgen`) runs in this process. Every child
is stopped however the run ends (normal exit, error, Ctrl-C, SIGTERM). About 10 minutes for everything.

    python -m bench.routing                       # everything, writes bench/results/routing.md
    python -m bench.routing --scenario a --duration 20 --out /tmp/routing.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._procs import Child, free_port, stopped_on_exit
from bench._routing_env import (POLICIES, CpuMeter, FleetProc, RouterProc, by_label, fleet_argv, histogram_quantile,
                                metrics_delta, router_yaml, start_fleet, start_router, wait_quiet)
from bench._routing_overhead import run_overhead
from bench._routing_report import write_report
from bench.loadgen import LoadConfig, LoadResult, percentile, run_load

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "routing.md"
FLEET = {"nodes": 4, "slots": 4, "speeds": [1.0, 1.0, 0.5, 0.25], "base_ms": 50.0, "per_char_ms": 2.0, "sigma": 0.3}
CHARS = (20, 400)


def capacity(fleet: dict[str, Any], chars: tuple[int, int] = CHARS) -> float:
    """Requests a second the fleet serves at 100%: sum of slots x speed / mean service time at speed 1.

    The mean service time at speed 1 is (base + per_char x mean chars) x E[lognormal(0, sigma)], and
    E[lognormal(0, sigma)] = exp(sigma^2 / 2).
    """
    mean_chars = (chars[0] + chars[1]) / 2
    mean_s = (fleet["base_ms"] + fleet["per_char_ms"] * mean_chars) / 1000 * math.exp(fleet["sigma"] ** 2 / 2)
    return sum(fleet["slots"] * s for s in fleet["speeds"]) / mean_s


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bench:
    """Shared settings and the child list of one `python -m bench.routing` invocation."""

    def __init__(self, args: argparse.Namespace, children: list[Child], log_dir: Path) -> None:
        self.args = args
        self.children = children
        self.log_dir = log_dir
        self.fleet_args = fleet_argv(nodes=FLEET["nodes"], slots=FLEET["slots"], speeds=FLEET["speeds"],
                                     base_ms=FLEET["base_ms"], per_char_ms=FLEET["per_char_ms"],
                                     sigma=FLEET["sigma"], seed=args.seed)

    def run(self, tag: str, policy: str, rate: float, events: Sequence[tuple[float, str, dict[str, Any]]] = ()
            ) -> dict[str, Any]:
        """Fresh fleet and router; warm-up (not measured); the measured run with its fleet events."""
        args = self.args
        fleet = start_fleet(self.children, self.log_dir, f"fleet-{tag}", self.fleet_args)
        config = router_yaml(fleet.nodes, POLICIES[policy])
        router = start_router(self.children, self.log_dir, f"router-{tag}", config, free_port())
        try:
            background = wait_quiet(args.quiet_wait)
            if args.warmup > 0:
                warm = LoadConfig(url=router.url, rate=rate, duration=args.warmup, timeout=args.timeout,
                                  seed=args.seed + 1000)
                asyncio.run(run_load(warm))
            load = LoadConfig(url=router.url, rate=rate, duration=args.duration, timeout=args.timeout,
                              seed=args.seed)
            groups = {"router": [router.child.proc.pid], "fleet": [fleet.child.proc.pid], "loadgen": [os.getpid()]}
            result, cpu, snapshots = asyncio.run(_measured(load, fleet, router, events, groups))
            delta = metrics_delta(snapshots[0], snapshots[-1])
            health = _json(router.url + "/health")
            state = fleet.state()
        finally:
            router.child.stop()
            fleet.child.stop()
        summary = result.summary()
        log(f"  {tag}: {summary['count']} requests, {summary['errors']} errors {summary['error_kinds'] or ''}, "
            f"p50 {summary['p50'] * 1000:.0f} ms, p99 {summary['p99'] * 1000:.0f} ms")
        return {"policy": policy, "rate": rate, "summary": summary, "cpu": cpu, "background": background,
                "load_command": load.command(),
                "router_config": config, "fleet_argv": fleet.argv, "events": list(events),
                "phases": _phases(result, [t for t, _, _ in events]), "metrics": _router_stats(delta),
                "by_node": _by_node(result), "queue_waits": _queue_waits(snapshots),
                "endpoints": {e["name"]: {"state": e["state"], "breaker": e["breaker"], "latency": e["latency"]}
                              for e in health.get("endpoints", [])},
                "nodes": {n["name"]: {k: n[k] for k in ("served", "failed", "hung")} for n in state["nodes"]}}


async def _measured(load: LoadConfig, fleet: FleetProc, router: RouterProc,
                    events: Sequence[tuple[float, str, dict[str, Any]]], groups: dict[str, list[int]]
                    ) -> tuple[LoadResult, dict[str, float], list[dict[Any, float]]]:
    """The load, the fleet's events at their times, CPU use over the sending period, and the router's metrics
    when each event happens and when sending ends (for per-phase queue waits)."""
    meter = CpuMeter(groups)
    cpu: dict[str, float] = {}
    snapshots = [await asyncio.to_thread(router.metrics)]

    async def timeline() -> None:
        t0 = time.monotonic()
        for at, node, changes in events:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            await asyncio.to_thread(fleet.configure, node, changes)
            snapshots.append(await asyncio.to_thread(router.metrics))
            log(f"    t={at:.0f}s: {node} {changes}")
        await asyncio.sleep(max(0.0, t0 + load.duration - time.monotonic()))
        cpu.update(meter.stop())

    result, _ = await asyncio.gather(run_load(load), timeline())
    snapshots.append(await asyncio.to_thread(router.metrics))
    return result, cpu, snapshots


def _queue_waits(snapshots: list[dict[Any, float]]) -> list[dict[str, float]]:
    """Mean and p99 bucket of the router's queue wait between consecutive snapshots."""
    out = []
    for before, after in zip(snapshots, snapshots[1:]):
        delta = metrics_delta(before, after)
        count = sum(v for (n, _), v in delta.items() if n == "speech_router_queue_wait_seconds_count")
        total = sum(v for (n, _), v in delta.items() if n == "speech_router_queue_wait_seconds_sum")
        out.append({"mean": total / count if count else math.nan,
                    "p99_bucket": histogram_quantile(delta, "speech_router_queue_wait_seconds", 0.99)})
    return out


def _phases(result: LoadResult, cuts: list[float]) -> list[dict[str, Any]]:
    if not cuts:
        return []
    edges = [0.0, *cuts, math.inf]
    return [{"from": a, "to": b if b != math.inf else result.config.duration, **result.summary(a, b)}
            for a, b in zip(edges, edges[1:])]


def _by_node(result: LoadResult) -> dict[str, Any]:
    """Who served the successful requests, how long they took there, and who served the slowest 1%."""
    ok = [s for s in result.samples if s.outcome == "ok"]
    out: dict[str, Any] = {}
    for node in sorted({s.served_by for s in ok}):
        mine = [s for s in ok if s.served_by == node]
        out[node] = {"count": len(mine), "mean_chars": sum(s.chars for s in mine) / len(mine),
                     "p50": percentile([s.latency for s in mine], 50), "p99": percentile([s.latency for s in mine], 99)}
    tail = sorted(ok, key=lambda s: s.latency)[-max(1, len(ok) // 100):]
    return {"nodes": out, "slowest_1pct": {n: sum(1 for s in tail if s.served_by == n) for n in out if
                                           any(s.served_by == n for s in tail)},
            "slowest_1pct_mean_chars": sum(s.chars for s in tail) / len(tail) if tail else math.nan}


def _router_stats(delta: dict[Any, float]) -> dict[str, Any]:
    wait_count = sum(v for (n, _), v in delta.items() if n == "speech_router_queue_wait_seconds_count")
    wait_sum = sum(v for (n, _), v in delta.items() if n == "speech_router_queue_wait_seconds_sum")
    return {
        "picks": {k[0]: v for k, v in by_label(delta, "speech_router_endpoint_picks_total", "endpoint").items()},
        "attempts": {f"{k[0]} {k[1]}": v for k, v in
                     by_label(delta, "speech_router_endpoint_attempts_total", "endpoint", "outcome").items()},
        "retries": {k[0]: v for k, v in by_label(delta, "speech_router_retries_total", "reason").items()},
        "retries_denied": sum(by_label(delta, "speech_router_retries_denied_total", "pool").values()),
        "breaker": {f"{k[0]} {k[1]}->{k[2]}": v for k, v in by_label(
            delta, "speech_router_breaker_transitions_total", "endpoint", "from_state", "to_state").items()},
        "queue_rejections": {k[0]: v for k, v in
                             by_label(delta, "speech_router_queue_rejections_total", "reason").items()},
        "queue_wait_mean": wait_sum / wait_count if wait_count else math.nan,
        "queue_wait_p99_bucket": histogram_quantile(delta, "speech_router_queue_wait_seconds", 0.99),
        "panics": sum(by_label(delta, "speech_router_panic_picks_total", "pool").values()),
        "statuses": {k[0]: v for k, v in by_label(delta, "speech_router_requests_total", "status").items()},
    }


def _json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.load(resp)
    except OSError as exc:
        if hasattr(exc, "read"):
            return json.loads(exc.read())
        return {}


def scenario_a(bench: Bench) -> dict[str, Any]:
    rate = bench.args.load_a * capacity(FLEET)
    log(f"a: heterogeneous fleet, {rate:.2f} req/s ({bench.args.load_a:.0%} of {capacity(FLEET):.2f})")
    runs = {p: bench.run(f"a-{p}", p, rate) for p in bench.args.policies_a}
    return {"rate": rate, "capacity": capacity(FLEET), "load": bench.args.load_a, "runs": runs}


def scenario_b(bench: Bench) -> dict[str, Any]:
    args = bench.args
    rate = args.load_b * capacity(FLEET)
    events = [(args.duration / 3, args.down_node, {"down": True}),
              (2 * args.duration / 3, args.hang_node, {"hang": True})]
    lost = {args.down_node, args.hang_node}
    left = capacity({**FLEET, "speeds": [s for i, s in enumerate(FLEET["speeds"]) if f"node{i}" not in lost]})
    log(f"b: failover, {rate:.2f} req/s ({args.load_b:.0%}); {args.down_node} down and {args.hang_node} hangs")
    runs = {p: bench.run(f"b-{p}", p, rate, events) for p in args.policies_b}
    return {"rate": rate, "capacity": capacity(FLEET), "capacity_left": left, "load": args.load_b, "runs": runs,
            "events": events}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=["all", "a", "b", "c"], action="append",
                   help="run only these (repeatable; default all)")
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds of a and b runs (default 60)")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds of load before each a/b run")
    p.add_argument("--timeout", type=float, default=30.0, help="client time-out, seconds (default 30)")
    p.add_argument("--load-a", type=float, default=0.7, help="scenario a load, share of capacity (default 0.7)")
    p.add_argument("--load-b", type=float, default=0.5, help="scenario b load, share of capacity (default 0.5)")
    p.add_argument("--policies-a", default="round_robin,least_outstanding,full",
                   type=lambda s: [x for x in s.split(",") if x],
                   help=f"scenario a policies, comma-separated, from: {', '.join(POLICIES)}")
    p.add_argument("--policies-b", default="full,least_outstanding", type=lambda s: [x for x in s.split(",") if x])
    p.add_argument("--down-node", default="node3", help="scenario b: the node that goes down (default node3)")
    p.add_argument("--hang-node", default="node0", help="scenario b: the node that hangs (default node0)")
    p.add_argument("--overhead-duration", type=float, default=10.0, help="seconds per scenario c run (default 10)")
    p.add_argument("--sustained", type=int, default=4,
                   help="scenario c: this many back-to-back runs at concurrency 16 on one router (default 4; 0: none)")
    p.add_argument("--concurrency", default="1,16,64", type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--nginx-workers", type=int, default=1, help="nginx worker_processes in scenario c (default 1)")
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="before each measurement, wait up to this many seconds for the machine to be under 25%% busy "
                        "(other work on a shared machine); 0: do not wait (default 20)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report (default bench/results/routing.md)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # the children are stopped already
        return 130


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    scenarios = set(args.scenario or ["all"])
    if "all" in scenarios:
        scenarios = {"a", "b", "c"}
    unknown = (set(args.policies_a) | set(args.policies_b)) - set(POLICIES)
    if unknown:
        raise SystemExit(f"unknown policies {sorted(unknown)}; known: {sorted(POLICIES)}")
    started = time.monotonic()
    results: dict[str, Any] = {}
    with stopped_on_exit() as (children, log_dir):
        bench = Bench(args, children, log_dir)
        if "a" in scenarios:
            results["a"] = scenario_a(bench)
        if "b" in scenarios:
            results["b"] = scenario_b(bench)
        if "c" in scenarios:
            log("c: router overhead")
            results["c"] = run_overhead(children, log_dir, duration=args.overhead_duration,
                                        concurrencies=args.concurrency, nginx_workers=args.nginx_workers,
                                        quiet_wait=args.quiet_wait, sustained=args.sustained, log=log)
    wall = time.monotonic() - started
    command = "python -m bench.routing" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    write_report(args.out, results, command=command, wall_s=wall, fleet=FLEET, chars=CHARS, args=vars(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    log(f"wrote {args.out} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
