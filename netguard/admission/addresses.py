# -*- test-case-name: tests.test_admission -*-
"""
What admission reads from a peer's address before it applies a rule: the live-connection
identity, the IP address (parsed once, IPv4-mapped IPv6 as IPv4), and whether the peer is
a unix socket; and membership of a configured network list. docs/operating.md section 8.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from netguard.addresses import peer_ip

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def member(ip: IP, networks: tuple[Network, ...]) -> bool:
    """
    Whether C{ip} is in one of C{networks} (of its own version).
    """
    return any(ip.version == net.version and ip in net for net in networks)


def identify(address: object) -> tuple[Hashable, str | None, bool]:
    """
    Classify a peer without parsing it (the cheap part of every call).

    @return: the live-connection identity, the host text to parse (or L{None}), and
        whether the peer is a unix socket.
    """
    if isinstance(address, IPv4Address | IPv6Address):
        return address, address.host, False
    if isinstance(address, UNIXAddress):
        return address, None, True
    if isinstance(address, str):
        return address, address, False
    try:
        hash(address)
    except TypeError:
        return repr(address), None, False
    return address, None, False


def classify(address: object) -> tuple[Hashable, IP | None, bool]:
    """
    @return: the live-connection identity, the IP address (or L{None}), and whether the
        peer is a unix socket.
    """
    ident, host, unix = identify(address)
    return ident, (None if host is None else peer_ip(host)), unix
