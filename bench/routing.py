"""`python -m bench.routing`: the routing benchmarks of issues #4 and #11, one markdown report.

a. Heterogeneous fleet: 4 nodes x 4 slots at speeds 1, 1, 0.5, 0.25; service time (50 ms + 2 ms x chars)
   / speed x lognormal(0, 0.3), the jitter keyed by the text (`bench.fleet --jitter-by-text`); texts of
   20-400 characters; Poisson load at 70% of the fleet's capacity for 60 s, 30 s client time-out. Its p99
   is compared with the no-queueing floor (`bench._routing_floor`): each request's own service time on a
   free speed-1 node, from the same arrivals, texts and jitter seed.
b. Failover at 50% load: one node goes down (connection refused) at a third of the run, another hangs
   (accepts, never answers) at two thirds.
c. Router overhead (issue #4): one instant node answering a 240 KB WAV; direct, through nginx and through
   the router, closed loop at concurrency 1, 16 and 64. Only with `--scenario c` or `all`.
d. Fleet slowdown: the same fleet at 20% load; at a third of the run every node's service time is
   multiplied by `--slow-factor` (4), at two thirds it is back to 1. Errors and breaker states per phase.
e. Node added: 4 nodes of speed 1, the router's config names 3; Poisson load at 80% of those 3; at a third
   of the run the config file gets the 4th and `POST /admin/reload` (admin key) applies it. The new
   node's share of the requests, second by second, against its capacity share (1/4).

Policies compared side by side (`--policies-a` etc.): `full` (the current router, the `latency`
policy at its defaults), `previous` (the router of commit `--previous-rev`, a406d86, the policy before
issue #11, exported with `git archive` into the run's temporary directory and started from there, see
`bench._previous`), `least_outstanding` (the current router, `balancer.policy: least_outstanding` as in
issue #2) and `round_robin`. "Current" is a snapshot of `--current-rev` (HEAD by default) exported the same
way at the start, so one run measures one version of the code while others edit the working tree.

Each run gets a fresh fleet (`python -m bench.fleet`) and a fresh router (`speech-router serve --config
<temp yaml>`), on 127.0.0.1 only; the load generator (`bench.loadgen`) runs in this process. Every child
is stopped however the run ends (normal exit, error, Ctrl-C, SIGTERM). About 15 minutes for a, b, d and e
with 60 s runs; `--duration` shortens them.

    python -m bench.routing                       # a, b, d, e; writes the routing-v2 block of bench/results/routing.md
    python -m bench.routing --scenario a --duration 20 --out /tmp/routing.md
    python -m bench.routing --scenario c --block routing     # issue #4's overhead block
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._previous import PREVIOUS_REV, RouterImpl, export, router_at
from bench._procs import Child, free_port, stopped_on_exit
from bench._routing_env import (
    POLICIES,
    PREVIOUS_POLICIES,
    CpuMeter,
    FleetProc,
    RouterProc,
    by_label,
    fleet_argv,
    histogram_quantile,
    metrics_delta,
    router_yaml,
    start_fleet,
    start_router,
    wait_quiet,
)
from bench._routing_floor import excess, floor
from bench._routing_overhead import run_overhead
from bench._routing_report import write_report
from bench.loadgen import LoadConfig, LoadResult, percentile, run_load

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "routing.md"
FLEET = {"nodes": 4, "slots": 4, "speeds": [1.0, 1.0, 0.5, 0.25], "base_ms": 50.0, "per_char_ms": 2.0, "sigma": 0.3}
#: scenario e: equal nodes, so the new one's capacity share is plain (1 / nodes)
FLEET_E = {**FLEET, "speeds": [1.0, 1.0, 1.0, 1.0]}
CHARS = (20, 400)
#: how often the router's /health is read during a measured run (endpoint states, breakers, learned limits)
HEALTH_POLL_S = 0.5
DEFAULT_POLICIES = "least_outstanding,previous,full"


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
    """Shared settings, the child list and the routers (working tree, previous) of one invocation."""

    def __init__(self, args: argparse.Namespace, children: list[Child], log_dir: Path) -> None:
        self.args = args
        self.children = children
        self.log_dir = log_dir
        self._impls: dict[str, RouterImpl] = {}

    def impl(self, policy: str) -> RouterImpl:
        """The router that runs ``policy``: the previous commit's for `previous`, else the current one (a snapshot of
        `--current-rev`, HEAD by default)."""
        key = "previous" if policy in PREVIOUS_POLICIES else "current"
        if key not in self._impls:
            self._impls[key] = (export(self.args.previous_rev, self.log_dir / "previous-router") if key == "previous"
                                else router_at(self.args.current_rev, self.log_dir / "current-router"))
            log(f"  router for {key}: {self._impls[key].label}, speech_router from {self._impls[key].package}")
        return self._impls[key]

    def fleet_args(self, fleet: dict[str, Any]) -> list[str]:
        return fleet_argv(nodes=fleet["nodes"], slots=fleet["slots"], speeds=fleet["speeds"], base_ms=fleet["base_ms"],
                          per_char_ms=fleet["per_char_ms"], sigma=fleet["sigma"], seed=self.args.seed,
                          jitter_by_text=True)

    def run(self, tag: str, policy: str, rate: float, events: Sequence[tuple[float, str, dict[str, Any]]] = (), *,
            fleet_spec: dict[str, Any] = FLEET, configured: Sequence[str] | None = None) -> dict[str, Any]:
        """Fresh fleet and router; warm-up (not measured); the measured run with its events.

        An event is (seconds, target, changes): target a node name or `*` (every node) gets ``changes`` as knobs;
        target `reload` rewrites the router's config with the nodes in ``changes["endpoints"]`` and reloads it.
        ``configured``: the nodes in the router's config at the start (default all)."""
        args = self.args
        fleet = start_fleet(self.children, self.log_dir, f"fleet-{tag}", self.fleet_args(fleet_spec))
        nodes = {n: u for n, u in fleet.nodes.items() if configured is None or n in configured}
        reloads = any(target == "reload" for _, target, _ in events)
        server = {"watch_config": False} if reloads else None  # the admin API reloads, at a known time
        config = router_yaml(nodes, POLICIES[policy], server, fanout=args.fanout)
        impl = self.impl(policy)
        router = start_router(self.children, self.log_dir, f"router-{tag}", config, free_port(), impl,
                              admin_key=secrets.token_hex(16) if reloads else "")
        try:
            background = wait_quiet(args.quiet_wait)
            load_before = os.getloadavg()
            if args.warmup > 0:
                warm = LoadConfig(url=router.url, rate=rate, duration=args.warmup, timeout=args.timeout,
                                  seed=args.seed + 1000)
                asyncio.run(run_load(warm))
            load = LoadConfig(url=router.url, rate=rate, duration=args.duration, timeout=args.timeout,
                              seed=args.seed)
            groups = {"router": [router.child.proc.pid], "fleet": [fleet.child.proc.pid], "loadgen": [os.getpid()]}
            measured = asyncio.run(_measured(load, fleet, router, events, groups, policy, args.fanout, poll=True))
            result = measured["result"]
            snapshots = measured["snapshots"]
            delta = metrics_delta(snapshots[0], snapshots[-1])
            health = router.health()
            state = fleet.state()
        finally:
            router.child.stop()
            fleet.child.stop()
        summary = result.summary()
        log(f"  {tag}: {summary['count']} requests, {summary['errors']} errors {summary['error_kinds'] or ''}, "
            f"p50 {summary['p50'] * 1000:.0f} ms, p99 {summary['p99'] * 1000:.0f} ms; load average {load_before[0]:.2f}")
        cuts = [t for t, _, _ in events]
        return {"policy": policy, "router": {"label": impl.label, "package": impl.package}, "rate": rate,
                "summary": summary, "cpu": measured["cpu"], "background": background, "loadavg": load_before,
                "load_command": load.command(), "router_config": config, "fleet_argv": fleet.argv,
                "events": list(events), "event_log": measured["event_log"],
                "phases": _phases(result, cuts), "metrics": _router_stats(delta),
                "phase_metrics": [_router_stats(metrics_delta(a, b))
                                  for a, b in zip(snapshots, snapshots[1:], strict=False)],
                "by_node": _by_node(result), "queue_waits": _queue_waits(snapshots),
                "excess": excess(result.samples, load, fleet_spec, args.seed),
                "samples": [(s.due, s.latency, s.outcome, s.chars, s.served_by) for s in result.samples],
                "health_polls": measured["polls"],
                "endpoints": {e["name"]: {"state": e["state"], "breaker": e["breaker"], "latency": e["latency"],
                                          **{k: e[k] for k in ("cap", "concurrency_limit") if k in e}}
                              for e in health.get("endpoints", [])},
                "nodes": {n["name"]: {k: n[k] for k in ("served", "failed", "hung")} for n in state["nodes"]}}


