"""A client that leaves before its answer is ready cancels the work done for it.

An ASGI server does not cancel a handler when its client goes away, so a synthesis would run to the
end on the GPU node and hold its slot for nobody. While a request waits for its first audio byte,
its ``http.disconnect`` is watched; when it comes, the dispatch is cancelled: a waiting request leaves
the queue, a try in flight closes its connection to the node (and never counts against the endpoint).
Once the response has started, Starlette's streaming response watches for the disconnect itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from ..errors import ClientDisconnected

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """``await work``, cancelled with ``ClientDisconnected`` if the client closes the connection first.

    Call it only after the request body has been read: it takes the connection's next messages.
    """
    job = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
        if job in done:
            return job.result()
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        raise ClientDisconnected("the client closed the connection before the answer was ready")
    finally:
        watch.cancel()
        if not job.done():  # this handler itself was cancelled
            job.cancel()
        await asyncio.gather(job, watch, return_exceptions=True)
