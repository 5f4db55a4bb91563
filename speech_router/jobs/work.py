"""``JobWork``: one job being worked by this router: its segments to do, those in flight, and its end.

Each segment goes through the routing core as a batch request (``fanout.segment_synthesizer``: retries,
fallback and a broken body tried again all apply), its PCM is kept and only then marked done. What a failure
means for the job:

- the client's mistake (``RequestInvalid``, a node's ``BackendRejected``): the item fails at once, with that
  message; the other items go on;
- the fleet could not take it now (a full or timed-out queue, no healthy endpoint): tried again later, not
  counted;
- an endpoint failed it after the attempt loop's retries (or it ran past its deadline): tried again later, up
  to ``jobs.segment_tries`` times, then the item fails.

When nothing is left to do, the audio is joined (``assemble``) and the job ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import deque
from collections.abc import Callable

from ..cache.speech import SpeechCache
from ..errors import BackendError, BackendRejected, DeadlineExceeded, RequestInvalid, Unavailable
from ..fanout import segment_synthesizer
from ..router.dispatch import Router
from ..types import SynthesisRequest
from .model import ItemSpec, JobRecord, Segment

log = logging.getLogger("speech_router.jobs")

#: seconds before a segment the fleet could not take, or an endpoint failed, is tried again (doubling, capped)
RETRY_BASE_S = 0.5
RETRY_CAP_S = 30.0


@dataclasses.dataclass
class ItemFailure:
    item: int
    error: dict[str, str]


class JobWork:
    """The segments of one running job; ``start_next`` hands out the next one, ``run`` does it."""

    def __init__(self, record: JobRecord, items: list[ItemSpec], pending: list[Segment],
                 clock: Callable[[], float]) -> None:
        self.record = record
        self.items = items
        self.clock = clock
        self.pending: deque[Segment] = deque(pending)
        self.delayed: list[tuple[float, Segment]] = []
        self.in_flight: dict[Segment, asyncio.Task[None]] = {}
        #: those of them still being synthesized (they may hold an endpoint slot; the others are being kept)
        self.holding: set[Segment] = set()
        self.tries: dict[Segment, int] = {}
        self.failed: dict[int, dict[str, str]] = {}
        self.last_progress = clock()
        self.finishing: asyncio.Task[None] | None = None
        #: why the whole job must end now (its disk is full), whatever is left
        self.fatal: dict[str, str] | None = None

    def __repr__(self) -> str:
        return (f"JobWork(id={self.record.id!r}, pending={len(self.pending)}, delayed={len(self.delayed)}, "
                f"in_flight={len(self.in_flight)}, failed={sorted(self.failed)})")

    @property
    def job_id(self) -> str:
        return self.record.id

    @property
    def idle(self) -> bool:
        """Nothing left to start or wait for: time to join the audio."""
        return not self.pending and not self.delayed and not self.in_flight

    def next_segment(self) -> Segment | None:
        """The first segment (in text order) ready to start, or None."""
        if self.fatal is not None:
            return None
        now = self.clock()
        ready = [entry for entry in self.delayed if entry[0] <= now]
        for entry in sorted(ready, key=lambda e: (e[1].item, e[1].index), reverse=True):
            self.delayed.remove(entry)
            self.pending.appendleft(entry[1])
        while self.pending:
            segment = self.pending.popleft()
            if segment.item not in self.failed:
                return segment
        return None

    def request(self, segment: Segment) -> SynthesisRequest:
        item = self.items[segment.item]
        rid = f"{self.record.id}-{segment.item}-{segment.index}"
        return SynthesisRequest(text=segment.text, model=self.record.model, voice=item.voice,
                                voice_params=dict(item.voice_params), emotion=item.emotion_value(), speed=item.speed,
                                response_format="wav", lang=item.lang, request_id=rid)

    async def synthesize(self, router: Router, segment: Segment, cache: SpeechCache | None) -> tuple[bytes, int]:
        """One segment through the routing core at batch priority, as mono PCM and its rate."""
        sreq = self.request(segment)
        deadline = router.clock() + router.settings.models[sreq.model].deadline
        step = segment_synthesizer(router, sreq, priority="batch", deadline=deadline, cache=cache)
        audio = await step(segment.index, segment.text)
        return audio.pcm, audio.sample_rate

    def outcome(self, segment: Segment, exc: Exception, max_tries: int) -> ItemFailure | None:
        """What a failed segment means: its item's failure, or None (it waits and goes again)."""
        if isinstance(exc, (RequestInvalid, BackendRejected)):
            param = getattr(exc, "param", None)
            return ItemFailure(segment.item, _error(exc, "invalid_request" if param is None else f"invalid_{param}"))
        counted = isinstance(exc, (BackendError, DeadlineExceeded)) or not isinstance(exc, Unavailable)
        tries = self.tries[segment] = self.tries.get(segment, 0) + (1 if counted else 0)
        if tries >= max_tries:
            return ItemFailure(segment.item, _error(exc, "segment_failed", f"segment {segment.index + 1} failed "
                                                                           f"{tries} times: "))
        delay = min(RETRY_CAP_S, RETRY_BASE_S * 2 ** max(0, tries - 1))
        self.delayed.append((self.clock() + delay, segment))
        return None

    def fail(self, failure: ItemFailure) -> None:
        self.failed.setdefault(failure.item, failure.error)
        self.delayed = [entry for entry in self.delayed if entry[1].item != failure.item]
        for segment, task in list(self.in_flight.items()):
            if segment.item == failure.item:
                task.cancel()  # its slot goes back now: the item is lost anyway

    def abort(self, error: dict[str, str]) -> None:
        """End the job with ``error``: nothing more starts, what runs is cancelled."""
        self.fatal = self.fatal or error
        self.pending.clear()
        self.delayed.clear()
        for task in self.in_flight.values():
            task.cancel()

    async def stop_segments(self) -> None:
        """Cancel every segment in flight (each gives its endpoint slot back) and wait for them."""
        tasks = list(self.in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.in_flight.clear()
        self.holding.clear()

    async def stop(self) -> None:
        """Stop everything: the segments and the joining of the audio."""
        if self.finishing is not None and self.finishing is not asyncio.current_task():
            self.finishing.cancel()
            await asyncio.gather(self.finishing, return_exceptions=True)
        await self.stop_segments()


def _error(exc: Exception, code: str, prefix: str = "") -> dict[str, str]:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if not isinstance(exc, (BackendError, Unavailable, RequestInvalid)):
        log.error("job segment failed unexpectedly", exc_info=exc)
        message = "internal error"
    return {"message": prefix + message, "code": code}
