"""The scheduler by expected completion, on simulated fleets with a fake clock: no HTTP, no sleeping."""

from __future__ import annotations

import math
import random

import pytest

from speech_router.errors import NoHealthyEndpoint, QueueFull
from speech_router.router.breaker import BreakerState
from speech_router.router.outlier import Outcome
from speech_router.router.ticket import Placement, Ticket
from tests.unit.fleetsim import Sim, SimNode, teach


def test_long_text_goes_to_the_fast_endpoint_and_a_short_one_to_the_slow_one_when_fast_is_full():
    sim = Sim([SimNode("fast"), SimNode("slow")], max_concurrency=1)
    fast, slow = sim.ep("fast"), sim.ep("slow")
    teach(fast, 0.002)
    teach(slow, 0.008)
    scheduler = sim.pool.scheduler
    lease = scheduler.submit(Ticket(400))
    assert lease is not None and lease.endpoint is fast
    # fast is busy for ~0.85 s: a short text is done sooner on the idle slow node (0.21 s) than after waiting...
    short = scheduler.submit(Ticket(20))
    assert short is not None and short.endpoint is slow
    # ...but a long text waits for the fast node (0.85 + 0.85 s) rather than take 3.25 s on the slow one
    assert scheduler.submit(Ticket(400)) is None and scheduler.depth() == 1


def test_a_waiting_request_takes_the_next_slot_that_is_worth_it_whichever_endpoint_frees():
    sim = Sim([SimNode("a"), SimNode("b")], max_concurrency=1)
    for ep in sim.pool.endpoints:
        teach(ep, 0.002)
    first, second = sim.submit(200), sim.submit(200)
    waiting = sim.submit(200)
    assert waiting.tries == 0 and sim.pool.queue_depth() == 1
    sim.run()
    assert [r.status for r in (first, second, waiting)] == ["ok"] * 3
    assert waiting.done == pytest.approx(2 * (0.05 + 0.4))  # right after the first slot freed


def test_an_endpoint_that_joins_takes_waiting_requests_at_once_and_is_explored_not_avoided():
    sim = Sim([SimNode("old", slots=4)], max_concurrency=4)
    teach(sim.ep("old"), 0.002)
    for _ in range(6):
        sim.submit(200)
    assert sim.pool.queue_depth() == 2
    new = sim.add_node(SimNode("new", slots=4))  # no history: it is given the pool's estimate
    assert not new.model.known and new.ramping()
    # in slow start its share is 1, but the waiting requests would otherwise wait: slow start is never a reason to
    assert new.inflight == 2 and sim.pool.queue_depth() == 0
    sim.run()
    assert sim.statuses() == {"ok": 6}


def test_slow_start_ramps_the_share_while_others_have_room_and_never_keeps_a_request_waiting():
    sim = Sim([SimNode("old", slots=4)], max_concurrency=4, balancer={"slow_start": 10})
    old = sim.ep("old")
    teach(old, 0.002)
    new = sim.add_node(SimNode("new", slots=4))
    assert new.share() == 1 and new.cap() == 4
    first = [sim.pool.scheduler.submit(Ticket(100)) for _ in range(5)]  # old has room for four of them
    assert sorted(lease.endpoint.name for lease in first) == ["new", "old", "old", "old", "old"]
    overflow = sim.pool.scheduler.submit(Ticket(100))  # old is full: rather than wait, the new one takes it
    assert overflow is not None and overflow.endpoint is new and new.inflight == 2
    assert overflow.placement == Placement.OVERFLOW
    for lease in first + [overflow]:
        sim.pool.finish(lease, Outcome.CANCELLED)
    sim.clock.advance(5)
    assert new.share() == 2
    sim.clock.advance(5)
    assert new.share() == 4 and not new.ramping()


def test_a_pool_that_joins_together_is_not_ramped():
    sim = Sim([SimNode(f"n{i}", slots=4) for i in range(3)], max_concurrency=4, balancer={"slow_start": 10})
    for ep in sim.pool.endpoints:
        teach(ep, 0.002)
        ep.joined()  # the whole fleet came up together (a restart, a router started before its fleet)
    leases = [sim.pool.scheduler.submit(Ticket(100)) for _ in range(9)]
    assert all(lease is not None for lease in leases)
    assert sorted(lease.endpoint.name for lease in leases) == ["n0"] * 3 + ["n1"] * 3 + ["n2"] * 3  # spread evenly
    assert {lease.placement for lease in leases} == {Placement.FREE}  # within their share: no ramp holds them


