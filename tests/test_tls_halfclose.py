"""
Tests for L{netguard.tls_halfclose}: TLS half-close over Twisted's memory-BIO TLS, driven
with a real OpenSSL client connection and a Twisted test transport.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from netguard.tls_halfclose import HalfCloseTLSFactory, HalfCloseTLSTransport
from tests.test_tls import TLSTestCase, client_context


@implementer(IHalfCloseableProtocol)
class HalfCloser(Protocol):
    """
    Records what arrives and how the connection ends.
    """

    def __init__(self) -> None:
        self.received = b""
        self.read_closed = False
        self.lost: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.read_closed = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


class HalfCloseTests(TLSTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        factory = HalfCloseTLSFactory(
            self.load(), False, Factory.forProtocol(HalfCloser), self.clock
        )
        self.tls: HalfCloseTLSTransport = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.tls.makeConnection(self.transport)
        self.app: HalfCloser = self.tls.wrappedProtocol
        self.client = SSL.Connection(client_context())
        self.client.set_connect_state()
        for _ in range(4):
            self.pump()
        self.assertTrue(self.tls._handshakeDone)

    def pump(self) -> None:
        """
        One round: client -> server, server -> client.
        """
        try:
            self.client.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            data = self.client.bio_read(65536)
        except SSL.WantReadError:
            data = b""
        if data:
            self.tls.dataReceived(data)
        self.clock.advance(0)  # Twisted's TLS transport flushes small writes then
        written = self.transport.value()
        self.transport.clear()
        if written:
            self.client.bio_write(written)

    def client_reads(self) -> bytes:
        received = b""
        while True:
            try:
                received += self.client.recv(65536)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                return received

    def test_peer_close_notify_is_a_half_close(self) -> None:
        self.client.send(b"question")
        self.client.shutdown()  # close_notify: the client is done sending
        self.pump()
        self.assertEqual(self.app.received, b"question")
        self.assertTrue(self.app.read_closed)
        self.assertIsNone(self.app.lost)  # the connection stays for the answer
        self.tls.write(b"answer")
        self.pump()
        self.assertEqual(self.client_reads(), b"answer")
        self.tls.loseConnection()
        self.pump()
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.client_reads(), b"")  # then the server's close_notify
        self.assertEqual(self.client.get_shutdown(), SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)

    def test_our_half_close_sends_close_notify_and_keeps_reading(self) -> None:
        self.tls.write(b"all of it")
        self.tls.loseWriteConnection()
        self.pump()
        self.assertEqual(self.client_reads(), b"all of it")
        self.assertTrue(self.client.get_shutdown() & SSL.RECEIVED_SHUTDOWN)
        self.assertFalse(self.transport.disconnecting)  # TCP stays open: we still read
        self.tls.write(b"dropped")  # nothing may follow our close_notify
        self.client.send(b"late reply")
        self.pump()
        self.assertEqual(self.app.received, b"late reply")
        self.client.shutdown()
        self.pump()
        self.assertTrue(self.transport.disconnecting)

    def test_fin_without_close_notify_is_a_truncation(self) -> None:
        self.client.send(b"partial")
        self.pump()
        self.tls.readConnectionLost()  # TCP EOF, no close_notify
        self.assertEqual(self.app.received, b"partial")
        self.assertFalse(self.app.read_closed)
        self.tls.connectionLost(ConnectionDone())
        self.assertIsInstance(self.app.lost.value, ConnectionLost)

    def test_fin_after_close_notify_keeps_the_write_side(self) -> None:
        self.client.shutdown()
        self.pump()
        self.tls.readConnectionLost()  # the client also shut its TCP write side
        self.assertTrue(self.app.read_closed)
        self.assertFalse(self.transport.disconnecting)
        self.tls.write(b"still allowed")
        self.pump()
        self.assertEqual(self.client_reads(), b"still allowed")


class RefusedBeforeTLSTests(TLSTestCase):
    def test_no_protocol_means_no_tls_work(self) -> None:
        class Refusing(Factory):
            def buildProtocol(self, addr: Any) -> None:
                return None

        factory = HalfCloseTLSFactory(self.load(), False, Refusing(), Clock())
        self.assertIsNone(factory.buildProtocol(None))
