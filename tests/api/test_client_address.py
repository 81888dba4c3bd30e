"""Who sent a request, as the log says: the connection's peer, or behind a trusted proxy the
nearest address in X-Forwarded-For that the proxy did not add itself."""

from __future__ import annotations

from typing import Any

from sekisho.api.http import ClientAddress


def _scope(peer: str, forwarded: str | None = None) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return {"client": (peer, 50000), "headers": headers}


def test_the_logged_client_is_the_peer_unless_it_is_a_trusted_proxy() -> None:
    plain = ClientAddress()
    assert plain.of(_scope("192.0.2.10", "203.0.113.5")) == "192.0.2.10"  # nobody trusted
    assert plain.of({"headers": []}) is None  # no peer known (a unix socket)
    behind = ClientAddress(["10.0.0.0/8", "2001:db8::/32"])
    # From the balancer: the nearest address it did not add itself.
    assert behind.of(_scope("10.1.2.3", "203.0.113.5")) == "203.0.113.5"
    assert behind.of(_scope("10.1.2.3", "203.0.113.5, 10.9.9.9")) == "203.0.113.5"
    # A client's own forged entries stay left of what the balancer saw: they are not taken.
    assert behind.of(_scope("10.1.2.3", "6.6.6.6, 203.0.113.5")) == "203.0.113.5"
    # From anyone else the header is ignored.
    assert behind.of(_scope("198.51.100.1", "10.1.1.1")) == "198.51.100.1"
    assert behind.of(_scope("2001:db8::5", "[2001:db8::6], 2400:4050::1")) == "2400:4050::1"
    assert behind.of(_scope("10.1.2.3")) == "10.1.2.3"  # no header: the balancer itself
    assert behind.of(_scope("10.1.2.3", "10.0.0.1, 10.0.0.2")) == "10.0.0.1"  # all internal
