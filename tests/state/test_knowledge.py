"""What is learned of an endpoint, carried from one replica to another: the pure snapshot and blend of the models,
the document's checks, and two replicas sharing through a store."""

from __future__ import annotations

import json
import math

import pytest

from speech_router.router.latency import LatencyModel
from speech_router.router.model import EndpointModel
from speech_router.state.guard import Guard
from speech_router.state.knowledge import KnowledgeSharing
from speech_router.state.memory import MemoryStore
from speech_router.state.snapshot import Knowledge, decode, encode
from tests.state.fakes import fake_endpoint
from tests.unit.test_model import serial, settled, side_by_side

pytestmark = pytest.mark.anyio


def taught(speed: float, *, parallel: int = 4, rounds: int = 13) -> EndpointModel:
    """A model that answered at ``speed`` x 0.5 s per 100 characters, on a node doing ``parallel`` (1 or 4) at once."""
    model = settled()
    return serial(model, rounds, 0.5 * speed) if parallel == 1 else side_by_side(model, rounds, 0.5 * speed)


def test_a_replica_that_knows_nothing_takes_the_other_replicas_model_whole():
    learned = taught(2.0, parallel=1)
    assert learned.parallel_known and learned.parallel == 1.0
    fresh = EndpointModel(half_life=30.0, max_parallel=4)
    fresh.absorb(learned.snapshot(now=20.0), weight=0.3, now=500.0)  # weight is moot: it has nothing of its own
    assert fresh.known is False  # its pool's shape is separate (below); the endpoint's own speed is there:
    fresh.shape = learned.shape
    assert fresh.known and fresh.parallel == 1.0 and fresh.parallel_known
    assert fresh.unloaded(120) == pytest.approx(learned.unloaded(120))
    assert fresh.answered == pytest.approx(500.0 - 19.0)  # answered 19 s before the snapshot: ages travel, not times


def test_two_views_blend_as_a_weighted_geometric_mean_of_speeds():
    slow, quick = taught(4.0), taught(1.0)
    before, other = slow.snapshot(20.0).levels, quick.snapshot(20.0).levels
    slow.absorb(quick.snapshot(now=20.0), weight=0.5, now=20.0)
    assert slow.snapshot(20.0).levels == pytest.approx(
        [math.sqrt(a * b) for a, b in zip(before, other, strict=True)], rel=1e-9)
    slow.absorb(quick.snapshot(now=20.0), weight=0.25, now=20.0)
    assert slow.snapshot(20.0).levels == pytest.approx(
        [math.sqrt(a * b) ** 0.75 * b ** 0.25 for a, b in zip(before, other, strict=True)], rel=1e-9)
    after = slow.level
    slow.absorb(EndpointModel().snapshot(now=0.0), weight=1.0, now=20.0)  # a view with no answers changes nothing
    assert slow.level == after


def test_a_learned_parallelism_is_taken_only_while_this_replica_has_not_learned_its_own():
    own = taught(1.0, parallel=4, rounds=1)  # some answers, parallelism not known yet
    assert not own.parallel_known
    own.absorb(taught(1.0, parallel=1).snapshot(now=20.0), weight=0.2, now=20.0)
    assert own.parallel_known and own.parallel == 1.0
    known = taught(1.0, parallel=4)
    known.absorb(taught(1.0, parallel=1).snapshot(now=20.0), weight=0.2, now=20.0)
    assert known.parallel == 4.0  # its own evidence decides


def test_a_model_of_another_bound_gives_its_speed_only():
    four, two = taught(1.0), EndpointModel(max_parallel=2)
    two.absorb(four.snapshot(now=20.0), weight=1.0, now=20.0)
    assert two.answered_level == pytest.approx(four.answered_level) and two.parallel == 2.0


def test_shapes_blend_their_samples():
    a, b = LatencyModel(30.0), LatencyModel(30.0)
    for i in range(20):
        a.observe(100, 1.0 + 0.01 * i % 2, now=i)
        b.observe(10 + 10 * i, 0.1 + 0.01 * (10 + 10 * i), now=i)
    fresh = LatencyModel(30.0)
    fresh.absorb(b.snapshot(now=19), weight=0.5, now=1000.0)
    assert fresh.known and fresh.fit() == pytest.approx(b.fit())
    a.absorb(b.snapshot(now=19), weight=0.5, now=19)
    base, per_char = a.fit()
    assert 0 < per_char and a.samples == 20  # b's spread of lengths now shapes a's line


def test_the_document_survives_the_store_and_garbage_does_not():
    model, shape = taught(2.0), LatencyModel(30.0)
    shape.observe(10, 0.2, now=1)
    doc = Knowledge(1000.0, {"gpu": ("index-tts-vllm", shape.snapshot(1))},
                    {"gpu/a": ("index-tts-vllm", model.snapshot(now=20.0))})
    back = decode(encode(doc), now_wall=1005.0)
    assert back is not None and back.shapes == doc.shapes
    kind, snap = back.models["gpu/a"]
    assert kind == "index-tts-vllm" and snap.levels == model.snapshot(now=20.0).levels
    assert snap.answered_age == pytest.approx(19.0 + 5.0)  # its last answer 19 s before it was taken, 5 s before read
    for raw in (b"", b"[]", b"{\"v\": 2}", b"\xff", b"{" * 100_000):
        assert decode(raw) is None
    data = json.loads(encode(doc))
    for field, value in (("levels", [math.nan] * 4), ("levels", [-1.0] * 4), ("levels", [1.0] * 1000),
                         ("best", 7), ("history", 1e300), ("answers", -1), ("answered_age", "soon"),
                         ("centers", [1.0, 2.0])):
        bad = json.loads(json.dumps(data))
        bad["models"]["gpu/a"][field] = value
        raw = json.dumps(bad).replace("NaN", "NaN").encode()
        found = decode(raw)
        assert found is not None and "gpu/a" not in found.models and "gpu" in found.shapes, field


async def test_a_replica_that_starts_late_routes_with_what_the_first_learned():
    store = MemoryStore()
    first, late = fake_endpoint("a"), fake_endpoint("a")
    for i in range(30):
        first.model.observe(50 + i, 0.5 + 0.01 * (50 + i), 1, now=float(i))
    one = KnowledgeSharing(Guard(store, timeout=1, where="memory"), "one", lambda: [first], 1.0, lambda: 30.0)
    two = KnowledgeSharing(Guard(store, timeout=1, where="memory"), "two", lambda: [late], 1.0, lambda: 5.0)
    await one.publish()
    assert not late.model.known
    assert await two.pull() == 1
    assert late.model.known and late.model.unloaded(80) == pytest.approx(first.model.unloaded(80), rel=1e-6)
    assert await one.pull() == 0  # its own entry is not "another replica"
