# -*- test-case-name: tests.integration.test_proxy_pending_real -*-
"""
A C{haproxy:} listener's bounds over real loopback sockets, the real gateway running
in-process: a flood of header-less connections from a listed sender past the bound of
connections waiting for their header is refused at accept and logged in aggregate; after
the longest version 2 header (64 KiB of TLVs) the connection keeps only the header's
addresses; a sender blocked by its own offences is refused at accept without a new offence,
but a block a client behind it earned, under the sender's own address, refuses only that
client. The clients are raw sockets written for these tests (hostile senders and clients).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.protocols.haproxy._info import ProxyInfo
from twisted.trial import unittest

from netguard.proxy_header import MAX_PENDING
from tests.integration.util import (
    Probe,
    RunningGateway,
    clients_aborted_at_cleanup,
    connect_from,
    log_events,
    wait_for,
)
from tests.test_proxy_header import big_v2, held_objects

#: The hostile sender: a loopback address, so a listed sender of the default C{haproxy:}.
SENDER = "127.0.0.7"

#: The bound on any one wait (a hang guard; nothing asserts on speed).
WAIT = 30.0

#: Header-less connections opened past the bound.
PAST_THE_BOUND = 44


class PendingRealTests(unittest.TestCase):
    """
    The real gateway with one C{haproxy:} listener (senders: this host), its log captured.
    """

    timeout = 120

    def setUp(self) -> None:
        self.events = log_events(self)
        self.gateway = RunningGateway(
            self,
            '[overload]\nmax_lag = "off"\n',
            {"listen": ["haproxy:tcp:0:interface=127.0.0.1"]},
            prefix="ng-pxp-",
        )
        self.clients = clients_aborted_at_cleanup(self, self.gateway)
        self.proxy_factory = self.gateway.service.ports[0].factory

    def connect(self, data: bytes = b"") -> Any:
        probe = Probe(data)
        probe.greeted.addErrback(lambda _: None)
        self.clients.append(probe)
        return connect_from(SENDER, self.gateway.port(), probe, WAIT).addCallback(lambda _: probe)

    def logged(self, event: str, **fields: object) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]

    @inlineCallbacks
    def test_flood_past_the_pending_bound_logged_in_aggregate(self) -> Any:
        """
        A hostile listed sender opens 256 + 44 connections and sends no header: 256 wait,
        44 are closed by the gateway without a byte; only 3 of those refusals are logged
        one by one (C{conn.reject}, C{reason=proxy-header-pending}, no offence), the other
        41 in one C{conn.reject.summary}, and none is an offence.
        """
        probes = []
        for _ in range(MAX_PENDING + PAST_THE_BOUND):
            probe = yield self.connect()
            probes.append(probe)
        yield wait_for(
            lambda: sum(p.closed.called for p in probes) == PAST_THE_BOUND, timeout=WAIT
        )
        self.assertEqual(self.proxy_factory.pending, MAX_PENDING)
        self.assertEqual({p.data for p in probes if p.closed.called}, {b""})
        rejects = self.logged("conn.reject", reason="proxy-header-pending")
        self.assertEqual(len(rejects), 3)
        self.assertTrue(all(e["peer"].startswith(f"{SENDER}:") for e in rejects), rejects)
        self.assertEqual({e["offence"] for e in rejects}, {None})
        for probe in probes:  # closed before a byte: neither logged nor an offence
            probe.transport.abortConnection()
        yield wait_for(lambda: self.proxy_factory.pending == 0, timeout=WAIT)
        yield wait_for(lambda: bool(self.logged("conn.reject.summary")), timeout=WAIT)
        [summary] = self.logged("conn.reject.summary")
        self.assertEqual(
            (summary["reason"], summary["count"]), ("proxy-header-pending", PAST_THE_BOUND - 3)
        )
        self.assertEqual(self.gateway.factory.admission.penalties(), [])

    @inlineCallbacks
    def test_64k_tlv_header_not_kept(self) -> Any:
        """
        After the longest version 2 header (a 65,520-byte TLV) the client is greeted and
        logged with the header's address, and the live connection's wrapper holds no bytes
        longer than 64 and no Twisted C{ProxyInfo}: only the two addresses.
        """
        probe = yield self.connect(big_v2("203.0.113.9"))
        yield probe.greeted.addTimeout(WAIT, reactor)
        [wrapper] = list(self.proxy_factory.protocols)
        self.assertEqual(wrapper.getPeer().host, "203.0.113.9")
        held = held_objects(
            wrapper, (wrapper.transport, self.proxy_factory, wrapper.wrappedProtocol)
        )
        large = [o for o in held if isinstance(o, (bytes, bytearray, memoryview)) and len(o) > 64]
        self.assertEqual(large, [])
        self.assertEqual([o for o in held if isinstance(o, ProxyInfo)], [])
        probe.transport.write(b"QUIT\r\n")
        said = yield probe.closed.addTimeout(WAIT, reactor)
        self.assertTrue(said.endswith(b"\r\nBYE\r\n"), said)
        [accept] = self.logged("conn.accept")
        self.assertTrue(accept["peer"].startswith("203.0.113.9:"), accept)

    @inlineCallbacks
    def test_blocked_sender_refused_without_new_offences(self) -> Any:
        """
        Three junk headers from a listed sender block it (3 offences); its next 20
        connections are closed without a byte at accept, logged C{reason=penalised} only 3
        times, and its offences stay 3 (no escalation while it is blocked).
        """
        for _ in range(3):
            probe = yield self.connect(b"GET / HTTP/1.0\r\n\r\n")
            yield probe.closed.addTimeout(WAIT, reactor)
        [(source, left, offences)] = self.gateway.factory.admission.penalties()
        self.assertEqual((source, offences), (f"{SENDER}/32", 3))
        for _ in range(20):
            probe = yield self.connect(b"PROXY UNKNOWN\r\n")
            said = yield probe.closed.addTimeout(WAIT, reactor)
            self.assertEqual(said, b"")
        [(source, later, offences)] = self.gateway.factory.admission.penalties()
        self.assertEqual((source, offences), (f"{SENDER}/32", 3))
        self.assertLessEqual(later, left)
        self.assertEqual(len(self.logged("conn.reject", reason="penalised")), 3)

    def header(self, client: str) -> bytes:
        """
        A version 1 header naming C{client} (port 40000) as the source.
        """
        return f"PROXY TCP4 {client} 127.0.0.1 40000 {self.gateway.port()}\r\n".encode()

    @inlineCallbacks
    def test_client_blocked_under_the_senders_address_others_still_greeted(self) -> Any:
        """
        A hostile client behind the sender whose header names the sender's own address
        (127.0.0.7) talks before the greeting until its source is blocked; then clients
        198.51.100.7 and 203.0.113.9 behind the same sender are still greeted, 127.0.0.7
        gets C{ERR BUSY penalised} from admission, and no connection of the sender is
        refused at accept.
        """
        admission = self.gateway.factory.admission
        sender = IPv4Address("TCP", SENDER, 40000)
        for _ in range(20):  # bounded: the first early talk blocks (3 points)
            probe = yield self.connect(self.header(SENDER) + b"GARBAGE-BEFORE-GREETING\r\n")
            yield probe.closed.addTimeout(WAIT, reactor)
            if admission.blocked_for(sender) is not None:
                break
        self.assertIsNotNone(admission.blocked_for(sender))
        for client in ("198.51.100.7", "203.0.113.9", "198.51.100.7", "203.0.113.9"):
            probe = yield self.connect(self.header(client))
            yield probe.greeted.addTimeout(WAIT, reactor)
            probe.transport.abortConnection()
        probe = yield self.connect(self.header(SENDER))
        said = yield probe.closed.addTimeout(WAIT, reactor)
        self.assertEqual(said, b"ERR BUSY penalised\r\n")
        at_accept = [
            e for e in self.logged("conn.reject", reason="penalised") if "conn_id" not in e
        ]
        self.assertEqual(at_accept, [])
        self.assertEqual([row[0] for row in admission.penalties()], [f"{SENDER}/32"])
