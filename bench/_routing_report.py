"""The markdown of bench.routing: tables, target verdicts and the exact commands, between two markers.

Only the block between `<!-- routing:begin -->` and `<!-- routing:end -->` is rewritten; text around it
(findings written by hand) is kept.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from bench._procs import cpu_model

BEGIN, END = "<!-- routing:begin -->", "<!-- routing:end -->"
POLICY_NAMES = {"round_robin": "round_robin (nginx-like)", "least_outstanding": "least_outstanding (#2)",
                "full": "full policy (`latency`, defaults)",
                "full_all_choices": "full policy, `balancer.choices: 100` (score every endpoint)",
                "full_hedge": "full policy, `hedge.enabled: true`"}


def ms(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v * 1000:.0f}" if v >= 0.1 else f"{v * 1000:.2f}"


def _kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))


def _errors(s: dict[str, Any]) -> str:
    return f"**{s['errors']}** ({_kinds(s['error_kinds'])})" if s["errors"] else "0"


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def machine() -> str:
    model = cpu_model()
    tools = []
    for argv in (["wrk", "-v"], ["nginx", "-v"]):
        if shutil.which(argv[0]):
            out = subprocess.run(argv, capture_output=True, text=True, check=False)
            tools.append((out.stdout + out.stderr).strip().splitlines()[0])
    try:
        import uvloop
        tools.append(f"uvloop {uvloop.__version__}")
    except ImportError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip() or "not a git checkout"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Machine: {date}; nproc {os.cpu_count()}; CPU {model}; Python {platform.python_version()} "
            f"({platform.system()} {platform.machine()}); {', '.join(tools)}  \nCode: HEAD {commit} plus the working "
            "tree as it was during the run")


def _command(argv: list[str]) -> str:
    return "python " + " ".join(argv[1:])


def _pool_yaml(config: str) -> str:
    pool = yaml.safe_load(config)["pools"]["gpu"]
    pool["endpoints"] = f"<{len(pool['endpoints'])} nodes of the fleet>"
    return yaml.safe_dump({"gpu": pool}, sort_keys=False).strip()


def _picks(run: dict[str, Any]) -> str:
    picks = run["metrics"]["picks"]
    total = sum(picks.values()) or 1
    return " / ".join(f"{100 * picks.get(n, 0) / total:.0f}" for n in sorted(run["nodes"]))


def _by_node(b: dict[str, Any]) -> str:
    nodes = "; ".join(f"{n} {v['count']}, {v['mean_chars']:.0f} ch, {ms(v['p50'])} / {ms(v['p99'])}"
                      for n, v in b["nodes"].items())
    tail = ", ".join(f"{n} {c}" for n, c in b["slowest_1pct"].items())
    return f"{nodes}. Slowest 1%: {tail} (mean {b['slowest_1pct_mean_chars']:.0f} characters)"


def _waits(run: dict[str, Any]) -> str:
    return " / ".join(f"{ms(q['mean'])} (≤{ms(q['p99_bucket'])})" for q in run.get("queue_waits", []))


def _cpu(cpu: dict[str, float], keys: tuple[str, ...]) -> str:
    return " / ".join(f"{cpu.get(k, math.nan):.0f}" for k in keys)


def section_a(a: dict[str, Any], fleet_cmd: str, args: dict[str, Any]) -> list[str]:
    runs = a["runs"]
    out = ["## a. Heterogeneous fleet at {:.0%} load".format(a["load"]), "",
           f"Fleet: `{fleet_cmd}`. Capacity from the model: 4 slots x (1 + 1 + 0.5 + 0.25) / "
           f"((50 + 2 x 210) ms x e^(0.3²/2)) = **{a['capacity']:.2f} req/s**; offered: Poisson "
           f"**{a['rate']:.2f} req/s** for {args['duration']:g} s (after {args['warmup']:g} s of unmeasured warm-up at "
           f"the same rate), texts of 20-400 characters, client time-out {args['timeout']:g} s. The same seed, so "
           "every policy gets the same arrival times and texts.", "",
           "| policy | requests | errors | p50 ms | p90 ms | p99 ms | p99 ms, failures counted | ok/s | picks % "
           "node0/1/2/3 | queue wait mean / p99 bucket, ms | CPU % of a core: router / fleet / loadgen / others; "
           "machine % (before the run) |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for policy, run in runs.items():
        s, m = run["summary"], run["metrics"]
        out.append(f"| {POLICY_NAMES[policy]} | {s['count']} | {_errors(s)} | {ms(s['p50'])} | {ms(s['p90'])} | "
                   f"{ms(s['p99'])} | {ms(s['p99_all'])} | {s['rps']:.1f} | {_picks(run)} | "
                   f"{ms(m['queue_wait_mean'])} / ≤{ms(m['queue_wait_p99_bucket'])} | "
                   f"{_cpu(run['cpu'], ('router', 'fleet', 'loadgen', 'untracked'))}; "
                   f"{run['cpu'].get('machine', math.nan):.0f} ({run['background']:.0f}) |")
    out.append("")
    if "full" in runs and "least_outstanding" in runs:
        full, lo = runs["full"]["summary"], runs["least_outstanding"]["summary"]
        ratio = full["p99"] / lo["p99"] if lo["p99"] else math.nan
        out.append(f"Targets: zero errors with the full policy: {_verdict(full['errors'] == 0)} ({full['errors']}). "
                   f"Full-policy p99 <= 0.6 x least_outstanding's p99: {_verdict(ratio <= 0.6)} "
                   f"({ms(full['p99'])} ms against {ms(lo['p99'])} ms: **{ratio:.2f}x**).")
        out.append("")
    out += ["Where the time went (successful requests by the node that served them: count, mean characters, "
            "p50 / p99 ms; then who served the slowest 1%):", ""]
    for policy, run in runs.items():
        out.append(f"- {policy}: {_by_node(run['by_node'])}")
    out += ["", "Router metrics over the measured run (from `/metrics`, differences):", ""]
    for policy, run in runs.items():
        m = run["metrics"]
        out.append(f"- {policy}: retries {m['retries'] or 0}, denied {m['retries_denied']:.0f}; breaker "
                   f"{m['breaker'] or 'no transitions'}; queue rejections {m['queue_rejections'] or 0}; statuses "
                   f"{ {k: int(v) for k, v in m['statuses'].items()} }; learned latency "
                   f"{ {n: e['latency'] for n, e in run['endpoints'].items()} }")
    out += ["", "Pool settings per policy (the rest of the config: one pool `gpu` of the 4 nodes, model "
            "`indextts2` -> [gpu], voice `alloy`; `server.log_level: warning`):", ""]
    for policy, run in runs.items():
        out += [f"{policy}:", "```yaml", _pool_yaml(run["router_config"]), "```"]
    out += ["", "Load, per run: `" + next(iter(runs.values()))["load_command"].replace(
        next(iter(runs.values()))["load_command"].split()[4], "<router>") + "`", ""]
    return out


def section_b(b: dict[str, Any], fleet_cmd: str, args: dict[str, Any]) -> list[str]:
    runs = b["runs"]
    (t1, down, _), (t2, hang, _) = b["events"]
    out = ["## b. Failover at {:.0%} load".format(b["load"]), "",
           f"Same fleet (`{fleet_cmd}`), Poisson **{b['rate']:.2f} req/s** for {args['duration']:g} s (after "
           f"{args['warmup']:g} s warm-up). At **{t1:.0f} s {down} goes down** (stops listening: connection refused; "
           f"open connections reset), at **{t2:.0f} s {hang} hangs** (accepts synthesis requests and never answers; "
           "its "
           "`/health` still answers, as on a node whose GPU stage is stuck). Client time-out "
           f"{args['timeout']:g} s. Phases are by the time a request was due. The two nodes that remain serve "
           f"{b['capacity_left']:.2f} req/s at 100%, so the last phase runs at {b['rate'] / b['capacity_left']:.0%} of "
           "what is left (losing both fast nodes would leave less than the offered load: no router could then "
           "avoid errors).", "",
           f"| policy | requests | errors | p50 ms | p99 ms | errors 0-{t1:.0f} / {t1:.0f}-{t2:.0f} / {t2:.0f}-end | "
           "p99 ms per phase | router queue wait per phase, mean ms (p99 bucket) | retries by reason | "
           "breaker transitions | picks % node0/1/2/3 |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for policy, run in runs.items():
        s, m = run["summary"], run["metrics"]
        phases = run["phases"]
        out.append(f"| {POLICY_NAMES[policy]} | {s['count']} | {_errors(s)} | {ms(s['p50'])} | {ms(s['p99'])} | "
                   f"{' / '.join(str(p['errors']) for p in phases)} | {' / '.join(ms(p['p99']) for p in phases)} | "
                   f"{_waits(run)} | "
                   f"{_kinds({k: int(v) for k, v in m['retries'].items()}) or 0} | "
                   f"{_kinds({k: int(v) for k, v in m['breaker'].items()}) or 'none'} | {_picks(run)} |")
    out.append("")
    if "full" in runs:
        full = runs["full"]["summary"]
        out += [f"Target: zero client-visible errors with the full policy: {_verdict(full['errors'] == 0)} "
                f"({full['errors']} of {full['count']}).", ""]
    out += ["Successful requests by node (count, mean characters, p50 / p99 ms; who served the slowest 1%):", ""]
    for policy, run in runs.items():
        out.append(f"- {policy}: {_by_node(run['by_node'])}")
    out += ["", "Router metrics (attempts by endpoint and outcome; queue):", ""]
    for policy, run in runs.items():
        m = run["metrics"]
        out.append(f"- {policy}: attempts { {k: int(v) for k, v in m['attempts'].items()} }; retries denied by "
                   f"the budget {m['retries_denied']:.0f}; queue rejections {m['queue_rejections'] or 0}; queue wait "
                   f"mean {ms(m['queue_wait_mean'])} ms; endpoints at the end "
                   f"{ {n: (e['state'], e['breaker']['state']) for n, e in run['endpoints'].items()} }")
    out.append("")
    return out


def section_c(c: dict[str, Any]) -> list[str]:
    rows = c["rows"]
    out = ["## c. Router overhead", "",
           f"One node that answers at once with a {c['wav_bytes'] // 1000} KB WAV (`{_command(c['fleet_argv'])}`)"
           f", {c['text_chars']}-character text. Closed loop, {c['duration']:g} s per row after a 1 s warm-up per "
           f"path, client: {rows[0]['client'] if rows else '-'}. nginx: {c['nginx_workers']} worker process, "
           "keep-alive upstream (config below). The router has one uvicorn process and `max_concurrency: 256` on "
           "the node (the node has no slot limit, so the router's queue does not cap it where nginx is not capped); "
           "each router path gets a freshly started router, then runs 1, 16, 64 in that order.",
           "", "| path | concurrency | p50 ms | p90 ms | p99 ms | req/s | errors | CPU % of a core: proxy / node / "
           "client / others; machine % (before the run) |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        cpu = r["cpu"]
        out.append(f"| {r['target']} | {r['concurrency']} | {ms(r['p50'])} | {ms(r['p90'])} | {ms(r['p99'])} | "
                   f"{r['rps']:.0f} | {_kinds(r['errors']) or 0} | {cpu.get('proxy', 0):.0f} / {cpu['node']:.0f} / "
                   f"{r['client_cpu_pct']:.0f} / {max(0.0, cpu['untracked'] - r['client_cpu_pct']):.0f}; "
                   f"{cpu['machine']:.0f} ({r['background']:.0f}) |")
    out.append("")
    find = {(r["target"], r["concurrency"]): r for r in rows}
    direct1, router1 = find.get(("direct to node", 1)), find.get(("router /tts_url", 1))
    speech1 = find.get(("router /v1/audio/speech", 1))
    if direct1 and router1:
        added = (router1["p50"] - direct1["p50"]) * 1000
        extra = f"; /v1/audio/speech adds {(speech1['p50'] - direct1['p50']) * 1000:.2f} ms" if speech1 else ""
        out.append(f"Target: at most 1 ms added p50 at concurrency 1: {_verdict(added <= 1.0)} (router /tts_url adds "
                   f"{added:.2f} ms{extra}).  ")
    nginx16, router16 = find.get(("nginx", 16)), find.get(("router /tts_url", 16))
    if nginx16 and router16:
        ratio = router16["rps"] / nginx16["rps"]
        out.append(f"Target: at concurrency 16, at least half of nginx's req/s: {_verdict(ratio >= 0.5)} "
                   f"({router16['rps']:.0f} against {nginx16['rps']:.0f}: **{ratio:.2f}x**).")
    elif router16:
        out.append("nginx is not installed: no nginx comparison; direct numbers only.")
    series = c.get("series") or []
    if series:
        out += ["", f"Sustained: {len(series)} runs of {c['duration']:g} s back to back at concurrency 16 on one "
                "fresh router (`/tts_url`):", "",
                "| seconds since the router's first request | p50 ms | p99 ms | req/s | router CPU % of a core |",
                "|---|--:|--:|--:|--:|"]
        for r in series:
            out.append(f"| {r['window'][0]:g}-{r['window'][1]:g} | {ms(r['p50'])} | {ms(r['p99'])} | {r['rps']:.0f} | "
                       f"{r['cpu'].get('proxy', 0):.0f} |")
    check = c.get("check")
    if check:
        wrk16 = find.get(("direct to node", 16))
        out += ["", f"Is the client the bottleneck? wrk used {wrk16['client_cpu_pct']:.0f}% of a core at "
                f"{wrk16['rps']:.0f} req/s against the node at concurrency 16; the Python client "
                f"(`{check['command']}`) reached {check['rps']:.0f} req/s using {check['client_cpu_pct']:.0f}% of a "
                "core."
                if wrk16 else ""]
    out += ["", "Commands (wrk's Lua script sets `POST`, `Content-Type: application/json` and the body, and prints "
            "the percentiles):", ""]
    seen = set()
    for r in rows:
        if r["command"] not in seen:
            seen.add(r["command"])
            out.append(f"- `{r['command']}`")
    out += ["", "Router config:", "```yaml", c["router_config"].strip(), "```"]
    if c.get("nginx_conf"):
        out += ["nginx config (`nginx -p <tmp> -e <tmp>/nginx-error.log -c <tmp>/nginx.conf`):", "```nginx",
                c["nginx_conf"].strip(), "```"]
    out.append("")
    return out


def render(results: dict[str, Any], *, command: str, wall_s: float, fleet: dict[str, Any], chars: tuple[int, int],
           args: dict[str, Any]) -> str:
    out = [BEGIN, f"Command: `{command}`  ", machine() + "  ",
           f"Wall time of the run: {wall_s / 60:.1f} min. Every process (fleet, router, nginx, client) shares these "
           f"{os.cpu_count()} cores; the CPU columns show how busy each was.", ""]
    fleet_cmd = None
    for key in ("a", "b"):
        if key in results:
            run = next(iter(results[key]["runs"].values()))
            fleet_cmd = _command(run["fleet_argv"])
    if "a" in results:
        out += section_a(results["a"], fleet_cmd or "", args)
    if "b" in results:
        out += section_b(results["b"], fleet_cmd or "", args)
    if "c" in results:
        out += section_c(results["c"])
    out.append(END)
    return "\n".join(out)


def write_report(path: Path, results: dict[str, Any], **kwargs: Any) -> None:
    block = render(results, **kwargs)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in old and END in old:
        text = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        text = "# Routing benchmark (issue #4)\n\n" + block + "\n" + (old and "\n" + old)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
