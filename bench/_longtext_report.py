"""The markdown block of `bench.longtext`: tables, the targets' verdicts, and rewriting it in a README."""

from __future__ import annotations

import heapq
import random
import re
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from bench import _procs
from bench._speech_model import SpeechModel, pieces
from bench.audio_path import decoded_seconds, machine_info, pct
from speech_router.config.models import FanoutConfig
from speech_router.text.segment import split_segments

BEGIN, END = "<!-- longtext:start -->", "<!-- longtext:end -->"
SECTION = "## Long text and cache (issue #7)"
TOTAL_RATIO_TARGET = 0.35
#: issue #11: the pool left at the router's defaults (no max_concurrency) on one-slot nodes
DEFAULT_RATIO_TARGET = 0.30
TTFB_MARGIN_S = 0.050
CACHE_HIT_TARGET_S = 0.005
_SENTENCE_END = re.compile(r"[。！？]|[.!?](?=\s|$)")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if seconds < 1 else f"{seconds * 1000:.0f}"


def spread(values: Sequence[float]) -> str:
    return f"{ms(statistics.median(values))} ({ms(min(values))}–{ms(max(values))})"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def code_info() -> str:
    """The checked-out commit, read from .git without running git."""
    git = _procs.REPO / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            loose = git / ref
            if loose.exists():
                head = loose.read_text().strip()
            else:
                packed = (git / "packed-refs").read_text().splitlines()
                head = next(line.split()[0] for line in packed if line.endswith(" " + ref))
    except (OSError, StopIteration):
        return "not a git checkout"
    return f"commit {head[:7]} (the bench's code; the router measured is named below)"


def ideal_fanout(model: SpeechModel, segments: list[str], workers: int, jitter: Callable[[], float]) -> float:
    """The fan-out's total without a router: segments in order, each to the first free node."""
    free = [0.0] * workers
    end = 0.0
    for segment in segments:
        start = heapq.heappop(free)
        finish = start + model.service_time(segment, jitter)
        heapq.heappush(free, finish)
        end = max(end, finish)
    return end


def modelled(model: SpeechModel, sigma: float, text: str, segments: list[str], workers: int) -> dict[str, float]:
    """Median times the latency model itself predicts (1000 draws of the jitter, seeded): no HTTP, no router."""
    rng = random.Random(7)

    def jitter() -> float:
        return rng.lognormvariate(0.0, sigma) if sigma > 0 else 1.0

    draws = 1000
    return {"single": statistics.median(model.service_time(text, jitter) for _ in range(draws)),
            "first": statistics.median(model.service_time(segments[0], jitter) for _ in range(draws)),
            "fanout": statistics.median(ideal_fanout(model, segments, workers, jitter) for _ in range(draws))}


def text_lines(results: dict[str, Any], fanout: FanoutConfig) -> list[str]:
    model: SpeechModel = results["model"]
    rows = ["| text | characters | sentences | router segments (chars) | pieces one node makes (tokens ≤ 120) "
            "| speech, scaled |", "|---|--:|--:|--:|--:|--:|"]
    for name, text in results["texts"].items():
        segments = split_segments(text, max_chars=fanout.max_segment_chars, min_chars=fanout.min_segment_chars)
        sentences = len(_SENTENCE_END.findall(text))
        lengths = [len(s) for s in segments]
        rows.append(f"| {name} | {len(text)} | {sentences} | {len(segments)} ({min(lengths)}–{max(lengths)}) "
                    f"| {len(pieces(text, model.max_tokens))} | {model.audio_seconds(text):.2f} s |")
    return rows


