"""
Tests for L{netguard.addresses}: the one parser of peer hosts the rules share.
"""

from __future__ import annotations

import ipaddress

from twisted.trial import unittest

from netguard.addresses import peer_ip


class PeerIPTests(unittest.TestCase):
    def test_plain_addresses(self) -> None:
        """
        IPv4 and IPv6 hosts parse to their addresses.
        """
        self.assertEqual(peer_ip("192.0.2.1"), ipaddress.IPv4Address("192.0.2.1"))
        self.assertEqual(peer_ip("2001:db8::1"), ipaddress.IPv6Address("2001:db8::1"))

    def test_zone_dropped_and_mapped_unwrapped(self) -> None:
        """
        An IPv6 zone is dropped; an IPv4-mapped IPv6 address is the IPv4 address it maps (a
        dual-stack listener's IPv4 peer must meet the IPv4 rules, not escape them).
        """
        self.assertEqual(peer_ip("fe80::1%eth0"), ipaddress.IPv6Address("fe80::1"))
        self.assertEqual(peer_ip("::ffff:192.0.2.1"), ipaddress.IPv4Address("192.0.2.1"))

    def test_not_an_address(self) -> None:
        """
        A host name, junk, an empty string or a value that is not a string is no address.
        """
        for host in ("localhost", "192.0.2.256", "", "::ffff:", None, 42, b"192.0.2.1"):
            self.assertIsNone(peer_ip(host), host)
