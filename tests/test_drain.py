"""
Tests for L{netguard.ops.drain}: graceful shutdown of real gateway sessions on fakes.
"""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from netguard.ops.drain import Drainer
from tests.test_gateway_protocol import Session


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
        self.assertEqual(aborted, [True])
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
        self.assertEqual(aborted, [True])
