"""`python -m bench.fleet`: a fleet of emulated index-tts-vllm v2 nodes with GPU-like timing, in one process.

Each node answers like `api_server_v2.py`: `POST /tts_url` -> a WAV (`audio/wav`, a valid RIFF header),
`GET /health` -> `{"status": "healthy", ...}`, errors as 500 `{"status": "error", "error": "<traceback>"}`.
A node has `--slots` GPU slots; requests beyond them wait in line (FIFO), as in the real server's GPU stage.
Once a request holds a slot it takes

    service = (base_ms + per_char_ms x len(text)) / speed x slow x lognormal(0, sigma)

The lognormal factor comes from each node's own random stream (seed + i), or, with `--jitter-by-text`,
from the text itself (`keyed_jitter(seed, text)`): then a text takes the same time on any node of the
same speed, whichever node serves it and in whatever order, and a benchmark can compute the service time
of every request it will send (`bench.routing`'s no-queueing floor).

The audio itself is silence of a fixed size (`--wav-bytes`), made once: routing is what is measured here.

For long texts (`bench.longtext`), `--max-tokens N` makes a node work like IndexTTS2 on its GPU: it cuts
the text at sentence ends, merges sentences up to N tokens, and synthesizes the pieces one after another,
each paying `base_ms` again (`bench/_speech_model.py`); `--per-wide-char-ms` prices Chinese characters
apart from Latin ones. `--audio-ms-per-char`/`--audio-ms-per-wide-char` make the answer a WAV as long as
the text's speech would be (a tone, `--gap-ms` of silence between pieces) instead of the fixed one.

Failure switches, changed at runtime (JSON of knob names to values):

- `down`: stop listening (connection refused) and reset open connections; `false` listens again.
- `hang`: accept synthesis requests and never answer (until the client closes); `/health` still answers,
  as on a real node whose GPU stage is stuck. `hang_health` makes `/health` hang too.
- `fail`: share of syntheses (0-1, `true` = 1) answered with a CUDA-OOM 500 after their service time.
- `slow`: a factor on the service time; `speed` can be changed too.

Control: `POST http://HOST:CONTROL/_fleet/nodes/<index or name>/config`, `POST .../_fleet/config` (every
node), `GET .../_fleet/state`. Each node also takes `POST /_emulator/config` and `GET /_emulator/state`
itself (but a node that is down cannot bring itself back: use the control port).

Why one process and one event loop for every node: on a 2-core machine shared with the router and the
load generator, threads would fight over one GIL and a process per node would add context switches.
A node's work is a timer (`asyncio.sleep`), so one loop serves thousands of requests a second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from bench._miniserver import MiniServer, Reply, Request
from bench._speech_model import SpeechModel, keyed_jitter

WAV_RATE = 22_050
DEFAULT_WAV_BYTES = 44 + 2 * WAV_RATE // 10  # 0.1 s of 16-bit mono silence
OOM_TRACEBACK = ("Traceback (most recent call last):\n  File \"/root/index-tts-vllm/api_server_v2.py\", line 96, in "
                 "tts_api_url\n    sr, wav = await tts.infer(**kwargs)\ntorch.OutOfMemoryError: CUDA out of memory. "
                 "Tried to allocate 2.00 GiB.\n")


def wav_bytes(total: int = DEFAULT_WAV_BYTES, rate: int = WAV_RATE) -> bytes:
    """A silent 16-bit mono WAV of about ``total`` bytes with a correct RIFF header."""
    data = max(2, (total - 44) // 2 * 2)
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + fmt + b"data" + struct.pack("<I", data) + bytes(data)


@dataclass
class Knobs:
    """What can change on a running node."""

    speed: float = 1.0
    slow: float = 1.0
    hang: bool = False
    hang_health: bool = False
    fail: float = 0.0
    down: bool = False

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise KeyError(f"unknown knobs: {sorted(unknown)}; known: {sorted(names)}")
        for key, value in changes.items():
            kind = type(getattr(self, key))
            setattr(self, key, float(value) if kind is float else bool(value))


class Node:
    """One emulated index-tts-vllm v2 node on its own port."""

    def __init__(self, name: str, knobs: Knobs, *, slots: int | None, model: SpeechModel,
                 sigma: float, wav: bytes, rng: random.Random, host: str, port: int,
                 jitter_seed: int | None = None) -> None:
        self.name = name
        self.knobs = knobs
        self.slots = slots
        self.model, self.sigma = model, sigma
        self.wav = wav
        self.rng = rng
        #: not None: the jitter is keyed by (this seed, the text) instead of drawn from ``rng``
        self.jitter_seed = jitter_seed
        self.server = MiniServer(self.handle, host, port, extra_headers=[("x-emulator-node", name)])
        self._gate = asyncio.Semaphore(slots) if slots else None
        self.in_flight = self.busy = self.served = self.failed = self.hung = 0
        #: the most requests it held at once (in its slots and waiting for one), since it started
        self.peak = 0

    def __repr__(self) -> str:
        return f"Node(name={self.name!r}, port={self.server.port}, knobs={self.knobs!r})"

    @property
    def url(self) -> str:
        return f"http://{self.server.host}:{self.server.port}"

    def service_time(self, text: str) -> float:
        k = self.knobs
        jitter = self._jitter if self.jitter_seed is None else keyed_jitter(self.jitter_seed, text, self.sigma)
        return self.model.service_time(text, jitter) / k.speed * k.slow

    def _jitter(self) -> float:
        return self.rng.lognormvariate(0.0, self.sigma) if self.sigma > 0 else 1.0

    async def configure(self, changes: dict[str, Any]) -> None:
        self.knobs.update(changes)
        if self.knobs.down and self.server.listening:
            await self.server.stop()
        elif not self.knobs.down and not self.server.listening:
            await self.server.start()

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "listening": self.server.listening, "slots": self.slots,
                "knobs": asdict(self.knobs), "in_flight": self.in_flight, "busy": self.busy, "served": self.served,
                "failed": self.failed, "hung": self.hung, "peak": self.peak}

    async def handle(self, req: Request) -> Reply | None:
        if req.path == "/tts_url" and req.method == "POST":
            return await self._synthesize(req)
        if req.path == "/health" and req.method == "GET":
            if self.knobs.hang_health:
                await req.gone()
                return None
            return Reply.json({"status": "healthy", "message": "Service is running", "timestamp": time.time()})
        if req.path == "/_emulator/state" and req.method == "GET":
            return Reply.json(self.state())
        if req.path == "/_emulator/config" and req.method == "POST":
            return await _apply(self, req)
        return Reply.json({"detail": "Not Found"}, 404)

    async def _synthesize(self, req: Request) -> Reply | None:
        try:
            data = req.json()
            text = str(data["text"])
            data["spk_audio_path"]
        except (ValueError, KeyError, TypeError) as exc:  # the real handler's bare `except Exception`
            return Reply.json({"status": "error", "error": f"Traceback (most recent call last):\n{exc!r}\n"}, 500)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.knobs.hang:
                return await self._hang(req)
            async with self._gate or contextlib.nullcontext():
                self.busy += 1
                try:
                    await asyncio.sleep(self.service_time(text))
                finally:
                    self.busy -= 1
            if self.knobs.hang:  # stuck while it was being served
                return await self._hang(req)
            if self.knobs.fail and self.rng.random() < self.knobs.fail:
                self.failed += 1
                return Reply.json({"status": "error", "error": OOM_TRACEBACK}, 500)
            self.served += 1
            return Reply(200, self.model.wav(text) if self.model.makes_audio else self.wav, "audio/wav")
        finally:
            self.in_flight -= 1

    async def _hang(self, req: Request) -> None:
        self.hung += 1
        await req.gone()


class Fleet:
    """The nodes plus a control port."""

    def __init__(self, nodes: list[Node], host: str, control_port: int) -> None:
        self.nodes = nodes
        self.control = MiniServer(self.handle, host, control_port)

    def __repr__(self) -> str:
        return f"Fleet(nodes={[n.name for n in self.nodes]}, control={self.control.port})"

    def find(self, key: str) -> Node | None:
        if key.isdigit() and int(key) < len(self.nodes):
            return self.nodes[int(key)]
        return next((n for n in self.nodes if n.name == key), None)

    async def start(self) -> None:
        for node in self.nodes:
            await node.server.start()
        await self.control.start()

    async def stop(self) -> None:
        for node in self.nodes:
            await node.server.stop()
        await self.control.stop()

    async def handle(self, req: Request) -> Reply:
        parts = req.path.strip("/").split("/")
        if parts == ["_fleet", "state"] and req.method == "GET":
            return Reply.json({"nodes": [n.state() for n in self.nodes]})
        if parts == ["_fleet", "config"] and req.method == "POST":
            replies = [await _apply(n, req) for n in self.nodes]
            bad = next((r for r in replies if r.status != 200), None)
            return bad or Reply.json({"nodes": [n.state() for n in self.nodes]})
        if len(parts) == 4 and parts[:2] == ["_fleet", "nodes"] and parts[3] == "config" and req.method == "POST":
            node = self.find(parts[2])
            if node is None:
                return Reply.json({"error": f"no node {parts[2]!r}"}, 404)
            return await _apply(node, req)
        return Reply.json({"detail": "Not Found"}, 404)


async def _apply(node: Node, req: Request) -> Reply:
    try:
        changes = req.json()
        if not isinstance(changes, dict):
            raise TypeError("expected a JSON object of knob names to values")
        await node.configure(changes)
    except (ValueError, KeyError, TypeError) as exc:
        return Reply.json({"error": str(exc)}, 400)
    return Reply.json(node.state())


def _floats(text: str, n: int, what: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if len(values) == 1:
        values *= n
    if len(values) != n or any(v <= 0 for v in values):
        raise SystemExit(f"--{what} needs 1 or {n} positive values, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--slots", type=int, default=4, help="GPU slots per node; 0 = unlimited (default 4)")
    p.add_argument("--speeds", default="1", help="speed per node, comma-separated, or one for all (default 1)")
    p.add_argument("--base-ms", type=float, default=50.0, help="fixed service time at speed 1 (default 50)")
    p.add_argument("--per-char-ms", type=float, default=2.0, help="service time per character at speed 1 (default 2)")
    p.add_argument("--per-wide-char-ms", type=float, default=None,
                   help="service time per wide (Chinese) character at speed 1 (default: --per-char-ms)")
    p.add_argument("--max-tokens", type=int, default=0,
                   help="synthesize sentence pieces of up to N tokens one after another, each paying --base-ms "
                        "(IndexTTS2 uses 120); 0: the whole text is one piece (default)")
    p.add_argument("--audio-ms-per-char", type=float, default=0.0,
                   help="answer a WAV this long per character (a tone) instead of --wav-bytes of silence")
    p.add_argument("--audio-ms-per-wide-char", type=float, default=0.0, help="the same per wide character")
    p.add_argument("--gap-ms", type=float, default=0.0, help="silence between pieces in that WAV")
    p.add_argument("--jitter-sigma", type=float, default=0.3, help="sigma of the lognormal(0, sigma) factor")
    p.add_argument("--jitter-by-text", action="store_true",
                   help="draw each request's jitter from (--seed, its text) instead of the node's own stream: the "
                        "same text takes the same time on every node of one speed")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7000, help="node i listens on port+i; 0: free ports (default 7000)")
    p.add_argument("--control-port", type=int, default=None, help="default: port+nodes (a free port when --port 0)")
    p.add_argument("--wav-bytes", type=int, default=DEFAULT_WAV_BYTES, help="size of each WAV answer (default 0.1 s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the jitter (node i uses seed+i)")
    p.add_argument("--name-prefix", default="node")
    return p


def build(args: argparse.Namespace) -> Fleet:
    speeds = _floats(args.speeds, args.nodes, "speeds")
    wav = wav_bytes(args.wav_bytes)
    per_wide = None if args.per_wide_char_ms is None else args.per_wide_char_ms / 1000
    model = SpeechModel(base_s=args.base_ms / 1000, per_char_s=args.per_char_ms / 1000, per_wide_char_s=per_wide,
                        max_tokens=args.max_tokens or None, audio_s_per_char=args.audio_ms_per_char / 1000,
                        audio_s_per_wide_char=args.audio_ms_per_wide_char / 1000, gap_s=args.gap_ms / 1000)
    nodes = [Node(f"{args.name_prefix}{i}", Knobs(speed=speeds[i]), slots=args.slots or None,
                  model=model, sigma=args.jitter_sigma, wav=wav,
                  rng=random.Random(args.seed + i), host=args.host, port=args.port + i if args.port else 0,
                  jitter_seed=args.seed if args.jitter_by_text else None)
             for i in range(args.nodes)]
    control = args.control_port if args.control_port is not None else (args.port + args.nodes if args.port else 0)
    return Fleet(nodes, args.host, control)


async def serve(args: argparse.Namespace) -> None:
    fleet = build(args)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await fleet.start()
    try:
        for node in fleet.nodes:
            print(f"{node.name} (v2, speed {node.knobs.speed:g}, slots {node.slots or 'unlimited'}): {node.url}",
                  flush=True)
        print(f"control: http://{args.host}:{fleet.control.port}", flush=True)
        await done.wait()
    finally:
        await fleet.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))
    print("fleet stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
