"""
L{netguard.proxy_header}: the PROXY header is read before the application's factory builds a
protocol, so admission and logs see the header's address (fakes: StringTransport, Clock).
"""

from __future__ import annotations

import base64
import socket
import struct
from typing import Any

from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import (
    MemoryReactor,
    StringTransport,
    StringTransportWithDisconnection,
)
from twisted.logger import capturedLogs, globalLogPublisher
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.protocols.policies import WrappingFactory
from twisted.trial import unittest

from netguard.admission import Admission, AdmissionPolicy
from netguard.admitting import AdmittingFactory
from netguard.auth.scram import ClientExchange
from netguard.auth.users import UserStore, make_record
from netguard.config import load_config
from netguard.config.text import describe
from netguard.endpoints import EndpointError, check_listener, with_default_backlog
from netguard.gateway.factory import GatewayFactory
from netguard.proxy_header import (
    HEADER_TIMEOUT,
    MAX_PENDING,
    ProxyHeaderEndpoint,
    ProxyHeaderFactory,
    Senders,
    pending_share,
    proxy_listener_endpoint,
)
from netguard.proxy_listener import MAX_PROXY_FROM, parse_proxy_from
from netguard.workers.penalties import SharedAdmission

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


def accepted(factory: Any, peer: Any) -> tuple[Any, Any]:
    """
    What a listener does with a new connection from C{peer}: C{factory} builds its protocol
    (L{None} when refused at accept) and connects it to a transport.

    @return: the wrapper and its transport, or C{(None, None)}.
    """
    wrapper = factory.buildProtocol(peer)
    if wrapper is None:
        return None, None
    transport = StringTransportWithDisconnection(peerAddress=peer)
    transport.protocol = wrapper
    wrapper.makeConnection(transport)
    return wrapper, transport


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
        wrapper, transport = accepted(ProxyHeaderFactory(app, clock), PROXY_ADDRESS)
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


