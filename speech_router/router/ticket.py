"""What a request holds while it asks a pool for a slot (``Ticket``), and once it has one (``Lease``).

Both are plain records shared by the scheduler, the choice it makes, the pool and the attempt loop;
neither knows how a decision is made.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

from .endpoint import Endpoint

PRIORITIES = ("interactive", "batch")


class Placement(str, enum.Enum):
    """Why a request got the slot it got; values double as metric labels."""

    FREE = "free"  # the endpoint expected to finish it first had a free slot
    EXPLORE = "explore"  # an idle endpoint with an old estimate, sent a short text to measure it again
    OVERFLOW = "overflow"  # above an endpoint's slow-start share, as it would otherwise have waited
    STRETCH = "stretch"  # one above its learned limit, to find out whether it can do more
    QUEUED = "queued"  # it waited in the pool's queue first


@dataclass(eq=False)
class Ticket:
    """One request asking a pool for a slot."""

    chars: int
    priority: str = "interactive"
    #: endpoints this request already tried
    exclude: frozenset[str] = frozenset()
    #: may use unhealthy endpoints when none is in rotation (a route's last pool)
    allow_panic: bool = True
    #: the longest it may wait, in seconds (queue timeout or what is left of its deadline)
    limit: float = math.inf
    arrived: float = 0.0
    #: the voice (a key of its reference): endpoints that served it lately may have it cached
    affinity: str | None = None
    lease: Lease | None = None
    #: called once the ticket gets a slot (None: its pool was retired and it must go elsewhere)
    on_placed: Callable[[Lease | None], None] | None = None

    @property
    def rank(self) -> int:
        return PRIORITIES.index(self.priority) if self.priority in PRIORITIES else 0


@dataclass(eq=False)
class Lease:
    """A slot held on an endpoint; give it back with ``Pool.finish``."""

    endpoint: Endpoint
    token: int
    predicted: float | None
    queued: float = 0.0
    #: taken while no endpoint of the pool was in rotation (health ignored)
    panic: bool = False
    #: the half-open breaker's probe
    probe: bool = False
    priority: str = "interactive"
    placement: Placement = Placement.FREE
    #: the endpoint was under suspicion when this try went to it (a timeout since its last answer, or the
    #: breaker's probe): the attempt loop hedges it, so that no client waits long on a node that may hang
    suspect: bool = False
