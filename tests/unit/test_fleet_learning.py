"""Good from the first second (issue #17): a router that starts, a fleet that restarts, a node that joins, hangs or
was misjudged, on the discrete-event fleet (fake clock, no HTTP). Each asserts what clients get."""

from __future__ import annotations

import math
import random

from speech_router.router.outlier import Outcome
from speech_router.router.ticket import Placement, Ticket
from tests.unit.fleetsim import Sim, SimNode, Watch, p99, poisson, teach

#: the mixed fleet of the issue: 4 nodes of 4 slots at speeds 1, 1, 0.5 and 0.25
SPEEDS = (1.0, 1.0, 0.5, 0.25)
#: requests a second at 70 % of its capacity, texts of 20-400 characters (50 ms + 2 ms per character at speed 1)
RATE = 0.7 * sum(4 * s for s in SPEEDS) / (0.05 + 0.002 * 210)


def mixed_fleet(**pool: object) -> Sim:
    return Sim([SimNode(f"n{i}", slots=4, slowdown=1 / s) for i, s in enumerate(SPEEDS)], max_concurrency=4, **pool)


def minute(sim: Sim, seed: int = 1) -> Watch:
    poisson(sim, RATE, 0.0, 60.0, random.Random(seed))
    watch = Watch(sim, until=60.0)
    sim.run()
    return watch


def first_and_last(sim: Sim) -> tuple[float, float]:
    ok = [r for r in sim.requests if r.status == "ok"]
    assert len(ok) == len(sim.requests)
    return p99([r.latency for r in ok if r.arrived < 20]), p99([r.latency for r in ok if r.arrived >= 30])


def test_a_router_that_starts_under_load_knowing_nothing_is_good_from_the_first_second():
    sim = mixed_fleet()
    watch = minute(sim)
    first, last = first_and_last(sim)
    assert first <= 1.3 * last
    assert watch.longest <= 1.0  # no request waited a second in the router while an endpoint stood idle


def test_a_fleet_that_restarts_together_under_load_is_not_held_back_by_slow_start():
    sim = mixed_fleet(balancer={"slow_start": 10})
    for i, ep in enumerate(sim.pool.endpoints):  # known from before the restart...
        teach(ep, 0.002 / SPEEDS[i], 0.05 / SPEEDS[i])
        ep.joined()  # ...and all back at once: nobody to protect them from
    watch = minute(sim)
    first, last = first_and_last(sim)
    assert first <= 1.3 * last  # the previous router's slow start made it ~2x
    assert watch.longest <= 1.0


def test_a_short_text_at_the_back_of_a_long_queue_takes_an_idle_slow_endpoint():
    sim = Sim([SimNode("a"), SimNode("b"), SimNode("slow", slowdown=4)], max_concurrency=1)
    for name in ("a", "b"):
        teach(sim.ep(name), 0.002)
    teach(sim.ep("slow"), 0.002 * 16, 0.05 * 16)  # judged 16x slower than it is 4x: a pessimistic first look
    scheduler = sim.pool.scheduler
    for _ in range(2):
        assert scheduler.submit(Ticket(400)).endpoint.name in ("a", "b")
    for _ in range(10):  # ten long texts wait for the quick nodes (~0.85 s each): the slow one would take 13 s
        assert scheduler.submit(Ticket(400)) is None
    short = scheduler.submit(Ticket(20))  # its turn on a quick node comes in ~5 s: on the slow one it is done in 1.4
    assert short is not None and short.endpoint.name == "slow"


def test_an_estimate_nothing_refreshes_moves_towards_its_history_and_its_peers():
    sim = mixed_fleet()
    quick, slow = sim.ep("n0"), sim.ep("n3")
    teach(quick, 0.002)
    for chars in (20, 100, 200, 400, 50, 300):  # answered 4x slower than it is (a busy machine, once)...
        slow.model.observe(chars, 4 * 4 * (0.05 + 0.002 * chars), 1, sim.clock())
    for chars in (20, 100, 200, 400, 50, 300):  # ...then at its own speed
        slow.model.observe(chars, 4 * (0.05 + 0.002 * chars), 1, sim.clock())
    judged = slow.model.level  # a peak-sensitive estimate comes down slowly: still pessimistic
    half_life = slow.model.half_life
    aged = slow.model.level_at(sim.clock() + 2 * half_life, peers=quick.model.level)
    assert aged < judged  # two half-lives without news: towards its history and its peers...
    assert aged > quick.model.level  # ...which says it is slower than them
    assert slow.model.level_at(sim.clock(), peers=quick.model.level) == judged  # fresh: what it answered


def test_a_node_added_under_light_load_gets_a_request_at_once_and_then_its_share():
    # real GPU servers batch: four requests on one GPU are each slower than two and two on two GPUs
    nodes = [SimNode("old", slots=4, base=0.2, batching=0.15)]
    sim = Sim(nodes, max_concurrency=4)
    for _ in range(4):  # four clients, one short request after another
        sim.client(30, until=30.0)
    sim.at(10.0, lambda: sim.add_node(SimNode("new", slots=4, base=0.2, batching=0.15)))
    sim.run()
    first = min(r.arrived for r in sim.requests if r.status == "ok" and r.endpoints[-1] == "new")
    assert first < 11.0  # within a second of joining
    assert sim.share("new", 10.0, 16.0) >= 0.3  # and its share of the next six seconds


