"""Jobs are bounded and private: open jobs and kept bytes per client key, the disk, the body; a key sees only
its own jobs; a completion webhook is delivered once, signed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from speech_router.emulator.serve import ServerHandle
from tests.client import call
from tests.integration.jobs import JOBS, book, jobs_config, submit, wait

KEYS = {"SPEECH_ROUTER_API_KEYS": "alice=key-a,bob=key-b"}
SECRET = "whsec_" + base64.b64encode(b"a webhook secret of 32 bytes....").decode()


def test_open_jobs_and_kept_bytes_are_limited_per_key_and_keys_see_only_their_own(nodes, router, tmp_path):
    node = nodes(name="n0", delay_s=0.5)
    srv = router(jobs_config(tmp_path, node.url, jobs={"max_open_per_key": 1, "max_bytes_per_key": 40_000_000}),
                 env=KEYS)
    alices = submit(srv.url, {"input": book(20), "response_format": "wav"}, key="key-a")
    second = call(srv.url + JOBS, {"model": "indextts2", "voice": "alloy", "input": "More."}, key="key-a")
    assert second.status == 429 and second.json()["error"]["code"] == "too_many_jobs"
    assert int(second.headers["retry-after"]) >= 1
    bobs = submit(srv.url, {"input": "Bob's short one."}, key="key-b")  # a limit per key, not per router
    assert call(f"{srv.url}{JOBS}/{alices['id']}", key="key-b").status == 404
    assert call(f"{srv.url}{JOBS}/{alices['id']}/content", key="key-b").status == 404
    assert call(f"{srv.url}{JOBS}/{alices['id']}", method="DELETE", key="key-b").status == 404
    assert [j["id"] for j in call(srv.url + JOBS, key="key-b").json()["data"]] == [bobs["id"]]
    assert call(srv.url + JOBS).status == 401
    cancelled = call(f"{srv.url}{JOBS}/{alices['id']}", method="DELETE", key="key-a")
    assert cancelled.json()["status"] == "cancelled"
    # a book whose audio would pass the key's byte budget is refused before anything is kept
    big = call(srv.url + JOBS, {"model": "indextts2", "voice": "alloy", "input": book(2000)}, key="key-a")
    assert big.status == 429 and big.json()["error"]["code"] == "storage_limit", big.body
    listed = call(srv.url + JOBS + "?limit=1", key="key-a").json()
    assert [j["id"] for j in listed["data"]] == [alices["id"]] and listed["has_more"] is False
    assert call(srv.url + JOBS + "?limit=0", key="key-a").json()["error"]["param"] == "limit"


def test_the_disk_and_the_body_are_bounded(nodes, router, tmp_path):
    node = nodes(name="n0")
    srv = router(jobs_config(tmp_path, node.url, jobs={"max_disk_bytes": 10_000_000, "max_body_bytes": 20_000}))
    full = call(srv.url + JOBS, {"model": "indextts2", "voice": "alloy", "input": book(300)})
    assert full.status == 507 and full.json()["error"]["code"] == "insufficient_storage", full.body
    assert "retry-after" in full.headers
    large = call(srv.url + JOBS, {"model": "indextts2", "voice": "alloy", "input": "x" * 30_000})
    assert large.status == 413
    srv2 = router(jobs_config(tmp_path / "other", node.url, jobs={"min_free_disk_bytes": 2 ** 62}))
    nearly_full = call(srv2.url + JOBS, {"model": "indextts2", "voice": "alloy", "input": "Hello."})
    assert nearly_full.status == 507, nearly_full.body
    assert not node.requests


class Receiver:
    """A webhook endpoint on 127.0.0.1 that answers 503 to the first delivery and 200 after."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.server = ServerHandle(Starlette(routes=[Route("/hooks/jobs", self.hook, methods=["POST"])]))

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.got.append((dict(request.headers), body))
            first = len(self.got) == 1
        return Response(status_code=503 if first else 204)


def signed_by(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks' check, written out: HMAC-SHA256 of "id.timestamp.body" with the base64 key."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, sig.removeprefix("v1,")) for sig in headers["webhook-signature"].split())


def test_a_webhook_is_delivered_once_with_a_valid_signature(nodes, router, tmp_path):
    receiver = Receiver()
    receiver.server.start()
    try:
        node = nodes(name="n0")
        config = jobs_config(tmp_path, node.url, jobs={"webhooks": {"url_prefixes": [receiver.server.url + "/hooks/"]}})
        srv = router(config, env={"SPEECH_ROUTER_WEBHOOK_SECRET": SECRET})
        refused = call(srv.url + JOBS, {"model": "indextts2", "voice": "alloy", "input": "Hi.",
                                        "webhook_url": "http://169.254.169.254/latest"})
        assert refused.status == 400 and refused.json()["error"]["code"] == "url_not_allowed"
        job = submit(srv.url, {"input": book(4), "webhook_url": receiver.server.url + "/hooks/jobs",
                               "metadata": {"book": "b-7"}})
        assert job["webhook"] == {"url": receiver.server.url + "/hooks/jobs", "status": "waiting"}
        assert wait(srv.url, job["id"])["status"] == "succeeded"
        done = wait(srv.url, job["id"], lambda j: j["webhook"]["status"] != "pending")
        assert done["webhook"]["status"] == "delivered", receiver.got
        assert srv.app.state.metrics.job_webhooks.labels("delivered")._value.get() == 1
        with receiver.lock:
            got = list(receiver.got)
    finally:
        receiver.server.stop()
    assert len(got) == 2, "one refused try, then one delivery, and no more"
    (first_headers, first_body), (headers, body) = got
    assert first_headers["webhook-id"] == headers["webhook-id"], "the same event: a receiver can drop a repeat"
    assert signed_by(SECRET, headers, body) and signed_by(SECRET, first_headers, first_body)
    assert not signed_by("whsec_" + base64.b64encode(b"another secret").decode(), headers, body)
    event: dict[str, Any] = json.loads(body)
    assert event["type"] == "speech.job.succeeded"
    assert event["data"]["id"] == job["id"] and event["data"]["metadata"] == {"book": "b-7"}
    assert event["data"]["urls"]["content"] == f"{JOBS}/{job['id']}/content"
