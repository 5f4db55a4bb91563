"""Shared aiohttp plumbing for HTTP backends: one bounded session per pool, and error mapping.

This is the only place (with the backends) that imports aiohttp: every client error becomes a
``speech_router.errors.BackendError`` here, as httpx maps httpcore's errors at its boundary.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp

from .. import tracing
from ..errors import BackendError, BackendFailed, BackendOverloaded, BackendRejected, BackendTimeout, BackendUnavailable

if TYPE_CHECKING:
    from ..config.models import EndpointConfig, PoolConfig

#: a backend type's reading of an error answer (status, body) as the client's mistake, or None
ClientMistake = Callable[[int, str], "BackendRejected | None"]

#: the most of an error answer read (its message and traceback, for the log)
CHUNK_SIZE = 64 * 1024
KEEPALIVE_S = 30.0
#: how much of a node's answer a connection buffers before it stops reading from the socket (aiohttp's default,
#: 64 KiB, paused and resumed reading several times for each 240 KB WAV)
READ_BUFFER_BYTES = 512 * 1024
#: every request to a node passes ``allow_redirects=FOLLOW_REDIRECTS``: a redirect is never followed (aiohttp would
#: send the pool's ``headers:`` and API key to whatever host the node names); a 3xx is that node's failure
FOLLOW_REDIRECTS = False


class HttpSessions:
    """One ``aiohttp.ClientSession`` per pool: keep-alive and a bounded connection pool, closed on shutdown."""

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, int], aiohttp.ClientSession] = {}

    def get(self, pool_name: str, pool: PoolConfig) -> aiohttp.ClientSession:
        key = (pool_name, pool.max_connections)  # a reload that changes the limit gets a new session
        session = self._sessions.get(key)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=pool.max_connections, keepalive_timeout=KEEPALIVE_S)
            session = aiohttp.ClientSession(connector=connector, auto_decompress=False, read_bufsize=READ_BUFFER_BYTES)
            self._sessions[key] = session
        return session

    async def close_pool(self, pool_name: str, *, keep_limit: int | None = None) -> int:
        """Close the sessions of ``pool_name`` (all, or all but the one for ``keep_limit`` connections, when a
        reload changed ``max_connections``); returns how many were closed. Call it once no request of the
        pool is in flight on them any more (a removed pool, drained). A later ``get`` opens a new one."""
        stale = [k for k in self._sessions if k[0] == pool_name and k[1] != keep_limit]
        for key in stale:
            await self._sessions.pop(key).close()
        return len(stale)

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


def request_headers(endpoint: EndpointConfig, pool: PoolConfig, request_id: str = "") -> dict[str, str]:
    """Pool headers, then endpoint headers, then the API key read from the environment (never logged); a synthesis
    (``request_id``) also gets ``traceparent`` when its request is traced."""
    headers = {**pool.headers, **endpoint.headers}
    key_env = endpoint.api_key_env or pool.api_key_env
    if key_env and os.environ.get(key_env):
        headers["Authorization"] = f"Bearer {os.environ[key_env]}"
    if request_id:  # a synthesis (health checks and voice uploads pass none): traced when its request is
        headers["x-request-id"] = request_id
        tracing.node_request(headers, endpoint.name or "", endpoint.url)
    return headers


def client_timeout(pool: PoolConfig) -> aiohttp.ClientTimeout:
    # sock_connect, not connect: waiting for a free pooled connection is not the endpoint's fault
    return aiohttp.ClientTimeout(total=None, sock_connect=pool.timeouts.connect, sock_read=pool.timeouts.read)


@contextlib.contextmanager
def mapped_errors(endpoint: str) -> Iterator[None]:
    """Translate aiohttp and socket errors into ``BackendError`` subclasses naming the endpoint.

    ``detail`` says what happened (``what_failed``), never the error's ``repr``: aiohttp's errors carry the
    request (its URL with any credentials, its headers with the pool's ``headers:`` and API key).
    """
    try:
        yield
    except BackendError:
        raise
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise BackendTimeout(f"endpoint {endpoint} timed out", endpoint=endpoint, detail=what_failed(exc)) from None
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, ConnectionError) as exc:
        raise BackendUnavailable(f"endpoint {endpoint} is unreachable", endpoint=endpoint,
                                 detail=what_failed(exc)) from None
    except aiohttp.ClientPayloadError as exc:
        raise BackendFailed(f"endpoint {endpoint} sent a truncated body", endpoint=endpoint,
                            detail=what_failed(exc)) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise BackendUnavailable(f"endpoint {endpoint} connection failed", endpoint=endpoint,
                                 detail=what_failed(exc)) from None


def what_failed(exc: BaseException) -> str:
    """A client error described by its type and safe facts (status, OS error), for logs."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ClientResponseError):  # TooManyRedirects and others: request info inside
        redirects = f", {len(exc.history)} redirects" if exc.history else ""
        return f"{name} (HTTP {exc.status}{redirects})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        return f"{name}: {os_error.strerror or type(os_error).__name__}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{name}: {exc.strerror}"
    return name


async def raise_for_status(resp: aiohttp.ClientResponse, endpoint: str, client_mistake: ClientMistake | None = None
                           ) -> None:
    """Classify a non-2xx answer. The body (a traceback for index-tts-vllm) goes to ``detail`` for logs.

    ``client_mistake`` lets a backend type recognise a client's mistake in an answer that does not say so
    by its status (index-tts-vllm answers every error as 500): it is then never counted against the node.
    """
    tracing.node_status(endpoint, resp.status)
    if resp.status < 300:
        return
    if resp.status < 400:  # a redirect, not followed: said by its status (its Location may carry anything)
        resp.release()
        raise BackendFailed(f"endpoint {endpoint} answered a redirect (HTTP {resp.status}), which is not followed",
                            endpoint=endpoint, detail=f"HTTP {resp.status} redirect not followed", status=resp.status)
    with mapped_errors(endpoint):
        body = await resp.content.read(CHUNK_SIZE)
    resp.release()
    text = body.decode("utf-8", "replace")
    if client_mistake is not None and (rejected := client_mistake(resp.status, text)) is not None:
        raise rejected
    message = _error_message(text)
    kwargs: dict[str, Any] = {"endpoint": endpoint, "detail": text, "status": resp.status}
    if resp.status in (429, 503):
        raise BackendOverloaded(f"endpoint {endpoint} is overloaded (HTTP {resp.status})", **kwargs)
    if 400 <= resp.status < 500 and resp.status not in (401, 403, 407, 408):
        raise BackendRejected(message or f"endpoint {endpoint} rejected the request (HTTP {resp.status})", **kwargs)
    raise BackendFailed(f"endpoint {endpoint} failed (HTTP {resp.status})", **kwargs)


def _error_message(text: str) -> str:
    """A short, client-safe message from an upstream 4xx body (never a traceback)."""
    try:
        data = json.loads(text)
    except ValueError:
        return ""
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            err = err.get("message")
        if isinstance(err, str) and "Traceback" not in err:
            return err[:300]
        detail = data.get("detail")
        if isinstance(detail, str):
            return detail[:300]
    return ""


async def iter_body(resp: aiohttp.ClientResponse, endpoint: str, first: bytes = b"") -> AsyncIterator[bytes]:
    """Yield the body as it arrives; a short or broken body raises ``BackendFailed``/``BackendUnavailable``.

    Each piece is yielded as the connection received it (``iter_chunks``): cutting pieces to a fixed size would
    copy the body once more, and pass more, smaller pieces through every layer up to the client."""
    try:
        if first:
            yield first
        with mapped_errors(endpoint):
            async for chunk, _ in resp.content.iter_chunks():
                if chunk:
                    yield chunk
    finally:
        resp.release()


async def read_prefix(resp: aiohttp.ClientResponse, endpoint: str, size: int) -> bytes:
    """Read at least ``size`` bytes (or the whole body if shorter), to check what the body is: the pieces already
    received, as they are (no copy when the first holds ``size``)."""
    data = b""
    with mapped_errors(endpoint):
        while len(data) < size:
            chunk, _ = await resp.content.readchunk()
            if not chunk:
                if resp.content.at_eof():
                    break
                continue  # an HTTP chunk's end: more may follow
            data = chunk if not data else data + chunk
    return data


def releaser(resp: aiohttp.ClientResponse) -> Callable[[], Awaitable[None]]:
    """A ``close`` callable for ``AudioResponse`` that gives the connection back."""

    async def close() -> None:
        resp.release()

    return close
