"""`python -m bench.tracing`: what tracing adds to a request's hot path, off, on with sampling 0, and on at 100 %.

Issue #21's measurement. One emulated index-tts-vllm node (no synthesis delay) behind three routers started side by
side from the working tree, identical but for their environment:

- ``off``: no ``OTEL_*`` variable (tracing is not even imported);
- ``on, sampled 0 %``: ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` with
  ``OTEL_TRACES_SAMPLER_ARG=0``: every request gets a (non-recording) server span and a traceparent for the node;
- ``on, sampled 100 %``: the same with ``always_on``: every span recorded and exported over OTLP/HTTP (batched) to a
  sink in this process that answers 200 and counts what it got.

Requests are sequential on one kept-alive connection per router (`POST /v1/audio/speech`, a short text), one
router after the other in a rotating order (so whatever else runs on the machine falls on all of them alike), in
rounds, each after waiting (up to ``--quiet-wait`` s) for the machine to be under 25 % busy. Per row: the median
and p90 latency seen by the client, and the router process's CPU time per request (user + system from /proc, the
exporter's thread included). The report gives the medians over rounds and the differences (``off`` against
``before``, the ``on`` rows against ``off``), with the load average before and after; and the tracing work of one
request timed alone in this process (``hooks_cost``).
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench._previous import current, export
from bench._procs import HOST, cpu_model, free_port, start_node, start_router, stopped_on_exit
from bench._routing_env import proc_cpu, wait_quiet

MARK_BEGIN, MARK_END = "<!-- tracing:begin -->", "<!-- tracing:end -->"
VARIANTS = ("before", "off", "on, sampled 0 %", "on, sampled 100 %")
BASE_REV = "44d7304"


class Sink(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver that keeps nothing: 200 to every export, counted."""

    exports = 0
    received = 0

    def __init__(self) -> None:
        super().__init__((HOST, 0), _SinkHandler)
        self.daemon_threads = True
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"


class _SinkHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        size = int(self.headers.get("content-length", 0))
        self.rfile.read(size)
        server: Any = self.server
        server.exports += 1
        server.received += size
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def env_of(variant: str, sink: Sink) -> dict[str, str]:
    if variant in ("before", "off"):
        return {}
    sampler = {"OTEL_TRACES_SAMPLER": "always_on"} if variant.endswith("100 %") else \
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_SERVICE_NAME": "bench", **sampler}


def router_yaml(node_port: int) -> str:
    return json.dumps({
        "server": {"access_log": False},
        "pools": {"gpu": {"type": "index-tts-vllm", "endpoints": [{"url": f"http://{HOST}:{node_port}"}],
                          "max_concurrency": 16}},
        "models": {"indextts2": ["gpu"]},
        "voices": {"alloy": {"spk_audio_path": "/data/voices/alloy.wav"}},
    })