def fanout_section(results: dict[str, Any], fanout: FanoutConfig, nodes: int, sigma: float) -> list[str]:
    model: SpeechModel = results["model"]
    cases = results["cases"]
    rows = ["| text | request | TTFB ms, median (min–max) | total ms, median (min–max) | total / single node "
            "| latency model alone, ms | audio (FFmpeg / libsndfile) |", "|---|---|--:|--:|--:|--:|--:|"]
    verdicts = []
    for name, text in results["texts"].items():
        single, first, wav, mp3, *others = [c for c in cases if c.text == name]
        segments = split_segments(text, max_chars=fanout.max_segment_chars, min_chars=fanout.min_segment_chars)
        expected = modelled(model, sigma, text, segments, min(nodes, fanout.max_parallel))
        base = statistics.median(single.total)
        for case in (single, first, wav, mp3, *others):
            model_ms = ms(expected["single" if case is single else "first" if case is first else "fanout"])
            ratio = "-" if case is single or case is first else f"{statistics.median(case.total) / base:.2f}"
            ffmpeg, sndfile = decoded_seconds(case.last.body)
            rows.append(f"| {name} | {case.path} | {spread(case.ttfb)} | {spread(case.total)} | {ratio} "
                        f"| {model_ms} | {ffmpeg:.2f} / {sndfile:.2f} s |")
        for case in (wav, mp3):
            ratio = statistics.median(case.total) / base
            verdicts.append(f"- {name}, {case.path}: total {ms(statistics.median(case.total))} ms against "
                            f"{ms(base)} ms on one node = **{ratio:.2f}x** (target ≤ {TOTAL_RATIO_TARGET}x): "
                            f"{verdict(ratio <= TOTAL_RATIO_TARGET)}.")
        for case in (wav, mp3):
            ttfb, seg1 = statistics.median(case.ttfb), statistics.median(first.total)
            worst = max(t - f for t, f in zip(case.ttfb, first.total, strict=True))
            verdicts.append(f"- {name}, {case.path}: TTFB {ms(ttfb)} ms, segment 1 alone {ms(seg1)} ms: "
                            f"**{(ttfb - seg1) * 1000:+.1f} ms** at the median, {worst * 1000:+.1f} ms in the worst "
                            f"round (target ≤ +{TTFB_MARGIN_S * 1000:.0f} ms): "
                            f"{verdict(ttfb - seg1 <= TTFB_MARGIN_S)}.")
    waits = [f"pool `{pool}`: {over:.0f} of {count:.0f} segments waited over 5 ms for a free node, {total:.2f} s in all"
             for pool, (count, over, total) in sorted(results.get("queue", {}).items()) if count]
    warmup = results.get("warmup", 1)
    return [f"### Fan-out: {results['repeats']} measured rounds after {warmup} warm-up round{'s' * (warmup != 1)}, "
            "one request at a time", "",
            *rows, "", f"Router queue in the measured rounds (`speech_router_queue_wait_seconds`): {'; '.join(waits)}.",
            "", "Targets:", "", *verdicts, "", *default_section(results)]


def default_section(results: dict[str, Any]) -> list[str]:
    """Issue #11: the pool at the router's defaults, on the current router and on the previous one."""
    cases = results["cases"]
    out = ["#### The default config on one-slot nodes (issue #11)", "",
           "Pool `gpu4` names the same 4 one-slot nodes and sets nothing but their URLs (`max_concurrency` is left at "
           "its default, 4, which the current router takes as a bound and learns under); the model sets only "
           "the scaled `silence_ms`. Every round's total, ms (warm-up rounds first, in brackets), TTFB and total as "
           "medians of the measured rounds, and total against the same round's single-node median:", "",
           "| text | router | totals per round, ms | TTFB ms, median | total ms, median | total / single node |",
           "|---|---|--:|--:|--:|--:|"]
    verdicts = []
    for name in results["texts"]:
        mine = [c for c in cases if c.text == name]
        base = statistics.median(mine[0].total)
        for case in mine:
            if "default config" not in case.path:
                continue
            ratio = statistics.median(case.total) / base
            rounds = " ".join([f"({ms(t)})" for t in case.warm] + [ms(t) for t in case.total])
            label = "previous" if case.path.startswith("previous") else "current"
            out.append(f"| {name} | {label}: {case.path} | {rounds} | {ms(statistics.median(case.ttfb))} | "
                       f"{ms(statistics.median(case.total))} | **{ratio:.2f}x** |")
            if label == "current":
                verdicts.append(f"- {name}: total {ms(statistics.median(case.total))} ms against {ms(base)} ms on one "
                                f"node = **{ratio:.2f}x** (target ≤ {DEFAULT_RATIO_TARGET}x): "
                                f"{verdict(ratio <= DEFAULT_RATIO_TARGET)}.")
    learned = []
    for router, endpoints in (results.get("learned") or {}).items():
        for e in endpoints:
            lat = e.get("latency") or {}
            fit = (f"{lat['base_s'] * 1000:.0f} ms + {lat['per_char_s'] * 1000:.2f} ms/char"
                   + (f", level {lat['level']:g}, parallel {lat['parallel']:g}" if "level" in lat else "")) if lat else "-"
            limit = f", limit {e['concurrency_limit']}" if e.get("concurrency_limit") is not None else ""
            learned.append(f"| {router} | `{e['pool']}` | {e['name']} | {e['served']} | {fit}{limit} |")
    if learned:
        learned = ["", "What each router had learned at the end of the fan-out rounds (its `/health`: segments served "
                   "since it started, warm-up included; the latency it expects, base + per character, at the "
                   "endpoint's current level; the learned concurrency limit):", "",
                   "| router | pool | endpoint | served | learned |", "|---|---|---|--:|---|", *learned]
    return [*out, "", f"Target (issue #11: 4 one-slot nodes, default config, total ≤ {DEFAULT_RATIO_TARGET}x one "
            "node's time):", "", *verdicts, *learned]


