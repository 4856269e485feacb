"""
Tests for L{netguard.client.endpoint}: parsing C{netguard:} endpoint strings.
"""

from __future__ import annotations

import os

from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from netguard.client.endpoint import NGPClientEndpoint
from tests import tls_certs


class EndpointStringTests(unittest.TestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.password_file = self.mktemp()
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"pw\n")
        os.close(fd)

    def parse(self, rest: str) -> NGPClientEndpoint:
        return clientFromString(
            self.reactor,
            f"netguard:service=echo:user=alice:password_file={self.password_file}:{rest}",
        )

    def test_tcp_gateway(self):
        endpoint = self.parse("host=127.0.0.1:port=7700:mux=no")
        self.assertIsInstance(endpoint, NGPClientEndpoint)
        self.assertIsInstance(endpoint.gateway, HostnameEndpoint)
        self.assertEqual(endpoint.credentials.password, "pw")
        self.assertEqual(endpoint.service, "echo")

    def test_ipv6_host_escaped(self):
        endpoint = self.parse(r"host=\:\:1:port=7700")
        self.assertEqual(endpoint.gateway._hostText, "::1")

    def test_port_may_be_a_service_name(self):
        endpoint = self.parse("host=127.0.0.1:port=http")
        self.assertEqual(endpoint.gateway._port, 80)

    def test_unknown_service_name_port(self):
        with self.assertRaises(ValueError):
            self.parse("host=127.0.0.1:port=no-such-service-here")

    def test_port_zero_refused(self):
        with self.assertRaises(ValueError) as caught:
            self.parse("host=127.0.0.1:port=0")
        self.assertIn("port=0", str(caught.exception))

    def test_gateway_string_port_may_be_a_service_name(self):
        endpoint = self.parse(r"gateway=tcp\:host\=127.0.0.1\:port\=http")
        self.assertEqual(endpoint.gateway._port, 80)

    def test_gateway_string_unknown_service_name(self):
        with self.assertRaises(ValueError) as caught:
            self.parse(r"gateway=tcp\:host\=127.0.0.1\:port\=no-such-service-here")
        self.assertIn("unknown service name", str(caught.exception))

    def test_inline_password_refused_with_advice(self):
        with self.assertRaises(ValueError) as caught:
            clientFromString(
                self.reactor, "netguard:host=h:port=1:service=s:user=u:password=secret"
            )
        self.assertIn("password_file", str(caught.exception))

    def test_unknown_key(self):
        with self.assertRaises(ValueError):
            self.parse("host=h:port=1:colour=blue")

    def test_tls_option_alone_never_leaves_plain_tcp(self):
        endpoint = self.parse("host=localhost:port=7700:tls_hostname=localhost")
        self.assertNotIsInstance(endpoint.gateway, HostnameEndpoint)

    def test_pin_implies_tls(self):
        cert, _ = tls_certs.make_leaf("localhost")
        from netguard.tls import public_key_pin

        endpoint = self.parse(f"host=localhost:port=7700:pin_sha256={public_key_pin(cert)}")
        self.assertNotIsInstance(endpoint.gateway, HostnameEndpoint)

    def test_tickets_by_default(self):
        """
        A C{netguard:} endpoint keeps returning-client tickets unless told not to, with or
        without multiplexing.
        """
        from netguard.client.tickets import TicketStore

        self.assertIsInstance(self.parse("host=h:port=1").tickets, TicketStore)
        self.assertIsInstance(self.parse("host=h:port=1:mux=no").tickets, TicketStore)

    def test_tickets_no(self):
        """
        C{tickets=no}: no ticket store (none asked for, none presented).
        """
        self.assertIsNone(self.parse("host=h:port=1:tickets=no").tickets)
        self.assertIsNone(self.parse("host=h:port=1:mux=no:tickets=no").tickets)

    def test_tickets_value_checked(self):
        """
        C{tickets=} is yes or no; anything else is refused.
        """
        with self.assertRaises(ValueError) as caught:
            self.parse("host=h:port=1:tickets=maybe")
        self.assertIn("tickets=", str(caught.exception))

    def test_plain_without_tls_options(self):
        endpoint = self.parse("host=localhost:port=7700")
        self.assertIsInstance(endpoint.gateway, HostnameEndpoint)
