"""`python -m bench.learning`: the routing core while it learns (issue #17), against the previous core and nginx.

cold: the mixed fleet of bench.routing (4 nodes x 4 slots at speeds 1, 1, 0.5, 0.25; 50 ms + 2 ms per character at
   speed 1, lognormal jitter keyed by the text), only the nodes' URLs in the router's YAML, Poisson load at 70 % of
   the fleet's capacity for `--duration` seconds from the first second, in both orders:
   - router-first: the router runs while every node refuses connections (a fleet restart, a node pool replaced);
     the nodes come up together and the load starts that moment;
   - fleet-first: the fleet is up; a fresh router starts and the load starts as soon as it answers /readyz.
   Each order runs the current router (a snapshot of `--current-rev`), the previous routing core (`--previous-rev`,
   the last commit before issue #17, exported with `git archive`) and nginx least_conn in front of the same nodes
   (index-tts-vllm's /tts_url, passive failure marks), each on a fresh fleet. Reported: p99 of the first 20 s and of
   the last 30 s, the minute's p99 against the no-queueing floor (`bench._routing_floor`), errors, and the longest
   any request waited in the router's queue while an endpoint in rotation had nothing in flight (the access log's
   queue waits against /health polled every 0.25 s).
hang: 4 nodes x 4 slots at speed 1, Poisson load at 60 %; at `--hang-at` seconds node0 accepts requests and answers
   nothing for `--hang-for` seconds, then answers again. Reported: the longest any client waited, errors, and
   node0's share of the requests answered in the 10 s from 10 s after it recovered (its capacity share is 0.25).

Every child listens on 127.0.0.1 and is stopped however the run ends; every run is bounded by `--duration`.

    python -m bench.learning              # both scenarios, ~12 minutes; writes bench/results/learning.md
    python -m bench.learning --scenario hang --duration 40 --out /tmp/learning.md
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import json
import math
import os
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._previous import RouterImpl, export, router_at
from bench._procs import HOST, Child, free_port, start_router, stopped_on_exit
from bench._routing_env import POLICIES, FleetProc, fleet_argv, router_yaml, start_fleet
from bench._routing_floor import floor
from bench._routing_overhead import start_nginx
from bench.loadgen import LoadConfig, LoadResult, percentile, run_load
from bench.routing import FLEET, capacity

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "learning.md"
#: the last commit before issue #17's routing core
PREVIOUS_REV = "f5fd503"
HANG_FLEET = {**FLEET, "speeds": [1.0, 1.0, 1.0, 1.0]}
POLL_S = 0.25
NGINX_SERVER = "max_fails=1 fail_timeout=5s"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Bench:
    """One invocation: arguments, children, and the two routers (exported once, so one version runs throughout)."""

    def __init__(self, args: argparse.Namespace, children: list[Child], log_dir: Path) -> None:
        self.args, self.children, self.log_dir = args, children, log_dir
        self.impls = {"current": router_at(args.current_rev, log_dir / "current-router"),
                      "previous": export(args.previous_rev, log_dir / "previous-router")}

    def fleet(self, tag: str, spec: dict[str, Any]) -> FleetProc:
        return start_fleet(self.children, self.log_dir, f"fleet-{tag}", fleet_argv(
            nodes=spec["nodes"], slots=spec["slots"], speeds=spec["speeds"], base_ms=spec["base_ms"],
            per_char_ms=spec["per_char_ms"], sigma=spec["sigma"], seed=self.args.seed, jitter_by_text=True))

    def router(self, tag: str, policy: str, fleet: FleetProc,
               ready: tuple[str, ...] = ("/readyz",)) -> tuple[str, Child]:
        impl: RouterImpl = self.impls[policy]
        config = router_yaml(fleet.nodes, POLICIES["full"], {"log_level": "info", "log_format": "json"}, fanout=False)
        port = free_port()
        child = start_router(config, port, self.log_dir, name=f"router-{tag}", ready=ready, command=impl.command,
                             env=impl.env or None, cwd=impl.cwd)
        self.children.append(child)
        return f"http://{HOST}:{port}", child

    def nginx(self, fleet: FleetProc) -> str:
        ports = [int(url.rsplit(":", 1)[1]) for url in fleet.nodes.values()]
        _, url, _ = start_nginx(self.children, self.log_dir, ports, 1, "least_conn;", NGINX_SERVER)
        return url

    def load(self, url: str, policy: str, rate: float) -> LoadConfig:
        return LoadConfig(url=url, api="tts_url" if policy == "nginx" else "openai", rate=rate,
                          duration=self.args.duration, timeout=30.0, seed=self.args.seed)


# -- cold start ----------------------------------------------------------------------------------------------------

def cold(bench: Bench, order: str, policy: str) -> dict[str, Any]:
    tag = f"cold-{order}-{policy}"
    fleet = bench.fleet(tag, FLEET)
    rate = bench.args.load * capacity(FLEET)
    child: Child | None = None
    try:
        if policy == "nginx":
            url = bench.nginx(fleet)
            if order == "router-first":
                fleet.configure("*", {"down": True})
                time.sleep(bench.args.down_for)
                fleet.configure("*", {"down": False})
        elif order == "router-first":
            fleet.configure("*", {"down": True})
            url, child = bench.router(tag, policy, fleet, ("/livez",))  # its first checks find every node down
            time.sleep(bench.args.down_for)
            fleet.configure("*", {"down": False})
        else:
            url, child = bench.router(tag, policy, fleet)
        load = bench.load(url, policy, rate)
        result, polls = asyncio.run(measured(load, url if child is not None else None))
    finally:
        if child is not None:
            child.stop()
        fleet.child.stop()
    out = summary(result, load, FLEET, bench.args.seed)
    out["idle_wait"] = idle_wait(access_lines(child), polls) if child is not None else None
    log(f"  {tag}: {out['count']} requests, {out['errors']} errors, p99 first 20 s {out['p99_first']:.2f} s, "
        f"last 30 s {out['p99_last']:.2f} s, minute {out['p99']:.2f} s ({out['p99'] / out['floor_p99']:.2f}x floor)")
    return out


async def measured(load: LoadConfig, router_url: str | None) -> tuple[LoadResult, list[tuple[float, dict[str, Any]]]]:
    """The load, and (for a router) its /health every POLL_S: (wall time, {endpoint: (state, in flight)})."""
    polls: list[tuple[float, dict[str, Any]]] = []
    done = asyncio.Event()

    async def poll() -> None:
        while router_url is not None and not done.is_set():
            polls.append((time.time(), await asyncio.to_thread(endpoints_now, router_url)))
            await asyncio.sleep(POLL_S)

    async def send() -> LoadResult:
        try:
            return await run_load(load)
        finally:
            done.set()

    result, _ = await asyncio.gather(send(), poll())
    return result, polls


def endpoints_now(url: str) -> dict[str, tuple[str, int]]:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            body = json.load(resp)
    except OSError as exc:
        body = json.loads(exc.read()) if hasattr(exc, "read") else {}
    return {e["name"]: (e["state"], e.get("inflight", 0)) for e in body.get("endpoints", [])}


def access_lines(child: Child | None) -> list[tuple[float, float]]:
    """(wall start, seconds waited in the queue) of each request the router logged."""
    if child is None:
        return []
    out = []
    for line in child.log.read_text("utf-8", "replace").splitlines():
        if '"queue_wait_s"' not in line:
            continue
        try:
            record = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        wait = record.get("queue_wait_s")
        if wait:
            stamp = calendar.timegm(time.strptime(record["ts"][:19], "%Y-%m-%dT%H:%M:%S"))
            out.append((stamp + float(record["ts"][19:23] or 0), float(wait)))
    return out


def idle_wait(waits: list[tuple[float, float]], polls: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """The longest any request waited in the queue while an endpoint in rotation had nothing in flight (seconds,
    to the poll's resolution), and how many requests did so for more than a second."""
    idle = [t for t, eps in polls if any(state == "up" and inflight == 0 for state, inflight in eps.values())]
    overlaps = [POLL_S * sum(1 for t in idle if start <= t < start + wait) for start, wait in waits]
    return {"longest": max(overlaps, default=0.0), "over_1s": sum(1 for o in overlaps if o > 1.0),
            "queued": len(waits)}


def summary(result: LoadResult, load: LoadConfig, fleet: dict[str, Any], seed: int) -> dict[str, Any]:
    ok = [s for s in result.samples if s.outcome == "ok"]
    duration = load.duration
    first = [s.latency for s in ok if s.due < 20]
    last = [s.latency for s in ok if s.due >= duration - 30]
    bottom = floor(load, fleet, seed)
    return {"count": len(result.samples), "errors": len(result.samples) - len(ok), "rate": load.rate,
            "p99_first": percentile(first, 99), "p99_last": percentile(last, 99),
            "p99": percentile([s.latency for s in ok], 99), "p50": percentile([s.latency for s in ok], 50),
            "floor_p99": bottom["p99"], "load_command": load.command(), "loadavg": os.getloadavg()}


# -- a node that hangs ---------------------------------------------------------------------------------------------

def hang(bench: Bench, policy: str) -> dict[str, Any]:
    args = bench.args
    tag = f"hang-{policy}"
    fleet = bench.fleet(tag, HANG_FLEET)
    rate = args.hang_load * capacity(HANG_FLEET)
    url, child = bench.router(tag, policy, fleet)
    try:
        load = bench.load(url, policy, rate)

        async def run() -> LoadResult:
            async def events() -> None:
                await asyncio.sleep(args.hang_at)
                await asyncio.to_thread(fleet.configure, "node0", {"hang": True})
                await asyncio.sleep(args.hang_for)
                await asyncio.to_thread(fleet.configure, "node0", {"hang": False})

            result, _ = await asyncio.gather(run_load(load), events())
            return result

        result = asyncio.run(run())
    finally:
        child.stop()
        fleet.child.stop()
    ok = [s for s in result.samples if s.outcome == "ok"]
    back = args.hang_at + args.hang_for
    window = [s for s in ok if back + 10 <= s.due < back + 20]
    out = {"count": len(result.samples), "errors": len(result.samples) - len(ok),
           "longest": max((s.latency for s in ok), default=math.nan),
           "p99_during": percentile([s.latency for s in ok if args.hang_at <= s.due < back], 99),
           "share_after": sum(1 for s in window if s.served_by == "node0") / len(window) if window else math.nan,
           "load_command": load.command(), "loadavg": os.getloadavg()}
    log(f"  {tag}: {out['count']} requests, {out['errors']} errors, longest {out['longest']:.2f} s, node0's share "
        f"10-20 s after recovery {out['share_after']:.2f}")
    return out


# -- report --------------------------------------------------------------------------------------------------------

def report(results: dict[str, Any], args: argparse.Namespace, command: str, wall: float) -> str:
    lines = ["# The routing core while it learns (issue #17)", "",
             f"Command: `{command}`  ", f"Machine: nproc {os.cpu_count()}; load average at the start "
             f"{results['loadavg'][0]:.2f}, at the end {os.getloadavg()[0]:.2f}; wall time {wall:.0f} s  ",
             f"Routers: current = {results['routers']['current']}, previous = {results['routers']['previous']}; "
             "nginx least_conn over /tts_url", ""]
    if "cold" in results:
        lines += ["## Cold start: the mixed fleet at 70 %, both orders", "",
                  "| order | router | requests | errors | p99 first 20 s | p99 last 30 s | first / last | "
                  "minute p99 | / floor | longest queue wait with an endpoint idle | such waits > 1 s |",
                  "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for key, r in results["cold"].items():
            order, policy = key.split(":")
            idle = r.get("idle_wait") or {}
            lines.append(f"| {order} | {policy} | {r['count']} | {r['errors']} | {r['p99_first']:.2f} s | "
                         f"{r['p99_last']:.2f} s | {r['p99_first'] / r['p99_last']:.2f} | {r['p99']:.2f} s | "
                         f"{r['p99'] / r['floor_p99']:.2f}x | "
                         + (f"{idle['longest']:.2f} s | {idle['over_1s']} of {idle['queued']} queued |" if idle
                            else "- | - |"))
        some = next(iter(results["cold"].values()))
        lines += ["", f"No-queueing floor p99: {some['floor_p99']:.2f} s. Load (router rows): "
                      f"`{some['load_command']}`.", ""]
    if "hang" in results:
        lines += [f"## A node that hangs for {args.hang_for:g} s under load (at {args.hang_at:g} s)", "",
                  "| router | requests | errors | longest client wait | p99 during the hang | "
                  "node0's share 10-20 s after recovery (capacity 0.25) |", "|---|--:|--:|--:|--:|--:|"]
        for policy, r in results["hang"].items():
            lines.append(f"| {policy} | {r['count']} | {r['errors']} | {r['longest']:.2f} s | "
                         f"{r['p99_during']:.2f} s | {r['share_after']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", choices=["all", "cold", "hang"], default="all")
    p.add_argument("--orders", default="router-first,fleet-first", type=lambda s: [x for x in s.split(",") if x])
    p.add_argument("--policies", default="current,previous,nginx", type=lambda s: [x for x in s.split(",") if x])
    p.add_argument("--duration", type=float, default=60.0, help="measured seconds per run (default 60)")
    p.add_argument("--load", type=float, default=0.7, help="cold start: share of capacity (default 0.7)")
    p.add_argument("--down-for", type=float, default=5.0, help="router-first: seconds the router runs with the fleet "
                                                                "down before it comes up (default 5)")
    p.add_argument("--hang-load", type=float, default=0.6, help="hang: share of capacity (default 0.6)")
    p.add_argument("--hang-at", type=float, default=10.0)
    p.add_argument("--hang-for", type=float, default=30.0)
    p.add_argument("--current-rev", default="HEAD")
    p.add_argument("--previous-rev", default=PREVIOUS_REV)
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
        results["routers"] = {k: v.label for k, v in bench.impls.items()}
        if args.scenario in ("all", "cold"):
            results["cold"] = {}
            for order in args.orders:
                for policy in args.policies:
                    log(f"cold start, {order}, {policy}")
                    results["cold"][f"{order}:{policy}"] = cold(bench, order, policy)
        if args.scenario in ("all", "hang"):
            results["hang"] = {}
            for policy in (p for p in args.policies if p != "nginx"):
                log(f"hang, {policy}")
                results["hang"][policy] = hang(bench, policy)
    command = "python -m bench.learning" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    text = report(results, args, command, time.monotonic() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
