"""Round-2 attacks on the router's edge (issue #23), on the router before the fixes and on the working tree's:

- flood: 1,000 connections held from one address (kept alive after one ``GET /livez``, or silent) and 1,000 kept
  alive from four addresses, while another client sends ``GET /livez`` on a new connection every 50 ms;
- drain: 1 and 4 connections pushing chunked bodies the router refused (401) as fast as they can, starting again
  when closed, while another client sends short speech requests one at a time (and once without the attack);
- slow readers: clients reading a 4,000-character text's WAV (about 10 MB) at 1 KB/s, half through
  ``/v1/audio/speech`` (fanned out) and half through ``/tts_url`` (verified whole): the router's memory while they
  read, once every answer is in (the node's slots free), and after they left.

    python -m bench.edge_attacks [--before REV] [--part all|flood|drain|slow] [--seconds S] [--out bench/README.md]

Each router runs `speech-router serve` with default connection limits in front of one emulated index-tts-vllm node
(no synthesis delay), all on 127.0.0.1; attackers use source addresses 127.0.0.2 and up. The router's CPU is its
user + system time over the attack; RSS is VmRSS at the end of it (and VmHWM, its peak). Bounded: every phase has
a time cap, and every child is stopped however the run ends.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._attack_clients import MIB, Usage, Victim, flood, get, inflight, post, push, read_slowly, slow_readers
from bench._previous import RouterImpl, router_at
from bench._procs import HOST, free_port, start_node, start_router, stopped_on_exit
from bench._readme import publish

#: the commit before issue #23's fixes
BEFORE_REV = "f5fd503"
LONG_TEXT = ("A sentence of a long text that goes on and on. " * 90)[:4000]
KEY = "bench-client-key"


def config(node_port: int) -> str:
    return json.dumps({
        "server": {"log_level": "warning", "watch_config": False},
        "pools": {"tts": {"type": "index-tts-vllm", "endpoints": [{"url": f"http://{HOST}:{node_port}",
                                                                   "max_concurrency": 8}],
                          "queue": {"timeout": 120}}},
        "models": {"m": ["tts"]}, "voices": {"alloy": {"spk_audio_path": "/v/alloy.wav"}}})


def flood_rows(port: int, pid: int, seconds: float) -> list[list[str]]:
    rows = []
    for label, count, sources, kind in [("1,000 kept alive, one address", 1000, ["127.0.0.2"], "keepalive"),
                                        ("1,000 silent, one address", 1000, ["127.0.0.2"], "silent"),
                                        ("1,000 kept alive, 4 addresses", 1000,
                                         [f"127.0.0.{i}" for i in range(2, 6)], "keepalive")]:
        before = Usage.of(pid)
        held = flood(port, count, sources, kind=kind)
        victim = Victim()
        victim.run(port, get("/livez"), seconds)
        after = Usage.of(pid)
        open_now = sum(1 for s in held if _open(s))
        for sock in held:
            sock.close()
        rows.append([label, f"{len(held)} / {open_now}", victim.summary(), f"{after.cpu_s - before.cpu_s:.2f}",
                     f"{after.rss / MIB:.0f} ({after.hwm / MIB:.0f})"])
        time.sleep(2)  # the router sees them close
    return rows


def _open(sock: Any) -> bool:
    """Whether the router still holds ``sock`` open (whatever it sent before is read first)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def drain_rows(port: int, pid: int, seconds: float) -> list[list[str]]:
    speech = post("/v1/audio/speech", {"model": "m", "voice": "alloy", "input": "a short sentence for the victim",
                                       "response_format": "wav"}, KEY)
    alone = Victim()
    alone.run(port, speech, min(seconds, 5.0), pause=0.02)
    rows = [["none", "-", alone.summary(), "-", "-"]]
    for attackers in (1, 4):
        results: Any = multiprocessing.Queue()
        pushers = [multiprocessing.Process(target=push, args=(port, f"127.0.0.{2 + i}", seconds, results))
                   for i in range(attackers)]
        before = Usage.of(pid)
        for pusher in pushers:
            pusher.start()
        victim = Victim()
        victim.run(port, speech, seconds, pause=0.02)
        after = Usage.of(pid)
        counts = [results.get(timeout=30) for _ in pushers]
        for pusher in pushers:
            pusher.join(10)
        pushed, connections = sum(c[0] for c in counts), sum(c[1] for c in counts)
        rows.append([f"{attackers} pushing", f"{pushed / MIB:,.0f} MiB over {connections} connections",
                     victim.summary(), f"{after.cpu_s - before.cpu_s:.2f}",
                     f"{after.rss / MIB:.0f} ({after.hwm / MIB:.0f})"])
        time.sleep(1)
    return rows


