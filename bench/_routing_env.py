"""Processes and probes for bench.routing: the fleet, a router per policy, router metrics and CPU time.

Everything listens on 127.0.0.1. Children are `bench._procs.Child`s, so `stopped_on_exit()` stops them
however the run ends.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench._previous import RouterImpl
from bench._procs import HOST, START_TIMEOUT_S, Child
from bench._procs import start_router as _start_router

_NODE = re.compile(r"^(\S+) \(v2[^)]*\): (http://\S+)$", re.MULTILINE)
_CONTROL = re.compile(r"^control: (http://\S+)$", re.MULTILINE)
TICKS = os.sysconf("SC_CLK_TCK")

#: router settings per balancing policy compared in scenarios a and b (merged into the pool's YAML)
POLICIES: dict[str, dict[str, Any]] = {
    # nginx-like: rotate blindly, no router-side limit, no breaker, no retry, no per-try time-out
    # (max_connections too: the pool's shared aiohttp connection limit, 100 by default, would be a limit as well)
    "round_robin": {"max_concurrency": 1000, "max_connections": 1000, "balancer": {"policy": "round_robin"},
                    "breaker": {"enabled": False},
                    "retry": {"max_attempts": 1, "per_try_timeout_floor": 300, "per_try_timeout_cap": 300}},
    # issue #2's policy: least outstanding under a limit equal to the node's slots (fixed: the working tree's router
    # would otherwise learn a limit, `adaptive_concurrency`), retry only a failed connection (once), no breaker, no
    # per-try time-out, a 30 s queue
    "least_outstanding": {"max_concurrency": 4,
                          "balancer": {"policy": "least_outstanding", "adaptive_concurrency": False},
                          "breaker": {"enabled": False}, "queue": {"timeout": 30},
                          "retry": {"max_attempts": 2, "retry_on": ["connect"], "per_try_timeout_floor": 300,
                                    "per_try_timeout_cap": 300}},
    # the full policy, every setting at its default
    "full": {"balancer": {"policy": "latency"}},
    # variants of the full policy, for experiments (`--policies-a`, `--policies-b`): score every endpoint on each
    # pick instead of a power-of-two sample; send a hedged second try when the first is slow
    "full_all_choices": {"balancer": {"policy": "latency", "choices": 100}},
    "full_hedge": {"balancer": {"policy": "latency"}, "hedge": {"enabled": True}},
    # the full policy with the limit fixed at max_concurrency (4, the nodes' slots): what learning the limit costs
    "full_fixed_limit": {"balancer": {"policy": "latency", "adaptive_concurrency": False}},
    # the routing policy before issue #11 (the router of `bench._previous.PREVIOUS_REV`, its defaults): the same
    # YAML as `full`, run by the older router
    "previous": {"balancer": {"policy": "latency"}},
}
#: policies run by the previous router (`--previous-rev`) instead of the working tree's
PREVIOUS_POLICIES = {"previous"}


@dataclass
class FleetProc:
    child: Child
    argv: list[str]
    nodes: dict[str, str]  # name -> URL
    control: str

    def configure(self, node: str, changes: dict[str, Any]) -> None:
        """Change ``node``'s knobs; node ``*``: every node of the fleet."""
        if node == "*":
            _post(f"{self.control}/_fleet/config", changes)
        else:
            _post(f"{self.control}/_fleet/nodes/{node}/config", changes)

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.control}/_fleet/state", timeout=5) as resp:
            return json.load(resp)


def fleet_argv(*, nodes: int, slots: int, speeds: Sequence[float], base_ms: float, per_char_ms: float,
               sigma: float, wav_bytes: int | None = None, seed: int = 1, jitter_by_text: bool = False) -> list[str]:
    argv = ["--nodes", str(nodes), "--slots", str(slots), "--speeds", ",".join(f"{s:g}" for s in speeds),
            "--base-ms", f"{base_ms:g}", "--per-char-ms", f"{per_char_ms:g}", "--jitter-sigma", f"{sigma:g}",
            "--seed", str(seed)]
    if jitter_by_text:
        argv.append("--jitter-by-text")
    if wav_bytes is not None:
        argv += ["--wav-bytes", str(wav_bytes)]
    return argv


def start_fleet(children: list[Child], log_dir: Path, name: str, fleet_args: list[str]) -> FleetProc:
    argv = [sys.executable, "-m", "bench.fleet", "--host", HOST, "--port", "0", *fleet_args]
    child = Child(argv, log_dir, name)
    children.append(child)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = child.log.read_text("utf-8", "replace")
        control = _CONTROL.search(text)
        if control:
            return FleetProc(child, argv, dict(_NODE.findall(text)), control.group(1))
        child.check_alive()
        time.sleep(0.05)
    child.stop()
    raise RuntimeError(f"the fleet did not start in {START_TIMEOUT_S:.0f} s:\n{child.tail()}")