def test_a_new_node_reaches_its_share_of_a_busy_pool_within_the_slow_start_window():
    nodes = [SimNode(f"n{i}", slots=4, base=0.2, per_char=0.0) for i in range(2)]
    sim = Sim(nodes, max_concurrency=4, balancer={"slow_start": 10})
    for i in range(1050):  # 35 requests/s for 30 s: 2 nodes x 4 slots x 5/s = 40/s of capacity, then 60/s
        sim.submit_at(i / 35, 100)
    sim.at(10.0, lambda: sim.add_node(SimNode("n2", slots=4, base=0.2, per_char=0.0)))
    sim.run()
    assert sim.statuses() == {"ok": 1050}
    late = [r for r in sim.requests if r.arrived >= 20.0]  # 10 s after joining
    share = sum(1 for r in late if r.endpoints[-1] == "n2") / len(late)
    assert share > 0.25  # a third of the capacity; it is not sitting idle


def test_waiting_requests_go_to_an_undrained_endpoint_and_to_one_whose_breaker_half_opens():
    sim = Sim([SimNode("a"), SimNode("b")], max_concurrency=1, breaker={"base_ejection": 5},
              balancer={"slow_start": 0})
    a, b = sim.ep("a"), sim.ep("b")
    for ep in (a, b):
        teach(ep, 0.002)
    b.draining = True
    first, waiting = sim.submit(400), sim.submit(400)
    assert first.endpoints == ["a"] and waiting.tries == 0  # b is drained, a is busy
    b.draining = False  # undrain: the fleet wakes the pool
    sim.pool.wake()
    assert waiting.endpoints == ["b"]
    sim.run()
    b.breaker.trip("test")
    third, fourth = sim.submit(400), sim.submit(400)
    assert third.endpoints == ["a"] and fourth.tries == 0
    sim.clock.advance(5)  # b's backoff is over: the next look half-opens it and sends the probe at once
    sim.pool.wake()
    assert fourth.endpoints == ["b"] and b.breaker.state == BreakerState.HALF_OPEN
    sim.run()
    assert b.breaker.state == BreakerState.CLOSED and sim.statuses() == {"ok": 4}


def test_one_slot_nodes_learn_a_limit_of_one_so_segments_do_not_stack_on_busy_nodes():
    nodes = [SimNode(f"n{i}", slots=1, base=0.3, per_char=0.01) for i in range(4)]
    sim = Sim(nodes, max_concurrency=4)
    for _ in range(25):  # bursts teach the curve: the second of two requests on a node takes twice as long
        for _ in range(8):
            sim.submit(60)
        sim.run()
        sim.clock.advance(1)
    assert all(sim.ep(n.name).limit.learned(sim.ep(n.name).model, sim.clock()) == 1 for n in nodes)
    start = sim.clock.advance(1)
    burst = [sim.submit(60) for _ in range(20)]
    sim.run()
    makespan = max(r.done for r in burst) - start
    assert makespan <= 5 * 0.9 * 1.1  # 20 segments of 0.9 s on 4 nodes: 5 rounds, within 10 %


class JitteryNode(SimNode):
    """A node whose service times vary by text, as GPU latencies do (lognormal, sigma 0.3, fixed per text)."""

    def __init__(self, name: str, speed: float, jitter: dict[int, float]) -> None:
        super().__init__(name, slots=4)
        self.speed, self.jitter = speed, jitter

    def service(self, chars: int, now: float = 0.0) -> float:
        return super().service(chars) / self.speed * self.jitter[chars]


def test_nodes_that_run_requests_side_by_side_keep_their_configured_limit_through_jitter():
    rng = random.Random(8)
    jitter = {c: math.exp(rng.gauss(0, 0.3)) for c in range(20, 401)}
    nodes = [JitteryNode(f"n{i}", speed, jitter) for i, speed in enumerate((1, 1, 0.5, 0.25))]
    sim = Sim(nodes, max_concurrency=4)
    t = 0.0
    while t < 60:  # 70 % of the fleet's capacity, Poisson arrivals, texts of 20-400 characters
        t += rng.expovariate(15.7)
        sim.submit_at(t, rng.randint(20, 400))
    sim.run()
    assert sim.statuses() == {"ok": len(sim.requests)}
    assert [sim.ep(n.name).limit.learned(sim.ep(n.name).model, sim.clock()) for n in nodes] == [4, 4, 4, 4]


