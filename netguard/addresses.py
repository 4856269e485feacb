"""
Peer addresses as netguard's rules see them: one parser for the host of a Twisted address,
so that admission, PROXY senders, tickets and the metrics listener agree on what an address
is (an IPv6 zone dropped, an IPv4-mapped IPv6 address taken as the IPv4 address it maps).
"""

from __future__ import annotations

import ipaddress

#: An IP address as the rules compare it.
IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def peer_ip(host: object) -> IP | None:
    """
    Parse a peer host: C{"192.0.2.1"}, C{"2001:db8::1"}, C{"fe80::1%eth0"} (the zone is
    dropped), C{"::ffff:192.0.2.1"} (taken as C{192.0.2.1}, as dual-stack listeners report
    IPv4 peers).

    @param host: the C{host} of a Twisted address, or anything else.
    @return: the address, or L{None} when C{host} is not a textual IP address.
    """
    if not isinstance(host, str):
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
