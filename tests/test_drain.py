"""
Tests for L{netguard.ops.drain}: graceful shutdown of real gateway sessions on fakes.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from netguard.ops.drain import Drainer
from tests.test_gateway_protocol import Session
from tests.test_gateway_streams import Mux


class AbortableTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.aborted = False

    def abortConnection(self):
        self.aborted = True


class DrainTests(unittest.TestCase):
    def test_line_phase_client_told_shutting_down(self):
        s = Session(self)
        drainer = Drainer(s.factory, s.clock, grace=10)
        s.factory.drainer = drainer
        done = drainer.drain()
        self.assertEqual(s.take(), [b"ERR SHUTTING_DOWN shutting down"])
        self.assertTrue(s.transport.disconnecting)
        self.assertNoResult(done)
        s.proto.connectionLost(None)
        self.successResultOf(done)

    def test_authenticated_line_phase_client_told_too(self):
        s = Session(self)
        s.login()
        Drainer(s.factory, s.clock, grace=10).drain()
        self.assertEqual(s.take(), [b"ERR SHUTTING_DOWN shutting down"])

    def test_relay_runs_until_grace_then_is_cut(self):
        s = Session(self)
        s.login()
        s.send(b"OPEN echo")
        aborted = []
        s.transport.abortConnection = lambda: aborted.append(True)
        drainer = Drainer(s.factory, s.clock, grace=10)
        s.factory.drainer = drainer
        done = drainer.drain()
        s.proto.dataReceived(b"still relaying")
        self.assertEqual(s.take(), [b"still relaying"])
        s.clock.advance(9)
        self.assertEqual(aborted, [])
        s.clock.advance(2)
        self.assertTrue(aborted)  # an abort is idempotent; the relay aborts both its sides
        self.assertEqual(drainer.forced, 1)
        s.proto.connectionLost(None)
        self.successResultOf(done)

    def test_relay_ending_in_time_is_not_cut(self):
        s = Session(self)
        s.login()
        s.send(b"OPEN echo")
        drainer = Drainer(s.factory, s.clock, grace=10)
        s.factory.drainer = drainer
        done = drainer.drain()
        s.proto.connectionLost(None)
        self.successResultOf(done)
        self.assertEqual(drainer.forced, 0)
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_nothing_to_drain_fires_at_once(self):
        s = Session(self)
        s.proto.connectionLost(None)
        self.successResultOf(Drainer(s.factory, s.clock, grace=10).drain())

    def test_second_force_cuts_at_once(self):
        s = Session(self)
        s.login()
        s.send(b"OPEN echo")
        aborted = []
        s.transport.abortConnection = lambda: aborted.append(True)
        drainer = Drainer(s.factory, s.clock, grace=100)
        drainer.drain()
        drainer.force("second SIGTERM")
        self.assertTrue(aborted)


class ForcedCloseLoggingTests(unittest.TestCase):
    """
    A connection the drain cuts is logged as closed by the server, never by the client.
    """

    def closes(self) -> list[dict]:
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def relaying(self) -> Session:
        s = Session(self)
        s.login()
        s.send(b"OPEN echo")
        return s

    def closed_by(self, events: list[dict]) -> list[str]:
        return [e["closed_by"] for e in events if e.get("event") == "conn.close"]

    def draining(self, grace: float) -> tuple[list[dict], Session, Drainer]:
        """
        The close events, a relaying session, and a drain begun with C{grace} seconds.
        """
        events = self.closes()
        s = self.relaying()
        drainer = Drainer(s.factory, s.clock, grace=grace)
        s.factory.drainer = drainer
        drainer.drain()
        return events, s, drainer

    def test_relay_cut_at_the_end_of_grace_is_closed_by_server(self):
        """
        A relay still running when the grace period ends is cut and its C{conn.close}
        says C{closed_by="server"} (the gateway closed), not the client.
        """
        events, s, drainer = self.draining(10)
        s.clock.advance(10)
        s.proto.connectionLost(None)
        self.assertEqual(self.closed_by(events), ["server"])

    def test_relay_cut_by_a_second_signal_is_closed_by_server(self):
        """
        A relay cut by a second stop signal is logged C{closed_by="server"} too.
        """
        events, s, drainer = self.draining(100)
        drainer.force("second stop signal")
        s.proto.connectionLost(None)
        self.assertEqual(self.closed_by(events), ["server"])

    def test_relay_ended_by_the_client_within_grace_stays_client(self):
        """
        The other side of the promise: a relay the client ends during the drain, before
        the grace period is over, is still logged as closed by the client.
        """
        events, s, drainer = self.draining(10)
        s.clock.advance(9)
        s.proto.connectionLost(None)
        self.assertEqual(self.closed_by(events), ["client"])
        self.assertEqual(drainer.forced, 0)

    def test_multiplexed_connection_cut_is_closed_by_server(self):
        """
        A multiplexed connection whose stream still relays when the grace period ends is
        cut and logged C{closed_by="server"}, not as the client's close; so is its stream's
        C{stream.close}.
        """
        m = Mux(self)
        m.upgrade()
        m.open(b"OPEN echo\r\n")
        drainer = Drainer(m.factory, m.s.clock, grace=10)
        m.factory.drainer = drainer
        drainer.drain()
        m.pump()
        m.s.clock.advance(10)
        m.s.proto.connectionLost(None)
        self.assertEqual([e["closed_by"] for e in m.named("conn.close")], ["server"])
        self.assertEqual([e["closed_by"] for e in m.named("stream.close")], ["server"])
