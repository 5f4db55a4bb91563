"""Long-form jobs over real HTTP: a router in front of emulated index-tts-vllm nodes, jobs kept in a temporary
directory. What a client sees (202, progress, the joined audio, ranges, errors per item, cancel) and what the
fleet sees (every segment synthesized once, spread over the nodes; slots freed on cancel; interactive requests
first)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from speech_router.emulator import audio as emu_audio
from speech_router.router.events import RouterListener
from tests.client import call
from tests.conftest import fleet_config
from tests.integration.jobs import (
    JOBS,
    SILENCE_MS,
    book,
    content,
    decoded_seconds,
    expected_seconds,
    jobs_config,
    segments,
    status,
    submit,
    synthesized,
    wait,
)


def test_a_50k_character_job_is_spread_over_the_fleet_and_joined_in_order(nodes, router, tmp_path):
    fleet = [nodes(name=f"n{i}", delay_s=0.002) for i in range(3)]
    srv = router(jobs_config(tmp_path, *(n.url for n in fleet)))
    text = book(1000)
    assert len(text) > 50_000
    job = submit(srv.url, {"input": text, "response_format": "wav"})
    cut = segments(text)
    assert job["status"] in ("queued", "running") and job["progress"]["segments_total"] == len(cut)
    assert job["progress"]["characters_total"] == sum(len(t) for t in cut)
    done = wait(srv.url, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["segments_done"] == len(cut) and done["estimated_seconds_left"] == 0
    asked = synthesized(fleet)
    assert Counter(asked) == Counter(cut), "every segment synthesized exactly once"
    assert all(n.served for n in fleet), [n.served for n in fleet]  # spread over every node
    reply = content(srv.url, job["id"])
    assert reply.status == 200 and reply.headers["content-type"] == "audio/wav"
    seconds, samples, rate = decoded_seconds(reply.body)
    assert rate == emu_audio.INDEX_TTS_RATE
    assert abs(seconds - expected_seconds(cut)) < 0.01 * len(cut) / rate + 1e-3
    assert abs(done["progress"]["audio_seconds"] - sum(emu_audio.duration_s(t) for t in cut)) < 0.01
    # in text order: the silence between segment k and k+1 starts where the first k segments and gaps end
    gap = round(SILENCE_MS / 1000 * rate)
    edge = round(emu_audio.duration_s(cut[0]) * rate)
    assert not samples[edge:edge + gap].any() and samples[edge - 200:edge].any()


def test_items_have_their_own_voices_audio_and_byte_ranges(nodes, router, tmp_path):
    node = nodes(name="n0")
    srv = router(jobs_config(tmp_path, node.url))
    job = submit(srv.url, {"items": [{"input": book(3)}, {"input": book(2, start=3), "voice": "calm"}],
                           "response_format": "wav", "metadata": {"chapter": "1"}})
    assert len(job["items"]) == 2 and job["metadata"] == {"chapter": "1"}
    done = wait(srv.url, job["id"])
    assert done["status"] == "succeeded" and [i["status"] for i in done["items"]] == ["succeeded", "succeeded"]
    whole = content(srv.url, job["id"])
    first, second = content(srv.url, job["id"], 0), content(srv.url, job["id"], 1)
    assert whole.status == first.status == second.status == 200
    seconds = [decoded_seconds(r.body)[0] for r in (whole, first, second)]
    assert abs(seconds[0] - (seconds[1] + seconds[2] + SILENCE_MS / 1000)) < 1e-3
    _, samples, rate = decoded_seconds(second.body)
    voices = {p["spk_audio_path"] for _, p in node.requests if isinstance(p, dict)}
    assert voices == {"/data/voices/alloy.wav", "/data/voices/calm.wav"}
    assert abs(emu_audio.dominant_hz(samples[:rate], rate) - emu_audio.tone_hz("/data/voices/calm.wav")) < 2
    # byte ranges: a player seeks, a download resumes
    part = content(srv.url, job["id"], headers={"Range": "bytes=100-199"})
    assert part.status == 206 and part.body == whole.body[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole.body)}"
    tail = content(srv.url, job["id"], headers={"Range": "bytes=-10"})
    assert tail.status == 206 and tail.body == whole.body[-10:]
    beyond = content(srv.url, job["id"], headers={"Range": f"bytes={len(whole.body)}-"})
    assert beyond.status == 416 and beyond.headers["content-range"] == f"bytes */{len(whole.body)}"
    assert beyond.json()["error"]["code"] == "range_not_satisfiable"
    assert content(srv.url, job["id"], 2).json()["error"]["param"] == "item"


def test_a_clients_mistake_is_a_400_naming_the_field_and_nothing_is_kept(nodes, router, tmp_path):
    node = nodes(name="n0")
    srv = router(jobs_config(tmp_path, node.url, jobs={"max_chars": 5000, "max_items": 3}))
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({"items": [{"input": "Fine."}, {"input": "Who?", "voice": "nobody"}]}, "items[1].voice", "voice_not_found"),
        ({"input": "x", "items": [{"input": "y"}]}, None, None),
        ({"input": "   "}, "input", "empty_input"),
        ({"input": book(200)}, "input", "string_above_max_length"),
        ({"items": [{"input": "a"}] * 4}, "items", "array_above_max_length"),
        ({"input": "Hi.", "model": "nope"}, "model", "model_not_found"),
        ({"input": "Hi.", "speed": 1.5}, "speed", "unsupported_parameter"),  # index-tts-vllm has no speed
        ({"input": "Hi.", "response_format": "ogg"}, "response_format", None),
        ({"input": "Hi.", "webhook_url": "http://127.0.0.1:9/hook"}, "webhook_url", "not_configured"),
        ({"input": "Hi.", "surprise": 1}, "surprise", "unknown_parameter"),
    ]
    for body, param, code in cases:
        reply = call(srv.url + JOBS, {"model": "indextts2", "voice": "alloy", **body})
        assert reply.status == 400, (body, reply.body)
        error = reply.json()["error"]
        assert error["param"] == param and (code is None or error["code"] == code), (body, error)
    listed = call(srv.url + JOBS).json()
    assert listed["data"] == [] and not node.requests
    assert call(f"{srv.url}{JOBS}/job_{'0' * 24}").status == 404
    assert call(f"{srv.url}{JOBS}/../../etc/passwd").status == 404


def test_an_item_the_nodes_refuse_fails_alone_and_the_job_ends(nodes, router, tmp_path):
    fleet = [nodes(name=f"n{i}") for i in range(2)]
    config = jobs_config(tmp_path, *(n.url for n in fleet))
    config["voices"]["ghost"] = {"spk_audio_path": "/data/voices/missing.wav"}  # on no node: FileNotFoundError
    srv = router(config)
    job = submit(srv.url, {"items": [{"input": book(4)}, {"input": book(30, start=4), "voice": "ghost"}],
                           "response_format": "wav"})
    done = wait(srv.url, job["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "items_failed"
    ok, bad = done["items"]
    assert ok["status"] == "succeeded" and ok["error"] is None
    assert bad["status"] == "failed" and bad["error"]["code"] == "invalid_voice"
    ghost_tries = [t for t in synthesized(fleet) if "number 5 " in t or "number 20 " in t]
    assert len(ghost_tries) <= 2, "a client's mistake is not retried segment after segment"
    assert content(srv.url, job["id"], 0).status == 200
    whole = content(srv.url, job["id"])
    assert whole.status == 409 and whole.json()["error"]["code"] == "no_audio"
    assert all(ep.breaker.state.value == "closed" for ep in srv.app.state.router.endpoints)


class Picks(RouterListener):
    """Every slot the router gave, in order: its priority and the fleet's busy slots once it was taken."""

    def __init__(self, router) -> None:  # type: ignore[no-untyped-def]
        self.router = router
        self.seen: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        router.listener.listeners.append(self)

    def picked(self, pool, endpoint, lease) -> None:  # type: ignore[no-untyped-def]
        with self.lock:
            self.seen.append((lease.priority, sum(ep.busy for ep in self.router.endpoints)))


