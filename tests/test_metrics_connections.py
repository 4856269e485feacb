"""
Tests for L{netguard.ops.metrics_connections}: the metrics listener gives each request a
fixed deadline that bytes do not extend, carries one request per connection, and a
newcomer past the connection cap replaces the connection that has waited longest for a
request, never one being answered.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from netguard.ops.metrics import metrics_factory
from netguard.ops.metrics_connections import REQUEST_DEADLINE

_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
_PARTIAL = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-A: "


class _Harness(unittest.TestCase):
    """
    A metrics factory on a L{Clock}, connections over L{StringTransport}s.
    """

    max_connections = 2

    def setUp(self) -> None:
        self.clock = Clock()
        self.figures: dict[str, Any] = {"connections": 1}
        self.during_render: list[Any] = []
        self.factory = metrics_factory(self.source, self.clock, self.max_connections)
        self.factory.doStart()
        self.addCleanup(self.factory.doStop)

    def source(self) -> dict[str, Any]:
        """
        The figures; runs the hooks of C{during_render} while a request is being answered.
        """
        for hook in self.during_render:
            hook()
        return self.figures

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.assertIsNotNone(protocol)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        return protocol, transport

    def assertAnswered(self, transport: StringTransport) -> None:
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:40])


class RequestDeadlineTests(_Harness):
    """
    Each request must be complete within L{REQUEST_DEADLINE} seconds of the accept (or of
    the previous answer); a partial request is cut at the deadline however it drips.
    """

    def test_partial_request_alive_before_the_deadline(self) -> None:
        """
        Half a second before the deadline a partial request's connection is still open.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(_PARTIAL)
        self.clock.advance(REQUEST_DEADLINE - 0.5)
        self.assertFalse(transport.disconnecting)

    def test_partial_request_cut_at_the_deadline(self) -> None:
        """
        At the deadline exactly, a connection without a complete request is aborted, with
        no answer.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(_PARTIAL)
        self.clock.advance(REQUEST_DEADLINE - 0.5)
        self.clock.advance(0.5)
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")

    def test_silent_connection_cut_at_the_deadline(self) -> None:
        """
        A connection that sends nothing is aborted at the deadline.
        """
        _, transport = self.connect()
        self.clock.advance(REQUEST_DEADLINE)
        self.assertTrue(transport.disconnected)

    def test_dripped_bytes_do_not_extend_the_deadline(self) -> None:
        """
        A hostile dripper sending one byte a second is cut at the deadline counted from the
        accept, not from its last byte.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(_PARTIAL)
        for _ in range(int(REQUEST_DEADLINE) - 1):
            self.clock.advance(1)
            protocol.dataReceived(b"a")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnected)

    def test_request_completed_just_before_the_deadline_is_answered(self) -> None:
        """
        A request whose last byte arrives half a second before the deadline is answered.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(_REQUEST[:10])
        self.clock.advance(REQUEST_DEADLINE - 0.5)
        protocol.dataReceived(_REQUEST[10:])
        self.assertAnswered(transport)
        self.assertFalse(transport.disconnected)

    def test_unread_answer_cut_at_the_deadline(self) -> None:
        """
        Once the answer is handed over the connection closes; if its peer has not read it
        by the deadline counted from the answer, it is aborted: still open half a second
        before, aborted at it.
        """
        protocol, transport = self.connect()
        self.clock.advance(5)
        protocol.dataReceived(_REQUEST)
        self.assertAnswered(transport)
        self.assertTrue(transport.disconnecting)
        self.clock.advance(REQUEST_DEADLINE - 0.5)
        self.assertFalse(transport.disconnected)
        self.clock.advance(0.5)
        self.assertTrue(transport.disconnected)

    def test_no_deadline_while_answering(self) -> None:
        """
        While a request is being answered no deadline is pending.
        """
        protocol, _ = self.connect()
        pending: list[int] = []
        self.during_render.append(lambda: pending.append(len(self.clock.getDelayedCalls())))
        protocol.dataReceived(_REQUEST)
        self.assertEqual(pending, [0])

    def test_connection_lost_cancels_the_deadline(self) -> None:
        """
        A connection that goes away leaves no timer behind.
        """
        protocol, _ = self.connect()
        protocol.connectionLost(Failure(ConnectionError()))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class EvictionTests(_Harness):
    """
    With the cap full, a newcomer replaces the connection that has waited longest for a
    request; a connection being answered is never dropped.
    """

    def test_newcomer_replaces_the_oldest_waiting(self) -> None:
        """
        Cap 2: the third connection aborts the first (the oldest waiting), not the second.
        """
        _, first = self.connect()
        self.clock.advance(1)
        _, second = self.connect()
        self.clock.advance(1)
        _, third = self.connect()
        self.assertTrue(first.disconnected)
        self.assertFalse(second.disconnecting)
        self.assertFalse(third.disconnecting)

    def test_below_the_cap_nobody_is_replaced(self) -> None:
        """
        Up to the cap exactly, no connection is cut.
        """
        _, first = self.connect()
        _, second = self.connect()
        self.assertFalse(first.disconnecting)
        self.assertFalse(second.disconnecting)

    def test_scrape_served_while_hostile_drippers_hold_the_cap(self) -> None:
        """
        Two hostile drippers fill the cap with partial requests; a scrape still connects
        and is answered.
        """
        drippers = [self.connect() for _ in range(2)]
        for protocol, _ in drippers:
            protocol.dataReceived(_PARTIAL)
        self.clock.advance(1)
        for protocol, _ in drippers:
            protocol.dataReceived(b"a")
        scrape, transport = self.connect()
        scrape.dataReceived(_REQUEST)
        self.assertAnswered(transport)
        self.assertEqual([t.disconnected for _, t in drippers], [True, False])

    def test_wait_counts_from_the_answer(self) -> None:
        """
        A connection answered (its answer still unread) after another was accepted has
        waited less, so the other is replaced first.
        """
        answered, answered_transport = self.connect()
        self.clock.advance(1)
        _, idle = self.connect()
        self.clock.advance(1)
        answered.dataReceived(_REQUEST)
        self.assertAnswered(answered_transport)
        self.connect()
        self.assertTrue(idle.disconnected)
        self.assertFalse(answered_transport.disconnected)

    def test_connection_being_answered_is_never_replaced(self) -> None:
        """
        A newcomer arriving while the oldest connection is being answered replaces the
        next oldest waiting one; the answer completes.
        """
        answering, answering_transport = self.connect()
        self.clock.advance(1)
        _, waiting = self.connect()
        newcomers: list[Any] = []
        self.during_render.append(
            lambda: newcomers.append(self.factory.buildProtocol(IPv4Address("TCP", "::1", 1)))
        )
        answering.dataReceived(_REQUEST)
        self.assertIsNotNone(newcomers[0])
        self.assertTrue(waiting.disconnected)
        self.assertAnswered(answering_transport)

    def test_evicted_connections_free_their_slot_at_once(self) -> None:
        """
        A connection already cut (its loss not yet reported) does not count: the next
        newcomer replaces the next oldest instead of being refused.
        """
        transports = [self.connect()[1] for _ in range(2)]
        for _ in range(3):
            self.clock.advance(1)
            transports.append(self.connect()[1])
        self.assertEqual([t.disconnected for t in transports], [True, True, True, False, False])


class OneRequestPerConnectionTests(_Harness):
    """
    A connection carries one request: its answer says C{Connection: close} and the
    connection closes, so requests pipelined behind it are never answered and at most one
    answer is buffered per connection.
    """

    def statuses(self, transport: StringTransport) -> int:
        return transport.value().count(b"HTTP/1.1 ")

    def test_one_request_one_answer_then_close(self) -> None:
        """
        The exact bound: one request gets one answer with C{Connection: close}, and the
        connection is closed after it.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(_REQUEST)
        self.assertAnswered(transport)
        self.assertEqual(self.statuses(transport), 1)
        self.assertIn(b"\r\nConnection: close\r\n", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_second_pipelined_request_not_answered(self) -> None:
        """
        One past the bound: two requests in one write get one answer.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(_REQUEST * 2)
        self.assertEqual(self.statuses(transport), 1)
        self.assertTrue(transport.disconnecting)

    def test_hostile_pipeliner_gets_one_answer(self) -> None:
        """
        A hostile pipelining client sends 3000 requests in one write and never reads: one
        answer is rendered and buffered, not 3000.
        """
        renders: list[None] = []
        self.during_render.append(lambda: renders.append(None))
        protocol, transport = self.connect()
        protocol.dataReceived(_REQUEST * 3000)
        self.assertEqual(len(renders), 1)
        self.assertEqual(self.statuses(transport), 1)

    def test_request_after_the_answer_not_answered(self) -> None:
        """
        A request sent after the answer, before the close completes, is dropped unanswered.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(_REQUEST)
        protocol.dataReceived(_REQUEST)
        self.assertEqual(self.statuses(transport), 1)

    def test_http10_request_answered_and_closed(self) -> None:
        """
        An HTTP/1.0 request is answered with C{Connection: close} and closed too.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /metrics HTTP/1.0\r\n\r\n" * 2)
        self.assertEqual(transport.value().count(b"HTTP/1.0 200 "), 1)
        self.assertIn(b"\r\nConnection: close\r\n", transport.value())
        self.assertTrue(transport.disconnecting)


class EveryoneAnsweringTests(_Harness):
    """
    When every connection of the cap is being answered, a newcomer is closed at once.
    """

    max_connections = 1

    def test_newcomer_refused_while_all_are_answered(self) -> None:
        """
        Cap 1, its connection being answered: the newcomer gets no protocol (closed at
        once) and the answer completes.
        """
        protocol, transport = self.connect()
        newcomers: list[Any] = []
        self.during_render.append(
            lambda: newcomers.append(self.factory.buildProtocol(IPv4Address("TCP", "::1", 1)))
        )
        protocol.dataReceived(_REQUEST)
        self.assertEqual(newcomers, [None])
        self.assertAnswered(transport)

    def test_newcomer_accepted_once_the_answer_is_done(self) -> None:
        """
        Once the answer is done the connection waits again, so a newcomer replaces it.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(_REQUEST)
        self.connect()
        self.assertTrue(transport.disconnected)
