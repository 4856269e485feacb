"""
Tests for L{netguard.admitting}: admission control around any Twisted factory.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.trial import unittest

from netguard.admission import Admission, AdmissionPolicy
from netguard.admitting import AdmittingFactory


class Hello(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"hello\r\n")


def address(host: str = "192.0.2.9") -> IPv4Address:
    return IPv4Address("TCP", host, 40000)


class AdmittingFactoryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def factory(self, **policy: Any) -> AdmittingFactory:
        admission = Admission(AdmissionPolicy(**policy), self.clock)
        return AdmittingFactory(Factory.forProtocol(Hello), admission)

    def connect(self, factory: AdmittingFactory, host: str = "192.0.2.9") -> tuple[Any, Any]:
        with capturedLogs() as self.events:
            protocol = factory.buildProtocol(address(host))
        if protocol is None:
            return None, None
        transport = StringTransport(peerAddress=address(host))
        protocol.makeConnection(transport)
        return protocol, transport

    def test_admitted_connection_reaches_the_application(self) -> None:
        _, transport = self.connect(self.factory())
        self.assertEqual(transport.value(), b"hello\r\n")

    def test_refused_connection_gets_one_line_and_a_close(self) -> None:
        factory = self.factory(per_source_max=1)
        self.connect(factory)
        _, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"ERR BUSY per-source-cap\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(
            [(e["event"], e["reason"]) for e in self.events if "event" in e],
            [("conn.reject", "per-source-cap")],
        )

    def test_silent_mode_builds_nothing(self) -> None:
        factory = self.factory(per_source_max=1, reject_mode="close")
        self.connect(factory)
        self.assertEqual(self.connect(factory), (None, None))

    def test_closing_gives_the_slot_back(self) -> None:
        factory = self.factory(per_source_max=1)
        first, _ = self.connect(factory)
        first.connectionLost(None)
        _, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"hello\r\n")

    def test_promote_moves_to_the_authenticated_pool(self) -> None:
        factory = self.factory(max_relays=1)
        first, _ = self.connect(factory)
        second, _ = self.connect(factory, "192.0.2.10")
        self.assertIsNone(first.promote())
        self.assertEqual(factory.admission.snapshot()["relays"], 1)
        self.assertEqual(second.promote().reason, "relay-cap")
        first.connectionLost(None)
        self.assertEqual(factory.admission.snapshot()["relays"], 0)

    def test_offences_lead_to_a_block(self) -> None:
        factory = self.factory()
        protocol, _ = self.connect(factory)
        self.assertEqual(protocol.offence("early_talker"), 10.0)
        protocol.connectionLost(None)
        _, transport = self.connect(factory)
        self.assertEqual(transport.value(), b"ERR BUSY penalised\r\n")