def slow_rows(port: int, pid: int, counts: list[int]) -> list[list[str]]:
    speech = post("/v1/audio/speech", {"model": "m", "voice": "alloy", "input": LONG_TEXT, "response_format": "wav"},
                  KEY, close=False)
    whole = post("/tts_url", {"text": LONG_TEXT, "spk_audio_path": "/v/alloy.wav"}, KEY, close=False)
    rows = []
    for count in counts:
        time.sleep(2)
        base = Usage.of(pid)
        readers = slow_readers(port, [speech, whole], count)
        start = time.monotonic()
        time.sleep(1)
        while inflight(port) > 0 and time.monotonic() - start < 280:
            read_slowly(readers)
            time.sleep(1)
        in_s = time.monotonic() - start
        for _ in range(3):  # they go on reading at 1 KB/s, the node long done
            read_slowly(readers)
            time.sleep(1)
        held = Usage.of(pid)
        for sock in readers:
            sock.close()
        time.sleep(4)
        left = Usage.of(pid)
        rows.append([str(count), f"{in_s:.0f} s", f"{base.rss / MIB:.0f}", f"{held.rss / MIB:.0f}",
                     f"{(held.rss - base.rss) / count / 1024:.0f} KiB", f"{left.rss / MIB:.0f}"])
    return rows


def run_router(impl: RouterImpl, log_dir: Path, children: list, parts: set[str], seconds: float,
               slow_counts: list[int]) -> dict[str, list[list[str]]]:
    node, node_port = start_node(log_dir, ["--delay", "0", "--delay-per-char", "0"])
    children.append(node)
    port = free_port()
    router = start_router(config(node_port), port, log_dir, name=f"router-{impl.rev or 'tree'}".replace(" ", "-"),
                          command=impl.command, env={**impl.env, "SPEECH_ROUTER_API_KEYS": KEY}, cwd=impl.cwd)
    children.append(router)
    pid = router.proc.pid
    out: dict[str, list[list[str]]] = {}
    steps: list[tuple[str, Callable[[], list[list[str]]]]] = [
        ("flood", lambda: flood_rows(port, pid, seconds)), ("drain", lambda: drain_rows(port, pid, seconds)),
        ("slow", lambda: slow_rows(port, pid, slow_counts))]
    for name, step in steps:
        if name in parts:
            print(f"{impl.label}: {name} ...", file=sys.stderr)
            out[name] = step()
    router.stop()
    node.stop()
    return out


def tables(results: list[tuple[str, dict[str, list[list[str]]]]], seconds: float) -> str:
    heads = {
        "flood": (f"### Connection flood: {seconds:g} s each, default limits (1,000; per address 750 after the fix)",
                  "| router | attack | connections opened / still open at the end | the other client: GET /livez "
                  "every 50 ms on a new connection | router CPU s | router RSS MiB (peak) |"),
        "drain": (f"### Refused bodies pushed: {seconds:g} s each (401, chunked, started again when closed)",
                  "| router | attack | pushed | the other client: short speech requests one at a time | router CPU s "
                  "| router RSS MiB (peak) |"),
        "slow": ("### Slow readers: a 4,000-character text (~10 MB WAV) each, read at 1 KB/s, half fanned out, half "
                 "/tts_url", "| router | readers | every answer in after | RSS before MiB | RSS while they read MiB | "
                 "per reader | RSS 4 s after they left MiB |")}
    out = []
    for part, (title, head) in heads.items():
        rows = [(label, row) for label, res in results for row in res.get(part, [])]
        if not rows:
            continue
        cols = head.count("|") - 1
        out += [title, "", head, "|" + "---|" * cols]
        out += [f"| {label} | " + " | ".join(row) + " |" for label, row in rows]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE_REV, help="the commit to compare with ('none' to skip)")
    parser.add_argument("--part", default="all", help="all, or a comma-separated list of flood, drain, slow")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each flood and drain attack")
    parser.add_argument("--slow", default="32,200", help="slow reader counts (the router before runs the first only)")
    parser.add_argument("--out", help="write the tables into this README (between the edge_attacks markers)")
    args = parser.parse_args(argv)
    parts = {"flood", "drain", "slow"} if args.part == "all" else set(args.part.split(","))
    counts = [int(c) for c in args.slow.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    load = os.getloadavg()
    results = []
    with stopped_on_exit() as (children, log_dir):
        impls = [] if args.before == "none" else [router_at(args.before, log_dir / "before")]
        impls.append(router_at("worktree", log_dir))
        for impl in impls:
            label = "before" if impl.rev != "working tree" else "after"
            results.append((f"{label} ({impl.rev})", run_router(
                impl, log_dir, children, parts, args.seconds, counts[:1] if label == "before" else counts)))
    after = os.getloadavg()
    text = (f"Command: `python -m bench.edge_attacks --part {args.part} --seconds {args.seconds:g} --slow {args.slow}`"
            f"  \nMachine: nproc {os.cpu_count()}; Python {platform.python_version()}; load average "
            f"{load[0]:.2f} before, {after[0]:.2f} after (shared with other sessions: noisy)\n\n"
            + tables(results, args.seconds))
    publish(text, args.out, "edge_attacks", "## Edge attacks, round 2 (issue #23)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
