"""Processes and probes for bench.replicas: a state store, router replicas over one fleet, nginx round robin in
front of them (with a client key added to every request), and small clients for the rate-limit and cache phases.

Everything listens on 127.0.0.1; every child is a `bench._procs.Child`, stopped however the run ends.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench._procs import HOST, START_TIMEOUT_S, Child, free_port, start_router
from bench._routing_env import POLICIES, FleetProc, router_yaml
from bench._routing_overhead import nginx_conf

PLAIN_KEY, METERED_KEY = "bench-plain-key-0123456789", "bench-metered-key-0123456789"
KEYS_ENV = {"BENCH_PLAIN_KEY": PLAIN_KEY, "BENCH_METERED_KEY": METERED_KEY}
#: the metered key's requests per minute (the rate-limit phase sends several times as many)
PER_MINUTE = 30


def start_store(children: list[Child], log_dir: Path) -> str:
    """A valkey-server or redis-server on a free loopback port, no persistence; returns its URL."""
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("bench.replicas needs valkey-server or redis-server (Debian: apt-get install redis-server)")
    port = free_port()
    (log_dir / "store").mkdir(exist_ok=True)
    child = Child([binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir",
                   str(log_dir / "store"), "--protected-mode", "no"], log_dir, "store")
    children.append(child)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        child.check_alive()
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return f"redis://{HOST}:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the store did not start:\n{child.tail()}")


def replica_yaml(fleet: FleetProc, store: str | None) -> str:
    """The config every replica runs: bench.routing's full policy over the fleet, model indextts2 (and `cached`,
    the same pool with the response cache), a plain and a metered client key, and the store when there is one."""
    config = yaml.safe_load(router_yaml(fleet.nodes, POLICIES["full"], {"log_level": "warning", "log_format": "json"},
                                        fanout=False))
    config["models"]["cached"] = {"pools": ["gpu"], "cache": True, "fanout": {"enabled": False}}
    config["server"]["auth"] = {"keys": [{"name": "plain", "key_env": "BENCH_PLAIN_KEY"},
                                         {"name": "metered", "key_env": "BENCH_METERED_KEY",
                                          "requests_per_minute": PER_MINUTE}]}
    if store is not None:
        config["state"] = {"url": store, "prefix": f"bench-{time.monotonic_ns()}"}
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class Replicas:
    """Router replicas (each on its own port) and the nginx in front of them."""

    config: str
    log_dir: Path
    children: list[Child]
    ports: list[int] = field(default_factory=list)
    procs: list[Child] = field(default_factory=list)
    nginx: Child | None = None
    url: str = ""
    generation: int = 0

    def start(self, count: int) -> None:
        for i in range(count):
            port = free_port()
            self.ports.append(port)
            self.procs.append(self.spawn(i, port))
        self._nginx()

    def spawn(self, i: int, port: int) -> Child:
        self.generation += 1
        child = start_router(self.config, port, self.log_dir, name=f"replica-{i}-{self.generation}",
                             ready=("/readyz", "/health"), env=KEYS_ENV)
        self.children.append(child)
        return child

    def _nginx(self, down: int | None = None) -> None:
        """(Re)write nginx's config (``down``: the replica taken out of rotation) and start or reload it."""
        path = self.log_dir / "nginx.conf"
        if self.nginx is None:
            port = free_port()
            self.url = f"http://{HOST}:{port}"
        else:
            port = int(self.url.rsplit(":", 1)[1])
        conf = nginx_conf(self.log_dir, self.ports, port, 1)
        for i, p in enumerate(self.ports):
            if i == down:
                conf = conf.replace(f"server {HOST}:{p} ;", f"server {HOST}:{p} down;")
        conf = conf.replace("    upstream tts {", '    map $http_authorization $auth {\n        "" "Bearer '
                            f'{PLAIN_KEY}";\n        default $http_authorization;\n    }}\n    upstream tts {{')
        conf = conf.replace('proxy_set_header Connection "";', 'proxy_set_header Connection "";\n'
                            "            proxy_set_header Authorization $auth;")
        path.write_text(conf, encoding="utf-8")
        if self.nginx is None:
            (self.log_dir / "nginx-temp").mkdir(exist_ok=True)
            self.nginx = Child(["nginx", "-p", str(self.log_dir), "-e", str(self.log_dir / "nginx-error.log"), "-c",
                                str(path)], self.log_dir, "nginx")
            self.children.append(self.nginx)
            wait_answers(self.url + "/readyz")
        else:
            self.nginx.proc.send_signal(signal.SIGHUP)
            time.sleep(1.0)  # new workers take over; old ones finish what they proxy

    def restart(self, i: int) -> float:
        """Take replica ``i`` out of nginx, stop it (it finishes what it has), start a new one on its port, put it
        back: what a rolling update behind a load balancer does. Returns when it is back, with its start time."""
        self._nginx(down=i)
        self.procs[i].stop()
        started = time.monotonic()
        self.procs[i] = self.spawn(i, self.ports[i])
        took = time.monotonic() - started
        self._nginx()
        return took


def wait_answers(url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def node_peaks(fleet: FleetProc) -> dict[str, int]:
    """The most requests each node held at once beyond its slots (requests queued inside the node)."""
    nodes = fleet.state()["nodes"]
    return {n["name"]: max(0, n["peak"] - (n["slots"] or n["peak"])) for n in nodes}


async def rate_limited(url: str, sends: int) -> int:
    """Send ``sends`` requests with the metered key (a cheap route), 8 at a time; how many were admitted."""
    admitted = 0
    sem = asyncio.Semaphore(8)
    async with aiohttp.ClientSession() as session:
        async def one() -> None:
            nonlocal admitted
            async with sem, session.get(url + "/v1/models", headers={"Authorization": f"Bearer {METERED_KEY}"}) as r:
                await r.read()
                admitted += r.status == 200

        await asyncio.gather(*(one() for _ in range(sends)))
    return admitted


async def cache_hits(url: str, texts: list[str]) -> tuple[int, int]:
    """Speak each text (model `cached`) in order, one at a time; (hits, lookups) from x-speech-router-cache."""
    hits = 0
    async with aiohttp.ClientSession() as session:
        for text in texts:
            body = {"model": "cached", "input": text, "voice": "alloy", "response_format": "wav"}
            async with session.post(url + "/v1/audio/speech", json=body) as r:
                await r.read()
                hits += r.headers.get("x-speech-router-cache") == "hit"
    return hits, len(texts)


async def closed_loop(url: str, key: str, concurrency: int, duration: float) -> dict[str, Any]:
    """``concurrency`` clients sending one short text after another for ``duration`` s: latency p50, errors."""
    latencies: list[float] = []
    errors = 0
    body = {"model": "indextts2", "input": "A short sentence for the hot path.", "voice": "alloy",
            "response_format": "wav"}
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        end = time.perf_counter() + duration

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                async with session.post(url + "/v1/audio/speech", json=body, headers=headers) as r:
                    await r.read()
                    if r.status == 200:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    latencies.sort()
    return {"count": len(latencies), "errors": errors,
            "p50": latencies[len(latencies) // 2] if latencies else float("nan")}