def test_a_fleet_that_slows_down_is_followed_and_never_locked_out():
    nodes = [SimNode(f"n{i}", slots=4, base=0.2, per_char=0.0008) for i in range(2)]  # ~0.36 s per request
    sim = Sim(nodes, timeouts=True, max_concurrency=4, breaker={"consecutive_failures": 2, "min_requests": 4},
              retry={"per_try_timeout_floor": 1.0})
    for i in range(300):  # 3 requests/s for 100 s: 14 % of the fleet's capacity, 75 % once it is 5.5x slower
        sim.submit_at(i / 3, 200)

    def slow_down(factor: float) -> None:
        for node in nodes:
            node.slowdown = factor

    sim.at(20.0, lambda: slow_down(5.5))  # 0.36 s -> 2 s: a GPU shared with another job
    sim.at(70.0, lambda: slow_down(1.0))
    sim.run()
    assert sim.statuses() == {"ok": 300}
    assert all(ep.breaker.trips == 0 for ep in sim.pool.endpoints)  # the pool slowed together: nobody ejected
    slow = [r.latency for r in sim.requests if 30 <= r.arrived < 70]
    assert max(slow) < 3 * 2.0  # once learned, the slow fleet serves at its new speed
    recovered = [r.latency for r in sim.requests if r.arrived >= 80]
    assert max(recovered) < 1.5 * 0.36  # and at its old speed once it is back


def test_admission_is_by_expected_wait_not_by_queue_length():
    sim = Sim([SimNode("a", slots=1, base=1.0, per_char=0.0)], max_concurrency=1, queue={"max_size": 1000})
    teach(sim.ep("a"), 0.0, base=1.0)
    sim.submit(10)
    queued = [sim.submit(10, limit=10) for _ in range(8)]
    assert all(r.status == "pending" for r in queued) and sim.pool.queue_depth() == 8  # 8 s of work: within 10 s
    with pytest.raises(QueueFull) as refused:  # the tenth would start after ~9 s, more than it may wait
        sim.pool.scheduler.submit(Ticket(10, limit=5))
    assert refused.value.retry_after == pytest.approx(4.0, abs=0.5)
    sim.run()
    assert sim.statuses() == {"ok": 9}


def test_interactive_requests_leave_the_queue_before_batch():
    sim = Sim([SimNode("a")], max_concurrency=1)
    teach(sim.ep("a"), 0.002)
    sim.submit(100)
    batch = sim.submit(100, priority="batch")
    interactive = sim.submit(100)
    sim.run()
    assert interactive.done < batch.done


def test_before_anything_is_learned_it_is_least_outstanding_and_never_waits_with_a_free_slot():
    sim = Sim([SimNode("a", slots=4), SimNode("b", slots=4)], max_concurrency=2)
    leases = [sim.pool.scheduler.submit(Ticket(100)) for _ in range(4)]
    assert all(lease is not None for lease in leases)
    assert sorted(lease.endpoint.name for lease in leases) == ["a", "a", "b", "b"]
    assert sim.pool.scheduler.submit(Ticket(100)) is None  # every slot taken: it waits


def test_no_endpoint_outside_the_exclusions_is_no_healthy_endpoint():
    sim = Sim([SimNode("a"), SimNode("b")])
    with pytest.raises(NoHealthyEndpoint):
        sim.pool.scheduler.submit(Ticket(10, exclude=frozenset({"a", "b"})))


def test_a_voice_goes_back_to_the_endpoint_that_served_it_while_it_is_about_as_quick_and_hardly_busier():
    # four slots side by side, as configured (nothing to learn: a busy endpoint is not priced as a line)
    sim = Sim([SimNode("a", slots=4), SimNode("b", slots=4)], max_concurrency=4,
              balancer={"adaptive_concurrency": False})
    for ep in sim.pool.endpoints:
        teach(ep, 0.002)
    scheduler = sim.pool.scheduler

    def voice(name: str) -> str:
        return scheduler.submit(Ticket(100, affinity=name)).endpoint.name

    warm = voice("alloy")
    cold = "b" if warm == "a" else "a"
    assert voice("alloy") == warm  # its speaker is cached there: one more in flight than the other is fine
    assert voice("alloy") == cold  # two more: a voice every client asks for spreads over the fleet
    assert voice("alloy") == cold  # both warm now: the less busy
    sim.config.balancer.voice_affinity = False
    for ep in sim.pool.endpoints:  # everything done
        for token in list(ep.running):
            ep.finish(token)
    held = voice("nova")
    sim.config.balancer.voice_affinity = True
    assert voice("nova") == held  # a voice only it served: it keeps it with one more in flight...
    sim.config.balancer.voice_affinity = False
    assert voice("nova") != held  # ...which without affinity goes to the less busy one


