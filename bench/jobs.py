"""Long-form jobs (issue #20): a book on four nodes against one, and interactive latency with a job running.

    python -m bench.jobs [--chars N] [--rate R] [--duration S] [--rounds N] [--part all|speedup|interactive]
                         [--out bench/README.md]

Starts an emulated fleet of 4 index-tts-vllm v2 nodes with one GPU slot each (`python -m bench.fleet`, the
IndexTTS2 timing of `bench.longtext`, 20x faster than a real GPU, audio as much shorter) and a router
(`speech-router serve`, jobs in a temporary directory) with two models: `fleet` on the 4 nodes and `single` on
node 0 alone, every pool at `max_concurrency: 1`. All on 127.0.0.1.

- speedup: the same job (an English text of `--chars` characters, wav) on `single`, then on `fleet`, one
  after the other; each timed from its `created_at` to its `finished_at` (cutting, synthesis, joining).
  Target: fleet <= 0.27 x single.
- interactive: open-loop Poisson load (`bench.loadgen`: `--rate` requests a second, 20-200 characters, the
  same seed each time) on `fleet` for `--duration` s, without a job and then with a job running on the same
  nodes, `--rounds` times alternating; latency p50/p90/p99 of each, and the characters the job got done
  meanwhile against what it does alone. Target: p99 with the job <= 1.1 x without.

Every wait has a timeout, the run stops after `MAX_RUN_S`, and the children are stopped however it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import queue
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench import _procs
from bench._readme import write_block
from bench._routing_env import CpuMeter, FleetProc, machine_busy, proc_cpu, start_fleet
from bench.audio_path import machine_info, source_info
from bench.loadgen import LoadConfig, Sample, percentile, run_load
from bench.longtext import fleet_args, scaled_model
from speech_router.config.models import FanoutConfig
from speech_router.text.segment import split_segments

DATA = Path(__file__).resolve().parent / "data"
MAX_RUN_S = 900.0
JOB_TIMEOUT_S = 400.0
SPEEDUP_TARGET = 0.27
P99_TARGET = 1.1
BEGIN, END = "<!-- jobs:start -->", "<!-- jobs:end -->"
SECTION = "## Long-form jobs (issue #20)"
#: how the jobs are cut (the model's fan-out defaults)
SEGMENT = FanoutConfig()


def book(chars: int) -> str:
    """The English sample text, its sentences numbered and repeated up to ``chars`` characters."""
    lines = [line.strip() for line in (DATA / "longtext_en.txt").read_text().splitlines() if line.strip()]
    out: list[str] = []
    size = n = 0
    while size < chars:
        sentence = f"{n + 1}. {lines[n % len(lines)]}"
        out.append(sentence)
        size += len(sentence) + 1
        n += 1
    return " ".join(out)[:chars]


def router_yaml(nodes: dict[str, str], jobs_dir: Path, jobs: dict[str, Any]) -> str:
    def pool(members: list[tuple[str, str]], suffix: str = "") -> dict[str, Any]:
        return {"type": "index-tts-vllm", "max_concurrency": 1,
                "endpoints": [{"url": url, "name": name + suffix} for name, url in members]}

    members = list(nodes.items())
    silence = {"silence_ms": 10}  # the audio is 20x shorter than speech; so is the gap between segments
    settings = {"server": {"host": _procs.HOST, "log_level": "warning"},
                "pools": {"gpu4": pool(members), "gpu1": pool(members[:1], "-alone")},
                "models": {"fleet": {"pools": ["gpu4"], "fanout": silence},
                           "single": {"pools": ["gpu1"], "fanout": silence}},
                "voices": {"bench": {"spk_audio_path": "/data/voices/bench.wav"}},
                "jobs": {"directory": str(jobs_dir), **jobs}}
    return yaml.safe_dump(settings, sort_keys=False)


def api(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return dict(json.load(resp))


def submit(base: str, model: str, text: str) -> str:
    return str(api(f"{base}/v1/audio/speech/jobs", "POST", {"model": model, "voice": "bench", "input": text,
                                                            "response_format": "wav"})["id"])


def wait_job(base: str, job_id: str, deadline: float) -> dict[str, Any]:
    """Poll until the job ends; ``synthesized_at``: when its last segment was seen done (joining starts)."""
    synthesized = None
    while True:
        job = api(f"{base}/v1/audio/speech/jobs/{job_id}")
        if synthesized is None and job["progress"]["segments_done"] == job["progress"]["segments_total"]:
            synthesized = time.time()
        if job["status"] not in ("queued", "running"):
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
            job["synthesized_at"] = synthesized or job["finished_at"]
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} did not finish in time: {job['progress']}")
        time.sleep(0.2)


def served(fleet: FleetProc) -> dict[str, int]:
    return {node["name"]: node["served"] for node in fleet.state()["nodes"]}


def straight(fleet: FleetProc, texts: list[str]) -> float:
    """The floor: the segments sent straight to the 4 nodes by 4 clients, each taking the next as soon as its node
    answered (no router, no scheduling)."""
    todo: queue.SimpleQueue[str] = queue.SimpleQueue()
    for text in texts:
        todo.put(text)

    def client(url: str) -> None:
        conn = http.client.HTTPConnection(_procs.HOST, int(url.rsplit(":", 1)[1]), timeout=30)
        try:
            while True:
                try:
                    text = todo.get_nowait()
                except queue.Empty:
                    return
                conn.request("POST", "/tts_url", json.dumps({"text": text, "spk_audio_path": "/data/voices/bench.wav"}),
                             {"Content-Type": "application/json"})
                conn.getresponse().read()
        finally:
            conn.close()

    started = time.monotonic()
    clients = [threading.Thread(target=client, args=(url,)) for url in fleet.nodes.values()]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(JOB_TIMEOUT_S)
    return time.monotonic() - started


def speedup(base: str, fleet: FleetProc, chars: int, deadline: float, pids: dict[str, int]) -> dict[str, Any]:
    text = book(chars)
    out: dict[str, Any] = {"chars": len(text)}
    for model in ("single", "fleet"):
        cpu0 = {name: proc_cpu(pid) for name, pid in pids.items()}
        before = served(fleet)
        job = wait_job(base, submit(base, model, text), min(deadline, time.monotonic() + JOB_TIMEOUT_S))
        out[f"{model}_per_node"] = [n - before[name] for name, n in served(fleet).items()]
        out[model] = job["finished_at"] - job["created_at"]
        out[f"{model}_joining"] = job["finished_at"] - job["synthesized_at"]
        out[f"{model}_cpu"] = {name: (proc_cpu(pid) - cpu0[name]) / out[model] for name, pid in pids.items()}
        out["segments"] = job["progress"]["segments_total"]
        out["audio_s"] = job["progress"]["audio_seconds"]
    out["ratio"] = out["fleet"] / out["single"]
    out["straight"] = straight(fleet, split_segments(text, max_chars=SEGMENT.max_segment_chars,
                                                     min_chars=SEGMENT.min_segment_chars))
    return out


def load(base: str, rate: float, duration: float) -> LoadConfig:
    return LoadConfig(url=base, rate=rate, duration=duration, timeout=30, min_chars=20, max_chars=200,
                      model="fleet", voice="bench", format="wav", seed=7)


def progress(base: str, job_id: str) -> tuple[int, float]:
    return api(f"{base}/v1/audio/speech/jobs/{job_id}")["progress"]["characters_done"], time.monotonic()


def interactive(base: str, rate: float, duration: float, rounds: int, deadline: float) -> dict[str, Any]:
    """Alternating runs without and with a job running on the same nodes; the job's pace under the load."""
    text = book(400_000)  # far longer than a round: cancelled after it
    samples: dict[str, list[Sample]] = {"without": [], "with": []}
    paces: list[float] = []
    for _ in range(rounds):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the run went over {MAX_RUN_S:.0f} s")
        samples["without"] += asyncio.run(run_load(load(base, rate, duration))).samples
        job_id = submit(base, "fleet", text)
        while progress(base, job_id)[0] < 1000:  # running on the whole fleet
            time.sleep(0.1)
        c0, t0 = progress(base, job_id)
        samples["with"] += asyncio.run(run_load(load(base, rate, duration))).samples
        c1, t1 = progress(base, job_id)
        paces.append((c1 - c0) / (t1 - t0))
        api(f"{base}/v1/audio/speech/jobs/{job_id}", "DELETE")
    out: dict[str, Any] = {}
    for name, runs in samples.items():
        ok = [s.latency for s in runs if s.outcome == "ok"]
        out[name] = {"count": len(runs), "errors": len(runs) - len(ok), "p50": percentile(ok, 50),
                     "p90": percentile(ok, 90), "p99": percentile(ok, 99)}
    out["job_chars_per_s"] = sum(paces) / rounds
    out["ratio"] = out["with"]["p99"] / out["without"]["p99"]
    return out


