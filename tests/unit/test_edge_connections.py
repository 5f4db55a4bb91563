"""The edge's book of connections: the idle one closed first, per address, IPv6 by its /64."""

from __future__ import annotations

import pytest

from speech_router.edge_connections import ConnectionBook, client_key


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True

    def __repr__(self) -> str:
        return self.name


@pytest.mark.parametrize("peer,key", [
    (("10.0.0.7", 5000), "10.0.0.7"),
    (("2001:db8:1:2:aaaa::1", 5000, 0, 0), "2001:db8:1:2::/64"),
    (("2001:db8:1:2:bbbb::9", 5000, 0, 0), "2001:db8:1:2::/64"),
    (("::ffff:192.0.2.5", 5000, 0, 0), "192.0.2.5"),  # dual-stack listener: IPv4 clients stay apart
    (None, ""),
])
def test_clients_are_counted_by_address_and_ipv6_by_its_64(peer, key):
    assert client_key(peer) == key


def test_the_connection_idle_the_longest_makes_room_and_busy_ones_never_do():
    book = ConnectionBook()
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    for conn, client in ((a, "x"), (b, "x"), (c, "y")):
        book.opened(conn, client)
    book.busy(a)
    book.busy(b)
    book.idle(b)  # b idle again after a, c: c has been idle the longest
    assert book.make_room() and c.evicted and len(book) == 2 and book.count("y") == 0
    assert book.make_room("x") and b.evicted and book.count("x") == 1
    assert not book.make_room() and not a.evicted  # a is in a request
    book.closed(a)
    book.closed(a)  # twice: nothing happens
    assert len(book) == 0 and book.count("x") == 0