def test_a_job_takes_every_free_slot_yet_leaves_room_for_interactive_requests(nodes, router, tmp_path):
    fleet = [nodes(name=f"n{i}", delay_s=0.05) for i in range(3)]
    srv = router(jobs_config(tmp_path, *(n.url for n in fleet)))
    picks = Picks(srv.app.state.router)
    job = submit(srv.url, {"input": book(150), "response_format": "wav"})
    wait(srv.url, job["id"], lambda j: j["progress"]["segments_done"] >= 6)
    answers = []
    for n in range(12):  # one client after another, while the job runs
        answers.append(call(srv.url + "/v1/audio/speech", {"model": "tts-1", "voice": "alloy",
                                                          "input": f"Interactive {n}.", "response_format": "wav"}))
    assert status(srv.url, job["id"])["status"] == "running", "the job ran the whole time"
    assert all(a.status == 200 for a in answers)
    with picks.lock:
        seen = list(picks.seen)
    first = next(i for i, (priority, _) in enumerate(seen) if priority == "interactive")
    assert max(busy for _, busy in seen[:first]) == 3, "alone, the job used every slot of the fleet"
    # once interactive traffic is seen, the job leaves `headroom` (1) slot free beyond those the client uses: the
    # segments it starts do not take the last slot, so the next interactive request finds one at once (a segment
    # started just as an interactive request arrives may still get it: the runner decides before the scheduler
    # places; without the headroom nearly every segment would take it)
    later = [busy for priority, busy in seen[first + 1:] if priority == "batch"]
    assert len(later) > 10 and sum(busy == 3 for busy in later) <= 2, seen[first:]
    assert wait(srv.url, job["id"])["status"] == "succeeded"