def report(args: argparse.Namespace, results: dict[str, Any], load_avg: tuple[float, float], cpu: dict[str, float],
           command: str) -> str:
    lines = [f"Command: `{command}`", "",
             f"Measured {machine_info()}; {source_info()}; load average {load_avg[0]:.2f} before and "
             f"{load_avg[1]:.2f} after; the machine was {cpu['machine']:.0f} % busy on average during the run "
             "(2 cores shared with other work: absolute times move, the ratios less).", ""]
    if "speedup" in results:
        s = results["speedup"]
        ok = "**met**" if s["ratio"] <= SPEEDUP_TARGET else "**missed**"
        lines += ["| job (English, wav) | characters | segments | audio (s) | one node (s) | four nodes (s) | ratio |",
                  "|---|---|---|---|---|---|---|",
                  f"| through the router | {s['chars']} | {s['segments']} | {s['audio_s']:.0f} | {s['single']:.1f} | "
                  f"{s['fleet']:.1f} | {s['ratio']:.3f} |",
                  f"| its segments straight to the 4 nodes, 4 clients (the floor) | | | | | {s['straight']:.1f} | "
                  f"{s['straight'] / s['single']:.3f} |", "",
                  f"Target: four nodes <= {SPEEDUP_TARGET} x one node: {ok}. Segments per node on four nodes: "
                  f"{', '.join(map(str, s['fleet_per_node']))}; router CPU {100 * s['fleet_cpu']['router']:.0f} % of "
                  f"a core on four nodes, {100 * s['single_cpu']['router']:.0f} % on one.", ""]
    if "interactive" in results:
        i = results["interactive"]
        ok = "**met**" if i["ratio"] <= P99_TARGET else "**missed**"
        lines += [f"Interactive load: Poisson {args.rate:g}/s, 20-200 characters, {args.duration:g} s x "
                  f"{args.rounds} rounds each, on the 4 nodes.", "",
                  "| interactive requests | count | errors | p50 (ms) | p90 (ms) | p99 (ms) |",
                  "|---|---|---|---|---|---|"]
        for name in ("without", "with"):
            r = i[name]
            lines.append(f"| {name} a job running | {r['count']} | {r['errors']} | {r['p50'] * 1000:.0f} | "
                         f"{r['p90'] * 1000:.0f} | {r['p99'] * 1000:.0f} |")
        pace = f"{i['job_chars_per_s']:.0f} characters/s"
        if "speedup" in results:
            alone = results["speedup"]["chars"] / results["speedup"]["fleet"]
            pace += f", {i['job_chars_per_s'] / alone:.0%} of its pace alone on the fleet ({alone:.0f}/s)"
        lines += ["", f"p99 with a job / without: {i['ratio']:.3f} (target <= {P99_TARGET}: {ok}). Meanwhile the "
                      f"job did {pace}."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__.split("\n\n")[0])
    p.add_argument("--chars", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=10.0, help="interactive requests a second (default 10)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of each interactive run (default 30)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--part", choices=("all", "speedup", "interactive"), default="all")
    p.add_argument("--jobs", type=json.loads, default={}, help="JSON merged into the router's jobs block (to try "
                                                                 "other settings)")
    p.add_argument("--out", type=Path, default=None, help="write the results into this README (between markers)")
    args = p.parse_args(argv)
    command = " ".join(["python -m bench.jobs", *(argv if argv is not None else sys.argv[1:])])
    deadline = time.monotonic() + MAX_RUN_S
    load_before = os.getloadavg()[0]
    results: dict[str, Any] = {}
    with _procs.stopped_on_exit() as (children, log_dir):
        fleet = start_fleet(children, log_dir, "fleet", fleet_args(scaled_model()))
        port = _procs.free_port()
        router = _procs.start_router(router_yaml(fleet.nodes, log_dir / "jobs", args.jobs), port, log_dir,
                                     ready=("/readyz", "/health"))
        children.append(router)
        base = f"http://{_procs.HOST}:{port}"
        meter = CpuMeter({"router": [router.proc.pid]})
        machine_busy()
        if args.part in ("all", "speedup"):
            results["speedup"] = speedup(base, fleet, args.chars, deadline,
                                         {"router": router.proc.pid, "fleet": fleet.child.proc.pid})
            print(json.dumps(results["speedup"]), flush=True)
        if args.part in ("all", "interactive"):
            results["interactive"] = interactive(base, args.rate, args.duration, args.rounds, deadline)
            print(json.dumps(results["interactive"]), flush=True)
        cpu = meter.stop()
    block = report(args, results, (load_before, os.getloadavg()[0]), cpu, command.strip())
    print(block)
    if args.out is not None:
        write_block(args.out, block, begin=BEGIN, end=END, section=SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
