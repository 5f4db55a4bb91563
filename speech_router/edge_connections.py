"""Who holds the edge's open connections, and which of them are idle: what the edge closes to make room.

A connection that sends nothing, or kept alive between requests, costs a slot of ``server.max_connections``
and serves nobody. With all slots taken that way, every other client was refused (one address with 1,000
kept-alive connections shut everyone out for 75 s). So when the edge is full, or a client address is at
``server.max_connections_per_client``, a new connection is taken by closing the connection that has been idle
the longest (of that address, for the per-address limit): a client sending requests is served, and only when
no connection is idle is the new one refused (503).

Idle means: no request in progress. A connection is idle from its start until its first byte, between two
requests of a kept-alive connection, and while the edge drains a body it already answered (a 413 or 401).

Addresses are counted as the client's IP; an IPv6 client by its /64 (one host usually holds a whole /64).
"""

from __future__ import annotations

import ipaddress
import logging
import resource
from typing import Any

log = logging.getLogger("speech_router.edge")


def client_key(peer: Any) -> str:
    """What the per-address limit counts a connection by: its IPv4 address, or the /64 of its IPv6 address."""
    host = peer[0] if isinstance(peer, (tuple, list)) and peer else str(peer or "")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host  # a Unix socket and the like: one key
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


class ConnectionBook:
    """Open connections by client address, and the idle ones in the order they became idle.

    A connection is anything with an ``evict()`` method (the edge's protocol); the book only orders them.
    """

    def __init__(self) -> None:
        self._clients: dict[Any, str] = {}  # connection -> its client key
        self._counts: dict[str, int] = {}
        self._idle: dict[Any, None] = {}  # oldest first
        self._idle_of: dict[str, dict[Any, None]] = {}

    def __repr__(self) -> str:
        return f"ConnectionBook(open={len(self._clients)}, idle={len(self._idle)}, clients={len(self._counts)})"

    def __len__(self) -> int:
        return len(self._clients)

    def count(self, client: str) -> int:
        return self._counts.get(client, 0)

    def opened(self, conn: Any, client: str) -> None:
        """``conn`` is open, idle until its first byte."""
        self._clients[conn] = client
        self._counts[client] = self._counts.get(client, 0) + 1
        self.idle(conn)

    def closed(self, conn: Any) -> None:
        """``conn`` is gone (or being closed); calling it again does nothing."""
        if conn not in self._clients:
            return
        self.busy(conn)
        client = self._clients.pop(conn)
        left = self._counts[client] - 1
        if left:
            self._counts[client] = left
        else:
            del self._counts[client]

    def idle(self, conn: Any) -> None:
        client = self._clients.get(conn)
        if client is None or conn in self._idle:
            return
        self._idle[conn] = None
        self._idle_of.setdefault(client, {})[conn] = None

    def busy(self, conn: Any) -> None:
        if self._idle.pop(conn, 0) is None:  # it was idle
            client = self._clients[conn]
            of_client = self._idle_of[client]
            del of_client[conn]
            if not of_client:
                del self._idle_of[client]

    def make_room(self, client: str | None = None) -> bool:
        """Close the connection idle the longest (of ``client``, when given); False when none is idle."""
        idle = self._idle if client is None else self._idle_of.get(client, {})
        victim = next(iter(idle), None)
        if victim is None:
            return False
        self.closed(victim)
        victim.evict()
        return True


def raise_open_files_limit(connections: int) -> None:
    """Let the process hold ``connections`` client sockets plus its own (node connections, files)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = connections + 512
        if soft != resource.RLIM_INFINITY and soft < wanted:
            new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
            if new > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            if new < wanted:
                log.warning("open files limit %d is below server.max_connections + 512 (%d): connections past it "
                            "fail to be accepted", new, wanted)
    except (ValueError, OSError) as exc:  # pragma: no cover - platform-specific
        log.warning("could not raise the open files limit: %s", exc)