async def _measured(load: LoadConfig, fleet: FleetProc, router: RouterProc,
                    events: Sequence[tuple[float, str, dict[str, Any]]], groups: dict[str, list[int]],
                    policy: str, fanout: bool, poll: bool) -> dict[str, Any]:
    """The load, the events at their times, CPU use over the sending period, the router's metrics when each event
    happens and when sending ends (for per-phase numbers), and (``poll``) its /health every HEALTH_POLL_S."""
    meter = CpuMeter(groups)
    cpu: dict[str, float] = {}
    snapshots = [await asyncio.to_thread(router.metrics)]
    event_log: list[dict[str, Any]] = []
    polls: list[tuple[float, dict[str, Any]]] = []
    t0 = time.monotonic()

    async def timeline() -> None:
        for at, target, changes in events:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            started = time.monotonic() - t0
            if target == "reload":
                nodes = {n: u for n, u in fleet.nodes.items() if n in changes["endpoints"]}
                config = router_yaml(nodes, POLICIES[policy], {"watch_config": False}, fanout=fanout)
                reply = await asyncio.to_thread(router.reload, config)
                detail = {k: reply.get(k) for k in ("result", "changes", "errors") if isinstance(reply, dict)}
            else:
                await asyncio.to_thread(fleet.configure, target, changes)
                detail = {}
            done = time.monotonic() - t0
            snapshots.append(await asyncio.to_thread(router.metrics))
            event_log.append({"at": at, "target": target, "changes": changes, "started": started, "done": done,
                              **detail})
            log(f"    t={at:.0f}s: {target} {changes} ({1000 * (done - started):.0f} ms) {detail or ''}")
        await asyncio.sleep(max(0.0, t0 + load.duration - time.monotonic()))
        cpu.update(meter.stop())

    async def poller() -> None:
        while time.monotonic() - t0 < load.duration + 2:
            try:
                health = await asyncio.to_thread(router.health)
            except OSError:
                health = {}
            polls.append((time.monotonic() - t0, {
                e["name"]: {"state": e["state"], "breaker": e["breaker"]["state"], "inflight": e.get("inflight"),
                            "cap": e.get("cap"), "limit": e.get("concurrency_limit"),
                            "parallel": (e.get("latency") or {}).get("parallel")}
                for e in health.get("endpoints", [])}))
            await asyncio.sleep(HEALTH_POLL_S)

    tasks = [run_load(load), timeline()] + ([poller()] if poll else [])
    result, *_ = await asyncio.gather(*tasks)
    snapshots.append(await asyncio.to_thread(router.metrics))
    return {"result": result, "cpu": cpu, "snapshots": snapshots, "event_log": event_log, "polls": polls}


