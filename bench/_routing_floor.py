"""The no-queueing floor of a routing scenario: what each request would take alone on a speed-1 node.

The fleet runs with `--jitter-by-text`, so a request's service time depends only on its text and the
fleet's seed: `(base + per_char x chars) x keyed_jitter(seed, text)` on a node of speed 1, divided by the
speed elsewhere. The load generator's open loop is a pure function of its config (`bench.loadgen.plan`).
So the service time of every request a run will send is known before it is sent, and

    floor p99 = the nearest-rank 99th percentile, over the measured requests, of their speed-1 service times

is the p99 a client would see if every request ran at once on a free speed-1 node (the fastest in the
fleet), with no queueing and no network or router time. No policy can beat it except by luck of which
requests fail; a policy's p99 over this floor is what routing and queueing cost at the tail.
"""

from __future__ import annotations

import math
from typing import Any

from bench._speech_model import SpeechModel, keyed_jitter
from bench.loadgen import LoadConfig, Sample, percentile, plan


def service_times(load: LoadConfig, fleet: dict[str, Any], seed: int) -> list[tuple[float, int, float]]:
    """(due, characters, seconds on a free speed-1 node) of every request ``load`` sends, in order."""
    model = SpeechModel(base_s=fleet["base_ms"] / 1000, per_char_s=fleet["per_char_ms"] / 1000)
    return [(due, len(text), model.service_time(text, keyed_jitter(seed, text, fleet["sigma"])))
            for due, text in plan(load)]


def floor(load: LoadConfig, fleet: dict[str, Any], seed: int) -> dict[str, Any]:
    """The floor's percentiles over the requests of ``load``."""
    times = [t for _, _, t in service_times(load, fleet, seed)]
    return {"count": len(times), "p50": percentile(times, 50), "p90": percentile(times, 90),
            "p99": percentile(times, 99), "mean": sum(times) / len(times) if times else math.nan}


def excess(samples: list[Sample], load: LoadConfig, fleet: dict[str, Any], seed: int) -> dict[str, Any]:
    """Per successful request, its latency minus its own speed-1 service time (queueing, a slower node, the
    router and HTTP): median and p99; and whether the samples are the planned requests (count and lengths)."""
    planned = service_times(load, fleet, seed)
    matched = len(samples) == len(planned) and all(
        abs(s.due - p[0]) < 1e-9 and s.chars == p[1] for s, p in zip(samples, planned, strict=True))
    if not matched:
        return {"matched": False}
    extra = [s.latency - p[2] for s, p in zip(samples, planned, strict=True) if s.outcome == "ok"]
    return {"matched": True, "p50": percentile(extra, 50), "p99": percentile(extra, 99)}
