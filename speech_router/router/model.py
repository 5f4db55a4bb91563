"""What an endpoint will take for a text of a given length with a given number of requests in flight.

    seconds = shape(chars) x level x queueing(n)        queueing(n) = 1 + max(0, n - parallel) / parallel

- ``shape``: ``base + per_char x chars``, a decaying least-squares fit (``LatencyModel``) **shared by the
  pool**: every endpoint of a pool runs the same model on the same kind of text, so all their answers
  teach it, and a new endpoint's first answers cannot bend it (a line fit to three answers of one node
  extrapolates badly).
- ``level``: how fast this endpoint is *now* against the pool's shape, a peak-sensitive average (Finagle's
  peak EWMA): a slower answer moves it up at once, faster ones bring it down over a few answers; its first
  answer sets it. A try that timed out is an observation too (it took longer than its timeout), kept apart
  as a *penalty* on top of what its answers say: a fleet that slows down is followed instead of being
  locked out by timeouts learned while it was fast, and the first good answer lifts the penalty, so a node
  that hung and recovered is back at its speed at once (``suspect`` until then).
- **Aging**: an estimate nothing refreshes drifts, with the half-life, from the last answers towards what
  the endpoint's own history (a plain average of all its answers) and its peers (the rest of the pool)
  suggest (``level_at``): a node that answered its first requests slowly on a busy machine is not taken for
  slow for ever just because it was never asked again.
- ``parallel``: how many requests the endpoint really works on at once (its throughput curve's knee). Up
  to that many run side by side without slowing each other; beyond it requests queue inside the node, one
  service each per turn. A node that synthesizes one request at a time has 1; an emulated node with four
  GPU slots has 4. ``n`` is the number in flight when the request started, itself included: for a node
  that works first come first served that is exact (the third of three requests sent at once waits two
  services), and it is what the scheduler knows when it decides.

``parallel`` is chosen among 1 .. ``max_concurrency`` as the value whose predictions fit recent answers
best: each candidate keeps its own level (a plain average of log ratios, unbiased for the multiplicative
jitter GPU latencies have) and a fading sum of its squared log errors (a bank of models), so a node that
changes speed misleads every candidate alike and only the *pattern* across requests in flight tells them
apart; the choice moves only when another candidate fits clearly better
(hysteresis), so noise does not make a four-slot node look like a three-slot one.
``speech_router.router.limits`` uses it as the endpoint's useful concurrency.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from .latency import LatencyModel

#: how far one answer moves ``level`` towards itself: slower answers at once, faster ones gradually
LEVEL_UP = 0.5
LEVEL_DOWN = 0.2
#: a timed-out try took at least its timeout; it is counted as this much longer
CENSORED_MARGIN = 1.25
#: how much of its past each candidate's error keeps per informative answer
ERROR_MEMORY = 0.97
#: how far one answer moves a candidate's (log) center, for judging its fit
CENTER_STEP = 0.1
#: another parallelism is chosen only when its error is below this share of the current one's, and lower by
#: at least SWITCH_GAIN per (fading) informative answer: clear evidence, not the noise of a jittery node
SWITCH_MARGIN = 0.5
SWITCH_GAIN = 0.15
#: informative answers (started with others in flight) before ``parallel`` counts as learned
MIN_INFORMATIVE = 10
#: answers of its own, and of the pool (the shape), before fits are judged: early estimates are too rough
SETTLE_ANSWERS = 3
SETTLE_SHAPE = 20
#: an idle endpoint not heard from for this many of its last answer's time counts as stale (at most a half-life)
STALE_SERVICES = 10.0
#: answers quicker than this are mostly transport, not synthesis: they teach no parallelism (a router whose own
#: event loop is the bottleneck would otherwise read its own queueing as the node's)
MIN_JUDGED_SECONDS = 0.02
#: the largest ``parallel`` considered (larger limits are taken as configured)
MAX_CANDIDATES = 64
#: aging: how many of its own answers its history counts for at most, and how many the peers' level counts for
HISTORY_WEIGHT = 10
PEER_WEIGHT = 2
#: how far one answer moves its history (a plain average of log ratios over its last ~1/step answers)
HISTORY_STEP = 0.1


def queueing(n: float, parallel: float) -> float:
    """How many services a request takes that started with ``n`` in flight (itself included)."""
    return 1.0 + max(0.0, n - parallel) / parallel


@functools.lru_cache(maxsize=4096)
def _mean_queueing(n: float, candidates: int) -> float:
    return sum(queueing(n, s + 1) for s in range(candidates)) / candidates


@dataclass(frozen=True)
class ModelSnapshot:
    """An ``EndpointModel`` as another router replica sees it (``snapshot``), without the pool's shape: times are
    ages (seconds before the snapshot was taken; None: never), so replicas whose clocks differ can share it."""

    levels: tuple[float, ...]
    centers: tuple[float, ...]
    errors: tuple[float, ...]
    best: int
    informative: int
    evidence: float
    answers: int
    history: float
    answered_age: float | None
    heard_age: float | None
    last_seconds: float | None

    @property
    def level(self) -> float:
        return self.levels[self.best]


class EndpointModel:
    """One endpoint's latency: the pool's shape x its level x queueing beyond its parallelism."""

    def __init__(self, half_life: float = 30.0, max_parallel: int = 4, shape: LatencyModel | None = None,
                 learn_parallel: bool = True) -> None:
        self.shape = shape if shape is not None else LatencyModel(half_life)
        self.half_life = half_life
        self.max_parallel = max(1, max_parallel)
        candidates = min(self.max_parallel, MAX_CANDIDATES)
        self._levels = [1.0] * candidates  # peak-sensitive: what predictions use
        self._centers = [0.0] * candidates  # log of a plain average: what fits are judged against
        self._errors = [0.0] * candidates
        #: the parallelism assumed until learned: the configured bound (optimistic, as a fresh limit is)
        self._best = candidates - 1
        #: False: the configured bound is the parallelism (``adaptive_concurrency: false``), nothing to learn
        self.learn_parallel = learn_parallel
        self.informative = 0
        self._evidence = 0.0  # informative answers, fading as the errors do
        #: this endpoint's own answers, when the last one came, and when it was last heard from or tried for news
        self.answers = 0
        self.answered = -math.inf
        self.heard = -math.inf
        self.last_seconds = math.inf
        #: how much slower than its answers say its timeouts show it to be (1: none since its last answer)
        self.penalty = 1.0
        #: its level over all its answers (log of a plain average): what an old estimate ages towards
        self._history = 0.0

    def __repr__(self) -> str:
        return (f"EndpointModel(fit={self.shape.fit()}, level={self.level:.3f}, parallel={self.parallel:g}, "
                f"answers={self.answers})")

    @property
    def level(self) -> float:
        """How fast it is now against the pool's shape, timeouts since its last answer included."""
        return self._levels[self._best] * self.penalty

    @property
    def answered_level(self) -> float:
        """The same from its answers alone (what a try's timeout is measured against)."""
        return self._levels[self._best]

    @property
    def suspect(self) -> bool:
        """A try timed out since its last answer: it may be hung."""
        return self.penalty > 1.0

    def level_at(self, now: float, peers: float | None = None, *, answered: bool = False) -> float:
        """``level`` aged: as time passes without an answer it moves, with the half-life, towards what its own
        history and ``peers`` (the rest of the pool's level) suggest; right after an answer it is ``level``."""
        level = self.answered_level if answered else self.level
        age = now - self.answered
        if age <= 0 or not self.answers:
            return level
        fresh = math.pow(0.5, age / self.half_life)
        if fresh > 0.999:
            return level
        own = min(self.answers, HISTORY_WEIGHT)
        target = own * self._history
        weight = float(own)
        if peers is not None and peers > 0:
            target += PEER_WEIGHT * math.log(peers)
            weight += PEER_WEIGHT
        return math.exp(fresh * math.log(level) + (1 - fresh) * target / weight)

    @property
    def parallel(self) -> float:
        return float(self._best + 1)

    @property
    def known(self) -> bool:
        """Whether this endpoint's own speed is known (the pool's shape too)."""
        return self.answers > 0 and self.shape.known

    @property
    def parallel_known(self) -> bool:
        return not self.learn_parallel or self.informative >= MIN_INFORMATIVE

    @property
    def _settled(self) -> bool:
        return self.answers >= SETTLE_ANSWERS and self.shape.samples >= SETTLE_SHAPE

    def stale(self, now: float) -> bool:
        """Nothing heard from it for a half-life, or for STALE_SERVICES of its own last answers' time (a node left
        alone because of a few slow answers is asked again soon): its estimate may be out of date."""
        return now - self.heard > min(self.half_life, STALE_SERVICES * self.last_seconds)

    def unloaded(self, chars: int, now: float | None = None, prior: float | None = None, *,
                 answered: bool = False) -> float | None:
        """Expected seconds for ``chars`` alone on the endpoint, at its current speed; None before it answered.

        With ``now``, the speed is aged (``level_at``) towards its history and ``prior`` (the rest of the
        pool's estimate for the same text); ``answered``: without the penalty of timeouts since its last answer.
        """
        base = self.shape.predict(chars)
        if base is None or not self.answers:
            return None
        if now is None:
            return base * (self.answered_level if answered else self.level)
        peers = prior / base if prior is not None and base > 0 else None
        return base * self.level_at(now, peers, answered=answered)

    def predict(self, chars: int, n: float = 1.0, prior: float | None = None,
                peers_parallel: float | None = None, now: float | None = None, *,
                answered: bool = False) -> float | None:
        """Expected seconds for a request that starts with ``n`` in flight, itself included.

        ``prior`` (the rest of the pool's unloaded estimate) stands in for an endpoint that has not answered
        yet: a new endpoint is assumed to be like the others, so it is tried, not avoided; with ``now`` an old
        estimate is aged towards it. ``peers_parallel`` (what the others are known to run at once) stands in
        for its parallelism until its own is known. ``answered``: from its answers alone, without the penalty
        of timeouts since its last answer.
        """
        unloaded = self.unloaded(chars, now, prior, answered=answered)
        if unloaded is None:
            unloaded = prior
        return None if unloaded is None else unloaded * self.queueing(n, peers_parallel)

    def queueing(self, n: float, peers_parallel: float | None = None) -> float:
        """The services a request starting with ``n`` in flight is expected to take. Until the parallelism is
        known, its peers' when they know theirs, else the average over every candidate: a busy endpoint is not
        assumed free of a line inside it, so an idle one is preferred unless the busy one is clearly quicker
        (stacking requests on a node that does one at a time is what the router must not do while it finds
        out)."""
        if n <= 1:
            return 1.0
        if self.parallel_known:
            return queueing(n, self.parallel)
        if peers_parallel is not None:
            return queueing(n, min(peers_parallel, self.max_parallel))
        return _mean_queueing(n, len(self._levels))

    def observe(self, chars: int, seconds: float, n: int, now: float, *, suspect: bool = False) -> None:
        """A completed try: ``seconds`` from start to the last byte; ``n`` in flight when it started.

        ``suspect``: the try went out while the endpoint was under suspicion (it may have hung, and this try with
        it): it proves the endpoint answers again and lifts the penalty, but a time slower than its estimate says
        nothing of its speed (the try may have waited out the hang)."""
        if seconds <= 0:  # no time at all says nothing (a clock that did not move)
            return
        self.penalty = 1.0  # it answered: what its timeouts suggested is replaced by what it did
        base = self.shape.predict(chars)
        if suspect and base is not None and self.answers and seconds > base * self.answered_level * queueing(
                n, self.parallel):
            self.heard = self.answered = now
            return
        if base is not None and base > 0:
            first = self.answers == 0
            judged = n > 1 and self.learn_parallel and self._settled and seconds >= MIN_JUDGED_SECONDS
            # its first answer sets its speed; one that waited in line (n > 1, before its parallelism is known)
            # is read the most hopeful way (all waiting), so a queue inside the node is not taken for a slow node
            # that would then be avoided and never answer again to show otherwise
            hopeful = seconds / (base * n)
            for i, level in enumerate(self._levels):
                ratio = seconds / (base * queueing(n, i + 1))
                if first:
                    self._levels[i], self._centers[i] = hopeful, math.log(ratio)
                    continue
                miss = math.log(ratio) - self._centers[i]
                if judged:
                    self._errors[i] = ERROR_MEMORY * self._errors[i] + miss * miss
                self._centers[i] += CENTER_STEP * miss
                self._levels[i] = level + (LEVEL_UP if ratio > level else LEVEL_DOWN) * (ratio - level)
            own = math.log(hopeful if first else seconds / (base * queueing(n, self.parallel)))
            self._history = own if first else self._history + HISTORY_STEP * (own - self._history)
            if judged:
                self.informative += 1
                self._evidence = ERROR_MEMORY * self._evidence + 1.0
                self._choose()
            self.answers += 1
        self.heard = self.answered = now
        self.last_seconds = seconds
        self.shape.observe(chars, seconds / (self.level * queueing(n, self.parallel)), now)

    def _choose(self) -> None:
        """Move to the candidate that fits best, when it fits clearly better (the largest among equals)."""
        best = min(self._errors)
        choice = max(i for i, e in enumerate(self._errors) if e <= best * 1.05 + 1e-12)
        current = self._errors[self._best]
        if self.parallel_known and self._errors[choice] < SWITCH_MARGIN * current \
                and current - self._errors[choice] > SWITCH_GAIN * self._evidence:
            self._best = choice

    def observe_timeout(self, chars: int, timeout: float, n: int, now: float | None = None) -> None:
        """A try that did not answer within ``timeout``: the endpoint is at least that slow now.

        Before its first answer this sets its speed (it has nothing else); after, it is a penalty on top of
        what its answers say, which its next answer lifts."""
        if now is not None:
            self.heard = now
        base = self.shape.predict(chars)
        if base is None or base <= 0:
            return
        if not self.answers:
            for i in range(len(self._levels)):
                ratio = CENSORED_MARGIN * timeout / (base * queueing(n, i + 1))
                self._levels[i], self._centers[i] = ratio, math.log(ratio)
            self._history = self._centers[self._best]
            self.answers = 1
            if now is not None:
                self.answered = now
            return
        for i, answered in enumerate(self._levels):  # each candidate's fit is judged against the timeout too
            level = answered * self.penalty
            ratio = CENSORED_MARGIN * timeout / (base * queueing(n, i + 1))
            if ratio > level:
                self._centers[i] = max(self._centers[i], math.log(level + LEVEL_UP * (ratio - level)))
        ratio = CENSORED_MARGIN * timeout / (base * queueing(n, self.parallel))
        level = self.level
        if ratio > level:
            self.penalty *= (level + LEVEL_UP * (ratio - level)) / level

    def rescale(self, factor: float) -> None:
        """Its speed, times ``factor``: the other half of ``LatencyModel.rescale`` (predictions unchanged)."""
        shift = math.log(factor)
        self._levels = [level * factor for level in self._levels]
        self._centers = [center + shift for center in self._centers]
        self._history += shift

    def resized(self, max_parallel: int, learn_parallel: bool) -> EndpointModel:
        """This model for another configured bound (a reload): its speed and history carry over; its parallelism is
        learned again when the candidates change."""
        candidates = min(max(1, max_parallel), MAX_CANDIDATES)
        if candidates == len(self._levels) and learn_parallel == self.learn_parallel:
            self.max_parallel = max(1, max_parallel)
            return self
        model = EndpointModel(self.half_life, max_parallel, self.shape, learn_parallel=learn_parallel)
        level, center = self.answered_level, self._centers[self._best]
        model._levels, model._centers = [level] * candidates, [center] * candidates
        model.answers, model.answered, model.heard = self.answers, self.answered, self.heard
        model.last_seconds, model.penalty, model._history = self.last_seconds, self.penalty, self._history
        return model

    # -- shared between router replicas (speech_router.state.knowledge) --------------------------------------

    def snapshot(self, now: float) -> ModelSnapshot:
        """What its answers taught it (not the penalty of its own timeouts: suspicion stays with each replica)."""
        def age(at: float) -> float | None:
            return None if at == -math.inf else max(0.0, now - at)

        return ModelSnapshot(tuple(self._levels), tuple(self._centers), tuple(self._errors), self._best,
                             self.informative, self._evidence, self.answers, self._history, age(self.answered),
                             age(self.heard), None if math.isinf(self.last_seconds) else self.last_seconds)

    def absorb(self, snapshot: ModelSnapshot, weight: float, now: float, scale: float = 1.0) -> None:
        """Blend in another replica's knowledge of the same endpoint: ``weight`` (0 to 1) of it, the rest its own
        (all of it while it has no answer of its own). ``scale``: the other's latency shape over this one's (its
        speeds are relative to its own shape; shapes learned apart differ a little), so what blends is expected
        seconds, never a speed against one shape with a speed against another. Speeds blend as logarithms (they
        are ratios), the candidates' fits linearly; a parallelism the other learned is taken while this one has
        not learned its own; counts are the larger (so an endpoint the fleet knows is known here), times the
        later. A snapshot of another bound (a replica configured differently) gives its speed only."""
        if snapshot.answers <= 0 or weight <= 0 or not scale > 0 or math.isinf(scale):
            return
        w = 1.0 if not self.answers else min(1.0, weight)
        keep = 1.0 - w
        shift = math.log(scale)

        def blend_log(own: float, other: float) -> float:
            return math.exp(keep * math.log(own) + w * (math.log(other) + shift))

        if len(snapshot.levels) == len(self._levels):
            known = self.parallel_known
            self._levels = [blend_log(a, b) for a, b in zip(self._levels, snapshot.levels, strict=True)]
            self._centers = [keep * a + w * (b + shift) for a, b in zip(self._centers, snapshot.centers, strict=True)]
            self._errors = [keep * a + w * b for a, b in zip(self._errors, snapshot.errors, strict=True)]
            self._evidence = keep * self._evidence + w * snapshot.evidence
            self.informative = max(self.informative, snapshot.informative)
            if not known and self.parallel_known:
                self._best = min(max(0, snapshot.best), len(self._levels) - 1)
        else:
            scale = blend_log(self.answered_level, snapshot.level) / self.answered_level
            self._levels = [level * scale for level in self._levels]
        self._history = keep * self._history + w * (snapshot.history + shift)
        self.answers = max(self.answers, snapshot.answers)
        if snapshot.answered_age is not None and now - snapshot.answered_age > self.answered:
            self.answered = now - snapshot.answered_age
            if snapshot.last_seconds is not None:
                self.last_seconds = snapshot.last_seconds
        if snapshot.heard_age is not None:
            self.heard = max(self.heard, now - snapshot.heard_age)

    def fit(self) -> tuple[float, float] | None:
        """(base seconds, seconds per character) alone on the endpoint at its current speed, for views."""
        fit = self.shape.fit()
        return None if fit is None or not self.answers else (fit[0] * self.level, fit[1] * self.level)
