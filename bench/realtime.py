"""`python -m bench.realtime`: realtime speech (issue #19), the router over four nodes against one node's own
WebSocket, side by side.

An LLM's answer (8 sentences, about 110 tokens) is streamed token by token at `--rates` tokens a second over
`WS /v1/audio/speech/stream`, by `--sessions` concurrent clients, to (a) one emulated vllm-omni node's own
WebSocket (vllm-omni's handler: each sentence generated in turn, inside its reading loop) and (b) the router
in front of four such nodes (each sentence dispatched as soon as it is complete, side by side on the fleet).
Reported per run: time to first audio after the first sentence's last token was sent, against the node's own
time for that sentence (HTTP, measured first: the issue's target is that time + 50 ms), and the gaps a listener
playing each sentence as it arrives would hear (``bench._realtime_client``).

Nodes: five `python -m speech_router.emulator --api vllm-omni` processes (4 for the router, 1 alone),
`--slots` engine slots each, a sentence taking `--delay` + `--delay-per-char` x characters (IndexTTS at a
real-time factor of about 0.25; audio is 60 ms per character). Loopback only, every wait bounded, children
always stopped. `--out bench/README.md` rewrites the generated block there.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

from bench._omni_load import load_average, start_omni_nodes
from bench._previous import RouterImpl, router_at
from bench._procs import HOST, cpu_model, free_port, start_router, stopped_on_exit
from bench._readme import write_block
from bench._realtime_client import Stream, stream, tokens

BEGIN, END = "<!-- realtime:begin -->", "<!-- realtime:end -->"
SECTION = "## Realtime speech (issue #19)"
TEXT = ("Sure, I can help with that. Your order shipped this morning from our warehouse in Rotterdam. It should "
        "arrive on Thursday, between nine and noon. You will get a text message with a tracking link once the "
        "courier picks it up. If nobody is home, the driver will leave it with a neighbour or at the pickup point "
        "on Main Street. You can also change the delivery day in the app, up to the evening before. Is there "
        "anything else I can do for you today? Thank you for calling, and have a great day.")
FIRST_SENTENCE = "Sure, I can help with that."
PATH = "/v1/audio/speech/stream"


@dataclass
class Row:
    target: str
    rate: float
    sessions: int
    streams: list[Stream]


def reference(path: Path) -> bytes:
    t = np.arange(32_000) / 16_000
    buf = io.BytesIO()
    sf.write(buf, (0.2 * np.sign(np.sin(2 * np.pi * 170 * t))).astype(np.float32), 16_000, format="WAV",
             subtype="PCM_16")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def router_yaml(ports: list[int], voice: Path, slots: int) -> str:
    return str(yaml.safe_dump({
        "server": {"access_log": False, "watch_config": False, "log_level": "warning"},
        "pools": {"omni": {"type": "vllm-omni", "endpoints": [{"url": f"http://{HOST}:{p}"} for p in ports],
                           "max_concurrency": slots, "health_check": {"interval": 2.0, "timeout": 2.0}}},
        "models": {"omni": {"pools": ["omni"]}},
        "voices": {"alloy": {"ref_audio_file": str(voice)}},
    }))


def node_seconds(port: int, ref_url: str, repeats: int = 5) -> float:
    """The node's own time for the first sentence, over HTTP (median)."""
    body = json.dumps({"input": FIRST_SENTENCE, "ref_audio": ref_url, "response_format": "wav"}).encode()
    times = []
    for _ in range(repeats):
        request = urllib.request.Request(f"http://{HOST}:{port}/v1/audio/speech", method="POST", data=body,
                                         headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as resp:
            resp.read()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def run(url: str, config: dict[str, object], rate: float, sessions: int) -> list[Stream]:
    return list(await asyncio.gather(*(stream(url, config, TEXT, rate) for _ in range(sessions))))


def measure(args: argparse.Namespace, router_port: int, node_port: int, ref_url: str) -> list[Row]:
    targets = {"one node's own WebSocket": (f"ws://{HOST}:{node_port}{PATH}", {"ref_audio": ref_url}),
               "router, 4 nodes": (f"ws://{HOST}:{router_port}{PATH}", {"model": "omni", "voice": "alloy"})}
    rows: dict[tuple[str, float, int], Row] = {}
    for _ in range(args.repeats):
        for rate in args.rates:
            for sessions in args.sessions:
                for target, (url, config) in targets.items():
                    found = asyncio.run(run(url, {**config, "response_format": "wav"}, rate, sessions))
                    rows.setdefault((target, rate, sessions), Row(target, rate, sessions, [])).streams += found
    return list(rows.values())


def report(args: argparse.Namespace, impl: RouterImpl, rows: list[Row], node_s: float, before: str,
           elapsed: float) -> str:
    lines = [f"Run on {cpu_model()} ({impl.label}), load average before {before}, after {load_average()}; "
             f"{elapsed:.0f} s.", "",
             f"Command: `{' '.join(['python -m bench.realtime', *args.argv])}`", "",
             f"Nodes: {args.slots} slots, a sentence takes {args.delay:g} s + {args.delay_per_char * 1000:g} ms per "
             f"character; the first sentence ({len(FIRST_SENTENCE)} characters) takes the node "
             f"**{node_s * 1000:.0f} ms** over HTTP, so the target for first audio is "
             f"{(node_s + 0.05) * 1000:.0f} ms. {len(tokens(TEXT))} tokens, 8 sentences, "
             f"{args.repeats} run(s) per row.", "",
             "| target | tokens/s | sessions | first audio after sentence 1 ends: median / max ms | met | "
             "sentences late / all | max gap ms | gap per session ms | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r.sessions, r.rate, r.target)):
        first = [s.first_audio for s in row.streams]
        gaps = [s.gaps() for s in row.streams]
        late = sum(1 for g in gaps for value in g if value > 0.01)
        total = sum(len(g) for g in gaps)
        worst = max((value for g in gaps for value in g), default=0.0)
        per_session = statistics.mean(sum(g) for g in gaps)
        errors = sum(len(s.errors) + sum(h.error for h in s.sentences) for s in row.streams)
        met = "yes" if max(first) <= node_s + 0.05 else "no"
        lines.append(f"| {row.target} | {row.rate:g} | {row.sessions} | {statistics.median(first) * 1000:.0f} / "
                     f"{max(first) * 1000:.0f} | {met} | {late} / {total} | {worst * 1000:.0f} | "
                     f"{per_session * 1000:.0f} | {errors} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.realtime", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", type=lambda v: [float(x) for x in v.split(",")], default=[20.0, 40.0, 60.0],
                   help="tokens a second (default 20,40,60)")
    p.add_argument("--sessions", type=lambda v: [int(x) for x in v.split(",")], default=[1, 4, 8],
                   help="concurrent sessions (default 1,4,8)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--slots", type=int, default=4, help="engine slots per node (vllm-omni's max_num_seqs)")
    p.add_argument("--delay", type=float, default=0.15, help="seconds per sentence")
    p.add_argument("--delay-per-char", type=float, default=0.015, help="seconds per character")
    p.add_argument("--rev", default="HEAD", help="which commit's router and nodes run (worktree: the working tree)")
    p.add_argument("--out", type=Path, default=None, help="rewrite the generated block of this file")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    before, started = load_average(), time.monotonic()
    with stopped_on_exit() as (children, log_dir):
        impl = router_at(args.rev, log_dir / "export")
        ports = []
        for i in range(5):  # a process each, as nodes are separate machines (one process would share its GIL)
            node, (port,) = start_omni_nodes(log_dir, 1, impl, name=f"omni{i}", slots=args.slots, delay=args.delay,
                                             delay_per_char=args.delay_per_char)
            children.append(node)
            ports.append(port)
        voice = log_dir / "alloy.wav"
        ref_url = "data:audio/wav;base64," + base64.b64encode(reference(voice)).decode()
        router_port = free_port()
        children.append(start_router(router_yaml(ports[:4], voice, args.slots), router_port, log_dir,
                                     command=impl.command, env=impl.env or None, cwd=impl.cwd))
        node_s = node_seconds(ports[4], ref_url)
        rows = measure(args, router_port, ports[4], ref_url)
    block = report(args, impl, rows, node_s, before, time.monotonic() - started)
    print(block)
    if args.out is not None:
        write_block(args.out, block, begin=BEGIN, end=END, section=SECTION)


if __name__ == "__main__":
    main()
