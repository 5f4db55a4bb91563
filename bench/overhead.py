"""`python -m bench.overhead`: what the router adds to one instant node, next to a direct connection and nginx.

Issue #12 item 6's targets, measured in one run: at concurrency 1 the router adds at most 1.0 ms to the p50 of
a direct connection, and at concurrency 16 it serves at least 0.5x nginx's requests/s. One node answers at once
with a 240 KB WAV (bench.fleet); wrk keeps 1 or 16 requests in flight against the node, nginx (one worker, a
keep-alive upstream) and the router (`/tts_url`, the like-for-like of nginx, and `/v1/audio/speech` as wav).
The router is a snapshot of `--current-rev` (HEAD by default: one version for the whole run, whatever others
edit meanwhile); with `--previous-rev`, an older commit's router runs the same rows, for a before/after.

The machine is shared (2 cores, other developers' benchmarks): rows run in rounds, each round every target at
every concurrency, in an order that rotates each round; the report gives each round's rows and the medians over
rounds, and the machine's load (1-minute load average, the share of CPU others used during each row). Before
each row the run waits (up to `--quiet-wait` s) for the machine to be less than 25 % busy.

`--floor` (on by default) adds `bench._proxy_floor`, a raw ASGI proxy on the same uvicorn and aiohttp that does
nothing but pass the request and the answer on: what no router on this stack can go below.

`--profile DIR` also records the working tree's router with py-spy during a 10 s c=16 `/tts_url` run and writes
the raw stacks and a summary to DIR: the samples by layer (this issue's API edge, the router core, the backend
and aiohttp, the HTTP protocol, the event loop) and the functions with the most samples (self and total).
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._previous import RouterImpl, export, router_at
from bench._procs import START_TIMEOUT_S, Child, cpu_model, free_port, http_status, stopped_on_exit
from bench._routing_env import CpuMeter, children_of, fleet_argv, router_yaml, start_fleet, start_router, wait_quiet
from bench._routing_overhead import (
    OPENAI_BODY,
    ROUTER_MAX_CONCURRENCY,
    TTS_URL_BODY,
    WAV_BYTES,
    run_wrk,
    start_nginx,
    wrk_script,
)

DEFAULT_OUT = Path(__file__).with_name("results") / "overhead.md"
ADDED_P50_TARGET_MS = 1.0
RPS_RATIO_TARGET = 0.5


class Target:
    """One path measured: a base URL, the API it is called with and the processes that serve it (for CPU)."""

    def __init__(self, name: str, base: str, api: str, pids: list[int]) -> None:
        self.name, self.base, self.api, self.pids = name, base, api, pids

    @property
    def url(self) -> str:
        return self.base + ("/tts_url" if self.api == "tts_url" else "/v1/audio/speech")

    @property
    def body(self) -> str:
        return TTS_URL_BODY if self.api == "tts_url" else OPENAI_BODY


def load_average() -> float:
    return os.getloadavg()[0]


def measure(target: Target, log_dir: Path, node_pid: int, concurrency: int, duration: float,
            quiet_wait: float) -> dict[str, Any]:
    background = wait_quiet(quiet_wait)
    pids = target.pids + [c for p in target.pids for c in children_of(p)]
    meter = CpuMeter({"proxy": pids, "node": [node_pid]})
    load = load_average()
    row = run_wrk(target.url, wrk_script(log_dir, target.body), concurrency, duration)
    row.update(target=target.name, concurrency=concurrency, cpu=meter.stop(), background=background, load=load)
    return row


def start_floor(children: list[Child], log_dir: Path, node_url: str) -> Target:
    """``bench._proxy_floor`` in front of the node, once it answers."""
    port = free_port()
    child = Child([sys.executable, "-m", "bench._proxy_floor", node_url, str(port)], log_dir, "floor")
    children.append(child)
    deadline = time.monotonic() + START_TIMEOUT_S
    while http_status(port, "/") != 200:
        child.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the proxy floor did not start:\n{child.tail()}")
        time.sleep(0.1)
    return Target("bare uvicorn + aiohttp proxy", f"http://127.0.0.1:{port}", "tts_url", [child.proc.pid])


def profile(router: Target, log_dir: Path, out: Path, duration: float) -> str:
    """py-spy record the router during a c=16 run; the raw stacks and a top-20 summary go to ``out``."""
    if shutil.which("py-spy") is None:
        return "py-spy is not installed (pip install py-spy): no profile"
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "router-c16.txt"
    spy = subprocess.Popen(["py-spy", "record", "-p", str(router.pids[0]), "-r", "250", "-f", "raw", "-o", str(raw),
                            "-d", f"{duration + 1:g}", "--nonblocking"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    run_wrk(router.url, wrk_script(log_dir, router.body), 16, duration)
    spy.wait(60)
    summary = summarise_stacks(raw.read_text(encoding="utf-8")) if raw.exists() else "py-spy wrote nothing"
    (out / "router-c16-top.txt").write_text(summary, encoding="utf-8")
    return summary


#: where a sample's time goes: the innermost frame of speech-router's own code says which part of it ran (its
#: calls into aiohttp, uvicorn or the kernel included); the event loop's own callbacks are told apart by the
#: frame right under it
LAYERS = (("speech_router/api/", "api: edge, plan, respond (this issue)"), ("speech_router/router/", "router core"),
          ("speech_router/backends/", "backend + aiohttp client"), ("speech_router/audio/", "audio validation"),
          ("speech_router/edge.py", "HTTP protocol (uvicorn + edge limits)"))


def layer_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        if "(speech_router/" not in frame:
            continue
        path = frame.rsplit("(", 1)[1]
        for prefix, name in LAYERS:
            if path.startswith(prefix):
                return name
        if path.startswith("speech_router/cli.py"):  # the event loop: what it called back
            runs = [i for i, f in enumerate(frames) if f.startswith("Runner.run ")]
            callback = frames[runs[-1] + 1] if runs and runs[-1] + 1 < len(frames) else ""
            if "aiohttp" in callback or "ResponseHandler" in callback:
                return "backend + aiohttp client"
            if "uvicorn" in callback or "HttpTools" in callback:
                return "HTTP protocol (uvicorn + edge limits)"
            return "event loop"
        return "other speech-router code"
    return "no speech-router frame (uvicorn writing the answer to the client, aiohttp writing to the node, threads)"


def summarise_stacks(raw: str, top: int = 25) -> str:
    """Samples by layer, then the frames with the most samples by self and total time (py-spy's raw format)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        layers[layer_of(frames)] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples", "", "by layer:"]
    lines += [f"{100 * n / samples:5.1f}%  {name}" for name, n in layers.most_common()]
    lines += ["", "self:"]
    lines += [f"{100 * n / samples:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "total:"]
    lines += [f"{100 * n / samples:5.1f}%  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(lines) + "\n"


def _one(rows: list[dict[str, Any]], i: int, target: str, c: int, key: str) -> float | None:
    found = [r[key] for r in rows if r["target"] == target and r["concurrency"] == c and r["round"] == i]
    return found[0] if found else None


def report(rows: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any]) -> str:
    rounds = max(r["round"] for r in rows) + 1
    names = list(dict.fromkeys(r["target"] for r in rows))
    concurrencies = sorted({r["concurrency"] for r in rows})

    def cell(name: str, c: int, key: str) -> list[float]:
        return [r[key] for r in rows if r["target"] == name and r["concurrency"] == c]

    out = [f"Machine: {info['when']}; nproc {os.cpu_count()}; CPU {cpu_model()}; Python {platform.python_version()}; "
           f"{info['wrk']}; {info['nginx']}. Load average (1 min) at the start {info['load_start']:.2f}, at the end "
           f"{info['load_end']:.2f}; wall time {info['wall'] / 60:.1f} min.", "",
           f"Command: `{info['command']}`; {info['routers']}.", "",
           f"{rounds} rounds of {args.duration:g} s per row (wrk, 1 thread). Medians over rounds; others' CPU is the "
           "share of a core used during the row by processes outside the measured ones (other developers' work), "
           "load the 1-minute load average when the row started.", "",
           "| path | c | p50 ms | p99 ms | req/s | proxy CPU % | others' CPU % | load |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for name in names:
        for c in concurrencies:
            p50, p99, rps = cell(name, c, "p50"), cell(name, c, "p99"), cell(name, c, "rps")
            cpu = [r["cpu"]["proxy"] for r in rows if r["target"] == name and r["concurrency"] == c]
            others = [r["cpu"]["untracked"] for r in rows if r["target"] == name and r["concurrency"] == c]
            load = cell(name, c, "load")
            out.append(f"| {name} | {c} | {statistics.median(p50) * 1000:.2f} | {statistics.median(p99) * 1000:.2f} | "
                       f"{statistics.median(rps):.0f} | {statistics.median(cpu):.0f} | {statistics.median(others):.0f} "
                       f"| {statistics.median(load):.2f} |")
    out += ["", "Targets, per round (added p50 = the router's p50 minus the direct p50 of the same round; ratio = the "
            "router's req/s over nginx's in the same round):", "",
            "| router | round | added p50 ms at c=1 | req/s ratio to nginx at c=16 |", "|---|--:|--:|--:|"]
    verdicts = []
    for name in [n for n in names if n.startswith(("router", "bare"))]:
        added, ratio = [], []
        for i in range(rounds):
            r1, d1 = _one(rows, i, name, 1, "p50"), _one(rows, i, "direct to node", 1, "p50")
            r16, n16 = _one(rows, i, name, 16, "rps"), _one(rows, i, "nginx", 16, "rps")
            a = (r1 - d1) * 1000 if r1 is not None and d1 is not None else float("nan")
            q = r16 / n16 if r16 is not None and n16 else float("nan")
            added.append(a)
            ratio.append(q)
            out.append(f"| {name} | {i + 1} | {a:.2f} | {q:.2f} |")
        ma, mq = statistics.median(added), statistics.median(ratio)
        verdicts.append(f"- {name}: added p50 {ma:.2f} ms (target <= {ADDED_P50_TARGET_MS:g}: "
                        f"{'met' if ma <= ADDED_P50_TARGET_MS else 'missed'}); {mq:.2f}x nginx's req/s at c=16 "
                        f"(target >= {RPS_RATIO_TARGET:g}: {'met' if mq >= RPS_RATIO_TARGET else 'missed'})")
    out += ["", "Medians over rounds:", "", *verdicts, "", "Router config:", "", "```yaml", info["router_config"].strip(),
            "```", ""]
    if info.get("profile"):
        out += ["Profile of the router measured (`router`), c=16 `/tts_url` (py-spy, 250 Hz):", "", "```",
                info["profile"].strip(), "```", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of every row (default 3)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per row (default 5)")
    p.add_argument("--concurrency", default="1,16", type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--quiet-wait", type=float, default=10.0, help="seconds to wait for a quiet machine before a row")
    p.add_argument("--current-rev", default="HEAD", help="the router measured: a snapshot of this commit (default "
                                                         "HEAD), or 'worktree' for the working tree as it is")
    p.add_argument("--previous-rev", default="none", help="also measure the router of this commit ('none': don't)")
    p.add_argument("--openai", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure /v1/audio/speech (default on)")
    p.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=False,
                   help="let the router learn the node's useful concurrency (default off: a fixed limit of 256, so "
                        "the router's queue caps it no more than nginx is capped; see bench/README.md)")
    p.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure a bare uvicorn + aiohttp proxy (bench._proxy_floor; default on)")
    p.add_argument("--profile", type=Path, default=None, help="py-spy the router at c=16 into this directory")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"markdown report (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (Debian: apt-get install wrk nginx-light)", file=sys.stderr)
            return 2
    started, load_start = time.monotonic(), load_average()
    with stopped_on_exit() as (children, log_dir):
        fleet = start_fleet(children, log_dir, "fleet", fleet_argv(nodes=1, slots=0, speeds=[1], base_ms=0,
                                                                   per_char_ms=0, sigma=0, wav_bytes=WAV_BYTES))
        node_url = fleet.nodes["node0"]
        config = router_yaml(fleet.nodes, {"max_concurrency": ROUTER_MAX_CONCURRENCY,
                                           "balancer": {"adaptive_concurrency": args.adaptive}})
        nginx, nginx_url, _ = start_nginx(children, log_dir, int(node_url.rsplit(":", 1)[1]), 1)
        targets = [Target("direct to node", node_url, "tts_url", []), Target("nginx", nginx_url, "tts_url",
                                                                              [nginx.proc.pid])]
        if args.floor:
            targets.append(start_floor(children, log_dir, node_url))
        impls: list[tuple[str, RouterImpl]] = [("router", router_at(args.current_rev, log_dir / "current"))]
        if args.previous_rev != "none":
            impls.append((f"router {args.previous_rev}", export(args.previous_rev, log_dir / "previous")))
        for label, impl in impls:
            router = start_router(children, log_dir, label.replace(" ", "-"), config, free_port(), impl=impl)
            pid = router.child.proc.pid
            targets.append(Target(f"{label} /tts_url", router.url, "tts_url", [pid]))
            if args.openai:
                targets.append(Target(f"{label} /v1/audio/speech", router.url, "openai", [pid]))
        for t in targets:  # warm up each path (connections, codecs, the router's learned model)
            run_wrk(t.url, wrk_script(log_dir, t.body), 16, 1)
        rows = []
        for i in range(args.rounds):
            order = targets[i % len(targets):] + targets[:i % len(targets)]
            for t in order:
                for c in args.concurrency:
                    row = measure(t, log_dir, fleet.child.proc.pid, c, args.duration, args.quiet_wait)
                    row["round"] = i
                    rows.append(row)
                    print(f"round {i + 1} {t.name:32s} c={c:<3d} p50 {row['p50'] * 1000:6.2f} ms  {row['rps']:7.0f} "
                          f"req/s  proxy {row['cpu']['proxy']:3.0f}%  others {row['cpu']['untracked']:3.0f}%  "
                          f"load {row['load']:.2f}", flush=True)
        router_target = next(t for t in targets if t.name == "router /tts_url")
        summary = profile(router_target, log_dir, args.profile, 10.0) if args.profile else None
        versions = [subprocess.run([tool, "-v"], capture_output=True, text=True, check=False)
                    for tool in ("wrk", "nginx")]
        info = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": load_start,
                "load_end": load_average(), "wall": time.monotonic() - started, "router_config": config,
                "command": "python -m bench.overhead " + " ".join(argv if argv is not None else sys.argv[1:]),
                "routers": ", ".join(f"{label} = {impl.label}" for label, impl in impls),
                "wrk": (versions[0].stdout or versions[0].stderr).splitlines()[0],
                "nginx": (versions[1].stderr or versions[1].stdout).strip().splitlines()[0], "profile": summary}
    text = report(rows, args, info)
    print(text)
    tmp = args.out.with_suffix(".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("# Router overhead (issue #12 item 6)\n\n" + text, encoding="utf-8")
    tmp.replace(args.out)  # never a half-written report
    return 0


if __name__ == "__main__":
    sys.exit(main())
