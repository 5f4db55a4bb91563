"""The sentences of one session in the order they will be heard, synthesized ahead of the listener within bounds.

A sentence starts as soon as it is cut (before ``input.done``), on whichever endpoint the routing core picks,
so consecutive sentences run side by side on several nodes. Two bounds keep one session from holding more than
its share: at most ``max_parallel`` sentences synthesizing at once (the model's ``fanout.max_parallel``, as for
a long text), and at most ``max_ahead`` started and not yet delivered, so a client that reads slowly holds no
endpoint slot: finished audio waits in the router, later sentences wait as text. The sender takes items with
``next`` and gives each back with ``delivered``; ``aclose`` cancels whatever still runs (each task gives its
endpoint slot back and its node request is cancelled).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..fanout import SegmentAudio
from .request import SessionSpeech


@dataclass(eq=False)
class Sentence:
    """One sentence to synthesize and deliver; ``complete_at``: when its last character arrived."""

    utterance: int
    index: int
    text: str
    complete_at: float
    speech: SessionSpeech
    task: asyncio.Task[SegmentAudio] | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def __repr__(self) -> str:
        return f"Sentence(utterance={self.utterance}, index={self.index}, chars={len(self.text)})"


@dataclass(frozen=True)
class UtteranceEnd:
    """``input.done`` was received: after the utterance's last sentence, ``session.done`` goes out."""

    utterance: int
    sentences: int


Item = Sentence | UtteranceEnd
#: the synthesis of one sentence (the session binds it to the router)
Synthesize = Callable[[Sentence], Awaitable[SegmentAudio]]


class Pipeline:
    """See the module's docstring."""

    def __init__(self, synthesize: Synthesize, *, max_ahead: int) -> None:
        self._synthesize = synthesize
        self.max_ahead = max_ahead
        self._items: asyncio.Queue[Item] = asyncio.Queue()  # in delivery order
        self._waiting: deque[Sentence] = deque()  # cut, not started
        self._started: list[Sentence] = []  # started, not delivered
        self._undelivered = 0  # items added and not yet given back
        self._empty = asyncio.Event()
        self._empty.set()
        self.buffered_chars = 0  # text of the sentences not delivered yet, and 1 for each item

    def __repr__(self) -> str:
        return (f"Pipeline(waiting={len(self._waiting)}, started={len(self._started)}, "
                f"running={self.running}, buffered_chars={self.buffered_chars})")

    @property
    def idle(self) -> bool:
        """Nothing is waiting to be delivered."""
        return self._undelivered == 0

    @property
    def running(self) -> int:
        return sum(1 for s in self._started if s.task is not None and not s.task.done())

    def add(self, item: Item) -> None:
        """Queue the next item to deliver; a sentence starts now if the bounds allow."""
        self._undelivered += 1
        self._empty.clear()
        self.buffered_chars += _weight(item)
        if isinstance(item, Sentence):
            self._waiting.append(item)
        self._items.put_nowait(item)
        self._pump()

    async def next(self) -> Item:
        """The next item in order (a sentence may still be waiting to start or synthesizing)."""
        return await self._items.get()

    def delivered(self, item: Item) -> None:
        """The sender is done with ``item``; later sentences may start."""
        self._undelivered -= 1
        self.buffered_chars -= _weight(item)
        if isinstance(item, Sentence):
            if item in self._started:
                self._started.remove(item)
        if not self._undelivered:
            self._empty.set()
        self._pump()

    async def drained(self) -> None:
        """Return once every item added so far was delivered."""
        await self._empty.wait()

    def _pump(self, _: object = None) -> None:
        while self._waiting and len(self._started) < self.max_ahead \
                and self.running < self._waiting[0].speech.max_parallel:
            sentence = self._waiting.popleft()
            sentence.task = asyncio.ensure_future(self._synthesize(sentence))
            sentence.task.add_done_callback(self._pump)
            self._started.append(sentence)
            sentence.started.set()

    async def aclose(self) -> None:
        """Cancel every sentence still synthesizing and wait for them (their endpoint slots come back)."""
        self._waiting.clear()
        tasks = [s.task for s in self._started if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _weight(item: Item) -> int:
    """What an item counts against ``max_buffered_chars``: its text, and 1 for the item itself (so a client
    sending ``input.done`` or one-letter sentences without reading is bounded too)."""
    return 1 + (len(item.text) if isinstance(item, Sentence) else 0)
