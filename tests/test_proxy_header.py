"""
L{netguard.proxy_header}: the PROXY header is read before the application's factory builds a
protocol, so admission and logs see the header's address (fakes: StringTransport, Clock).
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.logger import capturedLogs
from twisted.trial import unittest

from netguard.proxy_header import HEADER_TIMEOUT, ProxyHeaderFactory

PROXY_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)
V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 7701\r\n"
V2_PREFIX = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(command: int = 0x1, source: str = "192.0.2.7", port: int = 51234) -> bytes:
    """
    A version 2 header: C{command} 1 is PROXY (with an IPv4 TCP address block), 0 is LOCAL.
    """
    if command == 0:
        return V2_PREFIX + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    block = (
        socket.inet_aton(source)
        + socket.inet_aton("198.51.100.1")
        + struct.pack("!HH", port, 7701)
    )
    return V2_PREFIX + bytes([0x21, 0x11]) + struct.pack("!H", len(block)) + block


class Recorder(Protocol):
    """
    The application's protocol: records its connection and what it reads.
    """

    def __init__(self, addr: Any) -> None:
        self.addr = addr
        self.data = b""
        self.made = False
        self.lost = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class AppFactory(Factory):
    """
    The application's factory: records each C{buildProtocol} address; refuses when told.
    """

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.addresses: list[Any] = []
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Any:
        self.addresses.append(addr)
        if self.refuse:
            return None
        protocol = Recorder(addr)
        self.built.append(protocol)
        return protocol


class ProxyHeaderTests(unittest.TestCase):
    """
    One connection through L{ProxyHeaderFactory}.
    """

    def connect(self, refuse: bool = False) -> tuple[Any, AppFactory, Any, Clock]:
        clock = Clock()
        app = AppFactory(refuse)
        factory = ProxyHeaderFactory(app, clock)
        wrapper = factory.buildProtocol(PROXY_ADDRESS)
        transport = StringTransportWithDisconnection(peerAddress=PROXY_ADDRESS)
        transport.protocol = wrapper
        wrapper.makeConnection(transport)
        return wrapper, app, transport, clock

    def test_nothing_built_before_the_header(self) -> None:
        """
        On accept the application's factory is not asked at all (no admission with the
        proxy's address), and a partial header builds nothing either.
        """
        wrapper, app, transport, _ = self.connect()
        wrapper.dataReceived(V1[:20])
        self.assertEqual(app.addresses, [])
        self.assertTrue(transport.connected)

    def test_v1_header_address_given_to_build_protocol(self) -> None:
        """
        A version 1 header, even split byte by byte: C{buildProtocol} gets its source
        address, the protocol's transport reports it (C{getPeer}) and the header's destination
        (C{getHost}), and bytes after the header reach the protocol.
        """
        wrapper, app, transport, _ = self.connect()
        for byte in V1 + b"PING\r\n":
            wrapper.dataReceived(bytes([byte]))
        self.assertEqual(app.addresses, [IPv4Address("TCP", "192.0.2.7", 51234)])
        [protocol] = app.built
        self.assertTrue(protocol.made)
        self.assertEqual(protocol.transport.getPeer(), IPv4Address("TCP", "192.0.2.7", 51234))
        self.assertEqual(protocol.transport.getHost().host, "198.51.100.1")
        self.assertEqual(protocol.data, b"PING\r\n")

    def test_v2_header_in_one_piece_with_data(self) -> None:
        """
        A version 2 header and the first bytes in one read: same result.
        """
        wrapper, app, _, _ = self.connect()
        wrapper.dataReceived(v2() + b"PING\r\n")
        self.assertEqual(app.addresses, [IPv4Address("TCP", "192.0.2.7", 51234)])
        self.assertEqual(app.built[0].data, b"PING\r\n")

    def test_v2_local_keeps_the_proxy_address(self) -> None:
        """
        A version 2 C{LOCAL} header (a health check) names no address: the proxy's own
        address is used.
        """
        wrapper, app, _, _ = self.connect()
        wrapper.dataReceived(v2(command=0))
        self.assertEqual(app.addresses, [PROXY_ADDRESS])

    def test_refused_by_the_factory_closes(self) -> None:
        """
        When the application's factory refuses (returns L{None}) with the header's address,
        the connection is closed.
        """
        wrapper, app, transport, _ = self.connect(refuse=True)
        wrapper.dataReceived(V1)
        self.assertEqual(app.addresses, [IPv4Address("TCP", "192.0.2.7", 51234)])
        self.assertFalse(transport.connected)

    def test_not_a_header_is_closed_and_logged(self) -> None:
        """
        A connection that starts with anything but a PROXY header (a client talking NGP/1
        straight to the port) is aborted before any protocol is built, and logged.
        """
        wrapper, app, transport, _ = self.connect()
        with capturedLogs() as events:
            wrapper.dataReceived(b"AUTH SCRAM-SHA-256 x\r\n")
        self.assertEqual(app.addresses, [])
        self.assertFalse(transport.connected)
        [event] = [e for e in events if e.get("event") == "conn.reject"]
        self.assertEqual((event["reason"], event["peer"]), ("proxy-header", "127.0.0.1:40000"))

    def test_malformed_v1_is_closed(self) -> None:
        """
        A version 1 header longer than its 107-byte bound without a line end, one whose
        source or destination is not an IP address (Twisted's parser takes any word there),
        and one with a bad port, are closed without building anything.
        """
        for data in (
            b"PROXY TCP4 " + b"1" * 120,
            b"PROXY TCP4 not-an-ip 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 bad_host 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.5 x 2\r\n",
        ):
            wrapper, app, transport, _ = self.connect()
            wrapper.dataReceived(data)
            self.assertEqual(app.addresses, [], data)
            self.assertFalse(transport.connected, data)

    def test_header_deadline(self) -> None:
        """
        No complete header within L{HEADER_TIMEOUT}: aborted and logged as a timeout; one
        tick before, still open.
        """
        wrapper, app, transport, clock = self.connect()
        wrapper.dataReceived(V1[:10])
        clock.advance(HEADER_TIMEOUT - 0.001)
        self.assertTrue(transport.connected)
        with capturedLogs() as events:
            clock.advance(0.001)
        self.assertFalse(transport.connected)
        self.assertEqual(app.addresses, [])
        self.assertEqual(
            [e["which"] for e in events if e.get("event") == "conn.timeout"], ["proxy-header"]
        )

    def test_deadline_cancelled_by_the_header(self) -> None:
        """
        Once the header is complete the deadline no longer applies.
        """
        wrapper, _, transport, clock = self.connect()
        wrapper.dataReceived(V1)
        clock.advance(HEADER_TIMEOUT * 2)
        self.assertTrue(transport.connected)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connection_lost_reaches_the_protocol(self) -> None:
        """
        The end of the connection reaches the application's protocol; before the header it
        reaches nothing and cancels the deadline.
        """
        wrapper, app, transport, clock = self.connect()
        wrapper.dataReceived(V1)
        transport.loseConnection()
        self.assertTrue(app.built[0].lost)
        wrapper, app, transport, clock = self.connect()
        transport.loseConnection()
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(app.addresses, [])


class PendingBoundTests(unittest.TestCase):
    """
    At most C{max_pending} connections wait for their header at once: admission control
    cannot count them yet, so this bounds the sockets a peer can hold before it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.app = AppFactory()
        self.factory = ProxyHeaderFactory(self.app, self.clock, max_pending=3)

    def accept(self) -> Any:
        wrapper = self.factory.buildProtocol(PROXY_ADDRESS)
        if wrapper is None:
            return None, None
        transport = StringTransportWithDisconnection(peerAddress=PROXY_ADDRESS)
        transport.protocol = wrapper
        wrapper.makeConnection(transport)
        return wrapper, transport

    def test_bound_reached_then_one_past_is_refused_and_logged(self) -> None:
        """Three waiting connections are accepted; the fourth is refused at accept."""
        waiting = [self.accept() for _ in range(3)]
        self.assertTrue(all(wrapper is not None for wrapper, _ in waiting))
        self.assertEqual(self.factory.pending, 3)
        with capturedLogs() as events:
            self.assertIsNone(self.accept()[0])
        self.assertEqual(
            [e.get("reason") for e in events if e.get("event") == "conn.reject"],
            ["proxy-header-pending"],
        )

    def test_a_slot_comes_back_however_the_wait_ends(self) -> None:
        """
        Header complete, header invalid, deadline passed, connection lost: each frees its
        slot once, so a new connection is accepted again.
        """
        (done, _), (bad, _), (late, _) = (self.accept() for _ in range(3))
        done.dataReceived(V1)
        self.assertEqual(self.factory.pending, 2)
        bad.dataReceived(b"GET / HTTP/1.0\r\n")
        self.assertEqual(self.factory.pending, 1)
        self.clock.advance(HEADER_TIMEOUT)
        self.assertEqual(self.factory.pending, 0)
        wrapper, transport = self.accept()
        self.assertEqual(self.factory.pending, 1)
        transport.loseConnection()
        self.assertEqual(self.factory.pending, 0)
        done.transport.loseConnection()  # after the header: counts nothing
        self.assertEqual(self.factory.pending, 0)
