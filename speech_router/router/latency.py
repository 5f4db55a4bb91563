"""The shape of an endpoint's latency against text length, learned from its answers.

A weighted least-squares line ``seconds = base + per_char * chars`` whose samples fade with a
half-life, so long and short texts compare fairly. ``speech_router.router.model`` puts this shape
together with how fast the endpoint is right now and how it slows down under concurrency.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeSnapshot:
    """A ``LatencyModel`` as another router replica sees it (``snapshot``): its weighted sums as of the moment it
    was taken, and how many samples taught it."""

    samples: int
    sw: float
    sx: float
    sy: float
    sxx: float
    sxy: float


class LatencyModel:
    """Exponentially weighted linear fit of latency against input characters."""

    MIN_SAMPLES = 3

    def __init__(self, half_life: float = 30.0) -> None:
        self.half_life = half_life
        self.samples = 0
        self._last = 0.0
        self._sw = self._sx = self._sy = self._sxx = self._sxy = 0.0

    def __repr__(self) -> str:
        fit = self.fit()
        return f"LatencyModel(samples={self.samples}, fit={fit})"

    def observe(self, chars: int, seconds: float, now: float) -> None:
        if self.samples:
            decay = math.pow(0.5, max(0.0, now - self._last) / self.half_life)
            self._sw *= decay
            self._sx *= decay
            self._sy *= decay
            self._sxx *= decay
            self._sxy *= decay
        self._last = now
        x = float(chars)
        self._sw += 1
        self._sx += x
        self._sy += seconds
        self._sxx += x * x
        self._sxy += x * seconds
        self.samples += 1

    @property
    def known(self) -> bool:
        return self.samples >= self.MIN_SAMPLES

    def fit(self) -> tuple[float, float] | None:
        """(base seconds, seconds per character), or None before enough samples."""
        if not self.known or self._sw <= 0:
            return None
        mean_x, mean_y = self._sx / self._sw, self._sy / self._sw
        var_x = self._sxx / self._sw - mean_x * mean_x
        if var_x <= 1e-9 * max(1.0, mean_x * mean_x):  # all texts the same length: scale through the origin
            return 0.0, mean_y / mean_x if mean_x > 0 else 0.0
        per_char = (self._sxy / self._sw - mean_x * mean_y) / var_x
        if per_char <= 0.0:  # longer texts no slower: a constant time
            return mean_y, 0.0
        base = mean_y - per_char * mean_x
        if base < 0.0:  # a line through the origin fits best (clamping the base alone would over-predict)
            return 0.0, self._sxy / self._sxx
        return base, per_char

    def rescale(self, factor: float) -> None:
        """Every time it predicts, times ``factor`` (its samples' seconds are): the pool moves the scale from the
        endpoints' levels into the shape and back (``Pool``), predictions unchanged."""
        self._sy *= factor
        self._sxy *= factor

    def freshness(self, now: float) -> float:
        """1 right after a sample, halving with every half-life without one (0 before any)."""
        if not self.samples:
            return 0.0
        return math.pow(0.5, max(0.0, now - self._last) / self.half_life)

    def predict(self, chars: int) -> float | None:
        fit = self.fit()
        return None if fit is None else fit[0] + fit[1] * chars

    # -- shared between router replicas (speech_router.state.knowledge) --------------------------------------

    def _decay_to(self, now: float) -> None:
        if self.samples and now > self._last:
            decay = math.pow(0.5, (now - self._last) / self.half_life)
            self._sw, self._sx, self._sy = self._sw * decay, self._sx * decay, self._sy * decay
            self._sxx, self._sxy = self._sxx * decay, self._sxy * decay
        self._last = max(self._last, now)

    def snapshot(self, now: float) -> ShapeSnapshot:
        """What it knows, its sums faded to ``now``."""
        decay = self.freshness(now) if self.samples else 0.0
        return ShapeSnapshot(self.samples, self._sw * decay, self._sx * decay, self._sy * decay, self._sxx * decay,
                             self._sxy * decay)

    def absorb(self, snapshot: ShapeSnapshot, weight: float, now: float) -> None:
        """Blend in another replica's shape: ``weight`` (0 to 1) of its samples, the rest of its own (all of the
        other's while it has none). The fit is then that of both replicas' samples, weighted; ``samples`` the larger
        count, so a replica that started late is ``known`` as soon as the fleet is."""
        if snapshot.samples <= 0 or snapshot.sw <= 0 or weight <= 0:
            return
        w = 1.0 if not self.samples else min(1.0, weight)
        self._decay_to(now)
        keep = 1.0 - w
        self._sw = keep * self._sw + w * snapshot.sw
        self._sx = keep * self._sx + w * snapshot.sx
        self._sy = keep * self._sy + w * snapshot.sy
        self._sxx = keep * self._sxx + w * snapshot.sxx
        self._sxy = keep * self._sxy + w * snapshot.sxy
        self.samples = max(self.samples, snapshot.samples)