def test_a_busy_pool_sends_short_texts_to_slow_endpoints_and_keeps_quick_ones_for_long_texts():
    sim = Sim([SimNode("quick", slots=4), SimNode("slow", slots=4)], max_concurrency=4)
    quick, slow = sim.ep("quick"), sim.ep("slow")
    teach(quick, 0.002)
    teach(slow, 0.008)
    scheduler = sim.pool.scheduler
    for chars in [400] * 20 + [20] * 20:  # what the pool's requests are like: long ones are 400 characters
        scheduler.choice.note(chars)
    short_when_idle = scheduler.submit(Ticket(20))
    assert short_when_idle.endpoint is quick  # an idle pool: the quickest
    sim.pool.finish(short_when_idle, Outcome.CANCELLED)
    for _ in range(3):
        assert scheduler.submit(Ticket(400)).endpoint is quick
    short = scheduler.submit(Ticket(20))  # quick is 3/4 busy: a short text takes the slow node, within the
    assert short.endpoint is slow  # time a long text takes on the quick one (0.85 s > 0.21 s)
    long = scheduler.submit(Ticket(400))
    assert long.endpoint is quick  # the slot kept free for it


def test_an_idle_endpoint_not_heard_from_for_a_half_life_is_tried_with_a_short_text():
    sim = Sim([SimNode("a", slots=4), SimNode("b", slots=4)], max_concurrency=4)
    a, b = sim.ep("a"), sim.ep("b")
    teach(a, 0.002)
    teach(b, 0.02)  # once very slow
    for chars in (20, 100, 400) * 10:
        sim.pool.scheduler.choice.note(chars)
    first = sim.pool.scheduler.submit(Ticket(20))
    assert first.endpoint is a
    sim.clock.advance(0.09)
    sim.pool.finish(first, Outcome.OK)
    sim.clock.advance(31)  # nothing heard of b since (a is kept fresh: it just answered)
    a.model.heard = sim.clock()
    long = sim.pool.scheduler.submit(Ticket(400))
    assert long.endpoint is a  # a long text is not a probe's
    sim.pool.finish(long, Outcome.CANCELLED)
    assert sim.pool.scheduler.submit(Ticket(20)).endpoint is b  # a short one goes to find out
    assert sim.pool.scheduler.submit(Ticket(20)).endpoint is a  # once: b's answer is awaited


def test_a_batch_request_takes_a_free_slot_rather_than_wait_for_a_quicker_endpoint():
    sim = Sim([SimNode("fast"), SimNode("slow")], max_concurrency=1, queue={"batch_headroom": 0})
    teach(sim.ep("fast"), 0.002)
    teach(sim.ep("slow"), 0.008)
    scheduler = sim.pool.scheduler
    assert scheduler.submit(Ticket(400)).endpoint.name == "fast"
    assert scheduler.submit(Ticket(400)) is None  # interactive: waiting for fast (1.7 s) beats slow (3.25 s)
    scheduler.cancel(next(scheduler.waiting()))
    batch = scheduler.submit(Ticket(400, priority="batch"))
    assert batch is not None and batch.endpoint.name == "slow"  # batch work counts throughput: the free slot


def test_batch_requests_leave_headroom_while_interactive_ones_were_seen_lately():
    sim = Sim([SimNode("a", slots=2), SimNode("b", slots=2)], max_concurrency=2,
              queue={"batch_headroom": 1, "batch_window": 30})
    for ep in sim.pool.endpoints:
        teach(ep, 0.002)
    scheduler = sim.pool.scheduler
    assert scheduler.submit(Ticket(100)) is not None  # an interactive request: 3 slots free
    batches = [scheduler.submit(Ticket(100, priority="batch")) for _ in range(3)]
    assert [lease is not None for lease in batches] == [True, True, False]  # the last free slot is left
    assert scheduler.submit(Ticket(100)) is not None  # ...for the next interactive request, at once
    for ep in sim.pool.endpoints:
        for token in list(ep.running):
            ep.finish(token)
    sim.clock.advance(31)  # no interactive request for a window: batch work takes every slot
    sim.pool.wake()
    assert sum(ep.busy for ep in sim.pool.endpoints) == 1  # the waiting batch request was placed
    more = [scheduler.submit(Ticket(100, priority="batch")) for _ in range(3)]
    assert all(lease is not None for lease in more)