def cache_section(groups: list[tuple[str, list[Any]]]) -> list[str]:
    rows = ["| request | n | TTFB ms, median / p99 | total ms, median / p99 / max | body | audio (FFmpeg / libsndfile) "
            "| `x-speech-router-cache` |", "|---|--:|--:|--:|--:|--:|---|"]
    for label, timed in groups:
        ttfb, total = [t.ttfb for t in timed], [t.total for t in timed]
        statuses = ", ".join(sorted({t.headers.get("x-speech-router-cache", "(none)") for t in timed}))
        ffmpeg, sndfile = decoded_seconds(timed[-1].body)
        if len(timed) == 1:
            times = f"| {ms(ttfb[0])} | {ms(total[0])} "
        else:
            times = f"| {ms(pct(ttfb, .5))} / {ms(pct(ttfb, .99))} | {ms(pct(total, .5))} / {ms(pct(total, .99))} / " \
                    f"{ms(max(total))} "
        rows.append(f"| {label} | {len(timed)} {times}| {len(timed[-1].body) / 1000:.0f} kB "
                    f"| {ffmpeg:.2f} / {sndfile:.2f} s | {statuses} |")
    verdicts = []
    for label, timed in groups:
        if "repeated" not in label:
            continue
        total = [t.total for t in timed]
        if {t.headers.get("x-speech-router-cache") for t in timed} != {"hit"}:
            verdicts.append(f"- {label}: **not measured**: the repeats were not answered from the cache.")
            continue
        p99 = pct(total, .99)
        verdicts.append(f"- {label}: median {ms(pct(total, .5))} ms, p99 {ms(p99)} ms, max {ms(max(total))} ms "
                        f"(target < {CACHE_HIT_TARGET_S * 1000:.0f} ms): {verdict(p99 < CACHE_HIT_TARGET_S)}.")
    return ["### Cache: the English text on model `indextts2-cached`, one kept-alive connection", "", *rows, "",
            "Target (a repeated request served from the cache in under 5 ms, to the last byte, at p99):", "",
            *verdicts]


def render(results: dict[str, Any], *, command: str, wall_s: float, real: dict[str, float], scale: int,
           sigma: float, fanout: FanoutConfig, nodes: int) -> str:
    model: SpeechModel = results["model"]
    lines = [f"Command: `{command}`  ", f"Machine: {machine_info()}  ", f"Code: {code_info()}", "",
             f"Emulated nodes: {nodes}, one GPU slot each; per piece {model.base_s * 1000:g} ms + "
             f"{model.per_char_s * 1000:g} ms per Latin character + {model.per_wide_char_s * 1000:g} ms per Chinese "
             f"character, lognormal jitter σ {sigma:g} per piece ({scale}x faster than the real figures: "
             f"{real['base_s']:g} s per piece, {real['rtf']:g} s per second of speech). Router: fan-out "
             f"max_parallel {fanout.max_parallel}, segments {fanout.min_segment_chars}–{fanout.max_segment_chars} "
             f"characters, {fanout.silence_ms} ms of silence between them; pool `gpu` max_concurrency 1, pool `gpu4` "
             "the router's defaults."
             + (f" Router: {results['current']['label']}." if results.get("current") else "")
             + (f" Previous router: commit {results['previous']['rev']} (`git archive`, PYTHONPATH), its "
                "`speech_router` imported from the export." if results.get("previous") else ""), "",
             *text_lines(results, fanout), ""]
    if "cases" in results:
        lines += [*fanout_section(results, fanout, nodes, sigma), ""]
    if "cache" in results:
        lines += [*cache_section(results["cache"]), ""]
    lines.append(f"Wall time of the run: {wall_s:.0f} s.")
    return "\n".join(lines)