def router_yaml(nodes: dict[str, str], pool: dict[str, Any], server: dict[str, Any] | None = None,
                fanout: bool | None = None) -> str:
    """A router config: one index-tts-vllm pool over ``nodes``, model indextts2, voice alloy. Every key it
    writes is in the config schema of the working tree's router and of the previous one alike.

    ``fanout``: None leaves the model's long-text fan-out at its default (on for index-tts-vllm: texts over
    200 characters are cut into segments synthesized in parallel); False and True set it."""
    model: Any = ["gpu"] if fanout is None else {"pools": ["gpu"], "fanout": {"enabled": fanout}}
    settings = {
        "server": {"host": HOST, "log_level": "warning", **(server or {})},
        "pools": {"gpu": {"type": "index-tts-vllm", **pool,
                          "endpoints": [{"url": url, "name": name} for name, url in nodes.items()]}},
        "models": {"indextts2": model},
        "voices": {"alloy": {"spk_audio_path": "/data/voices/alloy.wav"}},
    }
    return yaml.safe_dump(settings, sort_keys=False)


@dataclass
class RouterProc:
    child: Child
    url: str
    config_path: Path
    impl: RouterImpl | None = None
    admin_key: str = ""

    def metrics(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            return parse_metrics(resp.read().decode())

    def health(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:  # 503 when nothing is in rotation: the body says why
            return json.loads(exc.read())

    def reload(self, config: str) -> dict[str, Any]:
        """Rewrite the router's config file with ``config`` and `POST /admin/reload` with the admin key."""
        tmp = self.config_path.with_suffix(".new")
        tmp.write_text(config, encoding="utf-8")
        tmp.replace(self.config_path)
        return _post(f"{self.url}/admin/reload", {}, headers={"Authorization": f"Bearer {self.admin_key}"})


def start_router(children: list[Child], log_dir: Path, name: str, config: str, port: int,
                 impl: RouterImpl | None = None, admin_key: str = "") -> RouterProc:
    """`speech-router serve --config <file>` (``impl``: another copy of the router, e.g. the previous one); returns
    once /readyz and /health answer 200 (every node up). ``admin_key`` turns the admin API on."""
    env = {**(impl.env if impl else {}), **({"SPEECH_ROUTER_ADMIN_KEY": admin_key} if admin_key else {})}
    child = _start_router(config, port, log_dir, name=name, ready=("/readyz", "/health"),
                          command=impl.command if impl else None, env=env or None, cwd=impl.cwd if impl else None)
    children.append(child)
    return RouterProc(child, f"http://{HOST}:{port}", log_dir / f"{name}.yaml", impl, admin_key)


def _post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


# -- router metrics -----------------------------------------------------------------------------------------

def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} for every sample of the exposition."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metrics_delta(before: dict[Any, float], after: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def by_label(delta: dict[Any, float], name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """Sum a sample's values by the given labels, dropping zeros."""
    out: dict[tuple[str, ...], float] = {}
    for (sample, lbls), value in delta.items():
        if sample == name and value:
            d = dict(lbls)
            key = tuple(d.get(label, "") for label in labels)
            out[key] = out.get(key, 0.0) + value
    return out


def histogram_quantile(delta: dict[Any, float], name: str, q: float) -> float:
    """Upper bound of the bucket holding quantile ``q`` of a histogram's new observations (all labels)."""
    buckets: dict[float, float] = {}
    for (sample, lbls), value in delta.items():
        if sample == f"{name}_bucket":
            le = float(dict(lbls)["le"])
            buckets[le] = buckets.get(le, 0.0) + value
    if not buckets or buckets.get(float("inf"), 0.0) <= 0:
        return float("nan")
    total = buckets[float("inf")]
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            return le
    return float("inf")


# -- CPU time -----------------------------------------------------------------------------------------------

def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, over all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICKS, sum(values) / TICKS


class CpuMeter:
    """CPU use of named processes (each a list of pids) and of the machine over one interval."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start = {name: sum(proc_cpu(p) for p in pids) for name, pids in groups.items()}
        self._machine = machine_busy()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        """Percent of one core per group; ``untracked``: the rest of the machine's busy time, also in percent of
        one core (other processes: a client measured separately, or whatever else runs on the machine);
        ``machine``: busy share of all cores, in percent."""
        wall = time.monotonic() - self._t0
        used = {name: sum(proc_cpu(p) for p in pids) - self._start[name] for name, pids in self.groups.items()}
        busy, total = machine_busy()
        out = {name: 100 * v / wall for name, v in used.items()}
        out["untracked"] = max(0.0, 100 * (busy - self._machine[0] - sum(used.values())) / wall)
        out["machine"] = 100 * (busy - self._machine[0]) / max(1e-9, total - self._machine[1])
        return out


def wait_quiet(max_wait: float, threshold: float = 25.0, window: float = 1.0) -> float:
    """Wait (up to ``max_wait`` s) until the machine is less than ``threshold`` % busy over ``window`` s, so other
    work on a shared machine disturbs a measurement less; returns the last busy share measured, in percent."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0 = machine_busy()
        time.sleep(window)
        b1, t1 = machine_busy()
        share = 100 * (b1 - b0) / max(1e-9, t1 - t0)
        if share < threshold or time.monotonic() >= deadline:
            return share
