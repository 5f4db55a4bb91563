"""The markdown of bench.routing: tables, target verdicts and the exact commands, between two markers.

Only the block between `<!-- NAME:begin -->` and `<!-- NAME:end -->` is rewritten (NAME: `routing-v2` for issue
#11's scenarios, `routing` for issue #4's); text around it (findings written by hand) is kept.
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

POLICY_NAMES = {"round_robin": "round_robin (nginx-like)", "least_outstanding": "least_outstanding (#2)",
                "full": "full policy (`latency`, defaults)",
                "full_all_choices": "full policy, `balancer.choices: 100` (score every endpoint)",
                "full_hedge": "full policy, `hedge.enabled: true`",
                "previous": "previous policy (`latency`, defaults)",
                "full_fixed_limit": "full policy, `adaptive_concurrency: false`"}


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
            f"({platform.system()} {platform.machine()}); {', '.join(tools)}  \nRepository: HEAD {commit} when the report "
            "was written (the bench's code; the routers measured are named below when they are snapshots)")


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


def _policy(policy: str, run: dict[str, Any]) -> str:
    name = POLICY_NAMES.get(policy, policy)
    return f"{name} [{run['router']['label']}]" if "router" in run else name


def _load(run: dict[str, Any]) -> str:
    avg = run.get("loadavg")
    return f"{avg[0]:.2f}" if avg else "-"


def _ratio(v: float, base: float) -> str:
    return f"{v / base:.2f}x" if base and v == v else "-"


def section_a(a: dict[str, Any], fleet_cmd: str, args: dict[str, Any]) -> list[str]:
    runs, fl = a["runs"], a["floor"]
    margin = a.get("floor_margin", 0.10)
    out = ["## a. Heterogeneous fleet at {:.0%} load".format(a["load"]), "",
           f"Fleet: `{fleet_cmd}`. Capacity from the model: 4 slots x (1 + 1 + 0.5 + 0.25) / "
           f"((50 + 2 x 210) ms x e^(0.3²/2)) = **{a['capacity']:.2f} req/s**; offered: Poisson "
           f"**{a['rate']:.2f} req/s** for {args['duration']:g} s (after {args['warmup']:g} s of unmeasured warm-up at "
           f"the same rate), texts of 20-400 characters, client time-out {args['timeout']:g} s. The same seed, so "
           "every policy gets the same arrival times and texts, and (`--jitter-by-text`) each text the same jitter "
           "wherever it runs.", "",
           f"**No-queueing floor**: each measured request's own service time on a free speed-1 node, "
           f"(50 ms + 2 ms x its characters) x its jitter lognormal(0, 0.3) drawn from (seed, its text) exactly as "
           f"the fleet draws it, computed from the load generator's seeded arrivals and texts without sending "
           f"anything (`bench/_routing_floor.py`); its percentiles over the {fl['count']} requests: p50 "
           f"**{ms(fl['p50'])} ms**, p90 {ms(fl['p90'])} ms, p99 **{ms(fl['p99'])} ms**. No network or router time "
           "is in it. *Excess* is per request: its latency minus its own floor (queueing, a slower node, HTTP).", "",
           "| policy [router] | requests | errors | p50 ms | p90 ms | p99 ms | p99 / floor | excess p50 / p99 ms | "
           "ok/s | picks % node0/1/2/3 | queue wait mean / p99 bucket, ms | CPU % of a core: router / fleet / "
           "loadgen / others; machine % (before) | load avg (1 min) before |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for policy, run in runs.items():
        s, m, ex = run["summary"], run["metrics"], run.get("excess", {})
        exc = f"{ms(ex['p50'])} / {ms(ex['p99'])}" if ex.get("matched") else "-"
        out.append(f"| {_policy(policy, run)} | {s['count']} | {_errors(s)} | {ms(s['p50'])} | {ms(s['p90'])} | "
                   f"{ms(s['p99'])} | **{_ratio(s['p99'], fl['p99'])}** | {exc} | {s['rps']:.1f} | {_picks(run)} | "
                   f"{ms(m['queue_wait_mean'])} / ≤{ms(m['queue_wait_p99_bucket'])} | "
                   f"{_cpu(run['cpu'], ('router', 'fleet', 'loadgen', 'untracked'))}; "
                   f"{run['cpu'].get('machine', math.nan):.0f} ({run['background']:.0f}) | {_load(run)} |")
    out.append("")
    if "full" in runs:
        s = runs["full"]["summary"]
        ok = s["p99"] <= (1 + margin) * fl["p99"]
        out.append(f"Targets (full policy): zero errors: {_verdict(s['errors'] == 0)} ({s['errors']}). p99 within "
                   f"{margin:.0%} of the no-queueing floor: {_verdict(ok)} ({ms(s['p99'])} ms against "
                   f"{ms(fl['p99'])} ms: **{s['p99'] / fl['p99'] - 1:+.1%}**).")
        out.append("")
    out += ["Where the time went (successful requests by the node that served them: count, mean characters, "
            "p50 / p99 ms; then who served the slowest 1%):", ""]
    for policy, run in runs.items():
        out.append(f"- {policy}: {_by_node(run['by_node'])}")
    out += ["", "Router metrics over the measured run (from `/metrics`, differences) and what `/health` showed at "
            "the end:", ""]
    for policy, run in runs.items():
        m = run["metrics"]
        out.append(f"- {policy}: retries {m['retries'] or 0}, denied {m['retries_denied']:.0f}; breaker "
                   f"{m['breaker'] or 'no transitions'}; queue rejections {m['queue_rejections'] or 0}; statuses "
                   f"{ {k: int(v) for k, v in m['statuses'].items()} }; endpoints "
                   f"{ {n: _endpoint(e) for n, e in run['endpoints'].items()} }")
    limits = [f"- {policy}: {_limits(run)}" for policy, run in runs.items() if _limits(run)]
    if limits:
        out += ["", "Learned concurrency limits (`concurrency_limit` in `/health`, read every 0.5 s during the measured "
                "run; every node has 4 slots): the share of the readings below 4, and the lowest, per node:", "",
                *limits]
    out += ["", "Pool settings per policy (the rest of the config: one pool `gpu` of the 4 nodes, model "
            "`indextts2` -> {pools: [gpu], fanout: {enabled: false}}, voice `alloy`; `server.log_level: warning`):",
            ""]
    for policy, run in runs.items():
        out += [f"{policy}:", "```yaml", _pool_yaml(run["router_config"]), "```"]
    out += ["", "Load, per run: `" + _load_command(runs) + "`", ""]
    return out


def _limits(run: dict[str, Any], slots: int = 4) -> str:
    """How often each endpoint's learned limit was below the node's slots during the run, and its lowest value."""
    seen: dict[str, list[int]] = {}
    for _, eps in run.get("health_polls", []):
        for name, e in eps.items():
            if e.get("limit") is not None:
                seen.setdefault(name, []).append(e["limit"])
    return "; ".join(f"{n} {100 * sum(1 for v in vs if v < slots) / len(vs):.0f}% (lowest {min(vs)})"
                     for n, vs in sorted(seen.items()))


def _endpoint(e: dict[str, Any]) -> str:
    lat = e.get("latency") or {}
    parts = [e["state"], e["breaker"]["state"]]
    if lat:
        parts.append(f"{lat.get('base_s', 0) * 1000:.0f} ms + {lat.get('per_char_s', 0) * 1000:.2f} ms/char")
        if "level" in lat:
            parts.append(f"level {lat['level']:g}, parallel {lat['parallel']:g}")
    if "cap" in e:
        parts.append(f"limit {e['concurrency_limit']}, cap {e['cap']}")
    return ", ".join(parts)


def _load_command(runs: dict[str, Any]) -> str:
    command = next(iter(runs.values()))["load_command"]
    return command.replace(command.split()[4], "<router>")


def section_b(b: dict[str, Any], fleet_cmd: str, args: dict[str, Any]) -> list[str]:
    runs = b["runs"]
    (t1, down, _), (t2, hang, _) = b["events"]
    out = ["## b. Failover at {:.0%} load".format(b["load"]), "",
           f"Same fleet (`{fleet_cmd}`), Poisson **{b['rate']:.2f} req/s** for {args['duration']:g} s (after "
           f"{args['warmup']:g} s warm-up). At **{t1:.0f} s {down} goes down** (stops listening: connection refused; "
           f"open connections reset), at **{t2:.0f} s {hang} hangs** (accepts synthesis requests and never answers; "
           "its `/health` still answers, as on a node whose GPU stage is stuck). Client time-out "
           f"{args['timeout']:g} s. Phases are by the time a request was due. The two nodes that remain serve "
           f"{b['capacity_left']:.2f} req/s at 100%, so the last phase runs at {b['rate'] / b['capacity_left']:.0%} of "
           "what is left. Every non-200 answer counts as an error (429 and 503 included), and so does a client "
           "time-out.", "",
           f"| policy [router] | requests | errors | p50 ms | p99 ms | errors 0-{t1:.0f} / {t1:.0f}-{t2:.0f} / "
           f"{t2:.0f}-end | p99 ms per phase | router queue wait per phase, mean ms (p99 bucket) | retries by reason | "
           "breaker transitions | picks % node0/1/2/3 | load avg before |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for policy, run in runs.items():
        s, m = run["summary"], run["metrics"]
        phases = run["phases"]
        out.append(f"| {_policy(policy, run)} | {s['count']} | {_errors(s)} | {ms(s['p50'])} | {ms(s['p99'])} | "
                   f"{' / '.join(str(p['errors']) for p in phases)} | {' / '.join(ms(p['p99']) for p in phases)} | "
                   f"{_waits(run)} | "
                   f"{_kinds({k: int(v) for k, v in m['retries'].items()}) or 0} | "
                   f"{_kinds({k: int(v) for k, v in m['breaker'].items()}) or 'none'} | {_picks(run)} | "
                   f"{_load(run)} |")
    out.append("")
    if "full" in runs:
        full = runs["full"]["summary"]
        out += [f"Target: zero client-visible errors (429s included) with the full policy: "
                f"{_verdict(full['errors'] == 0)} ({full['errors']} of {full['count']}).", ""]
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


def _rotation(run: dict[str, Any], since: float, until: float) -> tuple[int | None, float]:
    """From the /health polls between two times: the fewest endpoints in rotation (state up or unknown), and the
    seconds during which none was."""
    polls = [(t, eps) for t, eps in run.get("health_polls", []) if since <= t < until]
    if not polls:
        return None, 0.0
    counts = [(t, sum(1 for e in eps.values() if e["state"] in ("up", "unknown"))) for t, eps in polls]
    gaps = [b[0] - a[0] for a, b in zip(counts, counts[1:], strict=False) if a[1] == 0]
    return min(c for _, c in counts), sum(gaps)


def _states(run: dict[str, Any]) -> str:
    return ", ".join(f"{n} {e['state']}/{e['breaker']['state']}" for n, e in run["endpoints"].items())


def _seconds(v: float, missing: str = "-") -> str:
    return missing if v != v else f"{v:.2f} s"


def _breakers(m: dict[str, Any]) -> str:
    opened = sum(v for k, v in m["breaker"].items() if k.endswith("->open"))
    return f"{opened:.0f} opened" if m["breaker"] else "none"


def section_d(d: dict[str, Any], fleet_cmd: str, args: dict[str, Any]) -> list[str]:
    runs = d["runs"]
    (t1, _, _), (t2, _, _) = d["events"]
    names = ("before", f"slow x{d['slow']:g}", "after")
    out = ["## d. Fleet slowdown", "",
           f"Same fleet (`{fleet_cmd}`), Poisson **{d['rate']:.2f} req/s** ({d['load']:.0%} of its capacity) for "
           f"{args['duration']:g} s after {args['warmup']:g} s of warm-up. At **{t1:.0f} s every node's service time "
           f"is multiplied by {d['slow']:g}** (`POST /_fleet/config {{\"slow\": {d['slow']:g}}}`; the fleet's capacity "
           f"falls to {d['capacity'] / d['slow']:.2f} req/s, so the offered load is {d['load'] * d['slow']:.0%} of "
           f"it), at **{t2:.0f} s it is back to 1**. Every node keeps answering `/health`. Phases by the time a request "
           f"was due: {names[0]} 0-{t1:.0f} s, {names[1]} {t1:.0f}-{t2:.0f} s, {names[2]} {t2:.0f}-{args['duration']:g} "
           f"s. *In rotation*: endpoints whose state in the router's `/health` (read every {0.5:g} s) is up, i.e. "
           "neither down nor ejected by a breaker.", "",
           "| policy [router] | requests | errors per phase | error kinds | p50 / p99 ms per phase | retries by "
           "reason, per phase | breakers opened per phase | fewest in rotation per phase (of 4); seconds with none | "
           "endpoints at the end | load avg before |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    edges = [0.0, t1, t2, math.inf]
    for policy, run in runs.items():
        s, phases, pm = run["summary"], run["phases"], run["phase_metrics"]
        rot = [_rotation(run, a, b) for a, b in zip(edges, edges[1:], strict=False)]
        out.append(
            f"| {_policy(policy, run)} | {s['count']} | **{' / '.join(str(p['errors']) for p in phases)}** | "
            f"{_kinds(s['error_kinds']) or '-'} | {' / '.join(ms(p['p50']) + ', ' + ms(p['p99']) for p in phases)} | "
            f"{' / '.join(_kinds({k: int(v) for k, v in m['retries'].items()}) or '0' for m in pm)} | "
            f"{' / '.join(_breakers(m) for m in pm)} | "
            f"{' / '.join('-' if r[0] is None else str(r[0]) for r in rot)}; {sum(r[1] for r in rot):.1f} s | "
            f"{_states(run)} | "
            f"{_load(run)} |")
    out.append("")
    if "full" in runs:
        run = runs["full"]
        after = run["phases"][-1]
        none = sum(_rotation(run, a, b)[1] for a, b in zip(edges, edges[1:], strict=False))
        out += [f"Targets (full policy): zero errors once capacity is back ({names[2]}): "
                f"{_verdict(after['errors'] == 0)} ({after['errors']} of {after['count']}). No breaker locks the "
                f"pool out (never no endpoint in rotation, all up at the end): "
                f"{_verdict(none == 0 and all(e['state'] == 'up' for e in run['endpoints'].values()))}.", ""]
    out += ["Router metrics per phase (attempts by endpoint and outcome):", ""]
    for policy, run in runs.items():
        out.append(f"- {policy}: " + " | ".join(
            f"{n}: { {k: int(v) for k, v in m['attempts'].items()} }, queue rejections "
            f"{ {k: int(v) for k, v in m['queue_rejections'].items()} or 0}"
            for n, m in zip(names, run["phase_metrics"], strict=False)))
    out.append("")
    return out


def section_e(e: dict[str, Any], fleet_cmd: str, args: dict[str, Any]) -> list[str]:
    runs = e["runs"]
    (t1, _, changes), = e["events"]
    node, window, target = e["new_node"], e["window"], e["target_s"]
    out = ["## e. Node added under load", "",
           f"Fleet: `{fleet_cmd}` (4 equal nodes). The router starts with {', '.join(changes['endpoints'][:-1])} in "
           f"its config (`server.watch_config: false`, an admin key in `SPEECH_ROUTER_ADMIN_KEY`); Poisson "
           f"**{e['rate']:.2f} req/s** ({e['load']:.0%} of those 3, {e['rate'] / e['capacity_after']:.0%} of all 4) for "
           f"{args['duration']:g} s after {args['warmup']:g} s of warm-up. At **{t1:.0f} s** the config file is "
           f"rewritten with all 4 nodes and `POST /admin/reload` applies it: {node} joins. Its capacity share is "
           f"**{e['share']:.0%}**. *Share*: of the requests due in a stretch of time that succeeded, those {node} "
           f"served (the `x-speech-router-endpoint` header), time counted from the moment the reload answered. "
           f"*Reached*: the end of the first {window:g}-second stretch (sliding by 0.25 s) in which the share was "
           "at least the capacity share.", ""]
    width = 15
    out += ["| policy [router] | requests | errors | p99 ms before / after joining | reload | "
            + " | ".join(f"{k}-{k + 1} s" for k in range(-2, width)) + " | reached after | share from 10 s on | "
            "load avg before |",
            "|---|--:|--:|--:|--:|" + "--:|" * (width + 2) + "--:|--:|--:|"]
    for policy, run in runs.items():
        s, j = run["summary"], run["join"]
        cells = {k: (f"{100 * n / t:.0f}" if t else "-") for k, n, t in j["seconds"]}
        ev = run["event_log"][0] if run["event_log"] else {}
        phases = run["phases"]
        out.append(f"| {_policy(policy, run)} | {s['count']} | {_errors(s)} | "
                   f"{' / '.join(ms(p['p99']) for p in phases)} | {ev.get('result', '-')}, "
                   f"{1000 * (ev.get('done', 0) - ev.get('started', 0)):.0f} ms | "
                   + " | ".join(cells.get(k, "-") for k in range(-2, width))
                   + f" | **{_seconds(j['reached_s'])}** | "
                     f"{100 * j['share_after_10s']:.0f}% | {_load(run)} |")
    out.append("")
    if "full" in runs:
        j = runs["full"]["join"]
        reached = j["reached_s"]
        out += [f"Target (full policy): the new node's share reaches its capacity share ({e['share']:.0%}) within "
                f"{target:g} s of joining: {_verdict(reached == reached and reached <= target)} "
                f"({_seconds(reached, 'never')}; {100 * j['share_after_10s']:.0f}% of the "
                f"requests from 10 s on). Zero errors: {_verdict(runs['full']['summary']['errors'] == 0)}.", ""]
    out += ["What the router showed for the new node (from `/health` every 0.5 s: seconds after the reload, "
            "in flight / cap; the cap is the learned limit ramped by slow start):", ""]
    for policy, run in runs.items():
        joined = run["join"]["joined"]
        seen = [(t - joined, eps[node]) for t, eps in run.get("health_polls", []) if node in eps and t >= joined]
        marks = [f"{t:.1f} s {ep['inflight']}/{ep['cap'] if ep['cap'] is not None else '?'}" for t, ep in seen[:24:2]]
        out.append(f"- {policy}: {', '.join(marks) or 'never listed'}")
    limits = [f"- {policy}: {_limits(run)}" for policy, run in runs.items() if _limits(run)]
    if limits:
        out += ["", "Learned concurrency limits over the measured run (every node has 4 slots): the share of the "
                "`/health` readings below 4, and the lowest, per node:", "", *limits]
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
           args: dict[str, Any], block: str = "routing") -> str:
    begin, end = markers(block)
    loadavg = results.get("loadavg")
    out = [begin, f"Command: `{command}`  ", machine() + "  ",
           f"Wall time of the run: {wall_s / 60:.1f} min. Every process (fleet, router, nginx, client) shares these "
           f"{os.cpu_count()} cores; the CPU columns show how busy each was."
           + (f" Load average (1 / 5 / 15 min) at the start {' / '.join(f'{v:.2f}' for v in loadavg['start'])}, at "
              f"the end {' / '.join(f'{v:.2f}' for v in loadavg['end'])}." if loadavg else ""), ""]
    routers = results.get("routers") or {}
    if routers:
        out += ["Routers: " + "; ".join(f"`{k}`: {v['label']}, `speech_router` imported from `{_short(v['package'])}`"
                                         + (f" (`git archive {v['rev']} speech_router`, started with PYTHONPATH "
                                            "there and that directory as its working directory)"
                                            if v.get("cwd") else "")
                                         for k, v in routers.items()) + ".", ""]
    fleet_cmd = None
    for key in ("a", "b", "d"):
        if key in results:
            run = next(iter(results[key]["runs"].values()))
            fleet_cmd = _command(run["fleet_argv"])
    for key, section in (("a", section_a), ("b", section_b), ("d", section_d)):
        if key in results:
            out += section(results[key], fleet_cmd or "", args)
    if "e" in results:
        out += section_e(results["e"], _command(next(iter(results["e"]["runs"].values()))["fleet_argv"]), args)
    if "c" in results:
        out += section_c(results["c"])
    out.append(end)
    return "\n".join(out)


def _short(path: str) -> str:
    """A package path without the run's temporary directory name (it changes every run)."""
    parts = Path(path).parts
    for name in ("previous-router", "current-router"):
        if name in parts:
            return str(Path("<run dir>", *parts[parts.index(name):]))
    return path


def markers(block: str) -> tuple[str, str]:
    return f"<!-- {block}:begin -->", f"<!-- {block}:end -->"


def write_report(path: Path, results: dict[str, Any], *, block: str = "routing", **kwargs: Any) -> None:
    """Rewrite the ``block`` between its markers in ``path`` (added on top when the file has no such block)."""
    text = render(results, block=block, **kwargs)
    begin, end = markers(block)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in old and end in old:
        new = old[:old.index(begin)] + text + old[old.index(end) + len(end):]
    elif old.startswith("# "):  # after the file's title
        title, rest = old.split("\n", 1)
        new = f"{title}\n\n{text}\n{rest}"
    else:
        new = "# Routing benchmark\n\n" + text + "\n" + (old and "\n" + old)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new, encoding="utf-8")
