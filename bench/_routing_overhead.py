"""Scenario c of bench.routing: what the router adds, next to a direct connection and nginx.

One node answers at once with a 240 KB WAV. A closed-loop client (wrk, a C program, when installed;
else bench.loadgen's aiohttp client) keeps 1, 16 or 64 requests in flight for a while, against the node
directly, through nginx (a plain reverse proxy with a keep-alive upstream, when installed), and through
the router (its `/tts_url` drop-in, the like-for-like of nginx, and `/v1/audio/speech` as wav).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench._procs import HOST, START_TIMEOUT_S, Child, free_port
from bench._routing_env import CpuMeter, children_of, fleet_argv, router_yaml, start_fleet, start_router, wait_quiet
from bench.loadgen import LoadConfig, run_load

WAV_BYTES = 240_000
TEXT = ("The router sits between the client and the node; this text is one hundred characters long, exactly..")
SPK = "/data/voices/alloy.wav"
TTS_URL_BODY = json.dumps({"text": TEXT, "spk_audio_path": SPK})
OPENAI_BODY = json.dumps({"model": "indextts2", "input": TEXT, "voice": "alloy", "response_format": "wav"})
WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d %d %d %d %d %d %.1f\\n", summary.requests, summary.duration,
    summary.bytes, e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.mean))
end
"""
_BENCH = re.compile(r"^BENCH (.*)$", re.MULTILINE)
#: the router may keep this many requests in flight on the one node (the node has no slot limit), so its
#: own queue never limits it where nginx would not be limited either
ROUTER_MAX_CONCURRENCY = 256


