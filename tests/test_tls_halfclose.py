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
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer

from netguard import tls_halfclose
from netguard.tls_halfclose import (
    BIO_IDLE_SECONDS,
    BIO_REFRESH_BYTES,
    HalfCloseTLSFactory,
    HalfCloseTLSTransport,
    refresh_memory_bios,
)
from tests.test_tls import TLSTestCase, client_context, run_handshake


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


class _ServerTransportCase(TLSTestCase):
    """
    A server L{HalfCloseTLSTransport} on a L{StringTransport} and a fake clock, with an
    OpenSSL client connection driven by hand, handshake done.
    """

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


class HalfCloseTests(_ServerTransportCase):
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


class IdleBIOTests(_ServerTransportCase):
    """
    After a large read or write, a connection that goes quiet gets new, empty memory BIOs
    (OpenSSL's never shrink), and its bytes keep flowing.
    """

    def bios(self) -> tuple[Any, Any]:
        connection = self.tls._tlsConnection
        return connection._into_ssl, connection._from_ssl

    def assert_still_relays(self) -> None:
        """
        The connection still carries bytes both ways.
        """
        self.client_sends(5)
        self.assertEqual(self.app.received[-5:], b"zzzzz")
        self.tls.write(b"answer")
        self.pump()
        self.assertEqual(self.client_reads(), b"answer")

    def client_sends(self, size: int) -> bytes:
        payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        sent = 0
        for _ in range(100):
            if sent == len(payload):
                break
            sent += self.client.send(payload[sent:])
        self.pump()
        return payload

    def test_large_read_then_quiet_replaces_the_bios(self) -> None:
        """
        A read of more than L{BIO_REFRESH_BYTES} arms a timer; L{BIO_IDLE_SECONDS} later,
        with nothing large since, the BIOs are new ones; bytes flow both ways afterwards.
        """
        before = self.bios()
        payload = self.client_sends(60_000)
        self.assertEqual(self.app.received, payload)  # one pump: one read of 60 KiB
        self.clock.advance(BIO_IDLE_SECONDS * 0.99)
        self.assertEqual(self.bios(), before)
        self.clock.advance(BIO_IDLE_SECONDS * 0.02)
        after = self.bios()
        self.assertNotEqual(after[0], before[0])
        self.assertNotEqual(after[1], before[1])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assert_still_relays()

    def test_large_write_then_quiet_replaces_the_bios(self) -> None:
        """
        The same after a large write: the client gets every byte, then the BIOs are new.
        """
        before = self.bios()
        self.tls.write(b"w" * 70_000)
        for _ in range(3):
            self.pump()
        self.assertEqual(self.client_reads(), b"w" * 70_000)
        self.clock.advance(BIO_IDLE_SECONDS * 1.01)
        self.assertNotEqual(self.bios(), before)
        self.tls.write(b"more")
        self.pump()
        self.assertEqual(self.client_reads(), b"more")

    def test_busy_connection_keeps_its_bios(self) -> None:
        """
        While large reads go on, the timer looks again later instead of replacing the BIOs
        under a stream; once quiet for a whole period, they are replaced.
        """
        before = self.bios()
        self.client_sends(20_000)
        self.clock.advance(BIO_IDLE_SECONDS / 2)
        self.client_sends(20_000)
        self.clock.advance(BIO_IDLE_SECONDS / 2)  # the timer fires: busy since, re-armed
        self.assertEqual(self.bios(), before)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(BIO_IDLE_SECONDS)
        self.assertNotEqual(self.bios(), before)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_replaced_one_period_after_the_last_large_io(self) -> None:
        """
        The BIOs are replaced L{BIO_IDLE_SECONDS} after the last large read or write, not
        a whole period later: a timer that finds the connection busy looks again when the
        connection will have been quiet for one period.
        """
        before = self.bios()
        self.client_sends(20_000)
        self.clock.advance(BIO_IDLE_SECONDS * 0.9)
        self.client_sends(20_000)
        self.clock.advance(BIO_IDLE_SECONDS * 0.1)  # fires: busy 0.1 period ago
        self.clock.advance(BIO_IDLE_SECONDS * 0.8)
        self.assertEqual(self.bios(), before)
        self.clock.advance(BIO_IDLE_SECONDS * 0.15)  # 1.05 periods after the last one
        self.assertNotEqual(self.bios(), before)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def record_overhead(self) -> int:
        """
        Bytes a TLS record adds to its plaintext on this connection (measured, one byte).
        """
        self.tls.write(b"m")
        self.clock.advance(0)
        overhead = len(self.transport.value()) - 1
        self.pump()
        self.assertEqual(self.client_reads(), b"m")
        return overhead

    def client_record(self, size: int) -> bytes:
        """
        The ciphertext of C{size} bytes sent by the client, not yet given to the server.
        """
        self.assertEqual(self.client.send(b"c" * size), size)
        return self.client.bio_read(65536)

    def test_write_of_a_record_at_the_threshold_arms_nothing(self) -> None:
        """
        A write whose record is exactly L{BIO_REFRESH_BYTES} long arms no timer and keeps
        the BIOs; a record one byte longer arms it.
        """
        plaintext = BIO_REFRESH_BYTES - self.record_overhead()
        before = self.bios()
        self.tls.write(b"s" * plaintext)
        self.clock.advance(0)
        self.assertEqual(len(self.transport.value()), BIO_REFRESH_BYTES)
        self.pump()
        self.assertEqual(len(self.client_reads()), plaintext)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10 * BIO_IDLE_SECONDS)
        self.assertEqual(self.bios(), before)
        self.tls.write(b"s" * (plaintext + 1))
        self.clock.advance(0)
        self.assertEqual(len(self.transport.value()), BIO_REFRESH_BYTES + 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_read_at_the_threshold_arms_nothing(self) -> None:
        """
        A TCP read of exactly L{BIO_REFRESH_BYTES} bytes of ciphertext arms no timer; one
        byte more arms it.
        """
        record = self.client_record(3 * BIO_REFRESH_BYTES)
        self.tls.dataReceived(record[:BIO_REFRESH_BYTES])
        self.tls.dataReceived(record[BIO_REFRESH_BYTES : 2 * BIO_REFRESH_BYTES])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.tls.dataReceived(record[2 * BIO_REFRESH_BYTES :])
        self.assertEqual(len(self.app.received), 3 * BIO_REFRESH_BYTES)
        self.clock.advance(10 * BIO_IDLE_SECONDS)
        record = self.client_record(3 * BIO_REFRESH_BYTES)
        self.tls.dataReceived(record[: BIO_REFRESH_BYTES + 1])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_one_full_record_each_way_arms(self) -> None:
        """
        A read of one full TLS record and a write of 16 KiB (the common sizes, whose
        plaintext is not over 16 KiB) each arm the timer and get the BIOs replaced.
        """
        before = self.bios()
        self.tls.dataReceived(self.client_record(2**14))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(BIO_IDLE_SECONDS)
        middle = self.bios()
        self.assertNotEqual(middle, before)
        self.tls.write(b"w" * 2**14)
        self.clock.advance(0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(BIO_IDLE_SECONDS)
        self.assertNotEqual(self.bios(), middle)
        self.assertEqual(self.tls.bio_refreshes, 2)

    def test_connection_lost_cancels_the_timer(self) -> None:
        """
        A connection that ends with the timer armed leaves no delayed call behind.
        """
        self.client_sends(60_000)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.tls.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_lost_flushing_a_large_write_arms_nothing(self) -> None:
        """
        Twisted's connectionLost flushes the writes it was holding back (here 20,000 bytes)
        through the TLS connection: that arms no timer for the connection that is gone.
        """
        self.tls.write(b"a" * 20_000)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # Twisted's small-write flush
        self.tls.connectionLost(Failure(ConnectionLost()))
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])

    def test_connection_lost_after_tls_failed_arms_nothing(self) -> None:
        """
        The same when TLS had already failed (a hostile client's garbage record) and
        Twisted drops the held-back bytes: no timer is left.
        """
        self.tls.write(b"a" * 20_000)
        self.tls.dataReceived(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # hostile record
        self.assertTrue(self.tls._lostTLSConnection)
        self.tls.connectionLost(Failure(ConnectionLost()))
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])

    def test_read_closed_connection_gets_new_bios(self) -> None:
        """
        After the peer's close_notify (read side closed, our side still writing), a quiet
        connection still gets new BIOs, and what it writes still arrives.
        """
        self.client_sends(60_000)
        self.client.shutdown()
        self.pump()
        self.assertTrue(self.app.read_closed)
        before = self.bios()
        self.clock.advance(2 * BIO_IDLE_SECONDS)
        self.assertNotEqual(self.bios(), before)
        self.assertEqual(self.tls.bio_refreshes, 1)
        self.tls.write(b"answer")
        self.pump()
        self.assertEqual(self.client_reads(), b"answer")

    def test_write_closed_connection_gets_new_bios(self) -> None:
        """
        After our close_notify (write side closed, still reading), a quiet connection gets
        new BIOs, and what the peer sends still arrives, up to its own close_notify.
        """
        self.client_sends(60_000)
        self.tls.loseWriteConnection()
        self.pump()
        before = self.bios()
        self.clock.advance(2 * BIO_IDLE_SECONDS)
        self.assertNotEqual(self.bios(), before)
        self.assertEqual(self.tls.bio_refreshes, 1)
        self.client_sends(5)
        self.assertEqual(self.app.received[-5:], b"zzzzz")
        self.client.shutdown()
        self.pump()
        self.assertTrue(self.app.read_closed)

    def test_end_of_input_mark_moves_to_the_new_read_bio(self) -> None:
        """
        When a TCP EOF has marked the end of input on the read BIO (here right after a
        close_notify still unread in it) and the connection goes on writing, the new read
        BIO carries the same mark: an empty read says end of file, not "try again".
        """
        self.client.shutdown()
        close_notify = self.client.bio_read(65536)
        self.tls._tlsConnection.bio_write(close_notify)  # arrived, not yet read
        self.tls.readConnectionLost()
        self.assertTrue(self.app.read_closed)
        self.assertFalse(self.tls._lostTLSConnection)
        self.tls.write(b"w" * 20_000)
        self.clock.advance(0)
        self.clock.advance(2 * BIO_IDLE_SECONDS)
        self.assertEqual(self.tls.bio_refreshes, 1)
        buffer = tls_halfclose._ffi.new("char[]", 1)
        self.assertEqual(tls_halfclose._lib.BIO_read(self.bios()[0], buffer, 1), 0)

    def test_partial_record_in_openssl_buffer_survives(self) -> None:
        """
        Half a record that OpenSSL has already taken out of the read BIO into its own
        record buffer survives the replacement: the rest completes it.
        """
        record = self.client_record(2**14)
        self.tls.dataReceived(record[:8000])
        self.assertEqual(self.app.received, b"")
        pending = tls_halfclose._ffi.new("char **")
        self.assertEqual(tls_halfclose._lib.BIO_get_mem_data(self.bios()[0], pending), 0)
        before = self.bios()
        self.clock.advance(2 * BIO_IDLE_SECONDS)
        self.assertNotEqual(self.bios(), before)
        self.tls.dataReceived(record[8000:])
        self.assertEqual(self.app.received, b"c" * 2**14)

    def test_failed_refresh_keeps_the_connection(self) -> None:
        """
        Should the new BIOs not be made or filled (no memory), the connection keeps its old
        ones, loses nothing and goes on; C{tls.bio_refresh_failed} is logged; no timer is left.
        """

        def no_memory(connection: Any, input_ended: bool = False) -> bool:
            raise MemoryError("test")

        self.patch(tls_halfclose, "refresh_memory_bios", no_memory)
        before = self.bios()
        self.client_sends(60_000)
        with capturedLogs() as events:
            self.clock.advance(2 * BIO_IDLE_SECONDS)
        self.assertEqual(
            [(e["event"], e["problem"]) for e in events], [("tls.bio_refresh_failed", "test")]
        )
        self.assertEqual(self.bios(), before)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assert_still_relays()