def test_a_node_that_hangs_for_30s_costs_clients_little_and_is_back_at_its_share_within_seconds():
    sim = Sim([SimNode(f"n{i}", slots=4) for i in range(4)], timeouts=True, max_concurrency=4)
    poisson(sim, 0.6 * 16 / (0.05 + 0.002 * 210), 0.0, 80.0, random.Random(3))
    sim.nodes["n0"].hang = (20.0, 50.0)  # accepts and answers nothing for 30 s, then answers as before
    sim.run()
    assert sim.statuses() == {"ok": len(sim.requests)}
    longest = max(r.latency for r in sim.requests)
    assert longest < 5.0  # the previous router made one client wait 10-26 s (timeouts doubled on each timeout)
    assert sim.share("n0", 52.0, 62.0) >= 0.2  # its capacity share is 0.25; the previous router: 0.02


def test_timeouts_on_one_node_do_not_grow_its_per_try_timeout_beyond_what_its_peers_take():
    sim = Sim([SimNode("a", slots=4), SimNode("b", slots=4)], max_concurrency=4, retry={"per_try_timeout_floor": 0.1})
    a, b = sim.ep("a"), sim.ep("b")
    for ep in (a, b):
        teach(ep, 0.002)
    timeouts = []
    for _ in range(4):  # a hangs: each try times out
        lease = sim.pool.scheduler.submit(Ticket(200, exclude=frozenset({"b"})))
        timeout = sim.pool.per_try_timeout(lease, 200)
        timeouts.append(timeout)
        sim.clock.advance(timeout)
        sim.pool.finish(lease, Outcome.TIMEOUT, timeout=timeout)
    peers = 3 * sim.pool.scheduler.predict(b, 200, 1)  # per_try_timeout_factor x what b takes
    assert a.suspect and max(timeouts) <= peers * 1.01
    lease = sim.pool.scheduler.submit(Ticket(200, exclude=frozenset({"b"})))
    sim.clock.advance(0.45)
    sim.pool.finish(lease, Outcome.OK)  # it answers as before: what its timeouts suggested is dropped at once
    assert not a.suspect and a.model.level < 1.2 * b.model.level


def test_a_suspect_endpoint_is_explored_with_a_short_text_when_its_breaker_half_opens():
    sim = Sim([SimNode("a", slots=4), SimNode("b", slots=4)], max_concurrency=4, breaker={"base_ejection": 5})
    a, b = sim.ep("a"), sim.ep("b")
    for ep in (a, b):
        teach(ep, 0.002)
    for chars in (20, 100, 400) * 10:
        sim.pool.scheduler.choice.note(chars)
    a.breaker.trip("test")
    sim.clock.advance(5)  # its backoff is over: half-open
    long = sim.pool.scheduler.submit(Ticket(400))
    assert long.endpoint is b  # a long text is not a probe's
    probe = sim.pool.scheduler.submit(Ticket(20))
    assert probe.endpoint is a and probe.probe and probe.suspect and probe.placement == Placement.EXPLORE


def test_ties_go_to_the_endpoint_with_fewer_requests_in_flight():
    sim = Sim([SimNode("a", slots=4), SimNode("b", slots=4)], max_concurrency=4,
              balancer={"voice_affinity": False, "adaptive_concurrency": False})  # four side by side: no line
    a, b = sim.ep("a"), sim.ep("b")
    for ep in (a, b):
        teach(ep, 0.002)
    b.picks = 100  # b has served much more so far...
    busy = [sim.pool.scheduler.submit(Ticket(100, exclude=frozenset({"b"}))) for _ in range(3)]
    assert {lease.endpoint.name for lease in busy} == {"a"}
    # ...but a has three in flight and b none: equally quick, the next one goes where it is alone
    assert sim.pool.scheduler.submit(Ticket(100)).endpoint is b


def test_speeds_and_the_latency_shape_do_not_drift_apart_however_long_a_pool_runs():
    sim = Sim([SimNode(f"n{i}", slots=4) for i in range(3)], max_concurrency=4)
    rng = random.Random(4)
    for _ in range(6000):  # jittery answers: a peak-sensitive speed sits above the typical one, the shape then shrinks
        lease = sim.pool.scheduler.submit(Ticket(100))
        sim.clock.advance(0.25 * math.exp(rng.gauss(0, 0.3)))
        sim.pool.finish(lease, Outcome.OK)
    levels = [ep.model.answered_level for ep in sim.pool.endpoints]
    assert all(0.5 < level < 2.0 for level in levels), levels  # unanchored, they reach 7-9 (and keep going)
    predicted = sim.pool.scheduler.predict(sim.pool.endpoints[0], 100, 1)
    assert 0.2 < predicted < 0.4  # and what it predicts is what the pool answers in
