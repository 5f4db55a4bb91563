"""The HTTP edge: uvicorn with connection limits enforced in its protocol, before any handler runs.

uvicorn's default HTTP implementation (httptools) accepts request heads of any size and any number of
headers (httptools concatenates a header value in memory until it ends), and it has no header, body or
first-request timeout: only ``timeout_keep_alive`` between two requests of one connection. Its
``limit_concurrency`` answers 503 only once a request's head is complete, so connections that never
finish their head are all kept. ``bench/edge_limits.py`` measures this (bench/README.md).

``LimitedHttpToolsProtocol`` keeps uvicorn's parser and request cycle and adds, per connection:

- ``max_header_bytes``: the request line and headers together; beyond it 431 and the connection closes.
  Counted as bytes arrive, so a header that never ends costs at most the limit plus one socket read;
- ``max_headers``: header fields per request; beyond it 431 (extra fields are not even stored);
- ``header_timeout``: from a connection's start (or a kept-alive request's first byte) to the end of the
  head; beyond it 408 (or a silent close when not a byte of a request came);
- ``body_timeout``: from the end of the head to the end of the body; beyond it 408 when no response started;
- ``keepalive_timeout``: idle time between two requests of one connection (uvicorn's own timer);
- ``max_connections`` and ``max_connections_per_client``: open connections, in all and from one client address;
  at either limit the connection idle the longest is closed to make room (``edge_connections``), and only when
  none is idle is the new one answered 503 and closed;
- ``max_drain_bytes`` (64 KiB): a body the app answered before reading it (413, 401) is read and dropped up to
  this many bytes, so a client that sends a request of common size before reading the answer still gets it;
  beyond it the connection is closed (it once read 40 GB in 30 s at a core's worth of CPU).

The body size itself (``max_body_bytes``) is refused by the app before a handler reads it (413), and
uvicorn buffers at most 64 KiB of body per connection before it stops reading.

A WebSocket upgrade (realtime speech) hands the connection to uvicorn's WebSocket protocol once its head is
complete, so the head limits above apply to the handshake; the session's own limits are the app's
(``server.realtime``), with ``WEBSOCKET_OPTIONS`` at the protocol. Open sessions count in ``max_connections``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config.realtime import WS_MAX_MESSAGE_BYTES
from .edge_answers import REASONS, REFUSALS, error_bytes
from .edge_connections import ConnectionBook, client_key, raise_open_files_limit

__all__ = ["EDGE_STATUS", "EdgeLimits", "LimitedHttpToolsProtocol", "protocol_class", "raise_open_files_limit",
           "uvicorn_options"]

#: WebSocket upgrades (realtime speech, #19): uvicorn's own protocol for them, a message over the hard cap closes
#: the connection (1009) before the app sees it (the app's smaller limit answers with an error event first), and
#: no per-message compression (audio does not compress; a compressed message could inflate past any buffer)
WEBSOCKET_OPTIONS: dict[str, Any] = {"ws": "auto", "ws_max_size": WS_MAX_MESSAGE_BYTES,
                                     "ws_per_message_deflate": False}

#: the scope key where the edge notes the status it answered itself while the app had the request (a 408 for a
#: body that stopped arriving): the app's observer logs and counts that status, not a 500 for a vanished client
EDGE_STATUS = "speech_router.edge_status"


@dataclass(frozen=True)
class EdgeLimits:
    """What one connection may cost; ``ServerConfig`` holds the configured values."""

    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_connections: int = 1000
    max_connections_per_client: int = 750
    #: fixed: a JSON request of common size fits, so its client still reads a 401; more is an attack
    max_drain_bytes: int = 64 * 1024

    @classmethod
    def from_settings(cls, server: Any) -> EdgeLimits:
        per_client = server.max_connections_per_client or max(1, server.max_connections * 3 // 4)
        return cls(max_header_bytes=server.max_header_bytes, max_headers=server.max_headers,
                   header_timeout=server.header_timeout, body_timeout=server.body_timeout,
                   keepalive_timeout=server.keepalive_timeout, max_connections=server.max_connections,
                   max_connections_per_client=per_client)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that broke a limit (already answered)."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``EdgeLimits`` (set by ``protocol_class``)."""

    limits: EdgeLimits = EdgeLimits()
    book: ConnectionBook = ConnectionBook()  # one per server (``protocol_class``)

    # -- connection ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._refused = False
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = False  # a request's head has started and is not complete
        self._in_body = False  # its head is complete and its body is not
        self._head_seen = 0  # bytes received while in the head
        self._fields = 0
        self._field_bytes = 0
        self._drained = 0  # bytes of a body received after its request was answered
        client = client_key(transport.get_extra_info("peername"))
        limits, book = self.limits, self.book
        if book.count(client) >= limits.max_connections_per_client and not book.make_room(client):
            self._refuse_connection(transport, "client_connections", f"{client} has "
                                    f"{limits.max_connections_per_client} open (server.max_connections_per_client)")
            return
        if len(book) >= limits.max_connections and not book.make_room():
            self._refuse_connection(transport, "connections", f"{limits.max_connections} open "
                                                              "(server.max_connections)")
            return
        super().connection_made(transport)
        book.opened(self, client)
        # the first request's head must arrive within header_timeout, counted from the connection's start
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def _refuse_connection(self, transport: asyncio.Transport, reason: str, why: str) -> None:
        """503 and close at once: no connection is idle to make room (it never reaches uvicorn)."""
        self._refused = True
        self.transport = transport
        REFUSALS.note(reason, f"refused a connection: {why}, none of them idle")
        transport.write(error_bytes(503, "Too many open connections; try again shortly.", "too_many_connections"))
        transport.close()

    def evict(self) -> None:
        """Close this idle connection to make room for a new one (``ConnectionBook.make_room``)."""
        self._closing = True
        self._disarm()
        REFUSALS.note("evicted", f"closed an idle connection from {self._peer()} to make room for a new one")
        if not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused:
            return
        self.book.closed(self)
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self.book.closed(self)  # the connection is the WebSocket protocol's from now on
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        if self._refused or self._closing:
            return
        self._unset_keepalive_if_required()
        if not self._in_head and not self._in_body:  # the first byte of a request (or of a kept-alive one)
            self._in_head, self._head_seen, self._fields, self._field_bytes = True, 0, 0, 0
            self.book.busy(self)
            if self._timer is None:
                self._arm(self.limits.header_timeout, self._head_timed_out)
        started_in_head = self._in_head
        draining = self._in_body and self.cycle is not None and self.cycle.response_complete
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._closing:  # a callback refused the request (see _refuse) and answered it
                return
            msg = "Invalid HTTP request received."
            REFUSALS.note("invalid", f"refused a request that is not HTTP/1.1 from {self._peer()}: 400")
            self._disarm()
            self.send_400_response(msg)
            return
        if started_in_head and self._in_head:  # still no end of head: everything so far was head
            self._head_seen += len(data)
            if self._head_seen > self.limits.max_header_bytes:
                self._refuse(431, f"Request headers are over the {self.limits.max_header_bytes} byte limit.",
                             "header_too_large", reason="header_bytes")
        elif draining and self._in_body:  # an answered request's body goes on: read it only so far
            self._drained += len(data)
            if self._drained > self.limits.max_drain_bytes and not self.transport.is_closing():
                self._closing = True
                self._disarm()
                REFUSALS.note("drain", f"closed a connection from {self._peer()}: its answered request's body "
                                       f"went on past {self.limits.max_drain_bytes} bytes")
                self.transport.close()

    # -- parser callbacks ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head, self._in_body = True, False
        self._fields = self._field_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._field_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._field_bytes += len(name) + len(value) + 4
        if self._fields <= self.limits.max_headers:  # beyond it nothing more is kept
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._in_body = False, True
        self._disarm()
        if self._fields > self.limits.max_headers:
            self._refuse(431, f"Too many request headers: over the limit of {self.limits.max_headers}.",
                         "too_many_headers", reason="header_count")
            raise _Refused  # stops the parser: the app never sees this request
        if self._field_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"Request headers are over the {self.limits.max_header_bytes} byte limit.",
                         "header_too_large", reason="header_bytes")
            raise _Refused
        self._arm(self.limits.body_timeout, self._body_timed_out)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        super().on_message_complete()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and self.timeout_keep_alive_task is None \
                and not self.transport.is_closing():  # answered before its body ended: now idle
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                                self.timeout_keep_alive_handler)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer when the connection stays
        if self.transport.is_closing():
            return
        if not self.pipeline:  # nothing in progress: idle, also while an answered body is drained
            self._drained = 0
            self.book.idle(self)
        if self._in_body and self._timer is None:
            self._arm(self.limits.body_timeout, self._body_timed_out)  # an unread body still has its limit

    # -- limits ----------------------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _peer(self) -> str:
        return "%s:%d" % self.client if self.client else "?"

    def _path(self) -> str | None:
        url = getattr(self, "url", b"") or b""
        return url.split(b"?", 1)[0].decode("latin-1") or None

    def _refuse(self, status: int, message: str, code: str, *, reason: str, own_cycle: bool = False) -> None:
        """Answer ``status`` (unless a response already started) and close; the app's cycle ends.

        ``own_cycle``: the request being refused is the one the app has (its body is late), not a next one
        whose head is still arriving; once its response started (or was complete) nothing more is written.
        """
        self._closing = True
        self._disarm()
        cycle = self.cycle
        live = cycle is not None and not cycle.response_complete
        answer = not (cycle is not None and cycle.response_started and (live or own_cycle))
        if live:
            if answer and own_cycle:
                # uvicorn types the scope with the ASGI spec's keys only; ASGI lets a server add its own
                cast(dict[str, object], cycle.scope)[EDGE_STATUS] = status
            cycle.disconnected = True  # the app's receive() now says http.disconnect; its sends are dropped
            cycle.message_event.set()
        REFUSALS.note(reason, f"refused a request from {self._peer()}: {status} {REASONS[status]}: {message}")
        if not self.transport.is_closing():
            if answer:
                self.transport.write(error_bytes(status, message, code, self._path()))
            self.transport.close()

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._in_head:
            self._refuse(408, f"The request head did not arrive within {self.limits.header_timeout:g} s.",
                         "request_timeout", reason="header_timeout")
        elif not self.transport.is_closing():  # not a byte of a request: just close, as on keep-alive
            self._closing = True
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._timer = None
        self._refuse(408, f"The request body did not arrive within {self.limits.body_timeout:g} s.",
                     "request_timeout", reason="body_timeout", own_cycle=True)


def protocol_class(limits: EdgeLimits) -> type[LimitedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, bound to ``limits`` and a book of its own."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits, "book": ConnectionBook()})


def uvicorn_options(limits: EdgeLimits) -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments that enforce ``limits`` at the protocol."""
    return {"timeout_keep_alive": limits.keepalive_timeout, "backlog": min(2048, max(128, limits.max_connections)),
            "http": protocol_class(limits), **WEBSOCKET_OPTIONS}