class _FailingSecondWrite:
    """
    The OpenSSL bindings, except that the second C{BIO_write} takes nothing (a new BIO that
    cannot grow) and C{BIO_new}/C{BIO_free} are recorded.
    """

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.writes = 0
        self.made: list[Any] = []
        self.freed: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    def BIO_new(self, method: Any) -> Any:
        bio = self._lib.BIO_new(method)
        self.made.append(bio)
        return bio

    def BIO_free(self, bio: Any) -> Any:
        self.freed.append(bio)
        return self._lib.BIO_free(bio)

    def BIO_write(self, bio: Any, data: Any, size: int) -> int:
        self.writes += 1
        if self.writes == 2:
            return 0
        result: int = self._lib.BIO_write(bio, data, size)
        return result


class RefreshMemoryBIOsTests(TLSTestCase):
    """
    L{refresh_memory_bios} on raw connections: bytes pending in either BIO survive.
    """

    def pair(self) -> tuple[SSL.Connection, SSL.Connection]:
        server = SSL.Connection(self.load().context, None)
        client = SSL.Connection(client_context(), None)
        self.assertTrue(run_handshake(server, client).done)
        for connection in (server, client):  # drain the byte each side sent
            try:
                connection.recv(1024)
            except SSL.WantReadError:
                pass
        return server, client

    def test_partial_record_in_the_read_bio_survives(self) -> None:
        """
        Half a record waiting in the read BIO is carried to the new one and completes.
        """
        server, client = self.pair()
        client.send(b"r" * 1000)
        record = client.bio_read(65536)
        server.bio_write(record[:500])
        self.assertTrue(refresh_memory_bios(server))
        server.bio_write(record[500:])
        self.assertEqual(server.recv(4096), b"r" * 1000)

    def test_unread_output_in_the_write_bio_survives(self) -> None:
        """
        A record not yet read out of the write BIO is carried to the new one.
        """
        server, client = self.pair()
        server.send(b"o" * 3000)
        self.assertTrue(refresh_memory_bios(server))
        client.bio_write(server.bio_read(65536))
        self.assertEqual(client.recv(4096), b"o" * 3000)

    def test_socket_connection_is_left_alone(self) -> None:
        """
        A connection without memory BIOs (made on a socket) is not touched.
        """
        import socket

        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        connection = SSL.Connection(self.load().context, left)
        self.assertFalse(refresh_memory_bios(connection))

    def test_failure_after_a_partial_copy_loses_nothing(self) -> None:
        """
        When the new write BIO cannot take the pending bytes after the read BIO's were
        already copied, the refresh fails with L{MemoryError}, both new BIOs are freed, and
        the connection keeps its old BIOs with every pending byte in them.
        """
        server, client = self.pair()
        client.send(b"r" * 1000)
        record = client.bio_read(65536)
        server.bio_write(record[:500])
        server.send(b"o" * 3000)
        old = (server._into_ssl, server._from_ssl)  # type: ignore[attr-defined]
        failing = _FailingSecondWrite(tls_halfclose._lib)
        self.patch(tls_halfclose, "_lib", failing)
        self.assertRaises(MemoryError, refresh_memory_bios, server)
        self.assertEqual(failing.writes, 2)
        self.assertEqual(failing.freed, failing.made)
        self.assertEqual((server._into_ssl, server._from_ssl), old)  # type: ignore[attr-defined]
        server.bio_write(record[500:])
        self.assertEqual(server.recv(4096), b"r" * 1000)
        client.bio_write(server.bio_read(65536))
        self.assertEqual(client.recv(4096), b"o" * 3000)

    def test_end_of_input_mark_is_carried(self) -> None:
        """
        With C{input_ended}, the new read BIO says end of file when empty, as the old one
        did after C{bio_shutdown}; without it, "try again".
        """
        server, _ = self.pair()
        server.bio_shutdown()
        self.assertTrue(refresh_memory_bios(server, input_ended=True))
        self.assertRaises(SSL.SysCallError, server.recv, 1024)
        other, _ = self.pair()
        self.assertTrue(refresh_memory_bios(other))
        self.assertRaises(SSL.WantReadError, other.recv, 1024)

    def test_many_refreshes_free_the_old_bios(self) -> None:
        """
        Replacing the grown BIOs of one connection 2,000 times (64 KiB in, 16 KiB out
        before each) frees every old pair: each refresh installs new pointers and gives the
        C allocator back at least 64 KiB (about 103 KiB of grown capacity, measured with
        mallinfo2), and the memory in use does not grow over the run. (Were pyOpenSSL ever
        to free its BIOs itself, the old pairs would be freed twice, which the C library
        aborts on.)
        """
        server, client = self.pair()
        if _malloc_in_use() is None:
            raise unittest.SkipTest("no mallinfo2 in this C library")
        previous = server._into_ssl  # type: ignore[attr-defined]
        start = 0
        for round in range(2000):
            for _ in range(4):
                client.send(b"i" * 2**14)
            server.bio_write(client.bio_read(2**17))
            received = 0
            for _ in range(8):
                try:
                    received += len(server.recv(2**16))
                except SSL.WantReadError:
                    break
            self.assertEqual(received, 2**16)
            server.send(b"o" * 2**14)
            server.bio_read(2**16)
            grown = _malloc_in_use() or 0
            self.assertTrue(refresh_memory_bios(server))
            given_back = grown - (_malloc_in_use() or 0)
            self.assertGreater(given_back, 64 * 1024, f"round {round}")
            self.assertNotEqual(server._into_ssl, previous)  # type: ignore[attr-defined]
            previous = server._into_ssl  # type: ignore[attr-defined]
            if round == 100:
                start = _malloc_in_use() or 0
        self.assertLess((_malloc_in_use() or 0) - start, 8 * 2**20)


def _malloc_in_use() -> int | None:
    """
    Bytes the C library's allocator has handed out and not had back (mallinfo2), or None.
    """
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
            ).split()
        ]

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)
