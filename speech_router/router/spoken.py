"""Which pools of a route may answer a request, in which voice, and what a pool that nobody could reach means.

- A pool whose backend cannot speak the asked voice (``Backend.supports_voice``: the embedded espeak engine
  and a cloned voice) is no fallback for it: it is skipped, unless the model names a ``fallback_voice`` that
  pool can speak, which it then speaks instead. So when the GPU pools are down a cloned voice gets 503 with
  ``Retry-After``, never espeak's default voice as a 200 (issue #22).
- A pool none of whose endpoints could be reached (every try refused or reset before any answer) is down, not
  faulty: ``NoHealthyEndpoint`` (503 with ``Retry-After``, or the route's next pool), as README's errors
  section says, rather than one endpoint's 502.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..errors import BackendError, BackendUnavailable, NoHealthyEndpoint
from ..types import SynthesisRequest
from .pool import Pool


def as_spoken_by(pool: Pool, request: SynthesisRequest) -> SynthesisRequest | None:
    """``request`` as ``pool`` can speak it: as asked, in the model's ``fallback_voice``, or None (skip it)."""
    if request.passthrough is not None or not pool.endpoints:
        return request
    backend = pool.endpoints[0].backend
    if backend.supports_voice(request.voice_params):
        return request
    if request.fallback_voice is not None and backend.supports_voice(request.fallback_voice[1]):
        name, params = request.fallback_voice
        return dataclasses.replace(request, voice=name, voice_params=params)
    return None


def unreachable(pool: Pool, failures: Sequence[BackendError]) -> NoHealthyEndpoint | None:
    """The pool's answer when no endpoint tried could be reached at all; None when one answered (its 502 stands)."""
    if not failures or not all(isinstance(f, BackendUnavailable) for f in failures):
        return None
    return NoHealthyEndpoint(f"pool {pool.name!r} has no endpoint that can be reached ({len(failures)} tried)",
                             retry_after=pool.scheduler.retry_after())