class Client:
    """One kept-alive connection to one router, its latencies and its process's CPU time."""

    def __init__(self, port: int, pid: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)
        self.pid = pid
        self.times: list[float] = []
        self.cpu0 = proc_cpu(pid)

    def post(self, body: bytes) -> None:
        start = time.perf_counter()
        self.conn.request("POST", "/v1/audio/speech", body=body, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        resp.read()
        self.times.append(time.perf_counter() - start)
        if resp.status != 200:
            raise RuntimeError(f"router answered {resp.status}")

    def result(self) -> dict[str, float]:
        cpu = proc_cpu(self.pid) - self.cpu0
        self.conn.close()
        times = sorted(self.times)
        return {"p50_ms": 1000 * statistics.median(times), "p90_ms": 1000 * times[int(0.9 * len(times))],
                "cpu_us": 1e6 * cpu / len(times)}


def measure_round(routers: dict[str, tuple[int, int]], requests: int, body: bytes) -> dict[str, dict[str, float]]:
    """``requests`` to every router, interleaved one by one in a rotating order, so that whatever else the
    machine does meanwhile falls on every router alike."""
    clients = {v: Client(*routers[v]) for v in VARIANTS}
    for i in range(requests):
        for v in VARIANTS[i % len(VARIANTS):] + VARIANTS[:i % len(VARIANTS)]:
            clients[v].post(body)
    return {v: c.result() for v, c in clients.items()}


def hooks_cost(repeats: int = 5, number: int = 2000) -> dict[str, float]:
    """The tracing work one request does in the router's process (µs, best of ``repeats``), timed in this
    process without HTTP: the edge's server span, the node call's span and ``traceparent``, an attempt's end,
    the span's end; for ``off``, the same hooks finding tracing off."""
    from types import SimpleNamespace

    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from speech_router import tracing
    from speech_router.api.observe import Exchange
    from speech_router.api.table import ROUTES
    from speech_router.config.models import TracingConfig
    from speech_router.router.endpoint import Finished
    from speech_router.router.outlier import Outcome
    from speech_router.tracing.setup import Tracing

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    route = ROUTES.match("POST", "/v1/audio/speech")
    asgi = {"type": "http", "method": "POST", "path": "/v1/audio/speech", "scheme": "http", "http_version": "1.1",
            "client": ("127.0.0.1", 5000), "headers": [(b"content-type", b"application/json"), (b"user-agent", b"b")]}
    endpoint = SimpleNamespace(name="node-1", pool="gpu", backend=SimpleNamespace(type="index-tts-vllm"))
    done = Finished(0.01, 1, 30)

    def one(traced: Tracing | None) -> None:
        request = traced.start(asgi, route, "rid") if traced is not None else None
        tracing.node_request({}, "node-1", "http://127.0.0.1:6006")
        tracing.node_status("node-1", 200)
        if traced is not None:
            traced.listener.attempt_finished(endpoint, Outcome.OK, done)  # type: ignore[arg-type]
        tracing.current()  # the transcoder's and the cache's look
        if request is not None:
            ex = Exchange("rid", "POST", "/v1/audio/speech", route)
            ex.status = 200
            request.finish(ex)

    variants: dict[str, Tracing | None] = {"off": None}
    for name, ratio in (("on, sampled 0 %", 0.0), ("on, sampled 100 %", 1.0)):
        variants[name] = Tracing.from_config(TracingConfig(enabled=True, sample_ratio=ratio), {},
                                             processor=BatchSpanProcessor(Drop()))
    out = {}
    for name, traced in variants.items():
        best = min(timeit_once(lambda traced=traced: one(traced), number) for _ in range(repeats))
        out[name] = 1e6 * best / number
    for traced in variants.values():
        if traced is not None:
            traced.provider.shutdown()
    return out


def timeit_once(call: Any, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        call()
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> str:
    body = json.dumps({"model": "indextts2", "input": "Hello there, a short sentence.", "voice": "alloy",
                       "response_format": args.format}).encode()
    load_before = os.getloadavg()
    rows: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    with stopped_on_exit() as (children, log_dir):
        node, node_port = start_node(log_dir)
        children.append(node)
        sinks = {v: Sink() for v in VARIANTS}
        routers: dict[str, tuple[int, int]] = {}
        before = export(args.base_rev, log_dir / "before")
        for i, variant in enumerate(VARIANTS):
            port = free_port()
            impl = before if variant == "before" else current()
            child = start_router(router_yaml(node_port), port, log_dir, name=f"router-{i}", command=impl.command,
                                 env={**impl.env, **env_of(variant, sinks[variant])}, cwd=impl.cwd)
            children.append(child)
            routers[variant] = (port, child.proc.pid)
        measure_round(routers, args.warmup, body)
        for _ in range(args.rounds):
            wait_quiet(args.quiet_wait)
            for variant, row in measure_round(routers, args.requests, body).items():
                rows[variant].append(row)
        time.sleep(6)  # the batch exporter's delay (5 s by default): its last export is counted
        exports = {v: (sinks[v].exports, sinks[v].received) for v in VARIANTS}
        for sink in sinks.values():
            sink.shutdown()
    load_after = os.getloadavg()
    return report(args, rows, exports, load_before, load_after, hooks_cost())


def report(args: argparse.Namespace, rows: dict[str, list[dict[str, float]]], exports: dict[str, tuple[int, int]],
           load_before: tuple[float, float, float], load_after: tuple[float, float, float],
           hooks: dict[str, float]) -> str:
    median = {v: {k: statistics.median(r[k] for r in rows[v]) for k in ("p50_ms", "p90_ms", "cpu_us")}
              for v in VARIANTS}
    base = median["off"]
    command = (f"python -m bench.tracing --rounds {args.rounds} --requests {args.requests} --format {args.format} "
               f"--base-rev {args.base_rev}")
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; nproc {os.cpu_count()}; {cpu_model()}; "
        f"Python {platform.python_version()}; 1-minute load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after (other developers' work shares the machine)",
        "",
        f"Medians over {args.rounds} rounds of {args.requests} sequential requests per router, interleaved "
        f"(`{args.format}`, a 30-character text, one instant node):",
        "",
        "Added: `off` against `before`, the two `on` rows against `off`.",
        "",
        "| tracing | p50 | added p50 | p90 | router CPU per request | added CPU | OTLP exports (bytes) |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for v in VARIANTS:
        m = median[v]
        ref = median["before"] if v == "off" else base  # off against no tracing code; on against off
        added = "–" if v == "before" else f"{m['p50_ms'] - ref['p50_ms']:+.3f} ms"
        added_cpu = "–" if v == "before" else f"{m['cpu_us'] - ref['cpu_us']:+.0f} µs"
        count, size = exports[v]
        name = f"before ({args.base_rev}: no tracing code)" if v == "before" else v
        lines.append(f"| {name} | {m['p50_ms']:.3f} ms | {added} | {m['p90_ms']:.3f} ms | {m['cpu_us']:.0f} µs | "
                     f"{added_cpu} | {count} ({size:,}) |")
    lines += ["", "The tracing work of one request alone, timed in one process without HTTP (the server span, the "
              "node call's span and `traceparent`, an attempt's end, the span's end; best of 5 x 2000): "
              + ", ".join(f"{v} {us:.1f} µs" for v, us in hooks.items()) + "."]
    lines += ["", "Each round (p50 ms / CPU µs per request): " + "; ".join(
        f"{v}: " + ", ".join(f"{r['p50_ms']:.2f}/{r['cpu_us']:.0f}" for r in rows[v]) for v in VARIANTS)]
    return "\n".join(lines)


def write_block(path: Path, block: str) -> None:
    text = path.read_text(encoding="utf-8")
    begin, end = text.index(MARK_BEGIN) + len(MARK_BEGIN), text.index(MARK_END)
    path.write_text(text[:begin] + "\n" + block + "\n" + text[end:], encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per router per round")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--format", default="wav", choices=["wav", "mp3"], help="wav passes through; mp3 transcodes")
    parser.add_argument("--quiet-wait", type=float, default=10.0, help="seconds to wait for a quiet machine per row")
    parser.add_argument("--base-rev", default=BASE_REV, help="the commit without tracing, for the `before` row")
    parser.add_argument("--out", type=Path, help="rewrite the block between the tracing markers of this file")
    args = parser.parse_args()
    block = run(args)
    print(block)
    if args.out is not None:
        write_block(args.out, block)


if __name__ == "__main__":
    main()
