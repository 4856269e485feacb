"""
The gateway applying its peer-check policy (FCrDNS in C{require} mode) to real loopback
clients, against a real dnsmasq serving good and spoofed PTR records, and against a DNS
server written for the test that holds its answers.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.logger import capturedLogs
from twisted.names import dns
from twisted.trial import unittest

from netguard.client.protocol import ClientState, NGPClientProtocol, NGPError
from tests.integration import test_peer_real as peer_real
from tests.integration.util import RunningGateway, peer_unavailable, wait_for


class _DnsmasqGateway:
    """
    A real dnsmasq (good PTR for 127.0.0.1, spoofed for 127.0.0.2, none for others) and the
    real gateway configured with C{config} (C{{dns}} stands for dnsmasq's address). dnsmasq
    logs every query it receives to C{self.query_log}.
    """

    timeout = 60
    start_dnsmasq = peer_real.DnsmasqTests.start_dnsmasq
    config = ""
    listen = "tcp:0:interface=127.0.0.1"

    def setUp(self):
        if not os.access(peer_real.DNSMASQ, os.X_OK):
            peer_unavailable(f"{peer_real.DNSMASQ} not installed (Debian: dnsmasq-base)")
        self.query_log = os.path.abspath(self.mktemp())
        self.sentinels = 0
        records = [
            "--ptr-record=1.0.0.127.in-addr.arpa,good.test",
            "--host-record=good.test,127.0.0.1",
            "--ptr-record=2.0.0.127.in-addr.arpa,spoof.test",
            "--host-record=spoof.test,127.0.0.20",
            "--log-queries",
            f"--log-facility={self.query_log}",
        ]
        for _attempt in range(5):
            self.port = peer_real.free_dns_port()
            if self.start_dnsmasq(records) is None:
                break
        else:
            self.fail("dnsmasq did not start")
        running = RunningGateway(
            self,
            self.config.replace("{dns}", f"127.0.0.1:{self.port}"),
            {"listen": [self.listen]},
        )
        self.gateway = running.service
        self.gw_port = running.port()
        self.credentials = running.credentials

    @inlineCallbacks
    def session_from(self, source: str, service: str = "echo", client=None):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.gw_port, bindAddress=(source, 0))
        if client is None:
            client = NGPClientProtocol(self.credentials, service, clock=reactor)
        yield connectProtocol(endpoint, client)
        try:
            yield client.opened
        finally:
            client.transport.loseConnection()
            yield wait_for(lambda: not self.gateway.factory.sessions)

    @inlineCallbacks
    def ptr_queries(self, address: str):
        """
        How many PTR queries for C{address} dnsmasq received so far: a sentinel query is
        sent and awaited in the log first, so every earlier query is logged.
        """
        self.sentinels += 1
        sentinel = f"sentinel{self.sentinels}.test"
        query = dns.Message(id=4243, recDes=1)
        query.queries = [dns.Query(sentinel.encode("ascii"), dns.A, dns.IN)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(query.toStr(), ("127.0.0.1", self.port))

        def logged() -> str:
            with open(self.query_log, encoding="utf-8", errors="replace") as log:
                return log.read()

        yield wait_for(lambda: f"query[A] {sentinel} " in logged())
        reverse = ".".join(reversed(address.split("."))) + ".in-addr.arpa"
        return len(re.findall(rf"query\[PTR\] {re.escape(reverse)} from", logged()))


class GatewayFCrDNSTests(_DnsmasqGateway, unittest.TestCase):
    config = '[peer_checks]\nfcrdns = "require"\ndns_servers = ["{dns}"]\nfcrdns_timeout = 5.0\n'

    def test_confirmed_peer_may_authenticate(self):
        return self.session_from("127.0.0.1")

    @inlineCallbacks
    def test_spoofed_ptr_is_refused_before_any_password(self):
        failure = yield self.assertFailure(self.session_from("127.0.0.2"), NGPError)
        self.assertEqual(failure.code, "NOT_AUTHORIZED")
        self.assertEqual(self.gateway.factory.stats.counters["auth_fail"], 0)
        self.assertEqual(self.gateway.factory.stats.counters["auth_ok"], 0)

    @inlineCallbacks
    def test_no_ptr_is_refused(self):
        failure = yield self.assertFailure(self.session_from("127.0.0.9"), NGPError)
        self.assertEqual(failure.code, "NOT_AUTHORIZED")


class HeaderFirst(NGPClientProtocol):
    """
    A client that writes a PROXY header first, as HAProxy in front of the gateway does.
    """

    def __init__(self, header: bytes, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header = header

    def connectionMade(self) -> None:
        self.transport.write(self.header)
        super().connectionMade()


class ProxyHeaderPeerChecksTests(_DnsmasqGateway, unittest.TestCase):
    """
    Headers for which no ident query can be made (HAProxy's C{set-src} gives port 0; a v2
    header may pair an IPv4 source with an IPv6 destination), with C{ident = "log"} and a
    required FCrDNS: the client is greeted, and FCrDNS still decides.
    """

    listen = "haproxy:proxy_from=127.0.0.1/32:tcp:0:interface=127.0.0.1"
    config = (
        '[peer_checks]\nfcrdns = "require"\ndns_servers = ["{dns}"]\nfcrdns_timeout = 5.0\n'
        'ident = "log"\n'
    )

    def through_header(self, header: str) -> Deferred[Any]:
        client = HeaderFirst(
            header.replace("{port}", str(self.gw_port)).encode("ascii") + b"\r\n",
            self.credentials,
            "echo",
            clock=reactor,
        )
        return self.session_from("127.0.0.1", client=client)

    def test_port_zero_confirmed_peer_may_authenticate(self):
        return self.through_header("PROXY TCP4 127.0.0.1 127.0.0.1 0 {port}")

    @inlineCallbacks
    def test_port_zero_spoofed_peer_refused(self):
        failure = yield self.assertFailure(
            self.through_header("PROXY TCP4 127.0.0.2 127.0.0.1 0 {port}"), NGPError
        )
        self.assertEqual(failure.code, "NOT_AUTHORIZED")

    @inlineCallbacks
    def test_ipv4_source_ipv6_destination_spoofed_peer_refused(self):
        failure = yield self.assertFailure(
            self.through_header("PROXY TCP6 ::ffff:127.0.0.2 ::1 40000 {port}"), NGPError
        )
        self.assertEqual(failure.code, "NOT_AUTHORIZED")


class ServiceFCrDNSTests(_DnsmasqGateway, unittest.TestCase):
    """
    Peer checks off for the gateway, but one service requires a forward-confirmed peer:
    other services stay open to everyone, that one only to confirmed hosts.
    """

    config = (
        '[peer_checks]\ndns_servers = ["{dns}"]\n'
        '[services.echo]\nbackend = "builtin:echo"\nusers = ["*"]\n'
        '[services.vault]\nbackend = "builtin:echo"\nusers = ["*"]\nfcrdns = "require"\n'
    )

    def test_confirmed_peer_opens_the_strict_service(self):
        return self.session_from("127.0.0.1", "vault")

    @inlineCallbacks
    def test_spoofed_peer_refused_for_the_strict_service_only(self):
        failure = yield self.assertFailure(self.session_from("127.0.0.2", "vault"), NGPError)
        self.assertEqual(failure.code, "NOT_AUTHORIZED")
        yield self.session_from("127.0.0.2", "echo")

    @inlineCallbacks
    def test_bytes_sent_with_open_reach_the_strict_service(self):
        """
        Bytes written in the same packet as C{OPEN}, held while the service's FCrDNS check
        runs, are relayed once it passes, in order: none is dropped with the line buffer.
        """
        client = PipeliningClient(self.credentials, "vault", clock=reactor)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.gw_port)
        yield connectProtocol(endpoint, client)
        try:
            yield client.opened
            echoed = yield client.echoed
            self.assertEqual(echoed, PipeliningClient.payload)
        finally:
            client.transport.loseConnection()
            yield wait_for(lambda: not self.gateway.factory.sessions)


class PipeliningClient(NGPClientProtocol):
    """
    A client that sends its first bytes for the service in the same write as C{OPEN}, and
    collects what the service sends back.
    """

    payload = b"first bytes\r\nright after OPEN\x00 and more"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received = b""
        self.echoed: Deferred[bytes] = Deferred()

    def sendLine(self, line: bytes) -> None:
        if line.startswith(b"OPEN "):
            self.transport.write(line + self.delimiter + self.payload)
        else:
            super().sendLine(line)

    def service_data(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.payload) and not self.echoed.called:
            self.echoed.callback(self.received)


def fcrdns_events(events: list) -> list:
    return [e for e in events if e.get("event") == "peer.fcrdns"]


class ReopeningClient(NGPClientProtocol):
    """
    The real client, made to send C{OPEN} once more on the same connection after its first
    C{OPEN} is refused (the gateway keeps the connection after C{ERR NOT_AUTHORIZED}).
    """

    def __init__(self, credentials, service: str):
        super().__init__(credentials, service, clock=reactor)
        self.refusals: list[bytes] = []

    def lineReceived(self, line: bytes) -> None:
        if (
            self.state is ClientState.AWAIT_OPEN_OK
            and line.startswith(b"ERR ")
            and not (self.refusals)
        ):
            self.refusals.append(line)
            self.sendLine(b"OPEN " + self.service.encode("ascii"))
            return
        super().lineReceived(line)


class ServiceReusesLoggedCheckTests(_DnsmasqGateway, unittest.TestCase):
    """
    C{[peer_checks]} checks FCrDNS in C{"log"} mode and one service requires it: C{OPEN}
    of that service decides on the connection's own check.
    """

    config = (
        '[peer_checks]\nfcrdns = "log"\ndns_servers = ["{dns}"]\n'
        '[services.vault]\nbackend = "builtin:echo"\nusers = ["*"]\nfcrdns = "require"\n'
    )

    @inlineCallbacks
    def test_one_ptr_query_and_one_event_per_connection(self):
        """
        A confirmed peer opens the strict service: dnsmasq receives one PTR query for the
        connection (not a second one at C{OPEN}) and one C{peer.fcrdns} event is logged.
        """
        with capturedLogs() as events:
            yield self.session_from("127.0.0.1", "vault")
        self.assertEqual((yield self.ptr_queries("127.0.0.1")), 1)
        [event] = fcrdns_events(events)
        self.assertEqual(event["reason"], "confirmed")

    @inlineCallbacks
    def test_spoofed_peer_refused_at_open_from_the_same_check(self):
        """
        A spoofed PTR passes the C{"log"} check before login and is refused at C{OPEN} of
        the strict service, from that same check: one PTR query, one event.
        """
        with capturedLogs() as events:
            failure = yield self.assertFailure(self.session_from("127.0.0.2", "vault"), NGPError)
        self.assertEqual(failure.code, "NOT_AUTHORIZED")
        self.assertEqual((yield self.ptr_queries("127.0.0.2")), 1)
        self.assertEqual(len(fcrdns_events(events)), 1)


class ServiceStartsCheckOnceTests(_DnsmasqGateway, unittest.TestCase):
    """
    C{[peer_checks]} has FCrDNS off; one service requires it: the first C{OPEN} that needs
    the check starts it, and later C{OPEN}s on the same connection reuse it.
    """

    config = (
        '[peer_checks]\ndns_servers = ["{dns}"]\n'
        '[services.echo]\nbackend = "builtin:echo"\nusers = ["*"]\n'
        '[services.vault]\nbackend = "builtin:echo"\nusers = ["*"]\nfcrdns = "require"\n'
    )

    @inlineCallbacks
    def test_two_refused_opens_one_check(self):
        """
        A spoofed peer asks twice, on one connection, to open the strict service: both are
        refused C{NOT_AUTHORIZED}, from one check (one PTR query, one C{peer.fcrdns}
        event), and the connection stays usable after the first refusal.
        """
        client = ReopeningClient(self.credentials, "vault")
        with capturedLogs() as events:
            failure = yield self.assertFailure(
                self.session_from("127.0.0.2", client=client), NGPError
            )
        self.assertEqual(failure.code, "NOT_AUTHORIZED")
        self.assertEqual([line.split(b" ")[1] for line in client.refusals], [b"NOT_AUTHORIZED"])
        self.assertEqual((yield self.ptr_queries("127.0.0.2")), 1)
        self.assertEqual(len(fcrdns_events(events)), 1)
        refused = [e for e in events if e.get("event") == "peer.refused"]
        self.assertEqual(len(refused), 2)

    @inlineCallbacks
    def test_no_check_for_services_that_do_not_require_it(self):
        """
        A connection that opens only a service without C{fcrdns = "require"} makes no DNS
        query at all.
        """
        with capturedLogs() as events:
            yield self.session_from("127.0.0.1", "echo")
        self.assertEqual((yield self.ptr_queries("127.0.0.1")), 0)
        self.assertEqual(fcrdns_events(events), [])


class HoldingDNSResponder(protocol.DatagramProtocol):
    """
    A DNS server written for this test (hostile in that it holds every query unanswered,
    like a server that never answers) until L{release}; from then on it answers PTR
    C{1.0.0.127.in-addr.arpa} with C{good.test}, A C{good.test} with 127.0.0.1, and
    anything else with NXDOMAIN.
    """

    def __init__(self) -> None:
        self.received: list[tuple[bytes, int]] = []
        self.held: list[tuple[dns.Message, object]] = []
        self.released = False

    def datagramReceived(self, data: bytes, addr: object) -> None:
        message = dns.Message()
        try:
            message.fromStr(data)
        except Exception:
            return
        if not message.queries:
            return
        query = message.queries[0]
        self.received.append((query.name.name, query.type))
        if self.released:
            self.answer(message, addr)
        else:
            self.held.append((message, addr))

    def release(self) -> None:
        self.released = True
        held, self.held = self.held, []
        for message, addr in held:
            self.answer(message, addr)

    def answer(self, message: dns.Message, addr: object) -> None:
        query = message.queries[0]
        name = query.name.name
        reply = dns.Message(id=message.id, answer=1, recDes=message.recDes, recAv=1, auth=1)
        reply.queries = message.queries
        if query.type == dns.PTR and name == b"1.0.0.127.in-addr.arpa":
            reply.answers = [
                dns.RRHeader(name, dns.PTR, dns.IN, 60, dns.Record_PTR(b"good.test", 60))
            ]
        elif query.type == dns.A and name == b"good.test":
            reply.answers = [dns.RRHeader(name, dns.A, dns.IN, 60, dns.Record_A("127.0.0.1", 60))]
        else:
            reply.rCode = dns.ENAME
        self.transport.write(reply.toStr(), addr)


class _Greeted(protocol.Protocol):
    """
    A client that connects and waits for the greeting (then the test closes it early).
    """

    def __init__(self) -> None:
        self.greeted: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.greeted.called:
            self.greeted.callback(None)


class _GreetedClient(NGPClientProtocol):
    """
    A client that logs in as usual; L{greeted} fires when the greeting arrives (its peer
    checks are then under way at the gateway).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.greeted: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.greeted.called:
            self.greeted.callback(None)
        super().dataReceived(data)


class CancelledCheckTests(unittest.TestCase):
    """
    The gateway requires FCrDNS; its DNS server holds its answers. A client that closes
    early cancels its own check only: innocent peers from the same address, concurrent or
    arriving just after, wait for the real answer and are let in.
    """

    timeout = 60

    def setUp(self):
        self.dns = HoldingDNSResponder()
        dns_port = reactor.listenUDP(0, self.dns, interface="127.0.0.1")
        self.addCleanup(dns_port.stopListening)
        running = RunningGateway(
            self,
            '[peer_checks]\nfcrdns = "require"\nfcrdns_timeout = 30.0\n'
            f'dns_servers = ["127.0.0.1:{dns_port.getHost().port}"]\n',
            {"listen": ["tcp:0:interface=127.0.0.1"]},
        )
        self.running = running
        self.factory = running.factory
        self.endpoint = TCP4ClientEndpoint(
            reactor, "127.0.0.1", running.port(), bindAddress=("127.0.0.1", 0)
        )

    @inlineCallbacks
    def test_client_closing_early_does_not_refuse_peers_of_its_address(self):
        """
        Client A connects and its PTR query is held; innocent client B connects from the
        same address; A closes (its check is cancelled); client C connects after that.
        Neither B nor C is refused meanwhile; once the DNS server answers, both are
        confirmed and open their service, and no check ended as C{server-failure}.
        """
        with capturedLogs() as events:
            early = _Greeted()
            yield connectProtocol(self.endpoint, early)
            yield wait_for(lambda: len(self.dns.received) >= 1)
            innocent = _GreetedClient(self.running.credentials, "echo", clock=reactor)
            yield connectProtocol(self.endpoint, innocent)
            # Checks start with the greeting: B's waits on the same held query as A's.
            yield innocent.greeted
            yield early.greeted
            early.transport.loseConnection()
            yield wait_for(lambda: len(self.factory.sessions) == 1)
            later = NGPClientProtocol(self.running.credentials, "echo", clock=reactor)
            yield connectProtocol(self.endpoint, later)
            yield wait_for(lambda: len(self.factory.sessions) == 2)
            self.assertFalse(innocent.opened.called)
            self.assertFalse(later.opened.called)
            self.dns.release()
            yield innocent.opened
            yield later.opened
            innocent.transport.loseConnection()
            later.transport.loseConnection()
            yield self.running.idle()
        reasons = [e["reason"] for e in fcrdns_events(events)]
        self.assertEqual(reasons, ["confirmed", "confirmed"])
        self.assertEqual(self.factory.stats.counters["auth_ok"], 2)