def _queue_waits(snapshots: list[dict[Any, float]]) -> list[dict[str, float]]:
    """Mean and p99 bucket of the router's queue wait between consecutive snapshots."""
    out = []
    for before, after in zip(snapshots, snapshots[1:], strict=False):
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
            for a, b in zip(edges, edges[1:], strict=False)]


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


def scenario_a(bench: Bench) -> dict[str, Any]:
    args = bench.args
    rate = args.load_a * capacity(FLEET)
    load = LoadConfig(url="http://127.0.0.1:1", rate=rate, duration=args.duration, timeout=args.timeout,
                      seed=args.seed)
    bottom = floor(load, FLEET, args.seed)
    log(f"a: heterogeneous fleet, {rate:.2f} req/s ({args.load_a:.0%} of {capacity(FLEET):.2f}); "
        f"no-queueing floor p99 {bottom['p99'] * 1000:.0f} ms")
    runs = {p: bench.run(f"a-{p}", p, rate) for p in args.policies_a}
    return {"rate": rate, "capacity": capacity(FLEET), "load": args.load_a, "runs": runs, "floor": bottom,
            "floor_margin": args.floor_margin}


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


def scenario_d(bench: Bench) -> dict[str, Any]:
    args = bench.args
    rate = args.load_d * capacity(FLEET)
    events = [(args.duration / 3, "*", {"slow": args.slow_factor}), (2 * args.duration / 3, "*", {"slow": 1.0})]
    log(f"d: fleet slowdown x{args.slow_factor:g}, {rate:.2f} req/s ({args.load_d:.0%}; "
        f"{args.load_d * args.slow_factor:.0%} of the slowed fleet)")
    runs = {p: bench.run(f"d-{p}", p, rate, events) for p in args.policies_d}
    return {"rate": rate, "capacity": capacity(FLEET), "load": args.load_d, "slow": args.slow_factor, "runs": runs,
            "events": events}