class StrictV1Tests(unittest.TestCase):
    """
    A version 1 header is accepted only in the exact form of the PROXY protocol
    specification: C{PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n} (or C{PROXY UNKNOWN}),
    single spaces, ports written as plain decimal 0..65535 without sign, separator or
    leading zero, an address of the family the line names, no IPv6 scope, at most 107 bytes
    with its line end. Anything else is closed and logged like every invalid header, and no
    protocol is built (hostile senders: a peer that reaches the port directly).
    """

    def send(self, data: bytes) -> tuple[AppFactory, Any, list[Any]]:
        """
        Feed C{data} to a new connection; return the application's factory, the transport
        and the C{conn.reject} events logged.
        """
        app = AppFactory()
        wrapper, transport = accepted(ProxyHeaderFactory(app, Clock()), PROXY_ADDRESS)
        with capturedLogs() as events:
            wrapper.dataReceived(data)
        return app, transport, [e for e in events if e.get("event") == "conn.reject"]

    def assert_refused(self, line: bytes) -> None:
        """
        C{line} builds nothing, is closed, and is logged once as C{reason=proxy-header}.
        """
        app, transport, rejects = self.send(line)
        self.assertEqual(app.addresses, [], line)
        self.assertFalse(transport.connected, line)
        self.assertEqual([e["reason"] for e in rejects], ["proxy-header"], line)
        self.assertEqual(rejects[0]["peer"], "127.0.0.1:40000", line)

    def assert_accepted(self, line: bytes) -> Any:
        """
        C{line} is accepted: one protocol is built, the connection stays open, nothing is
        rejected; return the address given to C{buildProtocol}.
        """
        app, transport, rejects = self.send(line)
        self.assertEqual(rejects, [], line)
        self.assertTrue(transport.connected, line)
        [address] = app.addresses
        return address

    def test_loosely_written_ports_are_refused(self) -> None:
        """
        A port with a sign, an underscore, a leading zero, spaces or non-ASCII digits (all of
        which Python's C{int()} takes) is refused, as source or as destination port.
        """
        for port in (b"-1", b"+5", b"5_5", b"05", b"00", b" 5", b"\xd9\xa1", b"0x10", b""):
            self.assert_refused(b"PROXY TCP4 192.0.2.7 198.51.100.1 " + port + b" 7701\r\n")
            self.assert_refused(b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 " + port + b"\r\n")

    def test_port_bounds(self) -> None:
        """
        Ports 0 and 65535 are accepted (the specification's range), 65536 and 99999 are
        refused, as source or as destination port.
        """
        for port in (0, 65535):
            text = str(port).encode()
            address = self.assert_accepted(
                b"PROXY TCP4 192.0.2.7 198.51.100.1 " + text + b" 7701\r\n"
            )
            self.assertEqual(address, IPv4Address("TCP", "192.0.2.7", port))
            self.assert_accepted(b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 " + text + b"\r\n")
        for text in (b"65536", b"99999", b"100000"):
            self.assert_refused(b"PROXY TCP4 192.0.2.7 198.51.100.1 " + text + b" 7701\r\n")
            self.assert_refused(b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 " + text + b"\r\n")

    def test_extra_or_missing_fields_are_refused(self) -> None:
        """
        A trailing field, a trailing or doubled space, a missing port, or a lone C{\\n} line
        end is refused.
        """
        for line in (
            b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 7701 extra\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 7701 \r\n",
            b"PROXY TCP4 192.0.2.7  198.51.100.1 51234 7701\r\n",
            b"PROXY  TCP4 192.0.2.7 198.51.100.1 51234 7701\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 51234\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 7701\n\r\n",
            b"PROXY TCP4\r\n",
            b"PROXY TCP5 192.0.2.7 198.51.100.1 51234 7701\r\n",
            b"PROXY tcp4 192.0.2.7 198.51.100.1 51234 7701\r\n",
        ):
            self.assert_refused(line)

    def test_family_must_match_the_address(self) -> None:
        """
        C{TCP4} with an IPv6 address (or an IPv4-mapped one) and C{TCP6} with an IPv4
        address are refused, in either position; each matching form is accepted.
        """
        for line in (
            b"PROXY TCP4 2001:db8::7 198.51.100.1 51234 7701\r\n",
            b"PROXY TCP4 192.0.2.7 2001:db8::1 51234 7701\r\n",
            b"PROXY TCP4 ::ffff:192.0.2.7 198.51.100.1 51234 7701\r\n",
            b"PROXY TCP6 192.0.2.7 2001:db8::1 51234 7701\r\n",
            b"PROXY TCP6 2001:db8::7 198.51.100.1 51234 7701\r\n",
        ):
            self.assert_refused(line)
        address = self.assert_accepted(b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 7701\r\n")
        self.assertEqual(address, IPv6Address("TCP", "2001:db8::7", 51234))

    def test_scoped_or_loose_addresses_are_refused(self) -> None:
        """
        An IPv6 address with a scope (C{fe80::1%eth0}, text the sender chooses that would
        reach admission keys and logs), an IPv4 address with leading zeros or too few parts,
        and a host name are refused.
        """
        for line in (
            b"PROXY TCP6 fe80::1%eth0 2001:db8::1 51234 7701\r\n",
            b"PROXY TCP6 2001:db8::7 fe80::1%1 51234 7701\r\n",
            b"PROXY TCP4 192.0.2.07 198.51.100.1 51234 7701\r\n",
            b"PROXY TCP4 192.0.2 198.51.100.1 51234 7701\r\n",
            b"PROXY TCP4 localhost 198.51.100.1 51234 7701\r\n",
        ):
            self.assert_refused(line)

    def test_ipv6_address_is_given_in_canonical_form(self) -> None:
        """
        An IPv6 address written at length reaches the application compressed, so one
        client has one spelling in admission keys and logs.
        """
        address = self.assert_accepted(
            b"PROXY TCP6 2001:0db8:0:0:0:0:0:0007 2001:db8::1 51234 7701\r\n"
        )
        self.assertEqual(address.host, "2001:db8::7")

    def test_length_bound_is_exact(self) -> None:
        """
        A line of exactly 107 bytes with its line end is accepted (C{UNKNOWN} with the
        longest text the specification allows); one byte more is refused, even when its
        line end arrives in the same read.
        """
        line = b"PROXY UNKNOWN " + b"f" * (107 - 16) + b"\r\n"
        self.assertEqual(len(line), 107)
        app, transport, rejects = self.send(line)
        self.assertEqual((rejects, transport.connected), ([], True))
        self.assertEqual(app.addresses, [PROXY_ADDRESS])
        self.assert_refused(b"PROXY UNKNOWN " + b"f" * (108 - 16) + b"\r\n")

    def test_unknown_keeps_the_proxy_address(self) -> None:
        """
        C{PROXY UNKNOWN}, bare (what HAProxy sends for a client it cannot name) or followed
        by text the receiver ignores, keeps the proxy's address.
        """
        for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"):
            self.assertEqual(self.assert_accepted(line), PROXY_ADDRESS, line)

    def test_v2_datagram_header_is_refused(self) -> None:
        """
        A version 2 header that names a datagram (UDP) client is refused: this listener's
        clients are TCP streams.
        """
        block = (
            socket.inet_aton("192.0.2.7")
            + socket.inet_aton("198.51.100.1")
            + struct.pack("!HH", 51234, 7701)
        )
        self.assert_refused(
            V2_PREFIX + bytes([0x21, 0x12]) + struct.pack("!H", len(block)) + block
        )

    def test_v2_port_bounds(self) -> None:
        """
        Version 2 ports are 16-bit binary: 0 and 65535 both reach the application as is.
        """
        for port in (0, 65535):
            address = self.assert_accepted(v2(port=port))
            self.assertEqual(address, IPv4Address("TCP", "192.0.2.7", port))


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
        return accepted(self.factory, PROXY_ADDRESS)

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

    def test_flood_past_the_bound_is_logged_in_aggregate(self) -> None:
        """
        700 header-less connections from a listed sender against a bound of 3: 3 wait and
        697 are refused at accept, of which only the first 3 are logged one by one and the
        other 694 in one C{conn.reject.summary} at the end of the interval; no refusal for
        the bound is an offence (a busy proxy is no misbehaving one).
        """
        self.app = AdmittedApp()
        self.factory = ProxyHeaderFactory(
            self.app, self.clock, max_pending=3, senders=Senders.of(["127.0.0.1"])
        )
        with capturedLogs() as events:
            accepted = [self.accept()[0] for _ in range(700)]
            self.clock.advance(HEADER_TIMEOUT - 0.001)
            self.clock.advance(60)
        self.assertEqual(sum(wrapper is not None for wrapper in accepted), 3)
        rejects = [e for e in events if e.get("event") == "conn.reject"]
        self.assertEqual([e["reason"] for e in rejects], ["proxy-header-pending"] * 3)
        self.assertEqual([e["offence"] for e in rejects], [None] * 3)
        [summary] = [e for e in events if e.get("event") == "conn.reject.summary"]
        self.assertEqual(
            (summary["reason"], summary["of"], summary["count"], summary["source"]),
            ("proxy-header-pending", "conn.reject", 694, "127.0.0.1/32"),
        )
        # The 3 that waited ran out of time: their 3 timeouts are the only offences.
        self.assertEqual(self.app.admission.offences, [("127.0.0.1", "timeout")] * 3)
        self.assertLessEqual(len(events), 3 + 1 + 3)

    def test_bound_is_a_parameter_of_the_endpoint(self) -> None:
        """
        L{ProxyHeaderEndpoint} hands its C{max_pending} to its factory (L{MAX_PENDING} by
        default); L{pending_share} is a worker's share, rounded up, never 0.
        """
        listened: list[Any] = []

        class Endpoint:
            def listen(self, factory: Any) -> None:
                listened.append(factory)

        ProxyHeaderEndpoint(Endpoint(), self.clock).listen(AppFactory())
        ProxyHeaderEndpoint(Endpoint(), self.clock, max_pending=7).listen(AppFactory())
        self.assertEqual([f.max_pending for f in listened], [MAX_PENDING, 7])
        self.assertEqual(
            [pending_share(n) for n in (0, 1, 2, 3, 255, 256, 257)],
            [256, 256, 128, 86, 2, 1, 1],
        )


class FakeAdmission:
    """
    Records offences and gives source keys, as L{netguard.admission.Admission} does.
    """

    def __init__(self) -> None:
        self.offences: list[tuple[str, str]] = []

    def offence(self, address: Any, kind: str) -> float | None:
        self.offences.append((address.host, kind))
        return None

    def source_key(self, address: Any) -> str:
        return f"{address.host}/32"

    def blocked_for(self, address: Any) -> float | None:
        return None


class AdmittedApp(AppFactory):
    """
    An application factory with an C{admission}, as the gateway's factory has one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.admission = FakeAdmission()


SENDER = IPv4Address("TCP", "10.0.0.9", 40000)
OUTSIDER = IPv4Address("TCP", "10.0.1.9", 40001)


class SenderTests(unittest.TestCase):
    """
    PROXY headers only from the listed senders (C{proxy_from}): anyone else is closed at
    accept; a listed sender must send a valid header; every refusal is logged and counted as
    an offence against the connection's own peer (the sender), never the header's address.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.app = AdmittedApp()
        self.factory = ProxyHeaderFactory(
            self.app, self.clock, senders=Senders.of(["10.0.0.0/24", "2001:db8::/64"])
        )

    def accept(self, peer: Any) -> tuple[Any, Any]:
        return accepted(self.factory, peer)

    def rejects(self, events: list[Any]) -> list[tuple[str, str, str]]:
        return [
            (e["reason"], e["peer"], e["offence"])
            for e in events
            if e.get("event") == "conn.reject"
        ]

    def test_listed_sender_header_served_with_header_address(self) -> None:
        """
        A listed sender's header is read and the application is built with the header's
        client address; no offence, nothing refused.
        """
        wrapper, transport = self.accept(SENDER)
        wrapper.dataReceived(V1 + b"PING\r\n")
        self.assertEqual(self.app.addresses, [IPv4Address("TCP", "192.0.2.7", 51234)])
        self.assertEqual(self.app.built[0].data, b"PING\r\n")
        self.assertTrue(transport.connected)
        self.assertEqual(self.app.admission.offences, [])

    def test_unlisted_sender_refused_at_accept(self) -> None:
        """
        A connection from an address outside C{proxy_from} is refused at accept (no protocol:
        Twisted closes the socket before reading a byte, so a header it would send is never
        looked at), logged as C{conn.reject} C{reason=proxy-sender} with its own address,
        and counted as a C{format_error} offence against that address.
        """
        with capturedLogs() as events:
            wrapper, _ = self.accept(OUTSIDER)
        self.assertIsNone(wrapper)
        self.assertEqual(self.app.addresses, [])
        self.assertEqual(self.factory.pending, 0)
        self.assertEqual(
            self.rejects(events), [("proxy-sender", "10.0.1.9:40001", "format_error")]
        )
        self.assertEqual(self.app.admission.offences, [("10.0.1.9", "format_error")])

    def test_network_boundary(self) -> None:
        """
        The first and last addresses of a listed network are senders; the address just
        before it and the one just past it are not (IPv4 and IPv6).
        """
        for host, allowed in (
            ("10.0.0.0", True),
            ("10.0.0.255", True),
            ("9.255.255.255", False),
            ("10.0.1.0", False),
            ("2001:db8::", True),
            ("2001:db8::ffff:ffff:ffff:ffff", True),
            ("2001:db8:0:1::", False),
            ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", False),
        ):
            kind = IPv6Address if ":" in host else IPv4Address
            wrapper, _ = self.accept(kind("TCP", host, 1))
            self.assertEqual(wrapper is not None, allowed, host)

    def test_single_address_boundary(self) -> None:
        """
        A bare address lists that one host: the next address is refused.
        """
        senders = Senders.of(["192.0.2.10"])
        self.assertTrue(senders.allows(IPv4Address("TCP", "192.0.2.10", 1)))
        self.assertFalse(senders.allows(IPv4Address("TCP", "192.0.2.11", 1)))
        self.assertFalse(senders.allows(IPv4Address("TCP", "192.0.2.9", 1)))

    def test_default_is_this_host_only(self) -> None:
        """
        Without C{proxy_from}, loopback (127.0.0.0/8, ::1, IPv4-mapped loopback) and unix
        peers may send a header; the first address past 127.0.0.0/8, any other address, and
        a peer that is not an IP address may not.
        """
        senders = ProxyHeaderFactory(AppFactory(), Clock()).senders
        for address, allowed in (
            (IPv4Address("TCP", "127.0.0.1", 1), True),
            (IPv4Address("TCP", "127.255.255.255", 1), True),
            (IPv4Address("TCP", "128.0.0.0", 1), False),
            (IPv4Address("TCP", "126.255.255.255", 1), False),
            (IPv6Address("TCP", "::1", 1), True),
            (IPv6Address("TCP", "::2", 1), False),
            (IPv6Address("TCP", "::ffff:127.0.0.1", 1), True),
            (IPv6Address("TCP", "::ffff:10.0.0.1", 1), False),
            (UNIXAddress(b"/run/ng.sock"), True),
            (HostnameAddress(b"localhost", 1), False),
            (None, False),
        ):
            self.assertEqual(senders.allows(address), allowed, address)

    def test_ipv4_mapped_peer_matches_its_ipv4_network(self) -> None:
        """
        On a dual-stack listener an IPv4 sender's peer address is IPv4-mapped IPv6: it is
        matched as the IPv4 address it stands for, at the network's exact edge.
        """
        self.assertIsNotNone(self.accept(IPv6Address("TCP", "::ffff:10.0.0.255", 1))[0])
        self.assertIsNone(self.accept(IPv6Address("TCP", "::ffff:10.0.1.0", 1))[0])

    def test_missing_header_from_listed_sender_refused_as_sender_offence(self) -> None:
        """
        A listed sender whose connection starts with anything but a PROXY header (no header:
        a client or proxy speaking NGP/1 straight away) is closed without building anything,
        logged C{reason=proxy-header}, and the offence is the sender's.
        """
        wrapper, transport = self.accept(SENDER)
        with capturedLogs() as events:
            wrapper.dataReceived(b"AUTH SCRAM-SHA-256 x\r\n")
        self.assertFalse(transport.connected)
        self.assertEqual(self.app.addresses, [])
        self.assertEqual(
            self.rejects(events), [("proxy-header", "10.0.0.9:40000", "format_error")]
        )
        self.assertEqual(self.app.admission.offences, [("10.0.0.9", "format_error")])

    def test_malformed_header_is_the_senders_offence_not_the_claimed_address(self) -> None:
        """
        A malformed header that names an address (here a bad port after a valid source) is
        charged to the sender's address, never to the address the header claims.
        """
        wrapper, transport = self.accept(SENDER)
        with capturedLogs() as events:
            wrapper.dataReceived(b"PROXY TCP4 192.0.2.7 198.51.100.1 99999 7701\r\n")
        self.assertFalse(transport.connected)
        self.assertEqual(len(self.rejects(events)), 1)
        self.assertEqual(self.app.admission.offences, [("10.0.0.9", "format_error")])

    def test_late_header_is_a_timeout_offence(self) -> None:
        """
        A listed sender that sends no complete header within L{HEADER_TIMEOUT} is aborted,
        logged C{conn.timeout}, and charged a C{timeout} offence.
        """
        wrapper, transport = self.accept(SENDER)
        wrapper.dataReceived(V1[:5])
        with capturedLogs() as events:
            self.clock.advance(HEADER_TIMEOUT)
        self.assertFalse(transport.connected)
        [event] = [e for e in events if e.get("event") == "conn.timeout"]
        self.assertEqual((event["which"], event["offence"]), ("proxy-header", "timeout"))
        self.assertEqual(self.app.admission.offences, [("10.0.0.9", "timeout")])

    def test_truncated_header_then_close_is_an_offence(self) -> None:
        """
        Part of a header, then the end of the connection: logged and charged as a malformed
        header (once); a connection that ends before its first byte (a TCP health check) is
        neither logged nor an offence.
        """
        wrapper, transport = self.accept(SENDER)
        wrapper.dataReceived(v2()[:20])
        with capturedLogs() as events:
            transport.loseConnection()
        self.assertEqual(
            [e["why"] for e in events if e.get("event") == "conn.reject"],
            ["closed before the header was complete"],
        )
        self.assertEqual(self.app.admission.offences, [("10.0.0.9", "format_error")])
        wrapper, transport = self.accept(SENDER)
        with capturedLogs() as events:
            transport.loseConnection()
        self.assertEqual(list(events), [])
        self.assertEqual(len(self.app.admission.offences), 1)
        self.assertEqual(self.factory.pending, 0)

    def test_local_from_listed_sender_uses_the_real_endpoints(self) -> None:
        """
        A version 2 C{LOCAL} header (HAProxy's health check), a version 1 C{PROXY UNKNOWN}
        and a version 2 C{PROXY} header of unspecified family from a listed sender: the
        connection goes on with its real endpoints (the sender's own address, ours as the
        host), no offence.
        """
        unspecified = V2_PREFIX + bytes([0x21, 0x00]) + struct.pack("!H", 0)
        for header in (v2(command=0), b"PROXY UNKNOWN\r\n", unspecified):
            app = AdmittedApp()
            self.factory.wrappedFactory = app
            wrapper, transport = self.accept(SENDER)
            wrapper.dataReceived(header)
            self.assertEqual(app.addresses, [SENDER], header)
            self.assertEqual(app.built[0].transport.getHost(), transport.getHost(), header)
            self.assertTrue(transport.connected, header)
            self.assertEqual(app.admission.offences, [], header)

    def test_refusals_aggregated_offences_each_counted(self) -> None:
        """
        A flood of connections from one unlisted address is logged one by one only for the
        first 3 in an interval, then summarised once (C{conn.reject.summary}); every one of
        them is an offence.
        """
        with capturedLogs() as events:
            for _ in range(10):
                self.assertIsNone(self.accept(OUTSIDER)[0])
            self.clock.advance(60)
        self.assertEqual(len(self.rejects(events)), 3)
        [summary] = [e for e in events if e.get("event") == "conn.reject.summary"]
        self.assertEqual((summary["reason"], summary["count"]), ("proxy-sender", 7))
        self.assertEqual(len(self.app.admission.offences), 10)

    def test_offences_found_under_wrapping_factories(self) -> None:
        """
        Offences reach the admission of the application's factory also when other wrapping
        factories sit between (a TLS listener wraps the gateway's factory), and the real
        L{Admission} shows the sender, not the header's address, with points.
        """
        admission = Admission(AdmissionPolicy(), self.clock)
        inner = AdmittingFactory(AppFactory(), admission)
        factory = ProxyHeaderFactory(
            WrappingFactory(WrappingFactory(inner)),
            self.clock,
            senders=Senders.of(["10.0.0.0/24"]),
        )
        self.assertIsNone(factory.buildProtocol(OUTSIDER))
        self.assertEqual([row[0] for row in admission.penalties()], ["10.0.1.9/32"])

    def test_without_admission_refusals_are_still_logged(self) -> None:
        """
        A factory with no admission anywhere: the refusal is logged and nothing fails.
        """
        factory = ProxyHeaderFactory(AppFactory(), self.clock, senders=Senders.of(["10.0.0.1"]))
        with capturedLogs() as events:
            self.assertIsNone(factory.buildProtocol(OUTSIDER))
        self.assertEqual(
            self.rejects(events), [("proxy-sender", "10.0.1.9:40001", "format_error")]
        )


def big_v2(source: str = "192.0.2.7") -> bytes:
    """
    The longest version 2 header: an IPv4 TCP address block and one TLV filling the
    header's 65535 bytes (16 + 65535 bytes in all).
    """
    block = socket.inet_aton(source) + socket.inet_aton("198.51.100.1")
    block += struct.pack("!HH", 51234, 7701)
    size = 0xFFFF - len(block) - 3
    block += b"\xe1" + struct.pack("!H", size) + b"Q" * size
    return V2_PREFIX + bytes([0x21, 0x11]) + struct.pack("!H", len(block)) + block


def held_objects(root: object, skip: tuple[object, ...], depth: int = 4) -> list[object]:
    """
    The objects reachable from C{root}'s attributes (through instance attributes, slots and
    containers, C{depth} levels down), other than those in C{skip}.
    """
    found: list[object] = []
    seen = {id(s) for s in skip} | {id(root)}
    level: list[object] = [root]
    for _ in range(depth):
        following: list[object] = []
        for item in level:
            if isinstance(item, dict):
                children = [*item.keys(), *item.values()]
            elif isinstance(item, (list, tuple, set, frozenset)):
                children = list(item)
            elif isinstance(item, (bytes, bytearray, memoryview, str, int, float)):
                children = []
            else:
                children = list(getattr(item, "__dict__", {}).values())
                for cls in type(item).__mro__:
                    for name in getattr(cls, "__slots__", ()):
                        if hasattr(item, name):
                            children.append(getattr(item, name))
            for child in children:
                if id(child) not in seen:
                    seen.add(id(child))
                    found.append(child)
                    following.append(child)
        level = following
    return found


class HeaderKeptTests(unittest.TestCase):
    """
    After its header is read, a connection keeps only the header's two addresses, not the
    header's bytes (a version 2 header may carry 64 KiB of TLVs a proxy chose to send).
    """

    def test_raw_header_bytes_not_held_after_a_64k_tlv_header(self) -> None:
        """
        After the longest version 2 header (one 65,520-byte TLV), nothing the wrapper holds
        (its own attributes, apart from the transport, the factory and the application's
        protocol) is bytes longer than 64 or Twisted's C{ProxyInfo}, and the header's
        addresses still reach the application and C{getPeer}/C{getHost}.
        """
        clock = Clock()
        app = AppFactory()
        factory = ProxyHeaderFactory(app, clock)
        wrapper, transport = accepted(factory, PROXY_ADDRESS)
        header = big_v2()
        self.assertEqual(len(header), 16 + 0xFFFF)
        for at in range(0, len(header), 4096):  # in pieces, as it comes off a socket
            wrapper.dataReceived(header[at : at + 4096])
        wrapper.dataReceived(b"PING\r\n")
        client = IPv4Address("TCP", "192.0.2.7", 51234)
        self.assertEqual(app.addresses, [client])
        self.assertEqual(app.built[0].data, b"PING\r\n")
        self.assertEqual(wrapper.getPeer(), client)
        self.assertEqual(wrapper.getHost(), IPv4Address("TCP", "198.51.100.1", 7701))
        held = held_objects(wrapper, (transport, factory, app.built[0]))
        large = [o for o in held if isinstance(o, (bytes, bytearray, memoryview)) and len(o) > 64]
        self.assertEqual(large, [])
        self.assertEqual([o for o in held if isinstance(o, ProxyInfo)], [])


class BlockedSenderTests(unittest.TestCase):
    """
    A sender blocked by its own PROXY-layer offences is refused at accept, as admission
    refuses a blocked source: no byte read, no new offence, the refusal logged in
    aggregate; its connections already waiting for their header are charged as before.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.admission = Admission(AdmissionPolicy(), self.clock)
        self.app = AdmittingFactory(AppFactory(), self.admission)
        self.factory = ProxyHeaderFactory(
            self.app, self.clock, senders=Senders.of(["10.0.0.0/24"])
        )

    def accept(self, peer: Any = SENDER, factory: Any = None) -> tuple[Any, Any]:
        return accepted(factory or self.factory, peer)

    def offend(self, times: int, factory: Any = None) -> None:
        for _ in range(times):
            wrapper, _ = self.accept(SENDER, factory)
            wrapper.dataReceived(b"GET / HTTP/1.0\r\n")

    def row(self, admission: Admission | None = None) -> tuple[str, float, int]:
        [row] = (admission or self.admission).penalties()
        return row

    def test_blocked_sender_refused_at_accept_without_a_new_offence(self) -> None:
        """
        Three malformed headers block the sender for 10 s; then 50 more connections from it
        are each refused at accept (no protocol built) and change neither its offences (3)
        nor its block, and only the first 3 are logged one by one (C{reason=penalised}, no
        offence), the rest in one summary.
        """
        self.offend(3)
        source, left, offences = self.row()
        self.assertEqual((source, round(left, 3), offences), ("10.0.0.9/32", 10.0, 3))
        with capturedLogs() as events:
            for _ in range(50):
                self.assertEqual(self.accept(), (None, None))
            self.clock.advance(5)
            self.assertEqual(self.row(), ("10.0.0.9/32", 5.0, 3))
            self.clock.advance(10)
        rejects = [e for e in events if e.get("event") == "conn.reject"]
        self.assertEqual([(e["reason"], e["offence"]) for e in rejects], [("penalised", None)] * 3)
        [summary] = [e for e in events if e.get("event") == "conn.reject.summary"]
        self.assertEqual((summary["reason"], summary["count"]), ("penalised", 47))
        self.assertEqual(self.factory.pending, 0)

    def test_accepted_again_at_the_end_of_the_block(self) -> None:
        """
        One tick before its block ends the sender is still refused at accept; at its end it
        is accepted and its header is read, with the client's address reaching admission.
        """
        self.offend(3)
        self.clock.advance(10.0 - 0.001)
        self.assertIsNone(self.accept()[0])
        self.clock.advance(0.001)
        wrapper, transport = self.accept()
        self.assertIsNotNone(wrapper)
        wrapper.dataReceived(V1)
        self.assertTrue(transport.connected)
        self.assertEqual(wrapper.getPeer().host, "192.0.2.7")

    def test_blocked_unlisted_address_is_not_charged_again(self) -> None:
        """
        An address outside C{proxy_from} is charged for each connection until it is
        blocked (3, with the defaults); from then on its connections are refused as
        penalised, without a fourth offence or a longer block.
        """
        for _ in range(3):
            self.assertIsNone(self.accept(OUTSIDER)[0])
        self.assertEqual(self.row(), ("10.0.1.9/32", 10.0, 3))
        with capturedLogs() as events:
            for _ in range(20):
                self.assertIsNone(self.accept(OUTSIDER)[0])
        self.assertEqual(self.row(), ("10.0.1.9/32", 10.0, 3))
        self.assertEqual(
            {e["reason"] for e in events if e.get("event") == "conn.reject"}, {"penalised"}
        )

    def test_cleared_block_lets_the_sender_in_and_is_forgotten(self) -> None:
        """
        After C{ctl penalties clear} (admission's C{clear_penalties}) a sender blocked by its
        own offences is accepted at once and its header read; its own record is forgotten
        with it, so a block a header's client then earns on the sender's key does not
        refuse it either.
        """
        self.offend(3)
        self.assertIsNone(self.accept()[0])
        self.assertEqual(self.admission.clear_penalties(), 1)
        wrapper, transport = self.accept()
        self.assertIsNotNone(wrapper)
        wrapper.dataReceived(V1)
        self.assertEqual(wrapper.getPeer().host, "192.0.2.7")
        for _ in range(3):  # a client behind the sender, named with the sender's address
            self.admission.offence(IPv4Address("TCP", "10.0.0.9", 50000), "early_talker")
        self.assertIsNotNone(self.admission.blocked_for(SENDER))
        self.assertIsNotNone(self.accept()[0])

    def test_cleared_block_not_revived_by_a_clients_block_before_the_next_accept(self) -> None:
        """
        A clear lifts the sender's own block even if, before the sender connects again, a
        client behind it (named with the sender's address) gets the key blocked: the sender
        is accepted (the client's block is the client's), as it is when the block on the key
        is relayed from another worker after the clear.
        """
        self.offend(3)
        self.assertIsNone(self.accept()[0])
        self.assertEqual(self.admission.clear_penalties(), 1)
        for _ in range(3):
            self.admission.offence(IPv4Address("TCP", "10.0.0.9", 50000), "early_talker")
        self.assertIsNotNone(self.admission.blocked_for(SENDER))
        self.assertIsNotNone(self.accept()[0])

        admission = SharedAdmission(AdmissionPolicy(), self.clock, lambda *_: None)
        factory = ProxyHeaderFactory(
            AdmittingFactory(AppFactory(), admission),
            self.clock,
            senders=Senders.of(["10.0.0.0/24"]),
        )
        self.offend(3, factory)
        self.assertIsNone(self.accept(SENDER, factory)[0])
        admission.clear_penalties("10.0.0.9")
        admission.apply_block("10.0.0.9/32", 600.0, 3.0)  # a client's block, relayed
        self.assertIsNotNone(self.accept(SENDER, factory)[0])

    def test_own_offences_after_a_clear_block_again(self) -> None:
        """
        The other side: after a clear, the sender's own offences count from zero and block
        it again at the threshold (refused at accept, no new offence), also when the clear
        came before its first offence at this listener.
        """
        self.admission.clear_penalties()
        self.offend(3)
        self.assertIsNone(self.accept()[0])
        self.assertEqual(self.admission.clear_penalties(), 1)
        self.offend(2)
        self.assertIsNotNone(self.accept()[0])
        self.offend(1)
        self.assertIsNone(self.accept()[0])

    def test_a_worker_given_the_block_judges_without_charging(self) -> None:
        """
        A worker that only got the sender's block relayed (its own record there is empty)
        accepts the sender's connections and judges them: their malformed headers count
        toward the sender's own points at that worker but not toward admission's (the
        offences stay the relayed block's); at its own threshold (3) it refuses the sender
        at accept too.
        """
        admission = SharedAdmission(AdmissionPolicy(), self.clock, lambda *_: None)
        admission.apply_block("10.0.0.9/32", 10.0, 3.0)
        factory = ProxyHeaderFactory(
            AdmittingFactory(AppFactory(), admission),
            self.clock,
            senders=Senders.of(["10.0.0.0/24"]),
        )
        for _ in range(3):
            wrapper, transport = self.accept(SENDER, factory)
            self.assertIsNotNone(wrapper)
            wrapper.dataReceived(b"GET / HTTP/1.0\r\n")
            self.assertFalse(transport.connected)
        self.assertEqual(self.row(admission), ("10.0.0.9/32", 10.0, 0))
        self.assertEqual(self.accept(SENDER, factory), (None, None))

    def test_connections_waiting_before_the_block_are_still_charged(self) -> None:
        """
        The other side: a connection from the sender that was already waiting for its
        header when the block started is still judged when it times out, and its offence
        counts (as admission charges a connection it let in before a block): a fourth
        point, the block extended to 20 s.
        """
        waiting, _ = self.accept()
        self.clock.advance(5.0)
        self.offend(3)
        self.assertEqual(self.row()[2], 3)
        self.clock.advance(HEADER_TIMEOUT - 5.0)
        source, left, offences = self.row()
        self.assertEqual((source, offences), ("10.0.0.9/32", 4))
        self.assertAlmostEqual(left, 20.0, delta=0.01)

    def test_two_workers_do_not_escalate_each_other(self) -> None:
        """
        Two workers whose blocks are relayed to each other (as the supervisor does): a
        sender blocked by worker one's offences keeps opening connections at both; neither
        charges it again, so its block stays the first one (10 s) at both instead of
        doubling back and forth.
        """
        admissions: list[SharedAdmission] = []

        def relay(sender: int) -> Any:
            def report(key: str, seconds: float, points: float) -> None:
                admissions[1 - sender].apply_block(key, seconds, points)

            return report

        factories = []
        for worker in range(2):
            admission = SharedAdmission(AdmissionPolicy(), self.clock, relay(worker))
            admissions.append(admission)
            factories.append(
                ProxyHeaderFactory(
                    AdmittingFactory(AppFactory(), admission),
                    self.clock,
                    senders=Senders.of(["10.0.0.0/24"]),
                )
            )
        self.offend(3, factories[0])
        for _ in range(20):
            for factory in factories:
                wrapper, _ = self.accept(SENDER, factory)
                if wrapper is not None:
                    wrapper.dataReceived(b"GET / HTTP/1.0\r\n")
        for admission in admissions:
            self.assertAlmostEqual(self.row(admission)[1], 10.0, delta=0.01)


class EarlyTalkerApp(Factory):
    """
    The application behind admission: each of its connections is a hostile client that
    talks first and is charged an C{early_talker} offence for it (as the gateway does).
    """

    def __init__(self) -> None:
        self.addresses: list[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        self.addresses.append(addr)
        return EarlyTalker()


class EarlyTalker(Protocol):
    """
    One hostile client of L{EarlyTalkerApp}.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.offence("early_talker")  # type: ignore[attr-defined]


class HeaderClientBlockTests(unittest.TestCase):
    """
    A block that a header's client earned never refuses the sender's connections, even when
    the client's address is the sender's own or shares its source key: only the sender's
    own PROXY-layer offences can block the sender at a C{haproxy:} listener.
    """

    def test_client_with_the_senders_address_blocked_others_still_greeted(self) -> None:
        """
        Behind the real gateway: a hostile client whose header names the sender's own
        address (10.0.0.9) talks early until its key is blocked; the sender's next
        connections are still accepted, those naming other clients greeted, the one naming
        10.0.0.9 refused by admission (C{ERR BUSY penalised}), and none refused at accept.
        """
        g = ProxiedGateway(self)
        for _ in range(3):
            g.connect("10.0.0.9", b"PING\r\n")
            g.clock.advance(0.5)  # past the greeting delay (0.1 s)
        sender = IPv4Address("TCP", "10.0.0.9", 40000)
        self.assertIsNotNone(g.gateway.admission.blocked_for(sender))
        for _ in range(5):
            for client in ("198.51.100.7", "203.0.113.9"):
                _, transport = g.connect(client)
                g.clock.advance(0.5)
                [greeting] = g.lines(transport)
                self.assertTrue(greeting.startswith(b"NETGUARD/1 "), greeting)
        self.assertIsNotNone(g.gateway.admission.blocked_for(sender))  # 6.5 s of 10 s
        with capturedLogs() as events:
            g.connect("10.0.0.9")
            g.clock.advance(0.5)
        [refusal] = [e for e in events if e.get("event") == "conn.reject"]
        self.assertEqual(refusal["reason"], "penalised")
        self.assertTrue(refusal["peer"].startswith("10.0.0.9:"), refusal)
        self.assertIn("conn_id", refusal)  # admission's refusal of the client
        self.assertEqual(
            [
                e
                for e in g.named("conn.reject")
                if e.get("reason") == "penalised" and "conn_id" not in e
            ],
            [],
        )

    def test_client_sharing_the_senders_ipv6_64_blocked_sender_accepted(self) -> None:
        """
        With the default C{ipv6_prefix} 64, a hostile client whose header names another
        address of the sender's /64 talks early (3 points) and is blocked under the
        sender's key; the sender's next 20 connections are accepted and hand the header's
        client (outside that /64) to the application, and the key's offences stay the
        client's 1.
        """
        clock = Clock()
        admission = Admission(AdmissionPolicy(), clock)
        app = EarlyTalkerApp()
        factory = ProxyHeaderFactory(
            AdmittingFactory(app, admission), clock, senders=Senders.of(["2001:db8:1:2::9"])
        )
        sender = IPv6Address("TCP", "2001:db8:1:2::9", 40000)

        def connect(header: bytes, data: bytes = b"") -> Any:
            wrapper, _ = accepted(factory, sender)
            self.assertIsNotNone(wrapper, "refused at accept")
            wrapper.dataReceived(header + data)
            return wrapper

        connect(b"PROXY TCP6 2001:db8:1:2::77 2001:db8::1 5000 7701\r\n", b"X")
        self.assertEqual(admission.penalties(), [("2001:db8:1:2::/64", 10.0, 1)])
        for _ in range(20):
            wrapper = connect(V1)
            self.assertEqual(wrapper.getPeer().host, "192.0.2.7")
        self.assertEqual(len(app.addresses), 21)
        self.assertEqual(app.addresses[-1].host, "192.0.2.7")
        self.assertEqual(admission.penalties(), [("2001:db8:1:2::/64", 10.0, 1)])

    def test_clients_points_do_not_lend_the_sender_a_block(self) -> None:
        """
        A client named with the sender's address has 2 offences (1 point each, as for a
        failed login); the sender's own first
        malformed header makes 3 on the shared key, which blocks it, yet the sender is
        still accepted (its own points: 1). Its next two malformed headers, sent while the
        key is blocked, count toward its own points only (the key's offences stay 3); at
        its own third it is refused at accept, without a new offence.
        """
        clock = Clock()
        admission = Admission(AdmissionPolicy(), clock)
        factory = ProxyHeaderFactory(
            AdmittingFactory(AppFactory(), admission), clock, senders=Senders.of(["10.0.0.9"])
        )

        def send(data: bytes) -> Any:
            wrapper, _ = accepted(factory, SENDER)
            if wrapper is None:
                return None
            wrapper.dataReceived(data)
            return wrapper

        def junk() -> Any:
            return send(b"GET / HTTP/1.0\r\n")

        client = IPv4Address("TCP", "10.0.0.9", 5000)  # as the gateway charges a client
        for _ in range(2):
            admission.offence(client, "auth_failure")
        self.assertIsNone(admission.blocked_for(SENDER))
        self.assertIsNotNone(junk())
        self.assertEqual(admission.penalties(), [("10.0.0.9/32", 10.0, 3)])
        self.assertIsNotNone(junk())
        self.assertIsNotNone(junk())
        self.assertEqual(admission.penalties(), [("10.0.0.9/32", 10.0, 3)])
        with capturedLogs() as events:
            self.assertIsNone(junk())
        self.assertEqual(
            [(e["reason"], e["offence"]) for e in events if e.get("event") == "conn.reject"],
            [("penalised", None)],
        )
        self.assertEqual(admission.penalties(), [("10.0.0.9/32", 10.0, 3)])


class ListenerStringTests(unittest.TestCase):
    """
    C{haproxy:[proxy_from=...:]<listener>}: parsed, normalized and explained by
    C{check_listener} (what C{netguard check-config} shows), built by
    L{proxy_listener_endpoint}.
    """

    def test_proxy_from_normalized_and_shown(self) -> None:
        """
        Addresses become /32 (/128) networks, IPv4-mapped networks their IPv4 form, and the
        exposure names the senders.
        """
        listener = check_listener(
            "haproxy:proxy_from=192.0.2.10,10.1.0.0/24,\\:\\:ffff\\:10.2.0.0/112,"
            "2001\\:db8\\:\\:/32:tcp:7701:interface=0.0.0.0"
        )
        self.assertEqual(
            listener.description,
            "haproxy:proxy_from=192.0.2.10/32,10.1.0.0/24,10.2.0.0/16,2001\\:db8\\:\\:/32:"
            "tcp:7701:interface=0.0.0.0",
        )
        self.assertIn(
            "PROXY headers accepted only from 192.0.2.10/32, 10.1.0.0/24, 10.2.0.0/16, "
            "2001:db8::/32",
            listener.exposure,
        )
        self.assertIsNone(listener.warning)

    def test_default_is_loopback_and_warned_on_a_network_listener(self) -> None:
        """
        Without C{proxy_from} the senders are this host's; a loopback listener is not warned
        about, a network one is (a proxy elsewhere would be refused).
        """
        local = check_listener("haproxy:tcp:7701:interface=127.0.0.1")
        self.assertIn("PROXY headers accepted only from 127.0.0.0/8, ::1/128", local.exposure)
        self.assertIsNone(local.warning)
        network = check_listener("haproxy:tcp:7701:interface=0.0.0.0")
        self.assertIn("no proxy_from=", network.warning or "")

    def test_anyone_is_warned(self) -> None:
        """
        A /0 network in C{proxy_from} is accepted but warned about.
        """
        listener = check_listener("haproxy:proxy_from=0.0.0.0/0:tcp:7701:interface=127.0.0.1")
        self.assertIn("anyone who can reach it", listener.warning or "")

    def test_bad_proxy_from_refused(self) -> None:
        """
        An empty list, host bits in a network, a word, too many entries, an option other
        than C{proxy_from} after C{haproxy:}, and C{proxy_from} on a unix listener (its mode
        decides) are refused with a message naming the problem.
        """
        for description, expected in (
            ("haproxy:proxy_from=:tcp:7701", "needs addresses or networks"),
            ("haproxy:proxy_from=10.0.0.1/8:tcp:7701", "host bits set"),
            ("haproxy:proxy_from=proxy.example:tcp:7701", "not an IP address or network"),
            ("haproxy:proxy_from=10.0.0.1,,10.0.0.2:tcp:7701", "needs addresses"),
            (
                "haproxy:proxy_from="
                + ",".join(f"10.0.0.{i}" for i in range(MAX_PROXY_FROM + 1))
                + ":tcp:7701",
                f"more than {MAX_PROXY_FROM}",
            ),
            ("haproxy:from=10.0.0.1:tcp:7701", "unknown option"),
            ("haproxy:proxy_from=10.0.0.1", "needs a listener"),
            ("haproxy:proxy_from=10.0.0.1:unix:/run/ng.sock:mode=600", "does not apply"),
        ):
            with self.assertRaises(EndpointError, msg=description) as caught:
                check_listener(description)
            self.assertIn(expected, caught.exception.message, description)

    def test_exactly_max_proxy_from_accepted(self) -> None:
        """
        L{MAX_PROXY_FROM} entries are accepted (one more is not: above).
        """
        entries = ",".join(f"10.0.0.{i}" for i in range(MAX_PROXY_FROM))
        self.assertEqual(len(parse_proxy_from(entries)), MAX_PROXY_FROM)

    def test_backlog_added_after_proxy_from(self) -> None:
        """
        The default backlog goes to the listener underneath, C{proxy_from} kept in front.
        """
        self.assertEqual(
            with_default_backlog("haproxy:proxy_from=10.0.0.1/32:tcp:7701"),
            "haproxy:proxy_from=10.0.0.1/32:tcp:7701:backlog=511",
        )

    def test_endpoint_built_with_its_senders(self) -> None:
        """
        L{proxy_listener_endpoint} listens on the listener underneath with the senders of
        the string (the default when it names none).
        """
        reactor = MemoryReactor()
        endpoint = proxy_listener_endpoint(
            reactor, "haproxy:proxy_from=10.0.0.1:tcp:7701:interface=127.0.0.1"
        )
        self.assertEqual([str(n) for n in endpoint.senders.networks], ["10.0.0.1/32"])
        endpoint.listen(AppFactory())
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (7701, "127.0.0.1"))
        self.assertEqual(factory.senders, endpoint.senders)
        default = proxy_listener_endpoint(reactor, "haproxy:tcp:7702")
        self.assertEqual([str(n) for n in default.senders.networks], ["127.0.0.0/8", "::1/128"])

    def test_check_config_shows_senders_and_warns(self) -> None:
        """
        C{netguard check-config}'s text shows each C{haproxy:} listener's senders and its
        warning.
        """
        config = load_config(
            None,
            {"listen": ["haproxy:tcp:7701:interface=0.0.0.0"], "state_dir": self.mktemp()},
        )
        text = describe(config)
        self.assertIn("PROXY headers accepted only from 127.0.0.0/8, ::1/128", text)
        self.assertIn(
            '# warning: listen[0] "haproxy:tcp:7701:interface=0.0.0.0": accepts PROXY headers '
            "only from this host (no proxy_from=)",
            text,
        )


PASSWORD = "correct horse battery staple"


def _b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


class ProxiedGateway:
    """
    The real L{GatewayFactory} (admission, tickets, peer checks) behind a
    L{ProxyHeaderFactory} whose only sender is 10.0.0.9, on a L{Clock}, with every log
    event captured and the peer checks each connection starts recorded.
    """

    def __init__(self, test: unittest.TestCase) -> None:
        self.test = test
        self.clock = Clock()
        self.clock.advance(1_800_000_000.0)
        config = load_config(None, {"state_dir": "/nonexistent-netguard-test"})
        users = UserStore.from_records([make_record("alice", PASSWORD)])
        self.gateway = GatewayFactory(config, users, self.clock, ticket_key=bytes(range(32)))
        self.checks: list[tuple[Any, Any]] = []
        self.gateway.start_peer_checks = lambda peer, local: self.checks.append(  # type: ignore[method-assign]
            (peer, local)
        )
        self.factory = ProxyHeaderFactory(
            self.gateway, self.clock, senders=Senders.of(["10.0.0.9"])
        )
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.ports = iter(range(40000, 50000))

    def connect(self, client: str, data: bytes = b"") -> tuple[Any, Any]:
        """
        A connection from the sender whose v1 header names C{client} as the source (and
        198.51.100.1:7701 as the destination), followed by C{data}; return the wrapper and
        the sender's transport.
        """
        sender = IPv4Address("TCP", "10.0.0.9", next(self.ports))
        wrapper = self.factory.buildProtocol(sender)
        transport = StringTransport(peerAddress=sender)
        wrapper.makeConnection(transport)
        header = f"PROXY TCP4 {client} 198.51.100.1 {next(self.ports)} 7701\r\n"
        wrapper.dataReceived(header.encode() + data)
        self.test.addCleanup(self.close, wrapper)
        return wrapper, transport

    def close(self, wrapper: Any) -> None:
        session = wrapper.wrappedProtocol
        state = getattr(session, "state", None)  # an admission refusal has none
        if state is not None and state.value != "closed":
            session.connectionLost(None)

    def lines(self, transport: Any) -> list[bytes]:
        out = transport.value()
        transport.clear()
        return [line for line in out.split(b"\r\n") if line]

    def ticket(self, client: str) -> bytes:
        """
        Log in through the proxy as C{client}, ask for a ticket; return the token.
        """
        wrapper, transport = self.connect(client)
        self.clock.advance(1.0)  # the greeting delay
        self.lines(transport)
        exchange = ClientExchange("alice", PASSWORD)
        wrapper.dataReceived(b"AUTH SCRAM-SHA-256 " + _b64(exchange.first()) + b"\r\n")
        [cont] = self.lines(transport)
        final = exchange.final(base64.b64decode(cont[5:]).decode())
        wrapper.dataReceived(b"CONT " + _b64(final) + b"\r\n")
        [ok] = self.lines(transport)
        self.test.assertTrue(ok.startswith(b"OK "), ok)
        wrapper.dataReceived(b"TICKET\r\n")
        [reply] = self.lines(transport)
        self.test.assertTrue(reply.startswith(b"OK TICKET "), reply)
        self.close(wrapper)
        return reply.split(b" ")[2]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]


class HeaderAddressUsedTests(unittest.TestCase):
    """
    Behind a PROXY header, what the gateway does per client uses the header's address, not
    the sender's: the log, admission's penalties, returning-client tickets' address block,
    and FCrDNS and ident (both started with the connection's addresses).
    """

    def test_ticket_address_block_is_the_headers(self) -> None:
        """
        A ticket issued to a client the header names as 192.0.2.10 is accepted into the
        lane from a header naming 192.0.2.77 (the same /24), and is another block's from a
        header naming 192.0.3.10, although all three came from the same sender 10.0.0.9
        (if the sender's address were the block, both would be accepted).
        """
        g = ProxiedGateway(self)
        first, second = g.ticket("192.0.2.10"), g.ticket("192.0.2.10")
        g.connect("192.0.2.77", b"RESUME " + first + b"\r\n")
        [accepted] = g.named("ticket.accepted")
        self.assertTrue(accepted["lane"])
        g.connect("192.0.3.10", b"RESUME " + second + b"\r\n")
        self.assertEqual(len(g.named("ticket.other_block")), 1)
        self.assertEqual(len(g.named("ticket.accepted")), 1)

    def test_penalty_and_log_use_the_header_address(self) -> None:
        """
        A client that talks before the greeting is an early talker: the offence is charged
        to the header's address (192.0.2.10/32), not the sender's, and the early talk is
        logged with the header's address and port.
        """
        g = ProxiedGateway(self)
        wrapper, _ = g.connect("192.0.2.10", b"PING\r\n")
        g.clock.advance(1.0)
        self.assertEqual([row[0] for row in g.gateway.admission.penalties()], ["192.0.2.10/32"])
        [talker] = g.named("proto.early_talker")
        self.assertTrue(talker["peer"].startswith("192.0.2.10:"), talker["peer"])

    def test_peer_checks_get_the_header_addresses(self) -> None:
        """
        FCrDNS and ident are started (with the greeting) with the header's source as the
        peer and its destination as our end of the connection (ident queries from there to
        the client's port 113).
        """
        g = ProxiedGateway(self)
        wrapper, _ = g.connect("192.0.2.10")
        g.clock.advance(1.0)
        [(peer, local)] = g.checks
        self.assertEqual(peer.host, "192.0.2.10")
        self.assertEqual((local.host, local.port), ("198.51.100.1", 7701))