def test_a_cancelled_job_frees_its_slots_at_once(nodes, router, tmp_path):
    fleet = [nodes(name=f"n{i}", delay_s=2.0) for i in range(2)]
    srv = router(jobs_config(tmp_path, *(n.url for n in fleet)))
    job = submit(srv.url, {"input": book(40), "response_format": "wav"})
    endpoints = srv.app.state.router.endpoints
    wait(srv.url, job["id"], lambda j: sum(ep.inflight for ep in endpoints) == 2)
    reply = call(f"{srv.url}{JOBS}/{job['id']}", method="DELETE")
    assert reply.status == 200 and reply.json()["status"] == "cancelled"
    assert sum(ep.inflight for ep in endpoints) == 0, "its slots were given back before the answer"
    asked = len(synthesized(fleet))
    assert not (tmp_path / job["id"]).exists()
    interactive = call(srv.url + "/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "Now me.",
                                                      "response_format": "wav"})
    assert interactive.status == 200
    assert len(synthesized(fleet)) == asked + 1, "no segment of the cancelled job went out afterwards"
    assert status(srv.url, job["id"])["status"] == "cancelled"
    assert content(srv.url, job["id"]).status == 409
    deleted = call(f"{srv.url}{JOBS}/{job['id']}", method="DELETE")
    assert deleted.json() == {"id": job["id"], "object": "speech.job.deleted", "deleted": True}
    assert call(f"{srv.url}{JOBS}/{job['id']}").status == 404


def test_jobs_are_off_without_a_directory_and_unavailable_with_one_that_cannot_be_written(nodes, router, tmp_path):
    node = nodes(name="n0")
    srv = router(fleet_config(node.url))
    reply = call(srv.url + JOBS, {"model": "indextts2", "voice": "alloy", "input": "Hello."})
    assert reply.status == 400 and reply.json()["error"]["code"] == "not_configured"
    assert call(srv.url + JOBS).status == 400
    (tmp_path / "a-file").write_text("not a directory")
    broken = router(jobs_config(tmp_path / "a-file" / "jobs", node.url))
    reply = call(broken.url + JOBS, {"model": "indextts2", "voice": "alloy", "input": "Hello."})
    assert reply.status == 503 and reply.json()["error"]["code"] == "jobs_unavailable", reply.body
    assert "a-file" in reply.json()["error"]["message"] and "retry-after" in reply.headers
    speech = call(broken.url + "/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": "Still here.",
                                                    "response_format": "wav"})
    assert speech.status == 200, "the rest of the router serves on"
