"""
Tests for L{netguard.client.endpoint}: parsing C{netguard:} endpoint strings, and what
becomes of a connection whose C{connect} failed.
"""

from __future__ import annotations

import os

from twisted.internet.defer import fail
from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial import unittest

from netguard.client.endpoint import MAX_CONNECT_TIMEOUT, NGPClientEndpoint
from netguard.client.protocol import Credentials
from tests import tls_certs


def password_file(case: unittest.TestCase) -> str:
    """
    A password file (C{pw}, mode 0600) for the test C{case}.
    """
    path = case.mktemp()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"pw\n")
    os.close(fd)
    return path


class EndpointStringTests(unittest.TestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.password_file = password_file(self)

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

    def test_empty_tls_option_refused(self):
        """
        A TLS key given with an empty value (a template whose variable was unset) is an
        error naming the key, never a plain TCP connection; the same with a value is TLS.
        """
        for key in ("tls_hostname", "ca_file", "pin_sha256", "client_cert", "client_key"):
            with self.assertRaises(ValueError) as caught:
                self.parse(f"host=localhost:port=7700:{key}=")
            self.assertIn(f"{key}= is empty", str(caught.exception))

    def test_tls_flag_values(self):
        """
        C{tls=} is yes or no (and their synonyms); anything else, empty included, is
        refused rather than read as no.
        """
        self.assertNotIsInstance(
            self.parse("host=localhost:port=1:tls=yes").gateway, HostnameEndpoint
        )
        self.assertIsInstance(self.parse("host=localhost:port=1:tls=no").gateway, HostnameEndpoint)
        for value in ("", "maybe", "2"):
            with self.assertRaises(ValueError) as caught:
                self.parse(f"host=localhost:port=1:tls={value}")
            self.assertIn("tls=yes or tls=no", str(caught.exception))

    def test_plain_without_tls_options(self):
        endpoint = self.parse("host=localhost:port=7700")
        self.assertIsInstance(endpoint.gateway, HostnameEndpoint)


class ConnectTimeoutTests(unittest.TestCase):
    """
    C{timeout=} of a C{netguard:} string: a finite number of seconds above 0, at most
    L{MAX_CONNECT_TIMEOUT}; anything else is a C{ValueError} naming the key.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.password_file = password_file(self)

    def parse(self, timeout: str, mux: str = "yes"):
        return clientFromString(
            self.reactor,
            f"netguard:host=127.0.0.1:port=7700:service=echo:user=alice:"
            f"password_file={self.password_file}:mux={mux}:timeout={timeout}",
        )

    def test_bad_values_refused_naming_the_key(self):
        """
        Text, C{nan}, C{inf}, negative, zero and one past the bound are refused with an
        error naming C{timeout=} and the value, with and without multiplexing.
        """
        too_long = repr(MAX_CONNECT_TIMEOUT + 0.001)
        for value in ("abc", "", "nan", "inf", "-inf", "-5", "0", too_long):
            for mux in ("yes", "no"):
                with self.assertRaises(ValueError) as caught:
                    self.parse(value, mux)
                self.assertIn("timeout=", str(caught.exception), value)
                self.assertIn(repr(value), str(caught.exception), value)

    def test_bounds_accepted(self):
        """
        The smallest positive value and the bound itself reach the TCP endpoint.
        """
        for value in ("0.001", repr(MAX_CONNECT_TIMEOUT)):
            endpoint = self.parse(value, mux="no")
            self.assertEqual(endpoint.gateway._timeout, float(value))

    def test_default(self):
        """
        Without C{timeout=} the TCP connection may take 30 s.
        """
        endpoint = clientFromString(
            self.reactor,
            f"netguard:host=127.0.0.1:port=7700:service=echo:user=alice:"
            f"password_file={self.password_file}:mux=no",
        )
        self.assertEqual(endpoint.gateway._timeout, 30.0)


class ConnectsAnyway:
    """
    A hostile gateway endpoint that fails C{connect} yet goes on with the connection (as
    Twisted's connectors do when they cannot arm their timeout): with C{built_first} the
    protocol is connected before the failure, otherwise the connection arrives later
    (L{arrive}).
    """

    def __init__(self, built_first: bool) -> None:
        self.built_first = built_first
        self.factory = None
        self.transport = StringTransport()
        self.protocol = None

    def connect(self, factory):
        self.factory = factory
        if self.built_first:
            self.arrive()
        return fail(AssertionError("-5.0 is not greater than or equal to 0 seconds"))

    def arrive(self):
        self.protocol = self.factory.buildProtocol(None)
        if self.protocol is not None:
            self.protocol.makeConnection(self.transport)


class AbandonedConnectionTests(unittest.TestCase):
    """
    A connection whose C{connect} failed is never logged in nor handed to the application:
    it is closed (or never built).
    """

    def connect(self, gateway):
        endpoint = NGPClientEndpoint(
            MemoryReactorClock(), gateway, Credentials("alice", "pw"), "echo", tickets=False
        )
        built = []
        connecting = endpoint.connect(Factory.forProtocol(lambda: built.append(1)))
        self.failureResultOf(connecting, AssertionError)
        return built

    def test_connection_after_the_failure_is_refused(self):
        """
        A connection that arrives after C{connect} failed gets no protocol (Twisted then
        closes it): nothing is sent to the gateway.
        """
        gateway = ConnectsAnyway(built_first=False)
        built = self.connect(gateway)
        gateway.arrive()
        self.assertIsNone(gateway.protocol)
        self.assertEqual((gateway.transport.value(), built), (b"", []))

    def test_connection_made_before_the_failure_is_closed(self):
        """
        A carrier already connected when C{connect} failed is closed at once, before the
        greeting: a greeting arriving later gets no login.
        """
        gateway = ConnectsAnyway(built_first=True)
        built = self.connect(gateway)
        self.assertTrue(gateway.transport.disconnecting)
        gateway.protocol.dataReceived(b"NETGUARD/1 gw AUTH=SCRAM-SHA-256\r\n")
        self.assertEqual((gateway.transport.value(), built), (b"", []))