def scenario_e(bench: Bench) -> dict[str, Any]:
    args = bench.args
    first = [f"node{i}" for i in range(FLEET_E["nodes"] - 1)]
    everyone = [*first, f"node{FLEET_E['nodes'] - 1}"]
    before = capacity({**FLEET_E, "speeds": FLEET_E["speeds"][:-1]})
    rate = args.load_e * before
    share = FLEET_E["speeds"][-1] / sum(FLEET_E["speeds"])
    events = [(args.duration / 3, "reload", {"endpoints": everyone})]
    log(f"e: node added, {rate:.2f} req/s ({args.load_e:.0%} of {len(first)} nodes, "
        f"{rate / capacity(FLEET_E):.0%} of {len(everyone)}); its capacity share {share:.0%}")
    runs = {p: bench.run(f"e-{p}", p, rate, events, fleet_spec=FLEET_E, configured=first) for p in args.policies_e}
    for run in runs.values():
        run["join"] = join_share(run, everyone[-1], share, args.window_e)
    return {"rate": rate, "capacity_before": before, "capacity_after": capacity(FLEET_E), "load": args.load_e,
            "share": share, "new_node": everyone[-1], "runs": runs, "events": events, "window": args.window_e,
            "target_s": args.join_target}


def join_share(run: dict[str, Any], node: str, share: float, window: float) -> dict[str, Any]:
    """The new node's share of the requests, by the second they were due (counted by who served them), from the
    moment the reload returned; and how long until a ``window``-second stretch first gave it its capacity share."""
    joined = run["event_log"][0]["done"] if run["event_log"] else math.nan
    samples = [(due, served) for due, _, outcome, _, served in run["samples"] if outcome == "ok"]
    horizon = max((due for due, _ in samples), default=joined) - joined
    seconds = []
    for k in range(-3, int(horizon)):
        inside = [served for due, served in samples if joined + k <= due < joined + k + 1]
        seconds.append((k, sum(1 for s in inside if s == node), len(inside)))
    reached = math.nan
    step = 0.25
    t = 0.0
    while t + window <= horizon:
        inside = [served for due, served in samples if joined + t <= due < joined + t + window]
        if inside and sum(1 for s in inside if s == node) >= share * len(inside):
            reached = t + window  # the stretch that reached it ends here
            break
        t += step
    later = [served for due, served in samples if due >= joined + 10]
    return {"joined": joined, "seconds": seconds, "reached_s": reached,
            "share_after_10s": sum(1 for s in later if s == node) / len(later) if later else math.nan}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    policies = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--scenario", choices=["all", "a", "b", "c", "d", "e"], action="append",
                   help="run only these (repeatable; default a, b, d and e; all: c too)")
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds of a, b, d, e runs (default 60)")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds of load before each run")
    p.add_argument("--timeout", type=float, default=30.0, help="client time-out, seconds (default 30)")
    p.add_argument("--load-a", type=float, default=0.7, help="scenario a load, share of capacity (default 0.7)")
    p.add_argument("--load-b", type=float, default=0.5, help="scenario b load, share of capacity (default 0.5)")
    p.add_argument("--load-d", type=float, default=0.2, help="scenario d load, share of capacity (default 0.2)")
    p.add_argument("--load-e", type=float, default=0.8,
                   help="scenario e load, share of the capacity of the nodes configured at the start (default 0.8)")
    p.add_argument("--floor-margin", type=float, default=0.10,
                   help="scenario a target: p99 at most this far above the no-queueing floor (default 0.10)")
    p.add_argument("--slow-factor", type=float, default=4.0, help="scenario d: service time factor (default 4)")
    p.add_argument("--window-e", type=float, default=2.0,
                   help="scenario e: seconds of requests over which the new node's share is judged (default 2)")
    p.add_argument("--join-target", type=float, default=10.0,
                   help="scenario e target: seconds after joining by which its share reaches capacity (default 10)")
    for key in "abde":
        p.add_argument(f"--policies-{key}", default=DEFAULT_POLICIES, type=policies,
                       help=f"scenario {key} policies, comma-separated, from: {', '.join(POLICIES)} "
                            f"(default {DEFAULT_POLICIES})")
    p.add_argument("--fanout", action="store_true",
                   help="leave the model's long-text fan-out on (its default for index-tts-vllm pools: texts over 200 "
                        "characters go out as segments in parallel); by default the runs turn it off, so that each "
                        "request is one job on one node and the no-queueing floor is a floor")
    p.add_argument("--current-rev", default="HEAD",
                   help="the commit whose router runs every other policy, exported at the start so the whole run uses "
                        "one version even while the working tree changes (default HEAD); 'worktree': the installed "
                        "working tree as it is at each router start")
    p.add_argument("--previous-rev", default=PREVIOUS_REV,
                   help=f"the commit whose router runs policy `previous` (default {PREVIOUS_REV})")
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
    p.add_argument("--block", default="routing-v2",
                   help="the marked block of --out to rewrite: routing-v2 (issue #11, default) or routing (issue #4)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # the children are stopped already
        return 130


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    scenarios = set(args.scenario or ["a", "b", "d", "e"])
    if "all" in scenarios:
        scenarios = {"a", "b", "c", "d", "e"}
    unknown = set().union(*(getattr(args, f"policies_{k}") for k in "abde")) - set(POLICIES)
    if unknown:
        raise SystemExit(f"unknown policies {sorted(unknown)}; known: {sorted(POLICIES)}")
    started = time.monotonic()
    load_start = os.getloadavg()
    results: dict[str, Any] = {}
    with stopped_on_exit() as (children, log_dir):
        bench = Bench(args, children, log_dir)
        for key, run in (("a", scenario_a), ("b", scenario_b), ("d", scenario_d), ("e", scenario_e)):
            if key in scenarios:
                results[key] = run(bench)
                if args.json:  # what is done so far survives a later failure
                    args.json.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
        if "c" in scenarios:
            log("c: router overhead")
            results["c"] = run_overhead(children, log_dir, duration=args.overhead_duration,
                                        concurrencies=args.concurrency, nginx_workers=args.nginx_workers,
                                        quiet_wait=args.quiet_wait, sustained=args.sustained, log=log)
        results["routers"] = {k: vars(v) | {"cwd": str(v.cwd) if v.cwd else None} for k, v in bench._impls.items()}
    wall = time.monotonic() - started
    results["loadavg"] = {"start": load_start, "end": os.getloadavg()}
    command = "python -m bench.routing" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    write_report(args.out, results, command=command, wall_s=wall, fleet=FLEET, chars=CHARS, args=vars(args),
                 block=args.block)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    log(f"wrote {args.out} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
