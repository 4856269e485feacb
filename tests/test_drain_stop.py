"""
Tests for L{netguard.ops.drain.StopRequests} and the gateway's C{ctl drain}: one record of
the stop requests, so C{ctl drain} counts as the first stop signal, a repeated drain is
answered and changes nothing, and the reactor is never asked to stop twice.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from netguard.ops.drain import SECOND_SIGNAL, StopRequests
from netguard.service import GatewayControl, GatewayService
from tests.test_gateway_protocol import make_factory


class StrictReactor(MemoryReactorClock):
    """
    A memory reactor whose C{stop} behaves as Twisted's real one: a stop while a stop is
    under way raises L{ReactorNotRunning} (the stock memory reactor accepts any number).
    """

    def __init__(self) -> None:
        super().__init__()
        self.running = True
        self.stops = 0

    def stop(self) -> None:
        if self.hasStopped:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")
        self.stops += 1
        super().stop()


class StopRequestsTests(unittest.TestCase):
    """
    The first stop request stops the reactor once; later ones never stop it again.
    """

    def setUp(self) -> None:
        self.reactor = StrictReactor()
        self.forced: list[str] = []
        self.stops = StopRequests(self.reactor, self.forced.append)

    def test_first_request_stops_the_reactor_on_its_next_turn(self) -> None:
        """
        The first request is answered as the first and stops the reactor once, on the
        reactor's next turn (not from inside the caller).
        """
        self.assertTrue(self.stops.request())
        self.assertEqual(self.reactor.stops, 0)
        self.reactor.advance(0)
        self.assertEqual(self.reactor.stops, 1)
        self.assertEqual(self.forced, [])

    def test_second_request_changes_nothing(self) -> None:
        """
        A second request (a repeated C{ctl drain}) is answered as not the first, asks for
        no second stop and cuts nothing.
        """
        self.stops.request()
        self.assertFalse(self.stops.request())
        self.reactor.advance(0)
        self.reactor.advance(0)
        self.assertEqual(self.reactor.stops, 1)
        self.assertEqual(self.forced, [])

    def test_signal_after_a_request_cuts_at_once(self) -> None:
        """
        A stop signal after a C{ctl drain} is the second stop: it cuts what is left and
        asks for no second stop.
        """
        self.stops.request()
        self.reactor.advance(0)
        self.stops.signal()
        self.assertEqual(self.forced, [SECOND_SIGNAL])
        self.assertEqual(self.reactor.stops, 1)

    def test_first_signal_only_stops(self) -> None:
        """
        The first signal stops (drains) and cuts nothing; the second cuts.
        """
        self.stops.signal()
        self.reactor.advance(0)
        self.assertEqual((self.reactor.stops, self.forced), (1, []))
        self.stops.signal()
        self.assertEqual(self.forced, [SECOND_SIGNAL])

    def test_reactor_already_stopping_is_no_error(self) -> None:
        """
        A first request while the reactor stops for a reason of its own raises nothing
        (Twisted's L{ReactorNotRunning} is expected there, not a failure).
        """
        self.reactor.stop()
        self.assertTrue(self.stops.request())
        self.reactor.advance(0)
        self.assertEqual(self.reactor.stops, 1)


class GatewayDrainCommandTests(unittest.TestCase):
    """
    C{ctl drain} on a single-process gateway goes through the service's stop requests.
    """

    def setUp(self) -> None:
        self.reactor = StrictReactor()
        factory = make_factory(self.reactor)
        self.service = GatewayService(factory, [])
        self.forced: list[str] = []
        self.service.drainer.force = self.forced.append  # type: ignore[method-assign]
        self.service.stop_requests.force = self.forced.append
        self.control = GatewayControl(self.service)

    def test_drain_twice_is_answered_already_draining(self) -> None:
        """
        The first C{drain} starts the stop; the second says the drain is under way, and the
        reactor is asked to stop exactly once (no L{ReactorNotRunning} traceback).
        """
        first = self.control.drain()
        second = self.control.drain()
        self.reactor.advance(0)
        self.assertTrue(first.startswith("draining 0 connection(s)"), first)
        self.assertTrue(second.startswith("already draining"), second)
        self.assertEqual(self.reactor.stops, 1)
        self.assertEqual(self.forced, [])

    def test_sigterm_after_drain_cuts_at_once(self) -> None:
        """
        C{ctl drain} counts as the first stop signal: the next SIGTERM cuts at once.
        """
        self.control.drain()
        self.reactor.advance(0)
        self.service.stop_requests.signal()
        self.assertEqual(self.forced, [SECOND_SIGNAL])
        self.assertEqual(self.reactor.stops, 1)

    def test_drain_after_sigterm_is_answered_already_draining(self) -> None:
        """
        A C{ctl drain} after SIGTERM neither stops the reactor again nor cuts anything.
        """
        self.service.stop_requests.signal()
        self.reactor.advance(0)
        answer: Any = self.control.drain()
        self.reactor.advance(0)
        self.assertTrue(answer.startswith("already draining"), answer)
        self.assertEqual((self.reactor.stops, self.forced), (1, []))