def nginx_conf(log_dir: Path, upstream_port: int | list[int], port: int, workers: int, balance: str = "",
               server_options: str = "") -> str:
    """nginx in front of one node or several (``balance``: e.g. ``least_conn;``; ``server_options``: each upstream
    server's, e.g. ``max_fails=1 fail_timeout=5s``)."""
    temp = log_dir / "nginx-temp"
    user = "user root root;\n" if os.geteuid() == 0 else ""
    ports = upstream_port if isinstance(upstream_port, list) else [upstream_port]
    servers = "".join(f"        server {HOST}:{p} {server_options};\n" for p in ports)
    return f"""{user}worker_processes {workers};
pid {log_dir}/nginx.pid;
error_log {log_dir}/nginx-error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    upstream tts {{
        {balance}
{servers}        keepalive 128;
    }}
    server {{
        listen {HOST}:{port} backlog=1024;
        location / {{
            proxy_pass http://tts;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 16k;
            proxy_buffers 64 8k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def start_nginx(children: list[Child], log_dir: Path, upstream_port: int | list[int], workers: int,
                balance: str = "", server_options: str = "") -> tuple[Child, str, str]:
    port = free_port()
    conf = nginx_conf(log_dir, upstream_port, port, workers, balance, server_options)
    path = log_dir / "nginx.conf"
    path.write_text(conf, encoding="utf-8")
    (log_dir / "nginx-temp").mkdir(exist_ok=True)
    child = Child(["nginx", "-p", str(log_dir), "-e", str(log_dir / "nginx-error.log"), "-c", str(path)],
                  log_dir, "nginx")
    children.append(child)
    deadline = time.monotonic() + START_TIMEOUT_S
    url = f"http://{HOST}:{port}"
    while time.monotonic() < deadline:
        child.check_alive()
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return child, url, conf
        except OSError:
            time.sleep(0.1)
    child.stop()
    raise RuntimeError(f"nginx did not start:\n{child.tail()}")


def wrk_script(log_dir: Path, body: str) -> Path:
    path = log_dir / f"wrk-{abs(hash(body))}.lua"
    path.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = {json.dumps(body)}\n{WRK_DONE}", encoding="utf-8")
    return path


def run_wrk(url: str, script: Path, concurrency: int, duration: float) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration:g}s", "--timeout", "30s", "-s", str(script), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    match = _BENCH.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    v = match.group(1).split()
    requests, dur_us = int(v[0]), int(v[1])
    errors = {k: int(x) for k, x in zip(("connect", "read", "write", "status", "timeout"), v[3:8], strict=False)
              if int(x)}
    client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"requests": requests, "rps": requests / (dur_us / 1e6), "bytes": int(v[2]), "errors": errors,
            "p50": int(v[8]) / 1e6, "p90": int(v[9]) / 1e6, "p99": int(v[10]) / 1e6, "mean": float(v[11]) / 1e6,
            "client_cpu_pct": 100 * client_cpu / (dur_us / 1e6),
            "command": " ".join(argv[:-3] + ["-s", "<post.lua>", argv[-1]])}


def run_aiohttp(url: str, api: str, concurrency: int, duration: float) -> dict[str, Any]:
    config = LoadConfig(url=url, api=api, mode="closed", concurrency=concurrency, duration=duration, timeout=30,
                        min_chars=len(TEXT), max_chars=len(TEXT), spk_audio_path=SPK)
    result = asyncio.run(run_load(config))
    s = result.summary()
    return {"requests": s["count"], "rps": s["rps"], "errors": s["error_kinds"], "p50": s["p50"], "p90": s["p90"],
            "p99": s["p99"], "mean": s["mean"], "client_cpu_pct": 100 * result.cpu_s / result.wall_s,
            "command": config.command()}


class _Overhead:
    """The fleet, nginx and routers of scenario c, and the rows measured against them."""

    def __init__(self, children: list[Child], log_dir: Path, *, duration: float, quiet_wait: float, log: Any) -> None:
        self.children, self.log_dir = children, log_dir
        self.duration, self.quiet_wait, self.log = duration, quiet_wait, log
        self.has_wrk = shutil.which("wrk") is not None
        self.fleet = start_fleet(children, log_dir, "fleet-overhead",
                                 fleet_argv(nodes=1, slots=0, speeds=[1], base_ms=0, per_char_ms=0, sigma=0,
                                            wav_bytes=WAV_BYTES))
        self.config = router_yaml(self.fleet.nodes, {"max_concurrency": ROUTER_MAX_CONCURRENCY})
        self.routers = 0

    def router(self) -> Any:
        """A fresh router: each path starts from the same state (see the breaker window in the findings)."""
        self.routers += 1
        return start_router(self.children, self.log_dir, f"router-overhead-{self.routers}", self.config, free_port())

    def row(self, name: str, base: str, api: str, proxy: list[int], concurrency: int, quiet: bool = True,
            **extra: Any) -> dict[str, Any]:
        url, body = (base + "/tts_url", TTS_URL_BODY) if api == "tts_url" else (base + "/v1/audio/speech", OPENAI_BODY)
        pids = proxy + [p for pid in proxy for p in children_of(pid)]
        background = wait_quiet(self.quiet_wait) if quiet else float("nan")
        meter = CpuMeter({"proxy": pids, "node": [self.fleet.child.proc.pid]})
        if self.has_wrk:
            row = run_wrk(url, wrk_script(self.log_dir, body), concurrency, self.duration)
        else:
            row = run_aiohttp(base, api, concurrency, self.duration)
        row.update(target=name, concurrency=concurrency, client="wrk" if self.has_wrk else "aiohttp",
                   cpu=meter.stop(), background=background, **extra)
        self.log(f"  c: {name:26s} c={concurrency:<3d} p50 {row['p50'] * 1000:7.2f} ms  p99 {row['p99'] * 1000:7.2f} "
                 f"ms  {row['rps']:8.0f} req/s  errors {row['errors'] or 0}")
        return row

    def warm(self, base: str, api: str) -> None:
        if self.has_wrk:
            url, body = (base + "/tts_url", TTS_URL_BODY) if api == "tts_url" else (base + "/v1/audio/speech",
                                                                                    OPENAI_BODY)
            run_wrk(url, wrk_script(self.log_dir, body), 16, 1)


def run_overhead(children: list[Child], log_dir: Path, *, duration: float, concurrencies: list[int],
                 nginx_workers: int, quiet_wait: float, sustained: int, log: Any) -> dict[str, Any]:
    o = _Overhead(children, log_dir, duration=duration, quiet_wait=quiet_wait, log=log)
    node_url = o.fleet.nodes["node0"]
    rows: list[dict[str, Any]] = []
    nginx_conf_text = None
    try:
        paths: list[tuple[str, str, str, list[int]]] = [("direct to node", node_url, "tts_url", [])]
        if shutil.which("nginx"):
            nginx, nginx_url, nginx_conf_text = start_nginx(children, log_dir, int(node_url.rsplit(":", 1)[1]),
                                                            nginx_workers)
            paths.append(("nginx", nginx_url, "tts_url", [nginx.proc.pid]))
        for name, base, api, proxy in paths:
            o.warm(base, api)
            rows += [o.row(name, base, api, proxy, c) for c in concurrencies]
        for name, api in (("router /tts_url", "tts_url"), ("router /v1/audio/speech", "openai")):
            router = o.router()
            try:
                o.warm(router.url, api)
                rows += [o.row(name, router.url, api, [router.child.proc.pid], c) for c in concurrencies]
            finally:
                router.child.stop()
        series = []
        if sustained:  # the same load, back to back on one router: does it hold up?
            router = o.router()
            try:
                wait_quiet(quiet_wait)
                series = [o.row("router /tts_url, sustained", router.url, "tts_url", [router.child.proc.pid], 16,
                                quiet=False, window=(i * duration, (i + 1) * duration)) for i in range(sustained)]
            finally:
                router.child.stop()
        check = None
        if o.has_wrk:  # is the client the bottleneck? the same run with the Python client, for comparison
            background = wait_quiet(quiet_wait)
            meter = CpuMeter({"proxy": [], "node": [o.fleet.child.proc.pid]})
            check = run_aiohttp(node_url, "tts_url", 16, duration)
            check.update(target="direct to node", concurrency=16, client="aiohttp (bench.loadgen)",
                         cpu=meter.stop(), background=background)
            log(f"  c: aiohttp client, direct c=16: {check['rps']:.0f} req/s")
    finally:
        for child in children:
            child.stop()
    return {"rows": rows, "series": series, "check": check, "nginx_conf": nginx_conf_text,
            "router_config": o.config, "fleet_argv": o.fleet.argv, "wav_bytes": WAV_BYTES, "text_chars": len(TEXT),
            "duration": duration, "nginx_workers": nginx_workers, "has_wrk": o.has_wrk}
