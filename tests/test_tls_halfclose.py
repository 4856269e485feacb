"""
Tests for L{netguard.tls_halfclose}: TLS half-close over Twisted's memory-BIO TLS, driven
with a real OpenSSL client connection and a Twisted test transport.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
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
        """
        The peer's close_notify reaches the application as readConnectionLost; the
        connection stays for the answer, then loseConnection closes it.
        """
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
        """
        loseWriteConnection sends close_notify, drops later writes, keeps reading, and the
        peer's close_notify then closes the connection.
        """
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
        """
        A TCP FIN without a close_notify first ends the connection as ConnectionLost.
        """
        self.client.send(b"partial")
        self.pump()
        self.tls.readConnectionLost()  # TCP EOF, no close_notify
        self.assertEqual(self.app.received, b"partial")
        self.assertFalse(self.app.read_closed)
        self.tls.connectionLost(ConnectionDone())
        self.assertIsInstance(self.app.lost.value, ConnectionLost)

    def test_fin_after_close_notify_keeps_the_write_side(self) -> None:
        """
        A FIN after the peer's close_notify (while we still send) leaves our write side
        open.
        """
        self.client.shutdown()
        self.pump()
        self.tls.readConnectionLost()  # the client also shut its TCP write side
        self.assertTrue(self.app.read_closed)
        self.assertFalse(self.transport.disconnecting)
        self.tls.write(b"still allowed")
        self.pump()
        self.assertEqual(self.client_reads(), b"still allowed")

    # -- our close first: the peer's answer ends the connection --------------------------

    def test_close_notify_answering_our_close_ends_the_connection(self) -> None:
        """
        After loseConnection (BYE, then our close_notify) the peer's close_notify, as
        Python's ssl unwrap() or openssl s_client send it, closes the TCP connection at
        once (a half-closing application is told first, by readConnectionLost), and the
        application then sees a clean close.
        """
        self.tls.write(b"BYE\r\n")
        self.tls.loseConnection()
        self.pump()
        self.assertFalse(self.transport.disconnecting)  # waiting for the peer's answer
        self.assertEqual(self.client_reads(), b"BYE\r\n")
        self.client.shutdown()  # the peer answers with its own close_notify
        self.pump()
        self.assertTrue(self.transport.disconnecting)
        self.assertTrue(self.app.read_closed)
        self.tls.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(self.app.lost.value, ConnectionDone)

    def test_close_notify_crossing_ours_ends_the_connection(self) -> None:
        """
        Both sides close at the same moment: the peer's close_notify, sent before ours
        reached it, also ends the connection.
        """
        self.tls.loseConnection()
        self.client.shutdown()
        self.pump()
        self.assertTrue(self.transport.disconnecting)

    def test_fin_after_our_close_ends_the_connection(self) -> None:
        """
        After loseConnection a bare TCP FIN from the peer (no close_notify) ends the
        connection too.
        """
        self.tls.loseConnection()
        self.pump()
        self.tls.readConnectionLost()
        self.assertTrue(self.transport.disconnecting)

    def test_close_notify_after_our_half_close_then_fin(self) -> None:
        """
        After loseWriteConnection the peer's close_notify ends the connection; a FIN that
        follows changes nothing and raises nothing.
        """
        self.tls.loseWriteConnection()
        self.pump()
        self.client.shutdown()
        self.pump()
        self.assertTrue(self.transport.disconnecting)
        self.tls.readConnectionLost()
        self.tls.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(self.app.lost.value, ConnectionDone)

    def test_close_with_a_producer_still_registered_stays_a_half_close(self) -> None:
        """
        The boundary: loseConnection while a producer is still registered has not finished
        sending (Twisted sends our close_notify only at unregisterProducer). The peer's
        close_notify then is a half-close passed on; unregisterProducer ends the
        connection.
        """
        producer = _Producer()
        self.tls.registerProducer(producer, True)
        self.tls.loseConnection()
        self.client.send(b"last words")
        self.client.shutdown()
        self.pump()
        self.assertEqual(self.app.received, b"last words")
        self.assertTrue(self.app.read_closed)
        self.assertFalse(self.transport.disconnecting)
        self.tls.write(b"produced")
        self.clock.advance(0)  # Twisted's TLS transport flushes small writes then
        self.tls.unregisterProducer()
        self.pump()
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.client_reads(), b"produced")
        self.assertEqual(self.client.get_shutdown(), SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)


class RefusedBeforeTLSTests(TLSTestCase):
    def test_no_protocol_means_no_tls_work(self) -> None:
        """
        A factory that builds no protocol gets no TLS protocol either.
        """

        class Refusing(Factory):
            def buildProtocol(self, addr: Any) -> None:
                return None

        factory = HalfCloseTLSFactory(self.load(), False, Refusing(), Clock())
        self.assertIsNone(factory.buildProtocol(None))


@implementer(IPushProducer)
class _Producer:
    """
    A streaming producer that produces nothing by itself.
    """

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IOpenSSLClientConnectionCreator)
class _ClientCreator:
    """
    Client TLS connections with the permissive test client context.
    """

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(client_context(), None)
        connection.set_app_data(tls_protocol)
        connection.set_connect_state()
        return connection


@implementer(IHalfCloseableProtocol)
class ClosingHalfCloser(HalfCloser):
    """
    Closes its side once the peer has finished sending: the gateway in its line phase, or
    a client that answers the peer's close_notify with its own (Python's unwrap()).
    """

    def readConnectionLost(self) -> None:
        super().readConnectionLost()
        self.transport.loseConnection()


class _Side:
    """
    One end of a TCP connection as the kernel shows it to Twisted: a TLS transport over a
    L{StringTransport}.
    """

    def __init__(self, tls: HalfCloseTLSTransport) -> None:
        self.tls = tls
        self.tcp = StringTransport()
        self.closed = False
        self.got_fin = False
        self.app: Any = tls.wrappedProtocol  # the TLS transport lets go of it when closed
        tls.makeConnection(self.tcp)


class TCPPairTests(TLSTestCase):
    """
    Our TLS transport on both ends of a simulated TCP connection that, unlike iosim, keeps
    TCP's half-close: a side that closes has its socket closed (connectionLost), and its
    peer sees a FIN (readConnectionLost), nothing more, until it closes too.
    """

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()

    def connect(self, client_app: type[Protocol], server_app: type[Protocol]) -> None:
        server_factory = HalfCloseTLSFactory(
            self.load(), False, Factory.forProtocol(server_app), self.clock
        )
        client_factory = HalfCloseTLSFactory(
            _ClientCreator(), True, Factory.forProtocol(client_app), self.clock
        )
        self.server = _Side(server_factory.buildProtocol(None))
        self.client = _Side(client_factory.buildProtocol(None))
        self.pump()
        self.assertTrue(self.client.tls._handshakeDone)
        self.assertTrue(self.server.tls._handshakeDone)

    def pump(self) -> None:
        """
        Move bytes, FINs and closes until nothing moves any more (bounded).
        """
        for _ in range(50):
            moved = False
            self.clock.advance(0)
            for one, other in ((self.client, self.server), (self.server, self.client)):
                data = one.tcp.value()
                one.tcp.clear()
                if data and not other.closed:
                    moved = True
                    other.tls.dataReceived(data)
                if one.tcp.disconnecting and not one.closed:
                    moved = True
                    one.closed = True
                    one.tls.connectionLost(Failure(ConnectionDone()))
                    if not other.closed and not other.got_fin:
                        other.got_fin = True
                        other.tls.readConnectionLost()
            if not moved:
                return
        raise AssertionError("the simulated connection never settled")

    def test_client_close_reaches_connection_lost(self) -> None:
        """
        The netguard: endpoint's case: the client application calls loseConnection; the
        gateway answers with its close_notify and closes. The client application's
        connectionLost is called (it used to be never called).
        """
        self.connect(HalfCloser, ClosingHalfCloser)
        self.client.tls.write(b"request")
        self.client.tls.loseConnection()
        self.pump()
        self.assertEqual(self.server.app.received, b"request")
        self.assertTrue(self.server.closed)
        self.assertTrue(self.client.closed)
        self.assertIsInstance(self.client.app.lost.value, ConnectionDone)
        self.assertIsInstance(self.server.app.lost.value, ConnectionDone)

    def test_server_close_answered_by_the_client_ends_both(self) -> None:
        """
        The gateway's case after QUIT or ERR BUSY: it sends its line and closes; the client
        answers with its own close_notify and closes. The gateway's side is closed too (it
        used to stay half-closed, and counted, until the write timeout).
        """
        self.connect(ClosingHalfCloser, HalfCloser)
        self.server.tls.write(b"BYE\r\n")
        self.server.tls.loseConnection()
        self.pump()
        self.assertEqual(self.client.app.received, b"BYE\r\n")
        self.assertTrue(self.client.app.read_closed)
        self.assertTrue(self.client.closed)
        self.assertTrue(self.server.closed)
        self.assertIsInstance(self.server.app.lost.value, ConnectionDone)

    def test_half_close_both_ways_still_relays(self) -> None:
        """
        The half-close is kept: the client sends and half-closes, the server reads to the
        end, answers, and closes; the client gets the whole answer and a clean close.
        """
        self.connect(HalfCloser, HalfCloser)
        self.client.tls.write(b"question")
        self.client.tls.loseWriteConnection()
        self.pump()
        self.assertTrue(self.server.app.read_closed)
        self.assertFalse(self.server.closed)
        self.server.tls.write(b"answer")
        self.server.tls.loseConnection()
        self.pump()
        self.assertEqual(self.client.app.received, b"answer")
        self.assertTrue(self.client.closed)
        self.assertTrue(self.server.closed)
        self.assertIsInstance(self.client.app.lost.value, ConnectionDone)
        self.assertIsInstance(self.server.app.lost.value, ConnectionDone)
